"""The ``exploding`` task: exploding inverses over training, measured at checkpoints of ONE training run.

Behrmann et al., "Understanding and Mitigating Exploding Inverses in Invertible Neural Networks", AISTATS 2021
(their code: asteroidhouse/INN-exploding-inverses, ``glow/analyze.py``): flows trained by maximum likelihood are
analysed at checkpoints over training, on test data and on out-of-distribution inputs that live in the data range.
Here the model is trained once by likelihood (:func:`bench.tasks.training.train_likelihood`, the suite's budget)
and evaluated inside that run at the steps ``checkpoints`` (through the training loop's learning-curve hook,
:class:`bench.tasks.curves.CurveRequest` with explicit steps: the training clock is paused and the random state
forked during each evaluation, so ``train_time`` counts training only and the weights do not depend on the
evaluations). Checkpoints past the steps the budget allows are not evaluated; the final step always is (its row's
``settings.step`` says which step it is, and ``extra.final`` marks it).

Inputs (``inputs``), all in the data space, then the data set's pre-processing (what the model sees); the data
range is ``[0, 1]`` for discrete data (stored as ``k / L``), else ``[min, max]`` of the test data:

- ``test``: the fixed dequantised test points (:func:`bench.tasks.measure.eval_inputs`);
- ``uniform``: uniform on the range (the authors' ``uniform``);
- ``gaussian``: ``clip(mid + width * N(0, 1), lo, hi)``, the authors' ``clip(0.5 + N(0, 1), 0, 1)`` on ``[0, 1]``;
- ``rademacher``: each entry ``lo`` or ``hi`` with probability 1/2 (the authors' ``Bernoulli(0.5)`` images).

Metrics at each checkpoint, one row per input kind (``input`` set, ``settings = {"step": k}``):

- ``nonfinite_frac``: share of examples whose float32 reconstruction ``f^-1(f(x))`` has any NaN or Inf
  (``extra``: ``n_nan``, ``n_inf``, counted per example, and ``points``); no threshold on finite errors;
- ``recon_err``: max over the finite reconstructions of ``max |f^-1(f(x)) - x|`` (status ``diverged``, no value,
  when none is finite);
- ``condition``: max over ``jacobian_points`` points of ``sigma_max / sigma_min`` of the autograd Jacobian of the
  model as trained (``jacobian_dtype``; ``extra``: ``lip_forward`` = max sigma_max, ``lip_inverse`` = max
  1 / sigma_min), only at ``D <= jacobian_max_dim`` (``unsupported`` rows above);
- ``logdet_gap``: max over the same points of ``|analytic ladj - log|det J||``, the failure of the
  change-of-variables formula (``slogdet`` in float64 of that Jacobian; the authors' ``dlogdet``). Estimator models
  are compared through their exact log-det method where they have one (the native i-ResNet's block-wise exact
  Jacobians), else ``unsupported``;
- ``test_bpd`` (``test`` only): bits/dim of the first ``bpd_points`` fixed test points (exact log-det at small D,
  as :func:`bench.tasks.likelihood.logdet_plan` scores).

Plus ``train_time`` / ``train_steps`` and ``eval_time`` (the curve of ``test_bpd`` over the checkpoints in its
``extra``).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import torch
from torch import Tensor

from bench.datasets.base import Dataset, DatasetInfo
from bench.lipschitz import latent_map
from bench.options import Options, opt
from bench.tasks.base import Metric, MetricSpec, Task, TaskContext
from bench.tasks.curves import EVAL_TIME, CurveRequest, curve_metrics
from bench.tasks.measure import eval_inputs, grad_context, options_of, resolve_grad_mode
from bench.tasks.training import (
    TRAIN_SPECS,
    TrainResult,
    fixed_test_x,
    preprocess_batch,
    train_likelihood,
    train_metrics,
)
from bench.units import bits_per_dim
from models.base import Capabilities, InvertibleModel
from models.jacobian import batch_jacobian

InputKind = Literal["test", "uniform", "gaussian", "rademacher"]
KINDS: tuple[InputKind, ...] = ("test", "uniform", "gaussian", "rademacher")
JacobianDtype = Literal["float32", "float64"]

NONFINITE_FRAC = MetricSpec("nonfinite_frac", "fraction", "down",
                            "share of examples whose float32 reconstruction has a NaN or an Inf (settings: step)")
RECON_ERR = MetricSpec("recon_err", "max abs error", "down",
                       "max over finite reconstructions of max |f^-1(f(x)) - x| (settings: step)")
CONDITION = MetricSpec("condition", "ratio", "down",
                       "max over points of sigma_max / sigma_min of the autograd Jacobian J_f(x) (settings: step)")
LOGDET_GAP = MetricSpec("logdet_gap", "nats", "down",
                        "max over points of |analytic ladj - log|det J_f(x)|| (settings: step)")
TEST_BPD = MetricSpec("test_bpd", "bits/dim", "down", "bits/dim of the fixed test points (settings: step)")
EXPLODING_SPECS: tuple[MetricSpec, ...] = (NONFINITE_FRAC, RECON_ERR, CONDITION, LOGDET_GAP, TEST_BPD)


@dataclass(frozen=True)
class ExplodingOptions(Options):
    """Options of the ``exploding`` task (see the module docstring)."""

    checkpoints: tuple[int, ...] = field(default=(0, 100, 300, 1000, 3000), metadata=opt(
        "training steps at which the model is evaluated (within one run; the final step always is)", min=0))
    inputs: tuple[InputKind, ...] = field(default=KINDS, metadata=opt("input kinds to evaluate on"))
    points: int = field(default=128, metadata=opt("points per input kind for nonfinite_frac and recon_err", min=1))
    jacobian_points: int = field(default=8, metadata=opt(
        "points per input kind for condition and logdet_gap (the first of the points above)", min=1))
    jacobian_max_dim: int = field(default=64, metadata=opt(
        "largest D with the Jacobian metrics (D backward passes per point); unsupported rows above", min=1))
    jacobian_dtype: JacobianDtype = field(default="float32", metadata=opt(
        "dtype of the model whose Jacobian is taken (float32: the model as trained, as the authors)"))
    bpd_points: int = field(default=256, metadata=opt("fixed test points for test_bpd", min=1))

    def __post_init__(self) -> None:
        if not self.checkpoints:
            raise ValueError("checkpoints: give at least one step")
        if len(set(self.inputs)) != len(self.inputs) or not self.inputs:
            raise ValueError(f"inputs: each kind once, at least one, got {list(self.inputs)}")


def data_range(dataset: Dataset) -> tuple[float, float]:
    """``(lo, hi)`` of the data space: ``(0, 1)`` for discrete data, else the test data's min and max."""
    if dataset.levels is not None:
        return 0.0, 1.0
    x = dataset.test_x.double()
    return float(x.min()), float(x.max())


