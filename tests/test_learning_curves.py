"""Learning curves during training, time_to_target (AlgoPerf style), estimator honesty and closed-form baselines."""

from __future__ import annotations

import itertools
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from task_helpers import BiasedEstimatorFlow, ClosedFormGaussian, SeriesResidual
from torch import Tensor

from bench.datasets.base import Dataset
from bench.tasks import training
from bench.tasks.base import Budget, Metric, TaskContext
from bench.tasks.classification import ClassificationTask
from bench.tasks.curves import (
    TIME_TO_TARGET,
    Curve,
    CurveRequest,
    curve_metrics,
    eval_steps,
    first_reaching,
)
from bench.tasks.likelihood import (
    CURVE_MIN_POINTS,
    KL_GAP,
    TEST_BPD,
    LikelihoodOptions,
    LikelihoodTask,
    ScoringPlan,
    curve_size,
    log_likelihood,
)
from bench.tasks.training import TrainResult, fixed_test_x, train_likelihood, trained_model
from bench.units import bits_per_dim
from models.base import InvertibleModel
from models.template import LinearFlow

CPU = torch.device("cpu")


def gaussian_2d(n: int = 2000, seed: int = 0) -> Dataset:
    """N(mu, Sigma) in 2-D with its entropy; train and test sets of ``n`` points each."""
    g = torch.Generator().manual_seed(seed)
    sigma = torch.tensor([[2.0, 0.8], [0.8, 0.6]], dtype=torch.float64)
    chol = torch.linalg.cholesky(sigma)
    mu = torch.tensor([1.0, -0.5], dtype=torch.float64)
    x = (torch.randn(2 * n, 2, generator=g, dtype=torch.float64) @ chol.T + mu).float()
    entropy = 0.5 * float(torch.logdet(2 * math.pi * math.e * sigma))
    return Dataset(name="gauss2", kind="vector", train_x=x[:n], test_x=x[n:], entropy=entropy)


def likelihood_ctx(make: Any, dataset: Dataset, budget: Budget, targets: dict[str, float] | None = None,
                   checkpoint_dir: Path | None = None, **options: Any) -> TaskContext:
    return TaskContext(make_model=make, dataset=dataset, seed=0, budget=budget, device=CPU,
                       options=LikelihoodTask.parse_options({"artifacts": False, **options}, "tasks.likelihood"),
                       model_name="test-model", task_name="likelihood", targets=dict(targets or {}),
                       checkpoint_dir=checkpoint_dir)


def rows(metrics: list[Metric], name: str) -> list[Metric]:
    return [m for m in metrics if m.name == name]


def one(metrics: list[Metric], name: str) -> Metric:
    found = rows(metrics, name)
    assert len(found) == 1, f"{len(found)} rows named {name}"
    return found[0]


# ----------------------------------------------------------------------------------------------- pure functions
def test_eval_steps_are_step_zero_and_a_geometric_schedule_to_the_step_limit() -> None:
    steps = eval_steps(3000, 12)
    assert steps[0] == 0 and steps[1] == 1 and steps[-1] == 3000
    assert len(steps) == 12 and steps == sorted(set(steps))  # stopped early, the final step replaces 3000
    ratios = [b / a for a, b in itertools.pairwise(steps[1:])]
    assert max(ratios) / min(ratios) < 1.3  # geometric: consecutive ratios near 3000 ** (1 / 10) = 2.23
    assert eval_steps(3000, 1) == [] and eval_steps(3000, 2) == [0] and eval_steps(0, 12) == [0]
    assert eval_steps(5, 12) == [0, 1, 2, 3, 4, 5]  # rounding merges duplicates
    with pytest.raises(ValueError):
        eval_steps(10, 0)


