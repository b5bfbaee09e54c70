"""``invbench run``: plan a suite's cells, run them through an executor, and keep a resumable run directory.

A cell is (model, dataset, seed, task). For each (model, dataset, seed) the training tasks run first so the
other tasks reuse their checkpoints (``<run>/checkpoints``). A pair whose ``Task.supports`` is False gets
``unsupported`` rows without running anything.

Run directory::

    results.jsonl   rows, appended and fsynced per cell (bench.run.rundir)
    cells.jsonl     the ledger: one line per finished cell, written AFTER the cell's rows
    run.json        the run record (bench.run.environment), one entry per session in "sessions"
    checkpoints/    trained models shared between tasks
    artifacts/      arrays too large for a row
    logs/           worker stdout/stderr
    parts/, slurm/  the submitit executor's per-cell row files and job folders

Resume (``--resume``): the ledger says which cells finished; before anything runs, results.jsonl is rewritten
(temp file + ``os.replace``) keeping only rows of finished cells, one block per cell, so rows of a cell killed
between its rows and its ledger line disappear and the cell runs again: after any kill and resume every cell's
rows appear exactly once. Cells whose worker died under them (ledger ``outcome: crashed``) also run again.
"""

from __future__ import annotations

import json
import os
import secrets
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from bench.datasets.base import DatasetInfo
from bench.run.build_check import check_builds
from bench.run.environment import capture, now_iso, read_record, write_record
from bench.run.executors import CellOutcome, Executor
from bench.run.match_params import MatchedWidth, match_width
from bench.run.progress import Progress
from bench.run.rundir import (
    LEDGER,
    RECORD,
    RESULTS,
    Row,
    acquire_lock,
    append_rows,
    compact,
    config_hash,
    prepare_out_dir,
)
from bench.run.worker import CellSpec, declared_metrics, failure_rows, make_row
from bench.suite import Suite
from bench.tasks.registry import get_task

#: order in which a cell's worst status is chosen for its summary
SEVERITY: tuple[str, ...] = ("error", "oom", "timeout", "diverged", "not_converged", "unsupported", "ok")


@dataclass
class RunSummary:
    """What a session did: cells by status, cells skipped as already finished, the run directory."""

    out: Path
    run_id: str
    total: int
    skipped: int
    statuses: Counter[str] = field(default_factory=Counter)


def cell_status(rows: Sequence[Row]) -> str:
    """The worst status among a cell's rows (``ok`` only when every row is ``ok``)."""
    present = {r.status for r in rows}
    for status in SEVERITY:
        if status in present:
            return status
    return sorted(present)[0] if present else "error"


# ----------------------------------------------------------------------------------------------- planning
#: a data set's metadata from its name and loader options (:meth:`SupportCheck.info`)
InfoFn = Callable[[str, Mapping[str, Any]], DatasetInfo]


def plan(suite: Suite, *, run_id: str, out: Path, device: str, info: InfoFn | None = None) -> list[list[CellSpec]]:
    """The cells of a suite, grouped per (model, dataset, seed), training tasks first in each group.

    With ``suite.match_params`` each (model, data set) first gets its width (:mod:`bench.run.match_params`, from
    the data set's metadata through ``info``; default: :meth:`SupportCheck.info` of the first seed), which raises
    ValueError (one line) for a target the model cannot come within 10 % of.
    """
    tasks = suite.ordered_tasks()
    classes = {t: get_task(t) for t in tasks}
    metrics = {t: tuple(classes[t].metric_specs) for t in tasks}
    info = info or SupportCheck(suite.seeds[0]).info
    groups: list[list[CellSpec]] = []
    for model in suite.models:
        for entry in suite.datasets:
            hparams = suite.hparams_for(model, entry.name)
            matched = _matched(suite, model, entry.name, entry.options, hparams, info)
            if matched is not None and matched.value is not None and matched.hparam is not None:
                hparams = {**hparams, matched.hparam: matched.value}
            budget = asdict(suite.budget_for(entry.name))
            for seed in suite.seeds:
                group = []
                for task in tasks:
                    if entry.tasks is not None and task not in entry.tasks:
                        continue
                    opts = classes[task].parse_options(suite.options_for(task), f"tasks.{task}").to_dict()
                    config: dict[str, Any] = {"model": model, "hparams": hparams, "dataset": entry.name,
                                              "dataset_options": entry.options, "task": task, "task_options": opts,
                                              "budget": budget}
                    targets = {k: v for k, v in entry.targets.items() if k in classes[task].target_metrics}
                    if targets:  # only where the task reports time_to_target for them
                        config["targets"] = targets
                    group.append(CellSpec(
                        model=model, dataset=entry.name, seed=seed, task=task, run_id=run_id, suite=suite.name,
                        hparams=hparams, dataset_options=dict(entry.options), task_options=opts, budget=budget,
                        device=device, checkpoint_dir=str(out / "checkpoints"), artifact_dir=str(out / "artifacts"),
                        timeout=suite.timeout, metrics=metrics[task], config_hash=config_hash(config),
                        targets=dict(entry.targets), match_params=matched))
                groups.append(group)
    return groups


