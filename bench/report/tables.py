"""Tables from a results store: rows grouped per (task, dataset), models as rows, metrics as columns.

Reading a store (:func:`load_store`), the rows as a pandas DataFrame (:func:`frame`), seeds aggregated into
cells by ``groupby`` (:func:`seed_stats`, :class:`Cell`), cells laid out as tables (:func:`build_tables`) and
rendered as Markdown, LaTeX (pandas' Styler), HTML cells and CSV records (``DataFrame.to_csv``).

A row's identity is its fields (:class:`bench.run.rundir.Row`): a table column is one ``metric`` (with its unit
and the arrow of the row's ``direction``), a table row is one (model with its ``variant``, ``input``,
``settings``): the stability inputs and the estimator settings become rows, not columns, so a column holds one
measured quantity. A cell is "mean ± std (n_ok/n_total)" over seeds (std with ddof=1, left out for one seed);
rows with a status other than ``ok`` are counted and shown by status ("unsupported", "diverged 1/2"), never
dropped. The leading cell of a column among rows with the same input and settings is chosen by the direction:
``up`` the largest mean, ``down`` the smallest, ``zero`` the smallest ``|mean|``; undirected columns are not
judged. It is marked best (bold) only where its 95 % bootstrap interval over seeds (:mod:`bench.report.bootstrap`)
overlaps no other cell's, the runner-up's first of all; a leader whose interval overlaps another's is a tie and
is not bolded.

A model whose rows carry ``extra["baseline"]`` (e.g. the fitted Gaussian, ``gaussian-fit``) is labelled
``(baseline)`` and listed after the models. Tables may carry per-row ``notes`` (a trailing column), per-cell
``marks`` (a symbol after the cell) and ``footnotes`` (lines under the table); :mod:`bench.report.annotate` fills
them.

A model whose ``train_steps`` rows on a data set are all 0 (a suite budget of ``steps = 0``: measured as
initialised) is labelled ``(untrained)`` in every table of that data set.
"""

from __future__ import annotations

import csv
import html
import json
import math
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from bench.report.bootstrap import Interval, leader, seed_interval
from bench.run.rundir import SCHEMA, STATUSES, ReadStats, Row, read_rows, settings_key

#: the order tasks appear in reports (the order a suite runs them, as in ``bench.tasks.registry``; kept here
#: so reporting does not import torch); unknown tasks follow alphabetically
TASK_ORDER: tuple[str, ...] = ("likelihood", "classification", "time_to_target", "inverse_cost", "stability",
                                "logdet", "cost")
#: the order of input kinds (a row's ``input``); unknown kinds follow alphabetically
INPUT_ORDER: tuple[str, ...] = ("test", "noise", "uniform", "scaled", "ood")
#: the fields that identify a cell of a table: one measured quantity of one model over seeds
CELL_KEY: tuple[str, ...] = ("task", "dataset", "model", "variant", "input", "settings_key", "metric")

Style = Literal["plain", "md", "tex", "html"]


@dataclass
class Store:
    """A loaded results store: the run directory, its rows, its run record (``run.json``, or ``{}``) and the
    lines of results.jsonl that could not be read (``read``)."""

    run_dir: Path
    results_path: Path
    rows: list[Row]
    record: dict[str, Any]
    read: ReadStats = field(default_factory=ReadStats)

    @property
    def name(self) -> str:
        return self.run_dir.name

    @property
    def suites(self) -> set[str]:
        """The suite names the run record and the rows give (empty names left out)."""
        names = {r.suite for r in self.rows if r.suite}
        if isinstance(self.record.get("suite"), str) and self.record["suite"]:
            names.add(self.record["suite"])
        return names


def load_store(path: str | Path) -> Store:
    """Read a run directory or a ``results.jsonl`` file (``run.json`` is looked for beside it), or a report folder
    or its ``rows.csv`` (:func:`read_rows_csv`; a committed reference report holds no results.jsonl), so that
    ``invbench compare reports/quick-cpu runs/quick`` compares a run with a reference report."""
    p = Path(path)
    results = p / "results.jsonl" if p.is_dir() else p
    if p.is_dir() and not results.is_file() and (p / "rows.csv").is_file():
        results = p / "rows.csv"
    if not results.is_file():
        raise FileNotFoundError(f"no results store at {p} (expected a run directory holding results.jsonl, "
                                f"the results.jsonl file itself, or a report folder holding rows.csv)")
    run_dir = results.parent
    record: dict[str, Any] = {}
    run_json = run_dir / "run.json"
    if run_json.is_file():
        loaded = json.loads(run_json.read_text(encoding="utf-8"))
        record = loaded if isinstance(loaded, dict) else {"record": loaded}
    stats = ReadStats()
    rows = list(read_rows_csv(results, stats) if results.suffix == ".csv" else read_rows(results, stats))
    return Store(run_dir=run_dir, results_path=results, rows=rows, record=record, read=stats)