def test_first_reaching_on_a_synthetic_curve() -> None:
    values = [2.0, 1.2, math.nan, 0.7, 0.4, 0.5, 0.1]
    assert first_reaching(values, 0.5, "down") == 4
    assert first_reaching(values, 0.7, "down") == 3  # on the threshold counts as reached
    assert first_reaching(values, 0.05, "down") is None
    assert first_reaching(values, 1.5, "up") == 0
    assert first_reaching([0.1, 0.5, math.inf, 0.95], 0.9, "up") == 3  # non-finite values never reach
    assert first_reaching([-0.8, 0.3, -0.05], 0.1, "zero") == 2
    with pytest.raises(ValueError, match="direction"):
        first_reaching(values, 0.5, None)


def test_time_to_target_rows_of_a_synthetic_curve() -> None:
    curve = Curve("kl_gap", step=[0, 1, 3, 8, 20, 40], seconds=[0.0, 0.1, 0.25, 0.6, 1.5, 3.0],
                  value=[1.5, 1.1, 0.8, 0.35, 0.18, 0.2], eval_seconds=0.42)
    judged = {"kl_gap": (KL_GAP, lambda v: v), "test_bpd": (TEST_BPD, lambda v: v + 10.0)}
    targets = {"kl_gap": 0.2, "test_bpd": 9.0, "test_accuracy": 0.9}  # accuracy: another task's metric
    out = curve_metrics(curve, "kl_gap", targets, judged)
    eval_time = one(out, "eval_time")
    assert eval_time.value == 0.42 and eval_time.direction is None and eval_time.unit == "s"
    assert eval_time.extra["curve"] == {"metric": "kl_gap", "step": curve.step, "seconds": curve.seconds,
                                        "value": curve.value, "n_eval": 6}
    reached, missed = rows(out, "time_to_target")  # sorted by target metric: kl_gap, test_bpd
    assert (reached.unit, reached.direction) == ("s", "down") == (TIME_TO_TARGET.unit, TIME_TO_TARGET.direction)
    assert reached.status == "ok" and reached.value == 1.5 and reached.extra["step"] == 20
    assert reached.settings == {"target_metric": "kl_gap", "target": 0.2}
    assert missed.status == "not_reached" and missed.value is None
    assert missed.settings == {"target_metric": "test_bpd", "target": 9.0}
    assert missed.extra["best"] == pytest.approx(10.18)
    # no curve: an empty eval_time and the targets it cannot judge marked so
    off = curve_metrics(None, "kl_gap", {"kl_gap": 0.2}, judged)
    assert one(off, "eval_time").value == 0.0 and one(off, "eval_time").extra["curve"]["n_eval"] == 0
    assert one(off, "time_to_target").status == "unsupported"


