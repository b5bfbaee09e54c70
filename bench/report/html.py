"""The report as one self-contained HTML page: inline CSS, no scripts, images by relative path (``plots/*.png``),
so the folder opens from disk and survives being copied or committed as a whole."""

from __future__ import annotations

import html
from collections.abc import Sequence

from bench.report.plots import Plot, Skipped
from bench.report.references import REFERENCE_FIELDS
from bench.report.tables import Table, to_html

_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; padding: 0 1em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 0.85em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.5em; vertical-align: top; }
th { background: #f2f2f2; }
td.num { text-align: right; white-space: nowrap; }
td.partial { background: #fff6e0; }
td.status { color: #a33; text-align: right; }
code { background: #f4f4f4; padding: 0 0.2em; }
figure { display: inline-block; margin: 0.5em; vertical-align: top; }
figcaption { font-size: 0.85em; color: #555; }
img { max-width: 100%; border: 1px solid #eee; }
"""


def _kv_table(items: Sequence[tuple[str, str]]) -> str:
    body = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in items)
    return f"<table><tbody>{body}</tbody></table>\n"


def _records_table(fields: Sequence[str], records: Sequence[dict[str, str]]) -> str:
    head = "".join(f"<th>{html.escape(f)}</th>" for f in fields)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(r[f])}</td>" for f in fields) + "</tr>" for r in records)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>\n"


def render_page(title: str, command: str, legend: str, record: Sequence[tuple[str, str]], tables: Sequence[Table],
                references: Sequence[dict[str, str]], plots: Sequence[Plot], skipped: Sequence[Skipped],
                reference_note: str = "") -> str:
    """The whole page. ``record`` is the flattened run record; ``references`` the records of
    :func:`bench.report.references.reference_records`, explained by ``reference_note``."""
    out = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(title)}</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        f"<p>Regenerate with <code>{html.escape(command)}</code></p>",
        f"<p>{html.escape(legend)}</p>",
    ]
    task = None
    for table in tables:
        if table.task != task:
            task = table.task
            out.append(f"<h2>{html.escape(task)}</h2>")
        out.append(f"<h3>{html.escape(table.title)}</h3>")
        out.append(to_html(table))
    out.append("<h2>Paper references</h2>")
    if reference_note:
        out.append(f"<p>{html.escape(reference_note)}</p>")
    out.append(_records_table(REFERENCE_FIELDS, references))
    out.append("<h2>Plots</h2>")
    for plot in plots:
        out.append(f'<figure><img src="{html.escape(plot.path)}" alt="{html.escape(plot.title)}">'
                   f"<figcaption>{html.escape(plot.title)}</figcaption></figure>")
    if skipped:
        out.append("<p>Not drawn:</p><ul>")
        out += [f"<li>{html.escape(s.kind)}: {html.escape(s.reason)}</li>" for s in skipped]
        out.append("</ul>")
    out.append("<h2>Run record</h2>")
    out.append(_kv_table(record) if record else "<p>no run.json beside the results</p>")
    out.append("</body></html>")
    return "\n".join(out) + "\n"