def read_rows_csv(path: Path, stats: ReadStats | None = None) -> Iterator[Row]:
    """The rows of a report's ``rows.csv`` (what :func:`rows_frame` wrote: ``settings`` and ``extra`` as JSON,
    ``value`` as repr, empty for none), or of a schema-1 report's (``higher_is_better`` instead of ``direction``,
    the settings encoded in the metric name; upgraded by :meth:`bench.run.rundir.Row.from_dict`); a line that does
    not parse is skipped and counted in ``stats.invalid``."""
    with open(path, encoding="utf-8", newline="") as fh:
        reader = csv.DictReader(fh)
        columns = set(reader.fieldnames or [])
        legacy = "direction" not in columns and "higher_is_better" in columns
        needed = set(CSV_COMMON) | ({"higher_is_better"} if legacy else {"direction", "settings"})
        if not needed <= columns:
            raise ValueError(f"{path}: not a report's rows.csv (missing columns: "
                             f"{', '.join(sorted(needed - columns))})")
        for line in reader:
            try:
                data: dict[str, Any] = {k: line[k] for k in CSV_COMMON}
                data.update(seed=int(line["seed"]), value=float(line["value"]) if line["value"] != "" else None,
                            extra=json.loads(line["extra"]) if line["extra"] else {})
                if legacy:
                    data.update(schema=1, higher_is_better={"true": True, "false": False}.get(
                        line["higher_is_better"].lower()))
                else:
                    data.update(schema=SCHEMA, direction=line["direction"] or None,
                                settings=json.loads(line["settings"]) if line["settings"] else {})
                yield Row.from_dict(data)
            except (TypeError, ValueError, KeyError, AttributeError):
                if stats is not None:
                    stats.invalid += 1


def family_of(model: str, record: dict[str, Any] | None = None) -> str:
    """Model family: ``run.json``'s ``models[<name>]["family"]`` if recorded, else the name before its backend.

    ``iresnet-native`` -> ``iresnet``; a ``module:Class`` name -> the lower-cased class name.
    """
    models = (record or {}).get("models")
    if isinstance(models, dict) and isinstance(models.get(model), dict) and models[model].get("family"):
        return str(models[model]["family"])
    if ":" in model:
        return model.rsplit(":", 1)[1].rsplit(".", 1)[-1].lower()
    return model.rsplit("-", 1)[0] if "-" in model else model


def settings_text(settings: dict[str, Any]) -> str:
    """Settings for display, keys sorted: ``{"terms": 5, "probes": 1}`` -> ``probes=1,terms=5``."""
    return ",".join(f"{k}={settings[k]}" for k in sorted(settings))


def fmt_num(v: float, digits: int = 4) -> str:
    """A number with ``digits`` significant digits (``g`` format: exponent form below 1e-4 and from 10**digits)."""
    if math.isnan(v):
        return "nan"
    if math.isinf(v):
        return "inf" if v > 0 else "-inf"
    if v == 0:
        return "0"
    return f"{v:.{digits}g}"


#: units whose values are counts, shown as integers with thousands separators (``35,348``)
COUNT_UNITS: frozenset[str] = frozenset({"parameters"})


def fmt_value(v: float, unit: str = "", digits: int = 4) -> str:
    """A cell's number: :func:`fmt_num`, or an integer with thousands separators for :data:`COUNT_UNITS`."""
    if unit in COUNT_UNITS and math.isfinite(v):
        return f"{round(v):,}"
    return fmt_num(v, digits)


def status_label(status: str) -> str:
    """A status for display: ``not_reached`` -> ``not reached``; the others as they are."""
    return "not reached" if status == "not_reached" else status