def _matched(suite: Suite, model: str, dataset: str, options: Mapping[str, Any], hparams: Mapping[str, Any],
             info: InfoFn) -> MatchedWidth | None:
    """The width ``match_params`` gives ``model`` on ``dataset`` (None without match_params, or for a model class
    that cannot be imported: its cells get ``error`` rows from the support check)."""
    if suite.match_params is None:
        return None
    from models.registry import get

    try:
        get(model)
    except Exception:
        return None
    meta = info(dataset, options)
    return match_width(model, meta.shape, meta.num_classes, hparams, suite.match_params,
                       where=f"{model} on {dataset}")


class SupportCheck:
    """``Task.supports(capabilities, info)`` evaluated in the runner, cached per (model, dataset, task).

    Reads each data set's :class:`bench.datasets.DatasetInfo` once (``bench.datasets.info``: kind, shape,
    classes, levels from constants or file headers), so the arrays are loaded only in the workers (except for a
    plug-in loader function, which cannot say what it returns without running and is loaded once here). A data set that
    cannot be found or read stops the run before any compute (a setup problem, not a result), with one line
    naming where it was looked for. A model class that cannot be imported gives ``error`` rows for its cells
    (a broken optional backend must not stop the others).
    """

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self._info: dict[str, DatasetInfo] = {}
        self._caps: dict[str, Any] = {}
        self._answers: dict[tuple[str, str, str], tuple[str, str]] = {}

    def dataset(self, cell: CellSpec) -> DatasetInfo:
        """The cell's data-set metadata (raises ValueError, one line, when the data set cannot be used)."""
        return self.info(cell.dataset, cell.dataset_options)

    def info(self, name: str, options: Mapping[str, Any]) -> DatasetInfo:
        """The metadata of data set ``name`` with loader ``options`` (raises ValueError, one line, when the data
        set cannot be used)."""
        if name not in self._info:
            from bench.datasets import info

            try:
                self._info[name] = info(name, dict(options), seed=self.seed)
            except Exception as exc:
                text = " ".join(str(exc).split())
                raise ValueError(f"data set {name!r}: {type(exc).__name__}: {text}") from exc
        return self._info[name]

    def __call__(self, cell: CellSpec) -> tuple[str, str]:
        """``("run", "")``; ``("unsupported", what the task requires)``; ``("error", message)``."""
        key = (cell.model, cell.dataset, cell.task)
        if cell.match_params is not None and not cell.match_params.matched and not cell.match_params.baseline:
            return ("unsupported", cell.match_params.requires())
        if key not in self._answers:
            meta = self.dataset(cell)
            try:
                if cell.model not in self._caps:
                    from models.registry import get

                    self._caps[cell.model] = get(cell.model).capabilities
                caps = self._caps[cell.model]
                task = get_task(cell.task)
                if meta.kind not in caps.inputs:
                    self._answers[key] = ("unsupported",
                                          f"{meta.kind} inputs (the model takes {'/'.join(caps.inputs)})")
                elif not task.supports(caps, meta):
                    self._answers[key] = ("unsupported", str(getattr(task, "requires_text", "")))
                else:
                    self._answers[key] = ("run", "")
            except Exception as exc:
                self._answers[key] = ("error", f"{type(exc).__name__}: {exc}")
        return self._answers[key]

    def release(self) -> None:
        self._info.clear()


