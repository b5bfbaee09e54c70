"""``invbench compare A B [--threshold X]``: per (model, task, dataset, metric), B against baseline A.

For every key the mean over ok seeds in A and in B, the relative change ``(mean_B - mean_A) / |mean_A|`` and a
verdict by the metric's direction (``higher_is_better``; None: not judged; metrics in
:data:`bench.report.tables.ABS_METRICS` by their magnitude, the change then being that of ``|mean|``).

A key regresses when

- its change is worse than ``threshold`` (relative: 0.05 = 5 %) in the metric's direction and, with
  ``noise = k > 0``, also larger than k standard errors of the difference of the two seed means (only where both
  stores have at least two ok seeds; a change within seed noise is then "worse (within noise)"), or
- B has a smaller share of ok rows than A (a status change such as ok -> error or ok -> diverged), or
- A's mean is finite and B's is not (nan, or inf where A had a finite value).

Keys present in only one store are listed ("new in B", "missing in B") but do not count as regressions.
The exit status is 1 when anything regressed, else 0.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Sequence
from dataclasses import dataclass

from bench.report.tables import ABS_METRICS, Cell, CellKey, MetricName, aggregate, fmt_num, load_store
from bench.run.rundir import Row


@dataclass
class Change:
    """One key's comparison."""

    key: CellKey
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


def _judge(metric: str, a: Cell, b: Cell, threshold: float, noise: float = 0.0
           ) -> tuple[float | None, str, bool]:
    """``(relative change, verdict, regression)`` of two cells of one key."""
    frac_a, frac_b = a.n_ok / a.n_total, b.n_ok / b.n_total
    if frac_b < frac_a:
        return None, f"status: {a.render()} -> {b.render()}", True
    ma, mb = a.mean, b.mean
    if ma is None or mb is None:
        return None, ("fixed" if frac_b > frac_a else "no values"), False
    base = MetricName.parse(metric).base
    use_abs = base in ABS_METRICS
    if use_abs:
        ma, mb = abs(ma), abs(mb)
    judged = use_abs or a.higher_is_better is not None
    if math.isfinite(ma) and not math.isfinite(mb):
        lower_better = use_abs or a.higher_is_better is False
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
    if use_abs:
        gain = -rel
    elif a.higher_is_better is None:
        return rel, "not judged", False
    else:
        gain = rel if a.higher_is_better else -rel
    if gain < -threshold:
        if _within_noise(a, b, noise):
            return rel, "worse (within noise)", False
        return rel, "worse", True
    if gain < 0:
        return rel, "worse (within threshold)", False
    return rel, ("better" if gain > 0 else "same"), False


def compare_rows(a_rows: Sequence[Row], b_rows: Sequence[Row], threshold: float, noise: float = 0.0
                 ) -> list[Change]:
    """Every key of A then the keys only in B, each with its verdict."""
    if threshold < 0:
        raise ValueError(f"threshold must be >= 0, got {threshold}")
    if noise < 0:
        raise ValueError(f"noise must be >= 0, got {noise}")
    cells_a, cells_b = aggregate(a_rows), aggregate(b_rows)
    changes = []
    for key in [*cells_a, *(k for k in cells_b if k not in cells_a)]:
        a, b = cells_a.get(key), cells_b.get(key)
        if a is None:
            changes.append(Change(key, a, b, None, "new in B", False))
        elif b is None:
            changes.append(Change(key, a, b, None, "missing in B", False))
        else:
            rel, verdict, regression = _judge(key[3], a, b, threshold, noise)
            changes.append(Change(key, a, b, rel, verdict, regression))
    return changes


def format_changes(changes: Sequence[Change]) -> str:
    """An aligned plain-text table."""
    header = ("model", "task", "dataset", "metric", "A", "B", "change", "verdict")
    lines = [header]
    for c in changes:
        rel = "" if c.rel is None else ("inf" if math.isinf(c.rel) else f"{c.rel:+.1%}")
        lines.append((*c.key, c.a.render() if c.a else "—", c.b.render() if c.b else "—", rel,
                      ("REGRESSION: " if c.regression else "") + c.verdict))
    widths = [max(len(line[i]) for line in lines) for i in range(len(header) - 1)]
    return "\n".join("  ".join(f"{v:<{w}}" for v, w in zip(line[:-1], widths, strict=True)) + "  " + line[-1]
                     for line in lines) + "\n"


def cli_compare(args: argparse.Namespace) -> int:
    """``invbench compare``: print the table; exit 1 when anything regressed beyond ``args.threshold``."""
    a, b = load_store(args.a), load_store(args.b)
    noise = float(getattr(args, "noise", 0.0) or 0.0)
    changes = compare_rows(a.rows, b.rows, float(args.threshold), noise)
    noise_text = f", noise: {noise:g} standard errors" if noise else ""
    print(f"A: {a.results_path}\nB: {b.results_path}\nthreshold: {float(args.threshold):.1%} (relative){noise_text}\n")
    print(format_changes(changes), end="")
    regressions = [c for c in changes if c.regression]
    print(f"\n{len(regressions)} regression(s) among {len(changes)} keys")
    for c in regressions:
        print(f"  {' / '.join(c.key)}: {c.verdict}")
    return 1 if regressions else 0
