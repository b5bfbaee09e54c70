"""The ``inverse_cost`` task: what an inverse costs in forward passes, and the error it buys.

Inverse cost in forward-pass units (DESIGN.md): the median over alternating rounds of
``time(inverse) / time(forward)`` on the same module, batch, dtype and grad mode, inside one process
(:func:`bench.timing.time_ratio`). Beside it: the iterations the inverse used (``model.last_inverse``;
0 for analytic inverses) and the reconstruction error ``max |f^-1(f(x)) - x|`` on test data in float32,
the model as trained, with the model's certified bound on the inverse's own error where it gives one
(``extra["error_bound"]``, :attr:`models.base.InverseInfo.error_bound`) and the stop its solves used
(``extra["stop"]``, :attr:`models.base.InverseInfo.stop`). For iterative inverses (Behrmann et al.,
"Invertible Residual Networks", ICML 2019: fixed-point iteration ``x_{k+1} = y - g(x_k)`` with error
``<= c^k``) the curve of reconstruction error and cost against iteration caps 1, 2, 4, ... is stored in
``extra`` of ``recon_err``.

The forward unit: one evaluation of ``x -> z`` without the log-det (``model.encode`` where the model
overrides it, else ``forward``), so that "forward passes" means evaluating the network, as in the papers'
"the inverse costs 5-20 forward passes", not the network plus its log-det series. Both directions run
under ``torch.no_grad()`` unless the forward computes a log-det estimate (autograd), then both with grad
enabled (option ``grad``). Where the unit is ``encode``,
``extra["fwd_units_full_forward"]`` also gives the ratio against the full ``forward`` (z and log-det).

``inverse_flop_units``: FLOPs of the inverse over FLOPs of the forward unit, on the same batch in the same grad
mode, counted by :mod:`bench.flops` (``torch.utils.flop_counter.FlopCounterMode``; every iteration of a
fixed-point inverse counted): the deterministic, hardware-independent companion of the timed ratio. It counts
matrix products and convolutions only (splines, activations, slogdet and solves count zero), so a model whose
forward unit has none gets an ``unsupported`` row. ``extra`` holds both counts per example.

The curve sets the cap through the model's :class:`models.base.InverseSettings` (``inverse_settings()`` /
``configure_inverse``, restored afterwards); an iterative inverse without them gets its residual history only.
The options are :class:`InverseCostOptions`.

The helpers the measurement tasks share live in :mod:`bench.tasks.measure`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

from torch import Tensor

from bench.flops import flop_extra, flops_per_example
from bench.lipschitz import has_latent_map, latent_map
from bench.options import Options, opt
from bench.tasks.base import Metric, MetricSpec, Task, TaskContext
from bench.tasks.measure import (
    GradMode,
    GradOption,
    eval_inputs,
    failed_metrics,
    grad_context,
    inverse_settings,
    measured_model,
    options_of,
    reconstruction,
    resolve_grad_mode,
)
from bench.timing import time_ratio
from models.base import InverseInfo, InvertibleModel
from models.loss import Objective

FWD_UNITS = MetricSpec("inverse_fwd_units", "fwd passes", "down",
                       "median time(inverse) / time(forward unit) over alternating rounds")
ITERS = MetricSpec("inverse_iters", "iterations", "down", "iterations the inverse used (max over blocks; 0: analytic)")
RECON = MetricSpec("recon_err", "max abs error", "down",
                   "max |f^-1(f(x)) - x| on test data in float32 (extra: the error/cost curve of iterative inverses)")
FLOP_UNITS = MetricSpec("inverse_flop_units", "fwd FLOPs", "down",
                        "FLOPs(inverse) / FLOPs(forward unit), matrix products and convolutions only")
SPECS: tuple[MetricSpec, ...] = (FWD_UNITS, ITERS, RECON, FLOP_UNITS)


@dataclass(frozen=True)
class InverseCostOptions(Options):
    """Options of the ``inverse_cost`` task (see the module docstring)."""

    batch: int = field(default=128, metadata=opt("test examples per timed call", min=1))
    rounds: int = field(default=11, metadata=opt("alternating timing rounds per ratio", min=1))
    warmup: int = field(default=2, metadata=opt("untimed warm-up rounds", min=0))
    max_seconds: float = field(default=10.0, metadata=opt(
        "time limit per ratio, seconds (at least 3 rounds are taken)", min=0.0, min_exclusive=True))
    curve_rounds: int = field(default=3, metadata=opt("timing rounds per point of the iteration-cap curve", min=1))
    curve_max_iter: int | None = field(default=None, metadata=opt(
        "largest iteration cap of the curve (none: the next power of two above the iterations used)", min=1))
    full_forward_ratio: bool = field(default=True, metadata=opt(
        "also time the inverse against the full forward (z and log-det) where the unit is encode"))
    grad: GradOption = field(default="auto", metadata=opt(
        "autograd mode of both directions (auto: grad only where the forward needs autograd for its log-det)"))
    objective: Objective | None = field(default=None, metadata=opt(
        "the objective the measured model is trained for (none: likelihood for density models)"))


def _pow2_caps(limit: int) -> list[int]:
    """1, 2, 4, ... below ``limit``, then ``limit``."""
    caps, k = [], 1
    while k < limit:
        caps.append(k)
        k *= 2
    caps.append(max(1, limit))
    return sorted(set(caps))


class InverseCostTask(Task):
    """Inverse cost in forward-pass units, iterations used and reconstruction error (see module docstring)."""

    name: ClassVar[str] = "inverse_cost"
    Options = InverseCostOptions
    requires_text: ClassVar[str] = "an inverse (every model)"
    metric_specs: ClassVar[tuple[MetricSpec, ...]] = SPECS

    def run(self, ctx: TaskContext) -> list[Metric]:
        opts = options_of(ctx, InverseCostOptions)
        model, result = measured_model(ctx, objective=opts.objective)
        if result.diverged:
            return failed_metrics(SPECS, "diverged", "training diverged")
        model.eval()
        caps = model.capabilities
        mode = resolve_grad_mode(model, opts.grad, full_forward=False)
        x = eval_inputs(ctx, opts.batch)
        z, err, info = reconstruction(model, x, mode)
        encode = latent_map(model)

        def inverse() -> None:
            with grad_context(mode):
                model.inverse(z)

        def forward() -> None:
            with grad_context(mode):
                encode(x)

        timing: dict[str, Any] = {"rounds": opts.rounds, "warmup": opts.warmup, "device": ctx.device,
                                  "max_seconds": opts.max_seconds}
        stats = time_ratio(inverse, forward, **timing)
        common: dict[str, Any] = {"batch": int(x.shape[0]), "dtype": str(x.dtype).replace("torch.", ""),
                                  "grad_mode": mode, "inverse": caps.inverse, "converged": info.converged,
                                  "forward_unit": "encode" if has_latent_map(model) else "forward"}
        units_extra = {**common, **stats.as_extra()}
        if common["forward_unit"] == "encode" and opts.full_forward_ratio:
            full_mode = resolve_grad_mode(model, opts.grad, full_forward=True)

            def full_forward() -> None:
                with grad_context(full_mode):
                    model(x)

            def inverse_full_mode() -> None:
                with grad_context(full_mode):
                    model.inverse(z)

            full = time_ratio(inverse_full_mode, full_forward, **timing)
            units_extra.update(fwd_units_full_forward=full.median, full_forward_grad_mode=full_mode,
                               full_forward_q25=full.q25, full_forward_q75=full.q75)
        curve = self._curve(model, x, info, mode, inverse, forward, opts, ctx) if caps.inverse == "iterative" else {}
        status = "ok" if info.converged else "not_converged"
        solve = model.inverse_settings()
        if solve is not None:
            common["inverse_settings"] = dataclasses.asdict(solve)
        return [
            FWD_UNITS(stats.median, status=status, extra={**common, **units_extra}),
            ITERS(float(info.iterations), status=status,
                  extra={**common, "per_block": list(info.per_block), "residual": info.residual}),
            RECON(float(err.max()), status=status, extra={**common, "median": float(err.median()), **curve,
                                                          **self._bounds(info)}),
            self._flop_units(inverse, forward, int(x.shape[0]), status, common),
        ]

    @staticmethod
    def _bounds(info: InverseInfo) -> dict[str, Any]:
        """The model's certified bound on the inverse's error beside the measured one (``InverseInfo.error_bound``,
        2-norm per example, composed over blocks; ``per_block_bound``: each block's own), where it gives one, and
        the stop its solves used (``InverseInfo.stop``: ``"residual"`` also where an error stop had no certificate),
        where it says."""
        out: dict[str, Any] = {} if info.stop is None else {"stop": info.stop}
        if info.error_bound is not None:
            out.update(error_bound=info.error_bound, per_block_bound=list(info.per_block_bound))
        return out

    @staticmethod
    def _flop_units(inverse: Callable[[], None], forward: Callable[[], None], n: int, status: str,
                    common: dict[str, Any]) -> Metric:
        """FLOPs of ``inverse()`` over FLOPs of ``forward()`` (the timed pair), each on the batch of ``n``."""
        inv = flops_per_example(inverse, n)
        fwd = flops_per_example(forward, n)
        extra = {**common, **flop_extra(n, flops_inverse=inv, flops_forward_unit=fwd)}
        if fwd == 0:
            return FLOP_UNITS(None, status="unsupported",
                              extra={**extra, "reason": "the forward unit counts no matrix products or convolutions"})
        return FLOP_UNITS(inv / fwd, status=status, extra=extra)

    @staticmethod
    def _curve(model: InvertibleModel, x: Tensor, info: InverseInfo, mode: GradMode, inverse: Callable[[], None],
               forward: Callable[[], None], opts: InverseCostOptions, ctx: TaskContext) -> dict[str, Any]:
        """Reconstruction error and cost against iteration caps 1, 2, 4, ... (iterative inverses).

        Sets each cap through ``configure_inverse`` (restored afterwards); a model without
        ``inverse_settings()`` gets only the residual history of the full inverse.
        """
        saved = model.inverse_settings()
        if saved is None:
            return {"residual_history": list(info.history),
                    "curve_note": "the model reports no inverse_settings(); residual history only"}
        limit = opts.curve_max_iter or 2 ** math.ceil(math.log2(max(info.iterations, 1)))
        iters: list[int] = []
        used: list[int] = []
        errs: list[float] = []
        units: list[float] = []
        for cap in _pow2_caps(limit):
            with inverse_settings(model, dataclasses.replace(saved, max_iter=cap)):
                _, err, info_k = reconstruction(model, x, mode)
                iters.append(cap)
                used.append(int(info_k.iterations))
                errs.append(float(err.max()))
                stats = time_ratio(inverse, forward, rounds=opts.curve_rounds, warmup=1, device=ctx.device,
                                   max_seconds=opts.max_seconds / 4)
                units.append(stats.median)
        return {"iters": iters, "iters_used": used, "recon_err": errs, "fwd_units": units}