# ----------------------------------------------------------------------------------------------- the loop
class FakeClock:
    """``time.perf_counter`` replaced by a counter that only the test advances."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class TickingFlow(LinearFlow):
    """A LinearFlow whose every optimiser step advances the fake clock by one second."""

    clock: FakeClock

    def after_step(self) -> None:
        self.clock.now += 1.0


def test_evaluation_time_is_excluded_from_the_training_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = FakeClock()
    monkeypatch.setattr(training.time, "perf_counter", clock)
    model = TickingFlow((2,))
    model.clock = clock
    seen: list[bool] = []

    def evaluate(m: InvertibleModel) -> float:
        seen.append(m.training)
        clock.now += 100.0  # each evaluation "takes" 100 s
        return float(clock.now)

    request = CurveRequest("kl_gap", evaluate, evals=12)
    budget = Budget(steps=1000, seconds=10.0, batch_size=32)
    result = train_likelihood(model, gaussian_2d(200), budget, CPU, seed=0, curve=request)
    # 10 s of training: the 100 s evaluations do not count against the budget
    assert result.steps == 10 and "time budget" in result.reason and result.seconds == 10.0
    curve = result.curve
    assert curve is not None and not any(seen) and model.training is False
    assert curve.step == [0, 1, 2, 4, 8, 10]  # planned 0, 1000 ** (k / 10) = 1, 2, 4, 8, 16, ...; the final 10
    assert curve.seconds == [float(s) for s in curve.step]  # one second per step, evaluations excluded
    assert curve.eval_seconds == 100.0 * curve.n_eval and curve.n_eval <= 12


def test_a_curve_does_not_change_the_training() -> None:
    """The estimator's probes draw from torch's global RNG; evaluations run on a forked random state."""
    dataset = gaussian_2d(300)
    x = dataset.test_x[:64]

    def evaluate(m: InvertibleModel) -> float:
        with torch.no_grad():
            return float(m(x)[1].mean())  # a stochastic estimate: consumes random numbers

    budget = Budget(steps=25, batch_size=32, lr=0.01)
    plain, curved = SeriesResidual((2,)), SeriesResidual((2,))
    train_likelihood(plain, dataset, budget, CPU, seed=0)
    result = train_likelihood(curved, dataset, budget, CPU, seed=0, curve=CurveRequest("x", evaluate, evals=8))
    assert result.curve is not None and result.curve.n_eval == 8
    assert all(torch.equal(a, b) for a, b in zip(plain.state_dict().values(), curved.state_dict().values(),
                                                  strict=True))


def test_curves_are_cached_with_the_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    trainings: list[bool] = []
    real = training.train_likelihood

    def counting(*args: Any, **kwargs: Any) -> TrainResult:
        curve = args[7] if len(args) > 7 else kwargs.get("curve")
        trainings.append(curve is not None)
        return real(*args, **kwargs)

    monkeypatch.setattr(training, "train_likelihood", counting)
    dataset = gaussian_2d(200)

    def ctx(steps: int = 12) -> TaskContext:
        return likelihood_ctx(lambda: LinearFlow((2,)), dataset, Budget(steps=steps, batch_size=32, lr=0.02),
                              checkpoint_dir=tmp_path)

    def request(points: int) -> CurveRequest:
        return CurveRequest("n", lambda m: float(points), evals=5, settings={"points": points})

    _, first = trained_model(ctx(), "likelihood", curve=request(64))
    _, again = trained_model(ctx(), "likelihood", curve=request(64))
    _, plain = trained_model(ctx(), "likelihood")  # a measurement task: reuses the checkpoint with its curve
    assert trainings == [True] and first == again == plain and first.curve is not None
    assert first.curve.value == [64.0] * first.curve.n_eval
    _, other = trained_model(ctx(), "likelihood", curve=request(32))  # another curve: trained again, replaced
    assert trainings == [True, True] and other.curve is not None and other.curve.value[0] == 32.0
    assert len(list(tmp_path.iterdir())) == 1
    # a checkpoint saved without a curve is retrained for a caller that asks for one
    _, none = trained_model(ctx(13), "likelihood")
    _, curved = trained_model(ctx(13), "likelihood", curve=request(64))
    assert none.curve is None and curved.curve is not None and trainings == [True, True, False, True]


# ----------------------------------------------------------------------------------------------- through the tasks
def test_time_to_target_end_to_end_through_the_likelihood_task() -> None:
    dataset = gaussian_2d(1000)
    targets = {"kl_gap": 0.3, "test_bpd": -5.0, "train_time": 1.0}  # reachable, impossible, not judged
    ctx = likelihood_ctx(lambda: LinearFlow((2,)), dataset, Budget(steps=150, batch_size=200, lr=0.03), targets,
                         curve_points=2000, curve_evals=10)
    metrics = LikelihoodTask().run(ctx)
    curve = one(metrics, "eval_time").extra["curve"]
    assert curve["metric"] == "kl_gap" and curve["n_eval"] == len(curve["step"]) <= 10
    assert curve["step"][0] == 0 and curve["step"][-1] == one(metrics, "train_steps").value == 150
    assert curve["value"][0] > 0.5 > curve["value"][-1]  # the model learns
    # the subset holds the whole test set: the final point is the final kl_gap
    assert curve["value"][-1] == pytest.approx(one(metrics, "kl_gap").value, abs=1e-9)
    # step 0 is the model as initialised
    fresh = LinearFlow((2,)).eval()
    with torch.no_grad():
        initial = float(-fresh.log_prob(dataset.test_x).double().mean()) - dataset.entropy  # type: ignore[operator]
    assert curve["value"][0] == pytest.approx(initial, abs=1e-5)
    by_target = {m.settings["target_metric"]: m for m in rows(metrics, "time_to_target")}
    assert set(by_target) == {"kl_gap", "test_bpd"}
    first = next(i for i, v in enumerate(curve["value"]) if v <= 0.3)
    hit = by_target["kl_gap"]
    assert hit.status == "ok" and hit.value == curve["seconds"][first] and hit.extra["step"] == curve["step"][first]
    assert 0 < hit.extra["step"] <= 150
    missed = by_target["test_bpd"]
    assert missed.status == "not_reached" and missed.value is None
    best_bpd = float(bits_per_dim(min(curve["value"]) + dataset.entropy, 2))  # type: ignore[operator]
    assert missed.extra["best"] == pytest.approx(best_bpd)
    eval_time, train_time = one(metrics, "eval_time").value, one(metrics, "train_time").value
    assert eval_time is not None and train_time is not None and eval_time > 0
    assert curve["seconds"] == sorted(curve["seconds"]) and curve["seconds"][-1] <= train_time


def test_curve_points_subset_and_curves_off() -> None:
    dataset = gaussian_2d(600)
    dataset.entropy = None  # no entropy: the curve is in bits/dim
    budget = Budget(steps=20, batch_size=100, lr=0.03)
    holder: list[LinearFlow] = []

    def make() -> LinearFlow:
        holder.append(LinearFlow((2,)))
        return holder[-1]

    metrics = LikelihoodTask().run(likelihood_ctx(make, dataset, budget, {"test_bpd": 100.0}, curve_points=50))
    curve = one(metrics, "eval_time").extra["curve"]
    assert curve["metric"] == "test_bpd"
    x = fixed_test_x(dataset, 0)[:50]
    nll = float(-log_likelihood(holder[-1], dataset, x, CPU, ScoringPlan("exact", "model")).double().mean())
    assert curve["value"][-1] == pytest.approx(float(bits_per_dim(nll, 2)), abs=1e-6)
    hit = one(metrics, "time_to_target")  # reached at step 0, after data_init (training time)
    assert hit.extra["step"] == 0 and hit.value == curve["seconds"][0]
    off = LikelihoodTask().run(likelihood_ctx(make, dataset, budget, {"test_bpd": 100.0}, curve_evals=0))
    assert one(off, "eval_time").value == 0.0 and one(off, "time_to_target").status == "unsupported"


def test_curve_size_caps_the_points_by_dimension() -> None:
    options = LikelihoodOptions()
    assert (options.curve_points, options.curve_rows) == (512, 8192)
    assert curve_size(options, 2) == 512 and curve_size(options, 64) == 128
    assert curve_size(options, 784) == CURVE_MIN_POINTS == 64
    assert curve_size(LikelihoodOptions(curve_points=32), 784) == 32


def test_time_to_target_through_the_classification_task() -> None:
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 2, (600,), generator=g)
    x = torch.randn(600, 2, generator=g) * 0.7 + torch.stack([4.0 * y - 2.0, torch.zeros(600)], dim=1)
    dataset = Dataset(name="blobs", kind="vector", train_x=x[:300], test_x=x[300:], train_y=y[:300],
                      test_y=y[300:], num_classes=2)
    from test_training import TinyClassifier

    ctx = TaskContext(make_model=lambda: TinyClassifier((2,), num_classes=2), dataset=dataset, seed=0,
                      budget=Budget(steps=60, batch_size=64, lr=0.05), device=CPU,
                      options=ClassificationTask.parse_options({"curve_points": 1000}, "tasks.classification"),
                      targets={"test_accuracy": 0.95, "kl_gap": 0.1})
    metrics = ClassificationTask().run(ctx)
    curve = one(metrics, "eval_time").extra["curve"]
    assert curve["metric"] == "test_accuracy" and curve["step"][-1] == 60
    assert curve["value"][-1] == one(metrics, "test_accuracy").value
    hit = one(metrics, "time_to_target")  # kl_gap is the likelihood task's
    first = next(i for i, v in enumerate(curve["value"]) if v >= 0.95)
    assert hit.status == "ok" and hit.value == curve["seconds"][first] and hit.extra["step"] == curve["step"][first]


# ----------------------------------------------------------------------------------------------- honesty
def test_a_biased_estimator_is_flagged_below_the_entropy_and_its_gap_reported() -> None:
    dataset = gaussian_2d(2000)
    budget = Budget(steps=300, batch_size=256, lr=0.03)
    biased = LikelihoodTask().run(likelihood_ctx(lambda: BiasedEstimatorFlow((2,), bias=1.0), dataset, budget))
    nll = one(biased, "test_nll")
    assert nll.extra["logdet_eval"] == "exact"
    assert nll.extra["train_loss_below_entropy"] is True
    assert nll.extra["train_loss_margin"] < -0.8 and 0 < nll.extra["train_loss_noise"] < 0.5
    gap = one(biased, "estimator_gap")
    assert (gap.unit, gap.direction) == ("nats", "zero")
    assert gap.value == pytest.approx(-1.0, abs=1e-4)  # the estimated NLL is the exact one minus the bias
    assert gap.extra["stderr"] < 1e-4 and gap.extra["reference"] == "exact"
    assert gap.extra["trained_settings"]["terms"] == 3
    # the exact model: its final training loss is within noise of the entropy, and it has no estimator gap
    exact = LikelihoodTask().run(likelihood_ctx(lambda: LinearFlow((2,)), dataset, budget))
    nll = one(exact, "test_nll")
    assert nll.extra["train_loss_below_entropy"] is False
    assert abs(nll.extra["train_loss_margin"]) < nll.extra["train_loss_noise"] + 0.05
    assert not rows(exact, "estimator_gap")


def test_train_loss_check_needs_a_training_loss() -> None:
    dataset = gaussian_2d(200)
    metrics = LikelihoodTask().run(likelihood_ctx(lambda: LinearFlow((2,)), dataset, Budget(steps=0)))
    assert "train_loss_below_entropy" not in one(metrics, "test_nll").extra  # no step, no training loss


# ----------------------------------------------------------------------------------------------- baselines
def test_a_closed_form_model_is_fitted_once_and_marked_as_a_baseline(monkeypatch: pytest.MonkeyPatch) -> None:
    fitted: list[Tensor] = []
    real = ClosedFormGaussian.fit_closed_form

    def spy(self: ClosedFormGaussian, y: Tensor) -> None:
        fitted.append(y)
        real(self, y)

    monkeypatch.setattr(ClosedFormGaussian, "fit_closed_form", spy)
    dataset = gaussian_2d(4000)
    metrics = LikelihoodTask().run(likelihood_ctx(lambda: ClosedFormGaussian((2,)), dataset,
                                                  Budget(steps=500, batch_size=64), {"kl_gap": 0.5}))
    assert len(fitted) == 1 and torch.equal(fitted[0], dataset.train_x)  # the whole training set, once
    assert one(metrics, "train_steps").value == 0
    assert "closed form" in one(metrics, "train_time").extra["reason"]
    assert all(m.extra.get("baseline") == "gaussian" for m in metrics)
    # the Gaussian data set's own family: kl_gap 0 within sampling error
    gap = one(metrics, "kl_gap")
    assert gap.value is not None and abs(gap.value) < 4 * gap.extra["stderr"] + 0.01
    curve = one(metrics, "eval_time").extra["curve"]
    assert curve["step"] == [0] and curve["n_eval"] == 1
    assert one(metrics, "time_to_target").status == "ok" and one(metrics, "time_to_target").extra["step"] == 0
    # a model that is not a baseline has no such key
    plain = LikelihoodTask().run(likelihood_ctx(lambda: LinearFlow((2,)), dataset, Budget(steps=2)))
    assert all("baseline" not in m.extra for m in plain)
