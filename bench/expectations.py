"""Expected outcomes of a suite (its ``[[expect]]`` tables; parsed and validated by :mod:`bench.suite`).

An expectation is a paper's claim written as a condition on result rows, e.g. Behrmann et al., "Understanding and
Mitigating Exploding Inverses in Invertible Neural Networks" (AISTATS 2021): affine-coupling Glow gives non-finite
reconstructions of uniform noise at some checkpoint (``nonfinite_frac``, input ``uniform``, ``> 0``, when
``any``). The report's findings table (:mod:`bench.report.findings`) judges each one. This module does not import
torch, so reporting does not either.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["EXPECT_FIELDS", "EXPECT_REQUIRED", "OPS", "WHENS", "Expectation"]

#: the comparisons an expectation may make, and over which checkpoint steps it is judged
OPS: tuple[str, ...] = (">", ">=", "<", "<=", "==")
WHENS: tuple[str, ...] = ("any", "all", "final")
#: keys of an [[expect]] table: required first, then optional
EXPECT_REQUIRED: tuple[str, ...] = ("claim", "source", "model", "dataset", "task", "metric", "op", "value")
EXPECT_FIELDS: tuple[str, ...] = (*EXPECT_REQUIRED, "input", "variant", "when")


@dataclass(frozen=True)
class Expectation:
    """An expected outcome written in a suite (``[[expect]]``): a paper's claim as a condition on result rows.

    The rows judged are those of ``model`` on ``dataset`` from ``task`` with this ``metric``, ``input`` and
    ``variant``; per seed, the condition ``value_measured <op> value`` is checked at the checkpoint steps
    (a row's ``settings["step"]``; a row without a step counts as one final value) chosen by ``when``: ``any``
    (some step), ``all`` (every step) or ``final`` (the largest step). :mod:`bench.report.findings` renders the
    verdicts.
    """

    claim: str
    source: str
    model: str
    dataset: str
    task: str
    metric: str
    op: str
    value: float
    input: str = ""
    variant: str = ""
    when: str = "final"

    def holds(self, measured: float) -> bool:
        """Whether one measured value satisfies ``measured <op> value`` (NaN satisfies nothing)."""
        v = self.value
        return {">": measured > v, ">=": measured >= v, "<": measured < v, "<=": measured <= v,
                "==": measured == v}[self.op]

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Expectation:
        """An expectation from its recorded form (``dataclasses.asdict``, as stored in run.json)."""
        return cls(**{k: data[k] for k in EXPECT_FIELDS if k in data})
