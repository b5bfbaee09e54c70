"""The ``stability`` task: bi-Lipschitz estimates and exploding inverses, in and out of distribution.

Following Behrmann et al., "Understanding and Mitigating Exploding Inverses in Invertible Neural
Networks" (AISTATS 2021), the trained model is probed on four (or five) kinds of input, all in the space
the model sees (after the data set's pre-processing):

- ``test``: test data (discrete data dequantised with seeded noise);
- ``noise``: Gaussian noise with the test data's per-dimension mean and standard deviation;
- ``uniform``: uniform noise over the test data's per-dimension bounding box;
- ``scaled``: test data times ``scale`` (option, default 2);
- ``ood``: another data set's test data (option ``ood_dataset``: a name for ``bench.datasets.load``, a dict
  ``{name, **load options}`` or a :class:`Dataset`; it must have the same shape; the model's own
  pre-processing is applied).

For each kind, metric names carry the kind after ``@`` (``lip_forward@noise``) and ``extra["input"]``:

- ``lip_forward``, ``lip_inverse``: max over points of the local Lipschitz constants of ``f`` at ``x`` and
  of ``f^-1`` at ``f(x)`` (:mod:`bench.lipschitz`, computed on a float64 copy of the model; median in
  extra); ``condition``: max over points of their product.
- ``recon_err_f32``: max over finite reconstructions of ``max |f^-1(f(x)) - x|``, the model as trained;
  ``recon_err_f64``: the same on a float64 copy of the model and inputs.
- ``nonfinite_frac``: fraction of float32 reconstructions that are non-finite or exploded (error above
  ``explode_threshold``, default 1).
- ``memgrad_rel_err`` (memory-saving models): ``||g_saving - g_ordinary|| / ||g_ordinary||`` of the
  parameter gradients of one loss on the batch with ``set_memory_saving(True)`` and ``(False)``.

With option ``regularizer = {eps, weight, every}`` a second model is trained with the bi-directional
finite-difference regulariser (``bench.regularizers.FDRegularizer``, Behrmann et al. 2021) and every metric
is reported again with the suffix ``+reg`` (``lip_inverse@noise+reg``); ``regularizer_models`` (a list of
model names) limits that second training to those models.

Options: ``points`` (128, reconstructions), ``lip_points`` (32, Lipschitz estimates), ``grad_points`` (64),
``scale`` (2.0), ``ood_dataset``, ``explode_threshold`` (1.0), ``exact_max_dim`` (64), ``power_iters`` (100),
``kinds`` (subset of the kinds above), ``regularizer``, ``regularizer_models``.
"""

from __future__ import annotations

import copy
import math
from typing import Any, ClassVar

import torch
from torch import Tensor

from bench.datasets.base import Dataset
from bench.lipschitz import local_lipschitz
from bench.tasks.base import Metric, Task, TaskContext
from bench.tasks.measure import eval_inputs, failed_metrics, measured_model, reconstruction, resolve_grad_mode
from models.base import InvertibleModel

KINDS: tuple[str, ...] = ("test", "noise", "uniform", "scaled")
_BASE: list[tuple[str, str, bool | None]] = [
    ("lip_forward", "lipschitz", False),
    ("lip_inverse", "lipschitz", False),
    ("condition", "ratio", False),
    ("recon_err_f32", "max abs error", False),
    ("recon_err_f64", "max abs error", False),
    ("nonfinite_frac", "fraction", False),
]
_MEMGRAD: tuple[str, str, bool | None] = ("memgrad_rel_err", "relative error", False)


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


def _load_ood(option: Any, ctx: TaskContext) -> Dataset:
    if isinstance(option, Dataset):
        data = option
    else:
        from bench.datasets import load

        kwargs: dict[str, Any] = dict(option) if isinstance(option, dict) else {"name": str(option)}
        data = load(kwargs.pop("name"), seed=ctx.seed, **kwargs)
    if tuple(data.shape) != tuple(ctx.dataset.shape):
        raise ValueError(f"ood_dataset {data.name!r} has shape {data.shape}, the model's data {ctx.dataset.shape}")
    return data


def _loss(model: InvertibleModel, x: Tensor) -> Tensor:
    """A scalar of the model's output to differentiate: mean NLL, or mean log-sum-exp of the logits."""
    if model.capabilities.density:
        return -model.log_prob(x).mean()
    return model.logits(x).logsumexp(dim=1).mean()


