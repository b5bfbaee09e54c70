"""The ``stability`` task: bi-Lipschitz estimates and exploding inverses, in and out of distribution.

Following Behrmann et al., "Understanding and Mitigating Exploding Inverses in Invertible Neural Networks"
(AISTATS 2021), the trained model (the model as initialised with budget ``steps = 0``) is probed on several kinds
of input, all in the space the model sees (after the data set's pre-processing):

- ``test``: test data (discrete data dequantised with seeded noise);
- ``noise``: Gaussian noise with the test data's per-dimension mean and standard deviation;
- ``uniform``: uniform noise over the test data's per-dimension bounding box;
- ``scaled``: test data times ``scale``;
- ``ood``: another data set's test data (option ``ood_dataset``); it must have the model's shape, and the
  model's own pre-processing is applied.

Metrics (:data:`STABILITY_SPECS`), one row each per input kind, the kind in the row's ``input`` field:

- ``lip_forward``, ``lip_inverse``: max over points of the local Lipschitz constants of ``f`` at ``x`` and of
  ``f^-1`` at ``f(x)``, ``sigma_max(J_f(x))`` and ``1 / sigma_min(J_f(x))`` (:mod:`bench.lipschitz`, on a float64
  copy of the model; the median in ``extra``); ``condition``: max over points of their product. Above
  ``exact_max_dim`` they are Lanczos estimates (``lip_method``), the points of every input kind in one batch, each
  stopped when its
  a-posteriori relative error bound is at most ``lip_rtol`` or after ``lip_iters`` steps: ``extra.err_bound`` is
  the largest bound over the points (0 for the exact path; NaN for power iteration, which has none),
  ``extra.iters`` the steps of the forward and the inverse estimate.
- ``recon_err_f32``: max over finite reconstructions of ``max |f^-1(f(x)) - x|``, the model as trained;
  ``recon_err_f64``: the same on a float64 copy of the model and inputs.
- ``nonfinite_frac``: share of float32 reconstructions with a NaN or an Inf entry, or a finite error above
  ``explode_threshold`` (``extra``: ``n_nonfinite`` and ``n_above_threshold``).
- ``memgrad_rel_err`` (memory-saving models only): ``||g_saving - g_stored|| / ||g_stored||`` of the parameter
  gradients of one training loss (:func:`models.loss.training_loss`) with ``set_memory_saving(True)`` and
  ``(False)``.

With option ``regularizer`` (a table ``{eps, weight, every}``; ``{}`` takes the authors' settings, see
:class:`bench.regularizers.RegularizerOptions`) a second model is trained with the bi-directional
finite-difference regulariser (:class:`bench.regularizers.FDRegularizer`) and every metric is reported again
with ``variant = "reg"`` (its settings in ``extra["regularizer"]``); ``regularizer_models`` limits that second
training to the models named. The regulariser applies to the likelihood objective: a model trained for
classification gets ``unsupported`` rows for the ``reg`` variant.

The options are :class:`StabilityOptions`, validated when the suite loads.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import torch
from torch import Tensor

from bench.datasets.base import Dataset
from bench.lipschitz import local_lipschitz
from bench.options import OptionError, Options, near, opt
from bench.regularizers import FDRegularizer, RegularizerOptions
from bench.tasks.base import Metric, MetricSpec, Task, TaskContext
from bench.tasks.measure import GradOption, eval_inputs, measured_model, options_of, reconstruction, resolve_grad_mode
from models.base import InvertibleModel
from models.loss import Objective, default_objective, training_loss

InputKind = Literal["test", "noise", "uniform", "scaled"]
#: The generated input kinds, in the order they are measured (``ood`` comes last, from ``ood_dataset``).
KINDS: tuple[InputKind, ...] = ("test", "noise", "uniform", "scaled")
#: ``variant`` of the rows of the model trained with the regulariser.
REG_VARIANT = "reg"

LIP_FORWARD = MetricSpec("lip_forward", "lipschitz", "down",
                         "max over points of the local Lipschitz constant of f, sigma_max(J_f(x))")
LIP_INVERSE = MetricSpec("lip_inverse", "lipschitz", "down",
                         "max over points of the local Lipschitz constant of f^-1 at f(x), 1 / sigma_min(J_f(x))")
CONDITION = MetricSpec("condition", "ratio", "down", "max over points of the local condition number of J_f(x)")
RECON_ERR_F32 = MetricSpec("recon_err_f32", "max abs error", "down",
                           "max over finite reconstructions of max |f^-1(f(x)) - x|, the model as trained")
RECON_ERR_F64 = MetricSpec("recon_err_f64", "max abs error", "down",
                           "max |f^-1(f(x)) - x| on a float64 copy of the model and inputs")
NONFINITE_FRAC = MetricSpec("nonfinite_frac", "fraction", "down",
                            "share of float32 reconstructions with a NaN or Inf, or an error above explode_threshold")
MEMGRAD_REL_ERR = MetricSpec("memgrad_rel_err", "relative error", "down",
                             "||g_saving - g_stored|| / ||g_stored|| of the parameter gradients (memory-saving models)")
#: Every metric of the task, per input kind (``memgrad_rel_err`` for memory-saving models only).
STABILITY_SPECS: tuple[MetricSpec, ...] = (LIP_FORWARD, LIP_INVERSE, CONDITION, RECON_ERR_F32, RECON_ERR_F64,
                                           NONFINITE_FRAC, MEMGRAD_REL_ERR)


def _split_ood(option: str | dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """``(name, loader options)`` of the ``ood_dataset`` option."""
    if isinstance(option, str):
        return option, {}
    table = dict(option)
    name = table.pop("name", None)
    if not isinstance(name, str):
        raise ValueError(f"ood_dataset: a table needs name = \"<data set>\", got {option!r}")
    return name, table


def _check_ood(option: str | dict[str, Any]) -> None:
    """The data set's name and loader options (:func:`bench.datasets.parse_options`); ValueError, one line."""
    from bench.datasets import parse_options

    name, table = _split_ood(option)
    try:
        parse_options(name, table, "ood_dataset")
    except OptionError as exc:
        raise ValueError(str(exc)) from exc
    except (KeyError, ImportError, AttributeError) as exc:
        raise ValueError(f"ood_dataset: {exc}") from exc


