"""The ``likelihood`` task: KL gap against a known entropy, units, divergence, log-det evaluation, artifacts."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from bench.datasets.base import Dataset
from bench.options import OptionError
from bench.tasks.base import Budget, Metric, TaskContext
from bench.tasks.likelihood import (
    HIGH_PRECISION,
    LikelihoodTask,
    ScoringPlan,
    cheapest_settings,
    high_precision_settings,
    log_likelihood,
)
from bench.tasks.registry import get_task
from bench.tasks.training import fixed_test_x
from bench.units import bits_per_dim
from models.actnorm import ActNorm
from models.base import Capabilities, EstimatorSettings, InvertibleModel, standard_normal_log_prob
from models.jacobian import jacobian_slogdet
from models.template import LinearFlow

CPU = torch.device("cpu")


def gaussian_dataset(d: int, n: int = 4000, seed: int = 0) -> tuple[Dataset, Tensor]:
    """N(mu, Sigma) with a fixed non-diagonal Sigma; returns the data set and Sigma."""
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(d, d, generator=g, dtype=torch.float64) * 0.6 + torch.diag(torch.linspace(0.5, 2.0, d,
                                                                                             dtype=torch.float64))
    sigma = a @ a.T
    mu = torch.linspace(-1.0, 1.0, d, dtype=torch.float64)
    dist = torch.distributions.MultivariateNormal(mu, covariance_matrix=sigma)
    torch.manual_seed(seed + 1)
    train, test = dist.sample((n,)).float(), dist.sample((n,)).float()
    entropy = 0.5 * float(torch.logdet(2 * math.pi * math.e * sigma))
    return Dataset(name=f"gauss{d}", kind="vector", train_x=train, test_x=test,
                   log_density=lambda x: dist.log_prob(x.double()).float(), entropy=entropy), sigma


def make_ctx(make_model: Any, dataset: Dataset, budget: Budget, tmp: Path | None = None, seed: int = 0,
             **options: Any) -> TaskContext:
    return TaskContext(make_model=make_model, dataset=dataset, seed=seed, budget=budget, device=CPU,
                       options=LikelihoodTask.parse_options(options, "tasks.likelihood"), model_name="test-model",
                       task_name="likelihood",
                       artifact_dir=None if tmp is None else tmp / "artifacts")


def by_name(metrics: list[Metric]) -> dict[str, Metric]:
    return {m.name: m for m in metrics}


def test_registry_resolves_task() -> None:
    assert get_task("likelihood") is LikelihoodTask


def test_linear_flow_reaches_zero_kl_gap_on_gaussian() -> None:
    dataset, _ = gaussian_dataset(3)
    budget = Budget(steps=200, batch_size=256, lr=0.02)
    metrics = by_name(LikelihoodTask().run(make_ctx(lambda: LinearFlow((3,)), dataset, budget)))
    gap = metrics["kl_gap"]
    assert gap.status == "ok" and gap.value is not None
    nll = metrics["test_nll"].value
    assert nll is not None
    assert gap.value == pytest.approx(nll - dataset.entropy)  # type: ignore[operator]
    # Within sampling error of 0: the test-set NLL of the true density has the same spread.
    stderr = metrics["test_nll"].extra["stderr"]
    assert stderr == pytest.approx(math.sqrt(3 / 2) / math.sqrt(4000), rel=0.15)  # std of -log p is sqrt(D/2)
    assert abs(gap.value) < 4 * stderr
    # Paired with the true density on the same test points the noise cancels: KL(p||q) is small and >= ~0.
    assert dataset.log_density is not None
    nll_true = float(-dataset.log_density(dataset.test_x).double().mean())
    assert -0.01 < nll - nll_true < 0.01


def test_metric_names_units_and_directions() -> None:
    dataset, _ = gaussian_dataset(2, n=500)
    ctx = make_ctx(lambda: LinearFlow((2,)), dataset, Budget(steps=5, batch_size=64))
    ctx.targets = {"kl_gap": 100.0}
    metrics = LikelihoodTask().run(ctx)
    units = {m.name: (m.unit, m.direction, m.status) for m in metrics}
    assert units == {
        "test_nll": ("nats", "down", "ok"), "test_bpd": ("bits/dim", "down", "ok"), "kl_gap": ("nats", "down", "ok"),
        "eval_time": ("s", None, "ok"), "time_to_target": ("s", "down", "ok"),
        "train_time": ("s", None, "ok"), "train_steps": ("steps", None, "ok"),
    }
    specs = {spec.name: (spec.unit, spec.direction, "ok") for spec in LikelihoodTask.metric_specs}
    # estimator_gap: for log-det estimator models only
    assert specs == {**units, "estimator_gap": ("nats", "zero", "ok")}
    assert all(spec.help for spec in LikelihoodTask.metric_specs)
    assert LikelihoodTask.trains_model
    assert all((m.input, m.variant, m.settings) == ("", "", {}) for m in metrics if m.name != "time_to_target")
    m = by_name(metrics)
    assert m["test_bpd"].value == pytest.approx(m["test_nll"].value / (2 * math.log(2)))  # type: ignore[operator]
    assert m["train_steps"].value == 5
    assert m["test_nll"].extra["logdet_eval"] == "exact"


def test_kl_gap_only_with_known_entropy() -> None:
    dataset, _ = gaussian_dataset(2, n=300)
    dataset.entropy = None
    names = [m.name for m in LikelihoodTask().run(make_ctx(lambda: LinearFlow((2,)), dataset, Budget(steps=2)))]
    assert "kl_gap" not in names and "test_nll" in names


def test_supports_density_models_of_the_right_input_kind() -> None:
    info = gaussian_dataset(2, n=10)[0].info
    assert LikelihoodTask.supports(Capabilities(density=True), info)
    assert not LikelihoodTask.supports(Capabilities(density=False, classifier=True), info)
    assert not LikelihoodTask.supports(Capabilities(inputs=("image",)), info)


class NaNFlow(LinearFlow):
    """Returns NaN log-det in training mode (``when="train"``) or in eval mode (``when="eval"``)."""

    def __init__(self, shape: Sequence[int], num_classes: int | None = None, when: str = "train") -> None:
        super().__init__(shape, num_classes)
        self._hparams["when"] = when
        self.when = when

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        z, ladj = super().forward(x)
        if self.training == (self.when == "train"):
            ladj = ladj * math.nan
        return z, ladj


@pytest.mark.parametrize("when", ["train", "eval"])
def test_nan_model_gives_diverged_rows(when: str) -> None:
    dataset, _ = gaussian_dataset(2, n=200)
    metrics = by_name(LikelihoodTask().run(make_ctx(lambda: NaNFlow((2,), when=when), dataset, Budget(steps=10))))
    for name in ("test_nll", "test_bpd", "kl_gap"):
        assert metrics[name].status == "diverged" and metrics[name].value is None
    assert metrics["train_steps"].value == (0 if when == "train" else 10)
    assert metrics["train_time"].extra["diverged"] is (when == "train")


class ResidualToy(InvertibleModel):
    """An i-ResNet-like block ``z = x + c tanh(A x + b)`` (Behrmann et al., ICML 2019) with Lip(c tanh(A.)) < 1.

    Declares a log-det *estimator* whose estimate is the exact value plus a bias ``1 / terms``, so a test can
    tell which log-det the task used. ``x``: (B, D) -> ``z``: (B, D), ``ladj``: (B,).
    """

    family = "toyres"
    backend = "test"
    capabilities = Capabilities(density=True, logdet="estimator", inverse="iterative")

    def __init__(self, shape: Sequence[int], num_classes: int | None = None, terms: int = 2) -> None:
        super().__init__(shape, num_classes, terms=terms)
        g = torch.Generator().manual_seed(3)
        a = torch.randn(self.dim, self.dim, generator=g)
        self.a = nn.Parameter(0.7 * a / torch.linalg.matrix_norm(a, ord=2))
        self.b = nn.Parameter(0.1 * torch.randn(self.dim, generator=g))
        self.terms = terms
        self.configured: list[int] = []

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        u = x @ self.a.T + self.b
        z = x + torch.tanh(u)
        jac = torch.eye(self.dim, dtype=x.dtype) + (1 - torch.tanh(u) ** 2).unsqueeze(2) * self.a
        return z, torch.linalg.slogdet(jac)[1] + 1.0 / self.terms

    def inverse(self, z: Tensor) -> Tensor:
        x = z
        for _ in range(200):
            x = z - torch.tanh(x @ self.a.T + self.b)
        return x

    def estimator_settings(self) -> EstimatorSettings:
        return EstimatorSettings(method="series", terms=self.terms)

    def configure_estimator(self, settings: EstimatorSettings) -> None:
        if settings.method != "series":  # the contract: reject what the model cannot honour
            raise ValueError(f"ResidualToy has only the series estimator, not {settings.method!r}")
        self.configured.append(settings.terms)
        self.terms = settings.terms


def test_exact_scoring_in_jacobian_chunks_matches_the_per_example_slogdet() -> None:
    from bench.tasks import likelihood

    seen: list[tuple[int, bool]] = []

    class Spy(ResidualToy):
        def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
            seen.append((x.shape[0], any(p.requires_grad for p in self.parameters())))
            return super().forward(x)

    torch.manual_seed(0)
    model = Spy((4,)).double().eval()
    y = torch.randn(7, 4, dtype=torch.float64)
    dataset = Dataset(name="g", kind="vector", train_x=y, test_x=y)
    plan = ScoringPlan("exact", "autograd-jacobian")
    old = likelihood.JACOBIAN_ROWS
    likelihood.JACOBIAN_ROWS = 12  # 12 rows / D=4 -> chunks of 3 examples: 3, 3, 1, each replicated D times
    try:
        logp = log_likelihood(model, dataset, y, CPU, plan)
    finally:
        likelihood.JACOBIAN_ROWS = old
    assert seen == [(12, False), (12, False), (4, False)]  # one forward per chunk, no graph to the weights
    with torch.no_grad():
        z, estimate = model(y)
    exact = jacobian_slogdet(lambda v: model(v)[0], y)  # the reference: one Jacobian per example
    torch.testing.assert_close(logp, standard_normal_log_prob(z) + exact)
    # the model's own "estimate" carries its declared bias of 1 / terms, which the exact path must not
    torch.testing.assert_close(estimate - exact, torch.full((7,), 0.5, dtype=torch.float64))
    assert all(p.requires_grad for p in model.parameters())


def test_estimator_model_scored_with_exact_logdet_at_small_dim() -> None:
    dataset, _ = gaussian_dataset(2, n=300)
    holder: list[ResidualToy] = []

    def make() -> ResidualToy:
        holder.append(ResidualToy((2,)))
        return holder[-1]

    # curve_evals = 0: only the final scoring configures the estimator
    metrics = by_name(LikelihoodTask().run(make_ctx(make, dataset, Budget(steps=5, batch_size=64), curve_evals=0)))
    nll = metrics["test_nll"]
    assert nll.extra["logdet_eval"] == "exact"
    model = holder[-1]
    x = dataset.test_x
    with torch.no_grad():
        z = model(x)[0]
    expected = -(standard_normal_log_prob(z) + jacobian_slogdet(lambda v: model(v)[0], x)).mean()
    assert nll.value == pytest.approx(float(expected), abs=1e-4)
    # the Jacobian pass ran with the cheapest estimator (its estimate is discarded), restored afterwards
    assert nll.extra["eval_estimator_settings"] == {"terms": 1}
    assert nll.extra["trained_settings"] == EstimatorSettings(terms=2).as_dict()
    assert model.configured == [1, 2] and model.terms == 2


def test_estimator_model_above_exact_dim_uses_high_precision_and_restores() -> None:
    dataset, _ = gaussian_dataset(2, n=300)
    holder: list[ResidualToy] = []

    def make() -> ResidualToy:
        holder.append(ResidualToy((2,), terms=2))
        return holder[-1]

    ctx = make_ctx(make, dataset, Budget(steps=5, batch_size=64), exact_max_dim=0, curve_evals=0)
    nll = by_name(LikelihoodTask().run(ctx))["test_nll"]
    model = holder[-1]
    assert nll.extra["logdet_eval"] == "estimator"
    used = nll.extra["eval_estimator_settings"]
    assert used == {"terms": HIGH_PRECISION["terms"], "probes": HIGH_PRECISION["probes"]}
    assert model.configured == [used["terms"], 2] and model.terms == 2
    with torch.no_grad():
        expected = -model.log_prob(dataset.test_x).mean() + 0.5 - 1.0 / used["terms"]
    assert nll.value == pytest.approx(float(expected), abs=1e-4)
    assert nll.extra["probe_sd"] == 0.0 and nll.extra["probe_stderr"] == 0.0  # this toy estimator draws no probes
    # option eval_estimator: these settings instead
    ctx = make_ctx(make, dataset, Budget(steps=5, batch_size=64), exact_max_dim=0, eval_estimator={"terms": 7},
                   curve_evals=0)
    nll = by_name(LikelihoodTask().run(ctx))["test_nll"]
    model = holder[-1]
    assert nll.extra["eval_estimator_settings"] == {"terms": 7} and model.configured == [7, 2]
    with torch.no_grad():
        expected = -model.log_prob(dataset.test_x).mean() + 0.5 - 1.0 / 7
    assert nll.value == pytest.approx(float(expected), abs=1e-4)


def test_estimator_setting_changes_touch_only_cost_knobs() -> None:
    series = EstimatorSettings(method="series", terms=5, probes=1, max_terms=400, probe="rademacher")
    assert high_precision_settings(series).changes_from(series) == {"terms": 20, "probes": 2}
    assert cheapest_settings(series).changes_from(series) == {"terms": 1}
    roulette = EstimatorSettings(method="roulette", exact_terms=2, probes=3, tail="poisson", tail_param=2.0)
    assert high_precision_settings(roulette).changes_from(roulette) == {"exact_terms": 20}
    assert cheapest_settings(roulette).changes_from(roulette) == {"exact_terms": 1, "probes": 1}
    # settings already above the floors stay
    strong = EstimatorSettings(terms=50, probes=10)
    assert high_precision_settings(strong) == strong


def test_density_grid_artifact_for_2d_data(tmp_path: Path) -> None:
    dataset, _ = gaussian_dataset(2, n=2000)
    holder: list[LinearFlow] = []

    def make() -> LinearFlow:
        holder.append(LinearFlow((2,)))
        return holder[-1]

    ctx = make_ctx(make, dataset, Budget(steps=300, batch_size=256, lr=0.03), tmp=tmp_path)
    nll = by_name(LikelihoodTask().run(ctx))["test_nll"]
    rel = nll.extra["artifact"]
    grid = np.load(tmp_path / rel)
    xs, ys, lpm, lpt = grid["x"], grid["y"], grid["logp_model"], grid["logp_true"]
    assert xs.shape == ys.shape == (128,) and lpm.shape == lpt.shape == (128, 128)
    assert xs.min() < float(dataset.test_x[:, 0].min()) and xs.max() > float(dataset.test_x[:, 0].max())
    assert ys.min() < float(dataset.test_x[:, 1].min()) and ys.max() > float(dataset.test_x[:, 1].max())
    # layout: [i, j] is the point (x[j], y[i])
    i, j = 17, 90
    point = torch.tensor([[xs[j], ys[i]]], dtype=torch.float32)
    with torch.no_grad():
        assert lpm[i, j] == pytest.approx(float(holder[-1].log_prob(point)), abs=1e-4)
    assert lpt[i, j] == pytest.approx(float(dataset.log_density(point)), abs=1e-4)  # type: ignore[misc]
    # both densities integrate to ~1 over a box that holds nearly all the mass
    cell = (xs[1] - xs[0]) * (ys[1] - ys[0])
    assert np.exp(lpt).sum() * cell == pytest.approx(1.0, abs=0.02)
    assert np.exp(lpm).sum() * cell == pytest.approx(1.0, abs=0.03)


def discrete_image_dataset(levels: int = 17, n: int = 600) -> Dataset:
    """(1, 2, 2) images of correlated integer levels stored as k / levels."""
    g = torch.Generator().manual_seed(5)
    base = torch.randint(3, levels - 3, (2 * n, 1, 1, 1), generator=g)
    k = (base + torch.randint(-3, 4, (2 * n, 1, 2, 2), generator=g)).clamp(0, levels - 1)
    x = k.float() / levels
    return Dataset(name="tinyimg", kind="image", train_x=x[:n], test_x=x[n:], levels=levels)


def test_discrete_images_bpd_and_samples(tmp_path: Path) -> None:
    dataset = discrete_image_dataset()
    holder: list[LinearFlow] = []

    def make() -> LinearFlow:
        holder.append(LinearFlow((1, 2, 2)))
        return holder[-1]

    budget = Budget(steps=200, batch_size=128, lr=0.03)
    metrics = by_name(LikelihoodTask().run(make_ctx(make, dataset, budget, tmp=tmp_path)))
    nll, bpd = metrics["test_nll"].value, metrics["test_bpd"].value
    assert nll is not None and bpd is not None
    assert bpd == pytest.approx(float(bits_per_dim(nll, 4, 17)))
    assert bpd == pytest.approx((nll + 4 * math.log(17)) / (4 * math.log(2)))
    # bpd >= 0 since it bounds -log2 P(k) of a discrete distribution; fitting must beat the uniform density
    # on the unit cube, whose bound is exactly log2(17) bits/dim
    assert 0.0 < bpd < math.log2(17)
    x = fixed_test_x(dataset, 0)
    assert not torch.equal(x, dataset.test_x) and bool(((x - dataset.test_x) * 17).lt(1).all())
    with torch.no_grad():
        assert nll == pytest.approx(float(-holder[-1].log_prob(x).double().mean()), abs=1e-4)
    samples = np.load(tmp_path / metrics["test_nll"].extra["artifact"])["x"]
    assert samples.shape == (64, 1, 2, 2) and np.isfinite(samples).all()
    assert "kl_gap" not in metrics


def test_eval_draws_average_fixed_dequantisations() -> None:
    dataset = discrete_image_dataset(n=200)
    budget = Budget(steps=20, batch_size=64, lr=0.03)
    one = by_name(LikelihoodTask().run(make_ctx(lambda: LinearFlow((1, 2, 2)), dataset, budget)))["test_nll"]
    again = by_name(LikelihoodTask().run(make_ctx(lambda: LinearFlow((1, 2, 2)), dataset, budget)))["test_nll"]
    three = by_name(LikelihoodTask().run(make_ctx(lambda: LinearFlow((1, 2, 2)), dataset, budget,
                                                  eval_draws=3)))["test_nll"]
    assert one.value == again.value and one.extra["dequant_draws"] == 1
    assert three.value != one.value and three.extra["dequant_draws"] == 3


def test_flattened_images_get_image_samples(tmp_path: Path) -> None:
    images = discrete_image_dataset(n=200)
    flat = Dataset(name="tinyflat", kind="vector", train_x=images.train_x.reshape(200, 4),
                   test_x=images.test_x.reshape(200, 4), levels=images.levels, meta={"image_shape": [1, 2, 2]})
    metrics = by_name(LikelihoodTask().run(make_ctx(lambda: LinearFlow((4,)), flat,
                                                    Budget(steps=5, batch_size=64), tmp=tmp_path)))
    samples = np.load(tmp_path / metrics["test_nll"].extra["artifact"])["x"]
    assert samples.shape == (64, 1, 2, 2)
    flat.meta = {}
    metrics = by_name(LikelihoodTask().run(make_ctx(lambda: LinearFlow((4,)), flat,
                                                    Budget(steps=5, batch_size=64), tmp=tmp_path / "b")))
    assert "artifact" not in metrics["test_nll"].extra


def test_estimator_scoring_records_no_graph_to_the_weights_and_chunks_by_dimension() -> None:
    from bench.tasks import likelihood

    seen: list[tuple[int, bool]] = []

    class Spy(ResidualToy):
        def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
            seen.append((x.shape[0], any(p.requires_grad for p in self.parameters())))
            return super().forward(x)

    model = Spy((4,)).eval()
    dataset = Dataset(name="g", kind="vector", train_x=torch.randn(8, 4), test_x=torch.randn(40, 4))
    plan = likelihood.ScoringPlan("estimator", "model")
    old = likelihood.ESTIMATOR_ROWS
    likelihood.ESTIMATOR_ROWS = 64  # 64 rows / D=4 -> chunks of 16 examples
    try:
        logp = likelihood.log_likelihood(model, dataset, dataset.test_x, torch.device("cpu"), plan)
    finally:
        likelihood.ESTIMATOR_ROWS = old
    assert logp.shape == (40,) and bool(torch.isfinite(logp).all())
    assert [n for n, _ in seen] == [16, 16, 8] and not any(grad for _, grad in seen)
    assert all(p.requires_grad for p in model.parameters())  # restored afterwards


class ActNormLinear(LinearFlow):
    """Glow's ActNorm (data-dependent initialisation in ``data_init``) followed by ``W x + b``."""

    def __init__(self, shape: Sequence[int], num_classes: int | None = None, seed: int = 0) -> None:
        super().__init__(shape, num_classes, seed=seed)
        self.actnorm = ActNorm(self.dim)

    def data_init(self, x: Tensor) -> None:
        self.actnorm.initialize(x)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        y, ladj = self.actnorm(x)
        z, ladj2 = super().forward(y)
        return z, ladj + ladj2