# ----------------------------------------------------------------------------------------------- aggregation
FRAME_COLUMNS: tuple[str, ...] = ("run_id", "suite", "model", "task", "dataset", "seed", "metric", "input",
                                  "variant", "settings", "settings_key", "value", "has_value", "unit", "direction",
                                  "status", "config_hash", "extra")


def frame(rows: Iterable[Row]) -> pd.DataFrame:
    """One line per row, columns :data:`FRAME_COLUMNS`: the row's fields, ``settings`` as display text
    (:func:`settings_text`) and ``settings_key`` its canonical JSON (:func:`bench.run.rundir.settings_key`, the
    grouping key); ``value`` a float (NaN when the row has none, ``has_value`` False then)."""
    records = [{
        "run_id": r.run_id, "suite": r.suite, "model": r.model, "task": r.task, "dataset": r.dataset,
        "seed": int(r.seed), "metric": r.metric, "input": r.input, "variant": r.variant,
        "settings": settings_text(r.settings), "settings_key": settings_key(r.settings),
        "value": math.nan if r.value is None else float(r.value), "has_value": r.value is not None,
        "unit": r.unit, "direction": r.direction, "status": r.status, "config_hash": r.config_hash,
        "extra": r.extra,
    } for r in rows]
    return pd.DataFrame.from_records(records, columns=list(FRAME_COLUMNS))


def status_columns(stats: pd.DataFrame) -> list[str]:
    """The ``status:<name>`` count columns of a :func:`seed_stats` frame, in :data:`STATUSES` order."""
    cols = [c for c in stats.columns if str(c).startswith("status:")]
    return sorted(cols, key=lambda c: (STATUSES.index(c[7:]) if c[7:] in STATUSES else len(STATUSES), c))


def seed_stats(df: pd.DataFrame, keys: Sequence[str] = CELL_KEY) -> pd.DataFrame:
    """Aggregate a :func:`frame` over seeds: one line per ``keys`` group, in order of first appearance.

    Columns: ``mean`` and ``std`` (ddof=1, two-pass: sqrt(sum (v - mean)^2 / (n - 1))) of the values of ok rows,
    NaN when any of them is NaN (and ``std`` NaN when any is infinite, or with fewer than two); ``n_ok`` (ok rows
    with a value), ``n_total`` (all rows), ``status:<name>`` (rows per status), ``unit`` (the first non-empty),
    ``direction`` (the first given) and ``settings`` (display text).
    """
    keys = list(keys)
    columns = ["mean", "std", "n_ok", "n_total", "unit", "direction", "settings"]
    if df.empty:
        return pd.DataFrame(columns=columns, index=pd.MultiIndex.from_tuples([], names=keys))
    groups = df.groupby(keys, sort=False)
    stats = groups.agg(n_total=("status", "size"), unit=("unit", lambda s: next((u for u in s if u), "")),
                       direction=("direction", "first"), settings=("settings", "first"))
    counts = df.groupby([*keys, "status"], sort=False).size().unstack("status", fill_value=0)
    counts = counts.reindex(stats.index, fill_value=0)
    for status in counts.columns:
        stats[f"status:{status}"] = counts[status].astype(int)
    ok = df[(df["status"] == "ok") & df["has_value"]]
    by = [ok[k] for k in keys]
    values = ok["value"].astype(float)
    n_ok = values.groupby(by, sort=False).size()
    mean = values.groupby(by, sort=False).mean()
    sq_dev = (values - values.groupby(by, sort=False).transform("mean")) ** 2
    std = np.sqrt(sq_dev.groupby(by, sort=False).sum() / (n_ok - 1).where(n_ok > 1))
    any_nan = values.isna().groupby(by, sort=False).any()
    all_finite = (values.abs() < math.inf).groupby(by, sort=False).all()  # NaN is not finite either
    stats["n_ok"] = n_ok.reindex(stats.index, fill_value=0).astype(int)
    stats["mean"] = mean.mask(any_nan).reindex(stats.index)
    stats["std"] = std.mask(~all_finite).reindex(stats.index)
    return stats


