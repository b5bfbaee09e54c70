"""Helpers shared by the tasks that measure a trained model (inverse_cost, stability, logdet, cost, likelihood):
the model to measure, its evaluation inputs, grad modes, reconstructions, estimator settings, failure rows."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor

from bench.datasets.base import Dataset
from bench.lipschitz import has_latent_map, latent_map
from bench.tasks.base import Metric, TaskContext
from models.base import InverseInfo, InvertibleModel


def measured_model(ctx: TaskContext, regularizer: Any = None) -> tuple[InvertibleModel, Any]:
    """The trained model a measurement task measures, and its ``TrainResult``.

    Trains (or loads from ``ctx.checkpoint_dir``) with ``bench.tasks.training.trained_model``; the
    objective is option ``objective`` or ``"likelihood"`` for density models, ``"classification"`` else.
    """
    from bench.tasks import training

    objective = ctx.options.get("objective")
    if objective is None:
        caps = type(ctx.make_model()).capabilities
        objective = "likelihood" if caps.density else "classification"
    if regularizer is None:
        return training.trained_model(ctx, objective)
    return training.trained_model(ctx, objective, regularizer=regularizer)


def eval_inputs(ctx: TaskContext, n: int, dataset: Dataset | None = None, draw: int = 0,
                dtype: torch.dtype = torch.float32) -> Tensor:
    """The first ``n`` test inputs as the model sees them: (n, *shape) on ``ctx.device``.

    The same points the likelihood task evaluates (``bench.tasks.training.fixed_test_x``: discrete data
    dequantised with noise fixed by the seed), then ``ctx.dataset.preprocess`` (the model's pre-processing,
    also for another ``dataset``'s points).
    """
    from bench.tasks.training import fixed_test_x, preprocess_batch

    data = dataset if dataset is not None else ctx.dataset
    x = fixed_test_x(data, ctx.seed, draw=draw)[:n]
    return preprocess_batch(ctx.dataset, x, ctx.device, dtype)[0].detach()


def resolve_grad_mode(model: InvertibleModel, option: str = "auto", full_forward: bool = True) -> str:
    """``"grad"`` or ``"no_grad"`` for timing a model's forward (``full_forward``) or latent map and its inverse.

    ``auto`` is ``grad`` only where the forward computes a log-det estimate (it uses autograd): an estimator
    model's full forward, or its latent map when it does not override ``encode``.
    """
    if option not in ("auto", "grad", "no_grad"):
        raise ValueError(f"option grad must be auto, grad or no_grad, got {option!r}")
    if option != "auto":
        return option
    if model.capabilities.logdet != "estimator":
        return "no_grad"
    return "grad" if full_forward or not has_latent_map(model) else "no_grad"


@contextlib.contextmanager
def grad_context(mode: str) -> Iterator[None]:
    """``torch.enable_grad()`` for mode ``"grad"``, ``torch.no_grad()`` otherwise."""
    with torch.enable_grad() if mode == "grad" else torch.no_grad():
        yield


def max_abs_error(a: Tensor, b: Tensor) -> Tensor:
    """Per-example max abs difference, non-finite entries counted as ``inf``: (B, ...) -> (B,) float64."""
    diff = (a.detach().double() - b.detach().double()).abs().reshape(a.shape[0], -1)
    diff = torch.nan_to_num(diff, nan=math.inf, posinf=math.inf)
    return diff.max(dim=1).values


def reconstruction(model: InvertibleModel, x: Tensor, mode: str = "no_grad") -> tuple[Tensor, Tensor, InverseInfo]:
    """``z = latent_map(model)(x)`` and ``x' = model.inverse(z)`` under ``mode``.

    ``x``: (B, *shape) -> (``z``: (B, *shape) detached, per-example ``max |x' - x|``: (B,) float64, a copy of
    the inverse's :class:`InverseInfo`).
    """
    with grad_context(mode):
        z = latent_map(model)(x).detach()
        xr, info = model.invert(z)
    return z, max_abs_error(xr, x), InverseInfo(**vars(info))


def failed_metrics(specs: list[tuple[str, str, bool | None]], status: str, why: str) -> list[Metric]:
    """One valueless metric per ``(name, unit, higher_is_better)`` with ``status`` and the reason in extra."""
    return [Metric(name, None, unit, hib, status=status, extra={"reason": why}) for name, unit, hib in specs]


@contextlib.contextmanager
def estimator_settings(model: InvertibleModel, settings: dict[str, Any] | None) -> Iterator[dict[str, Any]]:
    """Temporarily ``configure_estimator(**settings)``; the settings changed are restored afterwards.

    Only the keys of ``settings`` are restored (``estimator_settings()`` may report keys that
    ``configure_estimator`` does not take).
    """
    current = model.estimator_settings()
    saved = {k: current[k] for k in (settings or {}) if k in current}
    try:
        if settings:
            model.configure_estimator(**settings)
        yield model.estimator_settings()
    finally:
        if saved:
            model.configure_estimator(**saved)