def test_zero_steps_measures_the_model_as_initialised(tmp_path: Path) -> None:
    dataset, _ = gaussian_dataset(2, n=400)
    holder: list[ActNormLinear] = []

    def make() -> ActNormLinear:
        holder.append(ActNormLinear((2,)))
        return holder[-1]

    ctx = make_ctx(make, dataset, Budget(steps=0, batch_size=100, lr=0.05))
    ctx.checkpoint_dir = tmp_path
    metrics = by_name(LikelihoodTask().run(ctx))
    assert metrics["train_steps"].value == 0 and metrics["train_steps"].status == "ok"
    model, fresh = holder[-1], ActNormLinear((2,))
    assert torch.equal(model.weight, fresh.weight) and torch.equal(model.bias, fresh.bias)
    assert bool(model.actnorm.initialized) and not torch.equal(model.actnorm.bias, fresh.actnorm.bias)
    # the NLL is that of the data-initialised model
    with torch.no_grad():
        expected = float(-model.log_prob(dataset.test_x).double().mean())
    nll = metrics["test_nll"].value
    assert nll is not None and nll == pytest.approx(expected, abs=1e-4)
    # a second cell loads the same untrained checkpoint
    again = by_name(LikelihoodTask().run(ctx))
    assert again["test_nll"].value == nll and again["train_steps"].value == 0
    assert len(list(tmp_path.iterdir())) == 1


