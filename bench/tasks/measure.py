"""Helpers shared by the tasks that measure a trained model (inverse_cost, stability, logdet, cost, likelihood):
the model to measure, its evaluation inputs, grad modes, reconstructions, failure rows, and the model's estimator
and inverse settings applied for the duration of a ``with`` block (:class:`EstimatorChange`: a suite's table of
changes to a model's :class:`models.base.EstimatorSettings`, validated when the suite loads)."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any, Literal, TypeVar

import torch
from torch import Tensor

from bench.datasets.base import Dataset
from bench.lipschitz import has_latent_map, latent_map
from bench.options import Options, opt
from bench.regularizers import FDRegularizer
from bench.tasks import training
from bench.tasks.base import Metric, MetricSpec, TaskContext
from bench.tasks.training import TrainResult
from models.base import (
    EstimatorMethod,
    EstimatorSettings,
    InverseInfo,
    InverseSettings,
    InvertibleModel,
    ProbeKind,
    TailKind,
)
from models.loss import Objective, default_objective

OptionsT = TypeVar("OptionsT", bound=Options)
#: how a timed or measured call runs: with autograd on or off
GradMode = Literal["grad", "no_grad"]
#: a task's ``grad`` option: a mode, or ``auto`` (:func:`resolve_grad_mode`)
GradOption = Literal["auto", "grad", "no_grad"]


def measured_model(ctx: TaskContext, regularizer: FDRegularizer | None = None,
                   objective: Objective | None = None) -> tuple[InvertibleModel, TrainResult]:
    """The trained model a measurement task measures, and its ``TrainResult``.

    Trains (or loads from ``ctx.checkpoint_dir``) with ``bench.tasks.training.trained_model`` for ``objective``
    (the task's option; None: :func:`models.loss.default_objective`, likelihood for density models).
    """
    if objective is None:
        objective = default_objective(ctx.make_model())
    if regularizer is None:
        return training.trained_model(ctx, objective)
    return training.trained_model(ctx, objective, regularizer=regularizer)


def options_of(ctx: TaskContext, cls: type[OptionsT]) -> OptionsT:
    """``ctx.options``, checked to be an instance of the task's options dataclass ``cls``."""
    if not isinstance(ctx.options, cls):
        raise TypeError(f"{ctx.task_name or 'the task'} needs {cls.__name__} in ctx.options, "
                        f"got {type(ctx.options).__name__}")
    return ctx.options


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


def resolve_grad_mode(model: InvertibleModel, option: GradOption = "auto", full_forward: bool = True) -> GradMode:
    """``"grad"`` or ``"no_grad"`` for timing a model's forward (``full_forward``) or latent map and its inverse.

    ``auto`` is ``grad`` only where the forward computes a log-det estimate (it uses autograd): an estimator
    model's full forward, or its latent map when it does not override ``encode``.
    """
    if option != "auto":
        return option
    if model.capabilities.logdet != "estimator":
        return "no_grad"
    return "grad" if full_forward or not has_latent_map(model) else "no_grad"


@contextlib.contextmanager
def grad_context(mode: GradMode) -> Iterator[None]:
    """``torch.enable_grad()`` for mode ``"grad"``, ``torch.no_grad()`` otherwise."""
    with torch.enable_grad() if mode == "grad" else torch.no_grad():
        yield


def max_abs_error(a: Tensor, b: Tensor) -> Tensor:
    """Per-example max abs difference, non-finite entries counted as ``inf``: (B, ...) -> (B,) float64."""
    diff = (a.detach().double() - b.detach().double()).abs().reshape(a.shape[0], -1)
    diff = torch.nan_to_num(diff, nan=math.inf, posinf=math.inf)
    return diff.max(dim=1).values


def reconstruction(model: InvertibleModel, x: Tensor, mode: GradMode = "no_grad") -> tuple[Tensor, Tensor, InverseInfo]:
    """``z = latent_map(model)(x)`` and ``x' = model.inverse(z)`` under ``mode``.

    ``x``: (B, *shape) -> (``z``: (B, *shape) detached, per-example ``max |x' - x|``: (B,) float64, a copy of
    the inverse's :class:`InverseInfo`).
    """
    with grad_context(mode):
        z = latent_map(model)(x).detach()
        xr, info = model.invert(z)
    return z, max_abs_error(xr, x), InverseInfo(**vars(info))


@dataclass(frozen=True)
class EstimatorChange(Options):
    """Changes to a model's :class:`models.base.EstimatorSettings`; fields left unset keep the model's value."""

    method: EstimatorMethod | None = field(default=None, metadata=opt("exact, series or roulette"))
    terms: int | None = field(default=None, metadata=opt("power-series terms (series)", min=1))
    exact_terms: int | None = field(default=None, metadata=opt("terms always computed (roulette)", min=0))
    probes: int | None = field(default=None, metadata=opt("Hutchinson probes per example", min=1))
    probe: ProbeKind | None = field(default=None, metadata=opt("gaussian or rademacher probes"))
    tail: TailKind | None = field(default=None, metadata=opt("the roulette's tail: geometric or poisson"))
    tail_param: float | None = field(default=None, metadata=opt("the tail's p or lambda", min=0.0,
                                                                 min_exclusive=True))
    max_terms: int | None = field(default=None, metadata=opt("cap on the roulette's terms", min=1))

    def changes(self) -> dict[str, Any]:
        """``{field: value}`` of the fields that are set."""
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None}

    def applied_to(self, settings: EstimatorSettings) -> EstimatorSettings:
        """``settings`` with these changes (validated by :class:`models.base.EstimatorSettings`)."""
        return replace(settings, **self.changes())


def failed_metrics(specs: Sequence[MetricSpec], status: str, why: str) -> list[Metric]:
    """One valueless metric per spec with ``status`` and the reason in ``extra``."""
    return [spec(None, status=status, extra={"reason": why}) for spec in specs]


S = TypeVar("S")


@contextlib.contextmanager
def _applied(get: Callable[[], S | None], configure: Callable[[S], None], settings: S | None) -> Iterator[S | None]:
    """``configure(settings)`` inside the block and the saved ``get()`` restored afterwards (also after an error);
    yields what ``get()`` reports while they apply. ``settings`` None, or ``get()`` None (nothing to configure),
    changes nothing and yields ``get()``."""
    saved = get()
    if settings is None or saved is None:
        yield saved
        return
    configure(settings)
    try:
        yield get()
    finally:
        configure(saved)


def estimator_settings(model: InvertibleModel, settings: EstimatorSettings | None
                       ) -> contextlib.AbstractContextManager[EstimatorSettings | None]:
    """Use the estimator ``settings`` inside the block and restore the model's own afterwards (also after an
    error); yields what the model reports while they apply. ``settings`` None (or an exact model) changes
    nothing and yields the model's current settings."""
    return _applied(model.estimator_settings, model.configure_estimator, settings)


def inverse_settings(model: InvertibleModel, settings: InverseSettings | None
                     ) -> contextlib.AbstractContextManager[InverseSettings | None]:
    """Use the inverse ``settings`` inside the block and restore the model's own afterwards (also after an error).
    ``settings`` None (or an analytic inverse) changes nothing; yields what applies."""
    return _applied(model.inverse_settings, model.configure_inverse, settings)
