"""What a task measures: :class:`MetricSpec` (declared per task) and :class:`Metric` (one measured value).

A metric's identity is structured, never encoded in its name: ``name`` is the measured quantity
(``lip_forward``), ``input`` the kind of input it was measured on (``test``, ``noise``, ``uniform``, ``scaled``,
``ood``, ... or empty), ``variant`` a variant of the model (``reg``: trained with the regulariser, or empty) and
``settings`` the measurement's settings (``{"terms": 5, "probes": 1}``). ``direction`` says which values are
better: ``up``, ``down``, ``zero`` (closest to zero, for signed errors) or None (not judged). The runner turns a
metric into a result row (:class:`bench.run.rundir.Row`) with the same fields. This module does not import torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

Direction = Literal["up", "down", "zero"]


@dataclass(frozen=True)
class MetricSpec:
    """A metric a task declares: its name, unit, direction and a one-line meaning (for the README and for
    the rows of a cell that did not run)."""

    name: str
    unit: str
    direction: Direction | None
    help: str = ""

    def __call__(self, value: float | None, *, status: str = "ok", input: str = "",
                 variant: str = "", settings: dict[str, Any] | None = None,
                 extra: dict[str, Any] | None = None) -> Metric:
        """A measured :class:`Metric` of this spec."""
        return Metric(self.name, value, self.unit, self.direction, status, input=input, variant=variant,
                      settings=dict(settings or {}), extra=dict(extra or {}))


@dataclass
class Metric:
    """One measured value with its identity, unit and direction; ``status`` other than ``ok`` (or
    ``not_converged``, which keeps its value) leaves value None."""

    name: str
    value: float | None
    unit: str = ""
    direction: Direction | None = None
    status: str = "ok"
    input: str = ""
    variant: str = ""
    settings: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