def test_options_are_typed_and_checked() -> None:
    options = LikelihoodTask.parse_options({"exact_max_dim": 0, "eval_draws": 2}, "tasks.likelihood")
    assert isinstance(options, LikelihoodTask.Options)
    assert (options.exact_max_dim, options.eval_draws, options.artifacts) == (0, 2, True)  # type: ignore[attr-defined]
    with pytest.raises(OptionError, match="did you mean eval_draws"):
        LikelihoodTask.parse_options({"eval_draw": 2}, "tasks.likelihood")
    with pytest.raises(OptionError, match=r"tasks.likelihood.eval_draws: must be >= 1"):
        LikelihoodTask.parse_options({"eval_draws": 0}, "tasks.likelihood")
    with pytest.raises(OptionError, match="expected a boolean"):
        LikelihoodTask.parse_options({"artifacts": "yes"}, "tasks.likelihood")
    with pytest.raises(OptionError, match="unknown estimator setting 'term'; did you mean terms"):
        LikelihoodTask.parse_options({"eval_estimator": {"term": 20}}, "tasks.likelihood")


def test_volume_preserving_model_reports_its_floor_beside_its_figures() -> None:
    """revnet-native without NICE's scaling is volume-preserving: its rows carry the floor (D/2) ln 2pi (the data
    here has no pre-processing), its test NLL is not below it, and with the scaling no floor is declared."""
    from models.revnet import RevNetNative

    dataset, _ = gaussian_dataset(4, n=512)
    budget = Budget(steps=5, batch_size=64, lr=1e-3)
    ctx = make_ctx(lambda: RevNetNative(shape=(4,), scaling=False, hidden=8), dataset, budget, curve_evals=0)
    rows = by_name(LikelihoodTask().run(ctx))
    floor = 0.5 * 4 * math.log(2 * math.pi)
    assert rows["test_nll"].extra["volume_preserving"] is True
    assert rows["test_nll"].extra["floor"] == pytest.approx(floor)
    assert rows["test_bpd"].extra["floor"] == pytest.approx(bits_per_dim(floor, 4, None))
    assert dataset.entropy is not None
    assert rows["kl_gap"].extra["floor"] == pytest.approx(floor - dataset.entropy)
    assert rows["test_nll"].value is not None and rows["test_nll"].value >= floor
    scaled = by_name(LikelihoodTask().run(make_ctx(lambda: RevNetNative(shape=(4,), hidden=8), dataset, budget,
                                                   curve_evals=0)))
    assert "floor" not in scaled["test_nll"].extra


