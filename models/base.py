"""The adapter contract: what every invertible model in the suite MUST and MAY do.

Direction: ``forward`` maps data to latent (as nflows, FrEIA and zuko do).

Rules (D = prod(shape), B = batch size):

- ``forward(x) -> (z, ladj)``
    MUST accept ``x`` of shape ``(B, *shape)`` and return ``z`` of the same shape ``(B, *shape)`` and
    ``ladj = log|det dz/dx|`` of shape ``(B,)``, always a tensor (never a python float or numpy scalar),
    on ``x``'s device and dtype. For estimator models (``capabilities.logdet == "estimator"``) ``ladj``
    is an estimate; ``exact_logdet`` MUST then give the exact value (at small D).
- ``encode(x) -> z``
    MAY be overridden by a cheaper map without the log-det; MUST equal ``forward(x)[0]``.
- ``inverse(z) -> x``
    MUST invert ``forward`` on ``(B, *shape)``. Iterative inverses MUST record what they did in
    ``self.last_inverse`` (an :class:`InverseInfo`: iterations, final residual, converged); analytic
    inverses MAY leave the default. An iterative inverse that does not converge MUST say so there
    (``converged=False``) rather than return silently.
- ``log_prob(x) -> (B,)`` in nats. Default: standard normal base on ``z`` plus ``ladj``. MAY be overridden.
- ``sample(n) -> (n, *shape)``: default draws ``z ~ N(0, I)`` and inverts.
- ``logits(x) -> (B, num_classes)``: only for ``capabilities.classifier``; others raise
  :class:`UnsupportedCapability`.
- ``config() -> dict``: JSON-serialisable hyper-parameters; ``cls(**cfg)`` MUST rebuild the model.
- ``estimator_settings() -> EstimatorSettings | None`` and ``configure_estimator(settings)``: estimator models
  (``capabilities.logdet == "estimator"``) MUST report and accept their :class:`EstimatorSettings`; exact models
  return None. ``inverse_settings() -> InverseSettings | None`` and ``configure_inverse(settings)`` likewise for
  iterative inverses (:class:`InverseSettings`); analytic inverses return None. ``configure_*`` MUST raise
  ``ValueError`` for a change the model cannot honour, and ``config()`` MUST reflect what was configured.
- Capabilities are declared in the class attribute ``capabilities``, never discovered by catching
  exceptions.
- A model MUST survive ``.to(torch.float64)``, ``state_dict`` round trips and be deterministic in
  ``eval()``. A model with data-dependent initialisation (ActNorm) MUST do it in ``data_init``.
- Adapters over a library MUST normalise its quirks inside the adapter (log-det types and signs, private
  attributes) and MUST NOT patch the library's defects: the conformance checks measure them.

Constructor convention: ``Model(shape=(D,) or (C, H, W), num_classes=None, <hyper-parameter>=<default>, ...)``
with every hyper-parameter an explicit keyword argument (no ``**kwargs``), so that a suite's misspelt
hyper-parameter is caught from the signature before anything runs.
"""

from __future__ import annotations

import dataclasses
import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar, Literal, get_args

import torch
from torch import Tensor, nn

InputKind = Literal["vector", "image"]
LogdetKind = Literal["exact", "estimator"]
InverseKind = Literal["analytic", "iterative"]
SolverKind = Literal["fixed_point", "anderson", "newton", "auto"]
StopKind = Literal["residual", "error"]
EstimatorMethod = Literal["exact", "series", "roulette"]
ProbeKind = Literal["gaussian", "rademacher"]
TailKind = Literal["geometric", "poisson"]
VjpKind = Literal["analytic", "autograd"]
#: the integer estimator settings that can set an estimator's cost (see :meth:`EstimatorSettings.cost_knobs`)
COST_KNOBS: tuple[str, ...] = ("terms", "exact_terms", "probes")


class UnsupportedCapability(RuntimeError):
    """Raised when a model is asked for something its ``capabilities`` do not declare."""


