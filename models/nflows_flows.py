"""Adapters over nflows 0.14: NICE, RealNVP and MAF, each wrapping an nflows ``CompositeTransform`` directly.

nflows' ``Flow`` keeps its transform in the private ``_transform`` and pairs it with its own base
distribution; the adapters hold the ``Transform`` themselves (``self.transform``) and use the contract's
standard normal, so ``log_prob == N(z; 0, I) + ladj`` everywhere. nflows' transforms already return
``(outputs, logabsdet)`` with a (B,) tensor log-det in the data -> latent direction.

Quirks of nflows visible here:

- ``AffineCouplingTransform`` uses ``scale = sigmoid(u + 2) + 1e-3`` in (1e-3, 1.001): a coupling can only
  *contract* (ladj <= ~0). RealNVP therefore starts with an ``ActNorm`` that can expand (in the paper, batch
  normalisation plays that role; batch statistics would make ``z`` depend on the rest of the batch);
- ``ActNorm`` initialises itself on its first forward in training mode: the adapters mark it initialised at
  construction (identity start) and initialise it explicitly in ``data_init``;
- couplings split along the channel axis, so images are squeezed first (``SqueezeTransform``, (C, H, W) ->
  (4C, H/2, W/2), Dinh et al. 2017) and un-squeezed at the end (``InverseTransform(SqueezeTransform())``) so
  ``z`` comes back in x's shape; MADE only takes vectors, so MAF flattens images;
- the unconstrained rational-quadratic spline (``nsf-nflows``) splits points inside and outside its interval by
  boolean indexing: 20 host-device synchronisations per coupling layer per forward+backward on a GPU (measured
  on an H100: 80 per step of the default 4-layer flow, a step 2.4x a RealNVP step; ``reports/fashion-gpu``).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import ClassVar

import torch
from nflows.transforms import (
    ActNorm,
    AdditiveCouplingTransform,
    AffineCouplingTransform,
    CompositeTransform,
    InverseTransform,
    MaskedAffineAutoregressiveTransform,
    PiecewiseRationalQuadraticCouplingTransform,
    ReversePermutation,
    SqueezeTransform,
    Transform,
)
from torch import Tensor

from models.base import Capabilities, InvertibleModel
from models.subnets import SubnetConstructor, SubnetKind, subnet_constructor


class Reshape(Transform):
    """An nflows ``Transform`` that reshapes (B, *in_shape) <-> (B, *out_shape); ladj 0."""

    def __init__(self, in_shape: Sequence[int], out_shape: Sequence[int]) -> None:
        super().__init__()
        self.in_shape = tuple(in_shape)
        self.out_shape = tuple(out_shape)

    def forward(self, inputs: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """(B, *in_shape) -> ((B, *out_shape), zeros (B,))."""
        return inputs.reshape(inputs.shape[0], *self.out_shape), inputs.new_zeros(inputs.shape[0])

    def inverse(self, inputs: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """(B, *out_shape) -> ((B, *in_shape), zeros (B,))."""
        return inputs.reshape(inputs.shape[0], *self.in_shape), inputs.new_zeros(inputs.shape[0])


def alternating_mask(n: int, flip: bool) -> Tensor:
    """nflows coupling mask over ``n`` features/channels: ``+1`` (transformed) and ``-1`` (passed through)
    alternating, starting with ``-1`` (or ``+1`` when ``flip``). (n,) float."""
    mask = -torch.ones(n)
    mask[(0 if flip else 1)::2] = 1.0
    return mask


def init_nflows_actnorm(act: ActNorm, h: Tensor) -> None:
    """nflows' own data-dependent init of ``act`` on its input ``h``: (B, C) or (B, C, H, W), then, for a constant
    channel (std <= 1e-6, where nflows would give ``log_scale = inf``), ``log_scale = 0, shift = -mean``."""
    with torch.no_grad():
        was_training = act.training
        act.initialized.fill_(False)
        act.train()
        act(h)  # nflows initialises on the first training-mode forward
        act.train(was_training)
        c = h.shape[1]
        flat = h.transpose(0, 1).reshape(c, -1)
        std = flat.std(dim=1) if flat.shape[1] > 1 else torch.zeros_like(flat[:, 0])
        bad = ~(std > 1e-6) | ~torch.isfinite(act.log_scale) | ~torch.isfinite(act.shift)
        act.log_scale.data[bad] = 0.0
        act.shift.data[bad] = -flat.mean(dim=1)[bad].to(act.shift.dtype)


class _NflowsFlow(InvertibleModel):
    """An nflows ``CompositeTransform`` ``self.transform`` of the steps ``self.steps``.

    ``x``: (B, *shape) -> ``z``: (B, *shape), ``ladj``: (B,).
    """

    backend = "nflows"
    roundtrip_tol: ClassVar[float] = 1e-10
    logdet_tol: ClassVar[float] = 1e-8
    transform: CompositeTransform

    def _build(self, steps: list[Transform]) -> None:
        for step in steps:
            if isinstance(step, ActNorm):
                step.initialized.fill_(True)  # identity until data_init
        self.transform = CompositeTransform(steps)
        self.steps: list[Transform] = steps  # plain list (not registered twice), for data_init's walk

    def _coupling_layout(self) -> tuple[SubnetKind, int, list[Transform], list[Transform]]:
        """(subnet kind, channels the couplings see, steps before, steps after) for vectors or images."""
        if self.input_kind == "image":
            c, h, w = self.shape
            if h % 2 or w % 2:
                raise ValueError(f"H and W must be even for the 2x2 squeeze, got {self.shape}")
            return "conv", 4 * c, [SqueezeTransform()], [InverseTransform(SqueezeTransform())]
        if self.shape[0] < 2:
            raise ValueError(f"coupling flows need D >= 2, got shape {self.shape}")
        return "mlp", self.shape[0], [], []

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``x``: (B, *shape) -> ``z``: (B, *shape), ``ladj``: (B,) from nflows' ``logabsdet``."""
        z, ladj = self.transform(x)
        return z, ladj

    def inverse(self, z: Tensor) -> Tensor:
        """``z``: (B, *shape) -> ``x``: (B, *shape) by nflows' ``inverse`` (its log-det is dropped)."""
        x, _ = self.transform.inverse(z)
        return x

    def data_init(self, x: Tensor) -> None:
        """Walk the steps on ``x``: (B, *shape) (B >= 2) and initialise every ``ActNorm`` on its own input."""
        h = x
        with torch.no_grad():
            for step in self.steps:
                if isinstance(step, ActNorm):
                    init_nflows_actnorm(step, h)
                h, _ = step(h)