@dataclass
class Cell:
    """One group of rows over seeds: the statistics of its ok values and the count of every status."""

    mean: float | None = None
    std: float | None = None
    n_ok: int = 0
    n_total: int = 0
    statuses: dict[str, int] = field(default_factory=dict)
    unit: str = ""
    direction: str | None = None
    #: a value computed in closed form by the report (not measured; no seeds)
    analytic: bool = False
    #: show ``(n_ok/n_total)`` after the number (off for a value joined from another task's rows)
    show_counts: bool = True

    @classmethod
    def from_stats(cls, stats: Mapping[Any, Any]) -> Cell:
        """A cell from one line of :func:`seed_stats` (as a dict)."""
        n_ok = int(stats["n_ok"])
        statuses = {str(k)[7:]: int(v) for k, v in stats.items() if str(k).startswith("status:") and int(v) > 0}
        direction = stats.get("direction")
        return cls(mean=float(stats["mean"]) if n_ok else None, std=float(stats["std"]) if n_ok >= 2 else None,
                   n_ok=n_ok, n_total=int(stats["n_total"]), statuses=statuses, unit=str(stats.get("unit") or ""),
                   direction=direction if isinstance(direction, str) else None)

    def status_text(self) -> str:
        """The non-ok statuses: ``unsupported`` alone when every row is unsupported, else ``diverged 1/2, ...``."""
        bad = [(s, k) for s, k in self.statuses.items() if s != "ok"]
        if not bad:
            return ""
        if len(bad) == 1 and bad[0][0] == "unsupported" and bad[0][1] == self.n_total:
            return "unsupported"
        bad.sort(key=lambda sk: (-sk[1], sk[0]))
        return ", ".join(f"{status_label(s)} {k}/{self.n_total}" for s, k in bad)

    def parts(self, style: Style = "plain", best: bool = False) -> tuple[str, str]:
        """``("mean ± std (n_ok/n_total)", statuses)``; either may be empty; the number bold when ``best``."""
        number = ""
        if self.mean is not None:
            number = fmt_value(self.mean, self.unit)
            pm = {"tex": r" $\pm$ ", "html": " &plusmn; "}.get(style, " ± ")
            if self.std is not None and not (self.unit in COUNT_UNITS and self.std == 0):
                number += pm + fmt_value(self.std, self.unit, 2)
            if best:
                number = {"md": f"**{number}**", "tex": rf"\textbf{{{number}}}",
                          "html": f"<b>{number}</b>"}.get(style, number)
            if self.analytic:
                number += " (analytic)"
            elif self.show_counts:
                number += f" ({self.n_ok}/{self.n_total})"
        return number, self.status_text()

    def render(self, style: Style = "plain", best: bool = False) -> str:
        """``mean ± std (n_ok/n_total)`` then the statuses, joined by ``; ``."""
        return "; ".join(p for p in self.parts(style, best) if p)


def aggregate(rows: Iterable[Row] | pd.DataFrame, keys: Sequence[str] = CELL_KEY) -> dict[tuple[Any, ...], Cell]:
    """``{key tuple: Cell}`` over seeds, grouped by ``keys`` (fields of :func:`frame`), first-appearance order."""
    df = rows if isinstance(rows, pd.DataFrame) else frame(rows)
    stats = seed_stats(df, keys)
    return {k if isinstance(k, tuple) else (k,): Cell.from_stats(v) for k, v in stats.to_dict("index").items()}


def untrained_models(df: pd.DataFrame) -> set[tuple[str, str]]:
    """``(model, dataset)`` pairs whose ok ``train_steps`` rows all have value 0 (a budget of ``steps = 0``)."""
    steps = df[(df["metric"] == "train_steps") & (df["status"] == "ok") & df["has_value"]]
    if steps.empty:
        return set()
    zero = steps.groupby(["model", "dataset"])["value"].agg(lambda v: bool((v == 0).all()))
    pairs = zero[zero.astype(bool)].index
    return set(zip(pairs.get_level_values("model").astype(str), pairs.get_level_values("dataset").astype(str),
                   strict=True))


# ----------------------------------------------------------------------------------------------- tables
@dataclass
class Column:
    """One table column: a metric with its unit and direction."""

    metric: str
    unit: str = ""
    direction: str | None = None

    def header(self, style: Style = "plain") -> str:
        arrows = {
            "zero": {"tex": r"$|\cdot|\downarrow$", "html": "|&middot;| &darr;"}.get(style, "|·| ↓"),
            "up": {"tex": r"$\uparrow$", "html": "&uarr;"}.get(style, "↑"),
            "down": {"tex": r"$\downarrow$", "html": "&darr;"}.get(style, "↓"),
        }
        name = self.metric + (f" ({self.unit})" if self.unit else "")
        if style == "tex":
            name = tex_escape(name)
        elif style == "html":
            name = html.escape(name)
        return f"{name} {arrows.get(self.direction or '', '')}".strip()