def memgrad_rel_err(model: InvertibleModel, x: Tensor) -> float:
    """Relative difference of the parameter gradients with memory-saving backprop on and off.

    ``x``: (B, *shape). Returns ``||g_on - g_off|| / ||g_off||`` over all parameters concatenated. Runs on a
    copy of the model in training mode (memory-saving backprop is a training-time mechanism); the model
    itself is not touched.
    """
    model = copy.deepcopy(model).train()
    grads = []
    for enabled in (True, False):
        model.set_memory_saving(enabled)
        model.zero_grad(set_to_none=True)
        with torch.enable_grad():
            _loss(model, x).backward()
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
    requires_text: ClassVar[str] = "an inverse (every model)"
    metrics: ClassVar[tuple[str, ...]] = tuple(f"{m}@{k}" for k in KINDS for m, _, _ in _BASE)

    def run(self, ctx: TaskContext) -> list[Metric]:
        opts = ctx.options
        kinds = list(opts.get("kinds", KINDS))
        x_test = eval_inputs(ctx, int(opts.get("points", 128)))
        inputs = {k: ood_inputs(x_test, k, float(opts.get("scale", 2.0)), seed=1000 * ctx.seed + i)
                  for i, k in enumerate(kinds)}
        if opts.get("ood_dataset") is not None:
            data = _load_ood(opts["ood_dataset"], ctx)
            inputs["ood"] = eval_inputs(ctx, int(opts.get("points", 128)), dataset=data, draw=1)
        out = self._measure(ctx, inputs, regularizer=None)
        reg_opts = opts.get("regularizer")
        reg_models = opts.get("regularizer_models")
        if reg_opts and (reg_models is None or ctx.model_name in reg_models):
            from bench.regularizers import FDRegularizer

            out += self._measure(ctx, inputs, regularizer=FDRegularizer(**dict(reg_opts)),
                                 suffix="+reg", note={"regularizer": dict(reg_opts)})
        return out

    def _measure(self, ctx: TaskContext, inputs: dict[str, Tensor], regularizer: Any, suffix: str = "",
                 note: dict[str, Any] | None = None) -> list[Metric]:
        opts = ctx.options
        note = note or {}
        model, result = measured_model(ctx, regularizer=regularizer)
        caps = model.capabilities
        specs = [(f"{m}@{k}{suffix}", u, h) for k in inputs for m, u, h in _BASE]
        if caps.memory_saving:
            specs += [(f"{_MEMGRAD[0]}@{k}{suffix}", _MEMGRAD[1], _MEMGRAD[2]) for k in inputs]
        if getattr(result, "diverged", False):
            return failed_metrics(specs, "diverged", "training diverged")
        model.eval()
        mode = resolve_grad_mode(model, str(opts.get("grad", "auto")), full_forward=False)
        model64 = copy.deepcopy(model).to(torch.float64).eval()
        if caps.memory_saving:
            model64.set_memory_saving(False)  # same function; ordinary autograd allows double backward
        threshold = float(opts.get("explode_threshold", 1.0))
        lip_n = int(opts.get("lip_points", 32))
        metrics: list[Metric] = []
        for kind, x in inputs.items():
            extra = {"input": kind, **note}
            _, err32, info32 = reconstruction(model, x, mode)
            _, err64, info64 = reconstruction(model64, x.double(), mode)
            conv32, conv64 = info32.converged, info64.converged
            bad = ~torch.isfinite(err32) | (err32 > threshold)
            lip = local_lipschitz(model64, x[:lip_n].double(), exact_max_dim=int(opts.get("exact_max_dim", 64)),
                                  iters=int(opts.get("power_iters", 100)), seed=ctx.seed).summary()
            lip_extra = {**extra, "points": min(lip_n, x.shape[0]), "method": lip["method"],
                         "inverse_method": lip["inverse_method"]}
            for key, name in (("forward", "lip_forward"), ("inverse", "lip_inverse"), ("condition", "condition")):
                unit = "ratio" if key == "condition" else "lipschitz"
                metrics.append(Metric(f"{name}@{kind}{suffix}", lip[f"{key}_max"], unit, False,
                                      extra={**lip_extra, "median": lip[f"{key}_median"]}))
            for name, err, conv in (("recon_err_f32", err32, conv32), ("recon_err_f64", err64, conv64)):
                value = _finite_max(err)
                status = "diverged" if value is None else ("ok" if conv else "not_converged")
                finite = err[torch.isfinite(err)]
                metrics.append(Metric(f"{name}@{kind}{suffix}", value, "max abs error", False, status,
                                      extra={**extra, "points": int(err.numel()), "converged": conv,
                                             "median": float(finite.median()) if finite.numel() else math.inf,
                                             "n_nonfinite": int((~torch.isfinite(err)).sum())}))
            metrics.append(Metric(f"nonfinite_frac@{kind}{suffix}", float(bad.double().mean()), "fraction", False,
                                  extra={**extra, "points": int(err32.numel()), "threshold": threshold,
                                         "n_exploded": int(bad.sum())}))
            if caps.memory_saving:
                xg = x[: int(opts.get("grad_points", 64))]
                metrics.append(Metric(f"{_MEMGRAD[0]}@{kind}{suffix}", memgrad_rel_err(model, xg), _MEMGRAD[1],
                                      _MEMGRAD[2], extra={**extra, "points": int(xg.shape[0]),
                                                          "dtype": str(xg.dtype).replace("torch.", ""),
                                                          "f64": memgrad_rel_err(model64, xg.double())}))
        return metrics
