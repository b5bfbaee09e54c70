"""The runner: cells, unsupported/error rows, order, run record, resume after kills, progress, CLI.

Fake tasks and the tiny data set live in ``test_executors`` and reach the runner through the suite extension
mechanism (``"module:Class"`` / ``"module:function"``), so they also load in worker processes.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import torch
from test_executors import FAKES, FAKES_PATH, MODEL

from bench.cli import cli_run, main
from bench.flops import trainable_parameters
from bench.run.executors import InProcessExecutor
from bench.run.match_params import TOLERANCE
from bench.run.progress import Progress, choose_mode, format_duration
from bench.run.rundir import LEDGER, RESULTS, Row, _pid_alive, compact, read_ledger, read_rows, row_key
from bench.run.runner import plan, run_suite
from bench.suite import load_suite
from bench.tasks.base import Metric, MetricSpec, Task, TaskContext
from models import registry

REPO = Path(__file__).resolve().parents[1]
ECHO, TRAIN, CLF = f"{FAKES}:EchoTask", f"{FAKES}:TrainEchoTask", f"{FAKES}:ClassifierEchoTask"


def write_suite(path: Path, tasks: str, seeds: int = 2, models: str = f'models = ["{MODEL}"]') -> Path:
    """A suite over LinearFlow and the tiny data set; ``tasks`` is the body of the [tasks] table."""
    path.write_text(f"""
name = "t"
seeds = {seeds}
datasets = ["{FAKES}:tiny"]
{models}
[budget]
steps = 1
[tasks]
{tasks}
""", encoding="utf-8")
    return path


def rows_of(out: Path) -> list[Row]:
    return list(read_rows(out / RESULTS))


def run_inprocess(suite_path: Path, out: Path, resume: bool = False) -> Any:
    return run_suite(load_suite(str(suite_path)), out, executor=InProcessExecutor(), resume=resume)


def calls(log: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


# ----------------------------------------------------------------------------------------------- cells
def test_unsupported_error_order_and_run_record(tmp_path: Path) -> None:
    log = tmp_path / "calls.jsonl"
    suite = write_suite(tmp_path / "s.toml", f"""