def _check_model_names(models: tuple[str, ...]) -> None:
    """Registered model names or ``module:Class`` targets; else ValueError with near matches."""
    from models.registry import names

    known = names()
    for m in models:
        if m not in known and ":" not in m:
            raise ValueError(f"regularizer_models: unknown model {m!r}{near(m, known)}")


@dataclass(frozen=True)
class StabilityOptions(Options):
    """Options of the ``stability`` task (see the module docstring)."""

    points: int = field(default=128, metadata=opt("points per input kind for the reconstruction errors", min=1))
    lip_points: int = field(default=32, metadata=opt(
        "points per input kind for the Lipschitz estimates (the first of the points above)", min=1))
    grad_points: int = field(default=64, metadata=opt("points for memgrad_rel_err (memory-saving models)", min=1))
    scale: float = field(default=2.0, metadata=opt("factor of the scaled inputs", min=0.0, min_exclusive=True))
    ood_dataset: str | dict[str, Any] | None = field(default=None, metadata=opt(
        "another data set as ood inputs: a name, or a table {name = ..., loader options}"))
    explode_threshold: float = field(default=1.0, metadata=opt(
        "a finite reconstruction error above this counts as exploded in nonfinite_frac", min=0.0,
        min_exclusive=True))
    exact_max_dim: int = field(default=64, metadata=opt(
        "largest D with the exact Jacobian's singular values; above it lip_method (JVP/VJP products)", min=0))
    power_iters: int = field(default=100, metadata=opt(
        "power iterations per Lipschitz estimate above exact_max_dim (lip_method power)", min=1))
    lip_method: Literal["lanczos", "power"] = field(default="lanczos", metadata=opt(
        "Lipschitz estimates above exact_max_dim: Lanczos on J^T J with error bounds, or power iteration (inverse "
        "iteration with CG solves for iterative inverses)"))
    lip_iters: int = field(default=300, metadata=opt(
        "most Lanczos steps per Lipschitz estimate above exact_max_dim (one JVP and one VJP each)", min=1))
    lip_rtol: float = field(default=1e-3, metadata=opt(
        "Lanczos stops when every point's bound on its relative error is at most this; the bound reached is in "
        "extra.err_bound", min=0.0, min_exclusive=True))
    kinds: tuple[InputKind, ...] = field(default=KINDS, metadata=opt("generated input kinds to measure on"))
    grad: GradOption = field(default="auto", metadata=opt(
        "autograd mode of the reconstructions (auto: grad only where the latent map needs it)"))
    objective: Objective | None = field(default=None, metadata=opt(
        "the objective the measured model is trained for (none: likelihood for density models)"))
    regularizer: RegularizerOptions | None = field(default=None, metadata=opt(
        "train a second model with the finite-difference regulariser, a table {eps, weight, every} ({} takes the "
        "authors' eps = 0.1, weight = 1e-4, every = 10), and report its metrics again with variant reg"))
    regularizer_models: tuple[str, ...] | None = field(default=None, metadata=opt(
        "models that get the regularised twin (none: every model)"))

    def __post_init__(self) -> None:
        if len(set(self.kinds)) != len(self.kinds):
            raise ValueError(f"kinds: each kind at most once, got {list(self.kinds)}")
        if not self.kinds and self.ood_dataset is None:
            raise ValueError("kinds is empty and there is no ood_dataset: nothing to measure")
        if self.ood_dataset is not None:
            _check_ood(self.ood_dataset)
        if self.regularizer is not None and self.objective == "classification":
            raise ValueError("regularizer: the finite-difference regulariser applies to the likelihood objective "
                             "only, and objective is classification")
        if self.regularizer_models is not None:
            _check_model_names(self.regularizer_models)


