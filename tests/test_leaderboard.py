"""Bootstrap intervals over seeds, the tie rule, the leaderboard and the report's baselines and marks, on
hand-made rows (no number here was measured)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bench.cli import main
from bench.report.annotate import ESTIMATOR_MARK, NO_BETTER, UNIFORM_LABEL, report_tables
from bench.report.bootstrap import Interval, leader, resample_means, seed_interval
from bench.report.leaderboard import build_leaderboard, leaderboard_frame, to_markdown
from bench.report.tables import Table, build_tables
from bench.report.tables import to_markdown as table_markdown
from bench.run.rundir import Row, append_rows

UNITS = {"kl_gap": ("nats", "down"), "test_bpd": ("bits/dim", "down"), "test_nll": ("nats", "down"),
         "test_accuracy": ("fraction", "up"), "inverse_fwd_units": ("fwd passes", "down"),
         "recon_err": ("max abs error", "down"), "condition": ("ratio", "down"), "params": ("parameters", None),
         "time_to_target": ("s", "down"), "train_steps": ("steps", None), "q": ("u", "down")}


def rows_of(model: str, task: str, dataset: str, metric: str, values: list[float | None], *,
            statuses: list[str] | None = None, extra: dict[str, Any] | None = None, **fields: Any) -> list[Row]:
    """One row per seed; a None value with status ``error`` unless ``statuses`` says otherwise."""
    unit, direction = UNITS[metric]
    out = []
    for seed, value in enumerate(values):
        status = statuses[seed] if statuses else ("ok" if value is not None else "error")
        out.append(Row("r", "s", model, task, dataset, seed, metric, value if status == "ok" else None, unit,
                       direction, status, extra=dict(extra or {}), **fields))
    return out


# ----------------------------------------------------------------------------------------------- bootstrap
def test_one_seed_gives_the_value_itself() -> None:
    iv = seed_interval([0.7], "one")
    assert (iv.point, iv.low, iv.high) == (0.7, 0.7, 0.7)


def test_two_seeds_give_their_range() -> None:
    """Two seeds resample to {a, a}, {a, b}, {b, b} (each all-same draw with probability 1/4 > 2.5 %), so the
    95 % interval is exactly [min, max]."""
    iv = seed_interval([2.0, 1.0], "two")
    assert (iv.point, iv.low, iv.high) == (1.5, 1.0, 2.0)


def test_interval_contains_the_mean_is_deterministic_and_narrows_with_more_seeds() -> None:
    rng = np.random.default_rng(7)
    few, many = rng.normal(3.0, 1.0, size=5), rng.normal(3.0, 1.0, size=400)
    a, b = seed_interval(list(few), "few"), seed_interval(list(many), "many")
    for iv, vals in ((a, few), (b, many)):
        assert iv.low < float(np.mean(vals)) < iv.high
        assert iv.point == pytest.approx(float(np.mean(vals)))
    assert b.width < a.width / 3
    # the normal-theory width 2 * 1.96 / sqrt(400) = 0.196 for unit-variance data
    assert 0.15 < b.width < 0.25
    assert seed_interval(list(many), "many") == b, "the same group resamples the same way"


def test_closest_to_zero_is_judged_by_the_absolute_mean() -> None:
    iv = seed_interval([-0.2, -0.4], "z", statistic=np.abs)
    assert (iv.point, iv.low, iv.high) == pytest.approx((0.3, 0.2, 0.4))


def test_resampled_means_keep_missing_values_out() -> None:
    values = np.array([[1.0, 3.0, np.nan], [5.0, 5.0, 5.0]])
    reps = resample_means(values, "g", n_boot=500)
    assert reps.shape == (500, 2)
    assert np.all(reps[:, 1] == 5.0)
    finite = reps[:, 0][~np.isnan(reps[:, 0])]
    assert finite.min() >= 1.0 and finite.max() <= 3.0
    # only the all-NaN draws (the third seed every time: (1/3)^3) give NaN
    assert np.isnan(reps[:, 0]).mean() < 0.1


def test_tie_rule() -> None:
    apart = {"a": Interval(1.0, 0.9, 1.1), "b": Interval(2.0, 1.5, 2.5), "c": Interval(3.0, 2.0, 4.0)}
    verdict = leader(apart, higher_is_better=False)
    assert verdict.best == {"a"} and not verdict.tied
    close = {"a": Interval(1.0, 0.5, 1.6), "b": Interval(1.2, 1.1, 1.3), "c": Interval(3.0, 2.9, 3.1)}
    verdict = leader(close, higher_is_better=False)
    assert not verdict.best and verdict.tied == {"a", "b"}
    assert leader(close, higher_is_better=True).best == {"c"}
    touching = {"a": Interval(1.0, 0.8, 1.1), "b": Interval(1.2, 1.1, 1.3)}
    assert leader(touching, higher_is_better=False).tied == {"a", "b"}, "touching intervals overlap"
    assert leader({"a": Interval(1.0, 1.0, 1.0)}, higher_is_better=False).best == set(), "a lone entry is no best"


# ----------------------------------------------------------------------------------------------- tables
def test_a_tie_is_not_bolded_and_a_clear_best_is() -> None:
    tied = rows_of("a-x", "t", "d", "q", [1.0, 2.0]) + rows_of("b-x", "t", "d", "q", [1.5, 2.5])
    (table,) = build_tables(tied)
    assert not table.best and {r.model for r, _ in table.tied} == {"a-x", "b-x"}
    assert "**" not in table_markdown(table)
    clear = rows_of("a-x", "t", "d", "q", [1.0, 1.2]) + rows_of("b-x", "t", "d", "q", [1.5, 2.5])
    (table,) = build_tables(clear)
    assert {r.model for r, _ in table.best} == {"a-x"}
    assert "| a-x | **1.1 ± 0.14** (2/2) |" in table_markdown(table)


def test_equal_leaders_are_a_tie() -> None:
    (table,) = build_tables(rows_of("a-x", "t", "d", "q", [0.0, 0.0]) + rows_of("b-x", "t", "d", "q", [0.0, 0.0])
                            + rows_of("c-x", "t", "d", "q", [1.0, 1.0]))
    assert not table.best and {r.model for r, _ in table.tied} == {"a-x", "b-x"}


def _table(tables: list[Table], task: str, dataset: str) -> Table:
    return next(t for t in tables if (t.task, t.dataset) == (task, dataset))


def _line(md: str, label: str) -> str:
    return next(ln for ln in md.splitlines() if ln.startswith(f"| {label} |"))


def test_baselines_marks_params_and_floors_in_the_likelihood_table() -> None:
    g = {"baseline": "gaussian"}
    rows = [
        *rows_of("gaussian-fit", "likelihood", "digits", "test_bpd", [3.0, 3.02], extra={**g, "levels": 17}),
        *rows_of("gaussian-fit", "likelihood", "digits", "train_steps", [0, 0], extra=g),
        *rows_of("good-x", "likelihood", "digits", "test_bpd", [2.0, 2.1], extra={"levels": 17}),
        *rows_of("close-x", "likelihood", "digits", "test_bpd", [2.95, 3.1], extra={"levels": 17}),
        *rows_of("worse-x", "likelihood", "digits", "test_bpd", [3.5, 3.6], extra={"levels": 17}),
        *rows_of("vp-x", "likelihood", "digits", "test_bpd", [5.6, 5.7],
                 extra={"levels": 17, "volume_preserving": True, "floor": 5.413}),
        *rows_of("good-x", "likelihood", "digits", "test_nll", [1.0, 1.1],
                 extra={"train_loss_below_entropy": True}),
        *rows_of("close-x", "likelihood", "digits", "test_nll", [1.0, 1.1],
                 extra={"train_loss_below_entropy": False}),
        *rows_of("vp-x", "likelihood", "digits", "test_nll", [260.0, 270.0],
                 extra={"volume_preserving": True, "floor": 250.0}),
        *[r for m, n in (("good-x", 1000), ("gaussian-fit", 2144)) for r in rows_of(m, "cost", "digits", "params",
                                                                                       [n, n])],
    ]
    table = _table(report_tables(rows), "likelihood", "digits")
    md = table_markdown(table)
    assert [r.label for r in table.rows] == ["close-x", "good-x", "vp-x", "worse-x", "gaussian-fit (baseline)",
                                             f"{UNIFORM_LABEL} (analytic)"]
    assert "(untrained)" not in md, "a baseline fitted in closed form is not 'untrained'"
    assert f"| {math.log2(17):.4g} (analytic) |" in _line(md, f"{UNIFORM_LABEL} (analytic)")
    assert NO_BETTER in _line(md, "close-x") and NO_BETTER in _line(md, "worse-x")
    assert NO_BETTER not in _line(md, "good-x")
    assert "volume-preserving, floor: test_bpd 5.413 bits/dim, test_nll 250 nats" in _line(md, "vp-x")
    assert f"(2/2) {ESTIMATOR_MARK}" in _line(md, "good-x") and ESTIMATOR_MARK not in _line(md, "close-x")
    assert any(f.startswith(ESTIMATOR_MARK) for f in table.footnotes)
    assert "| 1,000 |" in _line(md, "good-x") and "| 2,144 |" in _line(md, "gaussian-fit (baseline)")
    assert {r.model for r, c in table.best} == {"good-x"}


def test_time_to_target_table() -> None:
    target = {"target_metric": "kl_gap", "target": 0.2}
    rows = [*rows_of("a-x", "likelihood", "moons", "kl_gap", [0.1, 0.1]),
            *rows_of("a-x", "likelihood", "moons", "time_to_target", [3.0, 5.0], settings=target),
            *rows_of("b-x", "likelihood", "moons", "time_to_target", [None, 9.0], statuses=["not_reached", "ok"],
                     settings=target)]
    for r, step in zip(rows[2:], (100, 200, None, 400), strict=True):
        r.extra["step"] = step
    # fast on one seed, never on the other: judged as an infinite time, tied with a-x (whose interval it spans)
    fast = rows_of("c-x", "likelihood", "moons", "time_to_target", [1.0, None], statuses=["ok", "not_reached"],
                   settings=target, extra={"step": 10})
    tied = report_tables(rows + fast)[1]
    assert not tied.best and {r.model for r, c in tied.tied if c == "time_to_target"} == {"a-x", "c-x"}
    tables = report_tables(rows)
    assert [t.task for t in tables] == ["likelihood", "time_to_target"]
    assert all(c.metric != "time_to_target" for c in tables[0].columns), "targets leave the likelihood table"
    md = table_markdown(tables[1])
    assert md.splitlines()[0] == "| model | target | time_to_target (s) ↓ | step (steps) |"
    assert "| a-x | kl_gap ≤ 0.2 | **4 ± 1.4** (2/2) | 150 ± 71 (2/2) |" in md
    assert "| b-x | kl_gap ≤ 0.2 | 9 (1/2); not reached 1/2 | 400 (1/2); not reached 1/2 |" in md


# ----------------------------------------------------------------------------------------------- leaderboard
def _board_rows() -> list[Row]:
    rows: list[Row] = []
    # likelihood on three sets: a clearly first everywhere, b and c swap places within seed noise
    for dataset, metric, (a, b, c) in (("d1", "kl_gap", (0.1, 0.5, 0.52)), ("d2", "kl_gap", (0.2, 0.62, 0.6)),
                                       ("d3", "test_bpd", (1.0, 2.0, 2.01))):
        for model, v in (("a-x", a), ("b-x", b), ("c-x", c)):
            rows += rows_of(model, "likelihood", dataset, metric, [v - 0.05, v, v + 0.05])
        # test_bpd rows on a set with kl_gap are not used for the rank there
        if metric == "kl_gap":
            rows += rows_of("c-x", "likelihood", dataset, "test_bpd", [0.0, 0.0, 0.0])
    rows += rows_of("a-x", "classification", "d1", "test_accuracy", [0.9, 0.91, 0.92])
    rows += rows_of("b-x", "classification", "d1", "test_accuracy", [0.8, 0.81, 0.82])
    rows += rows_of("c-x", "classification", "d1", "test_accuracy", [None] * 3, statuses=["unsupported"] * 3)
    for dataset, units in (("d1", (2.0, 10.0)), ("d2", (4.0, 12.0)), ("d3", (3.0, 100.0))):
        for model, u in zip(("a-x", "b-x"), units, strict=True):
            rows += rows_of(model, "inverse_cost", dataset, "inverse_fwd_units", [u, u * 1.01, u * 0.99])
            rows += rows_of(model, "inverse_cost", dataset, "recon_err", [1e-6, 2e-6, 3e-6])
    # worst OOD condition: the test input's huge value is not OOD and must be ignored
    for model, by_input in (("a-x", {"test": 1e9, "noise": 5.0, "ood": 7.0}),
                            ("b-x", {"test": 2.0, "noise": 50.0, "scaled": 80.0})):
        for inp, v in by_input.items():
            rows += rows_of(model, "stability", "d1", "condition", [v, v, v], input=inp)
    rows += rows_of("a-x", "stability", "d1", "condition", [1e12] * 3, input="ood", variant="reg")
    for dataset, n in (("d1", 100), ("d2", 250)):
        rows += rows_of("a-x", "cost", dataset, "params", [n, n, n])
    rows += rows_of("b-x", "cost", "d1", "params", [35348] * 3)
    return rows


def test_leaderboard_headlines_intervals_and_ties() -> None:
    board = build_leaderboard(_board_rows())
    assert board is not None
    assert board.models == ["a-x", "b-x", "c-x"]
    cols = {c.key: c for c in board.columns}
    assert list(cols) == ["likelihood", "classification", "inverse_fwd_units", "recon_err", "ood_condition", "params"]
    lk = cols["likelihood"]
    assert "over 3 data sets" in lk.title and "kl_gap / test_bpd" in lk.title
    iv_a = lk.entries["a-x"].interval
    assert iv_a is not None and (iv_a.point, iv_a.low, iv_a.high) == (1.0, 1.0, 1.0)
    iv_b, iv_c = lk.entries["b-x"].interval, lk.entries["c-x"].interval
    assert iv_b is not None and iv_c is not None
    assert iv_b.point == iv_c.point == 2.5 or {iv_b.point, iv_c.point} == {2.0, 3.0}
    assert iv_b.low >= 2.0 and iv_b.high <= 3.0 and iv_b.width > 0, "b and c swap within seed noise"
    assert lk.verdict.best == {"a-x"}
    assert lk.text("a-x", "md").startswith("**1**")
    acc = cols["classification"]
    assert acc.title == "test_accuracy on d1" and acc.verdict.best == {"a-x"}
    assert acc.entries["c-x"].status == "unsupported"
    inv = cols["inverse_fwd_units"]
    assert inv.entries["a-x"].interval is not None and inv.entries["a-x"].interval.point == pytest.approx(3.0)
    assert inv.entries["b-x"].interval is not None and inv.entries["b-x"].interval.point == pytest.approx(12.0)
    rec = cols["recon_err"]
    assert rec.verdict.tied == {"a-x", "b-x"}, "the same errors: a tie"
    assert "tie" in rec.text("a-x") and "**" not in rec.text("a-x", "md")
    ood = cols["ood_condition"]
    assert ood.entries["a-x"].interval is not None and ood.entries["a-x"].interval.point == 7.0
    assert ood.entries["b-x"].interval is not None and ood.entries["b-x"].interval.point == 80.0
    params = cols["params"]
    assert params.entries["a-x"].text == "100–250" and params.entries["b-x"].text == "35,348"
    md = to_markdown(board)
    assert md.splitlines()[2].startswith("| a-x | **1** [1, 1] |")
    csv = leaderboard_frame(board)
    assert set(csv.loc[csv["best"] == "true", "model"]) == {"a-x"}


def test_leaderboard_is_deterministic_and_ties_when_seeds_overlap() -> None:
    rows = [*rows_of("a-x", "likelihood", "d1", "kl_gap", [0.1, 0.3]),
            *rows_of("b-x", "likelihood", "d1", "kl_gap", [0.2, 0.4])]
    board = build_leaderboard(rows)
    assert board is not None and board.columns[0].title == "kl_gap on d1"
    assert board.columns[0].verdict.tied == {"a-x", "b-x"} and not board.columns[0].verdict.best
    again = build_leaderboard(rows)
    assert again is not None and to_markdown(again) == to_markdown(board)


def test_the_report_starts_with_the_leaderboard(tmp_path: Path) -> None:
    append_rows(tmp_path / "run" / "results.jsonl", _board_rows())
    assert main(["report", str(tmp_path / "run"), "-o", str(tmp_path / "rep")]) == 0
    readme = (tmp_path / "rep" / "README.md").read_text(encoding="utf-8")
    assert readme.index("## Leaderboard") < readme.index("## likelihood")
    page = (tmp_path / "rep" / "index.html").read_text(encoding="utf-8")
    assert page.index('id="leaderboard"') < page.index('id="task-likelihood"')
    assert '<nav class="toc">' in page and 'href="#table-likelihood__d1"' in page
    assert (tmp_path / "rep" / "leaderboard.csv").read_text(encoding="utf-8").startswith("model,baseline,headline")