@dataclass(frozen=True)
class Capabilities:
    """What a model can do; tasks read these to decide whether they apply.

    Attributes:
        density: ``log_prob`` and ``sample`` give a normalised density.
        logdet: ``"exact"`` when ``forward``'s ladj is exact, ``"estimator"`` when it is a stochastic
            estimate (``exact_logdet`` then gives the reference at small D).
        inverse: ``"analytic"`` (closed form, possibly sequential as in MAF) or ``"iterative"``
            (fixed-point style, reports :class:`InverseInfo`).
        classifier: ``logits`` is implemented.
        memory_saving: backprop can reconstruct activations instead of storing them
            (``set_memory_saving(bool)``).
        inputs: the input kinds the model accepts.
        volume_preserving: ladj is identically zero in every configuration of the class (a model whose volume
            preservation depends on a hyper-parameter declares False and answers per instance in
            :meth:`InvertibleModel.nll_floor`).
    """

    density: bool = True
    logdet: LogdetKind = "exact"
    inverse: InverseKind = "analytic"
    classifier: bool = False
    memory_saving: bool = False
    inputs: tuple[InputKind, ...] = ("vector",)
    volume_preserving: bool = False

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        """One short line for ``invbench list``."""
        parts = []
        if self.density:
            parts.append(f"density({self.logdet})")
        parts.append(f"inverse({self.inverse})")
        if self.classifier:
            parts.append("classifier")
        if self.memory_saving:
            parts.append("memory-saving")
        if self.volume_preserving:
            parts.append("volume-preserving")
        parts.append("/".join(self.inputs))
        return " ".join(parts)


@dataclass
class InverseInfo:
    """What an inverse did. Analytic inverses report ``iterations=0, converged=True``.

    Attributes:
        iterations: iterations used (the maximum over blocks for a stack of iterative blocks;
            ``per_block`` holds each block's count).
        residual: the final fixed-point residual ``max ||x_{k+1} - x_k||`` (0.0 for analytic).
        converged: every block met its tolerance within its iteration cap.
        per_block: iterations per block, in the order they were inverted.
        history: optional residual after each iteration (for convergence curves).
        error_bound: a certified bound on the reconstruction error ``max_b ||x_b - F^-1(z)_b||_2`` (max over the
            batch of the per-example 2-norm, so also a bound on the max-abs error), from the blocks' Lipschitz
            constants (a-posteriori Banach bounds composed over the blocks); None where the model gives none.
        per_block_bound: each block's bound on the error its own solve added, in inversion order.
        stop: what the solves stopped on: ``"error"`` (the certified bound) or ``"residual"`` (asked for, or the
            fallback of an ``"error"`` stop where a block is not a certified contraction); None for analytic
            inverses and models that do not say.
    """

    iterations: int = 0
    residual: float = 0.0
    converged: bool = True
    per_block: list[int] = field(default_factory=list)
    history: list[float] = field(default_factory=list)
    error_bound: float | None = None
    per_block_bound: list[float] = field(default_factory=list)
    stop: StopKind | None = None


def _check_literal(name: str, value: Any, kind: Any) -> None:
    if value not in get_args(kind):
        raise ValueError(f"unknown {name} {value!r}; choose from {get_args(kind)}")


@dataclass(frozen=True)
class InverseSettings:
    """How an iterative inverse solves ``F(x) = z`` (Behrmann et al., "Invertible Residual Networks", ICML 2019,
    Algorithm 1: the fixed-point iteration ``x_{k+1} = z - g(x_k)``; optionally Anderson-accelerated).

    Read with :meth:`InvertibleModel.inverse_settings`, changed with :meth:`InvertibleModel.configure_inverse`
    (``dataclasses.replace(settings, max_iter=8)``). A model MUST reject a change it cannot honour (a solver it
    does not have) with ``ValueError``.

    Attributes:
        solver: ``"fixed_point"`` (plain iteration), ``"anderson"`` (Anderson acceleration) or ``"newton"``
            (Newton's method with the exact Jacobian of each block; small vectors only), ``"auto"`` (the model
            picks per solve, as it states).
        tol: the tolerance the solve is held to (the stopping rule is the model's, stated in its docstring);
            ``None``: the model's default for the dtype.
        max_iter: iteration cap (per block for a stack of blocks); a model with a fixed iteration count runs
            exactly this many.
        anderson_memory: Anderson's history length ``m`` (``solver="anderson"`` only).
        stop: what ``tol`` bounds: ``"residual"``, the fixed-point residual ``max |x_{k+1} - x_k|`` (relative as the
            model states); ``"error"``, the reconstruction error itself, through a certified a-posteriori bound
            (models that can certify one; see :attr:`InverseInfo.error_bound`).
    """

    solver: SolverKind = "fixed_point"
    tol: float | None = None
    max_iter: int = 1000
    anderson_memory: int = 5
    stop: StopKind = "residual"

    def __post_init__(self) -> None:
        _check_literal("solver", self.solver, SolverKind)
        _check_literal("stop", self.stop, StopKind)
        if self.tol is not None and not self.tol > 0:
            raise ValueError(f"tol must be positive or None, got {self.tol!r}")
        if self.max_iter < 1 or self.anderson_memory < 1:
            raise ValueError(f"max_iter and anderson_memory must be >= 1, got {self.max_iter}, {self.anderson_memory}")


