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
- Capabilities are declared in the class attribute ``capabilities``, never discovered by catching
  exceptions.
- A model MUST survive ``.to(torch.float64)``, ``state_dict`` round trips and be deterministic in
  ``eval()``. A model with data-dependent initialisation (ActNorm) MUST do it in ``data_init``.
- Adapters over a library MUST normalise its quirks inside the adapter (log-det types and signs, private
  attributes) and MUST NOT patch the library's defects: the conformance checks measure them.

Constructor convention: ``Model(shape=(D,) or (C, H, W), num_classes=None, **hyper_parameters)``.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar, Literal

import torch
from torch import Tensor, nn

InputKind = Literal["vector", "image"]
LogdetKind = Literal["exact", "estimator"]
InverseKind = Literal["analytic", "iterative"]


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
        volume_preserving: ladj is identically zero.
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
    """

    iterations: int = 0
    residual: float = 0.0
    converged: bool = True
    per_block: list[int] = field(default_factory=list)
    history: list[float] = field(default_factory=list)


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

    def estimator_settings(self) -> dict[str, Any]:
        """The log-det estimator's settings (terms, probes, ...); empty for exact models."""
        return {}

    def configure_estimator(self, **settings: Any) -> None:
        """Change the log-det estimator's settings (estimator models only)."""
        raise UnsupportedCapability(f"{type(self).__name__} has an exact log-det; nothing to configure")

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
