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
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from bench.report.tables import Store, frame, load_store
from bench.run.rundir import LEDGER, read_ledger

TRAINING_TASKS = ("likelihood", "classification")
THROUGHPUTS = ("forward_throughput", "inverse_throughput")
#: one rate: which task and measure, of which cell
RATE_KEY = ["task", "measure", "model", "dataset", "seed"]


@dataclass(frozen=True)
class Speedup:
    """One line: ``rate_B / rate_A`` over the pairs of one task (and measure)."""

    task: str
    measure: str
    median: float
    low: float
    high: float
    pairs: int


def _ledger_rates(store: Store) -> pd.DataFrame:
    """Cells per second (``1 / seconds``) of the ledger's ok cells of tasks that are not rated by their rows."""
    cells = pd.DataFrame.from_records(list(read_ledger(store.run_dir / LEDGER).values()),
                                      columns=["task", "model", "dataset", "seed", "status", "seconds"])
    cells["seconds"] = pd.to_numeric(cells["seconds"], errors="coerce").fillna(0.0)
    cells = cells[(cells["status"] == "ok") & (cells["seconds"] > 0)
                  & ~cells["task"].isin([*TRAINING_TASKS, "cost"])]
    return cells.assign(measure="cells/s", seed=cells["seed"].astype(int), rate=1.0 / cells["seconds"])


def rates(store: Store) -> pd.DataFrame:
    """One line per (task, measure, model, dataset, seed) with its ``rate`` (higher is faster), as the module
    docstring defines; a later row of the same key replaces an earlier one."""
    df = frame(store.rows)
    ok = df[(df["status"] == "ok") & df["has_value"]]
    train = ok[ok["task"].isin(TRAINING_TASKS) & ok["metric"].isin(["train_steps", "train_time"])]
    if train.empty:
        train = pd.DataFrame(columns=df.columns).astype({"value": float})
    wide = train.pivot_table(index=["task", "model", "dataset", "seed"], columns="metric", values="value",
                             aggfunc="last").reindex(columns=["train_steps", "train_time"])
    wide = wide[(wide["train_steps"] > 0) & (wide["train_time"] > 0)].reset_index()
    steps = wide.assign(measure="train steps/s", rate=wide["train_steps"] / wide["train_time"])
    cost = ok[(ok["task"] == "cost") & ok["metric"].isin(THROUGHPUTS) & (ok["value"] > 0)]
    cost = cost.assign(measure=cost["metric"], rate=cost["value"])
    parts = [p[[*RATE_KEY, "rate"]] for p in (steps, cost, _ledger_rates(store)) if not p.empty]
    if not parts:
        return pd.DataFrame(columns=[*RATE_KEY, "rate"])
    return pd.concat(parts, ignore_index=True).drop_duplicates(RATE_KEY, keep="last")


def speedups(a: Store, b: Store) -> list[Speedup]:
    """One :class:`Speedup` per (task, measure) with at least one pair, sorted by task then measure."""
    pairs = rates(a).merge(rates(b), on=RATE_KEY, suffixes=("_a", "_b"))
    pairs["ratio"] = pairs["rate_b"].astype(float) / pairs["rate_a"].astype(float)
    stats = pairs.groupby(["task", "measure"], sort=True)["ratio"].agg(["median", "min", "max", "size"])
    return [Speedup(str(r["task"]), str(r["measure"]), float(r["median"]), float(r["min"]), float(r["max"]),
                    int(r["size"])) for r in stats.reset_index().to_dict("records")]


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
