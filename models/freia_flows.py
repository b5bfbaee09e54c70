"""Adapters over FrEIA 0.2 coupling flows: NICE, RealNVP and Glow, each a ``FrEIA.framework.SequenceINN``.

Quirks of FrEIA normalised here (measured, not patched, elsewhere):

- log-dets come back as python ``0``/``0.``, numpy scalars, (1,)-tensors or (B,)-tensors depending on the
  block (``NICECouplingBlock``, ``PermuteRandom`` and ``IRevNetDownsampling`` return ``0.``,
  ``LearnedElementwiseScaling`` a (1,)-tensor): :func:`as_ladj` turns any of them into a (B,) tensor on x's
  device and dtype;
- reverse mode returns ``-J``; the adapters' ``inverse`` drops it (the contract's log-det is data -> latent);
- ``PermuteRandom`` draws its permutation from numpy's *global* RNG (and reseeds it when given ``seed``): blocks
  are built inside :func:`numpy_seeded_from_torch`, so construction follows ``torch.manual_seed`` and leaves the
  caller's numpy RNG untouched;
- ``ActNorm`` initialises itself on whatever batch it sees first (also in reverse mode, also a batch of 1):
  the adapters switch that off at construction (identity start) and initialise explicitly in ``data_init``.

Coupling blocks split along the channel axis, so images are first squeezed with ``IRevNetDownsampling``
((C, H, W) -> (4C, H/2, W/2), Jacobsen et al., i-RevNet 2018) and un-squeezed with ``IRevNetUpsampling`` at
the end, so ``z`` comes back in x's shape. H and W must be even.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any, ClassVar, Literal

import FrEIA.framework as Ff
import FrEIA.modules as Fm
import numpy as np
import torch
from torch import Tensor, nn

from models.base import Capabilities, InvertibleModel
from models.subnets import SubnetKind, subnet_constructor

Mixing = Literal["permute", "rotation"]


# ------------------------------------------------------------------------------------------------ helpers
def as_ladj(jac: object, x: Tensor) -> Tensor:
    """FrEIA's log-det as the contract's ``ladj``: a (B,) tensor on ``x``'s device and dtype.

    ``jac``: python number, numpy scalar, 0-d / (1,) tensor (broadcast over the batch) or (B,) tensor;
    ``x``: (B, ...). Gradients flow through tensor inputs unchanged.
    """
    batch = x.shape[0]
    if not isinstance(jac, Tensor):
        if jac is None:
            raise TypeError("FrEIA returned no log-det (jac=None)")
        return torch.full((batch,), float(jac), dtype=x.dtype, device=x.device)  # type: ignore[arg-type]
    jac = jac.to(device=x.device, dtype=x.dtype)
    if jac.numel() == 1 and tuple(jac.shape) != (batch,):
        return jac.reshape(()) + x.new_zeros(batch)
    if tuple(jac.shape) != (batch,):
        raise ValueError(f"FrEIA log-det of shape {tuple(jac.shape)} for a batch of {batch}")
    return jac


@contextlib.contextmanager
def numpy_seeded_from_torch() -> Iterator[None]:
    """Seed numpy's global RNG from torch's for the duration (FrEIA draws permutations from it), then
    restore the caller's numpy state."""
    state = np.random.get_state()
    np.random.seed(int(torch.randint(0, 2**31 - 1, ())))
    try:
        yield
    finally:
        np.random.set_state(state)


