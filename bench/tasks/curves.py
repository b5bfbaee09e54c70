"""Learning curves recorded during training, and time-to-target read off them.

A training task (``likelihood``, ``classification``) hands :func:`bench.tasks.training.trained_model` a
:class:`CurveRequest`: a callback that scores the model on a fixed held-out subset, the metric it returns and how
many evaluations to make. The training loop calls it at the steps of :func:`eval_steps` (step 0 is the model as
initialised, after ``data_init``; then a geometric schedule in steps up to the budget's step limit; then the final
step) with the training clock paused, so the time budget counts training only, and keeps the result as a
:class:`Curve`: steps, training seconds (evaluation excluded) and values, plus the seconds the evaluations took.

``time_to_target`` follows AlgoPerf (Dahl et al., "Benchmarking Neural Network Training Algorithms", 2023): the
training time at which the model first reaches a per-data-set target of a validation metric, here the first
curve point on the good side of the threshold (``value <= target`` for a metric whose direction is ``down``,
``>=`` for ``up``); a model whose curve never gets there is ``not_reached``. The resolution is that of the
curve: the time reported is that of the first evaluation at or past the target, not the exact crossing.

This module does not import torch.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from bench.tasks.metric import Direction, Metric, MetricSpec

EVAL_TIME = MetricSpec("eval_time", "s", None,
                       "seconds spent on learning-curve evaluations, excluded from the training budget; "
                       "extra.curve holds the curve (steps, training seconds, values)")
TIME_TO_TARGET = MetricSpec("time_to_target", "s", "down",
                            "training seconds (evaluations excluded) to the first curve point reaching the data "
                            "set's target (settings: target_metric, target; extra: step); not_reached otherwise")
#: The metrics a training task with a learning curve reports after its own.
CURVE_SPECS = (EVAL_TIME, TIME_TO_TARGET)


@dataclass
class Curve:
    """A learning curve: ``value[i]`` of ``metric`` measured after ``step[i]`` optimiser steps and ``seconds[i]``
    seconds of training (evaluations excluded); ``eval_seconds`` is the time all evaluations took."""

    metric: str
    step: list[int] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    value: list[float] = field(default_factory=list)
    eval_seconds: float = 0.0

    @property
    def n_eval(self) -> int:
        return len(self.step)

    def add(self, step: int, seconds: float, value: float) -> None:
        self.step.append(step)
        self.seconds.append(seconds)
        self.value.append(value)

    def record(self) -> dict[str, Any]:
        """The curve as ``eval_time``'s ``extra["curve"]``: metric, step, seconds, value, n_eval."""
        return {"metric": self.metric, "step": list(self.step), "seconds": list(self.seconds),
                "value": list(self.value), "n_eval": self.n_eval}


@dataclass(frozen=True)
class CurveRequest:
    """What a training task asks the training loop to record.

    Attributes:
        metric: the name of the metric ``evaluate`` returns (``kl_gap``, ``test_bpd``, ``test_accuracy``).
        evaluate: scores the model (in ``eval()`` mode; the loop restores ``train()`` and the random state
            afterwards) on the task's fixed held-out subset; returns the metric's value.
        evals: at most this many evaluations (step 0 and the final step included; >= 1).
        settings: everything the values depend on besides the model (subset size, scoring plan options), JSON
            data: the checkpoint cache reuses a recorded curve only when metric, evals and settings are equal.
        steps: explicit evaluation steps (checkpoints) instead of the geometric plan of :func:`eval_steps` (``evals``
            is then not used); step 0 and the final step are evaluated as always. Empty: the geometric plan.
    """

    metric: str
    evaluate: Callable[[Any], float]
    evals: int
    settings: dict[str, Any] = field(default_factory=dict)
    steps: tuple[int, ...] = ()

    def key(self) -> dict[str, Any]:
        """The identity of the curve (without the callback), for the checkpoint cache."""
        key = {"metric": self.metric, "evals": self.evals, "settings": self.settings}
        return {**key, "steps": list(self.steps)} if self.steps else key

    def planned(self, max_steps: int) -> list[int]:
        """The evaluation steps planned within ``max_steps``: ``steps`` when given, else :func:`eval_steps`."""
        if self.steps:
            return sorted({s for s in self.steps if 0 <= s <= max_steps})
        return eval_steps(max_steps, self.evals)


