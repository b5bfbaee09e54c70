"""Tables from a results store: rows grouped per (task, dataset), models as rows, metrics as columns.

Reading a store (:func:`load_store`), aggregating seeds into cells (:class:`Cell`), laying cells out as
tables (:func:`build_tables`) and rendering them as Markdown, LaTeX, HTML cells and CSV records.

Metric names carry structure that becomes table rows rather than columns (one column per measured quantity,
not per condition), parsed by :class:`MetricName`:

- ``lip_forward@noise`` -> column ``lip_forward``, row condition ``noise`` (stability inputs);
- ``logdet_bias[terms=5,probes=1]`` -> column ``logdet_bias``, row settings ``terms=5,probes=1``;
- ``lip_inverse@noise+reg`` -> column ``lip_inverse``, row model ``<model>+reg`` (a variant of the model).

A cell is "mean ± std (n_ok/n_total)" over seeds (std with ddof=1, left out for one seed); rows with a status
other than ``ok`` are counted and shown by status ("unsupported", "diverged 1/2"), never dropped. The best
cell of a column among rows with the same condition and settings is marked by the metric's direction;
metrics in :data:`ABS_METRICS` (signed errors such as ``logdet_bias``) are judged by ``|mean|``, closest to 0.
"""

from __future__ import annotations

import csv
import html
import json
import math
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from bench.run.rundir import Row, read_rows

#: the order tasks appear in reports (the order a suite runs them, as in ``bench.tasks.registry``; kept here
#: so reporting does not import torch); unknown tasks follow alphabetically
TASK_ORDER: tuple[str, ...] = ("likelihood", "classification", "inverse_cost", "stability", "logdet", "cost")
#: the order of stability input kinds (the ``@`` suffix); unknown kinds follow alphabetically
CONDITION_ORDER: tuple[str, ...] = ("test", "noise", "uniform", "scaled", "ood")
#: signed errors judged by their magnitude: the best is the one closest to zero
ABS_METRICS: frozenset[str] = frozenset({"logdet_bias"})

Style = Literal["plain", "md", "tex", "html"]


@dataclass
class Store:
    """A loaded results store: the run directory, its rows and its run record (``run.json``, or ``{}``)."""

    run_dir: Path
    results_path: Path
    rows: list[Row]
    record: dict[str, Any]

    @property
    def name(self) -> str:
        return self.run_dir.name


def load_store(path: str | Path) -> Store:
    """Read a run directory or a ``results.jsonl`` file (``run.json`` is looked for beside it)."""
    p = Path(path)
    results = p / "results.jsonl" if p.is_dir() else p
    if not results.is_file():
        raise FileNotFoundError(f"no results store at {p} (expected a run directory holding results.jsonl, "
                                f"or the results.jsonl file itself)")
    run_dir = results.parent
    record: dict[str, Any] = {}
    run_json = run_dir / "run.json"
    if run_json.is_file():
        loaded = json.loads(run_json.read_text(encoding="utf-8"))
        record = loaded if isinstance(loaded, dict) else {"record": loaded}
    return Store(run_dir=run_dir, results_path=results, rows=list(read_rows(results)), record=record)


@dataclass(frozen=True)
class MetricName:
    """A metric name split into ``base[settings]@condition+variant`` (each part but ``base`` optional)."""

    base: str
    settings: str = ""
    condition: str = ""
    variant: str = ""

    @classmethod
    def parse(cls, name: str) -> MetricName:
        m = re.search(r"\[([^\]]*)\]", name)
        settings = m.group(1) if m else ""
        rest = name[: m.start()] + name[m.end():] if m else name
        core, *tags = rest.split("+")
        base, _, condition = core.partition("@")
        variants = []
        for tag in tags:
            tag_name, _, tag_cond = tag.partition("@")
            condition = tag_cond or condition
            variants.append(tag_name)
        return cls(base=base, settings=settings, condition=condition, variant="+".join(variants))


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


def fmt_num(v: float, digits: int = 4) -> str:
    """A number with ``digits`` significant digits (``g`` format: exponent form below 1e-4 and from 10**digits)."""
    if math.isnan(v):
        return "nan"
    if math.isinf(v):
        return "inf" if v > 0 else "-inf"
    if v == 0:
        return "0"
    return f"{v:.{digits}g}"


