"""The leaderboard at the top of a report: one row per model, its headline per task, each with a 95 % bootstrap
interval over seeds (:mod:`bench.report.bootstrap`).

Headlines (rows of the model itself: no ``variant``, no settings; a column is left out when no model has it):

- ``likelihood``: on each data set the ``kl_gap`` (where the data set has it: a known entropy) or else the
  ``test_bpd``; with several data sets, the model's median over data sets of its rank among the models on that
  data set (1 = best; equal means share the average rank); with one, the value itself.
- ``classification``: ``test_accuracy`` the same way (median rank over several data sets, the value on one).
- ``inverse_cost``: the median over data sets of ``inverse_fwd_units``, and beside it the worst (largest)
  ``recon_err`` over data sets: a ratio without the error it buys means nothing.
- ``stability``: the worst OOD condition number: the largest ``condition`` over data sets and non-test inputs
  (``noise``, ``uniform``, ``scaled``, ``ood``; see :mod:`bench.tasks.stability`).
- ``cost``: ``params``, the trainable-parameter count (its range when it differs between data sets; not judged).

Every value is an aggregate of per-(model, data set) means over seeds. Its interval: resample the seeds of every
(model, data set) with replacement, recompute the aggregate (ranks included) on the joint resample, take the
2.5th and 97.5th percentiles. A column's leader is marked ``best`` (bold) only where its interval overlaps no
other's (the runner-up's first of all); otherwise the leader and every model whose interval overlaps it are
marked ``tie``.
A model with values on fewer data sets than the column counts says so (``3/5 sets``). Baseline models
(``extra["baseline"]``, e.g. the fitted Gaussian) are ranked like any model and labelled ``(baseline)``.
"""

from __future__ import annotations

import html
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import pandas as pd

from bench.report.bootstrap import N_BOOT, Interval, Verdict, leader, percentile_interval, resample_means
from bench.report.tables import COUNT_UNITS, INPUT_ORDER, Style, baseline_models, fmt_value, frame
from bench.run.rundir import Row

Aggregate = Literal["rank", "value", "median", "max"]
#: the inputs of test data (every other stability input is out of distribution)
TEST_INPUTS: frozenset[str] = frozenset({"", "test"})
LEGEND = ("Leaderboard: one row per model (its own rows: no variant, no settings); value [95 % bootstrap interval "
          "over seeds]. Ranks: 1 is best, the median over data sets of the model's rank by kl_gap (where the data "
          "set has a known entropy) or test_bpd, or by test_accuracy. Bold: best, its interval clear of every "
          "other's (the runner-up's first of all); tie: the leader's interval overlaps another's, and the leader "
          "and every model whose interval overlaps it are marked. k/n sets: the model has values on k of the "
          "column's n data sets.")


@dataclass
class Entry:
    """One model's headline: the interval of its aggregate, the data sets it covers, or why it has none."""

    interval: Interval | None = None
    n_sets: int = 0
    status: str = ""
    #: a plain value shown instead of an interval (params)
    text: str = ""


@dataclass
class LeaderColumn:
    """One headline column: its entries by model and the tie rule's verdict."""

    key: str
    title: str
    direction: str | None
    unit: str
    n_sets: int
    entries: dict[str, Entry]
    verdict: Verdict = field(default_factory=lambda: Verdict(frozenset(), frozenset()))

    def header(self, style: Style = "plain") -> str:
        arrow = {"up": {"html": "&uarr;"}.get(style, "↑"), "down": {"html": "&darr;"}.get(style, "↓")}
        title = html.escape(self.title) if style == "html" else self.title
        return f"{title} {arrow.get(self.direction or '', '')}".strip()

    def text(self, model: str, style: Style = "plain") -> str:
        entry = self.entries.get(model)
        if entry is None:
            return {"html": "&mdash;"}.get(style, "—")
        if entry.text:
            return entry.text
        if entry.interval is None:
            return entry.status or {"html": "&mdash;"}.get(style, "—")
        iv = entry.interval
        number = fmt_value(iv.point, self.unit)
        if model in self.verdict.best:
            number = {"md": f"**{number}**", "html": f"<b>{number}</b>"}.get(style, number)
        out = f"{number} [{fmt_value(iv.low, self.unit, 3)}, {fmt_value(iv.high, self.unit, 3)}]"
        if entry.n_sets < self.n_sets:
            out += f" ({entry.n_sets}/{self.n_sets} sets)"
        if model in self.verdict.tied:
            out += " tie"
        return out


