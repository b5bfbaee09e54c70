"""Suite expectations (``[[expect]]``): validation at load, the round trip through run.json, and the report's
findings table (every verdict, on a synthetic store)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.expectations import Expectation
from bench.report.findings import (
    NOT_MEASURED,
    NOT_REPRODUCED,
    NOT_RUN,
    REPRODUCED,
    build_findings,
    expectations_from_record,
    expected_text,
    to_markdown,
)
from bench.report.writer import write_report
from bench.run.rundir import Row
from bench.run.runner import _suite_record
from bench.suite import Known, Suite, SuiteError, load_suite

KNOWN = Known(models=lambda: ["glow-native", "glow-freia", "iresnet-native"],
              tasks=lambda: ["likelihood", "stability"], datasets=lambda: ["digits", "moons"])

HEAD = """
models = ["glow-native", "iresnet-native"]
datasets = ["digits", "moons"]
tasks = ["likelihood", "stability"]
"""

EXPECT = """
[[expect]]
claim = "affine coupling explodes on uniform noise"
source = "Behrmann et al., AISTATS 2021"
model = "glow-native"
dataset = "digits"
task = "stability"
metric = "nonfinite_frac"
input = "uniform"
when = "any"
op = ">"
value = 0
"""


def load_text(tmp_path: Path, text: str) -> Suite:
    path = tmp_path / "s.toml"
    path.write_text(text, encoding="utf-8")
    return load_suite(str(path), KNOWN)


def test_expectations_parse_with_defaults(tmp_path: Path) -> None:
    extra = """
[[expect]]
claim = "i-ResNet stays finite"
source = "Behrmann et al., ICML 2019"
model = "iresnet-native"
dataset = "moons"
task = "stability"
metric = "lip_inverse"
op = "<="
value = 10.5
"""
    suite = load_text(tmp_path, HEAD + EXPECT + extra)
    first, second = suite.expectations
    assert first == Expectation(claim="affine coupling explodes on uniform noise",
                                source="Behrmann et al., AISTATS 2021", model="glow-native", dataset="digits",
                                task="stability", metric="nonfinite_frac", op=">", value=0.0, input="uniform",
                                when="any")
    assert (second.when, second.input, second.variant, second.value) == ("final", "", "", 10.5)


def test_a_suite_without_expectations_has_none(tmp_path: Path) -> None:
    assert load_text(tmp_path, HEAD).expectations == ()


def _with(line_from: str, line_to: str) -> str:
    assert line_from in EXPECT
    return HEAD + EXPECT.replace(line_from, line_to)


@pytest.mark.parametrize(("text", "pieces"), [
    (_with('value = 0', 'valeu = 0'), ["expect[0].valeu", "unknown field", "did you mean value"]),
    (_with('input = "uniform"', 'inptu = "uniform"'), ["expect[0].inptu", "did you mean input"]),
    (_with('op = ">"', 'op = "=>"'), ["expect[0].op", "'=>'", "> >= < <= =="]),
    (_with('when = "any"', 'when = "anny"'), ["expect[0].when", "did you mean any"]),
    (_with('model = "glow-native"', 'model = "glow-natve"'), ["expect[0].model", "not one of the suite's models",
                                                              "did you mean glow-native"]),
    # a registered model that the suite does not run
    (_with('model = "glow-native"', 'model = "glow-freia"'), ["expect[0].model", "'glow-freia'"]),
    (_with('dataset = "digits"', 'dataset = "digit"'), ["expect[0].dataset", "did you mean digits"]),
    (_with('task = "stability"', 'task = "stabilty"'), ["expect[0].task", "did you mean stability"]),
    (_with('metric = "nonfinite_frac"', 'metric = "nonfinite_fraction"'),
     ["expect[0].metric", "not a metric of task stability", "did you mean nonfinite_frac"]),
    (_with('value = 0', 'value = inf'), ["expect[0].value", "finite"]),
    (_with('value = 0', 'value = nan'), ["expect[0].value", "finite"]),
    (_with('value = 0', 'value = "0"'), ["expect[0].value", "a number"]),
    (_with('value = 0', 'value = true'), ["expect[0].value", "a number"]),
    (_with('value = 0\n', ''), ["expect[0].value", "missing"]),
    (_with('source = "Behrmann et al., AISTATS 2021"\n', ''), ["expect[0].source", "missing"]),
    (_with('claim = "affine coupling explodes on uniform noise"', 'claim = " "'), ["expect[0].claim", "empty"]),
    (_with('metric = "nonfinite_frac"', 'metric = 3'), ["expect[0].metric", "a string"]),
])
def test_expectation_errors_are_one_line(tmp_path: Path, text: str, pieces: list[str]) -> None:
    with pytest.raises(SuiteError) as err:
        load_text(tmp_path, text)
    message = str(err.value)
    assert "\n" not in message and message.startswith("suite s.toml: ")
    for piece in pieces:
        assert piece in message, message


def test_expectation_task_must_run_on_its_dataset(tmp_path: Path) -> None:
    text = HEAD.replace('datasets = ["digits", "moons"]\n', "") + EXPECT.replace('[[expect]]', """
