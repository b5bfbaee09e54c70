"""The distribution's packages are this repo's ``bench`` and ``models`` (PyPI has unrelated packages so named)."""

from __future__ import annotations

from pathlib import Path

import bench
import models

REPO = Path(__file__).resolve().parents[1]


def test_bench_and_models_import_from_this_repo() -> None:
    assert Path(bench.__file__).resolve().parent == REPO / "bench"
    assert Path(models.__file__).resolve().parent == REPO / "models"


def test_models_does_not_import_the_harness() -> None:
    offenders = [p.name for p in (REPO / "models").glob("*.py")
                 if "import bench" in p.read_text() or "from bench" in p.read_text()]
    assert offenders == []
