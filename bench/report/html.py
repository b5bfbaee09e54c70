"""The report as one self-contained HTML page: inline CSS, no scripts, images by relative path (``plots/*.png``),
so the folder opens from disk and survives being copied or committed as a whole.

Layout: the title and regenerate command, a table of contents, the findings (the suite's expected outcomes judged,
when it has any), the leaderboard, the legend, then one section per
task with one block per table, its plots beside it (a two-column grid: the table, scrolling sideways where it is
too wide, and its plots stacked to its right, at most 440 px wide; one column below 1000 px), the paper
references, the plots that have no table, the plot kinds not drawn and the run record.
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence

from bench.report.findings import LEGEND as FINDINGS_LEGEND
from bench.report.findings import Finding
from bench.report.findings import to_html as findings_html
from bench.report.leaderboard import LEGEND as LEADERBOARD_LEGEND
from bench.report.leaderboard import Leaderboard
from bench.report.leaderboard import to_html as leaderboard_html
from bench.report.plots import Plot, Skipped
from bench.report.references import REFERENCE_FIELDS
from bench.report.tables import Table, slug, to_html

_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1600px; padding: 0 1em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 0.5em; font-size: 0.85em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.5em; vertical-align: top; }
th { background: #f2f2f2; }
td.num { text-align: right; white-space: nowrap; }
td.partial { background: #fff6e0; }
td.status { color: #a33; text-align: right; }
td.note { color: #555; font-size: 0.95em; }
p.footnote { font-size: 0.8em; color: #555; margin: 0.2em 0; }
table.leaderboard { font-size: 0.9em; }
td.verdict { font-weight: bold; white-space: nowrap; }
td.reproduced { color: #176317; }
td.not-reproduced { color: #a33; }
td.not-measured, td.not-run { color: #777; }
code { background: #f4f4f4; padding: 0 0.2em; }
nav.toc { background: #fafafa; border: 1px solid #e5e5e5; padding: 0.5em 1em; columns: 3 16em; font-size: 0.85em; }
nav.toc ul { margin: 0.2em 0; padding-left: 1.2em; }
nav.toc > ul { padding-left: 0; list-style: none; }
.pair { display: grid; grid-template-columns: minmax(0, 1fr) minmax(0, 440px); gap: 1em;
        align-items: start; margin-bottom: 1.5em; }
.pair > .tbl { min-width: 0; overflow-x: auto; }
.pair > .figs { display: flex; flex-direction: column; gap: 0.5em; }
@media (max-width: 1000px) { .pair { grid-template-columns: minmax(0, 1fr); } }
figure { display: inline-block; margin: 0; vertical-align: top; }
figcaption { font-size: 0.85em; color: #555; }
img { max-width: 100%; border: 1px solid #eee; }
.figs img { width: 100%; height: auto; }
"""


def _kv_table(items: Sequence[tuple[str, str]]) -> str:
    body = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in items)
    return f"<table><tbody>{body}</tbody></table>\n"


def _records_table(fields: Sequence[str], records: Sequence[dict[str, str]]) -> str:
    head = "".join(f"<th>{html.escape(f)}</th>" for f in fields)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(r[f])}</td>" for f in fields) + "</tr>" for r in records)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>\n"


def _figure(plot: Plot) -> str:
    return (f'<figure><img src="{html.escape(plot.path)}" alt="{html.escape(plot.title)}">'
            f"<figcaption>{html.escape(plot.title)}</figcaption></figure>")


def task_anchor(task: str) -> str:
    return "task-" + slug(task)


def table_anchor(table: Table) -> str:
    return "table-" + table.slug


def _toc(tables: Sequence[Table], board: Leaderboard | None, loose: bool, skipped: bool, findings: bool = False
         ) -> str:
    """The table of contents: findings, leaderboard, each task with its tables, references, plots, run record."""
    items = ['<li><a href="#findings">Findings</a></li>'] if findings else []
    items += ['<li><a href="#leaderboard">Leaderboard</a></li>'] if board is not None else []
    by_task: dict[str, list[Table]] = {}
    for table in tables:
        by_task.setdefault(table.task, []).append(table)
    for task, group in by_task.items():
        sub = "".join(f'<li><a href="#{table_anchor(t)}">{html.escape(t.dataset)}</a></li>' for t in group)
        items.append(f'<li><a href="#{task_anchor(task)}">{html.escape(task)}</a><ul>{sub}</ul></li>')
    items.append('<li><a href="#references">Paper references</a></li>')
    if loose or skipped:
        items.append('<li><a href="#plots">Plots</a></li>')
    items.append('<li><a href="#run-record">Run record</a></li>')
    return f'<nav class="toc"><strong>Contents</strong><ul>{"".join(items)}</ul></nav>'


def render_page(title: str, command: str, legend: str, record: Sequence[tuple[str, str]], tables: Sequence[Table],
                references: Sequence[dict[str, str]], placed: Mapping[str, Sequence[Plot]], loose: Sequence[Plot],
                skipped: Sequence[Skipped], reference_note: str = "", board: Leaderboard | None = None,
                findings: Sequence[Finding] = ()) -> str:
    """The whole page (``findings``: the suite's expectations judged, first). ``record`` is the flattened run
    record; ``references`` the records of
    :func:`bench.report.references.reference_records`, explained by ``reference_note``; ``placed`` the plots by
    the slug of the table they go beside, ``loose`` the plots without a table."""
    out = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(title)}</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        f"<p>Regenerate with <code>{html.escape(command)}</code></p>",
        _toc(tables, board, bool(loose), bool(skipped), bool(findings)),
    ]
    if findings:
        out.append('<h2 id="findings">Findings</h2>')
        out.append(findings_html(findings))
        out.append(f'<p class="footnote">{html.escape(FINDINGS_LEGEND)}</p>')
    if board is not None:
        out.append('<h2 id="leaderboard">Leaderboard</h2>')
        out.append(leaderboard_html(board))
        out.append(f'<p class="footnote">{html.escape(LEADERBOARD_LEGEND)}</p>')
    out.append(f"<p>{html.escape(legend)}</p>")
    task = None
    for table in tables:
        if table.task != task:
            task = table.task
            out.append(f'<h2 id="{task_anchor(task)}">{html.escape(task)}</h2>')
        out.append(f'<h3 id="{table_anchor(table)}">{html.escape(table.title)}</h3>')
        figs = placed.get(table.slug, [])
        out.append('<div class="pair"><div class="tbl">')
        out.append(to_html(table))
        out.append("</div>")
        if figs:
            out.append('<div class="figs">' + "".join(_figure(p) for p in figs) + "</div>")
        out.append("</div>")
    out.append('<h2 id="references">Paper references</h2>')
    if reference_note:
        out.append(f"<p>{html.escape(reference_note)}</p>")
    out.append(_records_table(REFERENCE_FIELDS, references))
    if loose or skipped:
        out.append('<h2 id="plots">Plots</h2>')
        out += [_figure(p) for p in loose]
    if skipped:
        out.append("<p>Not drawn:</p><ul>")
        out += [f"<li>{html.escape(s.kind)}: {html.escape(s.reason)}</li>" for s in skipped]
        out.append("</ul>")
    out.append('<h2 id="run-record">Run record</h2>')
    out.append(_kv_table(record) if record else "<p>no run.json beside the results</p>")
    out.append("</body></html>")
    return "\n".join(out) + "\n"
