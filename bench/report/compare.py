"""``invbench compare A B [--threshold X] [--force]``: per key (model, task, dataset, metric, input, variant,
settings), B against baseline A.

Both stores are aggregated over seeds by :func:`bench.report.tables.seed_stats` (pandas). For every key the mean
over ok seeds in A and in B, the relative change ``(mean_B - mean_A) / |mean_A|`` and a verdict by the row's
``direction`` (``up``, ``down``; ``zero``: by the magnitude, the change then being that of ``|mean|``; None: not
judged).

A key regresses when

- its change is worse than ``threshold`` (relative: 0.05 = 5 %) in the metric's direction and, with
  ``noise = k > 0``, also larger than k standard errors of the difference of the two seed means (only where both
  stores have at least two ok seeds; a change within seed noise is then "worse (within noise)"), or
- B has a smaller share of ok rows than A (a status change such as ok -> error or ok -> diverged), or
- A's mean is finite and B's is not (nan, or inf where A had a finite value).

Keys present in only one store are listed ("new in B", "missing in B") but do not count as regressions.
The exit status is 1 when anything regressed, else 0; 2 (one line on stderr) when the stores come from different
suites (the run record's ``suite`` and the rows' ``suite`` fields) or share no key, unless ``--force``: a gate
pointed at the wrong folder must not pass.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, cast

from bench.report.tables import Cell, Store, fmt_num, frame, load_store, seed_stats
from bench.run.rundir import Row

#: the frame fields that identify a compared quantity
KEY_FIELDS: tuple[str, ...] = ("model", "task", "dataset", "metric", "input", "variant", "settings_key")


class Key(NamedTuple):
    """What is compared: one measured quantity of one model on one task and data set."""

    model: str
    task: str
    dataset: str
    metric: str
    input: str = ""
    variant: str = ""
    settings_key: str = ""  # canonical JSON of the settings (the identity)
    settings: str = ""  # their display text, e.g. ``probes=1,terms=5``

    @property
    def label(self) -> str:
        """The metric with its input, variant and settings, e.g. ``lip_forward[input=noise,variant=reg]``."""
        tags = [f"input={self.input}"] if self.input else []
        tags += [f"variant={self.variant}"] if self.variant else []
        tags += [self.settings] if self.settings else []
        return self.metric + (f"[{','.join(tags)}]" if tags else "")


@dataclass
class Change:
    """One key's comparison."""

    key: Key
    a: Cell | None
    b: Cell | None
    rel: float | None
    verdict: str
    regression: bool


def _within_noise(a: Cell, b: Cell, noise: float) -> bool:
    """Whether ``|mean_B - mean_A|`` is at most ``noise`` standard errors of the difference of the seed means."""
    if noise <= 0 or a.std is None or b.std is None or a.mean is None or b.mean is None:
        return False
    se = math.sqrt(a.std**2 / a.n_ok + b.std**2 / b.n_ok)
    return math.isfinite(se) and abs(b.mean - a.mean) <= noise * se


def _judge(a: Cell, b: Cell, threshold: float, noise: float = 0.0) -> tuple[float | None, str, bool]:
    """``(relative change, verdict, regression)`` of two cells of one key, by the direction A (else B) gives."""
    frac_a, frac_b = a.n_ok / a.n_total, b.n_ok / b.n_total
    if frac_b < frac_a:
        return None, f"status: {a.render()} -> {b.render()}", True
    ma, mb = a.mean, b.mean
    if ma is None or mb is None:
        return None, ("fixed" if frac_b > frac_a else "no values"), False
    direction = a.direction or b.direction
    use_abs = direction == "zero"
    if use_abs:
        ma, mb = abs(ma), abs(mb)
    judged = direction is not None
    if math.isfinite(ma) and not math.isfinite(mb):
        lower_better = direction in ("zero", "down")
        if judged and (math.isnan(mb) or lower_better or mb < 0):
            return None, f"became {fmt_num(mb)}", True
    if math.isnan(ma) or math.isnan(mb):
        return None, "not comparable", False
    if ma == mb:
        rel = 0.0
    elif ma == 0 or math.isinf(ma):
        rel = math.copysign(math.inf, mb - ma)
    else:
        rel = (mb - ma) / abs(ma)
    if direction is None:
        return rel, "not judged", False
    gain = rel if direction == "up" else -rel
    if gain < -threshold:
        if _within_noise(a, b, noise):
            return rel, "worse (within noise)", False
        return rel, "worse", True
    if gain < 0:
        return rel, "worse (within threshold)", False
    return rel, ("better" if gain > 0 else "same"), False


