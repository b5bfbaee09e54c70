"""``invbench report``: golden tables from a hand-made fixture store, plots, HTML, statuses, best marking.

The fixtures ``tests/fixtures/run-small`` (row schema 1, read through :mod:`bench.run.legacy`) and
``tests/fixtures/run-small-v2`` (the same rows in schema 2, then rows of metrics that exist in schema 2 only) are
hand-made (``tests/fixtures/make_run_small.py``); their numbers were chosen, not measured. The report generated
from the schema-2 store is compared with the golden files in ``tests/fixtures/golden/`` (README.md, rows.csv,
leaderboard.csv, references.csv, tables/*.csv, tables/tables.tex).

To regenerate the goldens after an intended change to the report format::

    INVBENCH_UPDATE_GOLDEN=1 pytest tests/test_report.py -k golden

That run rewrites the golden files and then fails on purpose (so it can never pass unseen); review
``git diff tests/fixtures/golden`` and run the tests again without the variable.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bench.cli import main
from bench.flops import COUNTER, COUNTS
from bench.report.annotate import report_tables
from bench.report.plots import PLOT_KINDS, grid_of, tile
from bench.report.references import (
    REFERENCE_STATUSES,
    REFERENCES,
    STATUS_NOTE,
    Reference,
    match_references,
    reference_records,
)
from bench.report.tables import build_tables, family_of, frame, load_store, seed_stats, to_latex, to_markdown
from bench.run.legacy import upgrade
from bench.run.rundir import Row, append_rows

FIXTURES = Path(__file__).parent / "fixtures"
RUN = FIXTURES / "run-small"
RUN_V2 = FIXTURES / "run-small-v2"
GOLDEN = FIXTURES / "golden"
UPDATE = os.environ.get("INVBENCH_UPDATE_GOLDEN") == "1"


def golden_files(report: Path) -> list[str]:
    """The report files held against goldens (relative paths); every per-table CSV included."""
    tables = sorted(p.relative_to(report).as_posix() for p in (report / "tables").glob("*.csv"))
    return ["README.md", "rows.csv", "leaderboard.csv", "references.csv", "tables/tables.tex", *tables]


def _make_report(tmp: Path, rows_from: Path) -> Path:
    """The report of a copy of the fixture store (artifacts and run.json of ``run-small``, results.jsonl of
    ``rows_from``) named ``run-small``, made through the CLI from the copy's parent folder (relative paths, so the
    README's regenerate command is the same on every machine)."""
    shutil.copytree(RUN, tmp / "run-small")
    shutil.copyfile(rows_from / "results.jsonl", tmp / "run-small" / "results.jsonl")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(tmp)
        assert main(["report", "run-small", "-o", "report"]) == 0
    return tmp / "report"