"{CLF}" = {{ log = "{log}" }}
"{ECHO}" = {{ fail_seeds = [1], log = "{log}" }}
"{TRAIN}" = {{ log = "{log}" }}
""", models=f"""
[models."{MODEL}"]
seed = 3
""")
    out = tmp_path / "run"
    summary = run_inprocess(suite, out)
    rows = rows_of(out)
    by_cell: dict[tuple[str, int], list[Row]] = {}
    for r in rows:
        by_cell.setdefault((r.task, r.seed), []).append(r)
    # unsupported: one row per declared metric, value None, no call
    for seed in (0, 1):
        unsup = by_cell[(CLF, seed)]
        assert [(r.metric, r.status, r.value) for r in unsup] == [("acc", "unsupported", None)]
        assert unsup[0].extra["requires"] == "a classifier"
    assert all(c["task"] != "classifier_echo" for c in calls(log))
    # an error row for the raising cell, and the suite went on
    assert [r.status for r in by_cell[(ECHO, 1)]] == ["error", "error"]
    assert "boom at seed 1" in by_cell[(ECHO, 1)][0].extra["message"]
    assert [r.status for r in by_cell[(ECHO, 0)] + by_cell[(TRAIN, 0)] + by_cell[(TRAIN, 1)]] == ["ok"] * 6
    # training tasks first in each (model, dataset, seed), whatever the order in the file
    assert [(c["task"], c["seed"]) for c in calls(log)] == [("train_echo", 0), ("echo", 0), ("train_echo", 1),
                                                             ("echo", 1)]
    # hyper-parameter overrides reach make_model; seeds are logged; seeding is per cell
    ok = by_cell[(ECHO, 0)] + by_cell[(TRAIN, 0)]
    assert {r.extra["hparams"]["seed"] for r in ok if r.metric == "draw"} == {3}
    draws = {(r.task, r.seed): r.value for r in rows if r.metric == "draw" and r.status == "ok"}
    assert draws[(ECHO, 0)] == draws[(TRAIN, 0)] != draws[(TRAIN, 1)]
    # ledger: one line per cell after its rows; summary counts
    ledger = read_ledger(out / LEDGER)
    assert len(ledger) == 6 and all(e["outcome"] == "done" for e in ledger.values())
    assert {row_key(r) for r in rows} == set(ledger)
    assert summary.statuses == Counter({"unsupported": 2, "ok": 3, "error": 1})
    # config hash: same config -> same hash across seeds, different tasks -> different hashes
    hashes = {(r.task, r.seed): r.config_hash for r in rows}
    assert hashes[(ECHO, 0)] == hashes[(ECHO, 1)] != hashes[(TRAIN, 0)] and all(hashes.values())
    # the run record
    record = json.loads((out / "run.json").read_text())
    assert {r.run_id for r in rows} == {record["run_id"]} and record["suite"] == "t"
    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True, check=True)
    assert record["git"]["commit"] == head.stdout.strip() and isinstance(record["git"]["dirty"], bool)
    assert record["versions"]["torch"] and record["torch_threads"] == torch.get_num_threads()
    assert record["device"] == "cpu" and record["cuda_available"] == torch.cuda.is_available()
    assert set(record["determinism"]) >= {"deterministic_algorithms", "cudnn_benchmark", "cudnn_deterministic",
                                          "tf32_matmul", "tf32_cudnn"}
    assert record["cpu_count"] == os.cpu_count() and record["end_time"] and len(record["sessions"]) == 1
    assert not (out / ".lock").exists()


def test_nonempty_out_needs_resume(tmp_path: Path) -> None:
    suite = write_suite(tmp_path / "s.toml", f'"{ECHO}" = {{}}', seeds=1)
    out = tmp_path / "run"
    out.mkdir()
    (out / "something").write_text("x")
    with pytest.raises(ValueError, match="not empty; pass --resume"):
        run_inprocess(suite, out)


def test_lock_refuses_a_live_runner_and_takes_over_a_dead_ones_lock(tmp_path: Path) -> None:
    suite = write_suite(tmp_path / "s.toml", f'"{ECHO}" = {{}}', seeds=1)
    out = tmp_path / "run"
    out.mkdir()
    (out / ".lock").write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname()}))
    with pytest.raises(ValueError, match=f"in use by process {os.getpid()}"):
        run_inprocess(suite, out, resume=True)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (out / ".lock").write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname()}))
    assert run_inprocess(suite, out, resume=True).statuses == Counter({"ok": 1})
    assert not (out / ".lock").exists()


def test_setup_problems(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A data set that does not load stops the run before anything is written; a model whose module does not
    import gives error rows and the other models still run."""
    suite = write_suite(tmp_path / "s.toml", f'"{ECHO}" = {{}}', seeds=1)
    text = suite.read_text().replace(f"{FAKES}:tiny", f"{FAKES}:broken")
    (tmp_path / "b.toml").write_text(text)
    with pytest.raises(ValueError, match=f"data set '{FAKES}:broken': FileNotFoundError: tiny-broken not found"):
        run_inprocess(tmp_path / "b.toml", tmp_path / "run")
    assert not (tmp_path / "run").exists()

    monkeypatch.setitem(registry.models._registered, "broken-model", "no_such_module_xyz:Model")
    suite = write_suite(tmp_path / "m.toml", f'"{ECHO}" = {{}}', seeds=1,
                        models=f'models = ["broken-model", "{MODEL}"]')
    run_inprocess(suite, tmp_path / "run2")
    status = {(r.model, r.metric): r.status for r in rows_of(tmp_path / "run2")}
    assert status == {("broken-model", "loglik"): "error", ("broken-model", "draw"): "error",
                      (MODEL, "loglik"): "ok", (MODEL, "draw"): "ok"}
    msg = next(r.extra["message"] for r in rows_of(tmp_path / "run2") if r.model == "broken-model")
    assert "no_such_module_xyz" in msg


def _row(task: str, seed: int, metric: str, value: float) -> Row:
    return Row(run_id="r", suite="t", model="m", task=task, dataset="d", seed=seed, metric=metric, value=value,
               unit="", direction=None)