def _cells(rows: Sequence[Row]) -> dict[Key, Cell]:
    """Key -> cell over seeds, in first-appearance order."""
    cells = {}
    for k, v in seed_stats(frame(rows), KEY_FIELDS).to_dict("index").items():
        model, task, dataset, metric, inp, variant, skey = (str(f) for f in cast(tuple[Any, ...], k))
        cells[Key(model, task, dataset, metric, inp, variant, skey, str(v["settings"]))] = Cell.from_stats(v)
    return cells


def compare_rows(a_rows: Sequence[Row], b_rows: Sequence[Row], threshold: float, noise: float = 0.0
                 ) -> list[Change]:
    """Every key of A then the keys only in B, each with its verdict."""
    if not threshold >= 0:  # also NaN
        raise ValueError(f"threshold must be >= 0, got {threshold}")
    if not noise >= 0:
        raise ValueError(f"noise must be >= 0, got {noise}")
    cells_a, cells_b = _cells(a_rows), _cells(b_rows)
    changes = []
    for key in [*cells_a, *(k for k in cells_b if k not in cells_a)]:
        a, b = cells_a.get(key), cells_b.get(key)
        if a is None:
            changes.append(Change(key, a, b, None, "new in B", False))
        elif b is None:
            changes.append(Change(key, a, b, None, "missing in B", False))
        else:
            rel, verdict, regression = _judge(a, b, threshold, noise)
            changes.append(Change(key, a, b, rel, verdict, regression))
    return changes


def format_changes(changes: Sequence[Change]) -> str:
    """An aligned plain-text table."""
    header = ("model", "task", "dataset", "metric", "A", "B", "change", "verdict")
    lines = [header]
    for c in changes:
        rel = "" if c.rel is None else ("inf" if math.isinf(c.rel) else f"{c.rel:+.1%}")
        lines.append((c.key.model, c.key.task, c.key.dataset, c.key.label, c.a.render() if c.a else "—",
                      c.b.render() if c.b else "—", rel, ("REGRESSION: " if c.regression else "") + c.verdict))
    widths = [max(len(line[i]) for line in lines) for i in range(len(header) - 1)]
    return "\n".join("  ".join(f"{v:<{w}}" for v, w in zip(line[:-1], widths, strict=True)) + "  " + line[-1]
                     for line in lines) + "\n"


def mismatch(a: Store, b: Store, changes: Sequence[Change]) -> str | None:
    """Why A and B are not two runs of one comparison (different suites, or no key in common), or None."""
    if a.suites and b.suites and a.suites != b.suites:
        return (f"{a.results_path} is from suite {', '.join(sorted(a.suites))} and {b.results_path} from suite "
                f"{', '.join(sorted(b.suites))}")
    if not any(c.a is not None and c.b is not None for c in changes):
        return f"{a.results_path} and {b.results_path} share no key (model, task, dataset, metric)"
    return None


def cli_compare(args: argparse.Namespace) -> int:
    """``invbench compare``: print the table; exit 1 when anything regressed beyond ``args.threshold``, 2 when the
    stores are not comparable (:func:`mismatch`) and ``args.force`` is not set."""
    a, b = load_store(args.a), load_store(args.b)
    noise = float(getattr(args, "noise", 0.0) or 0.0)
    changes = compare_rows(a.rows, b.rows, float(args.threshold), noise)
    why = mismatch(a, b, changes)
    if why is not None:
        if not getattr(args, "force", False):
            print(f"invbench compare: {why}; pass --force to compare them anyway", file=sys.stderr)
            return 2
        print(f"invbench compare: warning: {why} (compared anyway: --force)", file=sys.stderr)
    noise_text = f", noise: {noise:g} standard errors" if noise else ""
    print(f"A: {a.results_path}\nB: {b.results_path}\nthreshold: {float(args.threshold):.1%} (relative){noise_text}\n")
    print(format_changes(changes), end="")
    regressions = [c for c in changes if c.regression]
    print(f"\n{len(regressions)} regression(s) among {len(changes)} keys")
    for c in regressions:
        print(f"  {c.key.model} / {c.key.task} / {c.key.dataset} / {c.key.label}: {c.verdict}")
    return 1 if regressions else 0