@pytest.fixture(scope="module")
def report() -> Iterator[Path]:
    """The report of the schema-2 fixture store."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        yield _make_report(Path(tmp), RUN_V2)


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


def test_schema1_rows_upgrade_to_the_schema2_rows(tmp_path: Path) -> None:
    """The legacy upgrade of every schema-1 fixture row gives the row the generator wrote in schema 2 (the first
    212 of them; the rest are of metrics that schema 1 never held), and the schema-1 store makes a report whose
    tables are those of the schema-2 report without the schema-2-only rows."""
    old, new = load_store(RUN), load_store(RUN_V2)
    assert len(old.rows) == 212 and len(new.rows) > 212
    assert [asdict(r) for r in old.rows] == [asdict(r) for r in new.rows[:212]]
    assert {r.schema for r in new.rows} == {2}
    assert '"higher_is_better"' in (RUN / "results.jsonl").read_text().splitlines()[0]
    v1 = _make_report(tmp_path, RUN)
    shutil.rmtree(tmp_path / "run-small")
    append_rows(tmp_path / "first" / "results.jsonl", new.rows[:212])
    shutil.copyfile(RUN / "run.json", tmp_path / "first" / "run.json")
    first = tmp_path / "first-report"
    assert main(["report", str(tmp_path / "first"), "-o", str(first)]) == 0
    for name in golden_files(v1):
        if name != "README.md":
            assert (v1 / name).read_text(encoding="utf-8") == (first / name).read_text(encoding="utf-8"), name


@pytest.mark.parametrize(("name", "fields"), [
    ("test_nll", {"metric": "test_nll", "input": "", "variant": "", "settings": {}}),
    ("lip_forward@noise", {"metric": "lip_forward", "input": "noise", "variant": "", "settings": {}}),
    ("lip_inverse@noise+reg", {"metric": "lip_inverse", "input": "noise", "variant": "reg", "settings": {}}),
    ("lip_inverse+reg@ood", {"metric": "lip_inverse", "input": "ood", "variant": "reg", "settings": {}}),
    ("logdet_bias[terms=5,probes=1]", {"metric": "logdet_bias", "input": "", "variant": "",
                                       "settings": {"terms": 5, "probes": 1}}),
    ("logdet_cost[terms=5,tol=1e-05,kind=roulette]",
     {"metric": "logdet_cost", "settings": {"terms": 5, "tol": 1e-5, "kind": "roulette"}}),
])
def test_legacy_upgrade_reads_schema1_names_apart(name: str, fields: dict[str, Any]) -> None:
    old = {"run_id": "r", "suite": "s", "model": "m", "task": "t", "dataset": "d", "seed": 0, "metric": name,
           "value": 1.0, "unit": "", "higher_is_better": False, "status": "ok"}
    new = upgrade(old)
    assert {k: new[k] for k in fields} == fields
    assert new["schema"] == 2 and "higher_is_better" not in new and old["metric"] == name
    assert new["direction"] == ("zero" if fields["metric"] == "logdet_bias" else "down")
    assert upgrade({**old, "higher_is_better": True})["direction"] in ("up", "zero")
    assert upgrade({**old, "higher_is_better": None, "metric": "train_time"})["direction"] is None


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


def _rows(spec: list[tuple[str, str, list[float | None], list[str], str | None]], **fields: Any) -> list[Row]:
    """Rows from (model, metric, values per seed, statuses per seed, direction) on one task/dataset; ``fields``
    (input, variant, settings) apply to all of them."""
    out = []
    for model, metric, values, statuses, direction in spec:
        for seed, (value, status) in enumerate(zip(values, statuses, strict=True)):
            out.append(Row("r", "s", model, "t", "d", seed, metric, value if status == "ok" else None, "u", direction,
                           status, **fields))
    return out


def test_cells_are_mean_std_and_counts_and_no_model_is_dropped() -> None:
    rows = _rows([
        ("a-x", "m", [1.0, 2.0, 3.0], ["ok"] * 3, "down"),
        ("b-x", "m", [5.0, None, None], ["ok", "diverged", "error"], "down"),
        ("c-x", "m", [None, None, None], ["unsupported"] * 3, "down"),
        ("d-x", "m", [None, None, None], ["diverged", "diverged", "timeout"], "down"),
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


def test_seed_statistics_by_pandas_match_a_hand_computation() -> None:
    values = [0.3, 1.7, -2.2, 4.05]
    rows = _rows([("a-x", "m", [*values, None], ["ok"] * 4 + ["error"], "up"),
                  ("b-x", "m", [1.0, float("nan")], ["ok", "ok"], "up"),
                  ("c-x", "m", [1.0, float("inf")], ["ok", "ok"], "up")])
    stats = seed_stats(frame(rows), ("model", "metric")).to_dict("index")
    a = stats[("a-x", "m")]
    mean = sum(values) / 4
    assert a["mean"] == pytest.approx(mean, rel=1e-15)
    assert a["std"] == pytest.approx((sum((v - mean) ** 2 for v in values) / 3) ** 0.5, rel=1e-15)
    assert (a["n_ok"], a["n_total"], a["status:ok"], a["status:error"]) == (4, 5, 4, 1)
    assert np.isnan(stats[("b-x", "m")]["mean"]), "a nan value is not skipped"
    assert stats[("c-x", "m")]["mean"] == float("inf") and np.isnan(stats[("c-x", "m")]["std"])


@pytest.mark.parametrize(("direction", "best_model", "header"), [
    ("up", "hi-x", "| model | q (u) ↑ |"), ("down", "lo-x", "| model | q (u) ↓ |"), (None, None, "| model | q (u) |"),
    ("zero", "zero-x", r"| model | q (u) \|·\| ↓ |"),
])
def test_best_is_marked_by_direction(direction: str | None, best_model: str | None, header: str) -> None:
    rows = _rows([
        ("hi-x", "q", [3.0, 3.2], ["ok", "ok"], direction),
        ("lo-x", "q", [-2.0, -2.2], ["ok", "ok"], direction),
        ("zero-x", "q", [0.1, -0.05], ["ok", "ok"], direction),
        ("failed-x", "q", [None, None], ["error", "error"], direction),
    ])
    (table,) = build_tables(rows)
    assert {row.model for row, _ in table.best} == ({best_model} if best_model else set())
    md = to_markdown(table)
    bold = [ln for ln in md.splitlines() if "**" in ln]
    assert [ln.split(" | ")[0][2:] for ln in bold] == ([best_model] if best_model else [])
    assert md.splitlines()[0] == header


def test_best_is_chosen_within_the_same_input_and_settings() -> None:
    rows = [*_rows([("a-x", "lip", [1.0], ["ok"], "down"), ("b-x", "lip", [2.0], ["ok"], "down")], input="test"),
            *_rows([("a-x", "lip", [9.0], ["ok"], "down"), ("b-x", "lip", [5.0], ["ok"], "down")], input="ood"),
            *_rows([("a-x", "lip", [4.0], ["ok"], "down")], input="ood", variant="reg"),
            *_rows([("a-x", "lip", [7.0], ["ok"], "down")], input="ood", settings={"k": 1})]
    (table,) = build_tables(rows)
    assert table.index_names() == ["model", "input", "settings"]
    assert sorted((r.label, r.input, r.settings) for r, _ in table.best) == [("a-x", "test", ""),
                                                                           ("a-x+reg", "ood", "")]
    assert [(r.label, r.input, r.settings) for r in table.rows] == [
        ("a-x", "test", ""), ("a-x", "ood", ""), ("a-x", "ood", "k=1"), ("a-x+reg", "ood", ""),
        ("b-x", "test", ""), ("b-x", "ood", "")]


def test_untrained_models_are_labelled_in_every_table_of_their_data_set(tmp_path: Path) -> None:
    """``train_steps`` 0 (a budget of ``steps = 0``) labels the model ``(untrained)`` on that data set only."""
    rows = [Row("r", "s", m, "likelihood", d, seed, metric, v, "", None)
            for m, d, steps in (("iresnet-native", "moons", 0.0), ("iresnet-native", "digits", 50.0),
                                ("glow-freia", "moons", 50.0))
            for seed in (0, 1)
            for metric, v in (("train_steps", steps), ("test_nll", 1.0 + steps / 100))]
    rows += [Row("r", "s", "iresnet-native", "stability", "moons", 0, "lip_forward", 2.0, "", None, input="test")]
    labels = {(t.task, t.dataset): [r.label for r in t.rows] for t in build_tables(rows)}
    assert labels[("likelihood", "moons")] == ["glow-freia", "iresnet-native (untrained)"]
    assert labels[("stability", "moons")] == ["iresnet-native (untrained)"]
    assert labels[("likelihood", "digits")] == ["iresnet-native"]
    append_rows(tmp_path / "run" / "results.jsonl", rows)
    assert main(["report", str(tmp_path / "run"), "-o", str(tmp_path / "rep")]) == 0
    readme = (tmp_path / "rep" / "README.md").read_text(encoding="utf-8")
    assert "| iresnet-native (untrained) | 0 ± 0 (2/2) | 1 ± 0 (2/2) |" in readme
    assert "(untrained): measured as initialised" in readme
    summary = (tmp_path / "rep" / "tables" / "likelihood__moons.csv").read_text(encoding="utf-8")
    assert "likelihood,moons,iresnet-native,,true," in summary and "likelihood,moons,glow-freia,,false," in summary
    assert "(untrained)" not in (GOLDEN / "README.md").read_text(encoding="utf-8")


def test_torn_and_unreadable_lines_are_counted_and_warned_about(tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    """A torn last line (a kill mid-write) and a line that is not a row are left out with one warning line."""
    run = tmp_path / "run"
    rows = _rows([("a-x", "m", [1.0, 2.0], ["ok", "ok"], "down")])
    append_rows(run / "results.jsonl", rows)
    with open(run / "results.jsonl", "a", encoding="utf-8") as fh:
        fh.write(json.dumps({"not": "a row"}) + "\n")
        fh.write(rows[0].to_json()[:40])  # torn: no closing brace, no newline
    store = load_store(run)
    assert (store.read.torn, store.read.invalid, len(store.rows)) == (1, 1, 2)
    assert main(["report", str(run), "-o", str(tmp_path / "rep")]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "warning: 2 torn or unreadable line(s)" in err[0]
    readme = (tmp_path / "rep" / "README.md").read_text(encoding="utf-8")
    assert "2 line(s) of results.jsonl could not be read and are left out: 1 torn (not JSON), 1 not a row." in readme
    assert "| a-x | 1.5 ± 0.71 (2/2) |" in readme
    assert main(["report", str(RUN), "-o", str(tmp_path / "rep2")]) == 0
    assert capsys.readouterr().err == "", "a store read whole gives no warning"


def test_family_from_name_or_run_record() -> None:
    assert family_of("iresnet-native") == "iresnet"
    assert family_of("realnvp-nflows") == "realnvp"
    assert family_of("my_pkg.flows:MyFlow") == "myflow"
    assert family_of("odd-thing", {"models": {"odd-thing": {"family": "glow"}}}) == "glow"


def test_references_place_the_paper_beside_the_measured_value() -> None:
    rows = [Row("r", "s", "iresnet-native", "inverse_cost", "moons", 0, "inverse_fwd_units", 12.0, "fwd passes",
                "down"),
            Row("r", "s", "iresnet-freia", "inverse_cost", "moons", 0, "inverse_fwd_units", 6.0, "fwd passes", "down"),
            Row("r", "s", "resflow-native", "inverse_cost", "moons", 0, "inverse_fwd_units", 3.0, "fwd passes",
                "down"),
            Row("r", "s", "iresnet-freia", "inverse_cost", "moons", 0, "inverse_fwd_units", 2.0, "fwd passes", "down",
                input="noise"),
            Row("r", "s", "iresnet-native", "inverse_cost", "moons", 0, "inverse_fwd_units", 30.0, "fwd passes",
                "down", settings={"tol": 1e-8}),
            Row("r", "s", "glow-freia", "likelihood", "CIFAR-10", 0, "test_bpd", 3.5, "bits/dim", "down"),
            Row("r", "s", "glow-freia", "likelihood", "CIFAR-10", 0, "test_bpd", 9.0, "bits/dim", "down",
                variant="reg")]
    ref_cost = Reference("cost", "iresnet", None, "inverse_fwd_units", "5-10", "src", "[checked]", low=5, high=10)
    ref_bpd = Reference("bpd", "glow", "cifar10", "test_bpd", "3.35", "src", "[secondary]", value=3.35)
    ref_none = Reference("bpd", "realnvp", "cifar10", "test_bpd", "3.49", "src", "[not found]", value=3.49)
    recs = reference_records(match_references(rows, None, [ref_cost, ref_bpd, ref_none]))
    by = {(r["claim"], r["measured_by"]): r for r in recs}
    assert by[("cost", "iresnet-native / moons")]["verdict"] == "above 5-10"
    assert by[("cost", "iresnet-freia / moons")]["verdict"] == "inside", "noise-input rows are not held against it"
    assert by[("cost", "iresnet-native / moons [tol=1e-08]")]["measured"] == "30 (1/1)"
    assert ("cost", "resflow-native / moons") not in by, "another family must not be held against the claim"
    bpd = by[("bpd", "glow-freia / CIFAR-10")]
    assert bpd["paper"] == "3.35" and bpd["status"] == "[secondary]" and bpd["verdict"].startswith("+0.15")
    assert by[("bpd", "—")]["measured"] == "not measured in this run"
    assert by[("bpd", "—")]["paper"] == "3.49 (unverified: not found in a readable source)"


def test_reference_statuses_are_the_checked_ones_and_explained(report: Path) -> None:
    """Statuses and sources as checked on 2026-12-01 (DESIGN.md, "Reference numbers")."""
    assert {r.status for r in REFERENCES} == set(REFERENCE_STATUSES)
    assert all(status in STATUS_NOTE for status in REFERENCE_STATUSES) and "2026-12-01" in STATUS_NOTE
    by: dict[tuple[str, str | None, str], Reference] = {(r.claim, r.dataset, r.text): r for r in REFERENCES}
    cost = {r.text: r for r in REFERENCES if r.claim == "i-ResNet inverse cost"}
    assert cost["5-10 forward passes"].status == "[checked]" and "talk" in cost["5-10 forward passes"].source
    arxiv = cost["5-20 forward passes"]
    assert arxiv.status == "[checked]" and "arXiv:1811.00995v1 abstract (2018)" in arxiv.source
    assert "not in the ICML 2019 paper" in arxiv.source
    assert by[("i-ResNet bits/dim", "mnist", "1.06")].status == "[secondary]"
    assert by[("i-ResNet bits/dim", "cifar10", "3.45")].status == "[secondary]"
    assert by[("Glow bits/dim", "cifar10", "3.35")].status == "[secondary]"
    assert "3.39" in by[("Glow bits/dim", "cifar10", "3.35")].note
    for dataset, text in (("mnist", "0.97"), ("cifar10", "3.28"), ("imagenet32", "4.01")):
        assert by[("Residual Flow bits/dim", dataset, text)].status == "[not found]"
    assert by[("RealNVP bits/dim", "cifar10", "3.49")].status == "[not found]"
    code = {r.claim: r for r in REFERENCES if r.status == "[code]"}
    assert "jhjacobsen/invertible-resnet" in code["i-ResNet density settings"].source
    assert "5 power-series terms, 1 Gaussian Hutchinson probe" in code["i-ResNet density settings"].text
    assert "rtqichen/residual-flows" in code["Residual Flow settings"].source
    assert "20 exact terms in evaluation" in code["Residual Flow settings"].text
    assert "atol = rtol = 1e-5" in code["Residual Flow settings"].text
    readme = (report / "README.md").read_text(encoding="utf-8")
    assert STATUS_NOTE in readme and "[to verify]" not in readme
    assert STATUS_NOTE in (report / "index.html").read_text(encoding="utf-8").replace("&#x27;", "'")


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
    append_rows(run / "results.jsonl", _rows([("a-x", "m", [1.0], ["ok"], "down")]))
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
    append_rows(tmp_path / "runs" / "quick-1" / "results.jsonl", _rows([("a-x", "m", [1.0], ["ok"], "down")]))
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


@pytest.mark.parametrize(("extra", "note"), [
    ({"counter": COUNTER, "batch": 4}, f"FLOPs counted by {COUNTER}: {COUNTS}."),
    ({"counter": "my.Counter", "counts": "every op"}, "FLOPs counted by my.Counter: every op."),
])
def test_the_flop_footnote_says_what_the_rows_counter_counts(extra: dict[str, Any], note: str) -> None:
    """Rows name their counter; the footnote under a FLOP table spells out what that counter counts (the
    :data:`bench.flops.COUNTS` text for ours, a row's own ``counts`` for another)."""
    rows = [Row("r", "s", "a-x", "cost", "moons", seed, "flops_forward", 10.0, "FLOPs/example", "down", extra=extra)
            for seed in (0, 1)]
    (table,) = report_tables(rows)
    assert table.footnotes == [note]
    assert note in to_markdown(table)
