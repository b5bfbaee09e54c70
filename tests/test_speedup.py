"""``invbench speedup``: per-task rate ratios between two results stores of one suite."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.cli import main
from bench.report.speedup import speedups
from bench.report.tables import load_store
from bench.run.rundir import Row


def _row(model: str, task: str, metric: str, value: float | None, seed: int = 0, status: str = "ok",
         input: str = "") -> str:
    return Row("r", "s", model, task, "moons", seed, metric, value, "", None, status, input=input,
               config_hash="h").to_json()


def _store(path: Path, steps: float, fwd: float, stab_seconds: float, device: str) -> Path:
    path.mkdir()
    rows = [_row("m", "likelihood", "train_steps", steps), _row("m", "likelihood", "train_time", 5.0),
            _row("m", "cost", "forward_throughput", fwd), _row("m", "cost", "inverse_throughput", None, status="error"),
            _row("m", "stability", "lip_forward", 1.0, input="test")]
    (path / "results.jsonl").write_text("".join(r + "\n" for r in rows))
    cells = [{"key": "m|moons|s0|stability", "model": "m", "dataset": "moons", "seed": 0, "task": "stability",
              "status": "ok", "seconds": stab_seconds},
             {"key": "m|moons|s0|likelihood", "model": "m", "dataset": "moons", "seed": 0, "task": "likelihood",
              "status": "ok", "seconds": 5.2}]
    (path / "cells.jsonl").write_text("".join(json.dumps(c) + "\n" for c in cells))
    (path / "run.json").write_text(json.dumps({"device": device, "sessions": [{"executor": {"workers": 2}}]}))
    return path


def test_speedup_divides_rates_per_task(tmp_path: Path) -> None:
    a = _store(tmp_path / "cpu", steps=500, fwd=1000.0, stab_seconds=4.0, device="cpu")
    b = _store(tmp_path / "gpu", steps=250, fwd=3000.0, stab_seconds=1.0, device="cuda")
    lines = {(s.task, s.measure): s for s in speedups(load_store(a), load_store(b))}
    assert lines[("likelihood", "train steps/s")].median == pytest.approx(0.5)
    assert lines[("cost", "forward_throughput")].median == pytest.approx(3.0)
    assert lines[("stability", "cells/s")].median == pytest.approx(4.0)
    assert ("cost", "inverse_throughput") not in lines  # error rows give no pair
    assert all(s.pairs == 1 for s in lines.values())


def test_speedup_cli_writes_the_table_and_rejects_unrelated_stores(tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    a = _store(tmp_path / "cpu", steps=500, fwd=1000.0, stab_seconds=4.0, device="cpu")
    b = _store(tmp_path / "gpu", steps=250, fwd=3000.0, stab_seconds=1.0, device="cuda")
    out = tmp_path / "speedup.md"
    assert main(["speedup", str(a), str(b), "-o", str(out)]) == 0
    text = out.read_text()
    assert "| cost | forward_throughput | 3x |" in text and "device cuda" in text
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "results.jsonl").write_text("")
    assert main(["speedup", str(a), str(empty)]) == 2
    assert "no ok cell in common" in capsys.readouterr().err
    assert main(["speedup", str(a), str(tmp_path / "missing")]) == 2