@dataclass(frozen=True)
class TableRow:
    """One table row: a model (with its variant) on one input with one set of settings."""

    model: str
    variant: str = ""
    input: str = ""
    settings_key: str = ""
    settings: str = ""
    untrained: bool = False
    #: the baseline a model's rows name (``extra["baseline"]``, e.g. ``gaussian``), or ``""``
    baseline: str = ""
    #: a reference row the report computes in closed form (``model`` is its description)
    analytic: bool = False

    @property
    def label(self) -> str:
        """``model``, ``model+variant``, with `` (untrained)`` for a model measured as initialised, `` (baseline)``
        for a baseline model and `` (analytic)`` for a computed reference row."""
        return (self.model + (f"+{self.variant}" if self.variant else "") + (" (untrained)" if self.untrained else "")
                + (" (baseline)" if self.baseline else "") + (" (analytic)" if self.analytic else ""))

    @property
    def is_reference(self) -> bool:
        """A baseline or analytic row: listed after the models."""
        return bool(self.baseline) or self.analytic


@dataclass
class Table:
    """One table: a task on a data set; rows are :class:`TableRow`, columns metrics."""

    task: str
    dataset: str
    rows: list[TableRow]
    columns: list[Column]
    cells: dict[tuple[TableRow, str], Cell]
    best: set[tuple[TableRow, str]]
    #: the leader and the cells whose intervals overlap it: judged, not bolded
    tied: set[tuple[TableRow, str]] = field(default_factory=set)
    #: per-row remarks, shown in a trailing ``notes`` column
    notes: dict[TableRow, list[str]] = field(default_factory=dict)
    #: per-cell symbols shown after the cell, explained by a footnote
    marks: dict[tuple[TableRow, str], str] = field(default_factory=dict)
    #: lines shown under the table
    footnotes: list[str] = field(default_factory=list)
    #: the header of the settings index column
    settings_label: str = "settings"

    @property
    def slug(self) -> str:
        return slug(f"{self.task}__{self.dataset}")

    @property
    def title(self) -> str:
        return f"{self.task} — {self.dataset}"

    def index_names(self) -> list[str]:
        """``model`` plus ``input`` / ``settings`` (headed :attr:`settings_label`) when any row has one."""
        names = ["model"]
        if any(r.input for r in self.rows):
            names.append("input")
        if any(r.settings for r in self.rows):
            names.append(self.settings_label)
        return names

    def index_values(self, row: TableRow) -> list[str]:
        values = {"model": row.label, "input": row.input, self.settings_label: row.settings}
        return [values[n] for n in self.index_names()]

    @property
    def has_notes(self) -> bool:
        return any(self.notes.get(r) for r in self.rows)

    def notes_text(self, row: TableRow) -> str:
        return "; ".join(self.notes.get(row, []))

    def add_note(self, row: TableRow, note: str) -> None:
        self.notes.setdefault(row, [])
        if note not in self.notes[row]:
            self.notes[row].append(note)

    def add_footnote(self, note: str) -> None:
        if note not in self.footnotes:
            self.footnotes.append(note)

    def cell_text(self, row: TableRow, column: str, style: Style = "plain") -> str:
        cell = self.cells.get((row, column))
        if cell is None:
            return {"tex": "---", "html": "&mdash;"}.get(style, "—")
        mark = self.marks.get((row, column), "")
        if style == "tex":
            number, status = cell.parts("tex", best=(row, column) in self.best)
            text = "; ".join(p for p in (number, tex_escape(status)) if p)
            return text + (f" {tex_escape(mark)}" if mark else "")
        if style == "html":
            number, status = cell.parts("html", best=(row, column) in self.best)
            text = "; ".join(p for p in (number, html.escape(status)) if p)
            return text + (f" {html.escape(mark)}" if mark else "")
        return cell.render(style, best=(row, column) in self.best) + (f" {mark}" if mark else "")

    def display(self, style: Style = "plain") -> pd.DataFrame:
        """The table as strings: index columns (escaped for ``style``), one column per metric, then ``notes``
        when any row has one."""
        escapes: dict[str, Callable[[str], str]] = {"tex": tex_escape, "html": html.escape}
        escape = escapes.get(style, str)
        notes = self.has_notes
        head = ([escape(n) for n in self.index_names()] + [c.header(style) for c in self.columns]
                + (["notes"] if notes else []))
        body = [[escape(v) for v in self.index_values(r)] + [self.cell_text(r, c.metric, style) for c in self.columns]
                + ([escape(self.notes_text(r))] if notes else [])
                for r in self.rows]
        return pd.DataFrame(body, columns=head, dtype=object)


