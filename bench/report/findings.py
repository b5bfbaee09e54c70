"""The findings table: each expected outcome of the suite (``[[expect]]``, :class:`bench.expectations.Expectation`)
against the rows measured, with a verdict.

The expectations are read from the store's run record (``run.json``: the last session's ``suite_config``), so
``invbench report`` builds the table from the store alone. One row per claim: ``claim``, ``source``, ``expected``
(rendered from the fields, e.g. ``glow-native on digits (exploding): nonfinite_frac (input uniform) > 0 at any
checkpoint``), ``measured`` (per seed, the values at the checkpoints judged) and ``verdict``:

- ``reproduced``: the condition holds on every seed;
- ``not reproduced``: it holds on no seed, or ``not reproduced (mixed k/n)`` when it holds on k of n seeds;
- ``not measured``: rows exist but none has a value (every one ``unsupported``, ``error``, ``timeout``, ...);
- ``not run``: no row of that model, data set, task, metric, input and variant.

Per seed, the rows judged carry ``settings["step"]`` (a checkpoint) or no step (one final value). ``when``:
``any``: some step satisfies the condition; ``all``: every step does (a step without a value does not);
``final``: the rows at the largest step do. A seed counts as holding only if it is judged so; a seed whose rows
have no value counts as not holding. This module does not import torch.
"""

from __future__ import annotations

import html
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd

from bench.expectations import Expectation
from bench.report.tables import fmt_num, status_label
from bench.run.rundir import Row

FINDINGS_FIELDS: tuple[str, ...] = ("claim", "source", "expected", "measured", "verdict")
REPRODUCED, NOT_REPRODUCED, NOT_MEASURED, NOT_RUN = "reproduced", "not reproduced", "not measured", "not run"

LEGEND = ("Findings: each expected outcome written in the suite ([[expect]]) against the rows measured. Per seed, "
          "the condition is checked at the checkpoint steps chosen (any: some step; all: every step; final: the "
          "largest step; a metric without steps has one final value); measured shows, per seed (s0, s1, ...), the "
          "value that decides it (the extreme over the steps, or the final value) and, over checkpoints, the first "
          "and final values. reproduced: the condition holds on every seed; not reproduced (mixed k/n): on k of n "
          "seeds; not measured: rows without a value (unsupported, error, ...); not run: no rows.")

_WHEN_TEXT = {"any": "at any checkpoint", "all": "at every checkpoint", "final": "at the final checkpoint"}


def expectations_from_record(record: dict[str, Any]) -> list[Expectation]:
    """The expectations of the run's suite: the last session's ``suite_config["expectations"]`` in ``run.json``
    (else the record's own ``suite_config``); ``[]`` when none are recorded."""
    sessions = record.get("sessions")
    configs = [s.get("suite_config") for s in sessions if isinstance(s, dict)] if isinstance(sessions, list) else []
    configs = [c for c in configs if isinstance(c, dict)] or [record.get("suite_config")]
    config = configs[-1]
    items = config.get("expectations") if isinstance(config, dict) else None
    if not isinstance(items, list):
        return []
    return [Expectation.from_dict(item) for item in items if isinstance(item, dict)]


def expected_text(e: Expectation) -> str:
    """``<model> on <dataset> (<task>): <metric> (input ..., variant ...) <op> <value> at ... checkpoint``."""
    tags = [f"input {e.input}"] if e.input else []
    tags += [f"variant {e.variant}"] if e.variant else []
    metric = e.metric + (f" ({', '.join(tags)})" if tags else "")
    return f"{e.model} on {e.dataset} ({e.task}): {metric} {e.op} {fmt_num(e.value)} {_WHEN_TEXT[e.when]}"


@dataclass(frozen=True)
class SeedResult:
    """One seed's judgement: whether the condition holds and the figures that decide it (``text``)."""

    seed: int
    holds: bool
    text: str
    has_value: bool = True


