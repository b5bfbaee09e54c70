"""The run-directory protocol: result rows, the ledger of finished cells, the lock, compaction for ``--resume``,
and the per-cell part files of the Slurm executor. Everything that reads or writes a run directory goes through here.

A run directory holds::

    results.jsonl   rows (:class:`Row`), one JSON object per line, appended and fsynced per cell
    cells.jsonl     the ledger: one line per finished cell, written AFTER the cell's rows
    run.json        the run record (bench.run.environment), one entry per session in "sessions"
    .lock           pid and host of the process running it
    checkpoints/    trained models shared between tasks
    artifacts/      arrays too large for a row
    logs/           worker stdout/stderr
    parts/, slurm/  the submitit executor's per-cell row files and job folders

Rows are appended and flushed per cell, so a killed run loses at most the cell in flight. Resume: the ledger says
which cells finished; :func:`compact` rewrites results.jsonl (temp file + ``os.replace``) keeping only rows of
finished cells, one block per cell, so after any kill and resume every cell's rows appear exactly once.

Row schema 2 carries a metric's identity as fields: ``metric`` (the measured quantity, e.g. ``lip_forward``),
``input`` (``test``, ``noise``, ``uniform``, ``scaled``, ``ood``, ... or empty), ``variant`` (e.g. ``reg`` for a
model trained with the regulariser, or empty), ``settings`` (e.g. ``{"terms": 5, "probes": 1}``) and
``direction`` (``up``, ``down``, ``zero``: closest to zero is best, or None: not judged). Schema-1 stores (identity
encoded in names such as ``lip_forward@noise+reg``) are read through :mod:`bench.run.legacy`.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import socket
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

Status = Literal["ok", "diverged", "not_converged", "not_reached", "unsupported", "error", "timeout", "oom"]
STATUSES: tuple[str, ...] = ("ok", "diverged", "not_converged", "not_reached", "unsupported", "error", "timeout", "oom")
Direction = Literal["up", "down", "zero"]
DIRECTIONS: tuple[str, ...] = ("up", "down", "zero")
SCHEMA = 2

RESULTS = "results.jsonl"
LEDGER = "cells.jsonl"
RECORD = "run.json"
LOCK = ".lock"
PARTS = "parts"


def settings_key(settings: dict[str, Any]) -> str:
    """A canonical, hashable form of a settings dict (key order does not matter)."""
    return json.dumps(settings, sort_keys=True, default=str) if settings else ""


@dataclass
class Row:
    """One measured value. ``value`` is None when ``status`` is not ``ok`` (the row still exists).

    ``(metric, input, variant, settings)`` identify what was measured; ``extra`` carries what a single number
    cannot: the spread of a ratio, a curve (lists), an error message.
    """

    run_id: str
    suite: str
    model: str
    task: str
    dataset: str
    seed: int
    metric: str
    value: float | None
    unit: str = ""
    direction: str | None = None
    status: str = "ok"
    input: str = ""
    variant: str = ""
    settings: dict[str, Any] = field(default_factory=dict)
    config_hash: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    schema: int = SCHEMA

    @property
    def higher_is_better(self) -> bool | None:
        """True for ``up``, False for ``down``, None for ``zero`` and undirected metrics."""
        return {"up": True, "down": False}.get(self.direction or "")

    @property
    def metric_id(self) -> tuple[str, str, str, str]:
        """``(metric, input, variant, settings_key)``: what was measured, independent of model and seed."""
        return (self.metric, self.input, self.variant, settings_key(self.settings))

    @property
    def label(self) -> str:
        """A readable one-token form for messages, e.g. ``lip_forward[input=noise,variant=reg]``."""
        tags = [f"input={self.input}"] if self.input else []
        tags += [f"variant={self.variant}"] if self.variant else []
        tags += [f"{k}={v}" for k, v in self.settings.items()]
        return self.metric + (f"[{','.join(tags)}]" if tags else "")

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True, allow_nan=True)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Row:
        """A row from its JSON object; schema-1 objects are upgraded (:func:`bench.run.legacy.upgrade`)."""
        if int(d.get("schema", 1)) < SCHEMA:
            from bench.run.legacy import upgrade

            d = upgrade(d)
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})


def config_hash(config: dict[str, Any]) -> str:
    """A short stable hash of a JSON-serialisable configuration."""
    blob = json.dumps(config, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:12]


def cell_key(model: str, dataset: str, seed: int, task: str) -> str:
    """The identity of a cell in the ledger and in rows (rows carry the same four fields)."""
    return f"{model}|{dataset}|s{seed}|{task}"


def row_key(row: Row) -> str:
    return cell_key(row.model, row.dataset, row.seed, row.task)


def safe_name(key: str) -> str:
    """A file-name-safe, collision-free form of a cell key."""
    digest = hashlib.sha1(key.encode()).hexdigest()[:8]
    return f"{re.sub(r'[^A-Za-z0-9._-]+', '_', key)[:120]}-{digest}"


# ----------------------------------------------------------------------------------------------- rows
def append_rows(path: Path, rows: Iterable[Row]) -> None:
    """Append rows to a JSON-lines file and fsync, so a kill after return loses nothing."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as fh:
        for row in rows:
            fh.write(row.to_json() + "\n")
        fh.flush()
        os.fsync(fh.fileno())