def slug(text: str) -> str:
    """A file-name-safe version of ``text``."""
    return re.sub(r"[^A-Za-z0-9_.=-]+", "_", text).strip("_") or "x"


def order_key(value: str, order: Sequence[str]) -> tuple[int, str]:
    return (order.index(value), "") if value in order else (len(order), value)


def baseline_models(df: pd.DataFrame) -> dict[str, str]:
    """``{model: baseline kind}`` for models any of whose rows carry ``extra["baseline"]`` (a string)."""
    out: dict[str, str] = {}
    for model, extra in zip(df["model"], df["extra"], strict=True):
        kind = extra.get("baseline") if isinstance(extra, dict) else None
        if isinstance(kind, str) and kind:
            out.setdefault(str(model), kind)
    return out


def cell_values(df: pd.DataFrame, keys: Sequence[str] = CELL_KEY,
                censored: frozenset[str] = frozenset()) -> dict[tuple[Any, ...], list[float]]:
    """``{key tuple: values of the ok rows, by seed}`` (NaN values kept). Rows with a status in ``censored``
    count as the worst value of their direction (``+inf`` for ``down``, ``-inf`` for ``up``): e.g. a target not
    reached is an infinite time to it."""
    ok = df[((df["status"] == "ok") & df["has_value"]) | df["status"].isin(list(censored))].copy()
    if ok.empty:
        return {}
    worst = ok["direction"].map({"up": -math.inf}).fillna(math.inf)
    ok["value"] = ok["value"].where(ok["status"] == "ok", worst)
    ok = ok.sort_values("seed", kind="stable")
    grouped = ok.groupby(list(keys), sort=False)["value"].agg(list)
    return {k if isinstance(k, tuple) else (k,): [float(v) for v in vals] for k, vals in grouped.items()}


def judged_interval(values: Sequence[float], direction: str | None, name: str) -> Interval:
    """The bootstrap interval of what a cell is judged by: its mean (``up``, ``down``) or ``|mean|`` (``zero``);
    a NaN interval for undirected cells and cells with a NaN value (their mean is NaN)."""
    if direction not in ("up", "down", "zero") or not values or any(math.isnan(v) for v in values):
        return Interval(math.nan, math.nan, math.nan)
    with np.errstate(invalid="ignore"):
        return seed_interval(values, name, statistic=np.abs if direction == "zero" else None)


def mark_best(stats: pd.DataFrame, values: Mapping[tuple[Any, ...], Sequence[float]]) -> tuple[pd.Series, pd.Series]:
    """``(best, tied)`` boolean Series over the cells of a :func:`seed_stats` frame (index :data:`CELL_KEY`):
    within each (task, dataset, metric, input, settings) the leader by direction is best when its bootstrap
    interval overlaps no other's (:func:`bench.report.bootstrap.leader`), else the leaders are tied."""
    best = pd.Series(False, index=stats.index)
    tied = pd.Series(False, index=stats.index)
    names = list(stats.index.names)
    judged = ["task", "dataset", "metric", "input", "settings_key"]
    for _, group in stats.groupby(level=judged, sort=False):
        direction = next((d for d in group["direction"] if isinstance(d, str)), None)
        if direction not in ("up", "down", "zero"):
            continue
        intervals = {}
        for key in group.index:
            name = "|".join(str(k) for k in key)
            intervals[key] = judged_interval(values.get(key, []), direction, name)
        verdict = leader(intervals, higher_is_better=direction == "up")
        for key in verdict.best:
            best[key] = True
        for key in verdict.tied:
            tied[key] = True
    best.index.names = tied.index.names = names
    return best, tied


