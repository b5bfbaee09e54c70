"""The ``exploding`` and ``memgrad`` tasks: planted NaN / Inf reconstructions, a planted log-det error, the in-range
OOD inputs, checkpoints inside one run with the evaluation time outside the training clock."""

from __future__ import annotations

import time
from collections.abc import Sequence

import pytest
import torch
from task_helpers import WrongLadjFlow, context
from torch import Tensor

from bench.datasets.base import Dataset
from bench.tasks import exploding
from bench.tasks.base import Budget, Metric
from bench.tasks.exploding import (
    ExplodingTask,
    jacobian_metrics,
    range_inputs,
    reconstruction_metrics,
)
from bench.tasks.memgrad import MemgradTask, compare_gradients
from models.glow import Coupling, GlowNative, OnTail
from models.template import LinearFlow


class PlantedNonfinite(LinearFlow):
    """A LinearFlow whose inverse plants a NaN in example 0, an Inf in example 1, a -Inf in example 2 and both a
    NaN and an Inf in example 3 (examples 4 and up are reconstructed exactly)."""

    def __init__(self, shape: Sequence[int], num_classes: int | None = None, seed: int = 0) -> None:
        super().__init__(shape, num_classes, seed=seed)

    def inverse(self, z: Tensor) -> Tensor:
        x = super().inverse(z).clone()
        x[0, 0] = float("nan")
        x[1, 1] = float("inf")
        x[2, 0] = float("-inf")
        x[3, 0], x[3, 1] = float("nan"), float("inf")
        return x


def _one(rows: list[Metric], name: str) -> Metric:
    found = [r for r in rows if r.name == name]
    assert len(found) == 1, [r.name for r in rows]
    return found[0]


def test_nonfinite_share_counts_nan_and_inf() -> None:
    torch.manual_seed(0)
    model = PlantedNonfinite((4,)).eval()
    x = torch.randn(8, 4)
    rows = reconstruction_metrics(model, x, step=5, kind="uniform")
    frac, err = _one(rows, "nonfinite_frac"), _one(rows, "recon_err")
    assert frac.value == pytest.approx(4 / 8)
    assert (frac.extra["n_nan"], frac.extra["n_inf"], frac.extra["n_nonfinite"]) == (2, 3, 4)
    assert frac.input == "uniform" and frac.settings == {"step": 5}
    # the error is taken over the four finite reconstructions only
    assert err.status == "ok" and err.value is not None and err.value < 1e-4


def test_nonfinite_share_is_zero_for_an_exact_inverse() -> None:
    model = LinearFlow((4,)).eval()
    rows = reconstruction_metrics(model, torch.randn(8, 4), step=0, kind="test")
    assert _one(rows, "nonfinite_frac").value == 0.0
    assert _one(rows, "nonfinite_frac").extra["n_nonfinite"] == 0


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_logdet_gap_is_zero_for_an_exact_model(dtype: torch.dtype) -> None:
    model = LinearFlow((4,)).to(dtype).eval()
    gap = _one(jacobian_metrics(model, torch.randn(6, 4, dtype=dtype), step=0, kind="test"), "logdet_gap")
    assert gap.value is not None
    assert gap.value < (1e-5 if dtype == torch.float32 else 1e-12)


@pytest.mark.parametrize("error", [0.5, -2.0])
def test_logdet_gap_shows_a_planted_error(error: float) -> None:
    model = WrongLadjFlow((4,), error=error).to(torch.float64).eval()
    rows = jacobian_metrics(model, torch.randn(6, 4, dtype=torch.float64), step=3, kind="gaussian")
    gap = _one(rows, "logdet_gap")
    assert gap.value == pytest.approx(abs(error), abs=1e-10)
    assert gap.input == "gaussian" and gap.settings == {"step": 3}


def test_condition_is_that_of_the_linear_map() -> None:
    model = LinearFlow((4,), singular_values=[5.0, 2.0, 1.0, 0.5]).to(torch.float64).eval()
    cond = _one(jacobian_metrics(model, torch.randn(3, 4, dtype=torch.float64), step=0, kind="test"), "condition")
    assert cond.value == pytest.approx(10.0, rel=1e-5)  # W is built in float32
    assert cond.extra["lip_forward"] == pytest.approx(5.0, rel=1e-5)
    assert cond.extra["lip_inverse"] == pytest.approx(2.0, rel=1e-5)


def test_generated_inputs_lie_in_the_data_range() -> None:
    shape = (1, 8, 8)
    uniform = range_inputs("uniform", 64, shape, 0.0, 1.0, seed=1)
    gaussian = range_inputs("gaussian", 64, shape, 0.0, 1.0, seed=1)
    rademacher = range_inputs("rademacher", 64, shape, 0.0, 1.0, seed=1)
    for x in (uniform, gaussian, rademacher):
        assert x.shape == (64, *shape) and float(x.min()) >= 0.0 and float(x.max()) <= 1.0
    assert set(rademacher.unique().tolist()) == {0.0, 1.0}
    # the clipped Gaussian (std = the range's width) puts mass on both ends, the uniform does not
    assert float((gaussian == 0.0).double().mean()) > 0.2 and float((gaussian == 1.0).double().mean()) > 0.2
    assert float((uniform == 0.0).double().mean()) == 0.0
    with pytest.raises(ValueError, match="unknown"):
        range_inputs("salt", 4, shape, 0.0, 1.0, seed=0)