def test_compact_keeps_each_finished_cell_once(tmp_path: Path) -> None:
    """Rows of a cell missing from the ledger (killed between rows and ledger line), of a crashed cell, a
    repeated block and torn lines are all dropped; each finished cell keeps one block."""
    a = [_row("a", 0, "x", 1.0), _row("a", 0, "y", 2.0)]
    a_again = [_row("a", 0, "x", 3.0), _row("a", 0, "y", 4.0)]
    b = [_row("b", 0, "x", 5.0)]
    c = [_row("c", 0, "x", 6.0)]
    lines = [r.to_json() for r in a + b + c + a_again] + ['{"run_id": "r", "torn']
    (tmp_path / RESULTS).write_text("\n".join(lines))
    ledger = [{"key": row_key(a[0]), "outcome": "done"}, {"key": row_key(c[0]), "outcome": "crashed"}]
    (tmp_path / LEDGER).write_text("\n".join(json.dumps(e) for e in ledger) + '\n{"key": "b|d|s0')
    done = compact(tmp_path)
    assert done == {row_key(a[0])}
    assert [(r.task, r.metric, r.value) for r in rows_of(tmp_path)] == [("a", "x", 3.0), ("a", "y", 4.0)]
    assert list(read_ledger(tmp_path / LEDGER)) == [row_key(a[0])]
    assert not list(tmp_path.glob("*.tmp"))


def test_resume_runs_only_the_cells_not_in_the_ledger(tmp_path: Path) -> None:
    log = tmp_path / "calls.jsonl"
    suite = write_suite(tmp_path / "s.toml", f'"{ECHO}" = {{ log = "{log}" }}', seeds=3)
    out = tmp_path / "run"
    run_inprocess(suite, out)
    first = {(r.seed, r.metric): r.value for r in rows_of(out)}
    lines = (out / LEDGER).read_text().splitlines()
    (out / LEDGER).write_text("\n".join(lines[:1] + lines[2:]) + "\n")  # seed 1 "killed" before its ledger line
    log.unlink()
    summary = run_inprocess(suite, out, resume=True)
    assert [c["seed"] for c in calls(log)] == [1] and summary.skipped == 2
    rows = rows_of(out)
    expected = Counter({(s, m): 1 for s in range(3) for m in ("loglik", "draw")})
    assert Counter((r.seed, r.metric) for r in rows) == expected
    assert {(r.seed, r.metric): r.value for r in rows} == first, "the rerun reproduces the seeded values"
    assert len(json.loads((out / "run.json").read_text())["sessions"]) == 2