@dataclass
class Leaderboard:
    """The leaderboard: models (in display order), their labels and the headline columns."""

    models: list[str]
    labels: dict[str, str]
    columns: list[LeaderColumn]

    def display(self, style: Style = "plain") -> pd.DataFrame:
        escape: Callable[[str], str] = html.escape if style == "html" else str
        head = ["model"] + [c.header(style) for c in self.columns]
        body = [[escape(self.labels[m])] + [c.text(m, style) for c in self.columns] for m in self.models]
        return pd.DataFrame(body, columns=head, dtype=object)


# ----------------------------------------------------------------------------------------------- groups
@dataclass
class Group:
    """The ok values of one (model, data set): ``values`` (keys, seeds) with NaN where a key lacks a seed, the
    means over seeds ``point`` (keys,) and over resampled seeds ``reps`` (n_boot, keys)."""

    keys: list[str]
    values: np.ndarray
    point: np.ndarray
    reps: np.ndarray


def _groups(df: pd.DataFrame, name: str) -> dict[tuple[str, str], Group]:
    """``{(model, dataset): Group}`` of the rows of ``df`` (one metric), keyed by ``input``."""
    out: dict[tuple[str, str], Group] = {}
    for (model, dataset), sub in df.groupby(["model", "dataset"], sort=True):
        table = sub.pivot_table(index="input", columns="seed", values="value", aggfunc="mean")
        keys = sorted(table.index.astype(str), key=lambda k: (INPUT_ORDER.index(k), "") if k in INPUT_ORDER
                      else (len(INPUT_ORDER), k))
        values = table.reindex(keys).to_numpy(dtype=np.float64)
        with np.errstate(invalid="ignore"):
            point = np.array([np.mean(v[~np.isnan(v)]) for v in values])
        reps = resample_means(values, f"{name}|{model}|{dataset}", N_BOOT)
        out[(str(model), str(dataset))] = Group(keys, values, point, reps)
    return out


def _ok(df: pd.DataFrame, task: str, metric: str) -> pd.DataFrame:
    """Ok rows with a (non-NaN) value of ``metric`` in ``task``, the model's own (no variant, no settings)."""
    sel = ((df["task"] == task) & (df["metric"] == metric) & (df["status"] == "ok") & df["has_value"]
           & (df["variant"] == "") & (df["settings_key"] == ""))
    sub = df[sel]
    return sub[~sub["value"].isna()]


def _status(df: pd.DataFrame, task: str, metrics: Sequence[str], model: str) -> str:
    """Why a model has no headline: ``unsupported`` when every row of it is, else its commonest status, ``""``
    without rows."""
    sub = df[(df["task"] == task) & df["metric"].isin(list(metrics)) & (df["model"] == model)
             & (df["variant"] == "")]
    if sub.empty:
        return ""
    counts = sub["status"].value_counts()
    bad = counts.drop("ok", errors="ignore")
    return str(bad.index[0]).replace("_", " ") if not bad.empty else "no value"


def _per_dataset(groups: dict[tuple[str, str], Group], key_filter: Callable[[str], bool] | None = None
                 ) -> dict[str, dict[str, tuple[np.ndarray, np.ndarray]]]:
    """``{model: {dataset: (point keys', reps (n_boot, keys'))}}`` with the keys passing ``key_filter``."""
    out: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]] = {}
    for (model, dataset), g in groups.items():
        idx = [i for i, k in enumerate(g.keys) if key_filter is None or key_filter(k)]
        if idx:
            out.setdefault(model, {})[dataset] = (g.point[idx], g.reps[:, idx])
    return out


def _aggregate(per: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]], how: Aggregate,
               higher_is_better: bool) -> dict[str, Entry]:
    """Entries by model: ``value`` (the one data set's mean), ``median`` / ``max`` over data sets (and keys), or
    ``rank``: per data set, the rank among models (on every resample), then the median over data sets."""
    out: dict[str, Entry] = {}
    if how == "rank":
        from scipy.stats import rankdata

        ranks: dict[str, list[tuple[float, np.ndarray]]] = {}
        datasets = sorted({d for m in per.values() for d in m})
        for dataset in datasets:
            models = sorted(m for m in per if dataset in per[m])
            sign = -1.0 if higher_is_better else 1.0
            point = np.array([per[m][dataset][0][0] for m in models]) * sign
            reps = np.stack([per[m][dataset][1][:, 0] for m in models], axis=1) * sign  # (n_boot, models)
            p_rank = rankdata(point)
            r_rank = rankdata(reps, axis=1)
            for j, m in enumerate(models):
                ranks.setdefault(m, []).append((float(p_rank[j]), r_rank[:, j]))
        for m, items in ranks.items():
            point_v = float(np.median([p for p, _ in items]))
            reps_v = np.median(np.stack([r for _, r in items], axis=1), axis=1)
            out[m] = Entry(percentile_interval(point_v, reps_v), n_sets=len(items))
        return out
    for m, by_dataset in per.items():
        points = np.concatenate([p for p, _ in by_dataset.values()])
        reps = np.concatenate([r for _, r in by_dataset.values()], axis=1)
        if how == "max":
            point_v, reps_v = float(np.max(points)), np.max(reps, axis=1)
        else:  # value (one data set) or median over data sets
            point_v, reps_v = float(np.median(points)), np.median(reps, axis=1)
        out[m] = Entry(percentile_interval(point_v, reps_v), n_sets=len(by_dataset))
    return out


