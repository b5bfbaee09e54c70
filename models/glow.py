"""The native Glow: ActNorm, a learned LU-decomposed invertible 1x1 map and coupling, multi-scale for images,
with a classifier head and memory-saving backprop.

Kingma & Dhariwal, "Glow: Generative Flow with Invertible 1x1 Convolutions", NeurIPS 2018 (Fig. 2, Table 1), in
the configuration of Behrmann et al., "Understanding and Mitigating Exploding Inverses in Invertible Neural
Networks", AISTATS 2021 (their code: asteroidhouse/INN-exploding-inverses), who compare *affine* coupling with
the scale ``sigmoid(h + 2) + scale_eps`` (``scale_eps = 0.01`` there: each layer's inverse may amplify up to
``1 / 0.01 = 100`` times) against *additive* coupling of the same size. One step, data -> latent, on ``n``
channels (images, (B, n, H, W)) or features (vectors, (B, n)):

1. ActNorm (:class:`models.actnorm.ActNorm`): ``y = (x + b) exp(s)`` per channel, data-initialised
   (:meth:`GlowNative.data_init`); ladj ``H W sum(s)``.
2. Invertible 1x1 map (:class:`InvertibleLU`, the paper's sec. 3.2): ``y = W x`` over channels with
   ``W = P L (U + diag(sign * exp(log_s)))``, ``P`` a fixed permutation, ``L`` unit lower-triangular, ``U``
   strictly upper-triangular, initialised to a random rotation; ladj ``H W sum(log_s)``.
3. Coupling (:class:`Coupling`): ``x = [x_a, x_b]`` (``n // 2`` and ``n - n // 2`` channels); ``x_a`` passes;
   affine: ``(shift, h) = NN(x_a)``, ``y_b = (x_b + shift) * scale``, ``scale = sigmoid(h + 2) + scale_eps``, ladj
   ``sum log scale``; additive: ``y_b = x_b + NN(x_a)``, ladj 0. ``NN`` is Glow's ``Conv3x3 -> ReLU -> Conv1x1 ->
   ReLU -> Conv3x3`` (:class:`models.subnets.ConvNet`) or an MLP for vectors, its last layer started small.

Images (C, H, W) are multi-scale (Glow sec. 3, Fig. 2b; Dinh et al., RealNVP, ICLR 2017): each of ``levels``
levels is a 2x2 squeeze ((c, h, w) -> (4c, h/2, w/2)) and ``depth`` steps, and after every level but the last the
first half of the channels goes straight to the latent (``levels`` is capped at the number of squeezes H and W
allow). The whole flow runs on the flattened (B, D) tensor: each layer acts on its trailing part (the still-active
channels, in their (c, h, w) layout), so a factored-out part is simply left alone; the latent is that tensor
reshaped to (B, C, H, W), a fixed re-indexing of a standard normal latent. Vectors (D,): ``depth`` steps, no
squeeze. The factored-out parts get the standard normal base (the contract's), not Glow's learned split prior.

Classifier (the memory-saving experiment of Behrmann et al., sec. 6): ``logits(x) = A vec(z) + c``, a linear head
on the whole flattened latent.

Memory-saving backprop (Gomez et al., "The Reversible Residual Network", NeurIPS 2017; ``memory_saving=True``, in
training mode): the forward keeps only its output; backward rebuilds every layer's input from its output with the
layer's *inverse* and backpropagates through a local recomputation (:class:`_MemorySavingFlow`). The gradients are
then exactly as good as the numerical inverse: where the flow is numerically non-invertible they are wrong, which
is what ``memgrad`` measures. ``eval()`` mode or ``memory_saving=False``: ordinary autograd (double backward
works).

``x``: (B, *shape) -> ``z``: (B, *shape), ``ladj``: (B,), as every model.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal

import torch
from torch import Tensor, nn

from models.actnorm import ActNorm
from models.base import Capabilities, InvertibleModel
from models.squeeze import squeeze, unsqueeze
from models.subnets import MLP, ConvNet

CouplingKind = Literal["affine", "additive"]
#: the offset in the authors' affine scale ``sigmoid(h + SCALE_OFFSET) + scale_eps`` (Glow's official code too)
SCALE_OFFSET = 2.0


class FlowLayer(nn.Module):
    """An invertible layer with its log-det: ``forward``: (B, *s_in) -> ((B, *s_out), ladj (B,)); ``inverse``."""

    def inverse(self, y: Tensor) -> Tensor:
        raise NotImplementedError


class ActNormLayer(FlowLayer):
    """:class:`models.actnorm.ActNorm` as a flow layer: (B, n) or (B, n, H, W) -> same, ladj ``H W sum(s)``."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.norm = ActNorm(n)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        y, ladj = self.norm(x)
        return y, ladj.to(x.dtype)

    def inverse(self, y: Tensor) -> Tensor:
        return self.norm.inverse(y)


