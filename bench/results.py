"""The results store: one JSON object per line, one line per (model, task, dataset, seed, metric).

A run directory holds ``results.jsonl`` (rows), ``run.json`` (the run record: machine, device, library
versions, git commit, threads, determinism flags) and ``cells.jsonl`` (one line per finished cell, for
``--resume``). Rows are appended and flushed per cell, so a killed run loses at most the cell in flight.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

Status = Literal["ok", "diverged", "not_converged", "unsupported", "error", "timeout", "oom"]
STATUSES: tuple[str, ...] = ("ok", "diverged", "not_converged", "unsupported", "error", "timeout", "oom")


@dataclass
class Row:
    """One measured value. ``value`` is None when ``status`` is not ``ok`` (the row still exists).

    ``extra`` carries what a single number cannot: the spread of a ratio, a curve (lists), the settings
    of an estimator, an error message.
    """

    run_id: str
    suite: str
    model: str
    task: str
    dataset: str
    seed: int
    metric: str
    value: float | None
    unit: str
    higher_is_better: bool | None
    status: str = "ok"
    config_hash: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True, allow_nan=True)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Row:
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})


def config_hash(config: dict[str, Any]) -> str:
    """A short stable hash of a JSON-serialisable configuration."""
    blob = json.dumps(config, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:12]


def append_rows(path: Path, rows: Iterable[Row]) -> None:
    """Append rows to a JSON-lines file and fsync, so a kill after return loses nothing."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as fh:
        for row in rows:
            fh.write(row.to_json() + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def read_rows(path: Path) -> Iterator[Row]:
    """Rows of a JSON-lines file; a torn last line (a kill mid-write) is skipped."""
    if not path.exists():
        return
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            line = line.strip()
            if not line:
                continue
            try:
                yield Row.from_dict(json.loads(line))
            except json.JSONDecodeError:
                continue