def build_tables(rows: Sequence[Row], censored: frozenset[str] = frozenset()) -> list[Table]:
    """One :class:`Table` per (task, dataset), tasks in :data:`TASK_ORDER`, data sets alphabetically. Rows with a
    status in ``censored`` are judged as the worst value (:func:`cell_values`); cells still show the ok rows."""
    df = frame(rows)
    stats = seed_stats(df, CELL_KEY)
    if stats.empty:
        return []
    stats["best"], stats["tied"] = mark_best(stats, cell_values(df, CELL_KEY, censored))
    baselines = baseline_models(df)
    # a baseline fitted in closed form takes no steps: train_steps 0 does not mean "as initialised" for it
    untrained = {(m, d) for m, d in untrained_models(df) if m not in baselines}
    flat = stats.reset_index()
    tables = []
    for (task, dataset), group in sorted(flat.groupby(["task", "dataset"], sort=False),
                                         key=lambda kv: (order_key(str(kv[0][0]), TASK_ORDER), str(kv[0][1]))):
        tables.append(_build_table(str(task), str(dataset), group, untrained, baselines))
    return tables


def _build_table(task: str, dataset: str, group: pd.DataFrame, untrained: set[tuple[str, str]],
                 baselines: Mapping[str, str]) -> Table:
    settings_order = list(dict.fromkeys(group["settings_key"]))
    columns: dict[str, Column] = {}
    cells: dict[tuple[TableRow, str], Cell] = {}
    best: set[tuple[TableRow, str]] = set()
    tied: set[tuple[TableRow, str]] = set()
    for rec in group.to_dict("records"):
        row = TableRow(rec["model"], rec["variant"], rec["input"], rec["settings_key"], rec["settings"],
                       (rec["model"], dataset) in untrained, baselines.get(rec["model"], ""))
        cell = Cell.from_stats(rec)
        col = columns.setdefault(rec["metric"], Column(rec["metric"]))
        col.unit = col.unit or cell.unit
        col.direction = col.direction or cell.direction
        cells[(row, rec["metric"])] = cell
        if rec["best"]:
            best.add((row, rec["metric"]))
        if rec["tied"]:
            tied.add((row, rec["metric"]))
    row_keys = sorted({r for r, _ in cells}, key=lambda r: (r.is_reference, r.model, r.variant,
                                                             order_key(r.input, INPUT_ORDER),
                                                             settings_order.index(r.settings_key)))
    return Table(task=task, dataset=dataset, rows=row_keys, columns=list(columns.values()), cells=cells, best=best,
                 tied=tied)


def to_markdown(table: Table) -> str:
    """A GitHub-flavoured Markdown table (no title), its footnotes as lines under it."""
    shown = table.display("md")
    n_idx = len(table.index_names())
    align = ["---"] * n_idx + ["---:"] * len(table.columns) + (["---"] if table.has_notes else [])
    lines = [_md_row(list(shown.columns)), _md_row(align)] + [_md_row(list(r)) for r in shown.itertuples(index=False)]
    if table.footnotes:
        lines += [""] + [f"{note}  " for note in table.footnotes[:-1]] + table.footnotes[-1:]
    return "\n".join(lines) + "\n"


def _md_row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(str(c).replace("|", r"\|") for c in cells) + " |"


_TEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "—": "---",
                "±": r"$\pm$", "·": r"$\cdot$", "†": r"\textdagger{}", "≤": r"$\le$", "≥": r"$\ge$", "–": "--"}


def tex_escape(text: str) -> str:
    """Escape LaTeX's special characters in plain text."""
    return "".join(_TEX_SPECIAL.get(ch, ch) for ch in text)


def to_latex(table: Table) -> str:
    """A ``table`` float with a booktabs ``tabular`` (needs ``\\usepackage{booktabs}``), by pandas' Styler."""
    spec = "l" * len(table.index_names()) + "r" * len(table.columns) + ("l" if table.has_notes else "")
    caption = (f"{tex_escape(table.title)}: mean $\\pm$ std over seeds (n\\_ok/n\\_total); best in bold where its "
               "95\\% bootstrap interval over seeds overlaps no other's.")
    caption += "".join(f" {tex_escape(note)}" for note in table.footnotes)
    return table.display("tex").style.hide(axis="index").to_latex(
        column_format=spec, position="ht", position_float="centering", hrules=True, caption=caption,
        label=f"tab:{table.slug}")