class InvertibleLU(FlowLayer):
    """Glow's invertible 1x1 convolution in its LU form (Kingma & Dhariwal 2018, sec. 3.2), over dim 1.

    ``W = P L (U + diag(sign * exp(log_s)))``: ``P`` (n, n) a fixed permutation, ``L`` unit lower-triangular,
    ``U`` strictly upper-triangular, ``sign`` fixed; ``log|det W| = sum(log_s)``. Initialised, as the paper, to a
    random rotation: the pivoted LU factors of a random orthogonal matrix (QR of a Gaussian one).
    ``x``: (B, n) or (B, n, H, W) -> ``y = W x`` per position, ladj ``H W sum(log_s)``: (B,).
    """

    perm: Tensor
    sign: Tensor

    def __init__(self, n: int) -> None:
        super().__init__()
        q = torch.linalg.qr(torch.randn(n, n, dtype=torch.float64))[0]
        p, low, up = torch.linalg.lu(q)
        s = torch.diagonal(up)
        self.register_buffer("perm", p.float())
        self.register_buffer("sign", torch.sign(s).float())
        self.lower = nn.Parameter(torch.tril(low, -1).float())
        self.upper = nn.Parameter(torch.triu(up, 1).float())
        self.log_s = nn.Parameter(torch.log(s.abs()).float())

    def weight(self) -> Tensor:
        """``W``: (n, n)."""
        eye = torch.eye(self.log_s.shape[0], dtype=self.log_s.dtype, device=self.log_s.device)
        low = torch.tril(self.lower, -1) + eye
        up = torch.triu(self.upper, 1) + torch.diag(self.sign * torch.exp(self.log_s))
        return self.perm @ low @ up

    @staticmethod
    def _mix(w: Tensor, x: Tensor) -> Tensor:
        return x @ w.T if x.dim() == 2 else torch.einsum("oc,bchw->bohw", w, x)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        spatial = x[0, 0].numel()
        return self._mix(self.weight(), x), (spatial * self.log_s.sum()).expand(x.shape[0])

    def inverse(self, y: Tensor) -> Tensor:
        return self._mix(torch.linalg.inv(self.weight()), y)


class Coupling(FlowLayer):
    """Affine or additive coupling over dim 1 (the authors' form, see the module docstring).

    ``x``: (B, n) or (B, n, H, W) -> ``y`` the same shape, ladj (B,). ``n >= 2``.
    """

    def __init__(self, n: int, kind: CouplingKind, scale_eps: float, hidden: int, image: bool) -> None:
        super().__init__()
        if n < 2:
            raise ValueError(f"a coupling needs at least 2 channels/features to split, got {n}")
        self.kind, self.scale_eps = kind, scale_eps
        self.na, self.nb = n // 2, n - n // 2
        n_out = 2 * self.nb if kind == "affine" else self.nb
        self.net: nn.Module = ConvNet(self.na, n_out, hidden) if image else MLP(self.na, n_out, hidden)

    def _shift_scale(self, xa: Tensor) -> tuple[Tensor, Tensor | None]:
        h = self.net(xa)
        if self.kind == "additive":
            return h, None
        shift, raw = h[:, :self.nb], h[:, self.nb:]
        return shift, torch.sigmoid(raw + SCALE_OFFSET) + self.scale_eps

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        xa, xb = x[:, :self.na], x[:, self.na:]
        shift, scale = self._shift_scale(xa)
        if scale is None:
            return torch.cat([xa, xb + shift], dim=1), torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
        return torch.cat([xa, (xb + shift) * scale], dim=1), torch.log(scale).reshape(x.shape[0], -1).sum(1)

    def inverse(self, y: Tensor) -> Tensor:
        ya, yb = y[:, :self.na], y[:, self.na:]
        shift, scale = self._shift_scale(ya)
        return torch.cat([ya, yb - shift if scale is None else yb / scale - shift], dim=1)


class Squeeze(FlowLayer):
    """The 2x2 squeeze, (B, c, h, w) -> (B, 4c, h/2, w/2), a permutation (ladj 0)."""

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return squeeze(x), torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)

    def inverse(self, y: Tensor) -> Tensor:
        return unsqueeze(y)