def range_inputs(kind: str, n: int, shape: tuple[int, ...], lo: float, hi: float, seed: int) -> Tensor:
    """``n`` generated inputs of one kind in ``[lo, hi]``: (n, *shape) float64 on the CPU (module docstring)."""
    gen = torch.Generator().manual_seed(seed)
    size = (n, *shape)
    if kind == "uniform":
        return lo + (hi - lo) * torch.rand(size, generator=gen, dtype=torch.float64)
    if kind == "gaussian":
        noise = torch.randn(size, generator=gen, dtype=torch.float64)
        return (0.5 * (lo + hi) + (hi - lo) * noise).clamp(lo, hi)
    if kind == "rademacher":
        return torch.where(torch.rand(size, generator=gen, dtype=torch.float64) < 0.5, lo, hi).to(torch.float64)
    raise ValueError(f"unknown generated input kind {kind!r}; known: uniform, gaussian, rademacher")


def exploding_inputs(ctx: TaskContext, opts: ExplodingOptions) -> dict[str, Tensor]:
    """Every input kind of ``opts.inputs`` as the model sees it: kind -> (points, *shape) float32 on the device."""
    dataset = ctx.dataset
    lo, hi = data_range(dataset)
    out: dict[str, Tensor] = {}
    for i, kind in enumerate(opts.inputs):
        if kind == "test":
            out[kind] = eval_inputs(ctx, opts.points)
            continue
        x = range_inputs(kind, opts.points, tuple(dataset.shape), lo, hi, seed=7919 * (ctx.seed + 1) + i)
        out[kind] = preprocess_batch(dataset, x, ctx.device, torch.float32)[0].detach()
    return out


def nonfinite_counts(xr: Tensor) -> dict[str, int]:
    """Per-example counts of reconstructions ``xr``: (B, *shape) with a NaN, with an Inf, with either."""
    flat = xr.reshape(xr.shape[0], -1)
    nan, inf = torch.isnan(flat).any(1), torch.isinf(flat).any(1)
    return {"n_nan": int(nan.sum()), "n_inf": int(inf.sum()), "n_nonfinite": int((nan | inf).sum())}


