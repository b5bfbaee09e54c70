"""``invbench compare A B``: per-key relative change, verdict by direction, exit 1 on regression only, exit 2 for
stores of different suites or without a common key unless ``--force``."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest

from bench.cli import main
from bench.report.compare import compare_rows
from bench.run.rundir import Row, append_rows

FIXTURE = Path(__file__).parent / "fixtures" / "run-small"
BIAS = "logdet_bias"


def rows(suite: str = "s", **changes: tuple[list[float | None], list[str]]) -> list[Row]:
    """A baseline store (two seeds per metric); ``changes`` replaces a metric's (values, statuses)."""
    base: dict[str, tuple[list[float | None], list[str], str | None]] = {
        "test_nll": ([1.0, 1.2], ["ok", "ok"], "down"),
        "test_accuracy": ([0.90, 0.92], ["ok", "ok"], "up"),
        "train_time": ([10.0, 12.0], ["ok", "ok"], None),
        BIAS: ([-0.1, -0.1], ["ok", "ok"], "zero"),
        "recon_err": ([1e-6, 1e-6], ["ok", "ok"], "down"),
    }
    out = []
    for metric, (values, statuses, direction) in base.items():
        if metric in changes:
            values, statuses = changes[metric]
        settings = {"terms": 5, "probes": 1} if metric == BIAS else {}
        for seed, (v, s) in enumerate(zip(values, statuses, strict=True)):
            out.append(Row("r", suite, "iresnet-native", "t", "moons", seed, metric, v if s == "ok" else None, "u",
                           direction, s, settings=settings))
    return out


def store(path: Path, data: list[Row]) -> str:
    append_rows(path / "results.jsonl", data)
    return str(path)


def verdicts(b: list[Row], threshold: float = 0.05) -> dict[str, tuple[float | None, str, bool]]:
    return {c.key.metric: (c.rel, c.verdict, c.regression) for c in compare_rows(rows(), b, threshold)}


def test_identical_stores_pass(tmp_path: Path) -> None:
    a = store(tmp_path / "a", rows())
    assert main(["compare", a, a]) == 0
    assert main(["compare", str(FIXTURE), str(FIXTURE / "results.jsonl")]) == 0
    assert all(v[1] == "same" or v[1] == "not judged" for v in verdicts(rows()).values())