def to_html(table: Table) -> str:
    """An HTML ``<table>`` (no title); a cell's class says whether every seed gave a value."""
    out = ["<table>", "<thead><tr>"]
    out += [f"<th>{html.escape(n)}</th>" for n in table.index_names()]
    out += [f"<th>{c.header('html')}</th>" for c in table.columns]
    out += ["<th>notes</th>"] if table.has_notes else []
    out.append("</tr></thead><tbody>")
    for row in table.rows:
        out.append("<tr>" + "".join(f"<td>{html.escape(v)}</td>" for v in table.index_values(row)))
        for c in table.columns:
            cell = table.cells.get((row, c.metric))
            cls = "num" if cell is None or cell.n_ok == cell.n_total else ("num partial" if cell.n_ok else "status")
            out.append(f'<td class="{cls}">{table.cell_text(row, c.metric, "html")}</td>')
        if table.has_notes:
            out.append(f'<td class="note">{html.escape(table.notes_text(row))}</td>')
        out.append("</tr>")
    out.append("</tbody></table>")
    out += [f'<p class="footnote">{html.escape(note)}</p>' for note in table.footnotes]
    return "\n".join(out) + "\n"


# ----------------------------------------------------------------------------------------------- CSV
SUMMARY_FIELDS: tuple[str, ...] = ("task", "dataset", "model", "variant", "untrained", "input", "settings",
                                   "metric", "unit", "direction", "mean", "std", "n_ok", "n_total", "statuses",
                                   "best", "cell")


def _csv_num(v: float | None) -> str:
    return "" if v is None else repr(float(v))


def summary_frame(table: Table) -> pd.DataFrame:
    """One line per cell of ``table`` (long form), in row then column order; columns :data:`SUMMARY_FIELDS`."""
    records = []
    for row in table.rows:
        for c in table.columns:
            cell = table.cells.get((row, c.metric))
            if cell is None:
                continue
            records.append({
                "task": table.task, "dataset": table.dataset, "model": row.model, "variant": row.variant,
                "untrained": str(row.untrained).lower(), "input": row.input, "settings": row.settings,
                "metric": c.metric, "unit": cell.unit or c.unit, "direction": cell.direction or "",
                "mean": _csv_num(cell.mean), "std": _csv_num(cell.std), "n_ok": cell.n_ok, "n_total": cell.n_total,
                "statuses": ";".join(f"{s}={k}" for s, k in sorted(cell.statuses.items())),
                "best": "true" if (row, c.metric) in table.best else "false",
                "cell": table.cell_text(row, c.metric),
            })
    return pd.DataFrame.from_records(records, columns=list(SUMMARY_FIELDS))


ROW_FIELDS: tuple[str, ...] = ("run_id", "suite", "model", "family", "task", "dataset", "seed", "metric", "input",
                               "variant", "settings", "value", "unit", "direction", "status", "config_hash", "extra")
#: the ``rows.csv`` columns every version of the report wrote and a row is read from (schema 1 wrote
#: ``higher_is_better`` for ``direction`` and encoded the settings in the metric name)
CSV_COMMON: tuple[str, ...] = tuple(f for f in ROW_FIELDS if f not in ("family", "settings", "direction"))


def rows_frame(rows: Iterable[Row], record: dict[str, Any] | None = None) -> pd.DataFrame:
    """Every row as a flat record (tidy data), columns :data:`ROW_FIELDS`: the family added, ``settings`` as
    canonical JSON (empty for none), ``value`` as repr (``nan`` kept, empty for none), ``extra`` as compact JSON
    (sorted keys, no spaces after separators)."""
    df = frame(rows)
    out = df.copy()
    out["family"] = [family_of(m, record) for m in df["model"]]
    out["settings"] = df["settings_key"]
    out["value"] = [_csv_num(v) if h else "" for v, h in zip(df["value"], df["has_value"], strict=True)]
    out["direction"] = df["direction"].fillna("")
    out["extra"] = [json.dumps(e, sort_keys=True, default=str, separators=(",", ":")) for e in df["extra"]]
    return out[list(ROW_FIELDS)]


def write_csv(path: Path, table: pd.DataFrame) -> None:
    """Write a frame as CSV with a header line and no index (``\\n`` line ends, so files compare byte for byte)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(path, index=False, lineterminator="\n")
