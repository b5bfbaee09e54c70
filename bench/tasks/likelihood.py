"""The ``likelihood`` task: train by maximum likelihood under the suite's budget, report test NLL and bits/dim.

Units follow ``bench.units``: the test NLL is in nats per example of the data in the scaled space the data set
stores (for discrete data: uniformly dequantised with fixed seeded noise, so every model sees the same test
points), pre-processing log-det included; bits/dim add ``D ln levels`` for discrete data. Where the data set
knows its differential entropy, ``kl_gap = test_nll - entropy`` estimates KL(p_data || p_model), whose floor
is 0.

Log-det estimator models (i-ResNet, Residual Flow) are scored with the exact log-det when ``D`` is small
(option ``exact_max_dim``, default 64), computed by a batched autograd Jacobian; above it, with their
estimator at high precision (option ``eval_estimator``, or more terms and probes than trained with), restored
afterwards. ``Metric.extra["logdet_eval"]`` says which.

Options: ``exact_max_dim`` (64), ``eval_estimator`` (dict, settings for ``configure_estimator``),
``eval_draws`` (dequantisation draws averaged for discrete data, 1), ``eval_batch_size`` (512),
``artifacts`` (True: the density grid for 2-D data, 64 samples for images).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from typing import Any, ClassVar

import torch
from torch import Tensor

from bench.datasets.base import Dataset
from bench.tasks.base import Metric, Task, TaskContext, save_artifact
from bench.tasks.measure import estimator_settings
from bench.tasks.training import (
    evaluation_grad_mode,
    fixed_test_x,
    model_dtype,
    preprocess_batch,
    train_metrics,
    trained_model,
)
from bench.units import bits_per_dim
from models.base import Capabilities, InvertibleModel, standard_normal_log_prob

#: Largest D at which estimator models are scored with the exact autograd log-det.
EXACT_MAX_DIM = 64
#: Rows (examples x D) per batched Jacobian pass.
JACOBIAN_ROWS = 4096
#: examples x dimensions per chunk when scoring with an estimator (its probes and terms multiply the memory)
ESTIMATOR_ROWS = 65536
#: Lower bounds applied to estimator settings whose names contain these words, for evaluation.
HIGH_PRECISION = {"term": 20, "probe": 8}
GRID_SIZE = 128
NUM_SAMPLES = 64


def exact_forward(model: InvertibleModel, y: Tensor) -> tuple[Tensor, Tensor]:
    """``z`` and the exact ``log|det dz/dy|`` from one batched autograd Jacobian.

    Each example is repeated D times; row ``j`` of copy ``j`` of the Jacobian is one VJP with the unit vector
    ``e_j``, so one forward and one backward pass over B x D rows give all B Jacobians. Assumes the model
    treats examples independently (true in ``eval()``). ``y``: (B, *shape) -> (``z``: (B, *shape), (B,)).
    """
    b, d = y.shape[0], math.prod(y.shape[1:])
    rep = y.detach().repeat_interleave(d, dim=0).requires_grad_(True)
    with torch.enable_grad():
        z_rep, _ = model(rep)
        eye = torch.eye(d, device=y.device, dtype=z_rep.dtype).repeat(b, 1)
        (rows,) = torch.autograd.grad(z_rep.reshape(b * d, d), rep, grad_outputs=eye)
    jac = rows.reshape(b, d, d)
    z = z_rep.detach().reshape(b, d, d)[:, 0].reshape(y.shape)
    return z, torch.linalg.slogdet(jac)[1]


def _counts_moved(current: dict[str, Any], target: dict[str, int], up: bool) -> dict[str, Any]:
    """Changes moving the integer settings whose names contain a word of ``target`` (but not ``max``, a cap)
    to at least (``up``) or at most (not ``up``) its value; everything else is left alone."""
    out: dict[str, Any] = {}
    for key, value in current.items():
        name = key.lower()
        if isinstance(value, bool) or not isinstance(value, int) or "max" in name:
            continue
        for word, bound in target.items():
            if word in name and (value < bound if up else value > bound):
                out[key] = bound
    return out


def high_precision_settings(current: dict[str, Any]) -> dict[str, Any]:
    """The changes that raise ``current``'s integer estimator settings named like ``*term*``/``*probe*`` to at
    least :data:`HIGH_PRECISION`'s values; other settings (method, probe kind, roulette) are left as they are."""
    return _counts_moved(current, HIGH_PRECISION, up=True)


def cheapest_settings(current: dict[str, Any]) -> dict[str, Any]:
    """The changes that lower those counts to 1: for passes whose estimate is discarded (the exact Jacobian)."""
    return _counts_moved(current, {"term": 1, "probe": 1}, up=False)


def plan_applied(model: InvertibleModel, plan: dict[str, Any]) -> contextlib.AbstractContextManager[Any]:
    """``plan["eval_estimator_settings"]`` for the duration of a ``with`` block (nothing when there are none)."""
    settings = plan.get("eval_estimator_settings")
    return estimator_settings(model, settings) if settings else contextlib.nullcontext()