def test_native_iresnet_is_scored_by_its_own_exact_method_equal_to_the_autograd_jacobian() -> None:
    """At small D an estimator model that accepts ``method = "exact"`` is scored by its own forward in one pass;
    the value equals the exact log-det from the autograd Jacobian of the whole model."""
    from bench.tasks.likelihood import LikelihoodOptions, logdet_plan, plan_applied
    from models.iresnet import IResNetNative

    torch.manual_seed(0)
    model = IResNetNative((3,), depth=2, hidden=8).double().eval()
    y = torch.randn(16, 3, dtype=torch.float64)
    model.data_init(y)
    plan = logdet_plan(model, 3, LikelihoodOptions())
    assert (plan.logdet_eval, plan.logdet_source) == ("exact", "model")
    assert plan.settings is not None and plan.settings.method == "exact"
    dataset = Dataset(name="g", kind="vector", train_x=y, test_x=y)
    with plan_applied(model, plan):
        logp = log_likelihood(model, dataset, y, CPU, plan)
    assert model.estimator_settings().method == "series"  # restored
    with torch.no_grad():
        z = model.encode(y)
    reference = standard_normal_log_prob(z) + jacobian_slogdet(model.encode, y)
    torch.testing.assert_close(logp, reference, atol=1e-9, rtol=0)


