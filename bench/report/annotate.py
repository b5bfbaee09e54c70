"""The report's tables: the per-(task, data set) tables of :mod:`bench.report.tables` with what a reader needs
to judge them.

- Time to target: the ``time_to_target`` rows as their own tables (:mod:`bench.report.targets`).
- Capacity: a ``params`` column (the ``cost`` task's trainable-parameter count of the model on that data set,
  its mean over the cost task's seeds, shown without their count) on every model row of the likelihood and
  classification tables.
- Baselines, likelihood tables: the fitted Gaussian (``gaussian-fit``, rows with ``extra["baseline"] ==
  "gaussian"``) is a row labelled ``(baseline)``; on discrete data (``test_bpd`` rows whose ``extra["levels"]``
  is set) an analytic row ``uniform dequantisation noise`` with bits/dim = log2(levels): the uniform density
  on the dequantised cube, NLL 0 in scaled units. A model whose headline (``kl_gap`` where the table has it,
  else ``test_bpd``) has a 95 % bootstrap interval over seeds that overlaps the Gaussian's, or a worse mean, is
  noted ``no better than a Gaussian``.
- Floors: a model whose likelihood rows declare ``"volume_preserving": true`` in ``extra`` is noted so, with the
  least value each metric can reach (``extra["floor"]``, in the row's unit) beside its figures: a volume-preserving
  flow with an N(0, I) base cannot have a test NLL below (D/2) ln 2 pi plus the pre-processing's log-det.
- Estimator honesty: a ``test_nll`` cell any of whose rows has ``extra["train_loss_below_entropy"]`` true gets
  the mark ``†`` and a footnote.
- FLOPs: cost and inverse_cost tables with FLOP columns get a footnote on what ``FlopCounterMode`` counts.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import pandas as pd

from bench.flops import COUNTER, COUNTS
from bench.report.bootstrap import seed_interval
from bench.report.tables import (
    CELL_KEY,
    TASK_ORDER,
    Cell,
    Column,
    Table,
    TableRow,
    aggregate,
    build_tables,
    cell_values,
    fmt_num,
    frame,
    order_key,
)
from bench.report.targets import TARGET_METRIC, target_tables
from bench.run.rundir import Row

GAUSSIAN = "gaussian"
NO_BETTER = "no better than a Gaussian"
UNIFORM_LABEL = "uniform dequantisation noise"
ESTIMATOR_MARK = "†"
ESTIMATOR_NOTE = (f"{ESTIMATOR_MARK} training loss below the data's entropy on at least one seed (beyond its noise): "
                  "exploits its estimator's bias (train_loss_margin in rows.csv).")
FLOP_METRICS: tuple[str, ...] = ("flops_forward", "flops_inverse", "inverse_flop_units")
FLOP_NOTE = ("FLOPs counted by torch.utils.flop_counter.FlopCounterMode, which counts matrix products and "
             "convolutions only (splines, activations, elementwise ops and slogdet count zero).")
#: the tables that get the params column
PARAMS_TASKS: tuple[str, ...] = ("likelihood", "classification")


def report_tables(rows: Sequence[Row]) -> list[Table]:
    """Every table of a report, in :data:`bench.report.tables.TASK_ORDER`, annotated as the module says."""
    main = [r for r in rows if r.metric != TARGET_METRIC]
    tables = build_tables(main) + target_tables(rows)
    tables.sort(key=lambda t: (order_key(t.task, TASK_ORDER), t.dataset))
    df = frame(rows)
    values = cell_values(df, CELL_KEY)
    params = _params_cells(df)
    for table in tables:
        if table.task in PARAMS_TASKS:
            add_params(table, params)
        if table.task == "likelihood":
            add_uniform_row(table, df)
            mark_gaussian(table, values)
            note_floors(table, df)
            mark_estimator_bias(table, df)
        if any(c.metric in FLOP_METRICS for c in table.columns):
            table.add_footnote(_flop_note(df, table))
    return tables


def _params_cells(df: pd.DataFrame) -> dict[tuple[str, str], Cell]:
    """``{(model, dataset): cell}`` of the cost task's ``params`` rows (no variant)."""
    sub = df[(df["task"] == "cost") & (df["metric"] == "params") & (df["variant"] == "")]
    return {(str(k[0]), str(k[1])): c for k, c in aggregate(sub, ("model", "dataset")).items()}


def add_params(table: Table, params: dict[tuple[str, str], Cell]) -> None:
    """A ``params`` column (not judged) with the model's parameter count on the table's data set."""
    cells = {row: params[(row.model, table.dataset)] for row in table.rows
             if not row.analytic and (row.model, table.dataset) in params}
    if not cells or any(c.metric == "params" for c in table.columns):
        return
    unit = next(iter(cells.values())).unit
    table.columns.append(Column("params", unit, None))
    for row, cell in cells.items():
        table.cells[(row, "params")] = dataclasses.replace(cell, show_counts=False)


def _levels(df: pd.DataFrame, dataset: str) -> list[int]:
    """The distinct ``levels`` of the data set's ``test_bpd`` rows (discrete data), sorted."""
    sub = df[(df["task"] == "likelihood") & (df["dataset"] == dataset) & (df["metric"] == "test_bpd")]
    found = {int(e["levels"]) for e in sub["extra"]
             if isinstance(e, dict) and isinstance(e.get("levels"), int | float) and e["levels"] and e["levels"] > 1}
    return sorted(found)


