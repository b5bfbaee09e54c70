"""Running one cell: (model, dataset, seed, task) -> result rows; and the persistent worker process around it.

:func:`run_cell` never raises for a failure of the cell: an exception becomes ``error`` rows (message and
traceback in ``extra``), ``MemoryError`` / CUDA out-of-memory become ``oom`` rows, a non-finite value reported
as ``ok`` becomes ``diverged``. What it cannot catch (a segfault, a kill, a hang) is the business of the
executor that runs :func:`worker_main` in a subprocess (``bench.run.executors``).

This module imports torch only inside functions, so a worker can set ``CUDA_VISIBLE_DEVICES`` first.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import sys
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from bench.run.match_params import MatchedWidth
from bench.run.rundir import Row, cell_key

ProgressFn = Callable[[int, int, str], None]


@dataclass
class CellSpec:
    """Everything a worker needs to run one cell; picklable and JSON-friendly.

    ``metrics`` are the task's declared :class:`bench.tasks.metric.MetricSpec` s, used for the rows of a failed
    cell; ``task_options`` are the task's options as validated when the suite loaded (a plain table);
    ``targets`` the data set's declared targets (metric -> threshold, ``TaskContext.targets``); ``match_params``
    the width the suite's ``match_params`` chose (already in ``hparams``), recorded in every row's
    ``extra["match_params"]``.
    """

    model: str
    dataset: str
    seed: int
    task: str
    run_id: str = ""
    suite: str = ""
    hparams: dict[str, Any] = field(default_factory=dict)
    dataset_options: dict[str, Any] = field(default_factory=dict)
    task_options: dict[str, Any] = field(default_factory=dict)
    budget: dict[str, Any] = field(default_factory=dict)
    device: str = "cpu"
    checkpoint_dir: str | None = None
    artifact_dir: str | None = None
    timeout: float | None = None
    metrics: tuple[Any, ...] = ()
    config_hash: str = ""
    targets: dict[str, float] = field(default_factory=dict)
    match_params: MatchedWidth | None = None

    @property
    def key(self) -> str:
        return cell_key(self.model, self.dataset, self.seed, self.task)

    @property
    def label(self) -> str:
        """Short human-readable form for progress lines."""
        return f"{self.model} {self.dataset} s{self.seed} {self.task}"


# ----------------------------------------------------------------------------------------------- rows
def _jsonable(value: Any) -> Any:
    """Plain JSON types from numpy / torch values (lists for arrays, str for anything unknown)."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if hasattr(value, "tolist"):
        return _jsonable(value.tolist())
    if hasattr(value, "item"):
        return _jsonable(value.item())
    return str(value)


def make_row(spec: CellSpec, metric: Any, value: float | None, status: str, extra: dict[str, Any] | None = None
             ) -> Row:
    """A row of ``spec``'s cell for ``metric`` (a :class:`bench.tasks.metric.Metric`: its identity and unit);
    ``extra["match_params"]`` holds the cell's :class:`MatchedWidth` where the suite matches parameters."""
    if spec.match_params is not None:
        extra = {**(extra or {}), "match_params": spec.match_params.as_extra()}
    return Row(run_id=spec.run_id, suite=spec.suite, model=spec.model, task=spec.task, dataset=spec.dataset,
               seed=spec.seed, metric=metric.name, value=value, unit=metric.unit, direction=metric.direction,
               status=status, input=metric.input, variant=metric.variant, settings=_jsonable(dict(metric.settings)),
               config_hash=spec.config_hash, extra=_jsonable(extra or {}))


def failure_rows(spec: CellSpec, status: str, message: str, extra: dict[str, Any] | None = None) -> list[Row]:
    """One valueless row per declared metric (or one row ``metric="cell"`` when none are declared)."""
    info = {"message": message, **(extra or {})}
    return [make_row(spec, m(None), None, status, info) for m in declared_metrics(spec)]


def declared_metrics(spec: CellSpec) -> tuple[Any, ...]:
    """The cell's declared metric specs, or one ``cell`` spec for a task that declares none."""
    from bench.tasks.metric import MetricSpec

    return spec.metrics or (MetricSpec("cell", "", None),)


def metric_rows(spec: CellSpec, metrics: list[Any]) -> list[Row]:
    """Rows from a task's :class:`bench.tasks.base.Metric` list; a non-finite ``ok`` value becomes ``diverged``."""
    rows = []
    for m in metrics:
        value = m.value
        status = m.status
        extra = dict(m.extra)
        if value is not None:
            value = float(value.item() if hasattr(value, "item") else value)
            if not math.isfinite(value):
                extra["nonfinite_value"] = repr(value)
                value = None
                if status == "ok":
                    status = "diverged"
        if status not in ("ok", "not_converged"):
            value = None
        elif status == "ok" and value is None:
            status = "error"
            extra.setdefault("message", "task reported status ok without a value")
        rows.append(make_row(spec, m, value, status, extra))
    if not rows:
        return failure_rows(spec, "error", "task returned no metrics")
    return rows


def is_oom(exc: BaseException) -> bool:
    """MemoryError, torch.cuda.OutOfMemoryError, or a RuntimeError that says it ran out of memory."""
    if isinstance(exc, MemoryError):
        return True
    if type(exc).__name__ == "OutOfMemoryError":
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)


# ----------------------------------------------------------------------------------------------- one cell
def seed_everything(seed: int) -> None:
    """Seed torch (CPU and every CUDA device), numpy and random from the cell's seed."""
    import random

    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