@dataclass(frozen=True)
class EstimatorSettings:
    """A stochastic log-det estimator of residual blocks ``F(x) = x + g(x)`` (see :mod:`models.logdet_estimators`).

    Read with :meth:`InvertibleModel.estimator_settings`, changed with :meth:`InvertibleModel.configure_estimator`
    (``dataclasses.replace(settings, terms=10)``). A model MUST reject a change it cannot honour (e.g. a method it
    does not implement) with ``ValueError``. :meth:`cost_knobs` names the fields that set the cost.

    Attributes:
        method: ``"exact"``, ``"series"`` (truncated power series with Hutchinson probes, Behrmann et al., ICML
            2019, sec. 4) or ``"roulette"`` (Russian-roulette series, Chen et al., "Residual Flows", NeurIPS 2019,
            sec. 3.1).
        terms: number of power-series terms (``series``).
        exact_terms: ``n0``, terms always computed (``roulette``).
        probes: Hutchinson probes per example.
        probe: ``"gaussian"`` or ``"rademacher"``.
        tail: ``"geometric"`` (``T ~ Geom(p)`` on {1, 2, ...}, ``E[N] = n0 + 1/p``) or ``"poisson"``
            (``T ~ Poisson(lambda)``, ``E[N] = n0 + lambda``) (``roulette``).
        tail_param: ``p`` or ``lambda``.
        max_terms: hard cap on ``N`` for ``roulette`` (a guard against a huge draw; the estimator is unbiased only
            up to the mass beyond it, ``P(N > max_terms)``).
        neumann_grad: estimate the gradient with the Neumann series instead of backpropagating through the terms
            (``series`` and ``roulette``).
        vjp: ``"analytic"`` (explicit transposed chain through the saved activations' derivatives, an ordinary
            differentiable expression) or ``"autograd"`` (``torch.autograd.grad`` with ``create_graph=True`` when a
            gradient is needed); both give the same numbers.
        eval_seed: ``None``: probes and roulette draws come from torch's global RNG in every mode (seed it for
            reproducible draws); an int: in eval mode they come from a generator seeded with it on every call, so
            eval log-dets are repeatable (common random numbers across models/checkpoints).
    """

    method: EstimatorMethod = "series"
    terms: int = 5
    exact_terms: int = 2
    probes: int = 1
    probe: ProbeKind = "gaussian"
    tail: TailKind = "geometric"
    tail_param: float = 0.5
    max_terms: int = 100
    neumann_grad: bool = False
    vjp: VjpKind = "analytic"
    eval_seed: int | None = None

    def __post_init__(self) -> None:
        _check_literal("log-det method", self.method, EstimatorMethod)
        _check_literal("probe", self.probe, ProbeKind)
        _check_literal("roulette tail", self.tail, TailKind)
        _check_literal("vjp", self.vjp, VjpKind)
        if self.terms < 1 or self.exact_terms < 0 or self.probes < 1 or self.max_terms < 1:
            raise ValueError("terms, probes and max_terms must be >= 1, exact_terms >= 0")
        if self.tail == "geometric" and not 0 < self.tail_param <= 1:
            raise ValueError(f"geometric p must lie in (0, 1], got {self.tail_param}")
        if self.tail == "poisson" and self.tail_param <= 0:
            raise ValueError(f"poisson lambda must be positive, got {self.tail_param}")

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def cost_knobs(self) -> tuple[str, ...]:
        """The integer fields that set this estimator's cost (and precision): ``("terms", "probes")`` for the
        series, ``("exact_terms", "probes")`` for the roulette (its random tail is a distribution, not a count),
        none for the exact method (its cost is D vector-Jacobian products)."""
        if self.method == "series":
            return ("terms", "probes")
        if self.method == "roulette":
            return ("exact_terms", "probes")
        return ()

    def expected_terms(self) -> float:
        """Expected power-series terms per probe: ``terms`` (series), ``n0 + E[T]`` (roulette, before the
        ``max_terms`` cap), ``inf`` for the exact method (D vector-Jacobian products, D unknown here)."""
        if self.method == "series":
            return float(self.terms)
        if self.method == "roulette":
            return self.exact_terms + (1.0 / self.tail_param if self.tail == "geometric" else self.tail_param)
        return math.inf

    def work(self) -> float:
        """Expected vector-Jacobian products per example and block: ``expected_terms() * probes``."""
        return self.expected_terms() * self.probes

    def knobs(self) -> dict[str, int]:
        """``{knob: value}`` for :meth:`cost_knobs`."""
        return {k: int(getattr(self, k)) for k in self.cost_knobs()}

    def at_least(self, **floors: int) -> EstimatorSettings:
        """These settings with every cost knob named in ``floors`` raised to at least its value (names in
        :data:`COST_KNOBS`; knobs this method does not have are left alone)."""
        return self._moved(floors, up=True)

    def at_most(self, **caps: int) -> EstimatorSettings:
        """These settings with every cost knob named in ``caps`` lowered to at most its value."""
        return self._moved(caps, up=False)

    def _moved(self, bounds: dict[str, int], up: bool) -> EstimatorSettings:
        unknown = sorted(set(bounds) - set(COST_KNOBS))
        if unknown:
            raise ValueError(f"not cost knobs: {unknown}; cost knobs are {COST_KNOBS}")
        changes: dict[str, Any] = {k: (max if up else min)(v, bounds[k]) for k, v in self.knobs().items()
                                   if k in bounds}
        return dataclasses.replace(self, **changes)

    def changes_from(self, other: EstimatorSettings) -> dict[str, Any]:
        """``{field: value}`` of the fields whose value here differs from ``other``'s."""
        mine, theirs = self.as_dict(), other.as_dict()
        return {k: v for k, v in mine.items() if theirs[k] != v}