def eval_steps(max_steps: int, evals: int) -> list[int]:
    """The planned evaluation steps (sorted, distinct) for a budget of at most ``max_steps`` steps.

    ``evals = 1``: none (only the final point, which the loop adds); ``evals = 2``: step 0; ``evals >= 3``: step 0
    and ``evals - 1`` geometrically spaced steps from 1 to ``max_steps`` (rounded, duplicates merged). Under a time
    budget training may stop before ``max_steps``: the planned steps it did not reach are dropped and the final
    step added, so a curve never has more than ``evals`` points.
    """
    if evals < 1:
        raise ValueError(f"evals must be >= 1, got {evals}")
    if evals == 1:
        return []
    if evals == 2 or max_steps <= 0:
        return [0]
    m = evals - 2
    planned = {0, *(round(max_steps ** (k / m)) for k in range(m + 1))}
    return sorted(s for s in planned if s <= max_steps)


def first_reaching(values: list[float], target: float, direction: Direction | None) -> int | None:
    """The index of the first value on the good side of ``target`` (``down``: ``<=``; ``up``: ``>=``; ``zero``:
    ``|value| <= target``), or None. Non-finite values never reach a target."""
    if direction is None:
        raise ValueError("a target needs a metric with a direction")
    for i, v in enumerate(values):
        if not math.isfinite(v):
            continue
        if (direction == "down" and v <= target) or (direction == "up" and v >= target) \
                or (direction == "zero" and abs(v) <= target):
            return i
    return None


def curve_metrics(curve: Curve | None, metric: str, targets: Mapping[str, float],
                  judged: Mapping[str, tuple[MetricSpec, Callable[[float], float]]]) -> list[Metric]:
    """``eval_time`` (the curve in its extra) and one ``time_to_target`` row per entry of ``targets`` named in
    ``judged``.

    Args:
        curve: the recorded curve; None when curves are off (``eval_time`` 0 with an empty curve of ``metric``,
            ``time_to_target`` rows ``unsupported``).
        metric: the curve's metric name (used when ``curve`` is None).
        targets: the data set's targets, metric name -> threshold; names not in ``judged`` are left to the
            tasks that emit those metrics.
        judged: for each metric the task can judge from its curve: its spec (for the direction) and the map from
            a curve value to that metric's value (the identity for the curve's own metric).
    """
    shown = curve if curve is not None else Curve(metric)
    rows = [EVAL_TIME(shown.eval_seconds, extra={"curve": shown.record()})]
    for name in sorted(targets):
        if name not in judged:
            continue
        target = float(targets[name])
        settings = {"target_metric": name, "target": target}
        if curve is None:
            rows.append(TIME_TO_TARGET(None, status="unsupported", settings=settings,
                                       extra={"reason": "no learning curve recorded (curve_evals = 0)"}))
            continue
        spec, convert = judged[name]
        values = [convert(v) for v in curve.value]
        i = first_reaching(values, target, spec.direction)
        if i is None:
            best = [v for v in values if math.isfinite(v)]
            extra: dict[str, Any] = {"reason": f"{name} never reached {target} in {curve.n_eval} evaluations"}
            if best:
                extra["best"] = {"down": min(best), "up": max(best)}.get(str(spec.direction), min(best, key=abs))
            rows.append(TIME_TO_TARGET(None, status="not_reached", settings=settings, extra=extra))
        else:
            rows.append(TIME_TO_TARGET(curve.seconds[i], settings=settings,
                                       extra={"step": curve.step[i], "value": values[i]}))
    return rows
