"""Executors: where cells run. The runner hands an executor groups of cells and gets each cell's rows back.

A group is the cells of one (model, dataset, seed) in run order (training tasks first); an executor runs a
group's cells one after another in one place, so later tasks find the checkpoint the training task wrote.

- ``inprocess``: in this process, no isolation and no timeout (tests, debugging).
- ``local`` (default): persistent worker subprocesses (spawn context, each imports torch once) fed cells over a
  pipe; a crash, a kill or a timeout costs one worker, which is replaced, and becomes rows.
- ``pool``: the same with one worker per visible GPU (``CUDA_VISIBLE_DEVICES`` pinned per worker), or
  ``--workers N`` CPU workers when there is no GPU.
- ``submitit``: a Slurm job array (one array task per group) through the optional ``submitit`` package;
  each job writes each cell's rows to ``<out>/parts/<cell>.jsonl`` and the parent merges them.
"""

from __future__ import annotations

import math
import multiprocessing as mp
import os
import signal
import time
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import wait
from pathlib import Path
from typing import Any, ClassVar

from bench.run import rundir
from bench.run.rundir import Row
from bench.run.worker import CellSpec, failure_rows, run_cell, worker_main

EXECUTORS: tuple[str, ...] = ("inprocess", "local", "pool", "submitit")


@dataclass
class CellOutcome:
    """What became of one cell. ``crashed``: the worker died under it, so ``--resume`` runs it again."""

    rows: list[Row]
    seconds: float
    crashed: bool = False


OnStart = Callable[[CellSpec], None]
OnDone = Callable[[CellSpec, CellOutcome], None]
OnProgress = Callable[[CellSpec, int, int, str], None]


def _nothing(*args: Any) -> None:
    return None


class ExecutorUnavailable(ValueError):
    """An executor that cannot run here (e.g. ``submitit`` not installed); one-line message."""


class Executor(ABC):
    """Runs groups of cells and reports each finished cell through ``on_done`` (in the calling thread)."""

    name: ClassVar[str]

    @abstractmethod
    def run(self, groups: Sequence[Sequence[CellSpec]], on_done: OnDone, on_start: OnStart = _nothing,
            on_progress: OnProgress = _nothing) -> None:
        """Run every cell of every group; a group's cells in order, in one place."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release workers. Idempotent."""

    def describe(self) -> dict[str, Any]:
        """Settings for the run record."""
        return {"name": self.name}

    def __enter__(self) -> Executor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ----------------------------------------------------------------------------------------------- in process
class InProcessExecutor(Executor):
    """Runs cells in the calling process: no isolation, no timeout. For tests and debugging."""

    name = "inprocess"

    def run(self, groups: Sequence[Sequence[CellSpec]], on_done: OnDone, on_start: OnStart = _nothing,
            on_progress: OnProgress = _nothing) -> None:
        for group in groups:
            for cell in group:
                on_start(cell)
                t0 = time.perf_counter()
                rows = run_cell(cell, lambda d, t, m, c=cell: on_progress(c, d, t, m))  # type: ignore[misc]
                on_done(cell, CellOutcome(rows, time.perf_counter() - t0))


# ----------------------------------------------------------------------------------------------- workers
def cpu_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def default_local_workers(device: str) -> int:
    """Workers of the default ``local`` executor: one on a GPU (it shares the device), else one per core up
    to 4, each single-threaded on a small machine; small models train faster side by side than on threads."""
    return 1 if device.startswith("cuda") else max(1, min(4, cpu_cores()))


