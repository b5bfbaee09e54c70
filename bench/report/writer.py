"""``invbench report RESULTS [-o DIR]``: tables, plots and an HTML page from a results store.

The report folder holds:

- ``README.md``: the command that regenerates it, the findings (:mod:`bench.report.findings`: each expected outcome
  of the suite, ``[[expect]]``, with what was measured and a verdict; only when the suite has expectations), the
  leaderboard (:mod:`bench.report.leaderboard`: one row per
  model, its headline per task with bootstrap intervals), one table per (task, data set) (see
  :mod:`bench.report.tables` for the cell format and :mod:`bench.report.annotate` for the baselines, marks and
  joined columns), each followed by its plots, the paper references beside the measured values
  (:mod:`bench.report.references`), a note for each plot kind without data, the run record;
- ``index.html``: the same on one self-contained page with a table of contents, each plot beside its table
  (images by relative path);
- ``rows.csv`` (every row, tidy), ``leaderboard.csv`` (long form), ``tables/<task>__<dataset>.csv`` (one summary
  per table, long form), ``tables/<task>__<dataset>.tex`` and ``tables/tables.tex`` (LaTeX, booktabs),
  ``references.csv``, ``findings.csv`` (when the suite has expectations);
- ``plots/*.png``.

Nothing in it depends on the time it was made, so a report regenerated from the same store is identical.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.report.annotate import report_tables
from bench.report.findings import LEGEND as FINDINGS_LEGEND
from bench.report.findings import Finding, build_findings, expectations_from_record, findings_frame
from bench.report.findings import to_markdown as findings_markdown
from bench.report.html import render_page
from bench.report.leaderboard import LEGEND as LEADERBOARD_LEGEND
from bench.report.leaderboard import Leaderboard, build_leaderboard, leaderboard_frame
from bench.report.leaderboard import to_markdown as leaderboard_markdown
from bench.report.plots import Plot, Skipped, make_plots
from bench.report.references import REFERENCE_FIELDS, STATUS_NOTE, match_references, reference_records, references_frame
from bench.report.tables import (
    Store,
    Table,
    load_store,
    rows_frame,
    summary_frame,
    to_latex,
    to_markdown,
    write_csv,
)
from bench.run.rundir import STATUSES

LEGEND = ("Cells: mean ± std over seeds (n_ok/n_total). Bold: best of its column among rows with the same input "
          "and settings (↑ higher is better, ↓ lower is better, |·| ↓ closest to zero; columns without a direction "
          "are not judged), only where its 95 % bootstrap interval over seeds overlaps no other's (the runner-up's "
          "first of all): a leader whose interval overlaps another's is a tie and is not bolded (with one seed the "
          "interval is the value itself). A status (unsupported, diverged k/n, error k/n, not reached k/n, ...) "
          "counts the rows that gave no value; — means no row. (baseline): a reference model, e.g. the Gaussian "
          "fitted to the training data; (analytic): a value computed by the report, not measured.")


#: run-record keys shown first (machine, device, versions, commit), the rest follow in file order
RECORD_FIRST: tuple[str, ...] = ("fixture", "run_id", "suite", "start_time", "started", "end_time", "finished",
                                 "command", "argv", "git", "hostname", "os", "cpu", "cpu_count", "device", "gpus",
                                 "cuda_version", "cudnn_version", "python", "versions")


def flatten_record(record: dict[str, Any], prefix: str = "") -> list[tuple[str, str]]:
    """The run record as ``(dotted key, text)`` pairs: :data:`RECORD_FIRST` keys first, then file order."""
    out: list[tuple[str, str]] = []
    keys = [k for k in RECORD_FIRST if k in record] if not prefix else []
    keys += [k for k in record if k not in keys]
    for key in keys:
        value = record[key]
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out += flatten_record(value, name + ".")
        elif isinstance(value, list) and all(isinstance(v, str | int | float | bool) or v is None for v in value):
            out.append((name, " ".join(shlex.quote(str(v)) for v in value) if key in ("argv", "command")
                        else ", ".join(str(v) for v in value)))
        elif isinstance(value, dict | list):
            out.append((name, json.dumps(value, sort_keys=True)))
        else:
            out.append((name, str(value)))
    return out


def _md_escape(text: str) -> str:
    return text.replace("|", r"\|").replace("\n", " ")


def _status_summary(store: Store) -> str:
    counts = Counter(r.status for r in store.rows)
    order = sorted(counts, key=lambda s: (STATUSES.index(s) if s in STATUSES else 99, s))
    return ", ".join(f"{s} {counts[s]}" for s in order) or "none"


def skipped_lines_text(store: Store) -> str:
    """One sentence on the lines of results.jsonl that were not read (torn: not JSON; invalid: not a row), or
    ``""`` when every line was read."""
    read = store.read
    if not read.skipped:
        return ""
    parts = [f"{n} {what}" for n, what in ((read.torn, "torn (not JSON)"), (read.invalid, "not a row")) if n]
    return (f"{read.skipped} line(s) of {store.results_path.name} could not be read and are left out: "
            f"{', '.join(parts)}.")


def _run_command_lines(store: Store) -> list[str]:
    """The commands that produced the results, from the run record (absent for hand-made stores): one line per
    session, so a run continued with ``--resume`` shows every command that added rows, in order."""
    sessions = store.record.get("sessions")
    argvs = [s.get("command") for s in sessions if isinstance(s, dict)] if isinstance(sessions, list) else []
    argvs = [a for a in argvs if isinstance(a, list) and a] or [store.record.get("command")]
    lines = [" ".join(shlex.quote(str(a)) for a in argv) for argv in argvs if isinstance(argv, list) and argv]
    if not lines:
        return []
    return ["Results from:", "", "```", *lines, "```", ""]


def plots_by_table(tables: Sequence[Table], plots: Sequence[Plot]) -> tuple[dict[str, list[Plot]], list[Plot]]:
    """``({table slug: its plots}, plots without a table)``: a plot belongs to the table of its task and data set."""
    slugs = {(t.task, t.dataset): t.slug for t in tables}
    placed: dict[str, list[Plot]] = {}
    loose: list[Plot] = []
    for plot in plots:
        key = slugs.get((plot.task, plot.dataset))
        if key is None:
            loose.append(plot)
        else:
            placed.setdefault(key, []).append(plot)
    return placed, loose


def render_readme(store: Store, command: str, tables: Sequence[Table], references: Sequence[dict[str, str]],
                  plots: Sequence[Plot], skipped: Sequence[Skipped], board: Leaderboard | None = None,
                  findings: Sequence[Finding] = ()) -> str:
    """The report's README.md (``findings``: the suite's expectations judged, shown first when there are any)."""
    lines = [
        f"# invbench report: {store.name}",
        "",
        *_run_command_lines(store),
        "Regenerate this report with:",
        "",
        "```",
        command,
        "```",
        "",
    ]
    if findings:
        lines += ["## Findings", "", findings_markdown(findings), FINDINGS_LEGEND, ""]
    if board is not None:
        lines += ["## Leaderboard", "", leaderboard_markdown(board), LEADERBOARD_LEGEND, ""]
    lines += [
        f"{len(store.rows)} rows ({_status_summary(store)}) in {len(tables)} tables. {LEGEND}",
        "",
    ]
    notes = [skipped_lines_text(store), untrained_text(tables)]
    lines += [n for note in notes if note for n in (note, "")]
    placed, loose = plots_by_table(tables, plots)
    task = None
    for table in tables:
        if table.task != task:
            task = table.task
            lines += [f"## {task}", ""]
        lines += [f"### {table.title}", "", to_markdown(table)]
        for plot in placed.get(table.slug, []):
            lines += [f"![{plot.title}]({plot.path})", ""]
    lines += ["## Paper references", "", STATUS_NOTE, ""]
    lines.append("| " + " | ".join(REFERENCE_FIELDS) + " |")
    lines.append("|" + "---|" * len(REFERENCE_FIELDS))
    lines += ["| " + " | ".join(_md_escape(r[f]) for f in REFERENCE_FIELDS) + " |" for r in references]
    lines += ["", "## Plots", ""]
    if plots and not loose:
        lines += ["Every plot is shown under its table.", ""]
    for plot in loose:
        lines += [f"![{plot.title}]({plot.path})", ""]
    if skipped:
        lines += ["Not drawn:", ""]
        lines += [f"- {s.kind}: {s.reason}" for s in skipped]
        lines.append("")
    lines += ["## Run record", ""]
    record = flatten_record(store.record)
    if record:
        lines += ["| key | value |", "|---|---|"]
        lines += [f"| {_md_escape(k)} | {_md_escape(v)} |" for k, v in record]
    else:
        lines.append("No run.json beside the results.")
    lines += ["", "## Files", "",
              "`rows.csv` (every row), `leaderboard.csv` (the leaderboard, long form), `tables/*.csv` (one summary per "
              "table), `tables/*.tex` and `tables/tables.tex` (LaTeX, needs `\\usepackage{booktabs}`), "
              "`references.csv`, " + ("`findings.csv` (the findings), " if findings else "")
              + "`index.html` (this page with the plots).",
              ""]
    return "\n".join(lines)


def untrained_text(tables: Sequence[Table]) -> str:
    """The note for models labelled ``(untrained)``, or ``""`` when no table has one."""
    if not any(r.untrained for t in tables for r in t.rows):
        return ""
    return ("(untrained): measured as initialised; every train_steps row of that model on that data set is 0 "
            "(a suite budget of steps = 0).")


def write_report(results: str | Path | Store, out: str | Path | None = None, command: str | None = None) -> Path:
    """Write the report of the store at ``results`` (a path, or a loaded :class:`Store`) into ``out`` (default
    ``reports/<run dir name>``)."""
    store = results if isinstance(results, Store) else load_store(results)
    if store.results_path.suffix == ".csv":
        raise ValueError(f"{store.results_path} is a report's rows.csv: it can be compared (invbench compare) but "
                         "not reported again, since the run record (commands, environment, expected findings) and the "
                         "artifacts behind some plots live in the run directory; report the run directory instead")
    results = results.run_dir if isinstance(results, Store) else results
    out_dir = Path(out) if out is not None else Path("reports") / store.name
    if command is None:
        command = f"invbench report {shlex.quote(str(results))} -o {shlex.quote(str(out_dir))}"
    out_dir.mkdir(parents=True, exist_ok=True)
    tables = report_tables(store.rows)
    board = build_leaderboard(store.rows)
    findings = build_findings(store.rows, expectations_from_record(store.record))
    write_csv(out_dir / "rows.csv", rows_frame(store.rows, store.record))
    if findings:
        write_csv(out_dir / "findings.csv", findings_frame(findings))
    if board is not None:
        write_csv(out_dir / "leaderboard.csv", leaderboard_frame(board))
    tex = []
    for table in tables:
        write_csv(out_dir / "tables" / f"{table.slug}.csv", summary_frame(table))
        latex = to_latex(table)
        (out_dir / "tables" / f"{table.slug}.tex").write_text(latex, encoding="utf-8")
        tex.append(latex)
    (out_dir / "tables").mkdir(parents=True, exist_ok=True)
    (out_dir / "tables" / "tables.tex").write_text("% needs \\usepackage{booktabs}\n" + "\n".join(tex),
                                                   encoding="utf-8")
    references = reference_records(match_references(store.rows, store.record))
    write_csv(out_dir / "references.csv", references_frame(references))
    plots, skipped = make_plots(store, out_dir)
    (out_dir / "README.md").write_text(render_readme(store, command, tables, references, plots, skipped, board,
                                                     findings), encoding="utf-8")
    legend = " ".join(p for p in (LEGEND, skipped_lines_text(store), untrained_text(tables)) if p)
    placed, loose = plots_by_table(tables, plots)
    page = render_page(f"invbench report: {store.name}", command, legend, flatten_record(store.record), tables,
                       references, placed, loose, skipped, STATUS_NOTE, board, findings)
    (out_dir / "index.html").write_text(page, encoding="utf-8")
    return out_dir


def cli_report(args: argparse.Namespace) -> int:
    """``invbench report``: ``args.results`` (run dir or results.jsonl), ``args.out`` (report folder or None)."""
    argv = ["invbench", "report", str(args.results)] + (["-o", str(args.out)] if args.out else [])
    store = load_store(args.results)
    if store.read.skipped:
        print(f"invbench report: warning: {store.read.skipped} torn or unreadable line(s) of {store.results_path} "
              "skipped", file=sys.stderr)
    out_dir = write_report(store, args.out, command=" ".join(shlex.quote(a) for a in argv))
    print(f"report written to {out_dir / 'README.md'} and {out_dir / 'index.html'}")
    return 0
