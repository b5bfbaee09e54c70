"""The stability task on models with known answers, its options, the finite-difference regulariser's penalty, and
the issue's end-to-end check: with ``steps = 0`` a linear flow with singular values (4, 2, 1, 0.25) measures
lip_forward 4 and lip_inverse 4.

``trained_model`` is replaced (fixture ``calls``) by a stub that returns ``ctx.make_model()`` untrained, except in
the end-to-end test, which runs a cell through the worker with a budget of 0 steps.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import pytest
import torch
from task_helpers import D, GradScaledLinear, SaturatingFlow, TrainingCalls, context, gaussian_data
from torch import Tensor, nn

from bench.datasets.base import Dataset
from bench.options import OptionError
from bench.regularizers import FDRegularizer, RegularizerOptions
from bench.run.worker import CellSpec, run_cell
from bench.suite import Known, SuiteError, parse_suite, validate_names
from bench.tasks.base import Metric
from bench.tasks.stability import KINDS, STABILITY_SPECS, StabilityOptions, StabilityTask
from models.base import Capabilities, InvertibleModel
from models.template import LinearFlow

THIS = "test_stability_task"


def by_id(metrics: list[Metric]) -> dict[tuple[str, str, str], Metric]:
    """Metrics keyed by their identity ``(name, input, variant)``; asserts the identities are unique."""
    out = {(m.name, m.input, m.variant): m for m in metrics}
    assert len(out) == len(metrics), "metric identities must be unique"
    return out


def parse(table: dict[str, Any]) -> StabilityOptions:
    """``StabilityTask.parse_options`` (what the suite check and the worker call), checked to be typed."""
    opts = StabilityTask.parse_options(table, "tasks.stability")
    assert isinstance(opts, StabilityOptions)
    return opts


def value(m: Metric) -> float:
    assert m.value is not None, f"{m.name} {m.input} {m.variant}: {m.status} {m.extra}"
    return m.value


# ----------------------------------------------------------------------------------------------- test models


#: 4 x 4 Hadamard matrix / 2: orthogonal, with entries +-1/2 (exact in float32).
HADAMARD = 0.5 * torch.tensor([[1.0, 1.0, 1.0, 1.0], [1.0, -1.0, 1.0, -1.0], [1.0, 1.0, -1.0, -1.0],
                               [1.0, -1.0, -1.0, 1.0]])


class SpectrumFlow(InvertibleModel):
    """``z = W x`` with the dense ``W = U diag(s) V^T``, ``U = HADAMARD``, ``V = HADAMARD`` with its columns
    permuted (3, 1, 0, 2): every entry of ``W`` is a sum of ``+-s_k / 4``, exact in float32, so the singular
    values of the stored matrix are exactly ``s``. ``x``: (B, 4) -> ``z``: (B, 4), ``ladj = sum log s``."""

    family = "spectrum"
    backend = "test"
    capabilities = Capabilities(density=True, logdet="exact", inverse="analytic")

    def __init__(self, shape: Sequence[int], num_classes: int | None = None,
                 singular_values: Sequence[float] = (4.0, 2.0, 1.0, 0.25)) -> None:
        super().__init__(shape, num_classes, singular_values=list(singular_values))
        if self.dim != 4 or len(singular_values) != 4:
            raise ValueError("SpectrumFlow is 4-dimensional with 4 singular values")
        v = HADAMARD[:, [3, 1, 0, 2]]
        self.weight = nn.Parameter(HADAMARD @ torch.diag(torch.tensor(list(singular_values))) @ v.T)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return x @ self.weight.T, torch.linalg.slogdet(self.weight)[1].expand(x.shape[0])

    def inverse(self, z: Tensor) -> Tensor:
        return torch.linalg.solve(self.weight, z.T).T


def four_d_data(seed: int = 0) -> Dataset:
    """A 4-D continuous vector data set (``module:function`` data set of the end-to-end test)."""
    g = torch.Generator().manual_seed(seed)
    return Dataset(name="four-d", kind="vector", train_x=torch.randn(256, 4, generator=g),
                   test_x=torch.randn(64, 4, generator=g))


class PoisonedInverse(InvertibleModel):
    """Identity forward; the inverse returns NaN where ``z[:, 0] > 1`` and ``-inf`` where ``z[:, 0] < -1``
    (elsewhere ``z``): a planted count of non-finite reconstructions of each kind."""

    family = "poisoned"
    backend = "test"
    capabilities = Capabilities(density=True, logdet="exact", inverse="analytic")

    def __init__(self, shape: Sequence[int], num_classes: int | None = None) -> None:
        super().__init__(shape, num_classes)
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return x + self.dummy, torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)

    def inverse(self, z: Tensor) -> Tensor:
        x = (z - self.dummy).clone()
        x[z[:, 0] > 1, 1] = float("nan")
        x[z[:, 0] < -1, 2] = -float("inf")
        return x


# ----------------------------------------------------------------------------------------------- measurements


def test_stability_on_a_known_spectrum(calls: TrainingCalls) -> None:
    s = [2.0, 1.0, 0.7, 0.5]
    out = by_id(StabilityTask().run(context(lambda **kw: LinearFlow((D,), singular_values=s, **kw), StabilityTask)))
    no_memgrad = {spec.name for spec in STABILITY_SPECS} - {"memgrad_rel_err"}
    assert set(out) == {(name, kind, "") for name in no_memgrad for kind in KINDS}
    for kind in KINDS:
        assert value(out["lip_forward", kind, ""]) == pytest.approx(2.0, rel=1e-5)
        assert value(out["lip_inverse", kind, ""]) == pytest.approx(2.0, rel=1e-5)  # 1 / 0.5
        assert value(out["condition", kind, ""]) == pytest.approx(4.0, rel=1e-5)
        assert value(out["nonfinite_frac", kind, ""]) == 0.0
        assert value(out["recon_err_f64", kind, ""]) < 1e-12
        assert value(out["recon_err_f32", kind, ""]) < 1e-4
    m = out["lip_forward", "test", ""]
    assert (m.unit, m.direction, m.status, m.settings) == ("lipschitz", "down", "ok", {})
    assert not any("@" in m.name or "+" in m.name for m in out.values())
    assert calls == [{"objective": "likelihood", "regularizer": None}]


@pytest.mark.parametrize("method", ["lanczos", "power"])
def test_above_the_exact_dimension_the_estimates_carry_their_error_bound(calls: TrainingCalls, method: str) -> None:
    s = [2.0, 1.5, 1.0, 0.5]
    common = {"kinds": ["test"], "points": 8, "lip_points": 4, "exact_max_dim": 2, "lip_method": method}
    out = by_id(StabilityTask().run(context(lambda **kw: LinearFlow((D,), singular_values=s, **kw), StabilityTask,
                                            lip_rtol=1e-6, **common)))
    fwd, inv = out["lip_forward", "test", ""], out["lip_inverse", "test", ""]
    assert value(fwd) == pytest.approx(2.0, rel=1e-5) and value(inv) == pytest.approx(2.0, rel=1e-5)
    assert fwd.extra["method"] == method and fwd.extra["inverse_method"] == f"{method}-inverse"
    if method == "power":
        assert math.isnan(fwd.extra["err_bound"])
        return
    assert fwd.extra["err_bound"] <= 1e-6 and inv.extra["err_bound"] <= 1e-6
    assert out["condition", "test", ""].extra["err_bound"] <= 3e-6
    # capped at one step: the reached precision is reported, above the one asked for
    capped = by_id(StabilityTask().run(context(lambda **kw: LinearFlow((D,), singular_values=s, **kw),
                                               StabilityTask, lip_rtol=1e-6, lip_iters=1, **common)))
    assert capped["lip_forward", "test", ""].extra["err_bound"] > 1e-6
    assert capped["lip_forward", "test", ""].extra["iters"] == [1, 1]


def test_stability_flags_an_exploding_inverse_out_of_distribution(calls: TrainingCalls) -> None:
    out = by_id(StabilityTask().run(context(lambda **kw: SaturatingFlow((D,), **kw), StabilityTask, scale=6.0)))
    assert value(out["nonfinite_frac", "test", ""]) == 0.0
    assert value(out["recon_err_f32", "test", ""]) < 1e-4
    scaled = out["nonfinite_frac", "scaled", ""]
    assert value(scaled) > 0.1  # |6 x| > 9 in some coordinate: tanh rounds to 1, atanh = inf
    assert scaled.extra["n_nonfinite"] > 0
    assert value(out["recon_err_f64", "scaled", ""]) < 1e-5  # float64 still resolves tanh(11)
    assert value(out["lip_inverse", "scaled", ""]) > 1e6 > value(out["lip_inverse", "test", ""])


def test_the_nonfinite_share_counts_nan_and_inf(calls: TrainingCalls) -> None:
    # 10 points: 3 with x0 > 1 (NaN in the inverse), 2 with x0 < -1 (-inf), 1 with error 2 > threshold 1 is
    # impossible here (identity), so the share is exactly 5 / 10; NaN alone would give 0.3, Inf alone 0.2
    x0 = torch.tensor([1.5, 2.0, 1.2, -1.5, -3.0, 0.0, 0.5, -0.5, 0.9, -0.9])
    data = Dataset(name="planted", kind="vector", train_x=torch.zeros(8, D),
                   test_x=torch.stack([x0, *[torch.zeros(10)] * (D - 1)], dim=1))
    ctx = context(lambda **kw: PoisonedInverse((D,), **kw), StabilityTask, dataset=data, points=10, kinds=["test"])
    out = by_id(StabilityTask().run(ctx))
    frac = out["nonfinite_frac", "test", ""]
    assert value(frac) == 0.5
    assert frac.extra["n_nonfinite"] == 5 and frac.extra["n_above_threshold"] == 0 and frac.extra["points"] == 10
    recon = out["recon_err_f32", "test", ""]
    assert value(recon) == 0.0 and recon.extra["n_nonfinite"] == 5  # the max is over the finite reconstructions


def test_stability_with_an_ood_dataset_and_the_fd_regulariser(calls: TrainingCalls) -> None:
    reg = {"eps": 0.05, "weight": 2.0, "every": 3}
    ctx = context(lambda **kw: LinearFlow((D,), **kw), StabilityTask, ood_dataset=f"{THIS}:shifted_data",
                  regularizer=reg, kinds=["test", "scaled"])
    out = by_id(StabilityTask().run(ctx))
    for variant in ("", "reg"):
        assert {(m, k, variant) for m in ("lip_forward", "nonfinite_frac") for k in ("test", "scaled", "ood")} \
            <= set(out)
    assert ("lip_inverse", "ood", "reg") in out and ("lip_inverse", "noise", "reg") not in out
    assert out["recon_err_f32", "ood", "reg"].extra["regularizer"] == reg
    assert "regularizer" not in out["recon_err_f32", "ood", ""].extra
    assert calls[1]["regularizer"] == FDRegularizer(eps=0.05, weight=2.0, every=3)
    # the ood points are the other data set's (shifted by 3), not the model's test data
    assert value(out["recon_err_f32", "ood", ""]) < 1e-4


def shifted_data(seed: int = 0) -> Dataset:
    """The test data of ``gaussian_data`` shifted by 3 (an ``ood_dataset`` given as ``module:function``)."""
    other = gaussian_data(n_test=32)
    other.name, other.test_x = "shifted", other.test_x + 3.0
    return other


def test_stability_regulariser_limited_to_named_models(calls: TrainingCalls) -> None:
    reg = {"eps": 0.05, "weight": 2.0, "every": 3}
    ctx = context(lambda **kw: LinearFlow((D,), **kw), StabilityTask, regularizer=reg,
                  regularizer_models=["glow-freia"], kinds=["test"])
    ctx.model_name = "iresnet-native"
    out = by_id(StabilityTask().run(ctx))
    assert ("lip_forward", "test", "") in out and not any(m.variant for m in out.values())
    assert [c["regularizer"] for c in calls] == [None]
    ctx.model_name = "glow-freia"
    assert ("lip_forward", "test", "reg") in by_id(StabilityTask().run(ctx))


def test_the_regulariser_table_takes_the_authors_settings() -> None:
    opts = parse({"regularizer": {}})
    assert opts.regularizer == RegularizerOptions()
    assert (opts.regularizer.eps, opts.regularizer.weight, opts.regularizer.every) == (0.1, 1e-4, 10)
    assert FDRegularizer.from_options(opts.regularizer) == FDRegularizer()
    assert parse({}).regularizer is None


class LinearClassifier(LinearFlow):
    """A LinearFlow declared as a classifier only (no density): its default objective is classification."""

    capabilities = Capabilities(density=False, logdet="exact", inverse="analytic", classifier=True)

    def logits(self, x: Tensor) -> Tensor:
        return self(x)[0]


def test_a_classifier_gets_unsupported_rows_for_the_regularised_variant(calls: TrainingCalls) -> None:
    ctx = context(lambda **kw: LinearClassifier((D,), **kw), StabilityTask, regularizer={}, kinds=["test"])
    out = by_id(StabilityTask().run(ctx))
    assert {m.status for m in out.values() if m.variant == ""} == {"ok"}
    reg = [m for m in out.values() if m.variant == "reg"]
    assert len(reg) == 6 and {m.status for m in reg} == {"unsupported"} and all(m.value is None for m in reg)
    assert "likelihood objective only" in reg[0].extra["reason"]
    assert calls == [{"objective": "classification", "regularizer": None}]  # no regularised training
    with pytest.raises(OptionError, match="likelihood objective only"):
        parse({"regularizer": {}, "objective": "classification"})


def test_stability_measures_memory_saving_gradient_error(calls: TrainingCalls) -> None:
    ctx = context(lambda **kw: GradScaledLinear((D,), **kw), StabilityTask, kinds=["test"])
    out = by_id(StabilityTask().run(ctx))
    memgrad = out["memgrad_rel_err", "test", ""]
    assert value(memgrad) == pytest.approx(0.5, rel=1e-6)
    assert memgrad.extra["f64"] == pytest.approx(0.5, rel=1e-9)
    assert (memgrad.unit, memgrad.direction) == ("relative error", "down")


def test_diverged_training_gives_valueless_rows_with_their_identity(calls: TrainingCalls) -> None:
    calls.diverged = True
    ctx = context(lambda **kw: LinearFlow((D,), **kw), StabilityTask, kinds=["test", "noise"], regularizer={})
    out = by_id(StabilityTask().run(ctx))
    assert len(out) == 2 * 2 * 6  # two variants x two kinds x six metrics (no memory saving)
    assert all(m.status == "diverged" and m.value is None for m in out.values())
    assert out["lip_inverse", "noise", "reg"].extra["reason"] == "training diverged"


# ----------------------------------------------------------------------------------------------- options


def suite_error(stability: dict[str, Any]) -> str:
    """The one-line error of a suite whose stability options are ``stability``."""
    data = {"models": ["glow-freia"], "datasets": ["moons"], "tasks": {"stability": stability}}
    known = Known(models=lambda: ["glow-freia", "iresnet-native"], tasks=lambda: ["stability"],
                  datasets=lambda: ["moons", "digits"])
    with pytest.raises(SuiteError) as info:
        validate_names(parse_suite(data, "s.toml"), known)
    message = str(info.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize(("options", "words"), [
    ({"regulariser": {}}, ["regulariser", "did you mean regularizer"]),
    ({"ood_datset": "moons"}, ["ood_datset", "did you mean ood_dataset"]),
    ({"train": False}, ["'train'", "options: points"]),
    ({"regularizer": {"epsilon": 0.1}}, ["regularizer", "epsilon", "did you mean eps"]),
    ({"regularizer": {"eps": 0.0}}, ["regularizer.eps", "must be > 0"]),
    ({"regularizer": {"every": 0}}, ["regularizer.every", "must be >= 1"]),
    ({"kinds": ["nosie"]}, ["kinds[0]", "did you mean noise"]),
    ({"kinds": ["test", "test"]}, ["kinds", "at most once"]),
    ({"ood_dataset": "monns"}, ["ood_dataset", "'monns'", "did you mean moons"]),
    ({"ood_dataset": {"n_test": 5}}, ["ood_dataset", "name"]),
    ({"ood_dataset": {"name": "moons", "n_tset": 5}}, ["ood_dataset", "'n_tset'", "did you mean n_test"]),
    ({"ood_dataset": f"{THIS}:no_such_loader"}, ["ood_dataset", "no_such_loader"]),
    ({"regularizer_models": ["glow-freai"]}, ["regularizer_models", "did you mean glow-freia"]),
    ({"points": 0}, ["points", "must be >= 1"]),
    ({"grad": "none"}, ["grad", "auto, grad, no_grad"]),
])
def test_bad_stability_options_fail_at_suite_load(options: dict[str, Any], words: list[str]) -> None:
    message = suite_error(options)
    assert "tasks.stability" in message
    for w in words:
        assert w in message


def test_good_options_parse_to_the_typed_dataclass() -> None:
    opts = parse({"kinds": ["test", "uniform"], "ood_dataset": {"name": "moons", "n_test": 50},
                  "regularizer": {"eps": 0.01}, "regularizer_models": ["glow-freia"]})
    assert opts.kinds == ("test", "uniform") and opts.ood_dataset == {"name": "moons", "n_test": 50}
    assert opts.regularizer == RegularizerOptions(eps=0.01, weight=1e-4, every=10)
    assert opts.regularizer_models == ("glow-freia",)


# ----------------------------------------------------------------------------------------------- regulariser


def test_the_fd_penalty_equals_a_hand_computation_on_a_linear_map() -> None:
    # x -> A x with A = [[2, 1], [0, 0.5]], A^-1 = [[0.5, -1], [0, 2]]; directions v = (e1, e2), w = (e2, e1):
    # A e1 = (2, 0), A e2 = (1, 0.5), A^-1 e2 = (-1, 2), A^-1 e1 = (0.5, 0); squared norms 4, 1.25, 5, 0.25.
    # penalty = weight * sum_b (||eps A v_b||^2 + ||eps A^-1 w_b||^2) / eps = weight * eps * 10.5
    model = LinearFlow((2,)).double()
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[2.0, 1.0], [0.0, 0.5]], dtype=torch.float64))
        model.bias.copy_(torch.tensor([0.3, -0.7], dtype=torch.float64))
    x = torch.tensor([[0.2, -1.0], [1.5, 0.4]], dtype=torch.float64)
    eye = torch.eye(2, dtype=torch.float64)
    reg = FDRegularizer(eps=0.1, weight=1e-4)
    pen = reg.penalty(model, x, directions=(eye, eye.flip(0)))
    assert float(pen.detach()) == pytest.approx(1e-4 * 0.1 * 10.5, rel=1e-12)
    fwd, inv = reg.quotients(model, x, directions=(eye, eye.flip(0)))
    torch.testing.assert_close(fwd, torch.tensor([2.0, math.sqrt(1.25)], dtype=torch.float64))
    torch.testing.assert_close(inv, torch.tensor([math.sqrt(5.0), 0.5], dtype=torch.float64))
    pen.backward()
    assert model.weight.grad is not None and float(model.weight.grad.abs().sum()) > 0


def test_fd_random_directions_are_unit_per_example() -> None:
    from bench.regularizers import random_unit_directions

    v = random_unit_directions(torch.randn(7, 3, 2, 2))
    torch.testing.assert_close(v.reshape(7, -1).norm(dim=1), torch.ones(7))


# ----------------------------------------------------------------------------------------------- end to end


def test_steps_0_linear_flow_with_known_spectrum_end_to_end() -> None:
    """Issue 10's done-when: with steps = 0, singular values (4, 2, 1, 0.25) give lip_forward 4 and lip_inverse
    4 within 1e-6 relative, through the worker (model and data set as ``module:attr`` targets)."""
    spec = CellSpec(model=f"{THIS}:SpectrumFlow", dataset=f"{THIS}:four_d_data", seed=0, task="stability",
                    task_options={"kinds": ["test", "noise"], "points": 16, "lip_points": 8},
                    budget={"steps": 0, "batch_size": 32}, metrics=StabilityTask.metric_specs)
    rows = run_cell(spec)
    by = {(r.metric, r.input): r for r in rows}
    assert all(r.status == "ok" for r in rows), [(r.metric, r.input, r.status, r.extra) for r in rows]
    for kind in ("test", "noise"):
        for metric in ("lip_forward", "lip_inverse"):
            row = by[metric, kind]
            assert row.value is not None and abs(row.value - 4.0) <= 1e-6 * 4.0, (metric, kind, row.value)
            assert row.unit == "lipschitz" and row.direction == "down" and row.variant == ""
        assert by["condition", kind].value == pytest.approx(16.0, rel=1e-6)