def fix_degenerate_scale_(log_scale: Tensor, shift: Tensor, h: Tensor) -> int:
    """After an ActNorm data init ``y = x exp(s) + b``: where a channel of ``h`` is constant (std <= 1e-6,
    FrEIA would give ``s = inf`` and ``b = nan``) set ``s = 0, b = -mean``, as Glow's ``1 / (std + eps)``
    avoids. ``log_scale``, ``shift``: C entries in any shape; ``h``: (B, C, ...). Returns the count fixed."""
    c = h.shape[1]
    flat = h.detach().transpose(0, 1).reshape(c, -1)
    std = flat.std(dim=1) if flat.shape[1] > 1 else torch.zeros_like(flat[:, 0])
    s, b = log_scale.data.view(-1), shift.data.view(-1)
    bad = ~(std > 1e-6) | ~torch.isfinite(s) | ~torch.isfinite(b)
    s[bad] = 0.0
    b[bad] = -flat.mean(dim=1)[bad].to(b.dtype)
    return int(bad.sum())


def init_actnorms(inn: Ff.SequenceINN, x: Tensor,
                  per_block: Callable[[nn.Module, Tensor], None] | None = None) -> None:
    """Walk ``x``: (B, *shape) through ``inn``'s blocks without gradients, initialising every ``ActNorm`` on its own
    input (then calling ``per_block(block, h)`` on each block's input, if given)."""
    h = x
    with torch.no_grad():
        for m in inn.module_list:
            if isinstance(m, Fm.ActNorm):
                init_freia_actnorm(m, h)
            if per_block is not None:
                per_block(m, h)
            h = m([h], jac=False)[0][0]


def init_freia_actnorm(act: Fm.ActNorm, h: Tensor) -> None:
    """FrEIA's own data-dependent init of ``act`` on its input ``h``: (B, C, ...), then the degenerate fix."""
    with torch.no_grad():
        act.init_on_next_batch = True
        act((h,))
        act.init_on_next_batch = False
        fix_degenerate_scale_(act.scale, act.bias, h)


def _check_image(shape: tuple[int, ...]) -> None:
    if len(shape) != 3:
        raise ValueError(f"image shape must be (C, H, W), got {shape}")
    if shape[1] % 2 or shape[2] % 2:
        raise ValueError(f"H and W must be even for the 2x2 squeeze, got {shape}")


def _random_orthogonal(n: int) -> Tensor:
    """A random orthogonal (n, n) matrix from torch's global RNG (QR of a Gaussian, signs fixed)."""
    q, r = torch.linalg.qr(torch.randn(n, n, dtype=torch.float64))
    return (q * torch.sign(torch.diagonal(r))).to(torch.float32)


# ------------------------------------------------------------------------------------------------ base
class _FreiaFlow(InvertibleModel):
    """A FrEIA ``SequenceINN`` ``self.inn`` on x's own shape. ``x``: (B, *shape) -> ``z``: (B, *shape)."""

    backend = "freia"
    roundtrip_tol: ClassVar[float] = 1e-10
    logdet_tol: ClassVar[float] = 1e-8
    inn: Ff.SequenceINN

    def _build(self, blocks: Sequence[tuple[type[nn.Module], dict[str, Any]]]) -> None:
        with numpy_seeded_from_torch():
            self.inn = Ff.SequenceINN(*self.shape)
            for cls, kwargs in blocks:
                self.inn.append(cls, **kwargs)
        for m in self.inn.modules():
            if isinstance(m, Fm.ActNorm):
                m.init_on_next_batch = False  # identity until data_init

    def _image_kind(self) -> tuple[SubnetKind, bool]:
        if self.input_kind == "image":
            _check_image(self.shape)
            return "conv", True
        if self.shape[0] < 2:
            raise ValueError(f"coupling flows need D >= 2, got shape {self.shape}")
        return "mlp", False

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``x``: (B, *shape) -> ``z``: (B, *shape), ``ladj``: (B,) = FrEIA's forward ``J``."""
        z, jac = self.inn(x, jac=True)
        return z, as_ladj(jac, x)

    def inverse(self, z: Tensor) -> Tensor:
        """``z``: (B, *shape) -> ``x``: (B, *shape), FrEIA's reverse mode (its ``-J`` is dropped)."""
        x, _ = self.inn(z, rev=True, jac=True)
        return x

    def data_init(self, x: Tensor) -> None:
        """Walk the blocks on ``x``: (B, *shape) (B >= 2) and initialise every ``ActNorm`` on its own input."""
        init_actnorms(self.inn, x, self._init_block)

    def _init_block(self, module: nn.Module, h: Tensor) -> None:
        """Hook for subclasses: data-dependent init of other blocks (``h`` is the block's input)."""


