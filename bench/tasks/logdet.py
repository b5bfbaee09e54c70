"""The ``logdet`` task: bias, spread and cost of a stochastic log-det estimator against the exact value.

For estimator models (``capabilities.logdet == "estimator"``: the truncated power series with Hutchinson
probes of Behrmann et al., "Invertible Residual Networks", ICML 2019, or the unbiased Russian-roulette
estimator of Chen et al., "Residual Flows", NeurIPS 2019) the task evaluates, on a fixed test batch and
for each estimator setting, ``draws`` independent estimates ``ladj_r(x_i)`` (the model's ``forward`` with
the noise seeded per draw) and the exact ``log|det J(x_i)|`` (``model.exact_logdet``), and reports:

- ``logdet_bias[<settings>]``: ``mean_{r,i} (ladj_r(x_i) - exact(x_i))`` in nats per example. Closer to
  zero is better and its sign matters (a truncated series is biased one way), so ``higher_is_better`` is
  None; ``extra["abs"]`` and ``extra["bias_se"]`` (the Monte-Carlo standard error) help read it.
- ``logdet_std[<settings>]``: the standard deviation over draws, averaged over examples, nats; lower better.
- ``logdet_cost[<settings>]``: ``time(forward with the setting) / time(forward with the reference
  setting)`` by alternating rounds (:func:`bench.timing.time_ratio`); the reference is the grid's
  cheapest setting (smallest ``terms * probes``), named in ``extra["reference"]``.

The settings are encoded in the metric name, ``logdet_bias[terms=5,probes=1]``, and stored in
``extra["settings"]``. Default grid, for whichever of ``terms`` / ``probes`` the model's
``estimator_settings()`` has: ``terms`` in 1, 2, 5, 10, 20 with 1 probe, and ``probes`` in 1, 4, 16 with
10 terms; a roulette estimator (``method == "roulette"``) keeps its own tail and varies ``probes`` only.
Option ``settings``: an explicit list of dicts for ``configure_estimator``. The model's settings are
restored afterwards. Options: ``batch`` (32), ``draws`` (12), ``rounds`` (5), ``max_seconds`` (3, per setting).
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
from torch import Tensor

from bench.datasets.base import Dataset
from bench.tasks.base import Metric, Task, TaskContext
from bench.tasks.measure import estimator_settings, eval_inputs, failed_metrics, measured_model
from bench.timing import time_ratio
from models.base import Capabilities, InvertibleModel

TERMS: tuple[int, ...] = (1, 2, 5, 10, 20)
PROBES: tuple[int, ...] = (1, 4, 16)


def default_grid(current: dict[str, Any]) -> list[dict[str, Any]]:
    """The default settings to sweep for an estimator whose current settings are ``current``."""
    has_terms = "terms" in current and current.get("method") != "roulette"
    has_probes = "probes" in current
    grid: list[dict[str, Any]] = []
    if has_terms:
        grid += [{"terms": t, **({"probes": 1} if has_probes else {})} for t in TERMS]
    if has_probes:
        grid += [{**({"terms": 10} if has_terms else {}), "probes": p} for p in PROBES]
    unique: list[dict[str, Any]] = []
    for s in grid:
        if s not in unique:
            unique.append(s)
    return unique or [{}]


def settings_label(settings: dict[str, Any]) -> str:
    """``{"terms": 5, "probes": 1}`` -> ``"[terms=5,probes=1]"``; ``{}`` -> ``"[default]"``."""
    if not settings:
        return "[default]"
    return "[" + ",".join(f"{k}={v}" for k, v in settings.items()) + "]"


def _work(settings: dict[str, Any]) -> float:
    return float(settings.get("terms", 1)) * float(settings.get("probes", 1))


def estimate_draws(model: InvertibleModel, x: Tensor, draws: int, seed: int) -> Tensor:
    """``draws`` log-det estimates of the batch ``x``: (B, *shape) -> (draws, B), float64, detached.

    Draw ``r`` seeds torch's global RNG with ``seed + r`` and, for estimators that fix their evaluation noise
    with an ``eval_seed`` setting, sets ``eval_seed = seed + r`` too (restored afterwards).
    """
    saved = model.estimator_settings()
    seeded = "eval_seed" in saved
    out = []
    try:
        for r in range(draws):
            torch.manual_seed(seed + r)
            if seeded:
                model.configure_estimator(eval_seed=seed + r)
            with torch.enable_grad():
                out.append(model(x)[1].detach().double())
    finally:
        if seeded:
            model.configure_estimator(eval_seed=saved["eval_seed"])
    return torch.stack(out)


class LogdetTask(Task):
    """Bias, standard deviation and cost of the log-det estimator per setting (see module docstring)."""

    name: ClassVar[str] = "logdet"
    requires_text: ClassVar[str] = "a stochastic log-det estimator (capabilities.logdet == 'estimator')"
    metrics: ClassVar[tuple[str, ...]] = ("logdet_bias", "logdet_std", "logdet_cost")

    @classmethod
    def supports(cls, caps: Capabilities, dataset: Dataset) -> bool:
        return caps.logdet == "estimator"

    def run(self, ctx: TaskContext) -> list[Metric]:
        opts = ctx.options
        model, result = measured_model(ctx)
        model.eval()
        grid = [dict(s) for s in opts.get("settings") or default_grid(model.estimator_settings())]
        specs = [(f"{m}{settings_label(s)}", u, h) for s in grid
                 for m, u, h in (("logdet_bias", "nats", None), ("logdet_std", "nats", False),
                                 ("logdet_cost", "fwd passes (reference setting)", False))]
        if getattr(result, "diverged", False):
            return failed_metrics(specs, "diverged", "training diverged")
        x = eval_inputs(ctx, int(opts.get("batch", 32)))
        exact = model.exact_logdet(x).detach().double()
        draws = int(opts.get("draws", 12))
        reference = min(grid, key=_work)

        def forward_with(settings: dict[str, Any]) -> Any:
            def call() -> None:
                with estimator_settings(model, settings), torch.enable_grad():
                    model(x)

            return call

        metrics: list[Metric] = []
        for settings in grid:
            label = settings_label(settings)
            with estimator_settings(model, settings) as used:
                est = estimate_draws(model, x, draws, seed=1_000_003 * ctx.seed + 7)
            err = est - exact
            per_example = err.mean(dim=0)
            var = est.var(dim=0, unbiased=True) if draws > 1 else torch.zeros_like(exact)
            bias = float(per_example.mean())
            se = math.sqrt(float(var.mean()) / (draws * x.shape[0]))
            stats = time_ratio(forward_with(settings), forward_with(reference), rounds=int(opts.get("rounds", 5)),
                               warmup=1, device=ctx.device, max_seconds=float(opts.get("max_seconds", 3.0)))
            common = {"settings": settings, "resolved_settings": used, "batch": int(x.shape[0]), "draws": draws}
            metrics += [
                Metric(f"logdet_bias{label}", bias, "nats", None,
                       extra={**common, "abs": abs(bias), "bias_se": se, "exact_mean": float(exact.mean()),
                              "rmse": float(err.pow(2).mean().sqrt())}),
                Metric(f"logdet_std{label}", float(var.sqrt().mean()), "nats", False, extra=common),
                Metric(f"logdet_cost{label}", stats.median, "fwd passes (reference setting)", False,
                       extra={**common, "reference": reference, **stats.as_extra()}),
            ]
        return metrics
