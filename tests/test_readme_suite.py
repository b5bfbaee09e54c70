"""The worked suite file in the README loads as written: every key, option and hyper-parameter in it is valid."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from bench.run.runner import plan
from bench.suite import load_suite

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_suite() -> str:
    text = README.read_text(encoding="utf-8")
    section = text[text.index("### Writing a suite"):]
    match = re.search(r"```toml\n(.*?)```", section, re.S)
    assert match, "the README's 'Writing a suite' section has no toml block"
    return match.group(1)


def test_the_readme_suite_loads_and_plans(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "my_arrays.npz", x_train=rng.integers(0, 256, (40, 4), dtype=np.uint8),
             x_test=rng.integers(0, 256, (10, 4), dtype=np.uint8))
    (tmp_path / "my_study.toml").write_text(readme_suite(), encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    suite = load_suite("my_study.toml")
    assert suite.models == ["iresnet-native", "realnvp-nflows"]
    assert suite.hparams_for("iresnet-native", "moons") == {"depth": 8, "coeff": 0.9}
    arrays = next(d for d in suite.datasets if d.name.endswith("my_arrays.npz"))
    assert suite.hparams_for("iresnet-native", arrays.name)["depth"] == 4
    cells = [c for g in plan(suite, run_id="r", out=tmp_path / "run", device="cpu") for c in g]
    stability = next(c for c in cells if c.task == "stability")
    assert stability.task_options["regularizer"] == {"eps": 0.1, "weight": 1e-4, "every": 10}
    assert {c.task for c in cells if c.dataset == arrays.name} == {"likelihood", "stability"}