@dataclass
class Cell:
    """All rows of one (model, task, dataset, metric): the ok values and the count of every status."""

    values: list[float] = field(default_factory=list)
    statuses: Counter[str] = field(default_factory=Counter)
    unit: str = ""
    higher_is_better: bool | None = None

    def add(self, row: Row) -> None:
        self.statuses[row.status] += 1
        if row.status == "ok" and row.value is not None:
            self.values.append(float(row.value))
        if not self.unit and row.unit:
            self.unit = row.unit
        if self.higher_is_better is None and row.higher_is_better is not None:
            self.higher_is_better = row.higher_is_better

    @property
    def n_total(self) -> int:
        return sum(self.statuses.values())

    @property
    def n_ok(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float | None:
        return math.fsum(self.values) / len(self.values) if self.values else None

    @property
    def std(self) -> float | None:
        """Sample standard deviation over seeds (ddof=1); None with fewer than two ok values."""
        if len(self.values) < 2:
            return None
        m = self.mean
        assert m is not None
        if not all(math.isfinite(v) for v in self.values):
            return math.nan
        return math.sqrt(math.fsum((v - m) ** 2 for v in self.values) / (len(self.values) - 1))

    def status_text(self) -> str:
        """The non-ok statuses: ``unsupported`` alone when every row is unsupported, else ``diverged 1/2, ...``."""
        bad = [(s, k) for s, k in self.statuses.items() if s != "ok"]
        if not bad:
            return ""
        if len(bad) == 1 and bad[0][0] == "unsupported" and bad[0][1] == self.n_total:
            return "unsupported"
        bad.sort(key=lambda sk: (-sk[1], sk[0]))
        return ", ".join(f"{s} {k}/{self.n_total}" for s, k in bad)

    def parts(self, style: Style = "plain", best: bool = False) -> tuple[str, str]:
        """``("mean ± std (n_ok/n_total)", statuses)``; either may be empty; the number bold when ``best``."""
        number = ""
        mean, std = self.mean, self.std
        if mean is not None:
            number = fmt_num(mean)
            pm = {"tex": r" $\pm$ ", "html": " &plusmn; "}.get(style, " ± ")
            if std is not None:
                number += pm + fmt_num(std, 2)
            if best:
                number = {"md": f"**{number}**", "tex": rf"\textbf{{{number}}}",
                          "html": f"<b>{number}</b>"}.get(style, number)
            number += f" ({self.n_ok}/{self.n_total})"
        return number, self.status_text()

    def render(self, style: Style = "plain", best: bool = False) -> str:
        """``mean ± std (n_ok/n_total)`` then the statuses, joined by ``; ``."""
        return "; ".join(p for p in self.parts(style, best) if p)

    def score(self, metric: str) -> float | None:
        """The value the column's best is chosen by (larger is better), or None when not judged."""
        mean = self.mean
        if mean is None or math.isnan(mean):
            return None
        if metric in ABS_METRICS:
            return -abs(mean)
        if self.higher_is_better is None:
            return None
        return mean if self.higher_is_better else -mean


CellKey = tuple[str, str, str, str]  # (model, task, dataset, metric)


def aggregate(rows: Iterable[Row]) -> dict[CellKey, Cell]:
    """Group rows by (model, task, dataset, metric) over seeds, in first-appearance order."""
    cells: dict[CellKey, Cell] = {}
    for row in rows:
        cells.setdefault((row.model, row.task, row.dataset, row.metric), Cell()).add(row)
    return cells


@dataclass
class Column:
    """One table column: a base metric with its unit and direction."""

    metric: str
    unit: str = ""
    higher_is_better: bool | None = None

    def header(self, style: Style = "plain") -> str:
        if self.metric in ABS_METRICS:
            arrow = {"tex": r"$|\cdot|\downarrow$", "html": "|&middot;| &darr;"}.get(style, "|·| ↓")
        elif self.higher_is_better is None:
            arrow = ""
        elif self.higher_is_better:
            arrow = {"tex": r"$\uparrow$", "html": "&uarr;"}.get(style, "↑")
        else:
            arrow = {"tex": r"$\downarrow$", "html": "&darr;"}.get(style, "↓")
        name = self.metric + (f" ({self.unit})" if self.unit else "")
        if style == "tex":
            name = tex_escape(name)
        elif style == "html":
            name = html.escape(name)
        return f"{name} {arrow}".strip()


RowKey = tuple[str, str, str]  # (model[+variant], condition, settings)


@dataclass
class Table:
    """One table: a task on a data set; rows are (model, condition, settings), columns base metrics."""

    task: str
    dataset: str
    rows: list[RowKey]
    columns: list[Column]
    cells: dict[tuple[RowKey, str], Cell]
    best: set[tuple[RowKey, str]]
    #: the full metric name of each cell (for the summary CSV)
    metric_names: dict[tuple[RowKey, str], str]

    @property
    def slug(self) -> str:
        return slug(f"{self.task}__{self.dataset}")

    @property
    def title(self) -> str:
        return f"{self.task} — {self.dataset}"

    def index_names(self) -> list[str]:
        """``model`` plus ``input`` / ``settings`` when any row has one."""
        names = ["model"]
        if any(r[1] for r in self.rows):
            names.append("input")
        if any(r[2] for r in self.rows):
            names.append("settings")
        return names

    def index_values(self, key: RowKey) -> list[str]:
        vals = [key[0]]
        names = self.index_names()
        if "input" in names:
            vals.append(key[1])
        if "settings" in names:
            vals.append(key[2])
        return vals

    def cell_text(self, key: RowKey, column: str, style: Style = "plain") -> str:
        cell = self.cells.get((key, column))
        if cell is None:
            return "—"
        return cell.render(style, best=(key, column) in self.best)


def slug(text: str) -> str:
    """A file-name-safe version of ``text``."""
    return re.sub(r"[^A-Za-z0-9_.=-]+", "_", text).strip("_") or "x"


def _order(value: str, order: Sequence[str]) -> tuple[int, str]:
    return (order.index(value), "") if value in order else (len(order), value)


def build_tables(rows: Sequence[Row]) -> list[Table]:
    """One :class:`Table` per (task, dataset), tasks in :data:`TASK_ORDER`, data sets alphabetically."""
    groups: dict[tuple[str, str], list[Row]] = {}
    for row in rows:
        groups.setdefault((row.task, row.dataset), []).append(row)
    tables = []
    for (task, dataset), group in sorted(groups.items(), key=lambda kv: (_order(kv[0][0], TASK_ORDER), kv[0][1])):
        tables.append(_build_table(task, dataset, group))
    return tables


def _build_table(task: str, dataset: str, rows: list[Row]) -> Table:
    cells: dict[tuple[RowKey, str], Cell] = {}
    names: dict[tuple[RowKey, str], str] = {}
    columns: dict[str, Column] = {}
    settings_order: list[str] = []
    for row in rows:
        m = MetricName.parse(row.metric)
        model = row.model + (f"+{m.variant}" if m.variant else "")
        key: RowKey = (model, m.condition, m.settings)
        cells.setdefault((key, m.base), Cell()).add(row)
        names[(key, m.base)] = row.metric
        col = columns.setdefault(m.base, Column(m.base))
        if not col.unit and row.unit:
            col.unit = row.unit
        if col.higher_is_better is None and row.higher_is_better is not None:
            col.higher_is_better = row.higher_is_better
        if m.settings not in settings_order:
            settings_order.append(m.settings)
    row_keys = sorted({k for k, _ in cells},
                      key=lambda k: (k[0], _order(k[1], CONDITION_ORDER), settings_order.index(k[2])))
    best: set[tuple[RowKey, str]] = set()
    for col in columns.values():
        by_group: dict[tuple[str, str], list[tuple[float, RowKey]]] = {}
        for key in row_keys:
            cell = cells.get((key, col.metric))
            score = cell.score(col.metric) if cell is not None else None
            if score is not None:
                by_group.setdefault((key[1], key[2]), []).append((score, key))
        for scored in by_group.values():
            if len(scored) < 2:
                continue  # a lone entry is not "best" of anything
            top = max(s for s, _ in scored)
            best.update((key, col.metric) for s, key in scored if s == top)
    return Table(task=task, dataset=dataset, rows=row_keys, columns=list(columns.values()), cells=cells,
                 best=best, metric_names=names)


def to_markdown(table: Table) -> str:
    """A GitHub-flavoured Markdown table (no title)."""
    header = table.index_names() + [c.header("md") for c in table.columns]
    align = ["---"] * len(table.index_names()) + ["---:"] * len(table.columns)
    lines = [_md_row(header), _md_row(align)]
    for key in table.rows:
        lines.append(_md_row(table.index_values(key) + [table.cell_text(key, c.metric, "md") for c in table.columns]))
    return "\n".join(lines) + "\n"


def _md_row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(c.replace("|", r"\|") for c in cells) + " |"


_TEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "—": "---",
                "±": r"$\pm$", "·": r"$\cdot$"}


