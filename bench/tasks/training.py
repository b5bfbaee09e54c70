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
its last finite parameters.

:func:`trained_model` is what tasks call: it trains once per (model class and config, data set, seed,
objective, budget, regulariser) and caches the state dict in ``ctx.checkpoint_dir``, so ``inverse_cost``,
``stability``, ``logdet`` and ``cost`` measure the model that ``likelihood`` trained.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from bench.datasets.base import Dataset
from bench.regularizers import FDRegularizer
from bench.run.rundir import config_hash
from bench.tasks.base import Budget, Metric, MetricSpec, TaskContext
from models.base import InvertibleModel
from models.loss import OBJECTIVES, training_loss

Progress = Callable[[int, int, str], None]
#: Maximum gradient norm (all trainable parameters together).
CLIP_NORM = 10.0
#: The number of points kept in ``TrainResult.history``.
HISTORY_POINTS = 100
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
        seconds: wall-clock time of training, ``data_init`` included.
        final_loss: mean loss over the last history window (the non-finite loss itself when diverged; NaN
            when no step was taken).
        diverged: a loss or gradient norm was non-finite; training stopped before applying it.
        history: mean loss (regulariser penalty included where applied) over consecutive windows of
            ``max(1, budget.steps // 100)`` steps.
        reason: why training stopped early (empty when it ran to ``budget.steps``).
    """

    steps: int
    seconds: float
    final_loss: float
    diverged: bool
    history: list[float] = field(default_factory=list)
    reason: str = ""


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


def _fit(model: InvertibleModel, dataset: Dataset, budget: Budget, device: torch.device, seed: int,
         loss_fn: Callable[[Tensor, Tensor, Tensor | None, int], Tensor], labels: Tensor | None,
         progress: Progress | None, objective: str) -> TrainResult:
    """The loop both objectives share. ``loss_fn(y, ldj, labels_batch, step) -> scalar``.

    With ``budget.steps == 0`` only ``model.data_init`` runs (on the first batch): the model as initialised.
    """
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model.to(device)
    model.train()
    dtype = model_dtype(model)
    batches = _Batches(dataset.train_x.shape[0], budget.batch_size, gen)
    window = max(1, budget.steps // HISTORY_POINTS)
    report_every = max(1, budget.steps // 20)

    def draw() -> tuple[Tensor, Tensor, Tensor | None]:
        idx = batches.next()
        y, ldj = prepare_batch(dataset, dataset.train_x[idx], device, dtype, gen)
        return y, ldj, None if labels is None else labels[idx].to(device)

    start = time.perf_counter()
    batch = draw()
    model.data_init(batch[0])
    if budget.steps == 0:
        model.eval()
        return TrainResult(steps=0, seconds=time.perf_counter() - start, final_loss=math.nan, diverged=False)
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError(f"{type(model).__name__} has no trainable parameters")
    # multi-tensor Adam: on the CPU torch defaults to a per-parameter loop, a quarter of a small flow's step
    opt = torch.optim.Adam(params, lr=budget.lr, foreach=True)
    history: list[float] = []
    window_sum, window_n = 0.0, 0
    final_loss, diverged, reason, steps = math.nan, False, "", 0
    for step in range(budget.steps):
        if step > 0:
            batch = draw()
        loss = loss_fn(*batch, step)
        value = float(loss.detach())
        if not math.isfinite(value):
            final_loss, diverged, reason = value, True, f"non-finite loss ({value}) at step {step}"
            break
        opt.zero_grad(set_to_none=True)
        loss.backward()
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
                done = max(done, (time.perf_counter() - start) / budget.seconds)
            for group in opt.param_groups:
                group["lr"] = budget.lr * 0.5 * (1.0 + math.cos(math.pi * min(1.0, done)))
        window_sum, window_n = window_sum + value, window_n + 1
        if window_n == window:
            history.append(window_sum / window_n)
            window_sum, window_n = 0.0, 0
        elapsed = time.perf_counter() - start
        out_of_time = budget.seconds is not None and elapsed >= budget.seconds
        if progress is not None and (steps % report_every == 0 or steps == budget.steps or out_of_time):
            progress(steps, budget.steps, f"{objective} step {steps}/{budget.steps} loss {value:.4g}")
        if out_of_time:
            reason = f"time budget of {budget.seconds} s reached after {steps} steps"
            break
    if window_n:
        history.append(window_sum / window_n)
    if not diverged:
        final_loss = history[-1] if history else math.nan
    seconds = time.perf_counter() - start
    model.eval()
    return TrainResult(steps=steps, seconds=seconds, final_loss=final_loss, diverged=diverged,
                       history=history, reason=reason)


def train_likelihood(model: InvertibleModel, dataset: Dataset, budget: Budget, device: torch.device, seed: int,
                     progress: Progress | None = None, regularizer: FDRegularizer | None = None) -> TrainResult:
    """Maximum likelihood: minimise ``-mean(log p_model(y) + ldj)`` (nats per example, ``y`` the pre-processed,
    dequantised batch of shape (B, *shape)), plus ``regularizer.penalty(model, y)`` on the steps it applies to.

    Leaves the model in ``eval()`` mode on ``device``.
    """

    def loss_fn(y: Tensor, ldj: Tensor, _labels: Tensor | None, step: int) -> Tensor:
        loss = training_loss(model, y, objective="likelihood", ldj=ldj)
        if regularizer is not None and regularizer.applies(step):
            loss = loss + regularizer.penalty(model, y)
        return loss

    return _fit(model, dataset, budget, device, seed, loss_fn, None, progress, "likelihood")


def train_classifier(model: InvertibleModel, dataset: Dataset, budget: Budget, device: torch.device, seed: int,
                     progress: Progress | None = None) -> TrainResult:
    """Minimise the cross entropy of ``model.logits(y)`` (B, num_classes) against ``dataset.train_y`` (B,).

    Leaves the model in ``eval()`` mode on ``device``.
    """
    if dataset.train_y is None:
        raise ValueError(f"data set {dataset.name!r} has no labels to train a classifier on")

    def loss_fn(y: Tensor, _ldj: Tensor, labels: Tensor | None, _step: int) -> Tensor:
        assert labels is not None
        return training_loss(model, y, labels, objective="classification")

    return _fit(model, dataset, budget, device, seed, loss_fn, dataset.train_y.long(), progress, "classification")


def train_metrics(result: TrainResult) -> list[Metric]:
    """``train_time`` (s) and ``train_steps`` (:data:`TRAIN_SPECS`), with the loss curve and the stop reason in
    ``extra``."""
    extra = {"final_loss": result.final_loss, "diverged": result.diverged, "history": result.history,
             "reason": result.reason}
    return [TRAIN_TIME(result.seconds, extra=extra), TRAIN_STEPS(float(result.steps))]


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


def _load(path: Path, key_json: str, device: torch.device) -> dict[str, Any] | None:
    """The cached blob when ``path`` holds one for exactly ``key_json``, else None."""
    if not path.exists():
        return None
    blob: dict[str, Any] = torch.load(path, map_location=device, weights_only=True)
    return blob if blob.get("key") == key_json else None


def trained_model(ctx: TaskContext, objective: str, regularizer: FDRegularizer | None = None
                  ) -> tuple[InvertibleModel, TrainResult]:
    """A model of ``ctx.make_model()`` trained for ``objective`` (``"likelihood"`` or ``"classification"``).

    Loads it from ``ctx.checkpoint_dir`` when a checkpoint for the same model class and config, data set, seed,
    objective, budget and regulariser exists; otherwise trains it and (when caching is on) saves the state dict
    and the :class:`TrainResult` atomically. Returns the model on ``ctx.device`` in ``eval()`` mode.
    """
    if objective not in OBJECTIVES:
        raise ValueError(f"unknown objective {objective!r}; known: {', '.join(OBJECTIVES)}")
    if regularizer is not None and objective != "likelihood":
        raise ValueError("the finite-difference regulariser applies to the likelihood objective only")
    model = ctx.make_model().to(ctx.device)
    key = checkpoint_key(model, ctx.dataset, ctx.seed, objective, ctx.budget, regularizer)
    key_json = json.dumps(key, sort_keys=True, default=str)
    path = checkpoint_path(ctx, key) if ctx.checkpoint_dir is not None else None
    blob = _load(path, key_json, ctx.device) if path is not None else None
    if blob is not None:
        model.load_state_dict(blob["state_dict"])
        model.eval()
        return model, TrainResult(**blob["result"])
    if objective == "likelihood":
        result = train_likelihood(model, ctx.dataset, ctx.budget, ctx.device, ctx.seed, ctx.progress, regularizer)
    else:
        result = train_classifier(model, ctx.dataset, ctx.budget, ctx.device, ctx.seed, ctx.progress)
    if path is not None:
        state = {k: v.detach().cpu() if isinstance(v, Tensor) else v for k, v in model.state_dict().items()}
        _save_atomic(path, {"key": key_json, "state_dict": state, "result": asdict(result)})
    model.eval()
    return model, result