def logdet_plan(model: InvertibleModel, dim: int, options: dict[str, Any]) -> dict[str, Any]:
    """How to score ``model``, also recorded in ``Metric.extra``:

    - ``logdet_eval``: ``"exact"`` or ``"estimator"``;
    - ``logdet_source``: ``"model"`` (its own ladj) or ``"autograd-jacobian"`` (:func:`exact_forward`);
    - ``eval_estimator_settings``: changes applied while scoring (high precision for ``"estimator"``; the cheapest
      estimator for the Jacobian pass, whose estimate is discarded), with ``trained_settings`` beside them.
    """
    if model.capabilities.logdet == "exact":
        return {"logdet_eval": "exact", "logdet_source": "model"}
    trained = model.estimator_settings()
    if dim <= int(options.get("exact_max_dim", EXACT_MAX_DIM)):
        return {"logdet_eval": "exact", "logdet_source": "autograd-jacobian",
                "eval_estimator_settings": cheapest_settings(trained), "trained_settings": trained}
    settings = options.get("eval_estimator") or high_precision_settings(trained)
    return {"logdet_eval": "estimator", "logdet_source": "model", "eval_estimator_settings": dict(settings),
            "trained_settings": trained}


def log_likelihood(model: InvertibleModel, dataset: Dataset, x: Tensor, device: torch.device,
                   plan: dict[str, Any], batch_size: int = 512) -> Tensor:
    """log p(x) in nats of points ``x`` (N, *shape) in the data space (already dequantised), pre-processing
    log-det included, scored as ``plan`` (from :func:`logdet_plan`) says, inside :func:`plan_applied`.
    Returns (N,) on the CPU."""
    dtype = model_dtype(model)
    exact_autograd = plan["logdet_source"] == "autograd-jacobian"
    if exact_autograd:
        chunk = max(1, JACOBIAN_ROWS // dataset.dim)
    elif model.capabilities.logdet == "estimator":
        chunk = max(1, min(batch_size, ESTIMATOR_ROWS // dataset.dim))
    else:
        chunk = batch_size
    out = []
    with frozen_parameters(model):
        for start in range(0, x.shape[0], chunk):
            y, ldj = preprocess_batch(dataset, x[start:start + chunk], device, dtype)
            if exact_autograd:
                z, ladj = exact_forward(model, y)
                logp = standard_normal_log_prob(z) + ladj
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


def test_nll_per_example(model: InvertibleModel, dataset: Dataset, device: torch.device, seed: int,
                         plan: dict[str, Any], draws: int = 1, batch_size: int = 512) -> Tensor:
    """NLL in nats of each test example (N,): averaged over ``draws`` fixed dequantisations (discrete data)."""
    draws = draws if dataset.levels is not None else 1
    total = torch.zeros(dataset.test_x.shape[0], dtype=torch.float64)
    for draw in range(draws):
        total += log_likelihood(model, dataset, fixed_test_x(dataset, seed, draw), device, plan, batch_size).double()
    return -total / draws


def density_grid(model: InvertibleModel, dataset: Dataset, device: torch.device, plan: dict[str, Any],
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


def _artifact(ctx: TaskContext, model: InvertibleModel, plan: dict[str, Any]) -> dict[str, Any]:
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


class LikelihoodTask(Task):
    """Test NLL (nats), bits/dim and, for densities with a known entropy, the KL gap after training."""

    name = "likelihood"
    requires_text: ClassVar[str] = "a density model (log_prob) accepting the data set's input kind"
    metrics: ClassVar[tuple[str, ...]] = ("test_nll", "test_bpd", "kl_gap", "train_time", "train_steps")

    @classmethod
    def supports(cls, caps: Capabilities, dataset: Dataset) -> bool:
        return caps.density and dataset.kind in caps.inputs

    def run(self, ctx: TaskContext) -> list[Metric]:
        dataset = ctx.dataset
        model, result = trained_model(ctx, "likelihood")
        density_names = ["test_nll", "test_bpd"] + (["kl_gap"] if dataset.entropy is not None else [])
        if result.diverged:
            reason = {"reason": f"training diverged: {result.reason}"}
            return [*self._diverged(density_names, reason), *train_metrics(result)]
        plan = logdet_plan(model, dataset.dim, ctx.options)
        draws = int(ctx.options.get("eval_draws", 1))
        with plan_applied(model, plan):
            nll = test_nll_per_example(model, dataset, ctx.device, ctx.seed, plan, draws,
                                       int(ctx.options.get("eval_batch_size", 512)))
            finite = torch.isfinite(nll)
            if not bool(finite.all()):
                why: dict[str, Any] = {"reason": "non-finite test log-likelihood",
                                       "nonfinite_fraction": float((~finite).double().mean()), **plan}
                return [*self._diverged(density_names, why), *train_metrics(result)]
            mean = float(nll.mean())
            stderr = float(nll.std() / math.sqrt(nll.numel())) if nll.numel() > 1 else math.nan
            extra: dict[str, Any] = {**plan, "stderr": stderr, "n_test": nll.numel(),
                                     "dequant_draws": draws if dataset.levels is not None else 0}
            if ctx.options.get("artifacts", True):
                extra.update(_artifact(ctx, model, plan))
        bpd_scale = 1.0 / (dataset.dim * math.log(2))
        metrics = [
            Metric("test_nll", mean, "nats", False, extra=extra),
            Metric("test_bpd", float(bits_per_dim(mean, dataset.dim, dataset.levels)), "bits/dim", False,
                   extra={"levels": dataset.levels, "stderr": stderr * bpd_scale}),
        ]
        if dataset.entropy is not None:
            metrics.append(Metric("kl_gap", mean - dataset.entropy, "nats", False,
                                  extra={"entropy": dataset.entropy, "stderr": stderr}))
        return [*metrics, *train_metrics(result)]

    @staticmethod
    def _diverged(names: list[str], extra: dict[str, Any]) -> list[Metric]:
        units = {"test_nll": "nats", "test_bpd": "bits/dim", "kl_gap": "nats"}
        return [Metric(n, None, units[n], False, status="diverged", extra=dict(extra)) for n in names]