_DATA_CACHE: dict[str, Any] = {}


def load_dataset(name: str, options: dict[str, Any], seed: int) -> Any:
    """A :class:`bench.datasets.base.Dataset` by registry name, ``"module:attr"`` plug-in or ``.npz`` / ``.npy``
    path (:func:`bench.datasets.load_table`); cached per process.

    The loader's ``seed`` is the cell's seed unless the suite gives ``seed`` among the data set's options.
    """
    import json

    from bench.datasets import load_table

    key = json.dumps([name, options, seed], sort_keys=True, default=str)
    if key in _DATA_CACHE:
        return _DATA_CACHE[key]
    ds = load_table(name, options, seed=seed)
    _DATA_CACHE.clear()  # keep one data set: a worker runs a (model, dataset, seed) group at a time
    _DATA_CACHE[key] = ds
    return ds


def run_cell(spec: CellSpec, progress: ProgressFn | None = None) -> list[Row]:
    """Run one cell in this process and return its rows; failures become rows, never exceptions."""
    import torch

    from bench.tasks.base import Budget, TaskContext
    from bench.tasks.registry import get_task
    from models import registry

    try:
        seed_everything(spec.seed)
        task_cls = get_task(spec.task)
        dataset = load_dataset(spec.dataset, spec.dataset_options, spec.seed)
        hparams = dict(spec.hparams)

        def make_model(**overrides: Any) -> Any:
            return registry.create(spec.model, shape=dataset.shape, num_classes=dataset.num_classes,
                                   **{**hparams, **overrides})

        ctx = TaskContext(
            make_model=make_model, dataset=dataset, seed=spec.seed, budget=Budget(**spec.budget),
            device=torch.device(spec.device), options=task_cls.parse_options(spec.task_options, f"tasks.{spec.task}"),
            progress=progress or (lambda done, total, msg: None),
            checkpoint_dir=Path(spec.checkpoint_dir) if spec.checkpoint_dir else None, model_name=spec.model,
            artifact_dir=Path(spec.artifact_dir) if spec.artifact_dir else None,
            task_name=getattr(task_cls, "name", None) or re.sub(r"[^A-Za-z0-9_.-]+", "_", spec.task),
            targets=dict(spec.targets),
        )
        return metric_rows(spec, task_cls().run(ctx))
    except BaseException as exc:  # a cell's failure is a result; only a request to stop is not
        if isinstance(exc, (KeyboardInterrupt, SystemExit)):
            raise
        tb = traceback.format_exc(limit=-12)
        if is_oom(exc):
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            return failure_rows(spec, "oom", f"{type(exc).__name__}: {exc}", {"traceback": tb})
        return failure_rows(spec, "error", f"{type(exc).__name__}: {exc}", {"traceback": tb})


# ----------------------------------------------------------------------------------------------- the process
def _watch_parent(parent_pid: int, interval: float = 0.5) -> None:
    """Exit when the parent dies (e.g. ``kill -9``), so no orphan keeps computing after its runner is gone."""

    def loop() -> None:
        while True:
            time.sleep(interval)
            if os.getppid() != parent_pid:
                os._exit(3)

    threading.Thread(target=loop, name="invbench-parent-watch", daemon=True).start()


def _redirect_output(log_path: str | None) -> None:
    if not log_path:
        return
    Path(log_path).parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)


class _Throttled:
    """A task's progress callback that forwards at most two messages a second to the parent."""

    def __init__(self, conn: Connection, key: str, interval: float = 0.5) -> None:
        self.conn, self.key, self.interval, self.last = conn, key, interval, 0.0

    def __call__(self, done: int, total: int, text: str) -> None:
        now = time.monotonic()
        if now - self.last >= self.interval or done >= total:
            self.last = now
            self.conn.send(("progress", self.key, int(done), int(total), str(text)))


def _warm_up() -> None:
    """Pay one-off lazy costs (the first optimiser step, the model libraries' imports) before any cell runs, so a
    worker's first cell is not charged for them against its training time budget."""
    import importlib

    import torch

    for module in ("bench.tasks.training", "models.nflows_flows", "models.freia_flows"):
        with contextlib.suppress(ImportError):
            importlib.import_module(module)
    p = torch.nn.Parameter(torch.zeros(2))
    opt = torch.optim.Adam([p])
    (p**2).sum().backward()
    opt.step()


def worker_main(conn: Connection, env: dict[str, str], threads: int, parent_pid: int,
                log_path: str | None = None) -> None:
    """Body of a persistent worker process (spawn context): imports torch once, then runs cells until told to stop.

    Protocol (tuples over ``conn``): parent -> worker ``("cell", CellSpec)`` or ``("stop",)``; worker -> parent
    ``("ready", pid)`` once, then per cell any number of ``("progress", key, done, total, msg)`` and one
    ``("done", key, rows, seconds)``.
    """
    os.environ.update(env)  # before torch: CUDA_VISIBLE_DEVICES is read when CUDA initialises
    _watch_parent(parent_pid)
    _redirect_output(log_path)
    import torch

    torch.set_num_threads(max(1, threads))
    _warm_up()
    conn.send(("ready", os.getpid()))
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            return
        if msg[0] != "cell":
            return
        spec: CellSpec = msg[1]
        t0 = time.perf_counter()
        rows = run_cell(spec, _Throttled(conn, spec.key))
        print(f"[{time.strftime('%H:%M:%S')}] {spec.key}: {len(rows)} rows", flush=True)
        conn.send(("done", spec.key, rows, time.perf_counter() - t0))