@dataclass
class ReadStats:
    """What :func:`read_rows` skipped: lines that are not JSON (a kill mid-write) or not a row."""

    torn: int = 0
    invalid: int = 0

    @property
    def skipped(self) -> int:
        return self.torn + self.invalid


def read_rows(path: Path, stats: ReadStats | None = None) -> Iterator[Row]:
    """Rows of a JSON-lines file; torn or unreadable lines are skipped and counted in ``stats``."""
    if not path.exists():
        return
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            line = line.strip()
            if not line:
                continue
            try:
                data = json.loads(line)
            except json.JSONDecodeError:
                if stats is not None:
                    stats.torn += 1
                continue
            try:
                yield Row.from_dict(data)
            except (TypeError, ValueError, KeyError, AttributeError):
                if stats is not None:
                    stats.invalid += 1


# ----------------------------------------------------------------------------------------------- ledger
def read_ledger(path: Path) -> dict[str, dict[str, Any]]:
    """Cell key -> its last ledger entry; torn lines (a kill mid-write) are skipped."""
    entries: dict[str, dict[str, Any]] = {}
    if not path.exists():
        return entries
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(entry, dict) and "key" in entry:
                entries[entry["key"]] = entry
    return entries


def _atomic_write_lines(path: Path, lines: Iterator[str]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        for line in lines:
            fh.write(line + "\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def compact(out: Path) -> set[str]:
    """Make the run directory consistent with its ledger; returns the keys of finished cells.

    Keeps rows only of cells the ledger marks ``done`` and, for each, only its last contiguous block of rows
    (a cell's rows are written in one append); rewrites the ledger without torn lines and crashed cells.
    """
    ledger = read_ledger(out / LEDGER)
    done = {k for k, e in ledger.items() if e.get("outcome", "done") == "done"}
    results = out / RESULTS
    if results.exists():
        blocks: dict[str, list[Row]] = {}
        current: str | None = None
        for row in read_rows(results):
            key = row_key(row)
            if key not in done:
                current = None
                continue
            if key != current:
                blocks[key] = []  # a later block of the same cell replaces an earlier one
                current = key
            blocks[key].append(row)
        _atomic_write_lines(results, (r.to_json() for rows in blocks.values() for r in rows))
    _atomic_write_lines(out / LEDGER, (json.dumps(ledger[k], sort_keys=True) for k in ledger if k in done))
    return done


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie (killed, not yet reaped) is not alive
        with open(f"/proc/{pid}/stat", encoding="utf-8") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def acquire_lock(out: Path) -> Path:
    """Create ``<out>/.lock`` (pid, host); a lock left by a dead process on this host is taken over."""
    lock = out / LOCK
    me = {"pid": os.getpid(), "host": socket.gethostname()}
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                holder = json.loads(lock.read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError):
                holder = {}
            pid, host = holder.get("pid"), holder.get("host")
            if host == me["host"] and isinstance(pid, int) and not _pid_alive(pid):
                lock.unlink(missing_ok=True)
                continue
            raise ValueError(f"run directory {out} is in use by process {pid} on {host} "
                             f"(delete {lock} if that process is gone)") from None
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(me, fh)
        return lock
    raise ValueError(f"cannot lock run directory {out}")


def check_out_dir(out: Path, resume: bool) -> None:
    """A non-empty run directory needs ``resume``."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} exists and is not a directory")
    if out.exists() and any(out.iterdir()) and not resume:
        raise ValueError(f"run directory {out} is not empty; pass --resume to continue that run, "
                         "or choose a new --out")


def prepare_out_dir(out: Path, resume: bool) -> None:
    """Check ``out`` and create it."""
    check_out_dir(out, resume)
    out.mkdir(parents=True, exist_ok=True)


def default_out(suite_name: str) -> Path:
    """``runs/<suite>-<YYYYmmdd-HHMMSS>`` (with a suffix if that exists)."""
    base = Path("runs") / f"{suite_name}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
    out, n = base, 1
    while out.exists():
        n += 1
        out = base.with_name(f"{base.name}-{n}")
    return out


# ----------------------------------------------------------------------------------------------- part files
def write_part(parts_dir: Path, key: str, rows: Iterable[Row], seconds: float, crashed: bool) -> Path:
    """Write one cell's rows to ``<parts>/<cell>.jsonl`` atomically (temp file + ``os.replace``).

    The first line is a header ``{"cell": key, "seconds": s, "crashed": bool}``, then one row per line.
    """
    parts_dir.mkdir(parents=True, exist_ok=True)
    path = parts_dir / f"{safe_name(key)}.jsonl"
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(json.dumps({"cell": key, "seconds": seconds, "crashed": crashed}) + "\n")
        for row in rows:
            fh.write(row.to_json() + "\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    return path


def read_part(parts_dir: Path, key: str) -> tuple[list[Row], float, bool] | None:
    """``(rows, seconds, crashed)`` a job wrote for the cell ``key``, or None when there is none (yet)."""
    path = parts_dir / f"{safe_name(key)}.jsonl"
    if not path.exists():
        return None
    lines = [ln for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
    head = json.loads(lines[0])
    if head.get("cell") != key:
        return None
    rows = [Row.from_dict(json.loads(ln)) for ln in lines[1:]]
    return rows, float(head.get("seconds", 0.0)), bool(head.get("crashed", False))