def _judge(column: LeaderColumn) -> None:
    if column.direction not in ("up", "down"):
        return
    intervals = {m: e.interval for m, e in column.entries.items() if e.interval is not None}
    column.verdict = leader(intervals, higher_is_better=column.direction == "up")


# ----------------------------------------------------------------------------------------------- columns
def _ranked_column(df: pd.DataFrame, task: str, metrics: Sequence[str], key: str) -> LeaderColumn | None:
    """The likelihood / classification headline: per data set the first of ``metrics`` that it has; the median
    rank over several data sets, the value on one."""
    chosen: dict[str, str] = {}
    for metric in metrics:
        sub = _ok(df, task, metric)
        sub = sub[sub["input"].map(_on_test).astype(bool)]
        for dataset in sorted(set(sub["dataset"])):
            chosen.setdefault(str(dataset), metric)
    if not chosen:
        return None
    per: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]] = {}
    for metric in metrics:
        sub = _ok(df, task, metric)
        sub = sub[(sub["dataset"].map(chosen) == metric) & sub["input"].map(_on_test).astype(bool)]
        for model, by_dataset in _per_dataset(_groups(sub, f"{task}|{metric}")).items():
            per.setdefault(model, {}).update(by_dataset)
    used = sorted(set(chosen.values()), key=list(metrics).index)
    directions = {str(m): str(d) for m, d in zip(df["metric"], df["direction"], strict=True) if isinstance(d, str)}
    if len(chosen) == 1:
        (dataset, metric), = chosen.items()
        direction = directions.get(metric, "down")
        unit = next((str(u) for u in _ok(df, task, metric)["unit"] if u), "")
        entries = _aggregate(per, "value", direction == "up")
        return LeaderColumn(key, f"{metric} on {dataset}", direction, unit, 1, entries)
    higher = directions.get(used[0], "down") == "up"
    entries = _aggregate(per, "rank", higher)
    title = f"{task}: median rank of {' / '.join(used)} over {_sets(len(chosen))}"
    return LeaderColumn(key, title, "down", "", len(chosen), entries)


def _metric_column(df: pd.DataFrame, task: str, metric: str, how: Aggregate, key: str, title: str,
                   key_filter: Callable[[str], bool] | None = None) -> LeaderColumn | None:
    sub = _ok(df, task, metric)
    if key_filter is not None:
        sub = sub[sub["input"].map(key_filter).astype(bool)]
    if sub.empty:
        return None
    per = _per_dataset(_groups(sub, f"{task}|{metric}"), key_filter)
    direction = next((str(d) for d in sub["direction"] if isinstance(d, str)), None)
    unit = next((str(u) for u in sub["unit"] if u), "")
    n_sets = len(set(sub["dataset"]))
    return LeaderColumn(key, title.format(sets=_sets(n_sets)), direction, unit, n_sets,
                        _aggregate(per, how, direction == "up"))


def _params_column(df: pd.DataFrame) -> LeaderColumn | None:
    sub = _ok(df, "cost", "params")
    if sub.empty:
        return None
    means = sub.groupby(["model", "dataset"])["value"].mean()
    unit = next((str(u) for u in sub["unit"] if u), "parameters")
    entries = {}
    for model, by in means.groupby(level="model"):
        lo, hi = float(by.min()), float(by.max())
        text = fmt_value(lo, unit) if lo == hi else f"{fmt_value(lo, unit)}–{fmt_value(hi, unit)}"
        entries[str(model)] = Entry(n_sets=len(by), text=text)
    title = "params" + (" (range over data sets)" if any("–" in e.text for e in entries.values()) else "")
    return LeaderColumn("params", title, None, unit if unit in COUNT_UNITS else "", len(set(sub["dataset"])), entries)