def add_uniform_row(table: Table, df: pd.DataFrame) -> None:
    """On discrete data, the analytic row of uniform dequantisation noise: bits/dim = log2(levels)."""
    bpd = next((c for c in table.columns if c.metric == "test_bpd"), None)
    if bpd is None:
        return
    for levels in _levels(df, table.dataset):
        row = TableRow(UNIFORM_LABEL if len(_levels(df, table.dataset)) == 1 else f"{UNIFORM_LABEL}, {levels} levels",
                       analytic=True)
        table.cells[(row, "test_bpd")] = Cell(mean=math.log2(levels), unit=bpd.unit, direction=bpd.direction,
                                              analytic=True)
        table.rows.append(row)
        table.add_note(row, f"log2({levels}): the uniform density on the dequantised data")


def _headline_metric(table: Table) -> str | None:
    names = [c.metric for c in table.columns]
    return "kl_gap" if "kl_gap" in names else "test_bpd" if "test_bpd" in names else None


def _values(values: dict[tuple[Any, ...], list[float]], table: Table, row: TableRow, metric: str) -> list[float]:
    return values.get((table.task, table.dataset, row.model, row.variant, row.input, row.settings_key, metric), [])


def mark_gaussian(table: Table, values: dict[tuple[Any, ...], list[float]]) -> None:
    """Note every model row whose headline interval overlaps the Gaussian baseline's, or whose mean is worse."""
    metric = _headline_metric(table)
    gaussians = [r for r in table.rows if r.baseline == GAUSSIAN and not r.variant]
    if metric is None or not gaussians:
        return
    gauss = gaussians[0]
    g_vals = _values(values, table, gauss, metric)
    if not g_vals or any(math.isnan(v) for v in g_vals):
        return
    g = seed_interval(g_vals, f"{table.dataset}|{gauss.model}|{metric}")
    for row in table.rows:
        if row.is_reference:
            continue
        vals = _values(values, table, row, metric)
        if not vals or any(math.isnan(v) for v in vals):
            continue
        m = seed_interval(vals, f"{table.dataset}|{row.model}|{row.variant}|{metric}")
        if m.point >= g.point or m.overlaps(g):
            table.add_note(row, NO_BETTER)


def note_floors(table: Table, df: pd.DataFrame) -> None:
    """Note the rows whose likelihood rows declare ``volume_preserving``, with the ``floor`` each metric's rows give
    (in that metric's unit: test_nll and kl_gap in nats, test_bpd in bits/dim), mean over seeds."""
    sub = df[(df["task"] == "likelihood") & (df["dataset"] == table.dataset)]
    declared: dict[tuple[str, str], dict[str, list[float]]] = {}
    units: dict[str, str] = {}
    for model, variant, metric, unit, extra in zip(sub["model"], sub["variant"], sub["metric"], sub["unit"],
                                                   sub["extra"], strict=True):
        if not (isinstance(extra, dict) and extra.get("volume_preserving") is True):
            continue
        floors = declared.setdefault((str(model), str(variant)), {})
        floor = extra.get("floor")
        if isinstance(floor, int | float) and math.isfinite(floor):
            floors.setdefault(str(metric), []).append(float(floor))
            units.setdefault(str(metric), str(unit))
    order = [c.metric for c in table.columns]
    for row in table.rows:
        found = declared.get((row.model, row.variant))
        if found is None:
            continue
        shown = [f"{m} {fmt_num(sum(v) / len(v))}" + (f" {units[m]}" if units.get(m) else "")
                 for m, v in sorted(found.items(), key=lambda kv: order.index(kv[0]) if kv[0] in order else 99)]
        table.add_note(row, "volume-preserving" + (f", floor: {', '.join(shown)}" if shown else ""))


def mark_estimator_bias(table: Table, df: pd.DataFrame) -> None:
    """Mark ``test_nll`` cells any of whose rows says the training loss fell below the data's entropy."""
    sub = df[(df["task"] == "likelihood") & (df["dataset"] == table.dataset) & (df["metric"] == "test_nll")]
    flagged = {(str(m), str(v), str(i), str(k)) for m, v, i, k, e in
               zip(sub["model"], sub["variant"], sub["input"], sub["settings_key"], sub["extra"], strict=True)
               if isinstance(e, dict) and e.get("train_loss_below_entropy") is True}
    for row in table.rows:
        if (row.model, row.variant, row.input, row.settings_key) in flagged:
            table.marks[(row, "test_nll")] = ESTIMATOR_MARK
            table.add_footnote(ESTIMATOR_NOTE)


def _flop_note(df: pd.DataFrame, table: Table) -> str:
    """What the FLOP columns count: :data:`bench.flops.COUNTS` for rows whose ``extra["counter"]`` is
    :data:`bench.flops.COUNTER`, a row's own ``extra["counts"]`` for another counter (older runs carry it too)."""
    sub = df[(df["task"] == table.task) & (df["dataset"] == table.dataset) & df["metric"].isin(list(FLOP_METRICS))]
    for extra in sub["extra"]:
        if not isinstance(extra, dict):
            continue
        counter = str(extra.get("counter") or COUNTER)
        counts = extra.get("counts")
        if isinstance(counts, str) and counts:
            return f"FLOPs counted by {counter}: {counts}."
        if counter == COUNTER:
            return f"FLOPs counted by {COUNTER}: {COUNTS}."
    return FLOP_NOTE
