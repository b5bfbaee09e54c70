"""Time-to-target tables: the first training second and step at which a model reached a declared target.

The likelihood and classification tasks emit one ``time_to_target`` row per declared target (AlgoPerf style:
Dahl et al., "Benchmarking Neural Network Training Algorithms", 2023): ``value`` the training seconds (evaluation
time excluded), ``settings = {"target_metric": name, "target": threshold}``, ``extra["step"]`` the step; status
``not_reached`` (no value) when the model's curve never reached it. The report shows them as one table per data
set (task ``time_to_target``): a row per (model, target), the target written ``kl_gap ≤ 0.2`` (``≥`` for a metric
whose direction is ``up``), columns ``time_to_target`` (s) and ``step``; non-ok rows are counted (``not reached
k/n``). Fewer seconds is better, by the bootstrap tie rule of :mod:`bench.report.tables`, with a target not reached
judged as an infinite time (the cell shows the mean over the seeds that reached it): a model that reached the
target fast on one seed and never on the other is not told apart from one that reached it on every seed.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from bench.report.tables import Table, TableRow, build_tables, fmt_num
from bench.run.rundir import Row

TARGET_METRIC = "time_to_target"
TASK = "time_to_target"


def target_text(settings: dict[str, object], directions: dict[str, str]) -> str:
    """``kl_gap ≤ 0.2`` from a row's settings; the comparison from the target metric's direction (``up``: ``≥``),
    ``metric: target`` when it is unknown."""
    metric = str(settings.get("target_metric", "?"))
    target = settings.get("target")
    shown = fmt_num(float(target)) if isinstance(target, int | float) else str(target)
    sign = {"up": "≥", "down": "≤", "zero": "|·| ≤"}.get(directions.get(metric, ""), ":")
    return f"{metric} {sign} {shown}" if sign != ":" else f"{metric}: {shown}"


def target_tables(rows: Sequence[Row]) -> list[Table]:
    """One table per data set of the ``time_to_target`` rows in ``rows`` (the others give the directions of the
    target metrics), data sets alphabetically."""
    directions: dict[str, str] = {}
    for r in rows:
        if r.direction and r.metric != TARGET_METRIC:
            directions.setdefault(r.metric, r.direction)
    shown: list[Row] = []
    for r in rows:
        if r.metric != TARGET_METRIC:
            continue
        base = dataclasses.replace(r, task=TASK, settings={"target": target_text(r.settings, directions)})
        step = r.extra.get("step")
        shown.append(base)
        shown.append(dataclasses.replace(base, metric="step", unit="steps", direction=None,
                                         value=float(step) if r.status == "ok" and isinstance(step, int | float)
                                         else None))
    tables = build_tables(shown, censored=frozenset({"not_reached"}))
    for table in tables:
        _plain_target_labels(table)
    return tables


def _plain_target_labels(table: Table) -> None:
    """Show a row's target as ``kl_gap ≤ 0.2`` under a ``target`` header instead of ``target=kl_gap ≤ 0.2``."""
    def relabel(row: TableRow) -> TableRow:
        return dataclasses.replace(row, settings=row.settings.partition("=")[2])

    mapping = {row: relabel(row) for row in table.rows}
    table.rows = [mapping[r] for r in table.rows]
    table.cells = {(mapping[r], c): cell for (r, c), cell in table.cells.items()}
    table.best = {(mapping[r], c) for r, c in table.best}
    table.tied = {(mapping[r], c) for r, c in table.tied}
    table.settings_label = "target"