def reconstruction_metrics(model: InvertibleModel, x: Tensor, step: int, kind: str) -> list[Metric]:
    """``nonfinite_frac`` and ``recon_err`` of ``x``: (B, *shape) through the model as it is (float32)."""
    settings = {"step": step}
    with grad_context(resolve_grad_mode(model, "auto", full_forward=False)):
        z = latent_map(model)(x).detach()
        xr, info = model.invert(z)
    xr = xr.detach()
    counts = nonfinite_counts(xr)
    n = x.shape[0]
    finite = torch.isfinite(xr.reshape(n, -1)).all(1)
    err = (xr.double() - x.double()).abs().reshape(n, -1).max(1).values[finite]
    extra: dict[str, Any] = {"points": n, "converged": info.converged, **counts}
    rows = [NONFINITE_FRAC(counts["n_nonfinite"] / n, input=kind, settings=settings, extra=extra)]
    if err.numel() == 0:
        rows.append(RECON_ERR(None, status="diverged", input=kind, settings=settings,
                              extra={**extra, "reason": "no finite reconstruction"}))
    else:
        rows.append(RECON_ERR(float(err.max()), status="ok" if info.converged else "not_converged", input=kind,
                              settings=settings, extra={**extra, "median": float(err.median())}))
    return rows


def analytic_logdet(model: InvertibleModel, x: Tensor) -> tuple[Tensor | None, str]:
    """The model's own log-det of ``x``: (B, *shape) -> ((B,) or None, where it came from).

    Exact models: ``forward``'s ladj. Estimator models: their forward with ``method = "exact"`` where they accept
    it (the native i-ResNet's block-wise exact Jacobians); None otherwise (a stochastic estimate is not the
    analytic log-det)."""
    from bench.tasks.likelihood import LikelihoodOptions, logdet_plan, plan_applied

    if model.capabilities.logdet == "exact":
        with torch.no_grad():
            return model(x)[1].detach(), "forward"
    plan = logdet_plan(model, model.dim, LikelihoodOptions(exact_max_dim=model.dim))
    if plan.logdet_source != "model":
        return None, plan.logdet_source
    with plan_applied(model, plan), torch.enable_grad():
        return model(x)[1].detach(), "forward (method exact)"


def jacobian_metrics(model: InvertibleModel, x: Tensor, step: int, kind: str) -> list[Metric]:
    """``condition`` and ``logdet_gap`` at ``x``: (B, *shape), from one batched autograd Jacobian of the model's
    latent map (eval mode, examples independent) in the model's and ``x``'s dtype."""
    settings = {"step": step}
    jac = batch_jacobian(latent_map(model), x, batched=True).double()
    finite = torch.isfinite(jac).flatten(1).all(1)
    extra: dict[str, Any] = {"points": x.shape[0], "dtype": str(x.dtype).replace("torch.", ""),
                             "n_nonfinite_jacobian": int((~finite).sum())}
    rows: list[Metric] = []
    if not bool(finite.any()):
        why = {**extra, "reason": "every Jacobian has a non-finite entry"}
        return [CONDITION(None, status="diverged", input=kind, settings=settings, extra=why),
                LOGDET_GAP(None, status="diverged", input=kind, settings=settings, extra=why)]
    sv = torch.linalg.svdvals(jac[finite])
    cond = sv[:, 0] / sv[:, -1]
    rows.append(CONDITION(float(cond.max()), input=kind, settings=settings,
                          extra={**extra, "median": float(cond.median()), "lip_forward": float(sv[:, 0].max()),
                                 "lip_inverse": float((1.0 / sv[:, -1]).max())}))
    ladj, source = analytic_logdet(model, x)
    if ladj is None:
        rows.append(LOGDET_GAP(None, status="unsupported", input=kind, settings=settings,
                               extra={**extra, "reason": f"stochastic log-det estimate without an exact method "
                                                         f"({source})"}))
        return rows
    numeric = torch.linalg.slogdet(jac[finite])[1]
    gap = (ladj.double()[finite] - numeric).abs()
    value = float(gap.max()) if bool(torch.isfinite(gap).all()) else math.inf
    rows.append(LOGDET_GAP(value, input=kind, settings=settings,
                           extra={**extra, "median": float(gap.median()), "logdet_source": source}))
    return rows


def bpd_metric(model: InvertibleModel, ctx: TaskContext, n: int, step: int) -> tuple[Metric, float]:
    """``test_bpd`` of the first ``n`` fixed test points and its value (NaN when not finite)."""
    from bench.tasks.likelihood import LikelihoodOptions, log_likelihood, logdet_plan, plan_applied

    dataset = ctx.dataset
    plan = logdet_plan(model, dataset.dim, LikelihoodOptions())
    with plan_applied(model, plan):
        logp = log_likelihood(model, dataset, fixed_test_x(dataset, ctx.seed)[:n], ctx.device, plan)
    nll = -logp.double()
    settings = {"step": step}
    extra: dict[str, Any] = {"points": int(nll.numel()), **plan.record()}
    if not bool(torch.isfinite(nll).all()):
        extra["nonfinite_fraction"] = float((~torch.isfinite(nll)).double().mean())
        return TEST_BPD(None, status="diverged", input="test", settings=settings, extra=extra), math.nan
    value = float(bits_per_dim(float(nll.mean()), dataset.dim, dataset.levels))
    return TEST_BPD(value, input="test", settings=settings, extra=extra), value


