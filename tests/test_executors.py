"""Executors: worker isolation (errors, timeouts, crashes become rows), pool == in-process, submitit local.

This module also holds the fake tasks and the tiny data set that the runner tests use through the suite
extension mechanism (``"module:Class"`` tasks, ``"module:function"`` data sets), so they load in worker
processes too: :data:`FAKES` is this module's import name and :data:`FAKES_PATH` the folder that makes it
importable in a subprocess.
"""

from __future__ import annotations

import json
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import pytest
import torch

from bench.datasets.base import Dataset
from bench.options import Options
from bench.run.executors import (
    CellOutcome,
    GroupJob,
    InProcessExecutor,
    PoolExecutor,
    WorkerPoolExecutor,
    cpu_cores,
    make_executor,
    read_part,
    threads_per_worker,
    write_part,
)
from bench.run.rundir import Row
from bench.run.worker import CellSpec
from bench.tasks.base import Metric, MetricSpec, Task, TaskContext
from models.base import Capabilities

FAKES = __name__
FAKES_PATH = Path(__file__).resolve().parents[len(__name__.split(".")) - 1]
MODEL = "models.template:LinearFlow"


# ----------------------------------------------------------------------------------------------- fakes
def tiny(seed: int = 0, n_train: int = 64, n_test: int = 32, dim: int = 2) -> Dataset:
    """A seeded Gaussian data set: train (n_train, dim), test (n_test, dim)."""
    g = torch.Generator().manual_seed(1000 + seed)
    return Dataset(name="tiny", kind="vector", train_x=torch.randn(n_train, dim, generator=g),
                   test_x=torch.randn(n_test, dim, generator=g))


def broken(seed: int = 0, **options: Any) -> Dataset:
    """A data set whose files are missing."""
    raise FileNotFoundError("tiny-broken not found; looked in /nowhere")


@dataclass(frozen=True)
class EchoOptions(Options):
    """The fake task's options (see :class:`EchoTask`)."""

    fail_seeds: tuple[int, ...] = ()
    nan_seeds: tuple[int, ...] = ()
    oom_seeds: tuple[int, ...] = ()
    hang_seeds: tuple[int, ...] = ()
    die_seeds: tuple[int, ...] = ()
    die_once: str = ""
    sleep: float = 0.0
    log: str = ""


LOGLIK = MetricSpec("loglik", "nats", "up", "mean log-likelihood of a fresh model")
DRAW = MetricSpec("draw", "", None, "one seeded uniform draw")


class EchoTask(Task):
    """Deterministic fake task: mean log-likelihood of a fresh model on the test data and one seeded draw.

    Options (per seed lists select the cells they apply to): ``fail_seeds`` raise, ``nan_seeds`` report NaN,
    ``oom_seeds`` raise MemoryError, ``hang_seeds`` sleep for an hour, ``die_seeds`` + ``die_once`` (a file
    path) SIGKILL the worker the first time, ``sleep`` seconds before measuring, ``log`` (a file path) gets
    one JSON line per call.
    """

    name = "echo"
    Options = EchoOptions
    metric_specs: ClassVar[tuple[MetricSpec, ...]] = (LOGLIK, DRAW)

    @classmethod
    def supports(cls, caps: Capabilities, dataset: Dataset) -> bool:
        return True

    def run(self, ctx: TaskContext) -> list[Metric]:
        o: EchoOptions = ctx.options
        if o.log:
            with open(o.log, "a", encoding="utf-8") as fh:
                fh.write(json.dumps({"task": self.name, "seed": ctx.seed, "pid": os.getpid(),
                                     "dataset": ctx.dataset.name, "threads": torch.get_num_threads()}) + "\n")
        if ctx.seed in o.fail_seeds:
            raise RuntimeError(f"boom at seed {ctx.seed}")
        if ctx.seed in o.oom_seeds:
            raise MemoryError("fake allocation failure")
        if ctx.seed in o.hang_seeds:
            time.sleep(3600)
        if ctx.seed in o.die_seeds and not Path(o.die_once).exists():
            Path(o.die_once).write_text("died")
            os.kill(os.getpid(), signal.SIGKILL)
        time.sleep(o.sleep)
        if ctx.seed in o.nan_seeds:
            return [LOGLIK(float("nan")), DRAW(0.5)]
        model = ctx.make_model()
        with torch.no_grad():
            loglik = model.log_prob(ctx.dataset.test_x).mean()
        return [LOGLIK(loglik.item()), DRAW(torch.rand(()).item(), extra={"hparams": model.config()})]