# ------------------------------------------------------------------------------------------------ models
class NiceFreia(_FreiaFlow):
    """NICE (Dinh, Krueger & Bengio, "NICE: Non-linear Independent Components Estimation", 2014) in FrEIA.

    ``depth`` x [``NICECouplingBlock`` (two-sided additive coupling: both halves updated, ladj 0),
    ``PermuteRandom``], then NICE's diagonal scaling ``z = h * exp(s)`` per element
    (``LearnedElementwiseScaling``, ladj ``sum(s)``). ``data_init`` sets ``s = -log std`` of the scaling's
    input per element (the paper does not fix an init; without it the scales start at 1 and learn slowly).
    Images: squeeze -> blocks with conv subnets -> un-squeeze -> element-wise scaling.

    Args:
        shape: (D,) with D >= 2, or (C, H, W) with H, W even.
        depth: number of two-sided coupling blocks (each = two NICE coupling layers).
        hidden: hidden width (units / channels) of every subnet.
        hidden_layers: hidden layers per subnet.
    """

    family = "nice"
    width_hparam = "hidden"
    capabilities = Capabilities(density=True, logdet="exact", inverse="analytic", inputs=("vector", "image"))

    def __init__(self, shape: Sequence[int], num_classes: int | None = None, depth: int = 4, hidden: int = 64,
                 hidden_layers: int = 2) -> None:
        super().__init__(shape, num_classes, depth=depth, hidden=hidden, hidden_layers=hidden_layers)
        kind, image = self._image_kind()
        net = subnet_constructor(kind, hidden, hidden_layers)
        blocks: list[tuple[type[nn.Module], dict[str, Any]]] = [(Fm.IRevNetDownsampling, {})] if image else []
        for _ in range(depth):
            blocks += [(Fm.NICECouplingBlock, {"subnet_constructor": net}), (Fm.PermuteRandom, {})]
        if image:
            blocks.append((Fm.IRevNetUpsampling, {}))
        blocks.append((Fm.LearnedElementwiseScaling, {}))
        self._build(blocks)

    def _init_block(self, module: nn.Module, h: Tensor) -> None:
        if isinstance(module, Fm.LearnedElementwiseScaling) and h.shape[0] > 1:
            std = h.std(dim=0, keepdim=True)
            s = torch.where(std > 1e-6, -torch.log(std.clamp_min(1e-6)), torch.zeros_like(std))
            module.s.data.copy_(s)


class RealNVPFreia(_FreiaFlow):
    """RealNVP (Dinh, Sohl-Dickstein & Bengio, "Density estimation using Real NVP", ICLR 2017) in FrEIA.

    ``depth`` x [``RNVPCouplingBlock`` (two-sided affine coupling, ``s`` soft-clamped to
    ``clamp * 0.636 * atan(.)``), ``PermuteRandom``]. Images: squeeze -> blocks with conv subnets ->
    un-squeeze (one scale; no multi-scale factor-out, no batch norm).

    Args:
        shape: (D,) with D >= 2, or (C, H, W) with H, W even.
        depth: number of two-sided coupling blocks.
        hidden: hidden width of every subnet.
        hidden_layers: hidden layers per subnet.
        clamp: FrEIA's soft clamp of the log-scale.
    """

    family = "realnvp"
    width_hparam = "hidden"
    capabilities = Capabilities(density=True, logdet="exact", inverse="analytic", inputs=("vector", "image"))

    def __init__(self, shape: Sequence[int], num_classes: int | None = None, depth: int = 4, hidden: int = 64,
                 hidden_layers: int = 2, clamp: float = 2.0) -> None:
        super().__init__(shape, num_classes, depth=depth, hidden=hidden, hidden_layers=hidden_layers, clamp=clamp)
        kind, image = self._image_kind()
        net = subnet_constructor(kind, hidden, hidden_layers)
        blocks: list[tuple[type[nn.Module], dict[str, Any]]] = [(Fm.IRevNetDownsampling, {})] if image else []
        for _ in range(depth):
            blocks += [(Fm.RNVPCouplingBlock, {"subnet_constructor": net, "clamp": clamp}), (Fm.PermuteRandom, {})]
        if image:
            blocks.append((Fm.IRevNetUpsampling, {}))
        self._build(blocks)


