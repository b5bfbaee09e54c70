"""Numbers from the papers, as data, and their placement beside the measured ones.

The table mirrors the "Reference numbers" section of DESIGN.md with each entry's status as checked on
2026-12-01 (:data:`CHECKED_ON`, explained by :data:`STATUS_NOTE`): ``[checked]`` read in a primary source (the
paper, a talk, the authors' abstract), ``[secondary]`` found only in a secondary listing, ``[code]`` the default
in the authors' official code, ``[not found]`` no readable source found (the figure is shown as unverified),
``[math]`` a derived bound. A reference names the model family (the registry name before its backend:
``iresnet-native`` -> ``iresnet``), the data set (None: any) and the metric it is held against; the report shows
every reference, with the measured value of each matching (model, data set, settings) or "not measured".
Measured values are taken from rows on test inputs (``input`` empty or ``test``) of the model itself (no
``variant``).

A reference gives either a point ``value`` (verdict: the relative difference), a range ``low``-``high``
(verdict: inside / below / above) or only ``high`` (an upper bound: within / exceeds).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd

from bench.report.tables import Cell, aggregate, family_of, fmt_num, frame
from bench.run.rundir import Row

CHECKED_ON = "2026-12-01"
STATUS_NOTE = (f"The paper's number beside the measured one for the same model family, data set and metric. "
               f"Statuses, as checked on {CHECKED_ON}: [checked] read in a primary source (the paper, a talk, the "
               "authors' abstract); [secondary] found only in a secondary listing (e.g. a results-from-the-paper "
               "page), not in the paper itself; [code] the default in the authors' official code; [not found] no "
               "readable source found: the figure is shown as unverified and is not to be quoted as the paper's; "
               "[math] a derived bound.")
#: the statuses :data:`STATUS_NOTE` explains
REFERENCE_STATUSES: tuple[str, ...] = ("[checked]", "[secondary]", "[code]", "[not found]", "[math]")

IRESNET = 'Behrmann et al., "Invertible Residual Networks", ICML 2019'
IRESNET_TALK = "ICML 2019 talk of " + IRESNET
IRESNET_ARXIV = ("arXiv:1811.00995v1 abstract (2018) of " + IRESNET.replace(", ICML 2019", "")
                 + "; not in the ICML 2019 paper")
RESFLOW = 'Chen et al., "Residual Flows for Invertible Generative Modeling", NeurIPS 2019'
GLOW = 'Kingma & Dhariwal, "Glow: Generative Flow with Invertible 1x1 Convolutions", NeurIPS 2018'
REALNVP = 'Dinh et al., "Density estimation using Real NVP", ICLR 2017'
REVNET = 'Gomez et al., "The Reversible Residual Network", NeurIPS 2017'
EXPLODING = ('Behrmann et al., "Understanding and Mitigating Exploding Inverses in Invertible Neural Networks", '
             "AISTATS 2021")
SECONDARY = "a secondary listing (results-from-the-paper page) of "
IRESNET_CODE = "jhjacobsen/invertible-resnet (official code of " + IRESNET + ")"
RESFLOW_CODE = "rtqichen/residual-flows (official code of " + RESFLOW + ")"
EXPLODING_CODE = "asteroidhouse/INN-exploding-inverses (official code of " + EXPLODING + ")"
REVNET_CODE = "renmengye/revnet-public (official code of " + REVNET + ")"


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

    @property
    def unverified(self) -> bool:
        """No readable source was found for the figure."""
        return self.status == "[not found]"

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


def _bpd(claim: str, family: str, dataset: str, value: float, source: str, status: str,
         note: str = "") -> Reference:
    return Reference(claim, family, dataset, "test_bpd", f"{value:g}", source, status, value=value, note=note)


REFERENCES: tuple[Reference, ...] = (
    _bpd("i-ResNet bits/dim", "iresnet", "mnist", 1.06, SECONDARY + IRESNET, "[secondary]"),
    _bpd("i-ResNet bits/dim", "iresnet", "cifar10", 3.45, SECONDARY + IRESNET, "[secondary]"),
    _bpd("Residual Flow bits/dim", "resflow", "mnist", 0.97, RESFLOW, "[not found]"),
    _bpd("Residual Flow bits/dim", "resflow", "cifar10", 3.28, RESFLOW, "[not found]"),
    _bpd("Residual Flow bits/dim", "resflow", "imagenet32", 4.01, RESFLOW, "[not found]"),
    _bpd("Glow bits/dim", "glow", "cifar10", 3.35, SECONDARY + GLOW, "[secondary]",
         note="a PyTorch reimplementation's pretrained affine model: 3.39"),
    _bpd("RealNVP bits/dim", "realnvp", "cifar10", 3.49, REALNVP, "[not found]"),
    Reference("i-ResNet inverse cost", "iresnet", None, "inverse_fwd_units", "5-10 forward passes", IRESNET_TALK,
              "[checked]", low=5.0, high=10.0),
    Reference("i-ResNet inverse cost", "iresnet", None, "inverse_fwd_units", "5-20 forward passes", IRESNET_ARXIV,
              "[checked]", low=5.0, high=20.0),
    Reference("i-ResNet CIFAR-10 classification error, c = 0.9", "iresnet", "cifar10", "test_accuracy",
              "about 6.8 % error (accuracy 0.932)", IRESNET, "[not found]", value=0.932),
    Reference("i-ResNet density settings", "iresnet", None, None,
              "5 power-series terms, 1 Gaussian Hutchinson probe, c = 0.9, 5 spectral-norm power iterations",
              IRESNET_CODE, "[code]"),
    Reference("Residual Flow settings", "resflow", None, None,
              "c = 0.98; 2 exact terms + Poisson(2) tail in training, 20 exact terms in evaluation; 1 Gaussian "
              "probe; Neumann gradient; inverse atol = rtol = 1e-5, at most 1000 iterations; LipSwish; batch 64, "
              "Adam 1e-3; spectral norm by power iteration to atol = rtol = 1e-3 (at most 20000 steps) in every "
              "training forward, after every optimizer step and before validation", RESFLOW_CODE, "[code]"),
    Reference("Exploding inverses setup", "glow", None, None,
              "Glow L=3, K=32, hidden 512; affine scale sigmoid(h+2)+0.01 vs additive; checkpoints 0-100k "
              "iterations; OOD: clipped Gaussian, uniform, Rademacher noise; FD regulariser eps 0.1, coefficient "
              "1e-4, every 10 iterations, penalty / eps", EXPLODING_CODE, "[code]"),
    Reference("RevNet architectures", "revnet", None, None,
              "RevNet-38: filters 32,32,64,112, units 3,3,3; RevNet-110: filters 32,32,64,128, units 9,9,9",
              REVNET_CODE, "[code]"),
    Reference("RevNet recomputation overhead", "revnet", None, None,
              "roughly 1.2-1.7x training time, activation memory independent of depth", REVNET, "[not found]"),
    Reference("fixed-point inverse iterations", "iresnet", None, "inverse_iters",
              "error <= c^k: k >= ln(eps)/ln(c); c = 0.9, eps = 1e-5: 110 worst case",
              "Banach fixed-point theorem (as used by " + IRESNET + ")", "[math]", high=110.0,
              note="bound for c = 0.9, eps = 1e-5; a model's own c and tolerance set its own bound; "
                   "a-posteriori: error <= c/(1-c) * ||x_{k+1} - x_k||"),
)


def _norm(name: str) -> str:
    """Data-set names compared without case or punctuation: ``CIFAR-10`` == ``cifar10``."""
    return re.sub(r"[^a-z0-9]", "", name.lower())


@dataclass
class Match:
    """A reference and one measured (model, data set, settings) cell, or ``cell`` None when nothing matched."""

    ref: Reference
    model: str = ""
    dataset: str = ""
    cell: Cell | None = None
    settings: str = ""

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


#: the fields a measured cell is matched by (besides the family, from the model)
MATCH_KEY: tuple[str, ...] = ("model", "dataset", "metric", "settings_key")


def match_references(rows: Sequence[Row], record: dict[str, Any] | None = None,
                     references: Sequence[Reference] = REFERENCES) -> list[Match]:
    """Every reference with each matching measured cell: same family, data set (None: any) and metric, rows on
    test inputs (``input`` empty or ``test``) without a variant; one match per (model, data set, settings)."""
    df = frame(rows)
    df = df[df["input"].isin(["", "test"]) & (df["variant"] == "")]
    cells = aggregate(df, MATCH_KEY)
    settings = dict(zip(df["settings_key"], df["settings"], strict=True))
    out: list[Match] = []
    for ref in references:
        found = [Match(ref, model, dataset, cell, settings.get(skey, ""))
                 for (model, dataset, metric, skey), cell in sorted(cells.items(), key=lambda kv: kv[0])
                 if family_of(model, record) == ref.family and metric == ref.metric
                 and (ref.dataset is None or _norm(dataset) == _norm(ref.dataset))]
        out.extend(found or [Match(ref)])
    return out


REFERENCE_FIELDS: tuple[str, ...] = ("claim", "family", "dataset", "metric", "paper", "measured_by", "measured",
                                     "verdict", "source", "status")


def _paper_text(ref: Reference) -> str:
    notes = ["unverified: not found in a readable source"] if ref.unverified else []
    if ref.note:
        notes.append(ref.note)
    return ref.text + (f" ({'; '.join(notes)})" if notes else "")


def reference_records(matches: Sequence[Match]) -> list[dict[str, str]]:
    """One flat record per match (for Markdown, HTML and CSV)."""
    return [{
        "claim": m.ref.claim, "family": m.ref.family, "dataset": m.ref.dataset or "any",
        "metric": m.ref.metric or "—", "paper": _paper_text(m.ref),
        "measured_by": (f"{m.model} / {m.dataset}" + (f" [{m.settings}]" if m.settings else "")
                        if m.cell is not None else "—"),
        "measured": m.measured, "verdict": m.verdict, "source": m.ref.source, "status": m.ref.status,
    } for m in matches]


def references_frame(records: Sequence[dict[str, str]]) -> pd.DataFrame:
    """The records of :func:`reference_records` as a frame with columns :data:`REFERENCE_FIELDS` (for CSV)."""
    return pd.DataFrame.from_records(list(records), columns=list(REFERENCE_FIELDS))