def test_probe_noise_matches_the_hutchinson_variance_of_a_known_jacobian() -> None:
    from task_helpers import SeriesResidual, gaussian_data

    from bench.tasks.likelihood import PROBE_CHECK_POINTS, ScoringPlan, fixed_test_x, probe_noise

    torch.manual_seed(0)
    dataset = gaussian_data(n_test=4 * PROBE_CHECK_POINTS)
    terms, probes = 3, 2
    model = SeriesResidual((dataset.dim,), terms=terms, probes=probes).eval()
    plan = ScoringPlan("estimator", "model", None, None)
    runs = [probe_noise(model, dataset, torch.device("cpu"), 0, plan, n_test=4 * PROBE_CHECK_POINTS, draws=1)
            for _ in range(20)]
    out = runs[0]
    # one pass's per-example variance for Gaussian probes: 2 ||sym(M)||_F^2 / P, M = sum_k (-1)^(k+1) J^k / k
    x = fixed_test_x(dataset, 0)[:PROBE_CHECK_POINTS]
    jac = model.jacobian_g(x).detach()
    power, m = torch.eye(dataset.dim).expand_as(jac), torch.zeros_like(jac)
    for k in range(1, terms + 1):
        power = power @ jac
        m = m + (-1) ** (k + 1) / k * power
    sym = (m + m.transpose(1, 2)) / 2
    expected = float((2 * sym.pow(2).sum(dim=(1, 2)) / probes).mean())
    # 20 independent measurements: their mean is within 3 standard errors (from their own spread) of the variance
    variances = torch.tensor([r["probe_sd"] ** 2 for r in runs], dtype=torch.float64)
    assert abs(float(variances.mean()) - expected) <= 3 * float(variances.std()) / math.sqrt(len(runs))
    assert out["probe_stderr"] == pytest.approx(out["probe_sd"] / math.sqrt(4 * PROBE_CHECK_POINTS))
    assert out["probe_points"] == PROBE_CHECK_POINTS