class GlowFreia(_FreiaFlow):
    """Glow (Kingma & Dhariwal, "Glow: Generative Flow with Invertible 1x1 Convolutions", NeurIPS 2018) in FrEIA.

    ``depth`` steps of [``ActNorm`` (data-dependent init in ``data_init``), channel mixing,
    ``GLOWCouplingBlock`` (two-sided affine coupling, one subnet predicts ``s`` and ``t``)].
    FrEIA 0.2 has no *learned* invertible 1x1 convolution (and no 1x1 mixing for vectors), so the mixing is:

    - ``mixing="permute"`` (default): ``PermuteRandom``, a fixed random channel permutation (Glow's "shuffle"
      baseline of the paper's mixing comparison); its inverse is exact, so the float64 round trip is ~1e-15;
    - ``mixing="rotation"``: a *fixed* random rotation, ``Fixed1x1Conv`` (images) or ``FixedLinearTransform``
      (vectors). FrEIA stores the matrix and its inverse in float32 at construction, so the round trip stays at
      ~1e-7 even in float64 (a library quirk; ``roundtrip_tol`` assumes ``"permute"``).

    Images: squeeze -> steps with conv subnets -> un-squeeze (one scale, no multi-scale split).

    Args:
        shape: (D,) with D >= 2, or (C, H, W) with H, W even.
        depth: number of flow steps.
        hidden: hidden width of every subnet.
        hidden_layers: hidden layers per subnet.
        clamp: FrEIA's soft clamp of the log-scale.
        mixing: ``"permute"`` or ``"rotation"`` (see above).
    """

    family = "glow"
    width_hparam = "hidden"
    capabilities = Capabilities(density=True, logdet="exact", inverse="analytic", inputs=("vector", "image"))

    def __init__(self, shape: Sequence[int], num_classes: int | None = None, depth: int = 4, hidden: int = 64,
                 hidden_layers: int = 2, clamp: float = 2.0, mixing: Mixing = "permute") -> None:
        super().__init__(shape, num_classes, depth=depth, hidden=hidden, hidden_layers=hidden_layers, clamp=clamp,
                         mixing=mixing)
        if mixing not in ("permute", "rotation"):
            raise ValueError(f"mixing must be 'permute' or 'rotation', got {mixing!r}")
        kind, image = self._image_kind()
        net = subnet_constructor(kind, hidden, hidden_layers)
        channels = 4 * self.shape[0] if image else self.shape[0]
        blocks: list[tuple[type[nn.Module], dict[str, Any]]] = [(Fm.IRevNetDownsampling, {})] if image else []
        for _ in range(depth):
            blocks.append((Fm.ActNorm, {}))
            if mixing == "permute":
                blocks.append((Fm.PermuteRandom, {}))
            else:
                rot = _random_orthogonal(channels)
                blocks.append((Fm.Fixed1x1Conv if image else Fm.FixedLinearTransform, {"M": rot}))
            blocks.append((Fm.GLOWCouplingBlock, {"subnet_constructor": net, "clamp": clamp}))
        if image:
            blocks.append((Fm.IRevNetUpsampling, {}))
        self._build(blocks)

