"""``invbench report``: golden tables from a hand-made fixture store, plots, HTML, statuses, best marking.

The fixture ``tests/fixtures/run-small`` is hand-made (``tests/fixtures/make_run_small.py``); its numbers were
chosen, not measured. The report generated from it is compared with the golden files in
``tests/fixtures/golden/`` (README.md, rows.csv, references.csv, tables/*.csv, tables/tables.tex).

To regenerate the goldens after an intended change to the report format::

    INVBENCH_UPDATE_GOLDEN=1 pytest tests/test_report.py -k golden

That run rewrites the golden files and then fails on purpose (so it can never pass unseen); review
``git diff tests/fixtures/golden`` and run the tests again without the variable.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from bench.cli import main
from bench.report.plots import PLOT_KINDS, grid_of, tile
from bench.report.references import Reference, match_references, reference_records
from bench.report.tables import MetricName, build_tables, family_of, load_store, to_latex, to_markdown
from bench.run.rundir import Row, append_rows

FIXTURES = Path(__file__).parent / "fixtures"
RUN = FIXTURES / "run-small"
GOLDEN = FIXTURES / "golden"
UPDATE = os.environ.get("INVBENCH_UPDATE_GOLDEN") == "1"


def golden_files(report: Path) -> list[str]:
    """The report files held against goldens (relative paths); every per-table CSV included."""
    tables = sorted(p.relative_to(report).as_posix() for p in (report / "tables").glob("*.csv"))
    return ["README.md", "rows.csv", "references.csv", "tables/tables.tex", *tables]


@pytest.fixture(scope="module")
def report() -> Iterator[Path]:
    """The report of a copy of the fixture store, made through the CLI from the copy's parent folder
    (relative paths, so the README's regenerate command is the same on every machine)."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        shutil.copytree(RUN, Path(tmp) / "run-small")
        with pytest.MonkeyPatch.context() as mp:
            mp.chdir(tmp)
            assert main(["report", "run-small", "-o", "report"]) == 0
        yield Path(tmp) / "report"


def test_report_matches_golden(report: Path) -> None:
    names = golden_files(report)
    if UPDATE:
        shutil.rmtree(GOLDEN, ignore_errors=True)
        for name in names:
            (GOLDEN / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(report / name, GOLDEN / name)
        pytest.fail("golden files rewritten from the fixture; review `git diff tests/fixtures/golden` and rerun "
                    "without INVBENCH_UPDATE_GOLDEN")
    expected = sorted(p.relative_to(GOLDEN).as_posix() for p in GOLDEN.rglob("*") if p.is_file())
    assert sorted(names) == expected, "the set of tables differs from the goldens"
    differ = [n for n in names if (report / n).read_text(encoding="utf-8") != (GOLDEN / n).read_text(encoding="utf-8")]
    if differ:
        import difflib

        first = differ[0]
        diff = "".join(difflib.unified_diff((GOLDEN / first).read_text(encoding="utf-8").splitlines(True),
                                            (report / first).read_text(encoding="utf-8").splitlines(True),
                                            "golden/" + first, "generated/" + first, n=1))
        pytest.fail(f"generated files differ from the goldens: {differ}\n{diff[:4000]}")


def test_readme_has_regenerate_command_and_run_record(report: Path) -> None:
    readme = (report / "README.md").read_text(encoding="utf-8")
    assert "invbench report run-small -o report" in readme
    assert "| git.commit | 0123456789abcdef0123456789abcdef01234567 |" in readme
    assert "| device | cpu |" in readme
    assert "| versions.torch | 2.13.0 |" in readme


def test_every_image_the_pages_name_exists_and_every_plot_kind_is_drawn(report: Path) -> None:
    page = (report / "index.html").read_text(encoding="utf-8")
    srcs = re.findall(r'<img src="([^"]+)"', page)
    readme_srcs = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", (report / "README.md").read_text(encoding="utf-8"))
    assert srcs and sorted(srcs) == sorted(readme_srcs)
    for src in srcs:
        assert not src.startswith("/") and "://" not in src, "images must be referenced by relative path"
        data = (report / src).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n", src
    drawn = {Path(s).name.split("__")[0] for s in srcs}
    assert drawn == set(PLOT_KINDS), "the fixture should exercise every plot kind"
    assert "Not drawn" not in page


def test_failed_cells_appear_with_their_status(report: Path) -> None:
    readme = (report / "README.md").read_text(encoding="utf-8")
    expected = {
        "realnvp-nflows": "error 1/1",  # likelihood on digits
        "nice-freia": "1.4 (1/2); diverged 1/2",  # likelihood on moons
        "revnet-native": "unsupported",
        "glow-freia": "oom 1/2",  # cost
        "resflow-native": "not_converged 1/2",  # inverse cost
    }
    for model, text in expected.items():
        assert any(line.startswith(f"| {model} |") and text in line for line in readme.splitlines()), model


def _rows(spec: list[tuple[str, str, list[float | None], list[str], bool | None]]) -> list[Row]:
    """Rows from (model, metric, values per seed, statuses per seed, higher_is_better) on one task/dataset."""
    out = []
    for model, metric, values, statuses, hib in spec:
        for seed, (value, status) in enumerate(zip(values, statuses, strict=True)):
            out.append(Row("r", "s", model, "t", "d", seed, metric, value if status == "ok" else None, "u", hib,
                           status))
    return out


def test_cells_are_mean_std_and_counts_and_no_model_is_dropped() -> None:
    rows = _rows([
        ("a-x", "m", [1.0, 2.0, 3.0], ["ok"] * 3, False),
        ("b-x", "m", [5.0, None, None], ["ok", "diverged", "error"], False),
        ("c-x", "m", [None, None, None], ["unsupported"] * 3, False),
        ("d-x", "m", [None, None, None], ["diverged", "diverged", "timeout"], False),
    ])
    (table,) = build_tables(rows)
    md = to_markdown(table)
    lines = [ln for ln in md.splitlines() if ln.startswith("| ") and "-x" in ln]
    assert [ln.split(" | ")[0][2:] for ln in lines] == ["a-x", "b-x", "c-x", "d-x"]
    assert "| a-x | **2 ± 1** (3/3) |" in md
    assert "| b-x | 5 (1/3); diverged 1/3, error 1/3 |" in md
    assert "| c-x | unsupported |" in md
    assert "| d-x | diverged 2/3, timeout 1/3 |" in md
    assert r"\textbf{2 $\pm$ 1} (3/3)" in to_latex(table)


@pytest.mark.parametrize(("hib", "metric", "best_model"), [
    (True, "acc", "hi-x"), (False, "nll", "lo-x"), (None, "train_time", None), (None, "logdet_bias", "zero-x"),
])
def test_best_is_marked_by_direction(hib: bool | None, metric: str, best_model: str | None) -> None:
    rows = _rows([
        ("hi-x", metric, [3.0, 3.2], ["ok", "ok"], hib),
        ("lo-x", metric, [-2.0, -2.2], ["ok", "ok"], hib),
        ("zero-x", metric, [0.1, -0.05], ["ok", "ok"], hib),
        ("failed-x", metric, [None, None], ["error", "error"], hib),
    ])
    (table,) = build_tables(rows)
    assert {key[0] for key, _ in table.best} == ({best_model} if best_model else set())
    bold = [ln for ln in to_markdown(table).splitlines() if "**" in ln]
    assert [ln.split(" | ")[0][2:] for ln in bold] == ([best_model] if best_model else [])


def test_best_is_chosen_within_the_same_input_and_settings() -> None:
    rows = _rows([
        ("a-x", "lip@test", [1.0], ["ok"], False), ("b-x", "lip@test", [2.0], ["ok"], False),
        ("a-x", "lip@ood", [9.0], ["ok"], False), ("b-x", "lip@ood", [5.0], ["ok"], False),
        ("a-x", "lip@ood+reg", [4.0], ["ok"], False),
    ])
    (table,) = build_tables(rows)
    assert table.index_names() == ["model", "input"]
    assert sorted(table.best) == sorted([(("a-x", "test", ""), "lip"), (("a-x+reg", "ood", ""), "lip")])


@pytest.mark.parametrize(("name", "parsed"), [
    ("test_nll", MetricName("test_nll")),
    ("lip_forward@noise", MetricName("lip_forward", condition="noise")),
    ("lip_inverse@noise+reg", MetricName("lip_inverse", condition="noise", variant="reg")),
    ("lip_inverse+reg@ood", MetricName("lip_inverse", condition="ood", variant="reg")),
    ("logdet_bias[terms=5,probes=1]", MetricName("logdet_bias", settings="terms=5,probes=1")),
])
def test_metric_names_parse(name: str, parsed: MetricName) -> None:
    assert MetricName.parse(name) == parsed


def test_family_from_name_or_run_record() -> None:
    assert family_of("iresnet-native") == "iresnet"
    assert family_of("realnvp-nflows") == "realnvp"
    assert family_of("my_pkg.flows:MyFlow") == "myflow"
    assert family_of("odd-thing", {"models": {"odd-thing": {"family": "glow"}}}) == "glow"


def test_references_place_the_paper_beside_the_measured_value() -> None:
    rows = [Row("r", "s", "iresnet-native", "inverse_cost", "moons", 0, "inverse_fwd_units", 12.0, "fwd passes",
                False),
            Row("r", "s", "iresnet-freia", "inverse_cost", "moons", 0, "inverse_fwd_units", 6.0, "fwd passes", False),
            Row("r", "s", "resflow-native", "inverse_cost", "moons", 0, "inverse_fwd_units", 3.0, "fwd passes", False),
            Row("r", "s", "glow-freia", "likelihood", "CIFAR-10", 0, "test_bpd", 3.5, "bits/dim", False)]
    ref_cost = Reference("cost", "iresnet", None, "inverse_fwd_units", "5-10", "src", "[checked]", low=5, high=10)
    ref_bpd = Reference("bpd", "glow", "cifar10", "test_bpd", "3.35", "src", "[to verify]", value=3.35)
    ref_none = Reference("bpd", "realnvp", "cifar10", "test_bpd", "3.49", "src", "[to verify]", value=3.49)
    recs = reference_records(match_references(rows, None, [ref_cost, ref_bpd, ref_none]))
    by = {(r["claim"], r["measured_by"]): r for r in recs}
    assert by[("cost", "iresnet-native / moons")]["verdict"] == "above 5-10"
    assert by[("cost", "iresnet-freia / moons")]["verdict"] == "inside"
    assert ("cost", "resflow-native / moons") not in by, "another family must not be held against the claim"
    bpd = by[("bpd", "glow-freia / CIFAR-10")]
    assert bpd["paper"] == "3.35" and bpd["status"] == "[to verify]" and bpd["verdict"].startswith("+0.15")
    assert by[("bpd", "—")]["measured"] == "not measured in this run"


def test_density_grid_layouts_agree() -> None:
    x, y = np.linspace(-1, 1, 5), np.linspace(0, 2, 3)
    X, Y = np.meshgrid(x, y)
    logp = X + 10 * Y  # (3, 5), logp[j, i] at (x[i], y[j])
    layouts = [(x, y, logp), (x, y, logp.T), (X, Y, logp), (X.ravel()[::-1], Y.ravel()[::-1], logp.ravel()[::-1])]
    for lx, ly, lp in layouts:
        gx, gy, gp = grid_of(lx, ly, lp)
        assert gx.shape == gy.shape == gp.shape
        np.testing.assert_allclose(gp, gx + 10 * gy)
    with pytest.raises(ValueError, match="unrecognised"):
        grid_of(x, y, np.zeros((4, 4)))


def test_tile_places_every_image() -> None:
    imgs = np.zeros((5, 1, 2, 2))
    for i in range(5):
        imgs[i] = i / 4
    out = tile(imgs, pad=1)
    assert out.shape == (2 * 3 - 1, 3 * 3 - 1)
    assert out[0:2, 3:5].max() == pytest.approx(0.25) and out[3:5, 3:5].min() == pytest.approx(1.0)


def test_missing_data_is_noted_not_drawn(tmp_path: Path) -> None:
    run = tmp_path / "bare"
    append_rows(run / "results.jsonl", _rows([("a-x", "m", [1.0], ["ok"], False)]))
    assert main(["report", str(run / "results.jsonl"), "-o", str(tmp_path / "rep")]) == 0
    readme = (tmp_path / "rep" / "README.md").read_text(encoding="utf-8")
    assert "No run.json beside the results." in readme
    for kind in PLOT_KINDS:
        assert f"- {kind}: no data" in readme
    assert not list((tmp_path / "rep").rglob("*.png"))
    assert "<img" not in (tmp_path / "rep" / "index.html").read_text(encoding="utf-8")


def test_a_missing_artifact_is_noted_and_the_rest_drawn(tmp_path: Path) -> None:
    shutil.copytree(RUN, tmp_path / "run")
    gone = "artifacts/likelihood/realnvp-nflows__moons__s0__density_grid.npz"
    (tmp_path / "run" / gone).unlink()
    assert main(["report", str(tmp_path / "run"), "-o", str(tmp_path / "rep")]) == 0
    readme = (tmp_path / "rep" / "README.md").read_text(encoding="utf-8")
    assert f"- density: artifact {gone} (realnvp-nflows, moons) not found" in readme
    assert (tmp_path / "rep" / "plots" / "density__moons.png").is_file()


def test_default_report_folder_and_missing_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    append_rows(tmp_path / "runs" / "quick-1" / "results.jsonl", _rows([("a-x", "m", [1.0], ["ok"], False)]))
    assert load_store("runs/quick-1").name == "quick-1"
    assert main(["report", "runs/quick-1"]) == 0
    assert (tmp_path / "reports" / "quick-1" / "index.html").is_file()
    assert main(["report", "runs/nothing-here"]) == 2
    assert "no results store" in capsys.readouterr().err


def test_readme_names_the_run_command_from_the_run_record(tmp_path: Path) -> None:
    import json
    import shutil

    from bench.report.writer import write_report

    run = tmp_path / "run"
    shutil.copytree(RUN, run)
    record = json.loads((run / "run.json").read_text())
    record["command"] = ["invbench", "run", "--suite", "quick", "--out", "runs/q"]
    (run / "run.json").write_text(json.dumps(record))
    text = (write_report(run, tmp_path / "report") / "README.md").read_text()
    assert "Results from:\n\n```\ninvbench run --suite quick --out runs/q\n```" in text
    assert "Regenerate this report with:" in text


def test_readme_names_every_session_of_a_resumed_run(tmp_path: Path) -> None:
    import json
    import shutil

    from bench.report.writer import write_report

    run = tmp_path / "run"
    shutil.copytree(RUN, run)
    record = json.loads((run / "run.json").read_text())
    first = ["invbench", "run", "--tasks", "likelihood", "--out", "runs/q"]
    second = ["invbench", "run", "--tasks", "cost", "--out", "runs/q", "--resume"]
    record["command"] = first
    record["sessions"] = [{"command": first}, {"command": second}]
    (run / "run.json").write_text(json.dumps(record))
    text = (write_report(run, tmp_path / "report") / "README.md").read_text()
    assert ("```\ninvbench run --tasks likelihood --out runs/q\n"
            "invbench run --tasks cost --out runs/q --resume\n```") in text