def _images(n: int = 48) -> Dataset:
    g = torch.Generator().manual_seed(0)
    k = torch.randint(0, 17, (2 * n, 1, 4, 4), generator=g)
    return Dataset(name="tiny-images", kind="image", train_x=k[:n] / 17.0, test_x=k[n:] / 17.0, levels=17,
                   train_y=torch.arange(n) % 3, test_y=torch.arange(n) % 3, num_classes=3)


def test_exploding_task_rows_at_checkpoints_of_one_run(monkeypatch: pytest.MonkeyPatch) -> None:
    data = _images()
    calls: list[int] = []
    real = exploding.reconstruction_metrics

    def slow(*args: object, **kwargs: object) -> list[Metric]:  # evaluation time that the clock must not count
        calls.append(1)
        time.sleep(0.05)
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(exploding, "reconstruction_metrics", slow)
    ctx = context(lambda: GlowNative(data.shape, 3, depth=1, levels=2, hidden=8), ExplodingTask, data,
                  checkpoints=[0, 2, 50], points=8, jacobian_points=2, bpd_points=16)
    ctx.budget = Budget(steps=4, batch_size=16)
    start = time.perf_counter()
    rows = ExplodingTask().run(ctx)
    wall = time.perf_counter() - start
    measured = [r for r in rows if r.name in {s.name for s in exploding.EXPLODING_SPECS}]
    steps = sorted({r.settings["step"] for r in measured})
    assert steps == [0, 2, 4]  # the checkpoints reached, and the final step; 50 is past the budget
    for step in steps:
        at = [r for r in measured if r.settings["step"] == step]
        assert {(r.name, r.input) for r in at if r.name != "test_bpd"} == {
            (n, k) for n in ("nonfinite_frac", "recon_err", "condition", "logdet_gap") for k in exploding.KINDS}
        assert [r.input for r in at if r.name == "test_bpd"] == ["test"]
        assert all(r.status == "ok" for r in at), [(r.name, r.status, r.extra) for r in at if r.status != "ok"]
    assert all(r.extra.get("final") for r in measured if r.settings["step"] == 4)
    train_time = _one(rows, "train_time")
    eval_time = _one(rows, "eval_time")
    assert train_time.extra["checkpoints_not_reached"] == [50]
    n_evals = len(eval_time.extra["curve"]["step"])
    assert n_evals == 3 and len(calls) == n_evals * len(exploding.KINDS)
    # the evaluations slept at least 0.05 s per input kind; none of it is training time (were it counted, training
    # and evaluation together would exceed the wall time by the evaluation time)
    assert eval_time.value is not None and eval_time.value >= 0.05 * len(calls)
    assert train_time.value is not None and train_time.value + eval_time.value <= wall


def test_exploding_options_are_validated() -> None:
    from bench.options import OptionError

    with pytest.raises(OptionError, match="checkpoints"):
        ExplodingTask.parse_options({"checkpoints": []}, "tasks.exploding")
    with pytest.raises(OptionError, match="inputs"):
        ExplodingTask.parse_options({"inputs": ["test", "svhn"]}, "tasks.exploding")


def test_memgrad_gradients_agree_on_an_invertible_model() -> None:
    torch.manual_seed(0)
    model = GlowNative((1, 4, 4), 3, depth=2, levels=2, hidden=8).to(torch.float64)
    x = torch.rand(6, 1, 4, 4, dtype=torch.float64)
    model.data_init(x)
    found = compare_gradients(model.eval(), x, torch.arange(6) % 3)
    assert found["rel_err"] < 1e-10 and found["angle"] < 1e-6 and found["n_nonfinite"] == 0


def test_memgrad_gradients_go_wrong_where_the_inverse_does() -> None:
    torch.manual_seed(0)
    model = GlowNative((4,), 3, depth=2, hidden=8)
    x = torch.randn(6, 4)
    model.data_init(x)
    # a coupling whose inverse is broken (it adds 1 to what it rebuilds): the forward and the stored-activation
    # gradients are unchanged, the memory-saving ones are taken at the wrong activations
    coupling = model.layers[2]
    assert isinstance(coupling, OnTail) and isinstance(coupling.layer, Coupling)
    original = coupling.layer.inverse

    def broken(y: Tensor) -> Tensor:
        return original(y) + 1.0

    coupling.layer.inverse = broken  # type: ignore[method-assign]
    found = compare_gradients(model.eval(), x, torch.arange(6) % 3)
    assert found["rel_err"] > 1e-3 and found["angle"] > 0.01


def test_memgrad_task_plain_and_regularised_rows() -> None:
    data = _images()
    ctx = context(lambda: GlowNative(data.shape, 3, depth=1, levels=2, hidden=8), MemgradTask, data,
                  checkpoints=[0, 3], grad_points=8, accuracy_points=16, regularizer={"every": 2})
    ctx.budget = Budget(steps=3, batch_size=16)
    rows = MemgradTask().run(ctx)
    for variant in ("", "reg"):
        mine = [r for r in rows if r.variant == variant and r.name in ("memgrad_rel_err", "memgrad_angle")]
        assert sorted({r.settings["step"] for r in mine}) == [0, 3]
        assert all(r.status == "ok" and r.value is not None for r in mine)
    reg = [r for r in rows if r.variant == "reg"]
    assert reg and all(r.extra["regularizer"] == {"eps": 0.1, "weight": 1e-4, "every": 2} for r in reg)
    assert MemgradTask.Options().regularizer is not None  # the authors' settings by default
    assert MemgradTask.Options().regularizer.to_dict() == {"eps": 0.1, "weight": 1e-4, "every": 10}  # type: ignore[union-attr]