def test_sigkill_of_runner_and_of_worker_then_resume(tmp_path: Path) -> None:
    """``python -m bench run`` with the local executor: the worker SIGKILLs itself in seed 1 (an error row,
    the suite goes on with a new worker), then the runner gets ``kill -9`` mid-run. Its orphaned worker exits;
    ``--resume`` reruns the crashed cell and the unfinished ones; every cell's rows appear exactly once."""
    log = tmp_path / "calls.jsonl"
    seeds = 6
    suite = write_suite(tmp_path / "s.toml", f"""
"{ECHO}" = {{ sleep = 0.5, die_seeds = [1], die_once = "{tmp_path / 'died'}", log = "{log}" }}
""", seeds=seeds)
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(FAKES_PATH), str(REPO)]), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "bench", "run", "--suite", str(suite), "--out", str(out), "--quiet"]
    proc = subprocess.Popen(cmd, env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 240
    while len(read_ledger(out / LEDGER)) < 3:
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "runner made no progress"
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate()
    ledger = read_ledger(out / LEDGER)
    assert 3 <= len(ledger) < seeds
    crashed = ledger[f"{MODEL}|{FAKES}:tiny|s1|{ECHO}"]
    assert crashed["outcome"] == "crashed" and crashed["status"] == "error"
    worker_pids = {c["pid"] for c in calls(log)}
    t0 = time.monotonic()
    while any(_pid_alive(p) for p in worker_pids) and time.monotonic() - t0 < 10:
        time.sleep(0.1)
    assert not any(_pid_alive(p) for p in worker_pids), "a worker outlived its runner"

    res = subprocess.run([*cmd, "--resume"], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    rows = rows_of(out)
    assert Counter((r.seed, r.metric) for r in rows) == Counter(
        {(s, m): 1 for s in range(seeds) for m in ("loglik", "draw")})
    assert all(r.status == "ok" for r in rows)
    final = read_ledger(out / LEDGER)
    assert len(final) == seeds and all(e["outcome"] == "done" for e in final.values())
    assert sum(1 for line in (out / LEDGER).read_text().splitlines() if line.strip()) == seeds
    assert sorted(c["seed"] for c in calls(log)).count(1) == 2, "seed 1 ran again after its worker died"


# ----------------------------------------------------------------------------------------------- CLI
def _args(suite: Path, out: Path, **kw: Any) -> argparse.Namespace:
    base = {"suite": str(suite), "models": None, "tasks": None, "datasets": None, "seeds": None, "device": "cpu",
            "out": str(out), "resume": False, "executor": "inprocess", "workers": None, "timeout": None,
            "quiet": False}
    return argparse.Namespace(**{**base, **kw})


def test_cli_run_prints_run_dir_and_report_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    suite = write_suite(tmp_path / "s.toml", f'"{ECHO}" = {{ fail_seeds = [1] }}')
    out = tmp_path / "run"
    assert cli_run(_args(suite, out)) == 1, "an errored cell gives exit status 1"
    captured = capsys.readouterr()
    assert f"invbench report {out}" in captured.out and f"run directory: {out}" in captured.out
    assert "boom at seed 1" in captured.err, "errors are shown"
    assert cli_run(_args(suite, out, resume=True, quiet=True)) == 0
    assert capsys.readouterr().out == "", "--quiet prints nothing but errors"


def test_resume_of_a_changed_suite_needs_allow_changed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    suite = write_suite(tmp_path / "s.toml", f'"{ECHO}" = {{}}')
    out = tmp_path / "run"
    assert main(["run", "--suite", str(suite), "--out", str(out), "--executor", "inprocess", "--quiet"]) == 0
    write_suite(tmp_path / "s.toml", f'"{ECHO}" = {{ sleep = 0.01 }}', seeds=3)
    capsys.readouterr()
    resume = ["run", "--suite", str(suite), "--out", str(out), "--executor", "inprocess", "--quiet", "--resume"]
    before = (out / RESULTS).read_text()
    assert main(resume) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "the suite changed" in err and "--allow-changed" in err
    assert "seeds" in err and "task_options" in err, err
    assert (out / RESULTS).read_text() == before, "nothing ran"
    assert main([*resume, "--allow-changed"]) == 0
    record = json.loads((out / "run.json").read_text())
    assert [len(s["suite_config"]["seeds"]) for s in record["sessions"]] == [2, 3]
    assert len({r.seed for r in rows_of(out)}) == 3


def test_hparams_table_and_its_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    suite = write_suite(tmp_path / "s.toml", f'"{ECHO}" = {{}}', seeds=1,
                        models=f'models = ["{MODEL}"]\n[hparams."{MODEL}"]\nseed = 5\n')
    out = tmp_path / "run"
    assert main(["run", "--suite", str(suite), "--out", str(out), "--executor", "inprocess", "--quiet"]) == 0
    draw = next(r for r in rows_of(out) if r.metric == "draw")
    assert draw.extra["hparams"]["seed"] == 5
    bad = write_suite(tmp_path / "b.toml", f'"{ECHO}" = {{}}', seeds=1,
                      models=f'models = ["{MODEL}"]\n[hparams."{MODEL}"]\nsed = 5\n')
    assert main(["run", "--suite", str(bad), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "sed" in err and "did you mean seed" in err, err


def test_a_model_its_hyper_parameters_do_not_build_stops_the_run_before_compute(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # three singular values for the 2-D data set: the type (an array of numbers) is not judged at load, the
    # constructor refuses it, and the run stops with one line before any cell runs
    bad = write_suite(tmp_path / "b.toml", f'"{ECHO}" = {{}}', seeds=1,
                      models=f'models = ["{MODEL}"]\n[hparams."{MODEL}"]\nsingular_values = [1.0, 2.0, 3.0]\n')
    assert main(["run", "--suite", str(bad), "--out", str(tmp_path / "o"), "--executor", "inprocess"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert err.startswith(f"invbench: error: {MODEL} on {FAKES}:tiny: the model does not build with its "
                          "hyper-parameters (singular_values = [1.0, 2.0, 3.0]): ValueError: need 2 singular values, "
                          "got 3"), err
    assert not (tmp_path / "o").exists(), "nothing ran, nothing was written"


def test_build_check_builds_each_model_once_and_leaves_the_random_state(tmp_path: Path) -> None:
    from bench.run.build_check import check_builds
    from bench.run.runner import SupportCheck, plan

    # realnvp-nflows draws its initial weights from the global generator
    suite = load_suite(str(write_suite(tmp_path / "s.toml", f'"{ECHO}" = {{}}\n"{TRAIN}" = {{}}', seeds=3,
                                       models=f'models = ["{MODEL}", "realnvp-nflows"]')))
    support = SupportCheck(0)
    cells = [c for g in plan(suite, run_id="r", out=tmp_path / "o", device="cpu", info=support.info) for c in g]
    assert len(cells) == 12
    torch.manual_seed(123)
    before = torch.get_rng_state()
    assert check_builds(cells, support.info) == 2  # per model: one data set, one set of hyper-parameters
    assert torch.equal(torch.get_rng_state(), before)


@pytest.mark.parametrize(("suite_text", "expected"), [
    ("name = 't'\ndatasets = [\n", "invalid TOML"),
    ("datasets = ['moons']\nseeds = 'two'\n", "seeds: expected a seed count or an array of seeds, got string"),
    ("datasets = ['moons']\ntimout = 3\n", "timout: unknown field; did you mean timeout?"),
    ("datasets = ['moons']\nmodels = ['realnvp-nflow']\n", "models[0]: unknown model 'realnvp-nflow'; did you mean "
     "realnvp-nflows"),
])
def test_malformed_suite_is_one_line_and_status_2(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                  suite_text: str, expected: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(suite_text)
    assert main(["run", "--suite", str(path), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("invbench: error: suite bad.toml: ") and expected in err
    assert not (tmp_path / "o").exists(), "nothing ran"


def test_unknown_model_on_the_command_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    suite = write_suite(tmp_path / "s.toml", f'"{ECHO}" = {{}}')
    assert main(["run", "--suite", str(suite), "--models", "realnvp-nflow", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith("invbench: error: --models: unknown model 'realnvp-nflow'; did you mean realnvp-nflows")
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(("argv", "expected"), [
    (["run", "--workers", "0"], "argument --workers: must be at least 1, got 0"),
    (["run", "--workers", "two"], "argument --workers: expected a whole number of at least 1, got 'two'"),
    (["validate", "realnvp-nflows", "--shape", "2,x"], "argument --shape: expected comma-separated positive integers"),
    (["validate", "realnvp-nflows", "--shape", "0"], "argument --shape: expected comma-separated positive integers"),
])
def test_bad_numbers_on_the_command_line_stop_before_anything_runs(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], expected: str) -> None:
    out = ["--out", str(tmp_path / "o")] if argv[0] == "run" else []
    with pytest.raises(SystemExit) as stop:
        main([*argv, *out])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert expected in err.splitlines()[-1], err
    assert not (tmp_path / "o").exists()


def test_a_data_dir_that_is_not_a_folder_stops_the_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    suite = write_suite(tmp_path / "s.toml", f'"{ECHO}" = {{}}')
    assert main(["run", "--suite", str(suite), "--data-dir", str(tmp_path / "nope"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err == f"invbench: error: --data-dir: no such folder: {tmp_path / 'nope'}\n"
    assert not (tmp_path / "o").exists()


def test_shape_option_reaches_the_checks(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", "realnvp-nflows", "--shape", "5"]) == 0
    shapes = next(line.split() for line in capsys.readouterr().out.splitlines() if line.split()[:1] == ["shapes"])
    assert shapes[1] == "5" and ", 5)" in " ".join(shapes), shapes


# ----------------------------------------------------------------------------------------------- progress
class _Tty:
    def __init__(self) -> None:
        self.text = ""

    def isatty(self) -> bool:
        return True

    def write(self, s: str) -> None:
        self.text += s

    def flush(self) -> None:
        pass


def test_progress_modes(monkeypatch: pytest.MonkeyPatch) -> None:
    import io

    monkeypatch.delenv("CI", raising=False)
    assert choose_mode(False, io.StringIO()) == "lines" and choose_mode(False, _Tty()) == "bar"  # type: ignore[arg-type]
    assert choose_mode(True, _Tty()) == "quiet"  # type: ignore[arg-type]
    monkeypatch.setenv("CI", "true")
    assert choose_mode(False, _Tty()) == "quiet"  # type: ignore[arg-type]

    lines = io.StringIO()
    p = Progress(3, "lines", lines)
    p.start("m d s0 t")
    p.finish("m d s0 t", "ok", 1.25)
    p.finish("m d s1 t", "unsupported", 0.0, executed=False)
    assert lines.getvalue() == "[1/3] m d s0 t: ok (1.2s)\n[2/3] m d s1 t: unsupported (0.0s)\n"

    quiet = io.StringIO()
    q = Progress(2, "quiet", quiet)
    q.finish("a", "ok", 1.0)
    q.finish("b", "timeout", 5.0, message="cell exceeded its timeout")
    assert quiet.getvalue() == "b: timeout: cell exceeded its timeout\n"

    tty = _Tty()
    b = Progress(4, "bar", tty)  # type: ignore[arg-type]
    b.skip(1)
    b.start("iresnet-native moons s0 likelihood")
    b.update("iresnet-native moons s0 likelihood", 50, 100, "loss 1.2")
    assert "\r[#####...............] 1/4 ETA ? | iresnet-native moons s0 likelihood 50% loss 1.2" in tty.text
    b.finish("iresnet-native moons s0 likelihood", "ok", 2.0)
    eta = b.eta()
    assert eta is not None and eta >= 0 and "2/4" in b.line()
    assert len(b.line(30)) == 30
    b.close()
    assert tty.text.endswith("\r")


def test_format_duration() -> None:
    assert [format_duration(s) for s in (0, 42.4, 185, 3720)] == ["0s", "42s", "3m05s", "1h02m"]


# ----------------------------------------------------------------------------------------------- targets
SCORE = MetricSpec("score", "nats", "down", "a fake score")


class TargetsTask(Task):
    """Reports the targets it was given in ``extra``."""

    name = "targets_echo"
    metric_specs = (SCORE,)
    target_metrics = (SCORE.name,)

    def run(self, ctx: TaskContext) -> list[Metric]:
        return [SCORE(1.0, extra={"targets": dict(ctx.targets)})]


TARGETS = f"{__name__}:TargetsTask"


def test_a_data_sets_targets_reach_the_task_context_and_the_config_hash(tmp_path: Path) -> None:
    def suite_at(name: str, targets: str) -> Any:
        path = tmp_path / f"{name}.toml"
        path.write_text(f"""
name = "t"
models = ["{MODEL}"]
tasks = ["{TARGETS}", "{ECHO}"]
[datasets."{FAKES}:tiny"]
{targets}
""", encoding="utf-8")
        return load_suite(str(path))

    run_suite(suite_at("a", "targets = { score = 0.5 }"), tmp_path / "a", executor=InProcessExecutor())
    rows = rows_of(tmp_path / "a")
    score = next(r for r in rows if r.metric == "score")
    assert score.status == "ok" and score.extra["targets"] == {"score": 0.5}

    def hashes(suite: Any) -> dict[str, str]:
        return {c.task: c.config_hash for g in plan(suite, run_id="r", out=tmp_path, device="cpu") for c in g}

    plain, other = hashes(suite_at("b", "")), hashes(suite_at("c", "targets = { score = 0.25 }"))
    # a target is part of the configuration of the task that emits its metric, and of no other
    assert score.config_hash != plain[TARGETS] != other[TARGETS] != score.config_hash
    assert {r.config_hash for r in rows if r.task == ECHO} == {plain[ECHO]} == {other[ECHO]}
    with pytest.raises(ValueError, match=r"targets\.scor: 'scor' is not a metric with a time_to_target in the tasks "
                                         r"run on .*did you mean score\?"):
        suite_at("d", "targets = { scor = 0.5 }")


# ----------------------------------------------------------------------------------------------- match_params
def test_match_params_plans_every_model_within_ten_percent(tmp_path: Path) -> None:
    target = 60000  # above the fewest parameters of every model at D = 64 (the Glows' 1x1 maps: about 35k)
    path = tmp_path / "m.toml"
    path.write_text(f"""
models = ["all"]
tasks = ["likelihood", "cost"]
match_params = {target}
[datasets.moons]
models."iresnet-native" = {{ depth = 8, hidden = 32, hidden_layers = 1 }}
[datasets.digits-flat]
""", encoding="utf-8")
    suite = load_suite(str(path))
    groups = plan(suite, run_id="r", out=tmp_path, device="cpu")
    from bench.datasets import info

    metas = {d.name: info(d.name, d.options) for d in suite.datasets}
    assert [metas["moons"].shape, metas["digits-flat"].shape] == [(2,), (64,)]
    seen = set()
    for group in groups:
        for cell in group:
            matched = cell.match_params
            assert matched is not None and matched.target == target
            cls = registry.get(cell.model)
            if cls.width_hparam is None:  # the Gaussian baseline: run unscaled (below)
                assert not matched.matched and matched.value is None and matched.baseline
                assert cell.model == "gaussian-fit"
                continue
            assert matched.hparam == cls.width_hparam and cell.hparams[matched.hparam] == matched.value
            meta = metas[cell.dataset]
            built = registry.create(cell.model, shape=meta.shape, num_classes=meta.num_classes, **cell.hparams)
            assert trainable_parameters(built) == matched.params
            assert abs(matched.params - target) <= TOLERANCE * target, (cell.model, cell.dataset, matched)
            seen.add((cell.model, cell.dataset))
    assert len(seen) == 2 * sum(registry.get(m).width_hparam is not None for m in suite.models)
    moons = next(c for g in groups for c in g if c.model == "iresnet-native" and c.dataset == "moons")
    assert moons.hparams["depth"] == 8 and moons.hparams["hidden_layers"] == 1 and moons.hparams["hidden"] != 32
    # the matched width is part of the configuration
    path.write_text(path.read_text().replace(f"match_params = {target}", f"match_params = {2 * target}"))
    doubled = {c.key: c.config_hash for g in plan(load_suite(str(path)), run_id="r", out=tmp_path, device="cpu")
               for c in g}
    assert all(doubled[c.key] != c.config_hash for g in groups for c in g if c.model != "gaussian-fit")


def test_match_params_rows_and_an_unreachable_target(tmp_path: Path) -> None:
    def suite_with(target: int) -> Any:
        path = tmp_path / f"m{target}.toml"
        path.write_text(f"""
models = ["realnvp-nflows", "gaussian-fit", "models.template:LinearFlow"]
tasks = ["{ECHO}"]
match_params = {target}
[datasets.moons]
n_train = 64
n_test = 32
""", encoding="utf-8")
        return load_suite(str(path))

    run_suite(suite_with(5000), tmp_path / "run", executor=InProcessExecutor())
    rows = rows_of(tmp_path / "run")
    realnvp = [r for r in rows if r.model == "realnvp-nflows"]
    assert realnvp and all(r.status == "ok" for r in realnvp)
    extra = realnvp[0].extra["match_params"]
    assert extra["hparam"] == "hidden" and extra["target"] == 5000 and abs(extra["params"] - 5000) <= 500
    assert all(r.extra["match_params"] == extra for r in realnvp)
    # the baseline runs unscaled; a competitor without a width hyper-parameter cannot be matched
    gauss = [r for r in rows if r.model == "gaussian-fit"]
    assert gauss and all(r.status == "ok" for r in gauss)
    assert gauss[0].extra["match_params"]["baseline"] is True and gauss[0].extra["match_params"]["hparam"] is None
    linear = [r for r in rows if r.model == "models.template:LinearFlow"]
    assert linear and all(r.status == "unsupported" and r.value is None for r in linear)
    assert "width hyper-parameter" in linear[0].extra["requires"]
    assert linear[0].extra["match_params"]["hparam"] is None and not linear[0].extra["match_params"]["baseline"]
    # a target below the smallest realnvp-nflows on moons stops the run before any compute, in one line
    with pytest.raises(ValueError) as info:
        run_suite(suite_with(10), tmp_path / "small", executor=InProcessExecutor())
    message = str(info.value)
    assert "\n" not in message and message.startswith("realnvp-nflows on moons: match_params = 10: ")
    assert "hidden = 1 (the fewest it can have)" in message and not (tmp_path / "small").exists()


def test_expectations_and_descriptions_are_not_configuration() -> None:
    from bench.run.runner import suite_changes

    old = {"seeds": [0], "description": "a", "expectations": [{"claim": "x", "value": 0}]}
    new = {"seeds": [0], "description": "b", "expectations": [{"claim": "x", "value": 1}]}
    assert suite_changes(old, new) == []
    assert suite_changes(old, {**new, "seeds": [0, 1]}) == ["seeds: [0] -> [0, 1]"]