class NiceNflows(_NflowsFlow):
    """NICE (Dinh, Krueger & Bengio, "NICE: Non-linear Independent Components Estimation", 2014) in nflows.

    ``depth`` ``AdditiveCouplingTransform`` layers (``y_b = x_b + m(x_a)``, ladj 0) with alternating masks,
    then NICE's diagonal scaling, realised with nflows' ``ActNorm`` on the flattened vector: ``z = h exp(s) + b``
    per element, ladj ``sum(s)`` (the shift ``b`` is an addition to the paper's ``exp(s)``; ``data_init``
    sets ``s, b`` to standardise the scaling's input). Images: squeeze -> couplings with conv subnets over
    channels -> un-squeeze -> per-element scaling.

    Args:
        shape: (D,) with D >= 2, or (C, H, W) with H, W even.
        depth: number of (one-sided) additive coupling layers.
        hidden: hidden width (units / channels) of every coupling subnet.
        hidden_layers: hidden layers per subnet.
    """

    family = "nice"
    width_hparam = "hidden"
    capabilities = Capabilities(density=True, logdet="exact", inverse="analytic", inputs=("vector", "image"))

    def __init__(self, shape: Sequence[int], num_classes: int | None = None, depth: int = 8, hidden: int = 64,
                 hidden_layers: int = 2) -> None:
        super().__init__(shape, num_classes, depth=depth, hidden=hidden, hidden_layers=hidden_layers)
        kind, channels, before, after = self._coupling_layout()
        net = subnet_constructor(kind, hidden, hidden_layers)
        steps: list[Transform] = list(before)
        for i in range(depth):
            steps.append(AdditiveCouplingTransform(alternating_mask(channels, i % 2 == 1), net))
        steps += after
        if self.input_kind == "image":
            steps += [Reshape(self.shape, (self.dim,)), ActNorm(self.dim), Reshape((self.dim,), self.shape)]
        else:
            steps.append(ActNorm(self.dim))
        self._build(steps)


class RealNVPNflows(_NflowsFlow):
    """RealNVP (Dinh, Sohl-Dickstein & Bengio, "Density estimation using Real NVP", ICLR 2017) in nflows.

    ``depth`` ``AffineCouplingTransform`` layers with alternating masks (``y_b = x_b * s + t``,
    ``s = sigmoid(u + 2) + 1e-3``, ``(u, t) = net(x_a)``), then an ``ActNorm`` (data-initialised so ``z`` starts
    standardised; it stands in for the paper's batch normalisation and is the only step that can expand volume,
    see the module docstring). Images: squeeze -> couplings with conv subnets over channels -> ActNorm per
    squeezed channel -> un-squeeze (one scale, no factor-out).

    Args:
        shape: (D,) with D >= 2, or (C, H, W) with H, W even.
        depth: number of (one-sided) affine coupling layers.
        hidden: hidden width of every coupling subnet.
        hidden_layers: hidden layers per subnet.
    """

    family = "realnvp"
    width_hparam = "hidden"
    capabilities = Capabilities(density=True, logdet="exact", inverse="analytic", inputs=("vector", "image"))

    def __init__(self, shape: Sequence[int], num_classes: int | None = None, depth: int = 8, hidden: int = 64,
                 hidden_layers: int = 2) -> None:
        super().__init__(shape, num_classes, depth=depth, hidden=hidden, hidden_layers=hidden_layers)
        kind, channels, before, after = self._coupling_layout()
        net = subnet_constructor(kind, hidden, hidden_layers)
        steps: list[Transform] = list(before)
        for i in range(depth):
            steps.append(AffineCouplingTransform(alternating_mask(channels, i % 2 == 1), net))
        steps += [ActNorm(channels), *after]
        self._build(steps)