# ----------------------------------------------------------------------------------------------- running
class _Recorder:
    """Writes a finished cell: rows first (fsynced), then its ledger line."""

    def __init__(self, out: Path, progress: Progress, summary: RunSummary) -> None:
        self.out = out
        self.progress = progress
        self.summary = summary

    def __call__(self, cell: CellSpec, outcome: CellOutcome, executed: bool = True) -> None:
        append_rows(self.out / RESULTS, outcome.rows)
        status = cell_status(outcome.rows)
        entry = {"key": cell.key, "model": cell.model, "dataset": cell.dataset, "seed": cell.seed,
                 "task": cell.task, "status": status, "outcome": "crashed" if outcome.crashed else "done",
                 "seconds": round(outcome.seconds, 3), "rows": len(outcome.rows), "finished": now_iso()}
        with open(self.out / LEDGER, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(entry, sort_keys=True) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        self.summary.statuses[status] += 1
        message = str(outcome.rows[0].extra.get("message", "")) if outcome.rows else ""
        self.progress.finish(cell.label, status, outcome.seconds, executed=executed, message=message)


def _unsupported_rows(cell: CellSpec, requires: str) -> list[Row]:
    extra = {"requires": requires} if requires else {}
    return [make_row(cell, m(None), None, "unsupported", extra) for m in declared_metrics(cell)]


def run_suite(suite: Suite, out: Path, *, executor: Executor, resume: bool = False, progress: Progress | None = None,
              device: str = "cpu", command: list[str] | None = None, allow_changed: bool = False) -> RunSummary:
    """Run every cell of ``suite`` not yet finished in ``out``; returns what this session did.

    Resuming a run whose suite configuration changed (models, data sets, tasks, options, seeds, budget, ...) is an
    error naming what changed, unless ``allow_changed``; each session's suite is then recorded in ``run.json``.

    Everything that can fail before compute (a data set that does not load, a model its hyper-parameters do not
    build: :func:`bench.run.build_check.check_builds`) fails before anything is written; a fresh run directory left
    empty by such a failure is removed.
    """
    prepare_out_dir(out, resume)
    lock = acquire_lock(out)
    try:
        record = read_record(out / RECORD) if resume else None
        config = _suite_record(suite)
        if not allow_changed:
            check_unchanged(out, suite)
        done = compact(out) if resume else set()
        run_id = str(record["run_id"]) if record and record.get("run_id") else (
            f"{suite.name}-{datetime.now().strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}")
        support = SupportCheck(suite.seeds[0])
        groups = plan(suite, run_id=run_id, out=out, device=device, info=support.info)
        states = {c.key: support(c) for g in groups for c in g if c.key not in done}
        check_builds((c for g in groups for c in g if states.get(c.key, ("",))[0] == "run"), support.info)
        support.release()

        session = capture(run_id=run_id, suite=suite.name, device=device, command=command,
                          executor=executor.describe())
        if record is None:
            record = {**session, "suite_config": config, "sessions": []}
        record["sessions"].append({**{k: session[k] for k in ("start_time", "hostname", "device", "git", "command",
                                                              "executor", "torch_threads")}, "suite_config": config})
        record["end_time"] = None
        write_record(out / RECORD, record)

        total = sum(len(g) for g in groups)
        progress = progress or Progress(total, "quiet")
        progress.total = total
        summary = RunSummary(out=out, run_id=run_id, total=total, skipped=total - len(states))
        progress.skip(summary.skipped)
        record_cell = _Recorder(out, progress, summary)
        runnable: list[list[CellSpec]] = []
        try:
            for group in groups:
                todo = []
                for cell in (c for c in group if c.key in states):
                    state, text = states[cell.key]
                    if state == "run":
                        todo.append(cell)
                    elif state == "unsupported":
                        record_cell(cell, CellOutcome(_unsupported_rows(cell, text), 0.0), executed=False)
                    else:
                        record_cell(cell, CellOutcome(failure_rows(cell, "error", text), 0.0), executed=False)
                if todo:
                    runnable.append(todo)
            executor.run(runnable, record_cell, on_start=lambda c: progress.start(c.label),
                         on_progress=lambda c, d, t, m: progress.update(c.label, d, t, m))
        finally:
            executor.close()
            progress.close()
            record["end_time"] = now_iso()
            record["sessions"][-1].update(end_time=record["end_time"], cells=dict(summary.statuses))
            write_record(out / RECORD, record)
        return summary
    finally:
        lock.unlink(missing_ok=True)
        if not resume and out.is_dir() and not any(out.iterdir()):
            out.rmdir()


def _suite_record(suite: Suite) -> dict[str, Any]:
    data = asdict(suite)
    data["datasets"] = [asdict(d) for d in suite.datasets]
    return json.loads(json.dumps(data, default=str))


def check_unchanged(out: Path, suite: Suite) -> None:
    """Raise ``ValueError`` (one line naming what changed) when ``out`` was started with another configuration."""
    recorded = (read_record(out / RECORD) or {}).get("suite_config")
    changes = suite_changes(recorded, _suite_record(suite)) if isinstance(recorded, dict) else []
    if changes:
        raise ValueError(f"--resume: the suite changed since {out} was started ({'; '.join(changes)}); "
                         "pass --allow-changed to continue with the new configuration, or choose a new --out")


#: suite fields that do not change what a cell computes
_NOT_CONFIG = frozenset({"description", "source", "slurm", "expectations"})


def suite_changes(old: dict[str, Any], new: dict[str, Any], limit: int = 6) -> list[str]:
    """What differs between two recorded suite configurations, as short phrases (``budget.seconds: 5 -> 8``)."""
    out: list[str] = []

    def walk(a: Any, b: Any, path: str) -> None:
        if isinstance(a, dict) and isinstance(b, dict):
            for k in dict.fromkeys([*a, *b]):
                if path == "" and k in _NOT_CONFIG:
                    continue
                p = f"{path}.{k}" if path else str(k)
                if k not in a:
                    out.append(f"{p} added")
                elif k not in b:
                    out.append(f"{p} removed")
                else:
                    walk(a[k], b[k], p)
        elif a != b:
            out.append(f"{path}: {json.dumps(a, default=str)} -> {json.dumps(b, default=str)}")

    walk(old, new, "")
    return out[:limit] + ([f"{len(out) - limit} more"] if len(out) > limit else [])


