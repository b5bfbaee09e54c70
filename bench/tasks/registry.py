"""Task names -> lazily imported task classes."""

from __future__ import annotations

import difflib
import importlib

from bench.tasks.base import Task

_TASKS: dict[str, str] = {
    "likelihood": "bench.tasks.likelihood:LikelihoodTask",
    "classification": "bench.tasks.classification:ClassificationTask",
    "inverse_cost": "bench.tasks.inverse_cost:InverseCostTask",
    "stability": "bench.tasks.stability:StabilityTask",
    "logdet": "bench.tasks.logdet:LogdetTask",
    "cost": "bench.tasks.cost:CostTask",
}


def task_names() -> list[str]:
    """Every task name, in the order a suite runs them (training tasks first)."""
    return list(_TASKS)


def get_task(name: str) -> type[Task]:
    """The task class for ``name``; unknown names raise ``KeyError`` with near matches."""
    if name not in _TASKS:
        near = difflib.get_close_matches(name, list(_TASKS), n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(near)}?" if near else f"; known: {', '.join(_TASKS)}"
        raise KeyError(f"unknown task {name!r}{hint}")
    module, _, attr = _TASKS[name].partition(":")
    cls: type[Task] = getattr(importlib.import_module(module), attr)
    return cls