class OnTail(FlowLayer):
    """``layer`` applied to the trailing part of a flat (B, D) tensor: entries ``[:offset]`` pass unchanged (the
    factored-out parts), entries ``[offset:]`` are reshaped to ``in_shape``, mapped, and flattened back from the
    layer's ``out_shape`` (same size). (B, D) -> ((B, D), ladj (B,))."""

    def __init__(self, layer: FlowLayer, offset: int, in_shape: tuple[int, ...], out_shape: tuple[int, ...]) -> None:
        super().__init__()
        self.layer, self.offset, self.in_shape, self.out_shape = layer, offset, in_shape, out_shape

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        y, ladj = self.layer(x[:, self.offset:].reshape(x.shape[0], *self.in_shape))
        return torch.cat([x[:, :self.offset], y.reshape(x.shape[0], -1)], dim=1), ladj

    def inverse(self, y: Tensor) -> Tensor:
        x = self.layer.inverse(y[:, self.offset:].reshape(y.shape[0], *self.out_shape))
        return torch.cat([y[:, :self.offset], x.reshape(y.shape[0], -1)], dim=1)


class _MemorySavingFlow(torch.autograd.Function):
    """Runs the layers without a graph, keeps only the output, and rebuilds each layer's input in backward with
    the layer's inverse (then a local recomputation gives its vector-Jacobian product). First-order only."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, layers: nn.ModuleList, *params: Tensor) -> tuple[Tensor, Tensor]:  # type: ignore[override]
        y, total = x, torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
        with torch.no_grad():
            for layer in layers:
                y, ladj = layer(y)
                total = total + ladj
        ctx.layers = layers
        ctx.save_for_backward(y)
        return y, total

    @staticmethod
    def backward(ctx: Any, dy: Tensor, dladj: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        if torch.is_grad_enabled():
            raise RuntimeError("memory-saving backprop is first-order only (no create_graph or double backward); "
                               "use eval() mode or set_memory_saving(False)")
        (y,) = ctx.saved_tensors
        per_layer: list[list[Tensor | None]] = []
        for layer in reversed(ctx.layers):
            with torch.no_grad():
                x = layer.inverse(y)
            params = list(layer.parameters())
            trainable = [p for p in params if p.requires_grad]
            with torch.enable_grad():
                x = x.detach().requires_grad_(True)
                out, ladj = layer(x)
                pairs = [(t, g) for t, g in ((out, dy), (ladj, dladj)) if t.requires_grad]
                grads = torch.autograd.grad([t for t, _ in pairs], [x, *trainable], [g for _, g in pairs],
                                            allow_unused=True)
            by_id = {id(p): g for p, g in zip(trainable, grads[1:], strict=True)}
            per_layer.append([by_id.get(id(p)) for p in params])
            dy = grads[0] if grads[0] is not None else torch.zeros_like(x)
            y = x.detach()
        flat = [g for grads_ in reversed(per_layer) for g in grads_]
        return (dy if ctx.needs_input_grad[0] else None, None, *flat)


def _levels_possible(shape: tuple[int, int, int], levels: int) -> int:
    """How many of ``levels`` squeezes (C, H, W) allows: halving H and W while both are even."""
    _, h, w = shape
    n = 0
    while n < levels and h % 2 == 0 and w % 2 == 0:
        h, w, n = h // 2, w // 2, n + 1
    return n


class GlowNative(InvertibleModel):
    """A Glow-style flow with affine (the authors' scale) or additive coupling; see the module docstring.

    Args:
        shape: (D,) or (C, H, W).
        num_classes: classes of the head (default 10).
        coupling: ``"affine"`` (``scale = sigmoid(h + 2) + scale_eps``) or ``"additive"``.
        scale_eps: the affine scale's floor (the authors' 0.01); ignored by additive coupling.
        depth: steps per level (images) or in all (vectors); the authors' K.
        levels: multi-scale levels (images; capped by the squeezes H and W allow); the authors' L.
        hidden: hidden width of every coupling network (channels or units).
        memory_saving: memory-saving backprop in training mode (see :meth:`set_memory_saving`).
    """

    family = "glow"
    backend = "native"
    width_hparam = "hidden"
    capabilities = Capabilities(density=True, logdet="exact", inverse="analytic", classifier=True,
                                memory_saving=True, inputs=("vector", "image"))

    def __init__(self, shape: Sequence[int], num_classes: int | None = None, coupling: CouplingKind = "affine",
                 scale_eps: float = 0.01, depth: int = 4, levels: int = 3, hidden: int = 64,
                 memory_saving: bool = False) -> None:
        super().__init__(shape, num_classes, coupling=coupling, scale_eps=scale_eps, depth=depth, levels=levels,
                         hidden=hidden, memory_saving=memory_saving)
        if coupling not in ("affine", "additive"):
            raise ValueError(f"coupling must be 'affine' or 'additive', got {coupling!r}")
        if depth < 1 or levels < 1 or hidden < 1 or not scale_eps >= 0:
            raise ValueError(f"depth, levels and hidden must be >= 1 and scale_eps >= 0, got {depth}, {levels}, "
                             f"{hidden}, {scale_eps}")
        layers: list[FlowLayer] = []

        def step(n: int, offset: int, at: tuple[int, ...]) -> None:
            image = len(at) == 3
            for layer in (ActNormLayer(n), InvertibleLU(n), Coupling(n, coupling, scale_eps, hidden, image)):
                layers.append(OnTail(layer, offset, at, at))

        if self.input_kind == "vector":
            for _ in range(depth):
                step(self.shape[0], 0, self.shape)
            self.levels_used = 0
        else:
            c, h, w = self.shape
            self.levels_used = _levels_possible((c, h, w), levels)
            if self.levels_used == 0 and c < 2:
                raise ValueError(f"image shape {self.shape} cannot be split: it needs C >= 2 or even H and W")
            offset = 0
            for level in range(max(self.levels_used, 1)):
                if self.levels_used:
                    layers.append(OnTail(Squeeze(), offset, (c, h, w), (4 * c, h // 2, w // 2)))
                    c, h, w = 4 * c, h // 2, w // 2
                for _ in range(depth):
                    step(c, offset, (c, h, w))
                if level < self.levels_used - 1:  # factor out the first half of the channels
                    offset += (c // 2) * h * w
                    c -= c // 2
        self.layers = nn.ModuleList(layers)
        self.memory_saving = bool(memory_saving)
        self.head = nn.Linear(self.dim, self.num_classes or 10)

    # ------------------------------------------------------------------------------------ contract
    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``x``: (B, *shape) -> ``z``: (B, *shape), ``ladj``: (B,) (memory-saving backprop in training mode when
        on)."""
        flat = x.reshape(x.shape[0], -1)
        params = [p for layer in self.layers for p in layer.parameters()]
        needs_graph = torch.is_grad_enabled() and (flat.requires_grad or any(p.requires_grad for p in params))
        if self.memory_saving and self.training and needs_graph:
            z, ladj = _MemorySavingFlow.apply(flat, self.layers, *params)
        else:
            z, ladj = flat, torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
            for layer in self.layers:
                z, part = layer(z)
                ladj = ladj + part
        return z.reshape(x.shape), ladj

    def inverse(self, z: Tensor) -> Tensor:
        """``z``: (B, *shape) -> ``x``: (B, *shape), analytic, layer by layer in reverse."""
        y = z.reshape(z.shape[0], -1)
        for layer in reversed(self.layers):
            assert isinstance(layer, FlowLayer)
            y = layer.inverse(y)
        return y.reshape(z.shape)

    def logits(self, x: Tensor) -> Tensor:
        """``x``: (B, *shape) -> (B, num_classes), a linear head on the flattened latent."""
        z, _ = self(x)
        return self.head(z.reshape(x.shape[0], -1))

    def data_init(self, x: Tensor) -> None:
        """Initialise every ActNorm from the batch ``x``: (B, *shape), B >= 2 (one forward in training mode)."""
        was_training = self.training
        self.train()
        with torch.no_grad():
            self(x)
        self.train(was_training)

    def set_memory_saving(self, enabled: bool) -> None:
        """On: in training mode, backward rebuilds activations with the layers' inverses (first-order only). Off,
        or in ``eval()`` mode: ordinary autograd, storing every layer's activations."""
        self.memory_saving = bool(enabled)
        self._hparams["memory_saving"] = bool(enabled)

    def max_inverse_amplification(self) -> float:
        """The largest factor by which one affine coupling's inverse can stretch its input, ``1 / min scale``:
        ``1 / scale_eps`` (inf for ``scale_eps = 0``); 1 for additive coupling (its inverse is a shift)."""
        if self._hparams["coupling"] == "additive":
            return 1.0
        eps = float(self._hparams["scale_eps"])
        return math.inf if eps == 0 else 1.0 / eps


class GlowAdditiveNative(GlowNative):
    """:class:`GlowNative` with additive coupling by default (registered as ``glow-additive-native``, so a suite can
    run it beside the affine ``glow-native`` under one data set's hyper-parameters)."""

    def __init__(self, shape: Sequence[int], num_classes: int | None = None, coupling: CouplingKind = "additive",
                 scale_eps: float = 0.01, depth: int = 4, levels: int = 3, hidden: int = 64,
                 memory_saving: bool = False) -> None:
        super().__init__(shape, num_classes, coupling=coupling, scale_eps=scale_eps, depth=depth, levels=levels,
                         hidden=hidden, memory_saving=memory_saving)