class MAFNflows(_NflowsFlow):
    """MAF (Papamakarios, Pavlakou & Murray, "Masked Autoregressive Flow for Density Estimation", NeurIPS 2017).

    ``depth`` nflows ``MaskedAffineAutoregressiveTransform`` layers (a MADE with residual blocks predicts
    ``z_i = x_i * (softplus(u_i) + 1e-3) + t_i`` from ``x_<i``), with ``ReversePermutation`` between them.
    Density evaluation is one pass; the inverse is sequential: D MADE passes per layer (nflows loops over the
    D dimensions), exact and closed-form, hence ``inverse="analytic"``. A final data-initialised ``ActNorm``
    stands in for the paper's batch normalisation between MADEs (nflows' MADE layers start contracting:
    ``softplus(0) + 1e-3 = 0.69`` per layer). Images are flattened to D = C H W vectors (no convolutions) and
    reshaped back.

    Args:
        shape: (D,) or (C, H, W).
        depth: number of MADE layers.
        hidden: hidden units of every MADE.
        hidden_layers: residual blocks per MADE (nflows' ``num_blocks``).
    """

    family = "maf"
    width_hparam = "hidden"
    capabilities = Capabilities(density=True, logdet="exact", inverse="analytic", inputs=("vector", "image"))

    def __init__(self, shape: Sequence[int], num_classes: int | None = None, depth: int = 5, hidden: int = 64,
                 hidden_layers: int = 2) -> None:
        super().__init__(shape, num_classes, depth=depth, hidden=hidden, hidden_layers=hidden_layers)
        d = self.dim
        image = self.input_kind == "image"
        steps: list[Transform] = [Reshape(self.shape, (d,))] if image else []
        for i in range(depth):
            if i > 0:
                steps.append(ReversePermutation(d))
            steps.append(MaskedAffineAutoregressiveTransform(features=d, hidden_features=hidden,
                                                             num_blocks=hidden_layers, use_residual_blocks=True))
        steps.append(ActNorm(d))
        if image:
            steps.append(Reshape((d,), self.shape))
        self._build(steps)


class NSFNflows(_NflowsFlow):
    """Neural Spline Flow, coupling form (Durkan, Bekasov, Murray & Papamakarios, "Neural Spline Flows",
    NeurIPS 2019), in nflows: ``depth`` ``PiecewiseRationalQuadraticCouplingTransform`` layers with alternating
    masks, each a monotone rational-quadratic spline of ``bins`` bins on ``[-tail_bound, tail_bound]`` per
    transformed element, identity (linear tails) outside, its knots predicted from the passive half.

    A data-initialised ``ActNorm`` comes *first* (standardising the input so the data falls inside the splines'
    interval) and another last. The subnet's last layer starts small (``models.subnets``), so every spline starts
    near the identity. Images: squeeze -> couplings with conv subnets -> un-squeeze.

    Args:
        shape: (D,) with D >= 2, or (C, H, W) with H, W even.
        depth: number of (one-sided) spline coupling layers.
        hidden: hidden width of every coupling subnet.
        hidden_layers: hidden layers per subnet.
        bins: spline bins per element.
        tail_bound: half-width of the interval the splines act on (in standardised units).
    """

    family = "nsf"
    width_hparam = "hidden"
    capabilities = Capabilities(density=True, logdet="exact", inverse="analytic", inputs=("vector", "image"))

    def __init__(self, shape: Sequence[int], num_classes: int | None = None, depth: int = 4, hidden: int = 64,
                 hidden_layers: int = 2, bins: int = 16, tail_bound: float = 3.0) -> None:
        super().__init__(shape, num_classes, depth=depth, hidden=hidden, hidden_layers=hidden_layers, bins=bins,
                         tail_bound=tail_bound)
        kind, channels, before, after = self._coupling_layout()
        net = partial(_with_hidden_features, subnet_constructor(kind, hidden, hidden_layers), hidden)
        steps: list[Transform] = [*before, ActNorm(channels)]
        for i in range(depth):
            steps.append(PiecewiseRationalQuadraticCouplingTransform(
                alternating_mask(channels, i % 2 == 1), net, num_bins=bins, tails="linear", tail_bound=tail_bound))
        steps += [ActNorm(channels), *after]
        self._build(steps)


def _with_hidden_features(net: SubnetConstructor, hidden: int, n_in: int, n_out: int) -> torch.nn.Module:
    """``net(n_in, n_out)`` carrying ``hidden_features``: nflows then divides the spline's width and height logits
    by ``sqrt(hidden)`` (its initialisation; without the attribute it warns and skips that)."""
    module = net(n_in, n_out)
    setattr(module, "hidden_features", hidden)  # noqa: B010 (a plain attribute nflows reads; mypy types Module attrs)
    return module