def ood_inputs(x: Tensor, kind: str, scale: float = 2.0, seed: int = 0) -> Tensor:
    """Inputs of one kind built from test inputs ``x``: (N, *shape) -> (N, *shape) (see module docstring)."""
    gen = torch.Generator().manual_seed(seed)
    flat = x.detach().double().cpu().reshape(x.shape[0], -1)
    if kind == "test":
        out = flat
    elif kind == "noise":
        out = flat.mean(0) + flat.std(0) * torch.randn(flat.shape, generator=gen, dtype=torch.float64)
    elif kind == "uniform":
        lo, hi = flat.min(0).values, flat.max(0).values
        out = lo + (hi - lo) * torch.rand(flat.shape, generator=gen, dtype=torch.float64)
    elif kind == "scaled":
        out = flat * scale
    else:
        raise ValueError(f"unknown input kind {kind!r}; known: {', '.join(KINDS)}")
    return out.reshape(x.shape).to(device=x.device, dtype=x.dtype)


def load_ood(option: str | dict[str, Any], ctx: TaskContext) -> Dataset:
    """The ``ood_dataset`` option's data set (a registry name, a ``.npz`` / ``.npy`` path or a ``module:function``
    plug-in, with loader options from a table; :func:`bench.datasets.load_table`), checked to have the shape of
    the model's data."""
    from bench.datasets import load_table

    name, table = _split_ood(option)
    data = load_table(name, table, seed=ctx.seed)
    if tuple(data.shape) != tuple(ctx.dataset.shape):
        raise ValueError(f"ood_dataset {data.name!r} has shape {data.shape}, the model's data {ctx.dataset.shape}")
    return data


def memgrad_rel_err(model: InvertibleModel, x: Tensor, objective: Objective | None = None) -> float:
    """Relative difference of the parameter gradients with memory-saving backprop on and off.

    ``x``: (B, *shape). The loss is :func:`models.loss.training_loss` for ``objective`` (None: the model's
    default; classifiers with cycling labels). Returns ``||g_on - g_off|| / ||g_off||`` over all parameters
    concatenated (``||g_on - g_off||`` when ``g_off`` is 0). Runs on a copy of the model in training mode
    (memory-saving backprop is a training-time mechanism); the model itself is not touched.
    """
    model = copy.deepcopy(model).train()
    grads = []
    for enabled in (True, False):
        model.set_memory_saving(enabled)
        model.zero_grad(set_to_none=True)
        with torch.enable_grad():
            training_loss(model, x, objective=objective).backward()
        grads.append(torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1).double()
                                for p in model.parameters()]))
    denom = grads[1].norm()
    return float((grads[0] - grads[1]).norm() / denom) if denom > 0 else float((grads[0] - grads[1]).norm())


def _finite_max(err: Tensor) -> float | None:
    finite = err[torch.isfinite(err)]
    return float(finite.max()) if finite.numel() else None