@dataclass(frozen=True)
class Finding:
    """One expectation judged: its per-seed results (empty: no rows) and, for no rows, what the store holds."""

    expectation: Expectation
    seeds: tuple[SeedResult, ...]
    note: str = ""

    @property
    def held(self) -> int:
        """How many seeds satisfy the condition."""
        return sum(s.holds for s in self.seeds)

    @property
    def verdict(self) -> str:
        if not self.seeds:
            return NOT_RUN
        if not any(s.has_value for s in self.seeds):
            return NOT_MEASURED
        n, k = len(self.seeds), self.held
        if k == n:
            return REPRODUCED
        return NOT_REPRODUCED if k == 0 else f"{NOT_REPRODUCED} (mixed {k}/{n})"

    @property
    def measured(self) -> str:
        if not self.seeds:
            return self.note or "no rows"
        return "; ".join(f"{s.text} (s{s.seed})" for s in self.seeds)

    def record(self) -> dict[str, str]:
        """The table row: :data:`FINDINGS_FIELDS` -> text."""
        e = self.expectation
        return {"claim": e.claim, "source": e.source, "expected": expected_text(e), "measured": self.measured,
                "verdict": self.verdict}


def _step(row: Row) -> float:
    """The row's checkpoint step; a row without one is the final value (sorts last)."""
    step = row.settings.get("step")
    return float(step) if isinstance(step, int | float) and not isinstance(step, bool) else math.inf


def _at(step: float) -> str:
    return "" if math.isinf(step) else f" at step {int(step) if step == int(step) else step}"


def _decider(e: Expectation, values: Sequence[tuple[float, float]]) -> tuple[str, float, float]:
    """``(label, step, value)`` of the value that decides ``any`` / ``all`` over ``(step, value)`` pairs: the one
    most in favour of the condition for ``any``, least for ``all`` (``==``: closest / farthest from the value)."""
    if e.op == "==":
        step, value = (min if e.when == "any" else max)(values, key=lambda sv: abs(sv[1] - e.value))
        return ("closest" if e.when == "any" else "farthest"), step, value
    upward = e.op in (">", ">=")
    use_max = upward if e.when == "any" else not upward
    nan_last = [sv for sv in values if not math.isnan(sv[1])] or list(values)
    step, value = (max if use_max else min)(nan_last, key=lambda sv: sv[1])
    return ("max" if use_max else "min"), step, value


def judge_seed(e: Expectation, seed: int, rows: Sequence[Row]) -> SeedResult:
    """The condition on one seed's rows (those of the expectation's model, data set, task, metric, input and
    variant)."""
    rows = sorted(rows, key=_step)
    values = [(_step(r), float(r.value)) for r in rows if r.value is not None]
    failed = [r for r in rows if r.value is None]
    fail_text = ""
    if failed:
        kinds = sorted({status_label(r.status) for r in failed})
        steps = sorted({_step(r) for r in failed})
        where = f" at {len(steps)} step(s)" if any(not math.isinf(s) for s in steps) else ""
        fail_text = f"{'/'.join(kinds)}{where}"
    if not values:
        return SeedResult(seed, False, f"no value: {fail_text}", has_value=False)
    stepped = [sv for sv in values if not math.isinf(sv[0])]
    last = max(_step(r) for r in rows)
    if e.when == "final":
        finals = [v for s, v in values if s == last]
        holds = bool(finals) and len(finals) == sum(1 for r in rows if _step(r) == last) and all(
            e.holds(v) for v in finals)
        text = (", ".join(fmt_num(v) for v in finals) + _at(last)) if finals else f"no value{_at(last)}"
    else:
        results = [e.holds(v) for _, v in values]
        holds = any(results) if e.when == "any" else (all(results) and not failed)
        if len(values) == 1:
            text = fmt_num(values[0][1]) + _at(values[0][0])
        else:
            label, step, value = _decider(e, values)
            text = f"{label} {fmt_num(value)}{_at(step)}"
    if len({s for s, _ in stepped}) > 1:
        (s0, v0), (s1, v1) = stepped[0], stepped[-1]
        text += f" [{fmt_num(v0)} → {fmt_num(v1)}, steps {int(s0)}–{int(s1)}]"
    if fail_text:
        text += f", {fail_text}"
    return SeedResult(seed, holds, text)


