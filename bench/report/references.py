"""Numbers from the papers, as data, and their placement beside the measured ones.

The table mirrors the "Reference numbers" section of DESIGN.md, keeping each entry's status: ``[checked]``
where read in a primary source, ``[to verify]`` where it still has to be checked against the PDF before it
is quoted, ``[math]`` for a derived bound. A reference names the model family (the registry name before its
backend: ``iresnet-native`` -> ``iresnet``), the data set (None: any) and the metric it is held against; the
report shows every reference, with the measured value of each matching (model, data set) or "not measured".

A reference gives either a point ``value`` (verdict: the relative difference), a range ``low``-``high``
(verdict: inside / below / above) or only ``high`` (an upper bound: within / exceeds).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from bench.report.tables import Cell, MetricName, family_of, fmt_num
from bench.run.rundir import Row

IRESNET = 'Behrmann et al., "Invertible Residual Networks", ICML 2019'
RESFLOW = 'Chen et al., "Residual Flows for Invertible Generative Modeling", NeurIPS 2019'
GLOW = 'Kingma & Dhariwal, "Glow: Generative Flow with Invertible 1x1 Convolutions", NeurIPS 2018'
REALNVP = 'Dinh et al., "Density estimation using Real NVP", ICLR 2017'
REVNET = 'Gomez et al., "The Reversible Residual Network", NeurIPS 2017'


@dataclass(frozen=True)
class Reference:
    """One claim from a paper. ``metric`` None: no task measures it (shown for completeness)."""

    claim: str
    family: str
    dataset: str | None
    metric: str | None
    text: str
    source: str
    status: str
    value: float | None = None
    low: float | None = None
    high: float | None = None
    note: str = ""

    def verdict(self, measured: float) -> str:
        """How ``measured`` stands against the claim."""
        if math.isnan(measured):
            return "measured nan"
        if self.value is not None:
            rel = (measured - self.value) / abs(self.value) if self.value else math.inf
            return f"{measured - self.value:+.3g} ({rel:+.1%})"
        if self.low is not None and self.high is not None:
            if measured < self.low:
                return f"below {fmt_num(self.low)}-{fmt_num(self.high)}"
            return f"above {fmt_num(self.low)}-{fmt_num(self.high)}" if measured > self.high else "inside"
        if self.high is not None:
            return "within bound" if measured <= self.high else "exceeds bound"
        return ""


REFERENCES: tuple[Reference, ...] = (
    Reference("i-ResNet bits/dim", "iresnet", "mnist", "test_bpd", "1.06", IRESNET, "[to verify]", value=1.06),
    Reference("i-ResNet bits/dim", "iresnet", "cifar10", "test_bpd", "3.45", IRESNET, "[to verify]", value=3.45),
    Reference("Residual Flow bits/dim", "resflow", "mnist", "test_bpd", "0.97", RESFLOW, "[to verify]", value=0.97),
    Reference("Residual Flow bits/dim", "resflow", "cifar10", "test_bpd", "3.28", RESFLOW, "[to verify]",
              value=3.28),
    Reference("Residual Flow bits/dim", "resflow", "imagenet32", "test_bpd", "4.01", RESFLOW, "[to verify]",
              value=4.01),
    Reference("Glow bits/dim", "glow", "cifar10", "test_bpd", "3.35", GLOW, "[to verify]", value=3.35),
    Reference("RealNVP bits/dim", "realnvp", "cifar10", "test_bpd", "3.49", REALNVP, "[to verify]", value=3.49),
    Reference("i-ResNet inverse cost", "iresnet", None, "inverse_fwd_units", "5-10 forward passes",
              "i-ResNet ICML 2019 talk (" + IRESNET + ")", "[checked: talk]", low=5.0, high=10.0),
    Reference("i-ResNet inverse cost", "iresnet", None, "inverse_fwd_units", "5-20 forward passes",
              IRESNET + ", arXiv v1 abstract", "[to verify]", low=5.0, high=20.0),
    Reference("i-ResNet CIFAR-10 classification error, c = 0.9", "iresnet", "cifar10", "test_accuracy",
              "about 6.8 % error (accuracy 0.932)", IRESNET, "[to verify]", value=0.932),
    Reference("i-ResNet log-det settings", "iresnet", None, None, "5-10 power-series terms, 1 Hutchinson probe",
              IRESNET, "[to verify]"),
    Reference("Residual Flow estimator", "resflow", None, None,
              "2 exact terms + Geom(0.5) tail (expected 4 terms), Lipschitz coeff 0.98, inverse tol 1e-5", RESFLOW,
              "[to verify]"),
    Reference("RevNet recomputation overhead", "revnet", None, None,
              "roughly 1.2-1.7x training time, activation memory independent of depth", REVNET, "[to verify]"),
    Reference("fixed-point inverse iterations", "iresnet", None, "inverse_iters",
              "error <= c^k: k >= ln(eps)/ln(c); c = 0.9, eps = 1e-5: 110 worst case",
              "Banach fixed-point theorem (as used by " + IRESNET + ")", "[math]", high=110.0,
              note="bound for c = 0.9, eps = 1e-5; a model's own c and tolerance set its own bound"),
)


def _norm(name: str) -> str:
    """Data-set names compared without case or punctuation: ``CIFAR-10`` == ``cifar10``."""
    return re.sub(r"[^a-z0-9]", "", name.lower())


@dataclass
class Match:
    """A reference and one measured (model, data set) cell, or ``cell`` None when nothing matched."""

    ref: Reference
    model: str = ""
    dataset: str = ""
    cell: Cell | None = None

    @property
    def measured(self) -> str:
        if self.ref.metric is None:
            return "no task measures this"
        if self.cell is None:
            return "not measured in this run"
        return self.cell.render()

    @property
    def verdict(self) -> str:
        mean = self.cell.mean if self.cell is not None else None
        return self.ref.verdict(mean) if mean is not None else ""


def match_references(rows: Sequence[Row], record: dict[str, Any] | None = None,
                     references: Sequence[Reference] = REFERENCES) -> list[Match]:
    """Every reference with each matching measured cell (same family, data set, base metric; no input/variant)."""
    cells: dict[tuple[str, str, str, str], Cell] = {}
    for row in rows:
        m = MetricName.parse(row.metric)
        if m.condition or m.variant or m.settings:
            continue
        key = (family_of(row.model, record), row.model, row.dataset, m.base)
        cells.setdefault(key, Cell()).add(row)
    out: list[Match] = []
    for ref in references:
        found = [Match(ref, model, dataset, cell) for (fam, model, dataset, metric), cell in sorted(cells.items())
                 if fam == ref.family and metric == ref.metric
                 and (ref.dataset is None or _norm(dataset) == _norm(ref.dataset))]
        out.extend(found or [Match(ref)])
    return out


REFERENCE_FIELDS: tuple[str, ...] = ("claim", "family", "dataset", "metric", "paper", "measured_by", "measured",
                                     "verdict", "source", "status")


def reference_records(matches: Sequence[Match]) -> list[dict[str, str]]:
    """One flat record per match (for Markdown, HTML and CSV)."""
    return [{
        "claim": m.ref.claim, "family": m.ref.family, "dataset": m.ref.dataset or "any",
        "metric": m.ref.metric or "—", "paper": m.ref.text + (f" ({m.ref.note})" if m.ref.note else ""),
        "measured_by": f"{m.model} / {m.dataset}" if m.cell is not None else "—", "measured": m.measured,
        "verdict": m.verdict, "source": m.ref.source, "status": m.ref.status,
    } for m in matches]