class StabilityTask(Task):
    """Local bi-Lipschitz constants, reconstruction errors and exploded inverses (see module docstring)."""

    name: ClassVar[str] = "stability"
    Options = StabilityOptions
    trains_model: ClassVar[bool] = False
    requires_text: ClassVar[str] = "an inverse (every model)"
    metric_specs: ClassVar[tuple[MetricSpec, ...]] = STABILITY_SPECS

    def run(self, ctx: TaskContext) -> list[Metric]:
        opts = options_of(ctx, StabilityOptions)
        x_test = eval_inputs(ctx, opts.points)
        inputs: dict[str, Tensor] = {k: ood_inputs(x_test, k, opts.scale, seed=1000 * ctx.seed + i)
                                     for i, k in enumerate(opts.kinds)}
        if opts.ood_dataset is not None:
            inputs["ood"] = eval_inputs(ctx, opts.points, dataset=load_ood(opts.ood_dataset, ctx), draw=1)
        model, result = measured_model(ctx, objective=opts.objective)
        objective = opts.objective or default_objective(model)
        out = self._measure(opts, ctx.seed, inputs, model, result, objective, variant="")
        reg = opts.regularizer
        if reg is None or (opts.regularizer_models is not None and ctx.model_name not in opts.regularizer_models):
            return out
        note = {"regularizer": reg.to_dict()}
        if objective != "likelihood":
            why = f"the finite-difference regulariser applies to the likelihood objective only, not {objective}"
            return out + self._valueless(inputs, model, "unsupported", why, REG_VARIANT, note)
        model_r, result_r = measured_model(ctx, regularizer=FDRegularizer.from_options(reg), objective=objective)
        return out + self._measure(opts, ctx.seed, inputs, model_r, result_r, objective, REG_VARIANT, note)

    @staticmethod
    def _specs(model: InvertibleModel) -> tuple[MetricSpec, ...]:
        return STABILITY_SPECS if model.capabilities.memory_saving else STABILITY_SPECS[:-1]

    def _valueless(self, inputs: dict[str, Tensor], model: InvertibleModel, status: str, why: str, variant: str,
                   note: dict[str, Any] | None = None) -> list[Metric]:
        """One valueless metric per spec and input kind."""
        return [spec(None, status=status, input=kind, variant=variant, extra={"reason": why, **(note or {})})
                for kind in inputs for spec in self._specs(model)]

    @staticmethod
    def _lipschitz(opts: StabilityOptions, seed: int, inputs: dict[str, Tensor], model64: InvertibleModel
                   ) -> dict[str, dict[str, Any]]:
        """:meth:`bench.lipschitz.LipschitzEstimate.summary` per input kind, from one batched estimate over the
        first ``lip_points`` points of every kind together (one graph, one JVP and one VJP per step for all)."""
        parts = {kind: x[:opts.lip_points].double() for kind, x in inputs.items()}
        lanczos = opts.lip_method == "lanczos"
        est = local_lipschitz(model64, torch.cat(list(parts.values())), method="auto" if lanczos else "power",
                              exact_max_dim=opts.exact_max_dim, iters=opts.lip_iters if lanczos else opts.power_iters,
                              seed=seed, rtol=opts.lip_rtol)
        out, start = {}, 0
        for kind, x in parts.items():
            out[kind] = est.select(slice(start, start + x.shape[0])).summary()
            start += x.shape[0]
        return out

    def _measure(self, opts: StabilityOptions, seed: int, inputs: dict[str, Tensor], model: InvertibleModel,
                 result: Any, objective: Objective, variant: str, note: dict[str, Any] | None = None
                 ) -> list[Metric]:
        note = note or {}
        if getattr(result, "diverged", False):
            return self._valueless(inputs, model, "diverged", "training diverged", variant, note)
        model.eval()
        caps = model.capabilities
        mode = resolve_grad_mode(model, opts.grad, full_forward=False)
        model64 = copy.deepcopy(model).to(torch.float64).eval()
        if caps.memory_saving:
            model64.set_memory_saving(False)  # same function; ordinary autograd allows double backward
        lips = self._lipschitz(opts, seed, inputs, model64)
        metrics: list[Metric] = []
        for kind, x in inputs.items():
            def metric(spec: MetricSpec, value: float | None, status: str = "ok", _kind: str = kind,
                       **extra: Any) -> Metric:
                return spec(value, status=status, input=_kind, variant=variant, extra={**extra, **note})

            _, err32, info32 = reconstruction(model, x, mode)
            _, err64, info64 = reconstruction(model64, x.double(), mode)
            lip = lips[kind]
            lip_extra = {"points": min(opts.lip_points, x.shape[0]), "method": lip["method"],
                         "inverse_method": lip["inverse_method"], "iters": lip["iters"]}
            for spec, key in ((LIP_FORWARD, "forward"), (LIP_INVERSE, "inverse"), (CONDITION, "condition")):
                metrics.append(metric(spec, lip[f"{key}_max"], median=lip[f"{key}_median"],
                                      err_bound=lip[f"{key}_err_bound"], **lip_extra))
            for spec, err, conv in ((RECON_ERR_F32, err32, info32.converged), (RECON_ERR_F64, err64, info64.converged)):
                value = _finite_max(err)
                finite = err[torch.isfinite(err)]
                metrics.append(metric(spec, value, "diverged" if value is None else ("ok" if conv else "not_converged"),
                                      points=int(err.numel()), converged=conv,
                                      median=float(finite.median()) if finite.numel() else math.inf,
                                      n_nonfinite=int((~torch.isfinite(err)).sum())))
            nonfinite = ~torch.isfinite(err32)  # a NaN or an Inf anywhere in the reconstruction
            above = torch.isfinite(err32) & (err32 > opts.explode_threshold)
            metrics.append(metric(NONFINITE_FRAC, float((nonfinite | above).double().mean()),
                                  points=int(err32.numel()), threshold=opts.explode_threshold,
                                  n_nonfinite=int(nonfinite.sum()), n_above_threshold=int(above.sum())))
            if caps.memory_saving:
                xg = x[:opts.grad_points]
                metrics.append(metric(MEMGRAD_REL_ERR, memgrad_rel_err(model, xg, objective),
                                      points=int(xg.shape[0]), dtype=str(xg.dtype).replace("torch.", ""),
                                      f64=memgrad_rel_err(model64, xg.double(), objective)))
        return metrics
