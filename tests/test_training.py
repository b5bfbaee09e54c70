"""Training loops, the training loss, the checkpoint cache, the finite-difference regulariser, the classification
task and ``steps = 0``."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor, nn

from bench.datasets.base import Dataset
from bench.options import Options
from bench.regularizers import FDRegularizer
from bench.suite import SuiteError, parse_suite
from bench.tasks import training
from bench.tasks.base import Budget, TaskContext
from bench.tasks.classification import ClassificationTask
from bench.tasks.registry import get_task
from bench.tasks.training import TrainResult, train_classifier, train_likelihood, trained_model
from models.actnorm import ActNorm
from models.base import Capabilities, InvertibleModel, UnsupportedCapability
from models.loss import training_loss
from models.template import LinearFlow

CPU = torch.device("cpu")


def vector_dataset(n: int = 200, d: int = 2, stds: Sequence[float] | None = None, seed: int = 0) -> Dataset:
    """Zero-mean Gaussian data with per-axis ``stds`` rotated by 30 degrees in the first two axes."""
    g = torch.Generator().manual_seed(seed)
    scale = torch.tensor(list(stds) if stds is not None else [1.0] * d)
    rot = torch.eye(d)
    c, s = math.cos(math.pi / 6), math.sin(math.pi / 6)
    rot[:2, :2] = torch.tensor([[c, -s], [s, c]])
    x = (torch.randn(2 * n, d, generator=g) * scale) @ rot.T
    return Dataset(name=f"vec{d}", kind="vector", train_x=x[:n], test_x=x[n:])


def same_state(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


class CountingFlow(LinearFlow):
    """LinearFlow that records ``data_init`` batches, ``after_step`` calls and every training-mode input."""

    def __init__(self, shape: Sequence[int], num_classes: int | None = None) -> None:
        super().__init__(shape, num_classes)
        self.init_batches: list[Tensor] = []
        self.after_steps = 0
        self.seen: list[Tensor] = []

    def data_init(self, x: Tensor) -> None:
        self.init_batches.append(x.clone())

    def after_step(self) -> None:
        self.after_steps += 1

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        if self.training:
            self.seen.append(x.detach().clone())
        return super().forward(x)


def test_train_likelihood_calls_hooks_and_records_history() -> None:
    dataset = vector_dataset(n=200, stds=[3.0, 0.5])
    model = CountingFlow((2,))
    result = train_likelihood(model, dataset, Budget(steps=30, batch_size=50, lr=0.05), CPU, seed=0)
    assert (result.steps, result.diverged, result.reason) == (30, False, "")
    assert len(model.init_batches) == 1 and model.init_batches[0].shape == (50, 2)
    assert torch.equal(model.init_batches[0], model.seen[0])  # data_init sees the first training batch
    assert model.after_steps == 30
    assert len(result.history) == 30 and all(math.isfinite(v) for v in result.history)
    assert result.final_loss == result.history[-1] < result.history[0]
    assert result.seconds > 0 and not model.training


def test_history_is_windowed_means() -> None:
    dataset = vector_dataset(n=100)
    model = CountingFlow((2,))
    result = train_likelihood(model, dataset, Budget(steps=250, batch_size=100, lr=0.0), CPU, seed=0)
    assert len(result.history) == 125  # windows of 250 // 100 = 2 steps
    # with lr = 0 and full batches every step's loss is the same number
    with torch.no_grad():
        full = float(-model.log_prob(dataset.train_x).mean())
    assert result.history == pytest.approx([full] * 125, abs=1e-5)


def test_minibatches_without_replacement_within_an_epoch() -> None:
    dataset = vector_dataset(n=100)
    model = CountingFlow((2,))
    train_likelihood(model, dataset, Budget(steps=4, batch_size=25), CPU, seed=3)
    rows = torch.cat(model.seen[:4])
    assert rows.shape == (100, 2)
    assert torch.equal(rows[torch.argsort(rows[:, 0])], dataset.train_x[torch.argsort(dataset.train_x[:, 0])])


def test_discrete_data_is_dequantised_afresh_each_step() -> None:
    levels = 4
    k = torch.randint(0, levels, (8, 3), generator=torch.Generator().manual_seed(0))
    dataset = Dataset(name="disc", kind="vector", train_x=k.float() / levels, test_x=k.float() / levels,
                      levels=levels)
    model = CountingFlow((3,))
    train_likelihood(model, dataset, Budget(steps=2, batch_size=8, lr=0.0), CPU, seed=0)
    first, second = model.seen[0], model.seen[1]
    bins = [torch.floor(b * levels).long() for b in (first, second)]
    key = [sorted(map(tuple, b.tolist())) for b in bins]
    assert key[0] == key[1] == sorted(map(tuple, k.tolist()))  # each value stays in its own bin
    assert not torch.equal(torch.sort(first.flatten()).values, torch.sort(second.flatten()).values)


def test_preprocess_logdet_is_added_to_the_loss() -> None:
    x0 = torch.tensor([[0.3, -0.7, 1.1]])
    data = x0.repeat(64, 1)
    dataset = Dataset(name="const", kind="vector", train_x=data, test_x=data,
                      preprocess=lambda x: (2 * x, torch.full((x.shape[0],), 3 * math.log(2))))
    model = LinearFlow((3,))
    result = train_likelihood(model, dataset, Budget(steps=3, batch_size=16, lr=0.0), CPU, seed=0)
    with torch.no_grad():
        expected = -(float(model.log_prob(2 * x0)) + 3 * math.log(2))
    assert result.history == pytest.approx([expected] * 3, abs=1e-5)


def test_time_budget_stops_training() -> None:
    result = train_likelihood(LinearFlow((2,)), vector_dataset(), Budget(steps=1000, seconds=0.0), CPU, seed=0)
    assert result.steps == 1 and not result.diverged and "time budget" in result.reason


def test_training_is_seeded() -> None:
    dataset = vector_dataset()
    budget = Budget(steps=20, batch_size=32, lr=0.05)
    models = [LinearFlow((2,)) for _ in range(3)]
    for model, seed in zip(models, (1, 1, 2), strict=True):
        train_likelihood(model, dataset, budget, CPU, seed=seed)
    assert same_state(models[0], models[1]) and not same_state(models[0], models[2])


class PoisonFlow(LinearFlow):
    """Returns a NaN log-det from its ``poison_at``-th gradient-enabled forward call on."""

    def __init__(self, shape: Sequence[int], num_classes: int | None = None, poison_at: int = 4) -> None:
        super().__init__(shape, num_classes)
        self._hparams["poison_at"] = poison_at
        self.poison_at, self.calls = poison_at, 0

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        z, ladj = super().forward(x)
        if torch.is_grad_enabled():
            self.calls += 1
            if self.calls >= self.poison_at:
                ladj = ladj * math.nan
        return z, ladj


def test_nonfinite_loss_stops_before_the_update() -> None:
    dataset = vector_dataset()
    poisoned = PoisonFlow((2,), poison_at=4)
    result = train_likelihood(poisoned, dataset, Budget(steps=50, batch_size=32, lr=0.05), CPU, seed=0)
    assert result.diverged and result.steps == 3 and "step 3" in result.reason and math.isnan(result.final_loss)
    clean = PoisonFlow((2,), poison_at=10**9)
    train_likelihood(clean, dataset, Budget(steps=3, batch_size=32, lr=0.05), CPU, seed=0)
    assert same_state(poisoned, clean)  # the last finite parameters, untouched by the NaN step


def test_progress_every_five_percent() -> None:
    calls: list[tuple[int, int, str]] = []
    train_likelihood(LinearFlow((2,)), vector_dataset(), Budget(steps=40, batch_size=16), CPU, seed=0,
                     progress=lambda done, total, msg: calls.append((done, total, msg)))
    assert [c[0] for c in calls] == list(range(2, 41, 2))
    assert all(c[1] == 40 for c in calls) and "loss" in calls[-1][2]


# ----------------------------------------------------------------------------------- checkpoint cache
def make_ctx(make_model: Any, dataset: Dataset, budget: Budget, tmp: Path | None, seed: int = 0,
             options: Options | None = None) -> TaskContext:
    return TaskContext(make_model=make_model, dataset=dataset, seed=seed, budget=budget, device=CPU,
                       options=options if options is not None else ClassificationTask.Options(),
                       checkpoint_dir=tmp, model_name="linear-template")


@pytest.fixture
def train_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """One entry per call of ``training.train_likelihood`` (which still trains)."""
    log: list[int] = []
    real = training.train_likelihood

    def counting(*args: Any, **kwargs: Any) -> TrainResult:
        log.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(training, "train_likelihood", counting)
    return log


def test_checkpoint_cache_returns_identical_model_without_retraining(tmp_path: Path, train_calls: list[int]) -> None:
    dataset = vector_dataset()
    budget = Budget(steps=15, batch_size=32, lr=0.05)
    first, r1 = trained_model(make_ctx(lambda: LinearFlow((2,)), dataset, budget, tmp_path), "likelihood")
    second, r2 = trained_model(make_ctx(lambda: LinearFlow((2,)), dataset, budget, tmp_path), "likelihood")
    assert len(train_calls) == 1
    assert same_state(first, second) and not same_state(second, LinearFlow((2,)))
    assert r1 == r2 and not second.training
    assert [p.suffix for p in tmp_path.iterdir()] == [".pt"]  # no temporary file left behind
    # anything the trained model depends on changes the key
    trained_model(make_ctx(lambda: LinearFlow((2,)), dataset, Budget(steps=16, batch_size=32, lr=0.05), tmp_path),
                  "likelihood")
    trained_model(make_ctx(lambda: LinearFlow((2,)), dataset, budget, tmp_path, seed=1), "likelihood")
    trained_model(make_ctx(lambda: LinearFlow((2,), seed=5), dataset, budget, tmp_path), "likelihood")
    trained_model(make_ctx(lambda: LinearFlow((2,)), vector_dataset(seed=9), budget, tmp_path), "likelihood")
    trained_model(make_ctx(lambda: LinearFlow((2,)), dataset, budget, tmp_path), "likelihood", FDRegularizer())
    assert len(train_calls) == 6
    trained_model(make_ctx(lambda: LinearFlow((2,)), dataset, budget, tmp_path), "likelihood", FDRegularizer())
    assert len(train_calls) == 6 and len(list(tmp_path.iterdir())) == 6


def test_trained_model_without_checkpoint_dir_always_trains(train_calls: list[int]) -> None:
    ctx = make_ctx(lambda: LinearFlow((2,)), vector_dataset(), Budget(steps=2), None)
    trained_model(ctx, "likelihood")
    trained_model(ctx, "likelihood")
    assert len(train_calls) == 2


def test_trained_model_rejects_bad_requests() -> None:
    ctx = make_ctx(lambda: LinearFlow((2,)), vector_dataset(), Budget(steps=2), None)
    with pytest.raises(ValueError, match="unknown objective"):
        trained_model(ctx, "density")
    with pytest.raises(ValueError, match="unknown objective"):
        training_loss(LinearFlow((2,)), torch.zeros(3, 2), objective="density")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="likelihood objective only"):
        trained_model(ctx, "classification", FDRegularizer())


# ----------------------------------------------------------------------------------- FD regulariser
def test_fd_quotients_of_a_scaled_rotation_are_its_scale() -> None:
    model = LinearFlow((3,), singular_values=[2.0, 2.0, 2.0]).double()
    x = torch.randn(50, 3, dtype=torch.float64)
    fwd, inv = FDRegularizer(eps=0.01).quotients(model, x)
    torch.testing.assert_close(fwd, torch.full((50,), 2.0, dtype=torch.float64))
    torch.testing.assert_close(inv, torch.full((50,), 0.5, dtype=torch.float64))


def test_fd_quotients_match_the_exact_expectation_for_a_linear_map() -> None:
    s = torch.tensor([3.0, 1.0, 0.5, 0.25], dtype=torch.float64)
    model = LinearFlow((4,), singular_values=s.tolist()).double()
    torch.manual_seed(0)
    n = 20000
    with torch.no_grad():
        fwd, inv = FDRegularizer(eps=0.01).quotients(model, torch.randn(n, 4, dtype=torch.float64))
    # each quotient is ||W v|| (resp. ||W^-1 v||): within [sigma_min, sigma_max] ...
    assert bool((fwd >= s.min() - 1e-9).all() and (fwd <= s.max() + 1e-9).all())
    assert bool((inv >= 1 / s.max() - 1e-9).all() and (inv <= 1 / s.min() + 1e-9).all())
    # ... and E||W v||^2 = ||W||_F^2 / D for v uniform on the sphere
    for q, exact in ((fwd, (s**2).sum() / 4), (inv, (s**-2).sum() / 4)):
        sq = q**2
        assert abs(float(sq.mean() - exact)) < 4 * float(sq.std()) / math.sqrt(n)


def test_fd_penalty_is_the_weighted_sum_of_squares_and_differentiable() -> None:
    model = LinearFlow((3,), singular_values=[2.0, 1.0, 0.5])
    reg = FDRegularizer(eps=0.01, weight=0.3)
    x = torch.randn(64, 3)
    torch.manual_seed(1)
    fwd, inv = reg.quotients(model, x)
    torch.manual_seed(1)
    pen = reg.penalty(model, x)
    # weight * sum_b ||difference_b||^2 / eps = weight * eps * sum_b q_b^2 (the authors' form)
    assert float(pen.detach()) == pytest.approx(0.3 * 0.01 * float(((fwd**2).sum() + (inv**2).sum()).detach()),
                                                rel=1e-6)
    pen.backward()
    assert model.weight.grad is not None and bool(torch.isfinite(model.weight.grad).all())
    assert float(model.weight.grad.abs().sum()) > 0


def test_fd_penalty_applied_every_k_steps(monkeypatch: pytest.MonkeyPatch) -> None:
    reg = FDRegularizer(every=3)
    steps: list[int] = []
    real = FDRegularizer.penalty

    def counting(self: FDRegularizer, model: InvertibleModel, x: Tensor) -> Tensor:
        steps.append(1)
        return real(self, model, x)

    monkeypatch.setattr(FDRegularizer, "penalty", counting)
    train_likelihood(LinearFlow((2,)), vector_dataset(), Budget(steps=10, batch_size=16), CPU, seed=0,
                     regularizer=reg)
    assert len(steps) == 4  # steps 0, 3, 6, 9
    with pytest.raises(ValueError):
        FDRegularizer(every=0)


def test_fd_regulariser_reduces_inverse_lipschitz() -> None:
    dataset = vector_dataset(n=512, stds=[4.0, 1.0])
    budget = Budget(steps=150, batch_size=128, lr=0.05)
    lips = []
    for reg in (None, FDRegularizer(eps=0.01, weight=1.0, every=1)):
        model = LinearFlow((2,))
        result = train_likelihood(model, dataset, budget, CPU, seed=0, regularizer=reg)
        assert not result.diverged
        lips.append(1.0 / float(torch.linalg.svdvals(model.weight.detach()).min()))  # exact Lip(f^-1)
    assert lips[0] > 3.0  # maximum likelihood whitens: Lip(f^-1) ~ the largest data std, 4
    assert lips[1] < 0.9 * lips[0]


# ----------------------------------------------------------------------------------- classification
class TinyClassifier(InvertibleModel):
    """A linear flow ``z = W x`` with a linear head on ``z``. ``x``: (B, D) -> logits (B, num_classes)."""

    family = "tinyclf"
    backend = "test"
    capabilities = Capabilities(density=False, classifier=True)

    def __init__(self, shape: Sequence[int], num_classes: int | None = None, nan: bool = False) -> None:
        super().__init__(shape, num_classes, nan=nan)
        self.weight = nn.Parameter(torch.eye(self.dim))
        assert self.num_classes is not None
        self.head = nn.Linear(self.dim, self.num_classes)
        self.nan = nan

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return x @ self.weight.T, torch.linalg.slogdet(self.weight)[1].expand(x.shape[0])

    def inverse(self, z: Tensor) -> Tensor:
        return torch.linalg.solve(self.weight, z.T).T

    def logits(self, x: Tensor) -> Tensor:
        out = self.head(self(x)[0])
        return out * math.nan if self.nan else out


def blobs(n: int = 300) -> Dataset:
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 2, (2 * n,), generator=g)
    x = torch.randn(2 * n, 2, generator=g) * 0.7 + torch.stack([5.0 * y - 2.5, torch.zeros(2 * n)], dim=1)
    return Dataset(name="blobs", kind="vector", train_x=x[:n], test_x=x[n:], train_y=y[:n], test_y=y[n:],
                   num_classes=2)


def test_classification_task_reaches_high_accuracy() -> None:
    assert get_task("classification") is ClassificationTask
    dataset = blobs()
    ctx = make_ctx(lambda: TinyClassifier((2,), num_classes=2), dataset, Budget(steps=60, batch_size=64, lr=0.05),
                   None)
    ctx.targets = {"test_accuracy": 0.9}
    metrics = {m.name: m for m in ClassificationTask().run(ctx)}
    assert set(metrics) == {spec.name for spec in ClassificationTask.metric_specs}
    assert ClassificationTask.trains_model
    acc = metrics["test_accuracy"]
    assert (acc.unit, acc.direction, acc.status) == ("fraction", "up", "ok")
    assert (acc.input, acc.variant, acc.settings) == ("", "", {})
    assert acc.value is not None and 0.97 <= acc.value <= 1.0
    assert acc.extra["n_test"] == 300 and acc.extra["correct"] == round(acc.value * 300)
    assert metrics["train_steps"].value == 60 and metrics["train_time"].unit == "s"


def test_classification_divergence_and_support() -> None:
    dataset = blobs(50)
    ctx = make_ctx(lambda: TinyClassifier((2,), num_classes=2, nan=True), dataset, Budget(steps=5), None)
    acc = {m.name: m for m in ClassificationTask().run(ctx)}["test_accuracy"]
    assert acc.status == "diverged" and acc.value is None
    caps = TinyClassifier.capabilities
    assert ClassificationTask.supports(caps, dataset.info)
    assert not ClassificationTask.supports(LinearFlow.capabilities, dataset.info)
    unlabelled = vector_dataset()
    assert not ClassificationTask.supports(caps, unlabelled.info)
    with pytest.raises(ValueError, match="no labels"):
        train_classifier(TinyClassifier((2,), num_classes=2), unlabelled, Budget(steps=1), CPU, seed=0)


def test_classifier_cross_entropy_loss_value() -> None:
    dataset = blobs(64)
    model = TinyClassifier((2,), num_classes=2)
    result = train_classifier(model, dataset, Budget(steps=1, batch_size=64, lr=0.0), CPU, seed=0)
    with torch.no_grad():
        assert dataset.train_y is not None
        expected = float(nn.functional.cross_entropy(model.logits(dataset.train_x), dataset.train_y))
    assert result.history == pytest.approx([expected], abs=1e-5)


def test_cosine_schedule_decays_the_learning_rate_over_the_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[float] = []

    class RecordingAdam(torch.optim.Adam):
        def step(self, closure: Any = None) -> Any:  # type: ignore[override]
            seen.append(self.param_groups[0]["lr"])
            return super().step(closure)

    monkeypatch.setattr(torch.optim, "Adam", RecordingAdam)
    budget = Budget(steps=10, batch_size=32, lr=0.01, schedule="cosine")
    train_likelihood(LinearFlow((2,)), vector_dataset(), budget, torch.device("cpu"), seed=0)
    expected = [0.01 * 0.5 * (1 + math.cos(math.pi * k / 10)) for k in range(10)]
    assert seen == pytest.approx(expected)
    seen.clear()
    train_likelihood(LinearFlow((2,)), vector_dataset(), Budget(steps=5, batch_size=32, lr=0.01),
                     torch.device("cpu"), seed=0)
    assert seen == [0.01] * 5


# ----------------------------------------------------------------------------------- the training loss
def test_training_loss_is_the_mean_nll_or_the_cross_entropy() -> None:
    flow = LinearFlow((3,))
    x, ldj = torch.randn(6, 3), torch.randn(6)
    with torch.no_grad():
        torch.testing.assert_close(training_loss(flow, x), -flow.log_prob(x).mean())
        torch.testing.assert_close(training_loss(flow, x, ldj=ldj), -(flow.log_prob(x) + ldj).mean())
    clf = TinyClassifier((2,), num_classes=2)
    x2, y = torch.randn(5, 2), torch.tensor([1, 1, 0, 1, 0])
    with torch.no_grad():
        logits = clf.logits(x2)
        torch.testing.assert_close(training_loss(clf, x2, y), nn.functional.cross_entropy(logits, y))
        # without labels the targets cycle through the classes: 0, 1, 0, 1, 0
        torch.testing.assert_close(training_loss(clf, x2), nn.functional.cross_entropy(logits, torch.arange(5) % 2))
        assert float(training_loss(clf, x2)) != pytest.approx(float(training_loss(clf, x2, y)))
    with pytest.raises(UnsupportedCapability, match="not a classifier"):
        training_loss(flow, x, objective="classification")


# ----------------------------------------------------------------------------------- steps = 0
class ActNormFlow(LinearFlow):
    """ActNorm (Glow's data-dependent initialisation) followed by ``W x + b``; records its ``data_init`` batch."""

    def __init__(self, shape: Sequence[int], num_classes: int | None = None, seed: int = 0) -> None:
        super().__init__(shape, num_classes, seed=seed)
        self.actnorm = ActNorm(self.dim)
        self.init_batch: Tensor | None = None

    def data_init(self, x: Tensor) -> None:
        self.init_batch = x.clone()
        self.actnorm.initialize(x)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        y, ladj = self.actnorm(x)
        z, ladj2 = super().forward(y)
        return z, ladj + ladj2


def test_suite_budget_accepts_zero_steps_and_rejects_negative_ones() -> None:
    suite = parse_suite({"datasets": {"moons": {"budget": {"steps": 0}}}, "budget": {"steps": 0}})
    assert suite.budget.steps == 0
    with pytest.raises(SuiteError) as err:
        parse_suite({"datasets": ["moons"], "budget": {"steps": -1}})
    message = str(err.value)
    assert "budget.steps" in message and ">= 0" in message and "\n" not in message
    for key in ("batch_size", "lr", "seconds"):
        with pytest.raises(SuiteError, match=f"budget.{key}: must be positive"):
            parse_suite({"datasets": ["moons"], "budget": {key: 0}})


def test_zero_steps_runs_data_init_and_takes_no_step(monkeypatch: pytest.MonkeyPatch) -> None:
    dataset = vector_dataset(n=100, stds=[3.0, 0.5])
    steps: list[int] = []
    real_step = torch.optim.Adam.step

    def counting(self: torch.optim.Adam, closure: Any = None) -> Any:
        steps.append(1)
        return real_step(self, closure)

    monkeypatch.setattr(torch.optim.Adam, "step", counting)
    model, fresh = ActNormFlow((2,)), ActNormFlow((2,))
    result = train_likelihood(model, dataset, Budget(steps=0, batch_size=50, lr=0.05), CPU, seed=0)
    assert (result.steps, result.diverged, result.history, result.reason) == (0, False, [], "")
    assert math.isnan(result.final_loss) and not model.training and steps == []
    # W and b as initialised; ActNorm initialised from the first batch (zero mean, unit std per feature)
    assert torch.equal(model.weight, fresh.weight) and torch.equal(model.bias, fresh.bias)
    assert model.init_batch is not None and model.init_batch.shape == (50, 2)
    torch.testing.assert_close(model.actnorm.bias.detach(), -model.init_batch.mean(dim=0))
    assert not torch.equal(model.actnorm.bias, fresh.actnorm.bias) and bool(model.actnorm.initialized)
    # the same for the classifier loop
    clf = TinyClassifier((2,), num_classes=2)
    before = {k: v.clone() for k, v in clf.state_dict().items()}
    assert train_classifier(clf, blobs(50), Budget(steps=0), CPU, seed=0).steps == 0
    assert all(torch.equal(before[k], v) for k, v in clf.state_dict().items())


def test_zero_steps_checkpoint_is_cached(tmp_path: Path, train_calls: list[int]) -> None:
    dataset = vector_dataset()
    first, r1 = trained_model(make_ctx(lambda: ActNormFlow((2,)), dataset, Budget(steps=0), tmp_path), "likelihood")
    second, r2 = trained_model(make_ctx(lambda: ActNormFlow((2,)), dataset, Budget(steps=0), tmp_path), "likelihood")
    assert len(train_calls) == 1 and r1.steps == r2.steps == 0 and same_state(first, second)
    assert isinstance(second, ActNormFlow) and bool(second.actnorm.initialized)  # the data-initialised state
    trained_model(make_ctx(lambda: ActNormFlow((2,)), dataset, Budget(steps=1), tmp_path), "likelihood")
    assert len(train_calls) == 2
