"""The ``logdet`` task: bias, spread and cost of a stochastic log-det estimator against the exact value.

For estimator models (``capabilities.logdet == "estimator"``: the truncated power series with Hutchinson
probes of Behrmann et al., "Invertible Residual Networks", ICML 2019, or the unbiased Russian-roulette
estimator of Chen et al., "Residual Flows", NeurIPS 2019) the task evaluates, on a fixed test batch and
for each estimator setting, ``draws`` independent estimates ``ladj_r(x_i)`` (the model's ``forward`` with
the noise seeded per draw) and the exact ``log|det J(x_i)|`` (``model.exact_logdet``), and reports:

- ``logdet_bias``: ``mean_{r,i} (ladj_r(x_i) - exact(x_i))`` in nats per example. Closer to zero is better and
  its sign matters (a truncated series is biased one way): direction ``zero``; ``extra["abs"]`` and
  ``extra["bias_se"]`` (the Monte-Carlo standard error) help read it.
- ``logdet_std``: the standard deviation over draws, averaged over examples, nats; lower is better.
- ``logdet_cost``: ``time(forward with the setting) / time(forward with the reference setting)`` by alternating
  rounds (:func:`bench.timing.time_ratio`); the reference is the grid's cheapest setting (least expected
  vector-Jacobian products, :meth:`models.base.EstimatorSettings.work`), named in ``extra["reference"]``.

Each metric carries the setting it was measured at in its ``settings`` field (``{"terms": 5, "probes": 1}``: the
changes applied to the model's :class:`models.base.EstimatorSettings`), the full settings in
``extra["resolved_settings"]``. The default grid (:func:`default_grid`) sweeps each cost knob the model's
estimator declares (:meth:`models.base.EstimatorSettings.cost_knobs`: ``terms`` and ``probes`` for the series,
``exact_terms`` and ``probes`` for the roulette, whose random tail stays as the model has it) over
:data:`GRID`, the other knobs held at :data:`SWEEP_BASE`. Option ``settings`` replaces the grid by explicit
tables of changes. The model's settings are restored afterwards. The options are :class:`LogdetOptions`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import Tensor

from bench.options import Options, opt
from bench.tasks.base import Metric, MetricSpec, Task, TaskContext
from bench.tasks.measure import EstimatorChange, estimator_settings, eval_inputs, measured_model, options_of
from bench.timing import time_ratio
from models.base import Capabilities, EstimatorSettings, InvertibleModel
from models.loss import Objective

if TYPE_CHECKING:
    from bench.datasets.base import DatasetInfo

#: the values each cost knob takes in the default grid
GRID: dict[str, tuple[int, ...]] = {"terms": (1, 2, 5, 10, 20), "exact_terms": (0, 1, 2, 5, 10), "probes": (1, 4, 16)}
#: the value of each cost knob while another one is swept
SWEEP_BASE: dict[str, int] = {"terms": 10, "exact_terms": 2, "probes": 1}

BIAS = MetricSpec("logdet_bias", "nats", "zero", "mean estimate minus the exact log-det per example (signed)")
STD = MetricSpec("logdet_std", "nats", "down", "standard deviation of the estimate over draws, mean over examples")
COST = MetricSpec("logdet_cost", "fwd passes (reference setting)", "down",
                  "time of a forward with the setting over one with the grid's cheapest setting")
SPECS: tuple[MetricSpec, ...] = (BIAS, STD, COST)


@dataclass(frozen=True)
class LogdetOptions(Options):
    """Options of the ``logdet`` task (see the module docstring)."""

    settings: tuple[EstimatorChange, ...] | None = field(default=None, metadata=opt(
        "estimator settings to measure, each a table of changes such as {terms = 5, probes = 1} "
        "(none: the default grid over the estimator's cost knobs)"))
    batch: int = field(default=32, metadata=opt("test examples in the batch", min=1))
    draws: int = field(default=12, metadata=opt("independent estimates per setting", min=1))
    rounds: int = field(default=5, metadata=opt("alternating timing rounds per setting", min=1))
    max_seconds: float = field(default=3.0, metadata=opt("time limit of the timing per setting, seconds", min=0.0,
                                                         min_exclusive=True))
    objective: Objective | None = field(default=None, metadata=opt(
        "the objective the measured model is trained for (none: likelihood for density models)"))

    def __post_init__(self) -> None:
        if self.settings is not None and not self.settings:
            raise ValueError("settings: give at least one table, or leave it out for the default grid")


def default_grid(settings: EstimatorSettings) -> list[EstimatorChange]:
    """The settings to sweep for an estimator whose current settings are ``settings``: each of its cost knobs
    over :data:`GRID` with the others at :data:`SWEEP_BASE` (no knobs, e.g. the exact method: the model's own
    settings, one empty change)."""
    knobs = settings.cost_knobs()
    grid: list[EstimatorChange] = []
    for knob in knobs:
        for value in GRID[knob]:
            values: dict[str, Any] = {k: (value if k == knob else SWEEP_BASE[k]) for k in knobs}
            change = EstimatorChange(**values)
            if change not in grid:
                grid.append(change)
    return grid or [EstimatorChange()]


def estimate_draws(model: InvertibleModel, x: Tensor, draws: int, seed: int) -> Tensor:
    """``draws`` log-det estimates of the batch ``x``: (B, *shape) -> (draws, B), float64, detached.

    Draw ``r`` seeds torch's global RNG with ``seed + r``; an estimator that fixes its evaluation noise
    (``eval_seed`` set) gets ``eval_seed = seed + r`` for the draw (restored afterwards).
    """
    saved = model.estimator_settings()
    out = []
    for r in range(draws):
        torch.manual_seed(seed + r)
        reseeded = replace(saved, eval_seed=seed + r) if saved is not None and saved.eval_seed is not None else None
        with estimator_settings(model, reseeded), torch.enable_grad():
            out.append(model(x)[1].detach().double())
    return torch.stack(out)


class LogdetTask(Task):
    """Bias, standard deviation and cost of the log-det estimator per setting (see module docstring)."""

    name: ClassVar[str] = "logdet"
    Options = LogdetOptions
    requires_text: ClassVar[str] = "a stochastic log-det estimator (capabilities.logdet == 'estimator')"
    metric_specs: ClassVar[tuple[MetricSpec, ...]] = SPECS

    @classmethod
    def supports(cls, caps: Capabilities, dataset: DatasetInfo) -> bool:
        return caps.logdet == "estimator"

    def run(self, ctx: TaskContext) -> list[Metric]:
        opts = options_of(ctx, LogdetOptions)
        model, result = measured_model(ctx, objective=opts.objective)
        model.eval()
        base = model.estimator_settings()
        if base is None:
            raise TypeError(f"{type(model).__name__} declares a log-det estimator but reports no estimator_settings()")
        grid = list(opts.settings) if opts.settings is not None else default_grid(base)
        if result.diverged:
            return [spec(None, status="diverged", settings=change.changes(), extra={"reason": "training diverged"})
                    for change in grid for spec in SPECS]
        x = eval_inputs(ctx, opts.batch)
        exact = model.exact_logdet(x).detach().double()
        resolved = [change.applied_to(base) for change in grid]
        reference = min(range(len(grid)), key=lambda i: resolved[i].work())

        def forward_with(settings: EstimatorSettings) -> Any:
            def call() -> None:
                with estimator_settings(model, settings), torch.enable_grad():
                    model(x)

            return call

        metrics: list[Metric] = []
        for change, settings in zip(grid, resolved, strict=True):
            with estimator_settings(model, settings) as used:
                est = estimate_draws(model, x, opts.draws, seed=1_000_003 * ctx.seed + 7)
            err = est - exact
            per_example = err.mean(dim=0)
            var = est.var(dim=0, unbiased=True) if opts.draws > 1 else torch.zeros_like(exact)
            bias = float(per_example.mean())
            se = math.sqrt(float(var.mean()) / (opts.draws * x.shape[0]))
            stats = time_ratio(forward_with(settings), forward_with(resolved[reference]), rounds=opts.rounds,
                               warmup=1, device=ctx.device, max_seconds=opts.max_seconds)
            label = change.changes()
            common = {"resolved_settings": used.as_dict() if used else {}, "batch": int(x.shape[0]),
                      "draws": opts.draws, "work": settings.work()}
            metrics += [
                BIAS(bias, settings=label, extra={**common, "abs": abs(bias), "bias_se": se,
                                                  "exact_mean": float(exact.mean()),
                                                  "rmse": float(err.pow(2).mean().sqrt())}),
                STD(float(var.sqrt().mean()), settings=label, extra=common),
                COST(stats.median, settings=label,
                     extra={**common, "reference": grid[reference].changes(), **stats.as_extra()}),
            ]
        return metrics
