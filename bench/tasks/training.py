"""Training loops shared by every task, and the checkpoint cache that lets tasks share one trained model.

Both loops follow one recipe so that every model gets the same treatment under a suite's :class:`Budget`:
Adam at ``budget.lr`` (constant, or decayed to 0 on a cosine over the budget with ``schedule = "cosine"``);
minibatches of ``budget.batch_size`` drawn without replacement (a fresh permutation per epoch) from
``dataset.train_x`` by a seeded ``torch.Generator``; discrete data dequantised afresh every step
(``dataset.dequantize``), then ``dataset.preprocess`` if set; ``model.data_init`` on the first batch before
the first step and ``model.after_step`` after every optimiser step; gradient norm clipped to
:data:`CLIP_NORM`; training stops at ``budget.steps`` or ``budget.seconds``, whichever comes first
(``steps = 0``: ``data_init`` only, the model as initialised). The loss is :func:`models.loss.training_loss`. A
non-finite loss or gradient norm stops training *before* the update, with ``diverged=True``, so the model keeps
its last finite parameters. A model with ``closed_form_fit`` (a baseline such as the fitted Gaussian) is fitted
once with ``fit_closed_form`` on the whole training set (discrete data dequantised once with the training
generator, then pre-processed) and takes no optimiser step, whatever the budget (``steps = 0`` included).

Learning curves (:mod:`bench.tasks.curves`): given a :class:`~bench.tasks.curves.CurveRequest`, the loop scores
the model at step 0 (after ``data_init``), at the steps the request plans
(:meth:`~bench.tasks.curves.CurveRequest.planned`: the geometric steps of :func:`~bench.tasks.curves.eval_steps`,
or explicit checkpoints) and at the final step (a closed-form fit: the final point only). The training clock is
paused during evaluations (the time budget, the cosine schedule and ``TrainResult.seconds`` count training only),
and the random state is forked around them (``torch.random.fork_rng``), so an evaluation's probes do not change
the training: with a step budget the trained weights are the same with and without a curve.

:func:`trained_model` is what tasks call: it trains once per (model class and config, data set, seed,
objective, budget, regulariser) and caches the state dict in ``ctx.checkpoint_dir``, so ``inverse_cost``,
``stability``, ``logdet`` and ``cost`` measure the model that ``likelihood`` trained. The curve's identity
(:meth:`~bench.tasks.curves.CurveRequest.key`) is stored with the checkpoint as its curve key, apart from the
training key that names the file: a caller without a curve (the measurement tasks) reuses any checkpoint of the
same training key; a caller with a curve reuses one only when its curve key is equal, and otherwise trains again
(the same weights under a step budget) and replaces the file. Training tasks run first in their group, so
``likelihood`` and ``classification`` record their curve and the measurement tasks reuse their checkpoints; a
measurement task that trains first (no training task in the group) trains without a curve.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import tempfile
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from bench.datasets.base import Dataset
from bench.regularizers import FDRegularizer
from bench.run.rundir import config_hash
from bench.tasks.base import Budget, Metric, MetricSpec, TaskContext
from bench.tasks.compiled import CompiledStep, CompileMode, CompileRecord, record_from
from bench.tasks.curves import Curve, CurveRequest
from models.base import InvertibleModel
from models.loss import OBJECTIVES, Objective

Progress = Callable[[int, int, str], None]
#: Maximum gradient norm (all trainable parameters together).
CLIP_NORM = 10.0
#: The number of points kept in ``TrainResult.history``.
HISTORY_POINTS = 100
#: At least this many of the last per-batch losses estimate the spread behind ``TrainResult.final_loss_stderr``.
NOISE_TAIL = 20
# no direction: under a time budget every model uses the same seconds; the steps done show the speed
TRAIN_TIME = MetricSpec("train_time", "s", None, "wall-clock seconds of training, data_init included")
TRAIN_STEPS = MetricSpec("train_steps", "steps", None, "optimiser steps taken (0: the model as initialised)")
#: The metrics every training task reports after its own.
TRAIN_SPECS = (TRAIN_TIME, TRAIN_STEPS)


@dataclass
class TrainResult:
    """What a training run did.

    Attributes:
        steps: optimiser steps taken.
        seconds: wall-clock time of training, ``data_init`` (or the closed-form fit) included, learning-curve
            evaluations excluded.
        final_loss: mean loss over the last history window (the non-finite loss itself when diverged; NaN
            when no step was taken).
        final_loss_stderr: standard error of ``final_loss``: the standard deviation of the last
            ``max(window, NOISE_TAIL)`` per-batch losses over the square root of the number of losses in the last
            window (NaN with fewer than 2 steps or when diverged).
        diverged: a loss or gradient norm was non-finite; training stopped before applying it.
        history: mean loss (regulariser penalty included where applied) over consecutive windows of
            ``max(1, budget.steps // 100)`` steps.
        reason: why training stopped early (empty when it ran to ``budget.steps``).
        curve: the learning curve, when one was requested.
        compile: how the loss was computed (:class:`bench.tasks.compiled.CompileRecord`: the ``compile`` mode
            requested and used, a fallback's reason, the first compiled step's seconds, kept out of ``seconds``).
    """

    steps: int
    seconds: float
    final_loss: float
    diverged: bool
    history: list[float] = field(default_factory=list)
    reason: str = ""
    final_loss_stderr: float = math.nan
    curve: Curve | None = None
    compile: CompileRecord = field(default_factory=CompileRecord)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainResult:
        """The inverse of ``dataclasses.asdict`` (as stored in a checkpoint)."""
        fields = dict(data)
        if isinstance(fields.get("curve"), dict):
            fields["curve"] = Curve(**fields["curve"])
        fields["compile"] = record_from(fields.get("compile")) or CompileRecord()
        return cls(**fields)


class _Batches:
    """Seeded minibatch indices: a fresh permutation of ``range(n)`` per epoch, cut into batches."""

    def __init__(self, n: int, batch_size: int, generator: torch.Generator) -> None:
        if n <= 0:
            raise ValueError("the training set is empty")
        self.n, self.size, self.gen = n, min(batch_size, n), generator
        self.perm = torch.randperm(n, generator=generator)
        self.pos = 0

    def next(self) -> Tensor:
        if self.pos + self.size > self.n:
            self.perm = torch.randperm(self.n, generator=self.gen)
            self.pos = 0
        idx = self.perm[self.pos:self.pos + self.size]
        self.pos += self.size
        return idx


def model_dtype(model: InvertibleModel) -> torch.dtype:
    """The floating dtype of the model's first floating parameter or buffer (float32 if none)."""
    for t in [*model.parameters(), *model.buffers()]:
        if t.is_floating_point():
            return t.dtype
    return torch.float32


def preprocess_batch(dataset: Dataset, x: Tensor, device: torch.device, dtype: torch.dtype
                     ) -> tuple[Tensor, Tensor]:
    """Move to ``device``/``dtype`` and apply ``dataset.preprocess``.

    ``x``: (B, *shape) in the data space (already dequantised) -> (``y``: (B, *shape), ``ldj``: (B,)), where
    ``ldj = log|det dy/dx|`` (zeros without pre-processing) is to be added to the model's log-likelihood of
    ``y`` (``bench.units``).
    """
    x = x.to(device=device, dtype=dtype)
    if dataset.preprocess is None:
        return x, torch.zeros(x.shape[0], device=device, dtype=dtype)
    y, ldj = dataset.preprocess(x)
    return y, torch.as_tensor(ldj, device=device, dtype=dtype).expand(x.shape[0])


def prepare_batch(dataset: Dataset, x: Tensor, device: torch.device, dtype: torch.dtype,
                  generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """:func:`preprocess_batch` after dequantising discrete data with noise from ``generator`` (a CPU generator).

    ``x``: (B, *shape) CPU tensor as stored -> (``y``: (B, *shape) on ``device``, ``ldj``: (B,)).
    """
    return preprocess_batch(dataset, dataset.dequantize(x, generator=generator), device, dtype)


def fixed_test_x(dataset: Dataset, seed: int, draw: int = 0) -> Tensor:
    """``dataset.test_x`` (N, *shape) dequantised with noise fixed by (``seed``, ``draw``); as stored if continuous.

    Every model evaluated with the same seed sees the same test points.
    """
    gen = torch.Generator().manual_seed(1_000_003 * (draw + 1) + seed)
    return dataset.dequantize(dataset.test_x, generator=gen)


def evaluation_grad_mode(model: InvertibleModel) -> contextlib.AbstractContextManager[Any]:
    """``torch.enable_grad()`` for log-det estimator models (their estimators use autograd), else ``no_grad``."""
    return torch.enable_grad() if model.capabilities.logdet == "estimator" else torch.no_grad()


class _CurveRecorder:
    """Evaluates ``request`` with the training clock paused and the random state forked; collects the curve."""

    def __init__(self, model: InvertibleModel, request: CurveRequest | None, device: torch.device,
                 max_steps: int) -> None:
        self.model, self.request, self.device = model, request, device
        self.curve = Curve(request.metric) if request is not None else None
        self.planned = set(request.planned(max_steps)) if request is not None else set()
        self.paused = 0.0

    def due(self, step: int) -> bool:
        return step in self.planned

    def evaluate(self, step: int, seconds: float) -> None:
        """Score the model after ``step`` steps and ``seconds`` of training (once per step)."""
        if self.request is None or self.curve is None or (self.curve.step and self.curve.step[-1] == step):
            return
        cuda = [self.device] if self.device.type == "cuda" else []
        if cuda:
            torch.cuda.synchronize(self.device)  # queued training work is not evaluation time
        t0 = time.perf_counter()
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.random.fork_rng(devices=cuda):
                value = float(self.request.evaluate(self.model))
        finally:
            self.model.train(was_training)
        spent = time.perf_counter() - t0
        self.paused += spent
        self.curve.eval_seconds += spent
        self.curve.add(step, seconds, value)


def make_optimizer(params: Sequence[Tensor], lr: float) -> torch.optim.Adam:
    """The suite's optimiser: multi-tensor Adam (on the CPU torch defaults to a per-parameter loop, a quarter of a
    small flow's step)."""
    return torch.optim.Adam(list(params), lr=lr, foreach=True)


def training_step(model: InvertibleModel, x: Tensor, lr: float, objective: Objective = "likelihood"
                  ) -> Callable[[], None]:
    """One eager training step on the batch ``x``: (B, *shape) as the training loop takes it (the loss of
    ``objective``, backward, gradient clipping at :data:`CLIP_NORM`, :func:`make_optimizer`'s Adam, the model's
    ``after_step``), as a function to call repeatedly, for benchmarks that time a step the way the suite trains."""
    from models.loss import training_loss

    params = [p for p in model.parameters() if p.requires_grad]
    opt = make_optimizer(params, lr)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        training_loss(model, x, objective=objective).backward()
        torch.nn.utils.clip_grad_norm_(params, CLIP_NORM)
        opt.step()
        model.after_step()

    return step


def _fit(model: InvertibleModel, dataset: Dataset, budget: Budget, device: torch.device, seed: int,
         objective: Objective, labels: Tensor | None, progress: Progress | None,
         regularizer: FDRegularizer | None = None, curve: CurveRequest | None = None,
         compile: CompileMode = "off", compile_fullgraph: bool = False) -> TrainResult:
    """The loop both objectives share: the loss is :func:`models.loss.training_loss` of ``objective`` (``labels``
    (N,) the training labels for classification), plus ``regularizer.penalty(model, y)`` on the steps it applies
    to, run as ``compile`` asks (:class:`bench.tasks.compiled.CompiledStep`; the first compiled step off the
    training clock).

    With ``budget.steps == 0`` only ``model.data_init`` runs (on the first batch): the model as initialised. A
    ``closed_form_fit`` model is fitted on the whole training set instead. ``curve``: record a learning curve.
    """
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model.to(device)
    model.train()
    dtype = model_dtype(model)
    recorder = _CurveRecorder(model, curve, device, budget.steps)
    start = time.perf_counter()

    def clock() -> float:
        """Seconds of training so far (evaluations excluded)."""
        return time.perf_counter() - start - recorder.paused

    if model.closed_form_fit:
        y, _ = prepare_batch(dataset, dataset.train_x, device, dtype, gen)
        model.fit_closed_form(y)
        seconds = clock()
        model.eval()
        recorder.evaluate(0, seconds)
        return TrainResult(steps=0, seconds=seconds, final_loss=math.nan, diverged=False,
                           reason="fitted in closed form on the whole training set", curve=recorder.curve)
    batches = _Batches(dataset.train_x.shape[0], budget.batch_size, gen)
    window = max(1, budget.steps // HISTORY_POINTS)
    report_every = max(1, budget.steps // 20)

    def draw() -> tuple[Tensor, Tensor, Tensor | None]:
        idx = batches.next()
        y, ldj = prepare_batch(dataset, dataset.train_x[idx], device, dtype, gen)
        return y, ldj, None if labels is None else labels[idx].to(device)

    batch = draw()
    model.data_init(batch[0])
    if budget.steps == 0:
        seconds = clock()
        model.eval()
        recorder.evaluate(0, seconds)
        return TrainResult(steps=0, seconds=seconds, final_loss=math.nan, diverged=False, curve=recorder.curve)
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError(f"{type(model).__name__} has no trainable parameters")
    recorder.evaluate(0, clock())
    stepper = CompiledStep(model, objective, compile, device, compile_fullgraph)
    opt = make_optimizer(params, budget.lr)
    history: list[float] = []
    recent: deque[float] = deque(maxlen=max(window, NOISE_TAIL))
    window_sum, window_n, last_n = 0.0, 0, 0
    final_loss, diverged, reason, steps = math.nan, False, "", 0
    for step in range(budget.steps):
        if step > 0:
            batch = draw()
        opt.zero_grad(set_to_none=True)
        first_compiled = stepper.timing_first_step
        penalty = _penalty(model, batch[0], regularizer, step)
        value = float(stepper.step(*batch, penalty))  # backpropagated where finite
        if first_compiled:
            recorder.paused += stepper.record.compile_seconds  # compiling is reported, not trained
        if not math.isfinite(value):
            final_loss, diverged, reason = value, True, f"non-finite loss ({value}) at step {step}"
            break
        grad_norm = float(torch.nn.utils.clip_grad_norm_(params, CLIP_NORM))
        if not math.isfinite(grad_norm):
            final_loss, diverged, reason = value, True, f"non-finite gradient norm at step {step}"
            break
        opt.step()
        model.after_step()
        steps = step + 1
        if budget.schedule == "cosine":
            done = steps / budget.steps
            if budget.seconds is not None:
                done = max(done, clock() / budget.seconds)
            for group in opt.param_groups:
                group["lr"] = budget.lr * 0.5 * (1.0 + math.cos(math.pi * min(1.0, done)))
        recent.append(value)
        window_sum, window_n = window_sum + value, window_n + 1
        if window_n == window:
            history.append(window_sum / window_n)
            window_sum, window_n, last_n = 0.0, 0, window
        if recorder.due(steps):
            recorder.evaluate(steps, clock())
        elapsed = clock()
        out_of_time = budget.seconds is not None and elapsed >= budget.seconds
        if progress is not None and (steps % report_every == 0 or steps == budget.steps or out_of_time):
            progress(steps, budget.steps, f"{objective} step {steps}/{budget.steps} loss {value:.4g}")
        if out_of_time:
            reason = f"time budget of {budget.seconds} s reached after {steps} steps"
            break
    if window_n:
        history.append(window_sum / window_n)
        last_n = window_n
    stderr = math.nan
    if not diverged:
        final_loss = history[-1] if history else math.nan
        if len(recent) >= 2 and last_n:
            mean = sum(recent) / len(recent)
            sd = math.sqrt(sum((v - mean) ** 2 for v in recent) / (len(recent) - 1))
            stderr = sd / math.sqrt(last_n)
    seconds = clock()
    model.eval()
    recorder.evaluate(steps, seconds)
    return TrainResult(steps=steps, seconds=seconds, final_loss=final_loss, diverged=diverged,
                       history=history, reason=reason, final_loss_stderr=stderr, curve=recorder.curve,
                       compile=stepper.record)


def _penalty(model: InvertibleModel, y: Tensor, regularizer: FDRegularizer | None, step: int
             ) -> Callable[[], Tensor | None]:
    """The regulariser's penalty on ``y`` (B, *shape) at ``step`` as a thunk (None on the steps it skips)."""
    if regularizer is None or not regularizer.applies(step):
        return lambda: None
    return lambda: regularizer.penalty(model, y)


def train_likelihood(model: InvertibleModel, dataset: Dataset, budget: Budget, device: torch.device, seed: int,
                     progress: Progress | None = None, regularizer: FDRegularizer | None = None,
                     curve: CurveRequest | None = None, compile: CompileMode = "off",
                     compile_fullgraph: bool = False) -> TrainResult:
    """Maximum likelihood: minimise ``-mean(log p_model(y) + ldj)`` (nats per example, ``y`` the pre-processed,
    dequantised batch of shape (B, *shape)), plus ``regularizer.penalty(model, y)`` on the steps it applies to;
    ``curve``: record a learning curve; ``compile``: the loss through ``torch.compile``
    (:mod:`bench.tasks.compiled`).

    Leaves the model in ``eval()`` mode on ``device``.
    """
    return _fit(model, dataset, budget, device, seed, "likelihood", None, progress, regularizer, curve, compile,
                compile_fullgraph)


def train_classifier(model: InvertibleModel, dataset: Dataset, budget: Budget, device: torch.device, seed: int,
                     progress: Progress | None = None, curve: CurveRequest | None = None,
                     regularizer: FDRegularizer | None = None, compile: CompileMode = "off",
                     compile_fullgraph: bool = False) -> TrainResult:
    """Minimise the cross entropy of ``model.logits(y)`` (B, num_classes) against ``dataset.train_y`` (B,), plus
    ``regularizer.penalty(model, y)`` on the steps it applies to (the invertible map's finite differences, as
    Behrmann et al. 2021 regularise their memory-saving classifier); ``curve``: record a learning curve;
    ``compile``: the loss through ``torch.compile`` (:mod:`bench.tasks.compiled`).

    Leaves the model in ``eval()`` mode on ``device``.
    """
    if dataset.train_y is None:
        raise ValueError(f"data set {dataset.name!r} has no labels to train a classifier on")
    return _fit(model, dataset, budget, device, seed, "classification", dataset.train_y.long(), progress,
                regularizer, curve, compile, compile_fullgraph)


def train_metrics(result: TrainResult) -> list[Metric]:
    """``train_time`` (s) and ``train_steps`` (:data:`TRAIN_SPECS`), with the loss curve and the stop reason in
    ``train_time``'s ``extra``, and in both rows' ``extra["compile"]`` the :class:`~bench.tasks.compiled.CompileRecord`
    fields (``requested``, ``used``, ``fullgraph``, ``cuda_graphs``, ``fallback_error``, ``fallback_reason``,
    ``compile_seconds``)."""
    record = asdict(result.compile)
    extra = {"final_loss": result.final_loss, "final_loss_stderr": result.final_loss_stderr,
             "diverged": result.diverged, "history": result.history, "reason": result.reason, "compile": record}
    return [TRAIN_TIME(result.seconds, extra=extra), TRAIN_STEPS(float(result.steps), extra={"compile": dict(record)})]


# ------------------------------------------------------------------------------------------- checkpoints
def _dataset_identity(dataset: Dataset) -> dict[str, Any]:
    """Name, shape, size and a cheap fingerprint of the training data (so changed data is not reused)."""
    x = dataset.train_x.double()
    return {"name": dataset.name, "kind": dataset.kind, "shape": list(dataset.shape), "n": int(x.shape[0]),
            "levels": dataset.levels, "sum": float(x.sum()), "sumsq": float((x * x).sum()),
            "preprocess": dataset.preprocess is not None}


def checkpoint_key(model: InvertibleModel, dataset: Dataset, seed: int, objective: str, budget: Budget,
                   regularizer: FDRegularizer | None) -> dict[str, Any]:
    """Everything a trained model depends on, as JSON-serialisable data."""
    cls = type(model)
    return {"model": f"{cls.__module__}:{cls.__qualname__}", "config": model.config(),
            "dataset": _dataset_identity(dataset), "seed": seed, "objective": objective, "budget": asdict(budget),
            "regularizer": None if regularizer is None else regularizer.config()}


def checkpoint_path(ctx: TaskContext, key: dict[str, Any]) -> Path:
    """``<checkpoint_dir>/<model>__<dataset>__s<seed>__<objective>__<hash>.pt``."""
    assert ctx.checkpoint_dir is not None
    name = ctx.model_name or key["model"]
    stem = f"{name}__{ctx.dataset.name}__s{ctx.seed}__{key['objective']}__{config_hash(key)}"
    return ctx.checkpoint_dir / (re.sub(r"[^A-Za-z0-9._-]+", "_", stem) + ".pt")


def _save_atomic(path: Path, blob: dict[str, Any]) -> None:
    """``torch.save`` to a temporary file in the same folder, then ``os.replace`` (atomic on POSIX)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save(blob, fh)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _load(path: Path, key_json: str, curve_json: str | None, device: torch.device,
          compile: tuple[CompileMode, bool] | None = None) -> dict[str, Any] | None:
    """The cached blob when ``path`` holds one for exactly ``key_json`` (and, unless ``curve_json`` is None, with
    exactly that curve key; unless ``compile`` is None, trained with that ``(mode, fullgraph)`` request), else
    None."""
    if not path.exists():
        return None
    blob: dict[str, Any] = torch.load(path, map_location=device, weights_only=True)
    if blob.get("key") != key_json:
        return None
    if compile is not None:
        record = record_from(blob.get("result", {}).get("compile")) or CompileRecord()
        if (record.requested, record.fullgraph) != compile:
            return None
    return blob if curve_json is None or blob.get("curve_key") == curve_json else None


def trained_model(ctx: TaskContext, objective: str, regularizer: FDRegularizer | None = None,
                  curve: CurveRequest | None = None, compile: CompileMode | None = None,
                  compile_fullgraph: bool = False) -> tuple[InvertibleModel, TrainResult]:
    """A model of ``ctx.make_model()`` trained for ``objective`` (``"likelihood"`` or ``"classification"``).

    Loads it from ``ctx.checkpoint_dir`` when a checkpoint for the same model class and config, data set, seed,
    objective, budget and regulariser exists (with ``curve``: and the same curve key; with ``compile``: trained
    with the same ``compile`` and ``compile_fullgraph`` request; see the module docstring); otherwise trains it,
    recording ``curve``, with the loss compiled as ``compile`` asks (None: ``"off"``; a measurement task passes
    None and reuses a checkpoint however it was trained), and (when caching is on) saves the state dict, the curve
    key and the :class:`TrainResult` (curve and compile record included) atomically. Returns the model on
    ``ctx.device`` in ``eval()`` mode.
    """
    if objective not in OBJECTIVES:
        raise ValueError(f"unknown objective {objective!r}; known: {', '.join(OBJECTIVES)}")
    if regularizer is not None and objective != "likelihood":
        raise ValueError("the finite-difference regulariser applies to the likelihood objective only")
    model = ctx.make_model().to(ctx.device)
    key = checkpoint_key(model, ctx.dataset, ctx.seed, objective, ctx.budget, regularizer)
    key_json = json.dumps(key, sort_keys=True, default=str)
    curve_json = None if curve is None else json.dumps(curve.key(), sort_keys=True, default=str)
    path = checkpoint_path(ctx, key) if ctx.checkpoint_dir is not None else None
    asked = None if compile is None else (compile, compile_fullgraph)
    blob = _load(path, key_json, curve_json, ctx.device, asked) if path is not None else None
    if blob is not None:
        model.load_state_dict(blob["state_dict"])
        model.eval()
        return model, TrainResult.from_dict(blob["result"])
    if objective == "likelihood":
        result = train_likelihood(model, ctx.dataset, ctx.budget, ctx.device, ctx.seed, ctx.progress, regularizer,
                                  curve, compile or "off", compile_fullgraph)
    else:
        result = train_classifier(model, ctx.dataset, ctx.budget, ctx.device, ctx.seed, ctx.progress, curve,
                                  compile=compile or "off", compile_fullgraph=compile_fullgraph)
    if path is not None:
        state = {k: v.detach().cpu() if isinstance(v, Tensor) else v for k, v in model.state_dict().items()}
        _save_atomic(path, {"key": key_json, "curve_key": curve_json, "state_dict": state,
                            "result": asdict(result)})
    model.eval()
    return model, result