def test_lower_is_better_metric_regresses_beyond_threshold_only(tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    a = store(tmp_path / "a", rows())
    b = store(tmp_path / "b", rows(test_nll=([1.1, 1.32], ["ok", "ok"])))  # +10 %
    assert main(["compare", a, b, "--threshold", "0.05"]) == 1
    out = capsys.readouterr().out
    assert "REGRESSION: worse" in out and "1 regression(s)" in out
    assert main(["compare", a, b, "--threshold", "0.2"]) == 0
    rel, verdict, regression = verdicts(rows(test_nll=([1.1, 1.32], ["ok", "ok"])))["test_nll"]
    assert rel == pytest.approx(0.1) and verdict == "worse" and regression
    assert verdicts(rows(test_nll=([0.9, 1.08], ["ok", "ok"])))["test_nll"][1:] == ("better", False)


def test_higher_is_better_metric(tmp_path: Path) -> None:
    a = store(tmp_path / "a", rows())
    down = store(tmp_path / "down", rows(test_accuracy=([0.80, 0.82], ["ok", "ok"])))
    up = store(tmp_path / "up", rows(test_accuracy=([0.99, 0.99], ["ok", "ok"])))
    assert main(["compare", a, down]) == 1
    assert main(["compare", a, up]) == 0
    small = verdicts(rows(test_accuracy=([0.89, 0.91], ["ok", "ok"])))["test_accuracy"]
    assert small[1:] == ("worse (within threshold)", False)


def test_status_change_is_a_regression_and_its_fix_is_not(tmp_path: Path) -> None:
    a = store(tmp_path / "a", rows())
    broken = rows(test_accuracy=([0.90, None], ["ok", "error"]))
    assert main(["compare", a, store(tmp_path / "b", broken)]) == 1
    assert verdicts(broken)["test_accuracy"][2]
    # the reverse direction: B recovers what A lost
    assert main(["compare", store(tmp_path / "c", broken), a]) == 0


def test_undirected_metrics_are_not_judged(tmp_path: Path) -> None:
    b = rows(train_time=([20.0, 24.0], ["ok", "ok"]))  # twice as slow, but no direction
    rel, verdict, regression = verdicts(b)["train_time"]
    assert rel == pytest.approx(1.0) and verdict == "not judged" and not regression
    assert main(["compare", store(tmp_path / "a", rows()), store(tmp_path / "b", b)]) == 0


def test_signed_bias_is_judged_by_magnitude() -> None:
    flipped = verdicts(rows(logdet_bias=([0.1, 0.1], ["ok", "ok"])))
    assert flipped[BIAS][1:] == ("same", False)
    grown = verdicts(rows(logdet_bias=([0.3, 0.3], ["ok", "ok"])))
    assert grown[BIAS][2]


def test_keys_are_the_fields_input_variant_settings() -> None:
    """Rows that differ only in settings, input or variant are different keys, never merged."""
    a = rows()
    other = [Row("r", "s", "iresnet-native", "t", "moons", 0, BIAS, -5.0, "u", "zero", settings={"terms": 1,
                                                                                                   "probes": 1}),
             Row("r", "s", "iresnet-native", "t", "moons", 0, "test_nll", 9.0, "u", "down", input="noise"),
             Row("r", "s", "iresnet-native", "t", "moons", 0, "test_nll", 9.0, "u", "down", variant="reg")]
    changes = compare_rows(a, [*a, *other], 0.05)
    assert not any(c.regression for c in changes)
    new = sorted(c.key.label for c in changes if c.verdict == "new in B")
    assert new == ["logdet_bias[probes=1,terms=1]", "test_nll[input=noise]", "test_nll[variant=reg]"]


def test_non_finite_values_and_missing_keys() -> None:
    nan = verdicts(rows(recon_err=([math.nan, 1e-6], ["ok", "ok"])))["recon_err"]
    assert nan[2], "a lower-is-better metric that became nan regresses"
    inf = verdicts(rows(test_accuracy=([math.inf, math.inf], ["ok", "ok"])))["test_accuracy"]
    assert not inf[2]
    dropped = [r for r in rows() if r.metric != "recon_err"]
    changes = {c.key[3]: c for c in compare_rows(rows(), dropped, 0.05)}
    assert changes["recon_err"].verdict == "missing in B" and not changes["recon_err"].regression
    extra = [*rows(), Row("r", "s", "iresnet-native", "t", "moons", 0, "new_metric", 1.0, "u", "up")]
    changes = {c.key[3]: c for c in compare_rows(rows(), extra, 0.05)}
    assert changes["new_metric"].verdict == "new in B" and not changes["new_metric"].regression


def test_zero_baseline_and_bad_threshold() -> None:
    zero = [Row("r", "s", "m-x", "t", "d", 0, "frac", 0.0, "u", "down")]
    worse = [Row("r", "s", "m-x", "t", "d", 0, "frac", 0.2, "u", "down")]
    (change,) = compare_rows(zero, worse, 0.05)
    assert change.rel == math.inf and change.regression
    for bad in (-1.0, math.nan):
        with pytest.raises(ValueError, match="threshold"):
            compare_rows(zero, worse, bad)
    with pytest.raises(ValueError, match="noise"):
        compare_rows(zero, worse, 0.05, noise=math.nan)


def test_noise_option_spares_changes_within_seed_noise(tmp_path: Path) -> None:
    # baseline test_nll 1.0, 1.2 (mean 1.1, std 0.141); B: 1.15, 1.35 (mean 1.25, +13.6 %, std 0.141)
    # standard error of the difference: sqrt(0.02/2 + 0.02/2) = 0.141, so the change is 1.06 s.e.
    b = rows(test_nll=([1.15, 1.35], ["ok", "ok"]))
    plain = {c.key[3]: c for c in compare_rows(rows(), b, 0.05)}
    assert plain["test_nll"].verdict == "worse" and plain["test_nll"].regression
    spared = {c.key[3]: c for c in compare_rows(rows(), b, 0.05, noise=2.0)}
    assert spared["test_nll"].verdict == "worse (within noise)" and not spared["test_nll"].regression
    strict = {c.key[3]: c for c in compare_rows(rows(), b, 0.05, noise=1.0)}
    assert strict["test_nll"].regression
    a_path, b_path = store(tmp_path / "a", rows()), store(tmp_path / "b", b)
    assert main(["compare", a_path, b_path, "--threshold", "0.05"]) == 1
    assert main(["compare", a_path, b_path, "--threshold", "0.05", "--noise", "2"]) == 0
    with pytest.raises(ValueError, match="noise"):
        compare_rows(rows(), b, 0.05, noise=-1)


def _with_record(path: Path, data: list[Row], suite: str) -> str:
    store(path, data)
    (path / "run.json").write_text(json.dumps({"suite": suite}))
    return str(path)


def test_stores_of_different_suites_exit_2_unless_forced(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a = _with_record(tmp_path / "a", rows(suite="quick"), "quick")
    b = _with_record(tmp_path / "b", rows(suite="fashion-short"), "fashion-short")
    assert main(["compare", a, b]) == 2
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert len(err) == 1 and "suite quick" in err[0] and "suite fashion-short" in err[0] and "--force" in err[0]
    assert captured.out == ""
    assert main(["compare", a, b, "--force"]) == 0
    captured = capsys.readouterr()
    assert "0 regression(s) among 5 keys" in captured.out and "compared anyway" in captured.err
    # the rows' suite fields are read even when run.json says nothing
    c = store(tmp_path / "c", rows(suite="paper"))
    assert main(["compare", store(tmp_path / "d", rows(suite="quick")), c]) == 2
    # a regression under --force still exits 1
    worse = _with_record(tmp_path / "e", rows(suite="fashion-short", test_nll=([2.0, 2.4], ["ok", "ok"])),
                         "fashion-short")
    assert main(["compare", a, worse, "--force"]) == 1


def test_stores_sharing_no_key_exit_2_unless_forced(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a = store(tmp_path / "a", rows())
    other = [Row("r", "s", "nice-freia", "t", "digits", 0, "test_nll", 1.0, "u", "down")]
    b = store(tmp_path / "b", other)
    assert main(["compare", a, b]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "share no key" in err[0]
    assert main(["compare", a, b, "--force"]) == 0
    assert "0 regression(s) among 6 keys" in capsys.readouterr().out
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "results.jsonl").write_text("")
    assert main(["compare", str(empty), str(empty)]) == 2


def test_a_report_folder_is_a_store_to_compare_but_not_to_report_again(tmp_path: Path,
                                                                       capsys: pytest.CaptureFixture[str]) -> None:
    """A committed reference report holds rows.csv, not results.jsonl: compare reads it back row for row."""
    from bench.report.tables import load_store
    from bench.report.writer import write_report

    report = write_report(str(FIXTURE), tmp_path / "report")
    run, again = load_store(FIXTURE), load_store(report)
    assert again.results_path == report / "rows.csv" and again.read.skipped == 0
    assert [dataclasses.replace(r, schema=0) for r in again.rows] == [
        dataclasses.replace(r, schema=0) for r in run.rows]
    assert main(["compare", str(report), str(FIXTURE)]) == 0
    assert main(["compare", str(report / "rows.csv"), str(FIXTURE)]) == 0
    assert "0 regression(s)" in capsys.readouterr().out
    before = (report / "README.md").read_text(encoding="utf-8")
    assert main(["report", str(report)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is a report's rows.csv: it can be compared" in err, err
    assert (report / "README.md").read_text(encoding="utf-8") == before
    (tmp_path / "other.csv").write_text("a,b\n1,2\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"not a report's rows\.csv"):
        load_store(tmp_path / "other.csv")


def test_a_schema_1_report_csv_is_read_with_its_metric_names_upgraded(tmp_path: Path) -> None:
    """Reports written before rows had settings and a direction (reports/quick-gpu, reports/fashion-gpu)."""
    from bench.report.tables import load_store

    header = ("run_id,suite,model,family,task,dataset,seed,metric,base_metric,input,settings,variant,value,unit,"
              "higher_is_better,status,config_hash,extra\n")
    lines = ['r,quick,resflow-native,resflow,logdet,moons,0,logdet_bias[probes=1],logdet_bias,,probes=1,,-0.5,nats,,ok,'
             'h,"{}"\n',
             'r,quick,resflow-native,resflow,likelihood,moons,1,test_nll,test_nll,,,,1.25,nats,false,ok,h,"{}"\n',
             'r,quick,resflow-native,resflow,cost,moons,0,forward_throughput,forward_throughput,,,,,items/s,true,'
             'error,h,"{""message"": ""boom""}"\n']
    (tmp_path / "rows.csv").write_text(header + "".join(lines), encoding="utf-8")
    bias, nll, speed = load_store(tmp_path).rows
    assert (bias.metric, bias.settings, bias.direction, bias.value) == ("logdet_bias", {"probes": 1}, "zero", -0.5)
    assert (nll.metric, nll.seed, nll.direction, nll.value) == ("test_nll", 1, "down", 1.25)
    assert (speed.direction, speed.status, speed.value, speed.extra) == ("up", "error", None, {"message": "boom"})
