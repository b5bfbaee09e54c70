"""``invbench speedup A B``: how much faster run B did the same work than run A, per task (e.g. A on a CPU, B on a GPU).

Both stores must come from the same suite (same models, data sets, seeds, budgets); each task is compared by a
rate that does not depend on how long a time budget was:

- ``likelihood``, ``classification``: training steps per second, ``train_steps / train_time``;
- ``cost``: ``forward_throughput`` and ``inverse_throughput`` (examples per second), one line each;
- every other task: cells per second, ``1 / seconds`` of the whole cell from the run ledger (``cells.jsonl``),
  which includes any training that cell had to do itself (e.g. the regularised model of ``stability``).

For every (model, data set, seed) present and ok in both stores the ratio ``rate_B / rate_A`` is taken; a task's
line gives the median ratio, its range and how many pairs it rests on (> 1: B is faster). Rates of cells that
shared a device with other workers are what that run measured: the run records (``executor``) say how many
workers each session had.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bench.report.tables import Store, load_store
from bench.run.rundir import LEDGER, read_ledger

Key = tuple[str, str, int]  # (model, dataset, seed)
TRAINING_TASKS = ("likelihood", "classification")
THROUGHPUTS = ("forward_throughput", "inverse_throughput")


@dataclass(frozen=True)
class Speedup:
    """One line: ``rate_B / rate_A`` over the pairs of one task (and measure)."""

    task: str
    measure: str
    median: float
    low: float
    high: float
    pairs: int


def _ledger_seconds(store: Store) -> dict[str, dict[Key, float]]:
    """task -> (model, dataset, seed) -> cell seconds, for cells that finished ok."""
    out: dict[str, dict[Key, float]] = defaultdict(dict)
    for cell in read_ledger(store.run_dir / LEDGER).values():
        if cell.get("status") == "ok" and float(cell.get("seconds", 0)) > 0:
            out[cell["task"]][(cell["model"], cell["dataset"], int(cell["seed"]))] = float(cell["seconds"])
    return out


def rates(store: Store) -> dict[tuple[str, str], dict[Key, float]]:
    """(task, measure) -> (model, dataset, seed) -> rate (higher is faster), as the module docstring defines."""
    out: dict[tuple[str, str], dict[Key, float]] = defaultdict(dict)
    train: dict[tuple[str, Key], dict[str, float]] = defaultdict(dict)
    for r in store.rows:
        if r.status != "ok" or r.value is None:
            continue
        key = (r.model, r.dataset, r.seed)
        if r.task in TRAINING_TASKS and r.metric in ("train_steps", "train_time"):
            train[(r.task, key)][r.metric] = r.value
        elif r.task == "cost" and r.metric in THROUGHPUTS and r.value > 0:
            out[("cost", r.metric)][key] = r.value
    for (task, key), m in train.items():
        if m.get("train_time", 0) > 0 and m.get("train_steps", 0) > 0:
            out[(task, "train steps/s")][key] = m["train_steps"] / m["train_time"]
    for task, cells in _ledger_seconds(store).items():
        if task in TRAINING_TASKS or task == "cost":
            continue
        for key, seconds in cells.items():
            out[(task, "cells/s")][key] = 1.0 / seconds
    return out


def speedups(a: Store, b: Store) -> list[Speedup]:
    """One :class:`Speedup` per (task, measure) with at least one pair, sorted by task then measure."""
    ra, rb = rates(a), rates(b)
    lines = []
    for tm in sorted(set(ra) & set(rb)):
        ratios = [rb[tm][k] / ra[tm][k] for k in sorted(set(ra[tm]) & set(rb[tm]))]
        if ratios:
            lines.append(Speedup(tm[0], tm[1], statistics.median(ratios), min(ratios), max(ratios), len(ratios)))
    return lines


def render(a: Store, b: Store, lines: Sequence[Speedup]) -> str:
    """A Markdown table of ``lines`` with the two stores named."""
    out = [f"Speed-up of `{b.name}` over `{a.name}` (rate in B / rate in A; > 1: B faster)", "",
           "| task | measure | median | range | pairs |", "| --- | --- | ---: | ---: | ---: |"]
    out += [f"| {s.task} | {s.measure} | {s.median:.3g}x | {s.low:.3g}x - {s.high:.3g}x | {s.pairs} |" for s in lines]
    for store in (a, b):
        sessions = store.record.get("sessions") or []
        execs = [s.get("executor") for s in sessions if isinstance(s, dict) and s.get("executor")]
        out.append(f"\n`{store.name}`: device {store.record.get('device', '?')}; executor per session: "
                   + ("; ".join(json.dumps(e, sort_keys=True) for e in execs) or "not recorded"))
    return "\n".join(out) + "\n"


def cli_speedup(args: argparse.Namespace) -> int:
    """``invbench speedup A B [-o FILE]``; exit 2 when the stores share no comparable cell."""
    try:
        a, b = load_store(args.a), load_store(args.b)
    except FileNotFoundError as exc:
        print(f"invbench speedup: {exc}", file=sys.stderr)
        return 2
    lines = speedups(a, b)
    if not lines:
        print(f"invbench speedup: {a.name} and {b.name} have no ok cell in common", file=sys.stderr)
        return 2
    text = render(a, b, lines)
    if args.output:
        Path(args.output).write_text(text, encoding="utf-8")
    print(text, end="")
    return 0