def tex_escape(text: str) -> str:
    """Escape LaTeX's special characters in plain text."""
    return "".join(_TEX_SPECIAL.get(ch, ch) for ch in text)


def to_latex(table: Table) -> str:
    """A ``table`` float with a booktabs ``tabular`` (needs ``\\usepackage{booktabs}``)."""
    n_idx = len(table.index_names())
    spec = "l" * n_idx + "r" * len(table.columns)
    head = [tex_escape(n) for n in table.index_names()] + [c.header("tex") for c in table.columns]
    lines = [
        r"\begin{table}[ht]",
        r"\centering",
        rf"\caption{{{tex_escape(table.title)}: mean $\pm$ std over seeds (n\_ok/n\_total); best in bold.}}",
        rf"\label{{tab:{table.slug}}}",
        rf"\begin{{tabular}}{{{spec}}}",
        r"\toprule",
        " & ".join(head) + r" \\",
        r"\midrule",
    ]
    for key in table.rows:
        idx = [tex_escape(v) for v in table.index_values(key)]
        vals = []
        for c in table.columns:
            cell = table.cells.get((key, c.metric))
            if cell is None:
                vals.append("---")
            else:
                number, status = cell.parts("tex", best=(key, c.metric) in table.best)
                vals.append("; ".join(p for p in (number, tex_escape(status)) if p))
        lines.append(" & ".join(idx + vals) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
    return "\n".join(lines) + "\n"


def to_html(table: Table) -> str:
    """An HTML ``<table>`` (no title)."""
    out = ["<table>", "<thead><tr>"]
    out += [f"<th>{html.escape(n)}</th>" for n in table.index_names()]
    out += [f"<th>{c.header('html')}</th>" for c in table.columns]
    out.append("</tr></thead><tbody>")
    for key in table.rows:
        out.append("<tr>" + "".join(f"<td>{html.escape(v)}</td>" for v in table.index_values(key)))
        for c in table.columns:
            cell = table.cells.get((key, c.metric))
            if cell is None:
                out.append('<td class="num">&mdash;</td>')
                continue
            cls = "num" if cell.n_ok == cell.n_total else ("num partial" if cell.n_ok else "status")
            number, status = cell.parts("html", best=(key, c.metric) in table.best)
            out.append(f'<td class="{cls}">' + "; ".join(p for p in (number, html.escape(status)) if p) + "</td>")
        out.append("</tr>")
    out.append("</tbody></table>")
    return "\n".join(out) + "\n"


SUMMARY_FIELDS: tuple[str, ...] = ("task", "dataset", "model", "input", "settings", "metric", "base_metric", "unit",
                                   "higher_is_better", "mean", "std", "n_ok", "n_total", "statuses", "best", "cell")


def _csv_num(v: float | None) -> str:
    return "" if v is None else repr(float(v))


def summary_records(table: Table) -> list[dict[str, str]]:
    """One record per cell of ``table`` (long form), in row then column order."""
    records = []
    for key in table.rows:
        for c in table.columns:
            cell = table.cells.get((key, c.metric))
            if cell is None:
                continue
            records.append({
                "task": table.task, "dataset": table.dataset, "model": key[0], "input": key[1],
                "settings": key[2], "metric": table.metric_names[(key, c.metric)], "base_metric": c.metric,
                "unit": cell.unit or c.unit,
                "higher_is_better": "" if cell.higher_is_better is None else str(cell.higher_is_better).lower(),
                "mean": _csv_num(cell.mean), "std": _csv_num(cell.std), "n_ok": str(cell.n_ok),
                "n_total": str(cell.n_total),
                "statuses": ";".join(f"{s}={k}" for s, k in sorted(cell.statuses.items())),
                "best": "true" if (key, c.metric) in table.best else "false",
                "cell": table.cell_text(key, c.metric),
            })
    return records


ROW_FIELDS: tuple[str, ...] = ("run_id", "suite", "model", "family", "task", "dataset", "seed", "metric",
                               "base_metric", "input", "settings", "variant", "value", "unit", "higher_is_better",
                               "status", "config_hash", "extra")


def row_records(rows: Iterable[Row], record: dict[str, Any] | None = None) -> list[dict[str, str]]:
    """Every row as a flat record (tidy data): parsed metric parts and the family added, ``extra`` as JSON."""
    out = []
    for row in rows:
        m = MetricName.parse(row.metric)
        out.append({
            "run_id": row.run_id, "suite": row.suite, "model": row.model, "family": family_of(row.model, record),
            "task": row.task, "dataset": row.dataset, "seed": str(row.seed), "metric": row.metric,
            "base_metric": m.base, "input": m.condition, "settings": m.settings, "variant": m.variant,
            "value": _csv_num(row.value), "unit": row.unit,
            "higher_is_better": "" if row.higher_is_better is None else str(row.higher_is_better).lower(),
            "status": row.status, "config_hash": row.config_hash,
            "extra": json.dumps(row.extra, sort_keys=True, default=str),
        })
    return out


def write_csv(path: Path, fields: Sequence[str], records: Iterable[dict[str, str]]) -> None:
    """Write records as CSV with a header line (``\\n`` line ends, so files compare byte for byte)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(fields), lineterminator="\n")
        writer.writeheader()
        writer.writerows(records)