def refuse_changes(current: Any, new: Any, allowed: Sequence[str], what: str) -> None:
    """Raise ``ValueError`` when the settings dataclass ``new`` differs from ``current`` outside the fields
    ``allowed`` (what a model can change; ``what`` names the model in the message)."""
    fixed = [f.name for f in dataclasses.fields(current)
             if f.name not in allowed and getattr(current, f.name) != getattr(new, f.name)]
    if fixed:
        shown = ", ".join(f"{k}={getattr(new, k)!r}" for k in fixed)
        raise ValueError(f"{what} cannot change {shown} (it can change: {', '.join(allowed) or 'nothing'})")


def standard_normal_log_prob(z: Tensor) -> Tensor:
    """log N(z; 0, I) summed over all non-batch dimensions. ``z``: (B, ...) -> (B,)."""
    flat = z.reshape(z.shape[0], -1)
    d = flat.shape[1]
    return -0.5 * (flat**2).sum(dim=1) - 0.5 * d * math.log(2 * math.pi)


class InvertibleModel(nn.Module, ABC):
    """Base class of every adapter and native architecture; see the module docstring for the rules.

    Subclasses set the class attributes ``family`` (architecture, e.g. ``"realnvp"``), ``backend``
    (``"nflows"``, ``"freia"``, ``"native"`` or a user's own) and ``capabilities``, call
    ``super().__init__(shape, num_classes, **hparams)`` with every hyper-parameter they take, and
    implement ``forward`` and ``inverse``.
    """

    family: ClassVar[str] = "unknown"
    backend: ClassVar[str] = "unknown"
    capabilities: ClassVar[Capabilities] = Capabilities()
    #: Per-adapter round-trip tolerance (max abs error in float64) used by the conformance checks.
    roundtrip_tol: ClassVar[float] = 1e-8
    #: Tolerance of ladj against the exact slogdet (exact models) in float64.
    logdet_tol: ClassVar[float] = 1e-6
    #: the integer hyper-parameter that sets the model's width (a suite's ``match_params`` scales it), or None
    width_hparam: ClassVar[str | None] = None
    #: The model is fitted in closed form by :meth:`fit_closed_form` on the whole training set instead of by
    #: gradient steps; training loops call that once and take no optimiser step.
    closed_form_fit: ClassVar[bool] = False
    #: A reference the comparisons are held against rather than a contender (``"gaussian"``: the Gaussian fitted
    #: to the training data); tasks copy it into their rows' ``extra`` as ``{"baseline": baseline}``. None: a model.
    baseline: ClassVar[str | None] = None
    #: Why the training loss cannot run under ``torch.compile`` (a training task's ``compile`` option then runs it
    #: eagerly and records this as the fallback's reason); empty: it may be compiled.
    compile_unsupported: ClassVar[str] = ""

    def __init__(self, shape: Sequence[int], num_classes: int | None = None, **hparams: Any) -> None:
        super().__init__()
        self.shape: tuple[int, ...] = tuple(int(s) for s in shape)
        if not self.shape or any(s <= 0 for s in self.shape):
            raise ValueError(f"shape must be a non-empty tuple of positive ints, got {shape!r}")
        kind: InputKind = "vector" if len(self.shape) == 1 else "image"
        if kind not in self.capabilities.inputs:
            raise UnsupportedCapability(
                f"{type(self).__name__} accepts {'/'.join(self.capabilities.inputs)} inputs, "
                f"not {kind} of shape {self.shape}"
            )
        if self.capabilities.classifier and num_classes is None:
            num_classes = 10
        self.num_classes = num_classes
        self._hparams: dict[str, Any] = dict(hparams)
        self.last_inverse = InverseInfo()

    # ----------------------------------------------------------------------------------- contract
    @property
    def dim(self) -> int:
        """D, the number of scalar dimensions of one example."""
        return math.prod(self.shape)

    @property
    def input_kind(self) -> InputKind:
        return "vector" if len(self.shape) == 1 else "image"

    @abstractmethod
    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Data to latent. ``x``: (B, *shape) -> ``z``: (B, *shape), ``ladj``: (B,)."""

    @abstractmethod
    def inverse(self, z: Tensor) -> Tensor:
        """Latent to data. ``z``: (B, *shape) -> ``x``: (B, *shape); sets ``self.last_inverse``."""

    def encode(self, x: Tensor) -> Tensor:
        """``z`` alone. ``x``: (B, *shape) -> (B, *shape). Default: ``self(x)[0]``.

        MAY be overridden by a cheaper map that skips the log-det (an i-ResNet evaluates each ``g`` once without
        its estimator); it MUST equal ``forward(x)[0]``. Tasks use it as the forward-pass unit of inverse cost and
        for Jacobians of ``f``.
        """
        return self(x)[0]

    def invert(self, z: Tensor) -> tuple[Tensor, InverseInfo]:
        """``inverse`` plus what it did. ``z``: (B, *shape) -> (``x``: (B, *shape), info)."""
        self.last_inverse = InverseInfo()
        x = self.inverse(z)
        return x, self.last_inverse

    def log_prob(self, x: Tensor) -> Tensor:
        """log p(x) in nats. ``x``: (B, *shape) -> (B,). Standard normal base + ladj."""
        z, ladj = self(x)
        return standard_normal_log_prob(z) + ladj

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """``n`` draws from the model: (n, *shape)."""
        if not self.capabilities.density:
            raise UnsupportedCapability(f"{type(self).__name__} is not a density model")
        ref = self._reference_tensor()
        z = torch.randn((n, *self.shape), generator=generator, device=ref.device, dtype=ref.dtype)
        return self.inverse(z)

    def logits(self, x: Tensor) -> Tensor:
        """Class scores. ``x``: (B, *shape) -> (B, num_classes). Classifiers only."""
        raise UnsupportedCapability(f"{type(self).__name__} is not a classifier")

    def exact_logdet(self, x: Tensor) -> Tensor:
        """The exact log|det dz/dx| from the autograd Jacobian. ``x``: (B, *shape) -> (B,).

        Costs D backward passes per example; meant for small D (tests, estimator bias).
        """
        from models.jacobian import jacobian_slogdet

        return jacobian_slogdet(lambda v: self(v)[0], x)

    def config(self) -> dict[str, Any]:
        """JSON-serialisable constructor arguments: ``type(self)(**self.config())`` rebuilds the model."""
        cfg: dict[str, Any] = {"shape": list(self.shape)}
        if self.num_classes is not None:
            cfg["num_classes"] = self.num_classes
        cfg.update(self._hparams)
        return cfg

    # ----------------------------------------------------------------------------------- optional
    def data_init(self, x: Tensor) -> None:
        """Data-dependent initialisation (ActNorm) from a training batch ``x``: (B, *shape).

        Default: one forward pass without gradients, which triggers lazy initialisers.
        """
        with torch.no_grad():
            self(x)

    def after_step(self) -> None:
        """Called by training loops after every optimiser step (e.g. a projection). Default: nothing."""

    def nll_floor(self) -> float | None:
        """The least NLL, in nats per example of the model's input ``y``: (B, *shape), that this model can give any
        point, whatever it learns; None where there is no such floor.

        A volume-preserving model with the standard normal base has ``log p(y) = log N(T(y); 0, I) <= -(D/2)
        ln(2 pi)``, so ``NLL >= (D/2) ln(2 pi)``. On discrete data with L levels scaled to [0, 1) (``bench.units``)
        that is ``bpd >= log2(L) + (1/2) log2(2 pi)``: 5.413 bits/dim for L = 17 (8x8 digits), 9.326 for L = 256,
        worse than the ``log2(L)`` of the uniform density on the cube. Pre-processing ``x -> y`` moves the floor by
        its log-det (the NLL of ``x`` is the NLL of ``y`` minus ``log|det dy/dx|``). Default: that floor when
        ``capabilities.volume_preserving``, else None; a model whose volume preservation depends on its
        configuration overrides this.
        """
        if self.capabilities.volume_preserving and self.capabilities.density:
            return 0.5 * self.dim * math.log(2 * math.pi)
        return None

    def fit_closed_form(self, y: Tensor) -> None:
        """Fit the model in closed form to the whole pre-processed training set ``y``: (N, *shape) (discrete data
        already dequantised by the caller). Only for ``closed_form_fit`` models, which training loops fit with this
        one call instead of optimiser steps; others raise ``NotImplementedError``."""
        raise NotImplementedError(f"{type(self).__name__} is trained by gradient steps, not fitted in closed form")

    def estimator_settings(self) -> EstimatorSettings | None:
        """The log-det estimator's settings; None for exact models. Estimator models MUST override it."""
        return None

    def configure_estimator(self, settings: EstimatorSettings) -> None:
        """Use the log-det estimator ``settings`` from now on (estimator models only); ``config()`` MUST reflect
        them. Raises ``ValueError`` for a change the model cannot honour."""
        raise UnsupportedCapability(f"{type(self).__name__} has an exact log-det; nothing to configure")

    def inverse_settings(self) -> InverseSettings | None:
        """The iterative inverse's settings; None for analytic inverses. Iterative models MUST override it."""
        return None

    def configure_inverse(self, settings: InverseSettings) -> None:
        """Use the inverse ``settings`` from now on (iterative inverses only); ``config()`` MUST reflect them.
        Raises ``ValueError`` for a change the model cannot honour."""
        raise UnsupportedCapability(f"{type(self).__name__} has an analytic inverse; nothing to configure")

    def set_memory_saving(self, enabled: bool) -> None:
        """Switch memory-saving backprop on or off (``capabilities.memory_saving`` models only)."""
        raise UnsupportedCapability(f"{type(self).__name__} has no memory-saving backprop")

    def known_defects(self) -> dict[str, str]:
        """Properties the wrapped library is known to violate, as {check name: explanation}.

        The conformance checks still run and report these; the tests assert they are *detected*.
        """
        return {}

    # ----------------------------------------------------------------------------------- helpers
    def _reference_tensor(self) -> Tensor:
        """A tensor whose device and dtype the model's own tensors have (first parameter or buffer)."""
        for p in self.parameters():
            return p
        for b in self.buffers():
            return b
        return torch.empty(0)

    def extra_repr(self) -> str:
        return f"shape={self.shape}, family={self.family!r}, backend={self.backend!r}"
