"""Glow (Kingma & Dhariwal, "Glow: Generative Flow with Invertible 1x1 Convolutions", NeurIPS 2018) in nflows 0.14,
with the paper's *learned* LU-decomposed invertible linear map.

One Glow step (the paper's Fig. 2a, Table 1), data -> latent:

1. ``ActNorm``: ``y = x exp(s) + b`` per channel (per feature for vectors), data-initialised so ``y`` starts with
   zero mean and unit variance per channel (``data_init``); ladj ``H W sum(s)``.
2. the invertible 1x1 convolution ``y = W x`` over channels (a dense ``W`` over features for vectors), with ``W``
   parametrised by its LU decomposition (sec. 3.2): nflows' ``OneByOneConvolution`` (images: a fixed random
   channel permutation, then ``LULinear``) and ``LULinear`` (vectors); ladj ``H W sum(log diag U)``, O(C).
3. affine coupling (sec. 3.3): the first half of the channels ``x_a`` is passed through, the second is
   ``y_b = x_b * scale + shift`` with ``(shift, h) = NN(x_a)``, ``scale = sigmoid(h + 2) + 1e-3`` (nflows'
   ``AffineCouplingTransform``),
   ``NN`` Glow's ``Conv3x3 -> ReLU -> Conv1x1 -> ReLU -> Conv3x3`` for images (``models.subnets.ConvNet``) or an MLP
   for vectors, its last layer started small (``models.subnets``) so the coupling starts near the identity.

Images are multi-scale (sec. 3, Fig. 2b; Dinh et al. 2017): ``levels`` levels of [2x2 squeeze (C, H, W) ->
(4C, H/2, W/2), ``depth`` steps], and after every level but the last half of the channels is factored out
straight to the latent, with nflows' ``MultiscaleCompositeTransform``. That transform returns a flattened (B, D)
latent (the factored-out parts concatenated); the adapter reshapes it to x's (B, C, H, W), a fixed re-indexing of a
standard normal latent, so densities are unchanged. Vectors: ``depth`` steps on the D features, no squeeze.

Differences from the paper (and from nflows' defaults), stated so the comparison is read correctly:

- the coupling's scale is nflows' ``sigmoid(h + 2) + 1e-3`` in (1e-3, 1.001) (the scale of Glow's official code,
  ``sigmoid(h + 2)``, plus nflows' 1e-3 floor; the paper's Table 1 writes ``exp(log s)``): a coupling can only
  contract (ladj <= ~0); ActNorm and ``W`` are the steps that can expand volume;
- the LU parametrisation is nflows': ``W = L U`` with unit-diagonal ``L`` and ``diag(U) = softplus(u) + 1e-3``
  (positive, at least 1e-3), where the paper has ``W = P L (U + diag(sign(s) exp(log|s|)))``. nflows has no sign
  vector, so ``det W > 0`` always; the fixed permutation is nflows' random channel permutation applied *before*
  ``L U`` (images) and none for vectors. ``W`` is initialised, as in the paper, to a random rotation: the L and U
  factors of a pivoted LU of a Haar-random orthogonal ``Q`` (``Q = P L U``), with U's columns' signs flipped so
  ``diag(U) > 0``, so ``W = L U = P^T Q diag(+-1)`` is orthogonal (nflows' own default is ``W = I``). nflows'
  ``LULinear`` also adds a bias (redundant beside ActNorm's shift), which Glow's 1x1 convolution does not have;
- the factored-out halves get the standard normal base, not the paper's learned conditional prior (a zero-init
  convolution predicting their mean and log-std from the rest): nflows has no such split prior, and the contract's
  base is N(0, I) everywhere;
- no additive-coupling option, no class conditioning, no learned prior at the top (nflows provides none of them).

Defects of nflows 0.14 met on this path (measured, not patched):

- ``cache=True`` (nflows' ``using_cache``: in eval mode ``LULinear`` keeps ``W``, ``W^-1`` and ``log|det W|``):
  ``LULinear.weight_inverse`` builds its identity with ``torch.eye(features, features)``, i.e. in the default
  dtype (float32) on the default device (the CPU), so the cached inverse of a float64 model raises ``RuntimeError``
  ("Expected b and A to have the same dtype"; measured), and a CUDA model's meets a CPU identity (read in the
  code, not measured: no GPU was at hand). The cache is invalidated only by ``train(True)``, so parameters changed
  in eval mode leave a stale ``W`` or ``W^-1`` in use (measured: after ``load_state_dict`` of another model in eval
  mode, ``z`` differs from that model's by 1.8 at D = 4; after ``.to(float64)`` the forward raises). The default
  ``cache=False`` never reads the cache; with ``cache=True`` the conformance checks report the float64 failures as
  known defects (``roundtrip``, ``dtype_float64``);
- ``LULinear``'s inverse calls ``torch.triangular_solve``, which torch deprecates ("will be removed in a future
  PyTorch release") and warns about on its first call; with it removed, ``inverse`` and sampling stop working.

``x``: (B, *shape) -> ``z``: (B, *shape), ``ladj``: (B,), as every adapter.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import torch
from nflows.transforms import (
    ActNorm,
    AffineCouplingTransform,
    CompositeTransform,
    LULinear,
    MultiscaleCompositeTransform,
    OneByOneConvolution,
    SqueezeTransform,
    Transform,
)
from torch import Tensor

from models.base import Capabilities
from models.nflows_flows import _NflowsFlow, init_nflows_actnorm
from models.subnets import SubnetConstructor, subnet_constructor


def half_mask(n: int) -> Tensor:
    """Glow's channel split as an nflows coupling mask over ``n`` channels: the first ``n // 2`` passed through
    (``-1``), the rest transformed (``+1``). (n,) float."""
    mask = torch.ones(n)
    mask[: n // 2] = -1.0
    return mask


def init_rotation_(lin: LULinear) -> None:
    """Set ``lin``'s LU factors so that ``W = L U`` is a random rotation (Glow, sec. 3.2: "initialized as a random
    rotation matrix"), drawn from torch's global RNG.

    A Haar-random orthogonal ``Q`` (QR of a Gaussian, signs fixed) is factored with partial pivoting,
    ``Q = P L U`` (``|L_ij| <= 1``); then ``L U diag(d)`` with ``d = sign(diag U)`` is orthogonal and has a positive
    diagonal in its upper factor, as nflows' ``diag(U) = softplus(u) + eps`` requires. A diagonal entry below
    ``2 eps`` is raised to ``2 eps`` (``W`` then only near-orthogonal); the log-det stays exact for the ``W`` used.
    """
    n = lin.features
    q, r = torch.linalg.qr(torch.randn(n, n, dtype=torch.float64))
    q = q * torch.sign(torch.diagonal(r))
    _, lower, upper = torch.linalg.lu(q)
    upper = upper * torch.sign(torch.diagonal(upper))  # flip column signs: diag(U) > 0, L U stays orthogonal
    diag = torch.diagonal(upper).clamp_min(2 * lin.eps)
    li, ui = lin.lower_indices, lin.upper_indices
    with torch.no_grad():
        lin.lower_entries.copy_(lower[li[0], li[1]])
        lin.upper_entries.copy_(upper[ui[0], ui[1]])
        lin.unconstrained_upper_diag.copy_(torch.log(torch.expm1(diag - lin.eps)))  # softplus^-1(diag - eps)


def glow_step(channels: int, net: SubnetConstructor, image: bool, cache: bool) -> list[Transform]:
    """One Glow step over ``channels`` channels (features): [ActNorm, learned 1x1 map, affine coupling]."""
    mixing: LULinear = OneByOneConvolution(channels, using_cache=cache) if image else LULinear(channels,
                                                                                             using_cache=cache)
    init_rotation_(mixing)
    return [ActNorm(channels), mixing, AffineCouplingTransform(half_mask(channels), net)]


class GlowNflows(_NflowsFlow):
    """Glow (Kingma & Dhariwal, NeurIPS 2018) in nflows 0.14: ActNorm, a learned LU-decomposed 1x1 convolution
    (``LULinear`` for vectors) and affine coupling per step; multi-scale for images. See the module docstring for
    the maths and the differences from the paper.

    Size against the other coupling flows' defaults: ``depth = 8`` one-sided couplings = 8 coupling subnets, as
    ``glow-freia``'s 4 two-sided blocks and ``realnvp-nflows``'s 8 layers have (vectors: the same MLP subnets, plus
    8 ActNorms and 8 D x D LU maps). Images get ``depth`` steps per level, 16 subnets at ``levels = 2`` (the second
    level at a quarter of the first's resolution).

    Args:
        shape: (D,) with D >= 2, or (C, H, W) with H and W divisible by ``2 ** levels``.
        depth: flow steps (vectors) or flow steps per level (images; Glow's K).
        hidden: hidden width (units / channels) of every coupling subnet.
        hidden_layers: hidden layers per subnet.
        levels: multi-scale levels for images (Glow's L); ignored for vectors.
        cache: nflows' ``using_cache`` for the LU maps in eval mode (see the module docstring's defects).
    """

    family = "glow"
    width_hparam = "hidden"
    capabilities = Capabilities(density=True, logdet="exact", inverse="analytic", inputs=("vector", "image"))
    roundtrip_tol: ClassVar[float] = 1e-10
    logdet_tol: ClassVar[float] = 1e-8
    #: a ``CompositeTransform`` of the steps (vectors) or a ``MultiscaleCompositeTransform`` of the levels (images)
    transform: Transform

    def __init__(self, shape: Sequence[int], num_classes: int | None = None, depth: int = 8, hidden: int = 64,
                 hidden_layers: int = 2, levels: int = 2, cache: bool = False) -> None:
        super().__init__(shape, num_classes, depth=depth, hidden=hidden, hidden_layers=hidden_layers, levels=levels,
                         cache=cache)
        if depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth}")
        self.cache = cache
        if self.input_kind == "vector":
            if self.shape[0] < 2:
                raise ValueError(f"coupling flows need D >= 2, got shape {self.shape}")
            net = subnet_constructor("mlp", hidden, hidden_layers)
            steps: list[Transform] = []
            for _ in range(depth):
                steps += glow_step(self.shape[0], net, image=False, cache=cache)
            self._build(steps)
            self.level_steps: list[list[Transform]] = [steps]
            return
        c, h, w = self.shape
        if levels < 1 or h % 2**levels or w % 2**levels:
            raise ValueError(f"H and W must be divisible by 2 ** levels = {2 ** max(levels, 0)}, got {self.shape}")
        net = subnet_constructor("conv", hidden, hidden_layers)
        multiscale = MultiscaleCompositeTransform(levels, split_dim=1)
        level_shape: tuple[int, ...] | None = (c, h, w)
        self.level_steps = []
        for _ in range(levels):
            assert level_shape is not None  # None only after the last level
            lc, lh, lw = level_shape
            level: list[Transform] = [SqueezeTransform()]
            for _ in range(depth):
                level += glow_step(4 * lc, net, image=True, cache=cache)
            for step in level:
                if isinstance(step, ActNorm):
                    step.initialized.fill_(True)  # identity until data_init
            level_shape = multiscale.add_transform(CompositeTransform(level), (4 * lc, lh // 2, lw // 2))
            self.level_steps.append(level)
        self.transform = multiscale
        self.steps = [step for level in self.level_steps for step in level]

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``x``: (B, *shape) -> ``z``: (B, *shape) (images: nflows' flattened multi-scale latent reshaped),
        ``ladj``: (B,) from nflows' ``logabsdet``."""
        z, ladj = self.transform(x)
        return z.reshape(x.shape), ladj

    def inverse(self, z: Tensor) -> Tensor:
        """``z``: (B, *shape) -> ``x``: (B, *shape) by nflows' ``inverse`` (images take the flattened latent)."""
        if self.input_kind == "vector":
            x, _ = self.transform.inverse(z)
            return x
        x, _ = self.transform.inverse(z.reshape(z.shape[0], -1))
        return x

    def data_init(self, x: Tensor) -> None:
        """Walk ``x``: (B, *shape) (B >= 2) through the levels as nflows' multi-scale cascade does (after every level
        but the last, the second channel half goes on) and initialise every ``ActNorm`` on its own input."""
        h = x
        with torch.no_grad():
            for i, level in enumerate(self.level_steps):
                for step in level:
                    if isinstance(step, ActNorm):
                        init_nflows_actnorm(step, h)
                    h, _ = step(h)
                if i < len(self.level_steps) - 1:
                    h = torch.chunk(h, 2, dim=1)[1]

    def mixing_maps(self) -> list[LULinear]:
        """The learned LU maps, one per step in flow order (``OneByOneConvolution`` for images)."""
        return [s for s in self.steps if isinstance(s, LULinear)]

    def known_defects(self) -> dict[str, str]:
        if not self.cache:
            return {}
        why = ("nflows 0.14 LULinear's cached inverse (cache=True, eval mode) builds its identity with torch.eye "
               "in float32 on the CPU: a float64 model's inverse raises RuntimeError (dtype mismatch)")
        return {"roundtrip": why, "dtype_float64": why}