def threads_per_worker(workers: int) -> int:
    """``cores // workers`` (at least 1), capped by ``OMP_NUM_THREADS`` when the user set it."""
    n = max(1, cpu_cores() // max(1, workers))
    cap = os.environ.get("OMP_NUM_THREADS", "")
    if cap.isdigit() and int(cap) > 0:
        n = min(n, int(cap))
    return n


def visible_gpus() -> list[str]:
    """GPU ids this process may use: ``CUDA_VISIBLE_DEVICES`` if set, else ``0..device_count()-1``."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [g.strip() for g in env.split(",") if g.strip() and g.strip() != "-1"]
    try:
        import torch

        return [str(i) for i in range(torch.cuda.device_count())]
    except Exception:
        return []


def _signal_text(code: int | None) -> str:
    if code is None:
        return "still running"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


class _Worker:
    """One persistent worker process and the pipe to it."""

    def __init__(self, index: int, env: dict[str, str], threads: int, log_path: str | None) -> None:
        ctx = mp.get_context("spawn")
        self.conn, child = ctx.Pipe(duplex=True)
        self.proc = ctx.Process(target=worker_main, args=(child, env, threads, os.getpid(), log_path),
                                name=f"invbench-worker-{index}", daemon=False)
        self.proc.start()
        child.close()
        self.ready = False

    def send(self, msg: tuple[Any, ...]) -> bool:
        try:
            self.conn.send(msg)
            return True
        except (OSError, ValueError):
            return False

    def _release(self) -> None:
        self.conn.close()
        if self.proc.exitcode is not None:
            self.proc.close()

    def kill(self) -> None:
        if self.proc.exitcode is None:
            self.proc.kill()
            self.proc.join(10)
        self._release()

    def stop(self, wait_s: float = 5.0) -> None:
        """Ask the worker to exit; kill it if it does not within ``wait_s``."""
        self.send(("stop",))
        self.proc.join(wait_s)
        self.kill()


@dataclass
class _Slot:
    index: int
    env: dict[str, str]
    worker: _Worker | None = None
    queue: deque[CellSpec] = field(default_factory=deque)
    cell: CellSpec | None = None
    deadline: float = math.inf
    started: float = 0.0


class WorkerPoolExecutor(Executor):
    """Persistent spawn-context worker processes, one group at a time each.

    Args:
        workers: number of worker processes.
        gpus: GPU ids to pin, one per worker round robin (``CUDA_VISIBLE_DEVICES``); None inherits the
            parent's environment.
        threads: torch threads per worker (default :func:`threads_per_worker`).
        log_dir: where each worker's stdout/stderr go (``worker-<i>.log``); None keeps the parent's.
        startup_timeout: seconds a new worker may take to import torch before its cell counts as an error.
    """

    name = "local"

    def __init__(self, workers: int = 1, gpus: Sequence[str] | None = None, threads: int | None = None,
                 log_dir: Path | None = None, startup_timeout: float = 300.0) -> None:
        if workers < 1:
            raise ValueError(f"--workers: need at least 1, got {workers}")
        self.workers = workers
        self.gpus = list(gpus) if gpus else []
        self.threads = threads or threads_per_worker(workers)
        self.log_dir = log_dir
        self.startup_timeout = startup_timeout
        self._slots = [_Slot(i, {"CUDA_VISIBLE_DEVICES": self.gpus[i % len(self.gpus)]} if self.gpus else {})
                       for i in range(workers)]

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "workers": self.workers, "threads_per_worker": self.threads, "gpus": self.gpus}

    def _spawn(self, slot: _Slot) -> _Worker:
        log = str(self.log_dir / f"worker-{slot.index}.log") if self.log_dir else None
        return _Worker(slot.index, slot.env, self.threads, log)

    def _finish(self, slot: _Slot, on_done: OnDone, outcome: CellOutcome) -> None:
        cell = slot.cell
        assert cell is not None
        slot.cell = None
        slot.deadline = math.inf
        on_done(cell, outcome)

    def _lose_worker(self, slot: _Slot) -> None:
        if slot.worker is not None:
            slot.worker.kill()
            slot.worker = None

    def _dispatch(self, slot: _Slot, on_start: OnStart) -> None:
        assert slot.cell is not None and slot.worker is not None
        slot.started = time.monotonic()
        timeout = slot.cell.timeout
        slot.deadline = slot.started + timeout if timeout else math.inf
        on_start(slot.cell)
        slot.worker.send(("cell", slot.cell))

    def run(self, groups: Sequence[Sequence[CellSpec]], on_done: OnDone, on_start: OnStart = _nothing,
            on_progress: OnProgress = _nothing) -> None:
        pending = deque(list(g) for g in groups if g)
        while True:
            for slot in self._slots:
                if slot.cell is not None:
                    continue
                if not slot.queue and pending:
                    slot.queue = deque(pending.popleft())
                if not slot.queue:
                    continue
                slot.cell = slot.queue.popleft()
                if slot.worker is None:
                    slot.worker = self._spawn(slot)
                    slot.deadline = time.monotonic() + self.startup_timeout
                elif slot.worker.ready:
                    self._dispatch(slot, on_start)
            busy = [s for s in self._slots if s.cell is not None]
            if not busy:
                return
            now = time.monotonic()
            wait_s = max(0.0, min(s.deadline for s in busy) - now)
            handles: list[Any] = []
            for s in busy:
                assert s.worker is not None
                handles += [s.worker.conn, s.worker.proc.sentinel]
            wait(handles, timeout=None if math.isinf(wait_s) else wait_s)
            for slot in busy:
                self._service(slot, on_done, on_start, on_progress)

    def _service(self, slot: _Slot, on_done: OnDone, on_start: OnStart, on_progress: OnProgress) -> None:
        worker = slot.worker
        assert worker is not None and slot.cell is not None
        dead = False
        try:
            while slot.cell is not None and worker.conn.poll():
                msg = worker.conn.recv()
                if msg[0] == "ready":
                    worker.ready = True
                    self._dispatch(slot, on_start)
                elif msg[0] == "progress" and msg[1] == slot.cell.key:
                    on_progress(slot.cell, msg[2], msg[3], msg[4])
                elif msg[0] == "done" and msg[1] == slot.cell.key:
                    self._finish(slot, on_done, CellOutcome(list(msg[2]), float(msg[3])))
        except (EOFError, OSError):
            dead = True
        if slot.cell is None:
            return
        cell = slot.cell
        if dead or not worker.proc.is_alive():
            worker.proc.join(5)
            code = worker.proc.exitcode
            self._lose_worker(slot)
            what = "during the cell" if worker.ready else "while starting"
            rows = failure_rows(cell, "error", f"worker process died {what} ({_signal_text(code)})",
                                {"crash": True, "exitcode": code})
            self._finish(slot, on_done, CellOutcome(rows, time.monotonic() - slot.started, crashed=True))
        elif time.monotonic() >= slot.deadline:
            self._lose_worker(slot)
            if worker.ready:
                rows = failure_rows(cell, "timeout", f"cell exceeded its timeout of {cell.timeout:g} s; worker killed",
                                    {"timeout_s": cell.timeout})
            else:
                rows = failure_rows(cell, "error", f"worker did not start within {self.startup_timeout:g} s")
            self._finish(slot, on_done, CellOutcome(rows, time.monotonic() - slot.started))

    def close(self) -> None:
        for slot in self._slots:
            if slot.worker is not None:
                slot.worker.stop()
                slot.worker = None


class PoolExecutor(WorkerPoolExecutor):
    """One worker per visible GPU (pinned with ``CUDA_VISIBLE_DEVICES``), or ``workers`` CPU workers."""

    name = "pool"

    def __init__(self, workers: int | None = None, device: str = "cpu", log_dir: Path | None = None,
                 threads: int | None = None) -> None:
        gpus = visible_gpus() if device == "cuda" else []
        n = workers or max(1, len(gpus))
        super().__init__(workers=n, gpus=gpus, threads=threads, log_dir=log_dir)


# ----------------------------------------------------------------------------------------------- submitit
def write_part(parts_dir: Path, cell: CellSpec, outcome: CellOutcome) -> Path:
    """Write one cell's outcome as a part file (:func:`bench.run.rundir.write_part`)."""
    return rundir.write_part(parts_dir, cell.key, outcome.rows, outcome.seconds, outcome.crashed)


def read_part(parts_dir: Path, cell: CellSpec) -> CellOutcome | None:
    """The outcome a job wrote for ``cell`` (:func:`bench.run.rundir.read_part`), or None when there is none."""
    part = rundir.read_part(parts_dir, cell.key)
    return None if part is None else CellOutcome(*part)


class GroupJob:
    """One Slurm array task: the cells of one group, each isolated in a worker subprocess, rows to parts.

    Requeued on preemption or time-out: submitit calls :meth:`checkpoint` (the protocol of
    ``submitit.helpers.Checkpointable``) and resubmits the same arguments; cells whose part file exists are
    skipped, so a requeued job picks up where it stopped.
    """

    def __call__(self, cells: list[CellSpec], parts_dir: str, log_dir: str | None) -> int:
        parts = Path(parts_dir)
        todo = [c for c in cells if read_part(parts, c) is None]

        def store(cell: CellSpec, outcome: CellOutcome) -> None:
            write_part(parts, cell, outcome)

        with WorkerPoolExecutor(1, threads=threads_per_worker(1), log_dir=Path(log_dir) if log_dir else None) as ex:
            ex.run([todo], store)
        return len(todo)

    def checkpoint(self, *args: Any, **kwargs: Any) -> Any:
        """Resubmit this job with the same arguments (``submitit.helpers.DelayedSubmission``)."""
        from submitit.helpers import DelayedSubmission

        return DelayedSubmission(self, *args, **kwargs)


class SubmititExecutor(Executor):
    """A Slurm job array via submitit (``pip install 'invertible-bench[slurm]'``); one array task per group.

    Settings come from the suite's ``[slurm]`` table: ``cluster`` (None = auto-detect Slurm, ``"local"`` runs
    the jobs as local processes, which needs no Slurm), ``partition``, ``account``, ``qos``, ``constraint``,
    ``gpus_per_node``, ``cpus_per_task``, ``mem_gb``, ``timeout_min`` (default: the group's cell timeouts
    summed, plus 5 minutes), ``array_parallelism``, ``additional_parameters`` (a table passed to sbatch),
    ``poll_seconds``.
    """

    name = "submitit"

    def __init__(self, out: Path, slurm: dict[str, Any] | None = None, device: str = "cpu") -> None:
        try:
            import submitit  # noqa: F401
        except ImportError as exc:
            raise ExecutorUnavailable(
                "the submitit executor needs the optional package submitit: "
                "pip install 'invertible-bench[slurm]' (or pip install submitit)") from exc
        self.out = out
        self.slurm = dict(slurm or {})
        self.device = device
        self.poll_seconds = float(self.slurm.get("poll_seconds", 2.0))

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "slurm": self.slurm}

    def _executor(self, groups: Sequence[Sequence[CellSpec]]) -> Any:
        import submitit

        s = self.slurm
        ex = submitit.AutoExecutor(folder=str(self.out / "slurm" / "%j"), cluster=s.get("cluster"))
        longest = max(sum(c.timeout or 3600.0 for c in g) for g in groups)
        params: dict[str, Any] = {
            "name": "invbench",
            "timeout_min": int(s.get("timeout_min", math.ceil(longest / 60.0) + 5)),
            "gpus_per_node": int(s.get("gpus_per_node", 1 if self.device == "cuda" else 0)),
            "cpus_per_task": int(s.get("cpus_per_task", 2)),
        }
        if "mem_gb" in s:
            params["mem_gb"] = s["mem_gb"]
        for key in ("partition", "account", "qos", "constraint", "array_parallelism", "additional_parameters"):
            if key in s:
                params[f"slurm_{key}"] = s[key]
        ex.update_parameters(**params)
        return ex

    def run(self, groups: Sequence[Sequence[CellSpec]], on_done: OnDone, on_start: OnStart = _nothing,
            on_progress: OnProgress = _nothing) -> None:
        parts = self.out / "parts"
        waiting: list[list[CellSpec]] = []
        for g in groups:  # parts left by jobs of an earlier, interrupted session are merged, not rerun
            left = []
            for cell in g:
                outcome = read_part(parts, cell)
                if outcome is None:
                    left.append(cell)
                else:
                    on_done(cell, outcome)
            if left:
                waiting.append(left)
        if not waiting:
            return
        ex = self._executor(waiting)
        logs = str(self.out / "logs")
        jobs = ex.map_array(GroupJob(), waiting, [str(parts)] * len(waiting), [logs] * len(waiting))
        open_cells = {id(g): list(g) for g in waiting}
        settle_until = math.inf
        while open_cells or time.monotonic() < settle_until:
            for job, g in zip(jobs, waiting, strict=True):
                cells = open_cells.get(id(g))
                if cells is None:
                    continue
                finished = job.done()
                for cell in list(cells):
                    outcome = read_part(parts, cell)
                    if outcome is not None:
                        cells.remove(cell)
                        on_done(cell, outcome)
                if finished and cells:
                    exc = job.exception()
                    last = (str(exc).strip().splitlines() or [""])[-1] if exc else ""
                    why = f"{type(exc).__name__}: {last}" if exc else "without writing rows"
                    for cell in cells:
                        rows = failure_rows(cell, "error", f"Slurm job {job.job_id} ended ({job.state}) {why}",
                                            {"crash": True, "job_id": job.job_id})
                        on_done(cell, CellOutcome(rows, 0.0, crashed=True))
                    cells.clear()
                if not cells:
                    del open_cells[id(g)]
            if not open_cells:  # every cell is in; give the jobs a moment to exit (they are reaped by done())
                settle_until = min(settle_until, time.monotonic() + 30.0)
                if all(job.done() for job in jobs):
                    break
            time.sleep(self.poll_seconds)


def make_executor(name: str, *, workers: int | None = None, device: str = "cpu", out: Path | None = None,
                  slurm: dict[str, Any] | None = None) -> Executor:
    """Build an executor by name (``inprocess``, ``local``, ``pool``, ``submitit``)."""
    log_dir = out / "logs" if out is not None else None
    if name == "inprocess":
        return InProcessExecutor()
    if name == "local":
        return WorkerPoolExecutor(workers or default_local_workers(device), log_dir=log_dir)
    if name == "pool":
        return PoolExecutor(workers, device=device, log_dir=log_dir)
    if name == "submitit":
        if out is None:
            raise ValueError("the submitit executor needs a run directory")
        return SubmititExecutor(out, slurm, device=device)
    raise ValueError(f"unknown executor {name!r} (known: {', '.join(EXECUTORS)})")