class TrainEchoTask(EchoTask):
    """Declares that it trains a model, so the runner puts it first in each group."""

    name = "train_echo"
    trains_model = True


class ClassifierEchoTask(EchoTask):
    """Needs a classifier: LinearFlow is not one, so its cells are ``unsupported``."""

    name = "classifier_echo"
    metric_specs: ClassVar[tuple[MetricSpec, ...]] = (MetricSpec("acc", "fraction", "up", "accuracy"),)
    requires_text = "a classifier"

    @classmethod
    def supports(cls, caps: Capabilities, dataset: Dataset) -> bool:
        return caps.classifier


def cell(seed: int, task: str = "EchoTask", timeout: float | None = None, **options: Any) -> CellSpec:
    return CellSpec(model=MODEL, dataset=f"{FAKES}:tiny", seed=seed, task=f"{FAKES}:{task}", run_id="r",
                    suite="t", task_options=options, budget={"steps": 1}, timeout=timeout,
                    metrics=(LOGLIK, DRAW))


def collect(executor: Any, groups: list[list[CellSpec]]) -> dict[str, CellOutcome]:
    out: dict[str, CellOutcome] = {}
    with executor:
        executor.run(groups, lambda c, o: out.__setitem__(c.key, o))
    return out


def values(rows: list[Row]) -> list[tuple[str, str, float | None]]:
    return [(r.metric, r.status, r.value) for r in rows]


# ----------------------------------------------------------------------------------------------- tests
def test_inprocess_maps_failures_to_statuses() -> None:
    groups = [[cell(0), cell(1, fail_seeds=[1]), cell(2, nan_seeds=[2]), cell(3, oom_seeds=[3])]]
    got = collect(InProcessExecutor(), groups)
    assert [r.status for r in got[groups[0][0].key].rows] == ["ok", "ok"]
    err = got[groups[0][1].key].rows
    assert [r.status for r in err] == ["error", "error"] and all(r.value is None for r in err)
    assert "boom at seed 1" in err[0].extra["message"] and "RuntimeError" in err[0].extra["traceback"]
    nan = got[groups[0][2].key].rows
    assert nan[0].status == "diverged" and nan[0].value is None and nan[1].status == "ok"
    assert [r.status for r in got[groups[0][3].key].rows] == ["oom", "oom"]


def test_local_worker_survives_error_timeout_and_crash(tmp_path: Path) -> None:
    """One worker: a raise, a hang past the timeout (worker killed and replaced) and a SIGKILL all become
    rows, and the cells after each still run."""
    log = tmp_path / "calls.jsonl"
    opts: dict[str, Any] = {"fail_seeds": [1], "hang_seeds": [2], "die_seeds": [3], "die_once": str(tmp_path / "died"),
            "log": str(log)}
    group = [cell(s, timeout=3.0 if s == 2 else None, **opts) for s in range(5)]
    got = collect(WorkerPoolExecutor(1, threads=1), [group])
    status = {c.seed: [r.status for r in got[c.key].rows] for c in group}
    assert status == {0: ["ok", "ok"], 1: ["error", "error"], 2: ["timeout", "timeout"], 3: ["error", "error"],
                      4: ["ok", "ok"]}
    assert got[group[2].key].rows[0].extra["timeout_s"] == 3.0
    crash = got[group[3].key]
    assert crash.crashed and crash.rows[0].extra["crash"] and "SIGKILL" in crash.rows[0].extra["message"]
    assert not got[group[2].key].crashed and not got[group[1].key].crashed
    pids = [json.loads(line)["pid"] for line in log.read_text().splitlines()]
    # seeds 0-2 in the first worker, 3 in the one started after the timeout, 4 in the one after the crash
    assert pids[0] == pids[1] == pids[2] != pids[3] != pids[4] and os.getpid() not in pids


