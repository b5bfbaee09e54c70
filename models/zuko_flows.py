"""Adapters over zuko 1.6: Neural Spline Flow, MAF, RealNVP and NICE, each wrapping a ``zuko.flows`` flow.

zuko's flows are conditional-distribution factories: a ``zuko.flows.Flow`` is a ``LazyDistribution`` whose
call ``flow(c)`` builds a ``NormalizingFlow`` distribution from its lazy transform ``flow.transform`` (a
``LazyComposedTransform``) and its base ``flow.base``. The adapters use no context: ``flow.transform()`` builds
the bijection ``x -> z`` (a ``torch.distributions.Transform`` with zuko's ``call_and_ladj(x) -> (z, ladj)`` and
``inv``), rebuilt on every call because its parameters live in the lazy modules. zuko's base is
``DiagNormal(0, 1)``, the contract's N(0, I), so ``log_prob == N(z; 0, I) + ladj`` is zuko's own
``flow().log_prob(x)`` for the same transform (tested). zuko's transforms already work on (B, D) tensors and
return a (B,) log-det in the data -> latent direction, so nothing else needs normalising.

Differences from the nflows adapters (``models.nflows_flows``), which these are sized like (same depth, hidden
width and number of hidden layers / residual blocks):

- zuko has no ActNorm. NSF, MAF and RealNVP start with a data-initialised element-wise affine map built from zuko's
  own ``MonotonicAffineTransform`` (:class:`ElementwiseAffine`), which standardises the input as zuko's NSF
  documentation recommends ("standardize features (zero mean, unit variance) before training"); ``standardize =
  false`` drops it. NICE ends in one (NICE's diagonal scaling, as ``nice-nflows`` ends in an ActNorm) and starts
  with none unless ``standardize = true``.
- zuko's affine univariate is ``y = exp(a') x + b`` with the log-scale soft-clipped, ``a' = a / (1 + |a| / 6.91)``
  (``slope = 1e-3``): each coupling can expand or contract by at most e^6.91 = 1000 per element, where nflows'
  ``sigmoid(u + 2) + 1e-3`` can only contract (hence nflows' trailing ActNorm, which these adapters do not need).
- zuko's hyper-networks keep PyTorch's default initialisation of their last layer, so a flow starts near, not at,
  the identity (``models.subnets`` shrinks the nflows couplings' last layer by 0.1).
- zuko's spline (``MonotonicRQSTransform``) acts on ``[-5, 5]`` (nflows adapter: ``[-3, 3]``, after its ActNorm) and
  is the identity outside (slope 1 at the ends, like nflows' linear tails); ``zuko.flows.NSF`` does not expose the
  bound. Bin widths, heights and knot slopes are soft-clipped like the affine log-scale (minimum slope 1e-3).
- zuko's NSF is a masked autoregressive flow; ``passes = 2`` (our default, zuko's documented way to get coupling)
  groups the features into halves ``[0, D/2)`` and ``[D/2, D)`` (reversed every other layer), not nflows'
  alternating masks, and its MADE also gives the first half a learned *unconditional* spline (its outputs see
  only biases). The masked-out weights are stored, so the parameter count is about twice the coupling's effective
  one; ``passes >= D`` makes it the fully autoregressive NSF (inverse: D passes per layer).
- zuko's MAF inverse (``AutoregressiveTransform.inv``) starts from ``x = 0`` and runs D full MADE passes per layer
  (exact after D passes, as nflows' loop over the D dimensions); RealNVP's and NICE's masks alternate
  ``arange(D) % 2`` like nflows'.

All four are vector-only: zuko has no image flows (no squeeze, no convolutional couplings).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import ClassVar

import torch
import zuko
from torch import Tensor, nn
from torch.distributions import Transform
from zuko.lazy import LazyTransform
from zuko.transforms import AdditiveTransform, ComposedTransform, DependentTransform, MonotonicAffineTransform

from models.base import Capabilities, InvertibleModel

#: zuko's default minimum slope: its soft clip keeps ``|log scale| < -ln(SLOPE) = 6.91``
SLOPE = 1e-3


class ElementwiseAffine(LazyTransform):
    """A zuko lazy transform ``y = exp(a') x + b`` per feature, zuko's ``MonotonicAffineTransform`` (soft-clipped
    log-scale ``a' = a / (1 + |a| / L)``, ``L = -ln(slope)``) with the parameters ``shift`` = b and ``scale`` = a
    held here, so :meth:`initialize` can standardise its input (the ActNorm of Kingma & Dhariwal, Glow 2018).

    ``x``: (B, D) -> ``y``: (B, D), ladj (B,) = ``sum(a')``. Starts as the identity.
    """

    def __init__(self, features: int, slope: float = SLOPE) -> None:
        super().__init__()
        self.shift = nn.Parameter(torch.zeros(features))
        self.scale = nn.Parameter(torch.zeros(features))
        self.slope = slope

    def forward(self, c: Tensor | None = None) -> Transform:
        """The transform (``c`` ignored): a ``DependentTransform`` so the log-det is summed over features."""
        return DependentTransform(MonotonicAffineTransform(self.shift, self.scale, slope=self.slope), 1)

    @torch.no_grad()
    def initialize(self, h: Tensor) -> None:
        """Set ``a, b`` so that ``y`` has zero mean and unit standard deviation per feature on ``h``: (B, D), B >= 2.

        The soft clip is inverted (``a = a' / (1 - |a'| / L)``) with the log-scale kept within 0.99 L; a constant
        feature (std <= 1e-6) gets ``a = 0`` and ``b = -mean``."""
        bound = -math.log(self.slope)
        mean, std = h.mean(dim=0), h.std(dim=0)
        log_scale = torch.where(std > 1e-6, -torch.log(std.clamp_min(1e-6)), torch.zeros_like(std))
        log_scale = log_scale.clamp(-0.99 * bound, 0.99 * bound)
        self.scale.copy_(log_scale / (1 - log_scale.abs() / bound))
        self.shift.copy_(-mean * torch.exp(log_scale))


class _ZukoFlow(InvertibleModel):
    """A ``zuko.flows.Flow`` ``self.flow`` on (B, D) vectors, with an optional data-initialised standardisation
    before it (``self.standardize``) and scaling after it (``self.scaling``).

    ``x``: (B, D) -> ``z``: (B, D), ``ladj``: (B,).
    """

    backend = "zuko"
    capabilities = Capabilities(density=True, logdet="exact", inverse="analytic", inputs=("vector",))
    roundtrip_tol: ClassVar[float] = 1e-10
    logdet_tol: ClassVar[float] = 1e-8
    width_hparam = "hidden"
    flow: zuko.flows.Flow

    def _build(self, flow: zuko.flows.Flow, standardize: bool, scaling: bool = False) -> None:
        self.flow = flow  # its ``base`` (DiagNormal(0, 1) buffers) is unused: the contract's N(0, I) is the same
        self.standardize = ElementwiseAffine(self.dim) if standardize else None
        self.scaling = ElementwiseAffine(self.dim) if scaling else None

    def _check_dim(self) -> None:
        if self.dim < 2:
            raise ValueError(f"zuko's coupling / autoregressive flows need D >= 2, got shape {self.shape}")

    def bijection(self) -> ComposedTransform:
        """The zuko transform ``x -> z``: standardisation, ``flow.transform()``, scaling (those present)."""
        steps: list[Transform] = []
        if self.standardize is not None:
            steps.append(self.standardize())
        steps.append(self.flow.transform())
        if self.scaling is not None:
            steps.append(self.scaling())
        return ComposedTransform(*steps)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``x``: (B, D) -> ``z``: (B, D), ``ladj``: (B,) by zuko's ``call_and_ladj``."""
        z, ladj = self.bijection().call_and_ladj(x)
        return z, ladj

    def inverse(self, z: Tensor) -> Tensor:
        """``z``: (B, D) -> ``x``: (B, D) by zuko's ``inv`` (closed form; D passes per layer for MAF)."""
        x: Tensor = self.bijection().inv(z)
        return x

    def data_init(self, x: Tensor) -> None:
        """Standardise on ``x``: (B, D) (B >= 2): the leading affine on ``x``, the trailing one on the flow's output."""
        with torch.no_grad():
            h = x
            if self.standardize is not None:
                self.standardize.initialize(h)
                h = self.standardize()(h)
            if self.scaling is not None:
                self.scaling.initialize(self.flow.transform()(h))


class NSFZuko(_ZukoFlow):
    """Neural Spline Flow (Durkan, Bekasov, Murray & Papamakarios, "Neural Spline Flows", NeurIPS 2019) in zuko:
    ``zuko.flows.NSF``, ``depth`` masked autoregressive layers of monotone rational-quadratic splines (``bins``
    bins on zuko's fixed ``[-5, 5]``, identity outside), their knots predicted by a MADE of ``hidden_layers`` hidden
    layers of ``hidden`` units; feature order reversed every other layer.

    ``passes = 2`` (default) is the coupling form, as ``nsf-nflows``: the second half of the features is
    transformed given the first, the first by an unconditional spline (see the module docstring); the inverse
    takes ``passes`` MADE evaluations per layer. ``passes >= D``: the autoregressive form.

    Args:
        shape: (D,) with D >= 2.
        depth: number of spline layers.
        hidden: hidden units of every MADE layer.
        hidden_layers: hidden layers per MADE.
        bins: spline bins per feature.
        passes: zuko's inverse passes (2: coupling; >= D: fully autoregressive).
        standardize: start with the data-initialised standardisation (:class:`ElementwiseAffine`).
    """

    family = "nsf"

    def __init__(self, shape: Sequence[int], num_classes: int | None = None, depth: int = 4, hidden: int = 64,
                 hidden_layers: int = 2, bins: int = 16, passes: int = 2, standardize: bool = True) -> None:
        super().__init__(shape, num_classes, depth=depth, hidden=hidden, hidden_layers=hidden_layers, bins=bins,
                         passes=passes, standardize=standardize)
        self._check_dim()
        self._build(zuko.flows.NSF(self.dim, transforms=depth, bins=bins, passes=passes,
                                   hidden_features=(hidden,) * hidden_layers), standardize)


class MAFZuko(_ZukoFlow):
    """MAF (Papamakarios, Pavlakou & Murray, "Masked Autoregressive Flow for Density Estimation", NeurIPS 2017) in
    zuko: ``zuko.flows.MAF``, ``depth`` MADE layers predicting ``z_i = exp(a'_i) x_i + b_i`` from ``x_<i`` (soft-clipped
    log-scale), feature order reversed every other layer. With ``residual`` (default) each MADE is zuko's
    ``MaskedMLP(residual=True)``: input layer, ``hidden_layers`` residual blocks of two masked layers, output layer,
    the layout of nflows' MADE with ``num_blocks = hidden_layers`` in ``maf-nflows``. Density evaluation is one
    pass; the inverse is D sequential MADE passes per layer (exact, closed form: ``inverse="analytic"``).

    Args:
        shape: (D,) with D >= 2.
        depth: number of MADE layers.
        hidden: hidden units of every MADE layer.
        hidden_layers: residual blocks (``residual``) or hidden layers per MADE.
        residual: residual blocks in the MADE (zuko's default is False).
        standardize: start with the data-initialised standardisation (:class:`ElementwiseAffine`).
    """

    family = "maf"

    def __init__(self, shape: Sequence[int], num_classes: int | None = None, depth: int = 5, hidden: int = 64,
                 hidden_layers: int = 2, residual: bool = True, standardize: bool = True) -> None:
        super().__init__(shape, num_classes, depth=depth, hidden=hidden, hidden_layers=hidden_layers,
                         residual=residual, standardize=standardize)
        self._check_dim()
        self._build(zuko.flows.MAF(self.dim, transforms=depth, hidden_features=(hidden,) * hidden_layers,
                                   residual=residual), standardize)


class RealNVPZuko(_ZukoFlow):
    """RealNVP (Dinh, Sohl-Dickstein & Bengio, "Density estimation using Real NVP", ICLR 2017) in zuko:
    ``zuko.flows.RealNVP``, ``depth`` affine couplings ``y_b = exp(a') x_b + t`` with ``(a, t) = MLP(x_a)`` (zuko's
    ``MLP`` of ``hidden_layers`` hidden layers of ``hidden`` units), masks alternating ``arange(D) % 2``.

    Args:
        shape: (D,) with D >= 2.
        depth: number of (one-sided) affine coupling layers.
        hidden: hidden units of every coupling MLP.
        hidden_layers: hidden layers per MLP.
        standardize: start with the data-initialised standardisation (:class:`ElementwiseAffine`).
    """

    family = "realnvp"

    def __init__(self, shape: Sequence[int], num_classes: int | None = None, depth: int = 8, hidden: int = 64,
                 hidden_layers: int = 2, standardize: bool = True) -> None:
        super().__init__(shape, num_classes, depth=depth, hidden=hidden, hidden_layers=hidden_layers,
                         standardize=standardize)
        self._check_dim()
        self._build(zuko.flows.RealNVP(self.dim, transforms=depth, hidden_features=(hidden,) * hidden_layers),
                    standardize)


class NiceZuko(_ZukoFlow):
    """NICE (Dinh, Krueger & Bengio, "NICE: Non-linear Independent Components Estimation", 2014) in zuko:
    ``zuko.flows.NICE`` with zuko's ``AdditiveTransform`` as the univariate map, ``depth`` additive couplings
    ``y_b = x_b + m(x_a)`` (ladj 0), masks alternating ``arange(D) % 2``, then NICE's diagonal scaling as an
    :class:`ElementwiseAffine` (data-initialised to standardise its input; its shift is an addition to the paper's
    ``exp(s)``), as ``nice-nflows``.

    Args:
        shape: (D,) with D >= 2.
        depth: number of (one-sided) additive coupling layers.
        hidden: hidden units of every coupling MLP.
        hidden_layers: hidden layers per MLP.
        standardize: start with the data-initialised standardisation (:class:`ElementwiseAffine`).
    """

    family = "nice"

    def __init__(self, shape: Sequence[int], num_classes: int | None = None, depth: int = 8, hidden: int = 64,
                 hidden_layers: int = 2, standardize: bool = False) -> None:
        super().__init__(shape, num_classes, depth=depth, hidden=hidden, hidden_layers=hidden_layers,
                         standardize=standardize)
        self._check_dim()
        self._build(zuko.flows.NICE(self.dim, transforms=depth, univariate=AdditiveTransform, shapes=[()],
                                    hidden_features=(hidden,) * hidden_layers), standardize, scaling=True)

