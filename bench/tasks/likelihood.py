"""The ``likelihood`` task: train by maximum likelihood under the suite's budget, report test NLL and bits/dim.

Units follow ``bench.units``: the test NLL is in nats per example of the data in the scaled space the data set
stores (for discrete data: uniformly dequantised with fixed seeded noise, so every model sees the same test
points), pre-processing log-det included; bits/dim add ``D ln levels`` for discrete data. Where the data set
knows its differential entropy, ``kl_gap = test_nll - entropy`` estimates KL(p_data || p_model), whose floor
is 0.

Log-det estimator models (i-ResNet, Residual Flow) are scored with the exact log-det when ``D`` is small
(option ``exact_max_dim``, default 64), from the autograd Jacobian (:func:`models.jacobian.jacobian_by_replicas`,
in chunks of :data:`JACOBIAN_ROWS` rows); above it, with their estimator at high precision (option
``eval_estimator``, or at least the terms and probes of :data:`HIGH_PRECISION`), restored afterwards.
``Metric.extra["logdet_eval"]`` says which. The estimator's spread: ``stderr`` (the NLL's standard error over test
examples) includes the Hutchinson noise, and ``probe_stderr`` is that noise's own share of the mean, measured by
scoring :data:`PROBE_CHECK_POINTS` test points twice more with fresh probes (:func:`probe_noise`); its bias against
the training-time estimator is ``estimator_gap``. The options are :class:`LikelihoodOptions`.

Learning curve (:mod:`bench.tasks.curves`): during training the model is scored on the first
``min(curve_points, max(CURVE_MIN_POINTS, curve_rows // D))`` test points (the fixed dequantisation of draw 0;
the same points for every model on the data set) with the same plan as the final scoring, at most
``curve_evals`` times (the cap keeps the exact autograd log-det cheap at D = 64: 128 points). The curve's metric
is ``kl_gap`` where the data set knows its entropy, else ``test_bpd``. ``eval_time`` carries it;
``time_to_target`` is read off it for the data set's targets on ``test_nll``, ``test_bpd`` or ``kl_gap`` (each
value is a function of the subset's NLL).

Estimator honesty: for log-det estimator models ``estimator_gap`` is the mean over the test examples of the NLL
with the training-time estimator (the settings the model trained with) minus the NLL of the final scoring (exact,
or the high-precision estimator above ``exact_max_dim``, as ``extra["reference"]`` says), on the same points.
Where the data's entropy ``H`` is known, ``test_nll``'s extra says whether the final training loss is below ``H``
beyond noise: ``train_loss_margin = final_loss - H``, ``train_loss_noise = 3 * TrainResult.final_loss_stderr``
(three standard errors of the last window's mean batch loss) and ``train_loss_below_entropy = margin < -noise``
(False where no noise estimate exists: fewer than 2 steps). No true NLL of the training data can lie below the
entropy by more than sampling noise, so a True flags a model that exploits its estimator's bias.

Baselines (``model.baseline`` set, e.g. ``"gaussian"``) have ``extra["baseline"]`` on every row.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import torch
from torch import Tensor

from bench.datasets.base import Dataset, DatasetInfo
from bench.options import Options, near, opt
from bench.tasks.base import Metric, MetricSpec, Task, TaskContext, save_artifact
from bench.tasks.compiled import COMPILE_FULLGRAPH_OPT, COMPILE_OPT, CompileMode
from bench.tasks.curves import CURVE_SPECS, Curve, CurveRequest, curve_metrics
from bench.tasks.measure import estimator_settings
from bench.tasks.training import (
    TRAIN_SPECS,
    evaluation_grad_mode,
    fixed_test_x,
    model_dtype,
    preprocess_batch,
    train_metrics,
    trained_model,
)
from bench.units import bits_per_dim
from models.base import Capabilities, EstimatorSettings, InvertibleModel, standard_normal_log_prob
from models.jacobian import jacobian_by_replicas

#: Largest D at which estimator models are scored with the exact autograd log-det.
EXACT_MAX_DIM = 64
#: Rows (examples x D) per batched Jacobian pass.
JACOBIAN_ROWS = 4096
#: examples x dimensions per chunk when scoring with an estimator (its probes and terms multiply the memory)
ESTIMATOR_ROWS = 65536
#: Floors of the estimator's cost knobs (``EstimatorSettings.cost_knobs``) while scoring above ``exact_max_dim``.
#: The terms set the truncation bias; the probes only the Hutchinson noise, which averages out over the test set
#: (measured on Fashion-MNIST, iresnet-native after 20 steps: probe_sd 7.2 nats per example at 2 probes, 4.0 at 8,
#: against a spread of 55 nats between examples; probe_stderr 0.16 / 0.09 nats beside a stderr of 1.2 over 2,000
#: test images) and is reported as ``probe_stderr`` beside the NLL's ``stderr``.
HIGH_PRECISION = {"terms": 20, "exact_terms": 20, "probes": 2}
#: Test points scored twice more with fresh probes to measure the estimator's probe noise (``probe_stderr``).
PROBE_CHECK_POINTS = 128
GRID_SIZE = 128
#: The fewest learning-curve points ``curve_rows`` leaves at high D.
CURVE_MIN_POINTS = 64
NUM_SAMPLES = 64


@dataclass(frozen=True)
class LikelihoodOptions(Options):
    """Options of the ``likelihood`` task."""

    exact_max_dim: int = field(default=EXACT_MAX_DIM, metadata=opt(
        "largest D at which log-det estimator models are scored with the exact autograd log-det", min=0))
    eval_estimator: dict[str, int | float | bool | str] | None = field(default=None, metadata=opt(
        "EstimatorSettings fields changed while scoring above exact_max_dim (default: at least 20 terms, 2 probes)"))
    eval_draws: int = field(default=1, metadata=opt(
        "fixed dequantisation draws the test NLL of discrete data is averaged over", min=1))
    eval_batch_size: int = field(default=512, metadata=opt("test examples per evaluation batch", min=1))
    artifacts: bool = field(default=True, metadata=opt(
        "save the density grid (2-D data) or 64 samples (images) as an artifact"))
    curve_points: int = field(default=512, metadata=opt(
        "test points (the first ones, fixed dequantisation) the learning curve is scored on", min=1))
    curve_evals: int = field(default=12, metadata=opt(
        "most learning-curve evaluations (step 0, log-spaced steps, the final step); 0: no curve", min=0))
    curve_rows: int = field(default=8192, metadata=opt(
        f"caps the curve's points at curve_rows // D (at least {CURVE_MIN_POINTS}): examples x dimensions per "
        "evaluation", min=1))
    compile: CompileMode = field(default="off", metadata=COMPILE_OPT)
    compile_fullgraph: bool = field(default=False, metadata=COMPILE_FULLGRAPH_OPT)

    def __post_init__(self) -> None:
        known = [f.name for f in dataclasses.fields(EstimatorSettings)]
        for key in self.eval_estimator or {}:
            if key not in known:
                raise ValueError(f"eval_estimator: unknown estimator setting {key!r}{near(key, known)} "
                                 f"(settings: {', '.join(known)})")


TEST_NLL = MetricSpec("test_nll", "nats", "down", "negative log-likelihood of the test set, nats per example")
TEST_BPD = MetricSpec("test_bpd", "bits/dim", "down",
                      "test NLL per dimension in bits; for discrete data (NLL + D ln levels) / (D ln 2)")
KL_GAP = MetricSpec("kl_gap", "nats", "down",
                    "test NLL minus the data's differential entropy: an estimate of KL(p_data || p_model), floor 0")
DENSITY_SPECS = (TEST_NLL, TEST_BPD, KL_GAP)
ESTIMATOR_GAP = MetricSpec("estimator_gap", "nats", "zero",
                           "log-det estimator models: test NLL with the training-time estimator minus the exact "
                           "(or high-precision) NLL on the same points, nats per example")


def high_precision_settings(trained: EstimatorSettings) -> EstimatorSettings:
    """``trained`` with its cost knobs raised to at least :data:`HIGH_PRECISION` (method, probe kind and roulette
    tail unchanged)."""
    return trained.at_least(**HIGH_PRECISION)


def cheapest_settings(trained: EstimatorSettings) -> EstimatorSettings:
    """``trained`` with its cost knobs lowered to 1: for passes whose estimate is discarded (the exact Jacobian)."""
    return trained.at_most(terms=1, exact_terms=1, probes=1)


@dataclass(frozen=True)
class ScoringPlan:
    """How :func:`log_likelihood` scores a model.

    Attributes:
        logdet_eval: ``"exact"`` or ``"estimator"``: which log-det the NLL holds.
        logdet_source: ``"model"`` (the model's own ladj), ``"model-exact"`` (the model's own
            :meth:`~models.base.InvertibleModel.exact_logdet`, where its class overrides the contract's autograd
            default, as the native i-ResNet's block-wise Jacobians do) or ``"autograd-jacobian"``
            (:func:`models.jacobian.jacobian_by_replicas`).
        settings: the estimator settings that apply while scoring (high precision for ``"estimator"``; the cheapest
            for the Jacobian pass, whose estimate is discarded); None for exact models.
        trained: the settings the model was trained with; None for exact models.
    """

    logdet_eval: Literal["exact", "estimator"]
    logdet_source: Literal["model", "model-exact", "autograd-jacobian"]
    settings: EstimatorSettings | None = None
    trained: EstimatorSettings | None = None

    def record(self) -> dict[str, Any]:
        """The plan as ``Metric.extra`` entries: ``logdet_eval``, ``logdet_source`` and, for estimator models,
        ``eval_estimator_settings`` (the fields changed while scoring) and ``trained_settings``."""
        out: dict[str, Any] = {"logdet_eval": self.logdet_eval, "logdet_source": self.logdet_source}
        if self.settings is not None and self.trained is not None:
            out["eval_estimator_settings"] = self.settings.changes_from(self.trained)
            out["trained_settings"] = self.trained.as_dict()
        return out


def plan_applied(model: InvertibleModel, plan: ScoringPlan) -> contextlib.AbstractContextManager[Any]:
    """``plan.settings`` for the duration of a ``with`` block, the model's own restored afterwards."""
    return estimator_settings(model, plan.settings)


def accepts(model: InvertibleModel, settings: EstimatorSettings) -> bool:
    """Whether ``model.configure_estimator`` takes ``settings`` (a model rejects what it cannot honour with
    ValueError); the model's own settings are restored either way."""
    try:
        with estimator_settings(model, settings):
            return True
    except ValueError:
        return False


def logdet_plan(model: InvertibleModel, dim: int, options: LikelihoodOptions) -> ScoringPlan:
    """How to score ``model`` on ``dim``-dimensional data: its own log-det when exact; when
    ``dim <= options.exact_max_dim`` the exact log-det: from the model's own forward with ``method = "exact"``
    where it accepts that setting (one pass, as the native i-ResNet's block-wise Jacobians), else from its own
    ``exact_logdet`` where its class overrides the contract's default, else from the autograd Jacobian of the whole
    model; above it, its estimator at ``options.eval_estimator`` (or :func:`high_precision_settings`)."""
    if model.capabilities.logdet == "exact":
        return ScoringPlan("exact", "model")
    trained = model.estimator_settings()
    if trained is None:
        raise ValueError(f"{type(model).__name__} declares a log-det estimator but reports no estimator settings")
    if dim <= options.exact_max_dim:
        exact = dataclasses.replace(trained, method="exact", neumann_grad=False)
        if accepts(model, exact):  # the model's own forward gives the exact log-det in one pass
            return ScoringPlan("exact", "model", exact, trained)
        own = type(model).exact_logdet is not InvertibleModel.exact_logdet
        return ScoringPlan("exact", "model-exact" if own else "autograd-jacobian", cheapest_settings(trained), trained)
    if options.eval_estimator:
        changes: dict[str, Any] = dict(options.eval_estimator)  # field names checked by LikelihoodOptions
        return ScoringPlan("estimator", "model", dataclasses.replace(trained, **changes), trained)
    return ScoringPlan("estimator", "model", high_precision_settings(trained), trained)


def log_likelihood(model: InvertibleModel, dataset: Dataset, x: Tensor, device: torch.device,
                   plan: ScoringPlan, batch_size: int = 512) -> Tensor:
    """log p(x) in nats of points ``x`` (N, *shape) in the data space (already dequantised), pre-processing
    log-det included, scored as ``plan`` (from :func:`logdet_plan`) says, inside :func:`plan_applied`.
    Returns (N,) on the CPU."""
    dtype = model_dtype(model)
    exact_autograd = plan.logdet_source == "autograd-jacobian"
    if exact_autograd or plan.logdet_source == "model-exact":
        chunk = max(1, JACOBIAN_ROWS // dataset.dim)
    elif model.capabilities.logdet == "estimator":
        chunk = max(1, min(batch_size, ESTIMATOR_ROWS // dataset.dim))
    else:
        chunk = batch_size
    out = []
    with frozen_parameters(model):
        for start in range(0, x.shape[0], chunk):
            y, ldj = preprocess_batch(dataset, x[start:start + chunk], device, dtype)
            if exact_autograd:  # one forward and one backward pass over chunk x D rows
                z, jac = jacobian_by_replicas(lambda v: model(v)[0], y)
                logp = standard_normal_log_prob(z) + torch.linalg.slogdet(jac)[1]
            elif plan.logdet_source == "model-exact":
                with evaluation_grad_mode(model):
                    logp = standard_normal_log_prob(model.encode(y)) + model.exact_logdet(y)
            else:
                with evaluation_grad_mode(model):
                    logp = model.log_prob(y)
            out.append((logp.detach() + ldj).cpu())
    return torch.cat(out)


@contextlib.contextmanager
def frozen_parameters(model: InvertibleModel) -> Iterator[None]:
    """Parameters with ``requires_grad=False`` inside the block (restored after), so scoring an estimator model
    with autograd enabled records no graph back to the weights: its memory stays that of one chunk."""
    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


def probe_noise(model: InvertibleModel, dataset: Dataset, device: torch.device, seed: int, plan: ScoringPlan,
                n_test: int, draws: int, batch_size: int = 512) -> dict[str, Any]:
    """The Hutchinson probes' share of the spread of an estimator's test NLL, measured inside
    :func:`plan_applied`: the first :data:`PROBE_CHECK_POINTS` test points (draw 0) are scored twice with fresh
    probes; half the variance of the per-example differences is one pass's probe variance ``s^2``, so the mean over
    ``n_test`` examples and ``draws`` passes carries probe noise ``sqrt(s^2 / (n_test draws))`` (``probe_stderr``,
    nats; ``probe_sd``: ``s``, per example). Empty for exact scoring; fixed probes (``eval_seed``) are reported as
    such (their error is a fixed offset, not noise)."""
    if plan.logdet_eval != "estimator":
        return {}
    if plan.settings is not None and plan.settings.eval_seed is not None:
        return {"probe_noise": "fixed probes (eval_seed): no noise between evaluations"}
    x = fixed_test_x(dataset, seed)[:PROBE_CHECK_POINTS]
    diff = (log_likelihood(model, dataset, x, device, plan, batch_size).double()
            - log_likelihood(model, dataset, x, device, plan, batch_size).double())
    if diff.numel() < 2 or not bool(torch.isfinite(diff).all()):
        return {}
    sd = float(diff.var() / 2) ** 0.5
    return {"probe_sd": sd, "probe_stderr": sd / math.sqrt(n_test * max(1, draws)), "probe_points": diff.numel()}


def test_nll_per_example(model: InvertibleModel, dataset: Dataset, device: torch.device, seed: int,
                         plan: ScoringPlan, draws: int = 1, batch_size: int = 512) -> Tensor:
    """NLL in nats of each test example (N,): averaged over ``draws`` fixed dequantisations (discrete data)."""
    draws = draws if dataset.levels is not None else 1
    total = torch.zeros(dataset.test_x.shape[0], dtype=torch.float64)
    for draw in range(draws):
        total += log_likelihood(model, dataset, fixed_test_x(dataset, seed, draw), device, plan, batch_size).double()
    return -total / draws


def density_grid(model: InvertibleModel, dataset: Dataset, device: torch.device, plan: ScoringPlan,
                 size: int = GRID_SIZE) -> dict[str, Any]:
    """Model (and, when known, true) log-density on a ``size`` x ``size`` grid over the 2-D data (5 % margin).

    Returns ``x`` (size,), ``y`` (size,), ``logp_model`` (size, size) with ``[i, j]`` at ``(x[j], y[i])``, and
    ``logp_true`` likewise when ``dataset.log_density`` is set.
    """
    data = torch.cat([dataset.train_x, dataset.test_x]).double()
    lo, hi = data.min(dim=0).values, data.max(dim=0).values
    margin = 0.05 * (hi - lo).clamp_min(1e-6)
    xs = torch.linspace(float(lo[0] - margin[0]), float(hi[0] + margin[0]), size)
    ys = torch.linspace(float(lo[1] - margin[1]), float(hi[1] + margin[1]), size)
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    points = torch.stack([gx.reshape(-1), gy.reshape(-1)], dim=1)
    arrays: dict[str, Any] = {"x": xs.numpy(), "y": ys.numpy(),
                              "logp_model": log_likelihood(model, dataset, points, device, plan)
                              .reshape(size, size).numpy()}
    if dataset.log_density is not None:
        arrays["logp_true"] = dataset.log_density(points).detach().reshape(size, size).cpu().numpy()
    return arrays


def _artifact(ctx: TaskContext, model: InvertibleModel, plan: ScoringPlan) -> dict[str, Any]:
    """Save the density grid (2-D vector data) or 64 samples (images, or vectors whose data set's
    ``meta["image_shape"]`` says they are flattened images); returns entries for ``Metric.extra``."""
    dataset = ctx.dataset
    if dataset.kind == "vector" and dataset.dim == 2:
        path = save_artifact(ctx, "density_grid", **density_grid(model, dataset, ctx.device, plan))
        return {"artifact": path} if path else {}
    flat_image = dataset.meta.get("image_shape") if dataset.kind == "vector" else None
    if (dataset.kind != "image" and flat_image is None) or ctx.artifact_dir is None:
        return {}
    image_shape = tuple(int(s) for s in flat_image) if isinstance(flat_image, list | tuple) else dataset.shape
    gen = torch.Generator(device=ctx.device).manual_seed(ctx.seed)
    try:
        with torch.no_grad():
            samples = model.sample(NUM_SAMPLES, generator=gen).detach().cpu()
    except Exception as exc:  # sampling is a by-product: its failure must not void the NLL
        return {"artifact_error": f"sampling failed: {type(exc).__name__}: {exc}"}
    path = save_artifact(ctx, "samples", x=samples.reshape(NUM_SAMPLES, *image_shape).numpy())
    space = "model (after pre-processing)" if dataset.preprocess is not None else "data"
    return {"artifact": path, "samples_space": space,
            "samples_finite_fraction": float(torch.isfinite(samples).reshape(NUM_SAMPLES, -1).all(1).float().mean())}


def curve_metric(dataset: Dataset) -> str:
    """The learning curve's metric: ``kl_gap`` where the entropy is known, else ``test_bpd``."""
    return "kl_gap" if dataset.entropy is not None else "test_bpd"


def density_values(dataset: Dataset, nll: float) -> dict[str, float]:
    """``test_nll``, ``test_bpd`` and (entropy known) ``kl_gap`` of a mean NLL in nats per example."""
    out = {"test_nll": nll, "test_bpd": float(bits_per_dim(nll, dataset.dim, dataset.levels))}
    if dataset.entropy is not None:
        out["kl_gap"] = nll - dataset.entropy
    return out


def nll_of(dataset: Dataset, metric: str, value: float) -> float:
    """The mean NLL (nats per example) whose ``metric`` (``kl_gap`` or ``test_bpd``) is ``value``."""
    if metric == "kl_gap":
        assert dataset.entropy is not None
        return value + dataset.entropy
    if metric == "test_bpd":
        return value * dataset.dim * math.log(2) - (0.0 if dataset.levels is None else dataset.dim
                                                    * math.log(dataset.levels))
    raise ValueError(f"not a curve metric of the likelihood task: {metric!r}")


def curve_size(options: LikelihoodOptions, dim: int) -> int:
    """The number of test points a learning-curve evaluation scores: ``curve_points``, capped at
    ``curve_rows // dim`` but not below :data:`CURVE_MIN_POINTS`."""
    return min(options.curve_points, max(CURVE_MIN_POINTS, options.curve_rows // dim))


def likelihood_curve(ctx: TaskContext, options: LikelihoodOptions) -> CurveRequest | None:
    """The learning curve the task asks training for: the curve metric of the first :func:`curve_size` test
    points (draw 0 of :func:`bench.tasks.training.fixed_test_x`), scored as the final scoring is
    (:func:`logdet_plan`, :func:`log_likelihood`); None when ``options.curve_evals`` is 0."""
    if options.curve_evals == 0:
        return None
    dataset, device = ctx.dataset, ctx.device
    x = fixed_test_x(dataset, ctx.seed)[:curve_size(options, dataset.dim)]
    metric = curve_metric(dataset)

    def evaluate(model: InvertibleModel) -> float:
        plan = logdet_plan(model, dataset.dim, options)
        with plan_applied(model, plan):
            logp = log_likelihood(model, dataset, x, device, plan, options.eval_batch_size)
        return density_values(dataset, float(-logp.double().mean()))[metric]

    settings = {"points": int(x.shape[0]), "exact_max_dim": options.exact_max_dim,
                "eval_estimator": options.eval_estimator}
    return CurveRequest(metric, evaluate, options.curve_evals, settings)


def likelihood_curve_rows(ctx: TaskContext, curve: Curve | None) -> list[Metric]:
    """``eval_time`` and ``time_to_target`` (targets on ``test_nll``, ``test_bpd``, ``kl_gap``) of the curve."""
    dataset = ctx.dataset
    metric = curve_metric(dataset)
    specs = {spec.name: spec for spec in DENSITY_SPECS}

    def judge(name: str) -> tuple[MetricSpec, Callable[[float], float]]:
        if name == metric:
            return specs[name], lambda v: v
        return specs[name], lambda v: density_values(dataset, nll_of(dataset, metric, v))[name]

    judged = {name: judge(name) for name in density_values(dataset, 0.0)}
    return curve_metrics(curve, metric, ctx.targets, judged)


def estimator_gap(model: InvertibleModel, ctx: TaskContext, options: LikelihoodOptions, reference: Tensor,
                  plan: ScoringPlan) -> Metric:
    """``estimator_gap``: the test NLL per example with the model's training-time estimator (its own settings,
    under :func:`bench.tasks.training.evaluation_grad_mode`) minus ``reference`` (N,), the NLL of the final
    scoring ``plan`` on the same points (same dequantisation draws); mean over examples, its stderr in extra."""
    trained = model.estimator_settings()
    assert trained is not None  # logdet_plan has checked it
    own = ScoringPlan("estimator", "model", None, trained)  # settings None: the model's own, nothing configured
    with plan_applied(model, own):
        nll = test_nll_per_example(model, ctx.dataset, ctx.device, ctx.seed, own, options.eval_draws,
                                   options.eval_batch_size)
    gap = nll - reference
    extra: dict[str, Any] = {"reference": plan.logdet_eval, "trained_settings": trained.as_dict(),
                             "n_test": gap.numel()}
    if not bool(torch.isfinite(gap).all()):
        extra.update(reason="non-finite estimator log-likelihood",
                     nonfinite_fraction=float((~torch.isfinite(gap)).double().mean()))
        return ESTIMATOR_GAP(None, status="diverged", extra=extra)
    extra["stderr"] = float(gap.std() / math.sqrt(gap.numel())) if gap.numel() > 1 else math.nan
    extra["estimator_nll"] = float(nll.mean())
    return ESTIMATOR_GAP(float(gap.mean()), extra=extra)


def train_loss_check(final_loss: float, stderr: float, entropy: float) -> dict[str, Any]:
    """``train_loss_below_entropy``, ``train_loss_margin`` (``final_loss - entropy``, nats) and
    ``train_loss_noise`` (``3 * stderr``); below means ``margin < -noise`` and is False without a noise estimate.
    Empty when there is no training loss (no step taken)."""
    if not math.isfinite(final_loss):
        return {}
    margin, noise = final_loss - entropy, 3.0 * stderr
    return {"train_loss_below_entropy": bool(math.isfinite(noise) and margin < -noise),
            "train_loss_margin": margin, "train_loss_noise": noise}


def volume_floor(model: InvertibleModel, dataset: Dataset, device: torch.device, seed: int) -> float | None:
    """The least test NLL (nats per example of the data) ``model`` can reach, from
    :meth:`models.base.InvertibleModel.nll_floor` (a volume-preserving model with an N(0, I) base), moved by the
    mean log-det of the data set's pre-processing on the fixed test points; None where the model has no floor."""
    floor = model.nll_floor()
    if floor is None:
        return None
    _, ldj = preprocess_batch(dataset, fixed_test_x(dataset, seed), device, model_dtype(model))
    return floor - float(ldj.double().mean())


class LikelihoodTask(Task):
    """Test NLL (nats), bits/dim and, for densities with a known entropy, the KL gap after training."""

    name = "likelihood"
    Options = LikelihoodOptions
    trains_model: ClassVar[bool] = True
    requires_text: ClassVar[str] = "a density model (log_prob) accepting the data set's input kind"
    target_metrics: ClassVar[tuple[str, ...]] = tuple(spec.name for spec in DENSITY_SPECS)
    metric_specs: ClassVar[tuple[MetricSpec, ...]] = (*DENSITY_SPECS, ESTIMATOR_GAP, *CURVE_SPECS, *TRAIN_SPECS)

    @classmethod
    def supports(cls, caps: Capabilities, dataset: DatasetInfo) -> bool:
        return caps.density and dataset.kind in caps.inputs

    def run(self, ctx: TaskContext) -> list[Metric]:
        model, rows = self._measure(ctx)
        if model.baseline is not None:
            for row in rows:
                row.extra["baseline"] = model.baseline
        return rows

    def _measure(self, ctx: TaskContext) -> tuple[InvertibleModel, list[Metric]]:
        dataset = ctx.dataset
        options: LikelihoodOptions = ctx.options
        model, result = trained_model(ctx, "likelihood", curve=likelihood_curve(ctx, options), compile=options.compile,
                                      compile_fullgraph=options.compile_fullgraph)
        tail = [*likelihood_curve_rows(ctx, result.curve), *train_metrics(result)]
        estimator = model.capabilities.logdet == "estimator"
        specs = [TEST_NLL, TEST_BPD] + ([KL_GAP] if dataset.entropy is not None else []) \
            + ([ESTIMATOR_GAP] if estimator else [])
        if result.diverged:
            reason = {"reason": f"training diverged: {result.reason}"}
            return model, [*(spec(None, status="diverged", extra=reason) for spec in specs), *tail]
        plan = logdet_plan(model, dataset.dim, options)
        with plan_applied(model, plan):
            nll = test_nll_per_example(model, dataset, ctx.device, ctx.seed, plan, options.eval_draws,
                                       options.eval_batch_size)
            finite = torch.isfinite(nll)
            if not bool(finite.all()):
                why: dict[str, Any] = {"reason": "non-finite test log-likelihood",
                                       "nonfinite_fraction": float((~finite).double().mean()), **plan.record()}
                return model, [*(spec(None, status="diverged", extra=why) for spec in specs), *tail]
            mean = float(nll.mean())
            stderr = float(nll.std() / math.sqrt(nll.numel())) if nll.numel() > 1 else math.nan
            draws = options.eval_draws if dataset.levels is not None else 0
            extra: dict[str, Any] = {**plan.record(), "stderr": stderr, "n_test": nll.numel(), "dequant_draws": draws,
                                     **probe_noise(model, dataset, ctx.device, ctx.seed, plan, nll.numel(), draws,
                                                   options.eval_batch_size)}
            if options.artifacts:
                extra.update(_artifact(ctx, model, plan))
        if dataset.entropy is not None:
            extra.update(train_loss_check(result.final_loss, result.final_loss_stderr, dataset.entropy))
        bpd_scale = 1.0 / (dataset.dim * math.log(2))
        floor = volume_floor(model, dataset, ctx.device, ctx.seed)
        bpd_extra: dict[str, Any] = {"levels": dataset.levels, "stderr": stderr * bpd_scale}
        kl_extra: dict[str, Any] = {"entropy": dataset.entropy, "stderr": stderr}
        if floor is not None:
            extra.update(volume_preserving=True, floor=floor)
            bpd_extra.update(volume_preserving=True, floor=float(bits_per_dim(floor, dataset.dim, dataset.levels)))
            if dataset.entropy is not None:
                kl_extra.update(volume_preserving=True, floor=floor - dataset.entropy)
        metrics = [
            TEST_NLL(mean, extra=extra),
            TEST_BPD(float(bits_per_dim(mean, dataset.dim, dataset.levels)), extra=bpd_extra),
        ]
        if dataset.entropy is not None:
            metrics.append(KL_GAP(mean - dataset.entropy, extra=kl_extra))
        if estimator:
            metrics.append(estimator_gap(model, ctx, options, nll, plan))
        return model, [*metrics, *tail]