def _sets(n: int) -> str:
    return f"{n} data set" + ("" if n == 1 else "s")


def _on_test(key: str) -> bool:
    return key in TEST_INPUTS


def build_leaderboard(rows: Sequence[Row] | pd.DataFrame) -> Leaderboard | None:
    """The leaderboard of ``rows`` (rows or a :func:`bench.report.tables.frame`), or None without any headline."""
    df = rows if isinstance(rows, pd.DataFrame) else frame(rows)
    if df.empty:
        return None
    candidates = [
        ("likelihood", _ranked_column(df, "likelihood", ("kl_gap", "test_bpd"), "likelihood")),
        ("classification", _ranked_column(df, "classification", ("test_accuracy",), "classification")),
        ("inverse_cost", _metric_column(df, "inverse_cost", "inverse_fwd_units", "median", "inverse_fwd_units",
                                        "inverse_fwd_units, median over {sets}", _on_test)),
        ("inverse_cost", _metric_column(df, "inverse_cost", "recon_err", "max", "recon_err",
                                        "its recon_err, max over {sets}", _on_test)),
        ("stability", _metric_column(df, "stability", "condition", "max", "ood_condition",
                                     "OOD condition number, max over {sets} and inputs",
                                     key_filter=lambda k: k not in TEST_INPUTS)),
        ("cost", _params_column(df)),
    ]
    columns = [c for _, c in candidates if c is not None]
    if not columns:
        return None
    metrics_of = {"likelihood": ("kl_gap", "test_bpd"), "classification": ("test_accuracy",),
                  "inverse_cost": ("inverse_fwd_units", "recon_err"), "stability": ("condition",),
                  "cost": ("params",)}
    models = sorted({str(m) for m in df.loc[df["variant"] == "", "model"]})
    for task, column in ((t, c) for t, c in candidates if c is not None):
        for model in models:
            if model not in column.entries:
                status = _status(df, task, metrics_of[task], model)
                if status:
                    column.entries[model] = Entry(status=status)
        _judge(column)
    first = columns[0]

    def order(model: str) -> tuple[int, float, str]:
        entry = first.entries.get(model)
        if entry is None or entry.interval is None or math.isnan(entry.interval.point):
            return (1, 0.0, model)
        return (0, -entry.interval.point if first.direction == "up" else entry.interval.point, model)

    models.sort(key=order)
    baselines = baseline_models(df)
    labels = {m: m + (" (baseline)" if m in baselines else "") for m in models}
    return Leaderboard(models, labels, columns)


# ----------------------------------------------------------------------------------------------- rendering
def to_markdown(board: Leaderboard) -> str:
    shown = board.display("md")
    lines = ["| " + " | ".join(shown.columns) + " |", "|" + "---|" + "---:|" * len(board.columns)]
    lines += ["| " + " | ".join(str(c).replace("|", r"\|") for c in r) + " |" for r in shown.itertuples(index=False)]
    return "\n".join(lines) + "\n"


def to_html(board: Leaderboard) -> str:
    shown = board.display("html")
    head = "".join(f"<th>{c}</th>" for c in shown.columns)
    body = "".join("<tr>" + "".join(f'<td class="{"num" if j else ""}">{v}</td>' for j, v in enumerate(r)) + "</tr>"
                   for r in shown.itertuples(index=False))
    return f'<table class="leaderboard"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>\n'


LEADERBOARD_FIELDS: tuple[str, ...] = ("model", "baseline", "headline", "title", "direction", "value", "low", "high",
                                       "n_sets", "of_sets", "status", "best", "tie")


def leaderboard_frame(board: Leaderboard) -> pd.DataFrame:
    """One line per (model, headline), columns :data:`LEADERBOARD_FIELDS` (long form, for leaderboard.csv)."""
    def num(v: float | None) -> str:
        return "" if v is None else repr(float(v))

    records = []
    for model in board.models:
        for c in board.columns:
            e = c.entries.get(model)
            if e is None:
                continue
            iv = e.interval
            records.append({
                "model": model, "baseline": str(board.labels[model] != model).lower(), "headline": c.key,
                "title": c.title, "direction": c.direction or "",
                "value": e.text if e.text else num(iv.point if iv else None),
                "low": num(iv.low if iv else None), "high": num(iv.high if iv else None), "n_sets": e.n_sets,
                "of_sets": c.n_sets, "status": e.status, "best": str(model in c.verdict.best).lower(),
                "tie": str(model in c.verdict.tied).lower(),
            })
    return pd.DataFrame.from_records(records, columns=list(LEADERBOARD_FIELDS))

