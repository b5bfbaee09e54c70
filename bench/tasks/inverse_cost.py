"""The ``inverse_cost`` task: what an inverse costs in forward passes, and the error it buys.

Inverse cost in forward-pass units (DESIGN.md): the median over alternating rounds of
``time(inverse) / time(forward)`` on the same module, batch, dtype and grad mode, inside one process
(:func:`bench.timing.time_ratio`). Beside it: the iterations the inverse used (``model.last_inverse``;
0 for analytic inverses) and the reconstruction error ``max |f^-1(f(x)) - x|`` on test data in float32,
the model as trained. For iterative inverses (Behrmann et al., "Invertible Residual Networks", ICML 2019:
fixed-point iteration ``x_{k+1} = y - g(x_k)`` with error ``<= c^k``) the curve of reconstruction error
and cost against iteration caps 1, 2, 4, ... is stored in ``extra`` of ``recon_err``.

The forward unit: one evaluation of ``x -> z`` without the log-det (``model.encode`` where the model
overrides it, else ``forward``), so that "forward passes" means evaluating the network, as in the papers'
"the inverse costs 5-20 forward passes", not the network plus its log-det series. Both directions run
under ``torch.no_grad()`` unless the forward computes a log-det estimate (autograd), then both with grad
enabled (option ``grad``: ``"auto"``, ``"no_grad"``, ``"grad"``). Where the unit is ``encode``,
``extra["fwd_units_full_forward"]`` also gives the ratio against the full ``forward`` (z and log-det).

Options: ``batch`` (128), ``rounds`` (11), ``warmup`` (2), ``max_seconds`` (10, per ratio; at least 3
rounds are taken), ``curve_rounds`` (3), ``curve_max_iter`` (default: the next power of two above the iterations used),
``full_forward_ratio`` (True).

The helpers the measurement tasks share live in :mod:`bench.tasks.measure`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, ClassVar

from torch import Tensor

from bench.lipschitz import has_latent_map, latent_map
from bench.tasks.base import Metric, Task, TaskContext
from bench.tasks.measure import (
    eval_inputs,
    failed_metrics,
    grad_context,
    measured_model,
    reconstruction,
    resolve_grad_mode,
)
from bench.timing import time_ratio
from models.base import InverseInfo, InvertibleModel

_SPECS: list[tuple[str, str, bool | None]] = [
    ("inverse_fwd_units", "fwd passes", False),
    ("inverse_iters", "iterations", False),
    ("recon_err", "max abs error", False),
]


def _pow2_caps(limit: int) -> list[int]:
    """1, 2, 4, ... below ``limit``, then ``limit``."""
    caps, k = [], 1
    while k < limit:
        caps.append(k)
        k *= 2
    caps.append(max(1, limit))
    return sorted(set(caps))


def _max_iter_setting(model: InvertibleModel) -> dict[str, Any]:
    """The model's current ``max_iter`` (from ``inverse_settings()`` or ``config()``), to restore afterwards."""
    settings = getattr(model, "inverse_settings", None)
    source = settings() if callable(settings) else model.config()
    return {"max_iter": source["max_iter"]} if "max_iter" in source else {}


class InverseCostTask(Task):
    """Inverse cost in forward-pass units, iterations used and reconstruction error (see module docstring)."""

    name: ClassVar[str] = "inverse_cost"
    requires_text: ClassVar[str] = "an inverse (every model)"
    metrics: ClassVar[tuple[str, ...]] = tuple(s[0] for s in _SPECS)

    def run(self, ctx: TaskContext) -> list[Metric]:
        opts = ctx.options
        model, result = measured_model(ctx)
        if getattr(result, "diverged", False):
            return failed_metrics(_SPECS, "diverged", "training diverged")
        model.eval()
        caps = model.capabilities
        grad_opt = str(opts.get("grad", "auto"))
        mode = resolve_grad_mode(model, grad_opt, full_forward=False)
        x = eval_inputs(ctx, int(opts.get("batch", 128)))
        z, err, info = reconstruction(model, x, mode)
        encode = latent_map(model)

        def inverse() -> None:
            with grad_context(mode):
                model.inverse(z)

        def forward() -> None:
            with grad_context(mode):
                encode(x)

        timing: dict[str, Any] = {"rounds": int(opts.get("rounds", 11)), "warmup": int(opts.get("warmup", 2)),
                                  "device": ctx.device, "max_seconds": float(opts.get("max_seconds", 10.0))}
        stats = time_ratio(inverse, forward, **timing)
        common: dict[str, Any] = {"batch": int(x.shape[0]), "dtype": str(x.dtype).replace("torch.", ""),
                                  "grad_mode": mode, "inverse": caps.inverse, "converged": info.converged,
                                  "forward_unit": "encode" if has_latent_map(model) else "forward"}
        units_extra = {**common, **stats.as_extra()}
        if common["forward_unit"] == "encode" and bool(opts.get("full_forward_ratio", True)):
            full_mode = resolve_grad_mode(model, grad_opt, full_forward=True)

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
        return [
            Metric("inverse_fwd_units", stats.median, "fwd passes", False, status, extra=units_extra),
            Metric("inverse_iters", float(info.iterations), "iterations", False, status,
                   extra={**common, "per_block": list(info.per_block), "residual": info.residual}),
            Metric("recon_err", float(err.max()), "max abs error", False, status,
                   extra={**common, "median": float(err.median()), **curve}),
        ]

    @staticmethod
    def _curve(model: InvertibleModel, x: Tensor, info: InverseInfo, mode: str, inverse: Callable[[], None],
               forward: Callable[[], None], opts: dict[str, Any], ctx: TaskContext) -> dict[str, Any]:
        """Reconstruction error and cost against iteration caps 1, 2, 4, ... (iterative inverses).

        Needs the model hook ``configure_inverse(max_iter=...)`` (and ``max_iter`` in ``inverse_settings()`` or
        ``config()`` to restore it); without it only the residual history of the full inverse is stored.
        """
        configure = getattr(model, "configure_inverse", None)
        saved = _max_iter_setting(model)
        if not callable(configure) or not saved:
            return {"residual_history": list(info.history),
                    "curve_note": "the model has no configure_inverse(max_iter=...); residual history only"}
        limit = int(opts.get("curve_max_iter", 2 ** math.ceil(math.log2(max(info.iterations, 1)))))
        iters: list[int] = []
        used: list[int] = []
        errs: list[float] = []
        units: list[float] = []
        try:
            for cap in _pow2_caps(limit):
                configure(max_iter=cap)
                _, err, info_k = reconstruction(model, x, mode)
                iters.append(cap)
                used.append(int(info_k.iterations))
                errs.append(float(err.max()))
                stats = time_ratio(inverse, forward, rounds=int(opts.get("curve_rounds", 3)), warmup=1,
                                   device=ctx.device, max_seconds=float(opts.get("max_seconds", 10.0)) / 4)
                units.append(stats.median)
        finally:
            configure(**saved)
        return {"iters": iters, "iters_used": used, "recon_err": errs, "fwd_units": units}
