"""The native RevNet: a reversible residual classifier that is also a flow (volume-preserving trunk, NICE's scaling).

Gomez et al., "The Reversible Residual Network: Backpropagation Without Storing Activations", NeurIPS 2017.
The trunk is a :class:`~models.reversible.ReversibleSequence` of additive coupling blocks
(``y1 = x1 + F(x2)``, ``y2 = x2 + G(y1)``) in stages; image stages start with an invertible 2x2 squeeze
(Dinh et al., RealNVP 2017) where the paper uses a non-invertible strided/pooling downsampling, so the
whole trunk stays invertible. A linear head on the trunk's output gives the logits. As a density model the trunk
is followed by NICE's diagonal scaling layer (Dinh, Krueger & Bengio, "NICE: Non-linear Independent Components
Estimation", ICLR 2015 workshop, sec. 3.3), without which it is volume-preserving.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor, nn

from models.base import Capabilities, InvertibleModel
from models.reversible import (
    AdditiveCouplingBlock,
    ReversibleLayer,
    ReversibleSequence,
    Squeeze,
    squeeze2d,
    unsqueeze2d,
)

HeadKind = Literal["linear", "pool"]


class MLPResidual(nn.Sequential):
    """Vector residual function ``Linear -> ReLU -> Linear``: (B, n_in) -> (B, n_out)."""

    def __init__(self, n_in: int, n_out: int, hidden: int) -> None:
        super().__init__(nn.Linear(n_in, hidden), nn.ReLU(), nn.Linear(hidden, n_out))


class ConvResidual(nn.Sequential):
    """Image residual function ``Conv3x3 -> ReLU -> Conv3x3``: (B, c_in, H, W) -> (B, c_out, H, W).

    The paper's functions are pre-activation ``BN-ReLU-Conv-BN-ReLU-Conv``; batch normalisation is left
    out because recomputation in backward would see (and, in train mode, update) batch statistics twice.
    """

    def __init__(self, c_in: int, c_out: int, hidden: int) -> None:
        super().__init__(nn.Conv2d(c_in, hidden, 3, padding=1), nn.ReLU(), nn.Conv2d(hidden, c_out, 3, padding=1))


def _blocks_per_stage(depth: int, stages: int) -> list[int]:
    """``depth`` blocks spread over ``stages`` as evenly as possible, empty stages dropped."""
    counts = [depth // stages + (1 if i < depth % stages else 0) for i in range(stages)]
    return [c for c in counts if c > 0]


class RevNetNative(InvertibleModel):
    """A RevNet classifier whose invertible trunk is also a NICE-like flow.

    Data to latent: ``z = exp(s) * T(x)`` (element-wise) with ``T`` the trunk of ``depth`` additive coupling
    blocks (and, for images, one invertible squeeze at the start of each stage; ``T(x)`` is un-squeezed back to
    x's shape, a permutation) and ``s`` (*shape) NICE's learned diagonal scaling (Dinh, Krueger & Bengio, "NICE",
    2015, sec. 3.3: the top layer ``z_i = S_ii h_i``, log-det ``sum_i log S_ii``). The trunk is
    volume-preserving, so ``ladj = sum(s)`` exactly, the same for every example, and
    ``log p(x) = log N(exp(s) T(x); 0, I) + sum(s)``. ``data_init`` sets ``s = -log std`` of ``T(x)`` per element
    on the first batch (as the FrEIA NICE adapter does; NICE fixes no initialisation), so the latent starts
    standardised.

    With ``scaling=False`` there is no ``s``: ``ladj = 0`` exactly and the model cannot shrink or stretch volume,
    so its NLL can never go below ``(D/2) ln(2 pi)`` (:meth:`nll_floor`; 5.413 bits/dim on 17-level digits, 9.326
    on 8-bit images, worse than uniform noise on the data's cube): the figure to show beside such a model's.

    Classifier: ``logits(x) = W vec(T(x)) + b`` (``head="linear"``) or ``W mean_{HW}(T(x)) + b``
    (``head="pool"``, images only, the paper's global-average-pooling head), on the trunk's internal
    (squeezed) layout.

    Shapes: vectors (B, D) with D >= 2 (odd D splits as D // 2 + (D - D // 2)); images (B, C, H, W), squeezed
    at the start of each stage while H and W are even, needing at least 2 channels once squeezed.

    Args:
        shape: (D,) or (C, H, W).
        num_classes: classes of the head (default 10).
        depth: number of reversible blocks in the trunk (the memory-vs-depth sweep varies this).
        hidden: hidden width (units of the MLP, channels of the conv) of every residual function.
        stages: image stages (each starts with a squeeze); ignored for vectors.
        head: ``"linear"`` (flatten + linear) or ``"pool"`` (global average pooling + linear, images).
        memory_saving: start with memory-saving backprop on (see :meth:`set_memory_saving`).
        scaling: NICE's learned diagonal scaling of the latent (the density objective's volume change; the
            logits read the trunk's output and do not use it). Off: a volume-preserving flow.
    """

    family = "revnet"
    width_hparam = "hidden"
    backend = "native"
    # not volume-preserving as a class: only with scaling=False (nll_floor answers per instance)
    capabilities = Capabilities(density=True, logdet="exact", inverse="analytic", classifier=True,
                                memory_saving=True, inputs=("vector", "image"), volume_preserving=False)

    def __init__(self, shape: Sequence[int], num_classes: int | None = None, depth: int = 4, hidden: int = 64,
                 stages: int = 2, head: HeadKind = "linear", memory_saving: bool = True, scaling: bool = True
                 ) -> None:
        super().__init__(shape, num_classes, depth=depth, hidden=hidden, stages=stages, head=head,
                         memory_saving=memory_saving, scaling=scaling)
        if depth < 1 or hidden < 1 or stages < 1:
            raise ValueError(f"depth, hidden and stages must be >= 1, got {depth}, {hidden}, {stages}")
        if head not in ("linear", "pool"):
            raise ValueError(f"head must be 'linear' or 'pool', got {head!r}")
        layers: list[ReversibleLayer] = []
        self._squeezes = 0
        if self.input_kind == "vector":
            if head == "pool":
                raise ValueError("head='pool' needs image inputs")
            n = self.shape[0]
            layers = [AdditiveCouplingBlock(n, lambda a, b: MLPResidual(a, b, hidden)) for _ in range(depth)]
            feature_shape: tuple[int, ...] = (n,)
        else:
            c, h, w = self.shape
            for count in _blocks_per_stage(depth, stages):
                if h % 2 == 0 and w % 2 == 0:
                    layers.append(Squeeze())
                    self._squeezes += 1
                    c, h, w = 4 * c, h // 2, w // 2
                if c < 2:
                    raise ValueError(f"image shape {self.shape} cannot be split into two channel groups: "
                                     "it needs C >= 2 or even H and W for a squeeze")
                layers.extend(AdditiveCouplingBlock(c, lambda a, b: ConvResidual(a, b, hidden)) for _ in range(count))
            feature_shape = (c, h, w)
        self.feature_shape = feature_shape
        self.trunk = ReversibleSequence(layers, memory_saving=memory_saving)
        n_classes = self.num_classes or 10
        n_in = feature_shape[0] if head == "pool" else math.prod(feature_shape)
        self.head = nn.Linear(n_in, n_classes)
        #: NICE's log-scales ``s`` (*shape), in the input layout; None without the scaling
        self.log_scale = nn.Parameter(torch.zeros(self.shape)) if scaling else None

    # ------------------------------------------------------------------------------------ layouts
    def _to_input_layout(self, h: Tensor) -> Tensor:
        """Trunk layout (B, *feature_shape) -> input layout (B, *shape) by undoing the squeezes."""
        for _ in range(self._squeezes):
            h = unsqueeze2d(h)
        return h

    def _to_feature_layout(self, z: Tensor) -> Tensor:
        """Input layout (B, *shape) -> trunk layout (B, *feature_shape)."""
        for _ in range(self._squeezes):
            z = squeeze2d(z)
        return z

    # ------------------------------------------------------------------------------------ contract
    def features(self, x: Tensor) -> Tensor:
        """The trunk's output in its own layout. ``x``: (B, *shape) -> (B, *feature_shape)."""
        return self.trunk(x)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``x``: (B, *shape) -> ``z = exp(s) * T(x)``: (B, *shape), ``ladj = sum(s)``: (B,) (zeros without the
        scaling: the trunk is volume-preserving)."""
        h = self._to_input_layout(self.trunk(x))
        if self.log_scale is None:
            return h, torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
        return h * self.log_scale.exp(), self.log_scale.sum().expand(x.shape[0])

    def inverse(self, z: Tensor) -> Tensor:
        """``z``: (B, *shape) -> ``x``: (B, *shape), analytic (the scaling undone, then block by block in
        reverse)."""
        if self.log_scale is not None:
            z = z * torch.exp(-self.log_scale)
        return self.trunk.inverse(self._to_feature_layout(z))

    def data_init(self, x: Tensor) -> None:
        """Set the log-scales to ``-log std`` of ``T(x)`` per element over the batch ``x``: (B, *shape), B >= 2
        (elements with std <= 1e-6 keep 0); nothing without the scaling."""
        if self.log_scale is None or x.shape[0] < 2:
            return
        with torch.no_grad():
            std = self._to_input_layout(self.trunk(x)).std(dim=0)
            self.log_scale.copy_(torch.where(std > 1e-6, -torch.log(std.clamp_min(1e-6)), torch.zeros_like(std)))

    def nll_floor(self) -> float | None:
        """``(D/2) ln(2 pi)`` nats without the scaling (volume-preserving, see the base class); None with it."""
        return 0.5 * self.dim * math.log(2 * math.pi) if self.log_scale is None else None

    def logits(self, x: Tensor) -> Tensor:
        """``x``: (B, *shape) -> (B, num_classes)."""
        h = self.trunk(x)
        if self._hparams["head"] == "pool":
            return self.head(h.mean(dim=(2, 3)))
        return self.head(h.reshape(h.shape[0], -1))

    def set_memory_saving(self, enabled: bool) -> None:
        """On: in training mode, backward rebuilds activations from the trunk's output (memory O(1) in depth,
        one extra evaluation of every F and G; first-order gradients only). Off, or in ``eval()`` mode:
        ordinary autograd, storing every block's activations (double backward and JVPs work)."""
        self.trunk.memory_saving = bool(enabled)
        self._hparams["memory_saving"] = bool(enabled)

    @property
    def memory_saving(self) -> bool:
        return self.trunk.memory_saving