def checkpoint_evaluator(ctx: TaskContext, opts: ExplodingOptions, inputs: dict[str, Tensor],
                         rows: list[list[Metric]]) -> Callable[[Any], float]:
    """The learning-curve callback: evaluates every metric on ``inputs`` and appends that evaluation's rows to
    ``rows`` (one list per call, in the order the training loop calls it); returns ``test_bpd`` (NaN if not
    measured). The step is filled in afterwards from the curve (the loop records one curve point per call)."""
    jacobian_ok = ctx.dataset.dim <= opts.jacobian_max_dim
    jdtype = torch.float64 if opts.jacobian_dtype == "float64" else torch.float32

    def evaluate(model: InvertibleModel) -> float:
        out: list[Metric] = []
        bpd = math.nan
        jmodel = model if jdtype == torch.float32 else copy.deepcopy(model).to(jdtype).eval()
        for kind, x in inputs.items():
            out.extend(reconstruction_metrics(model, x, -1, kind))
            if jacobian_ok:
                out.extend(jacobian_metrics(jmodel, x[:opts.jacobian_points].to(jdtype), -1, kind))
            else:
                why = {"reason": f"D = {ctx.dataset.dim} > jacobian_max_dim = {opts.jacobian_max_dim}"}
                out.extend(spec(None, status="unsupported", input=kind, settings={"step": -1}, extra=why)
                           for spec in (CONDITION, LOGDET_GAP))
            if kind == "test":
                row, bpd = bpd_metric(model, ctx, opts.bpd_points, -1)
                out.append(row)
        rows.append(out)
        return bpd

    return evaluate


def checkpoint_rows(result: TrainResult, evaluations: list[list[Metric]], checkpoints: Sequence[int],
                    curve_metric: str) -> list[Metric]:
    """The rows of a run evaluated at ``checkpoints`` through a curve callback that appended one list of rows per
    evaluation to ``evaluations``: each list gets its step from the curve (``settings["step"]``), evaluations at
    steps not asked for are dropped except the final one (``extra.final``; ``extra.diverged_at`` when training
    diverged), then ``eval_time`` (the curve of ``curve_metric``) and the training rows (``extra
    .checkpoints_not_reached`` lists the checkpoints the budget did not reach)."""
    curve = result.curve
    if curve is None or len(curve.step) != len(evaluations):
        raise RuntimeError("the training loop did not record one curve point per checkpoint evaluation")
    wanted = set(checkpoints)
    out: list[Metric] = []
    for step, metrics in zip(curve.step, evaluations, strict=True):
        final = step == curve.step[-1]
        if step not in wanted and not final:
            continue
        for m in metrics:
            m.settings["step"] = step
            if final:
                m.extra["final"] = True
                if result.diverged:
                    m.extra["diverged_at"] = result.reason
        out.extend(metrics)
    tail = [*curve_metrics(curve, curve_metric, {}, {}), *train_metrics(result)]
    skipped = sorted(wanted - set(curve.step))
    if skipped:
        for row in tail:
            row.extra["checkpoints_not_reached"] = skipped
    return out + tail


class ExplodingTask(Task):
    """Non-finite reconstructions, reconstruction error, condition number and log-det gap over training."""

    name: ClassVar[str] = "exploding"
    Options = ExplodingOptions
    trains_model: ClassVar[bool] = True
    requires_text: ClassVar[str] = "a density model with an inverse, accepting the data set's input kind"
    metric_specs: ClassVar[tuple[MetricSpec, ...]] = (*EXPLODING_SPECS, EVAL_TIME, *TRAIN_SPECS)

    @classmethod
    def supports(cls, caps: Capabilities, dataset: DatasetInfo) -> bool:
        return caps.density and dataset.kind in caps.inputs

    def run(self, ctx: TaskContext) -> list[Metric]:
        opts = options_of(ctx, ExplodingOptions)
        inputs = exploding_inputs(ctx, opts)
        evaluations: list[list[Metric]] = []
        request = CurveRequest("test_bpd", checkpoint_evaluator(ctx, opts, inputs, evaluations),
                               evals=len(opts.checkpoints) + 2, steps=tuple(opts.checkpoints),
                               settings={"task": "exploding"})
        model = ctx.make_model().to(ctx.device)
        result = train_likelihood(model, ctx.dataset, ctx.budget, ctx.device, ctx.seed, ctx.progress, curve=request)
        return checkpoint_rows(result, evaluations, opts.checkpoints, "test_bpd")