[datasets.moons]
[datasets.digits]
tasks = ["likelihood"]

[[expect]]""", 1)
    with pytest.raises(SuiteError, match=r"expect\[0\]\.task: 'stability' does not run on digits"):
        load_text(tmp_path, text)


def test_expectations_round_trip_through_the_run_record(tmp_path: Path) -> None:
    suite = load_text(tmp_path, HEAD + EXPECT)
    config = json.loads(json.dumps(_suite_record(suite)))  # as run.json stores it
    record = {"suite_config": {"expectations": []}, "sessions": [{"suite_config": {}}, {"suite_config": config}]}
    assert tuple(expectations_from_record(record)) == suite.expectations
    assert expectations_from_record({}) == []


# ----------------------------------------------------------------------------------------------- findings
def _e(**kw: object) -> Expectation:
    base: dict[str, object] = dict(claim="c", source="src", model="glow-native", dataset="digits", task="exploding",
                                   metric="nonfinite_frac", input="uniform", op=">", value=0.0, when="any")
    return Expectation(**{**base, **kw})  # type: ignore[arg-type]


def _row(value: float | None, seed: int = 0, step: int | None = None, *, metric: str = "nonfinite_frac",
         input: str = "uniform", variant: str = "", model: str = "glow-native", status: str = "ok") -> Row:
    return Row(run_id="r", suite="s", model=model, task="exploding", dataset="digits", seed=seed, metric=metric,
               value=value, status=status if value is not None or status != "ok" else "error", input=input,
               variant=variant, settings={} if step is None else {"step": step})


def _series(seed: int, values: list[float | None], **kw: object) -> list[Row]:
    steps = [0, 100, 1000, 3000][:len(values)]
    return [_row(v, seed, s, **kw) for s, v in zip(steps, values, strict=True)]  # type: ignore[arg-type]


def _one(e: Expectation, rows: list[Row]) -> tuple[str, str]:
    (finding,) = build_findings(rows, [e])
    return finding.verdict, finding.measured


def test_any_reproduced_on_every_seed_with_the_extreme_and_trend() -> None:
    rows = _series(0, [0.0, 0.0, 0.1, 0.31]) + _series(1, [0.0, 0.2, 0.0, 0.0])
    verdict, measured = _one(_e(), rows)
    assert verdict == REPRODUCED
    assert measured == ("max 0.31 at step 3000 [0 → 0.31, steps 0–3000] (s0); "
                        "max 0.2 at step 100 [0 → 0, steps 0–3000] (s1)")


def test_mixed_and_not_reproduced() -> None:
    rows = _series(0, [0.0, 0.31]) + _series(1, [0.0, 0.0])
    assert _one(_e(), rows)[0] == f"{NOT_REPRODUCED} (mixed 1/2)"
    assert _one(_e(), _series(0, [0.0, 0.0]) + _series(1, [0.0, 0.0]))[0] == NOT_REPRODUCED


def test_all_needs_every_step_and_a_value_at_each() -> None:
    e = _e(when="all", op="==", value=0.0, metric="nonfinite_frac")
    assert _one(e, _series(0, [0.0, 0.0, 0.0]))[0] == REPRODUCED
    verdict, measured = _one(e, _series(0, [0.0, 0.5, 0.0]))
    assert verdict == NOT_REPRODUCED and measured.startswith("farthest 0.5 at step 100")
    verdict, measured = _one(e, _series(0, [0.0, None, 0.0]))
    assert verdict == NOT_REPRODUCED and "error at 1 step(s)" in measured


def test_final_judges_the_largest_step_and_a_stepless_row_as_final() -> None:
    e = _e(when="final", op="<", value=0.1, metric="memgrad_rel_err", input="")
    rows = [_row(0.5, 0, 0, metric="memgrad_rel_err", input=""), _row(0.05, 0, 3000, metric="memgrad_rel_err",
                                                                      input=""),
            _row(0.01, 0, 1000, metric="memgrad_rel_err", input="")]
    verdict, measured = _one(e, rows)
    assert verdict == REPRODUCED and measured.startswith("0.05 at step 3000 [0.5 → 0.05, steps 0–3000]")
    assert _one(e, [_row(0.2, 0, metric="memgrad_rel_err", input="")]) == (NOT_REPRODUCED, "0.2 (s0)")
    # the final checkpoint without a value does not hold, whatever came before
    rows[1] = _row(None, 0, 3000, metric="memgrad_rel_err", input="", status="timeout")
    assert _one(e, rows)[0] == NOT_REPRODUCED


def test_variant_and_input_select_rows() -> None:
    e = _e(metric="memgrad_rel_err", input="", variant="reg", op="<", value=0.1, when="final")
    rows = [_row(0.5, 0, 10, metric="memgrad_rel_err", input=""),
            _row(0.01, 0, 10, metric="memgrad_rel_err", input="", variant="reg")]
    assert _one(e, rows) == (REPRODUCED, "0.01 at step 10 (s0)")
    assert "variant reg" in expected_text(e)


def test_not_run_says_what_the_store_holds() -> None:
    rows = _series(0, [0.0, 0.3], input="gaussian")
    verdict, measured = _one(_e(input="unifrom"), rows)
    assert verdict == NOT_RUN
    assert "no rows with input=unifrom" in measured and "input=gaussian" in measured
    assert _one(_e(model="iresnet-native"), rows) == (NOT_RUN, "no rows of iresnet-native on digits (exploding)")


def test_not_measured_when_no_row_has_a_value() -> None:
    rows = [_row(None, 0, status="unsupported"), _row(None, 1, status="unsupported")]
    verdict, measured = _one(_e(), rows)
    assert verdict == NOT_MEASURED and measured == "no value: unsupported (s0); no value: unsupported (s1)"


def test_expected_text_and_markdown() -> None:
    e = _e(claim="affine | explodes")
    assert expected_text(e) == "glow-native on digits (exploding): nonfinite_frac (input uniform) > 0 at any checkpoint"
    md = to_markdown(build_findings(_series(0, [0.0, 0.3]), [e]))
    header, rule, line = md.strip().split("\n")
    assert header == "| claim | source | expected | measured | verdict |" and rule == "|---|---|---|---|---|"
    assert line.startswith(r"| affine \| explodes | src | glow-native on digits")
    assert line.endswith("| **reproduced** |")


# ----------------------------------------------------------------------------------------------- the report
def _store(tmp_path: Path, expectations: list[Expectation]) -> Path:
    run = tmp_path / "run"
    run.mkdir()
    rows = (_series(0, [0.0, 0.0, 0.1, 0.31]) + _series(1, [0.0, 0.2, 0.0, 0.0])
            + _series(0, [0.0, 0.0], input="test") + _series(1, [0.0, 0.0], input="test")
            + [_row(None, 0, model="iresnet-native", input="", status="unsupported")])
    (run / "results.jsonl").write_text("".join(r.to_json() + "\n" for r in rows), encoding="utf-8")
    from dataclasses import asdict

    config = {"name": "s", "expectations": [asdict(e) for e in expectations]}
    (run / "run.json").write_text(json.dumps({"run_id": "r", "suite": "s", "suite_config": config,
                                              "sessions": [{"suite_config": config}]}), encoding="utf-8")
    return run


def test_report_shows_findings_first_with_every_verdict(tmp_path: Path) -> None:
    expectations = [
        _e(claim="explodes on uniform"),                                    # reproduced on 2/2
        _e(claim="explodes on test", input="test"),                         # 0/2
        _e(claim="explodes by the end", when="final"),                      # s0 holds at 3000, s1 not
        _e(claim="i-ResNet measured", model="iresnet-native", input=""),    # unsupported
        _e(claim="on gaussian", input="gaussian"),                          # no rows
    ]
    out = write_report(_store(tmp_path, expectations), tmp_path / "report")
    readme = (out / "README.md").read_text(encoding="utf-8")
    assert "## Findings" in readme and readme.index("## Findings") < readme.index("## exploding")
    verdicts = {line.split(" | ")[0][2:]: line.rsplit(" | ", 1)[1].strip(" |*") for line in readme.splitlines()
                if line.startswith("| ") and " | src | " in line}
    assert verdicts == {"explodes on uniform": REPRODUCED, "explodes on test": NOT_REPRODUCED,
                        "explodes by the end": f"{NOT_REPRODUCED} (mixed 1/2)", "i-ResNet measured": NOT_MEASURED,
                        "on gaussian": NOT_RUN}
    page = (out / "index.html").read_text(encoding="utf-8")
    assert '<h2 id="findings">Findings</h2>' in page and '<a href="#findings">' in page
    assert page.index('id="findings"') < page.index('id="task-exploding"')
    assert '<td class="verdict not-reproduced">not reproduced (mixed 1/2)</td>' in page
    csv = (out / "findings.csv").read_text(encoding="utf-8").splitlines()
    assert len(csv) == 1 + len(expectations) and csv[0].startswith("claim,source,expected,measured,verdict")


def test_report_without_expectations_has_no_findings(tmp_path: Path) -> None:
    out = write_report(_store(tmp_path, []), tmp_path / "report")
    assert "## Findings" not in (out / "README.md").read_text(encoding="utf-8")
    assert 'id="findings"' not in (out / "index.html").read_text(encoding="utf-8")
    assert not (out / "findings.csv").exists()


def test_checkpointed_metrics_are_plotted_per_input_over_steps(tmp_path: Path) -> None:
    """Rows with ``settings["step"]`` give one figure per (task, data set, metric), one panel per input."""
    from bench.report.plots import make_plots
    from bench.report.tables import Store

    rows = [_row(v, seed=s, step=k, input=i) for s in (0, 1) for k, v in ((0, 1.0), (100, 30.0), (300, 1e4))
            for i in ("test", "uniform")]
    rows.append(_row(0.5, metric="condition"))  # no step: not a checkpoint plot
    store = Store(run_dir=tmp_path, results_path=tmp_path / "results.jsonl", rows=rows, record={})
    plots, _ = make_plots(store, tmp_path / "report")
    made = [p for p in plots if p.kind == "checkpoints"]
    assert [(p.task, p.dataset) for p in made] == [("exploding", "digits")]
    assert made[0].path == "plots/checkpoints__digits__exploding__nonfinite_frac.png"
    assert (tmp_path / "report" / made[0].path).stat().st_size > 0