def _matches(e: Expectation, row: Row) -> bool:
    return (row.model, row.dataset, row.task, row.metric, row.input, row.variant) == (
        e.model, e.dataset, e.task, e.metric, e.input, e.variant)


def _absent_note(e: Expectation, rows: Sequence[Row]) -> str:
    """For an expectation without rows: what the store holds of that metric (a mistyped input or variant shows)."""
    same = [r for r in rows if (r.model, r.dataset, r.task, r.metric) == (e.model, e.dataset, e.task, e.metric)]
    if not same:
        cell = [r for r in rows if (r.model, r.dataset, r.task) == (e.model, e.dataset, e.task)]
        return "no rows" + ("" if cell else f" of {e.model} on {e.dataset} ({e.task})")
    pairs = sorted({f"input={r.input or '—'}, variant={r.variant or '—'}" for r in same})
    return f"no rows with input={e.input or '—'}, variant={e.variant or '—'} (measured: {'; '.join(pairs)})"


def build_findings(rows: Iterable[Row], expectations: Sequence[Expectation]) -> list[Finding]:
    """One :class:`Finding` per expectation, in the suite's order."""
    rows = list(rows)
    out: list[Finding] = []
    for e in expectations:
        mine = [r for r in rows if _matches(e, r)]
        by_seed: dict[int, list[Row]] = {}
        for r in mine:
            by_seed.setdefault(r.seed, []).append(r)
        seeds = tuple(judge_seed(e, s, by_seed[s]) for s in sorted(by_seed))
        out.append(Finding(e, seeds, "" if seeds else _absent_note(e, rows)))
    return out


def _md(text: str) -> str:
    return text.replace("|", r"\|").replace("\n", " ")


def to_markdown(findings: Sequence[Finding]) -> str:
    """The findings as a markdown table (columns :data:`FINDINGS_FIELDS`)."""
    lines = ["| " + " | ".join(FINDINGS_FIELDS) + " |", "|" + "---|" * len(FINDINGS_FIELDS)]
    for f in findings:
        rec = f.record()
        rec["verdict"] = f"**{rec['verdict']}**"
        lines.append("| " + " | ".join(_md(rec[k]) for k in FINDINGS_FIELDS) + " |")
    return "\n".join(lines) + "\n"


def verdict_class(verdict: str) -> str:
    """A CSS class for a verdict: ``reproduced``, ``not-reproduced`` (mixed too), ``not-measured``, ``not-run``."""
    return verdict.split(" (")[0].replace(" ", "-")


def to_html(findings: Sequence[Finding]) -> str:
    """The findings as an HTML table (class ``findings``; each verdict cell classed by :func:`verdict_class`)."""
    head = "".join(f"<th>{html.escape(k)}</th>" for k in FINDINGS_FIELDS)
    body = []
    for f in findings:
        rec = f.record()
        cells = "".join(f"<td>{html.escape(rec[k])}</td>" for k in FINDINGS_FIELDS[:-1])
        cells += f'<td class="verdict {verdict_class(rec["verdict"])}">{html.escape(rec["verdict"])}</td>'
        body.append(f"<tr>{cells}</tr>")
    return f'<table class="findings"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>\n'


def findings_frame(findings: Sequence[Finding]) -> pd.DataFrame:
    """Long form for CSV: one row per claim, the expectation's fields, the rendered columns and ``held`` / ``seeds``."""
    records = []
    for f in findings:
        e = f.expectation
        records.append({**f.record(), "model": e.model, "dataset": e.dataset, "task": e.task, "metric": e.metric,
                        "input": e.input, "variant": e.variant, "when": e.when, "op": e.op, "value": e.value,
                        "held": f.held, "seeds": len(f.seeds)})
    return pd.DataFrame.from_records(records, columns=[*FINDINGS_FIELDS, "model", "dataset", "task", "metric", "input",
                                                       "variant", "when", "op", "value", "held", "seeds"])