def test_pool_of_two_gives_the_rows_of_inprocess(tmp_path: Path) -> None:
    log = tmp_path / "calls.jsonl"
    groups = [[cell(s, log=str(log)), cell(s, "TrainEchoTask", log=str(log))] for s in range(4)]
    ref = collect(InProcessExecutor(), groups)
    log.unlink()
    pool = PoolExecutor(workers=2, device="cpu")
    assert pool.threads == threads_per_worker(2)
    got = collect(pool, groups)
    assert set(got) == set(ref)
    for key in ref:
        assert values(got[key].rows) == values(ref[key].rows)
        assert [r.extra for r in got[key].rows] == [r.extra for r in ref[key].rows]
    calls = [json.loads(line) for line in log.read_text().splitlines()]
    assert len({c["pid"] for c in calls}) == 2, "two workers shared the groups"
    by_seed: dict[int, set[int]] = {}
    for c in calls:
        by_seed.setdefault(c["seed"], set()).add(c["pid"])
    assert all(len(p) == 1 for p in by_seed.values()), "a group's cells run in one worker"
    assert all(c["threads"] == pool.threads for c in calls)


def test_pool_pins_one_gpu_per_worker(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    pool = PoolExecutor(device="cuda")
    assert pool.workers == 2 and [s.env for s in pool._slots] == [{"CUDA_VISIBLE_DEVICES": "3"},
                                                                  {"CUDA_VISIBLE_DEVICES": "5"}]
    cpu = PoolExecutor(workers=3, device="cpu")
    assert cpu.workers == 3 and all(s.env == {} for s in cpu._slots)


def test_threads_per_worker(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("bench.run.executors.cpu_cores", lambda: 8)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert [threads_per_worker(w) for w in (1, 2, 3, 16)] == [8, 4, 2, 1]
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert [threads_per_worker(w) for w in (1, 2, 4)] == [3, 3, 2]
    assert cpu_cores() >= 1


def test_parts_round_trip(tmp_path: Path) -> None:
    c = cell(0)
    outcome = collect(InProcessExecutor(), [[c]])[c.key]
    assert read_part(tmp_path, c) is None
    write_part(tmp_path, c, outcome)
    back = read_part(tmp_path, c)
    assert back is not None and values(back.rows) == values(outcome.rows) and not back.crashed
    assert not list(tmp_path.glob("*.tmp*"))


def test_submitit_local_executor_matches_inprocess(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import submitit  # the optional extra 'slurm'; the test extra installs it

    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(FAKES_PATH), os.environ.get("PYTHONPATH", "")]))
    groups = [[cell(0, "TrainEchoTask"), cell(0)]]
    ref = collect(InProcessExecutor(), groups)
    ex = make_executor("submitit", out=tmp_path, slurm={"cluster": "local", "poll_seconds": 0.2, "timeout_min": 5})
    got = collect(ex, groups)
    assert {k: values(o.rows) for k, o in got.items()} == {k: values(o.rows) for k, o in ref.items()}
    assert len(list((tmp_path / "parts").glob("*.jsonl"))) == 2
    job = GroupJob()  # requeue on preemption: submitit calls checkpoint() and resubmits what it returns
    requeue = job.checkpoint(groups[0], str(tmp_path / "parts"), None)
    assert isinstance(requeue, submitit.helpers.DelayedSubmission)
    assert requeue.function is job and requeue.args == (groups[0], str(tmp_path / "parts"), None)
    assert job(groups[0], str(tmp_path / "parts"), None) == 0, "a requeued job skips cells whose part exists"
