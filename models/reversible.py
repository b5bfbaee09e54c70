"""Reversible layers and backprop that reconstructs activations instead of storing them.

Gomez et al., "The Reversible Residual Network: Backpropagation Without Storing Activations", NeurIPS 2017.
A :class:`ReversibleSequence` in memory-saving mode keeps only its *final output* for backward. Its backward
walks the layers in reverse: each layer rebuilds its input from its output and backpropagates through a
local recomputation (:meth:`ReversibleLayer.backward_pass`; Algorithm 1 of the paper for
:class:`AdditiveCouplingBlock`). Activation memory is then independent of depth, at the price of one
extra evaluation of every residual function.

Every layer here is volume-preserving (additive coupling, squeeze), so a sequence of them has
``log|det J| = 0`` exactly.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

ParamGrads = list[Tensor | None]


class ReversibleLayer(nn.Module):
    """A layer with an analytic inverse. ``forward``: (B, *s_in) -> (B, *s_out); ``inverse`` the reverse."""

    def inverse(self, y: Tensor) -> Tensor:
        """``y``: (B, *s_out) -> ``x``: (B, *s_in)."""
        raise NotImplementedError

    def backward_pass(self, y: Tensor, dy: Tensor) -> tuple[Tensor, Tensor, ParamGrads]:
        """From the output ``y`` and ``dL/dy`` (both (B, *s_out)), rebuild ``x`` and return
        ``(x, dL/dx, [dL/dp for p in self.parameters()])`` (None for parameters without ``requires_grad``).

        Default: invert without a graph, recompute the forward with one and take its vector-Jacobian product.
        """
        with torch.no_grad():
            x = self.inverse(y)
        params = list(self.parameters())
        trainable = [p for p in params if p.requires_grad]
        with torch.enable_grad():
            x = x.detach().requires_grad_(True)
            out = self(x)
            grads = torch.autograd.grad(out, [x, *trainable], dy, allow_unused=True)
        dx = grads[0] if grads[0] is not None else torch.zeros_like(x)
        by_id = {id(p): g for p, g in zip(trainable, grads[1:], strict=True)}
        return x.detach(), dx, [by_id.get(id(p)) for p in params]


def _split_sizes(n: int) -> tuple[int, int]:
    """Split ``n`` features/channels as ``(n // 2, n - n // 2)``: odd ``n`` gives the second half one more."""
    if n < 2:
        raise ValueError(f"a coupling block needs at least 2 features/channels to split, got {n}")
    return n // 2, n - n // 2


class AdditiveCouplingBlock(ReversibleLayer):
    """The RevNet block (Gomez et al. 2017, eq. 1-2) on dim 1 of (B, n) vectors or (B, n, H, W) images.

    ``x = [x1, x2]`` with ``x1``: n // 2 and ``x2``: n - n // 2 features/channels, then
    ``y1 = x1 + F(x2)``, ``y2 = x2 + G(y1)``; inverse ``x2 = y2 - G(y1)``, ``x1 = y1 - F(x2)``. The Jacobian
    is a product of two unit-triangular matrices, so ``log|det J| = 0``.

    Args:
        n: features (vectors) or channels (images) of the input.
        make_residual: ``make_residual(n_in, n_out)`` builds a residual function mapping (B, n_in, ...) to
            (B, n_out, ...); F gets ``(n - n // 2, n // 2)``, G gets ``(n // 2, n - n // 2)``.
    """

    def __init__(self, n: int, make_residual: Any) -> None:
        super().__init__()
        self.n1, self.n2 = _split_sizes(n)
        self.F: nn.Module = make_residual(self.n2, self.n1)
        self.G: nn.Module = make_residual(self.n1, self.n2)

    def forward(self, x: Tensor) -> Tensor:
        """``x``: (B, n, ...) -> ``y``: (B, n, ...)."""
        x1, x2 = torch.split(x, [self.n1, self.n2], dim=1)
        y1 = x1 + self.F(x2)
        y2 = x2 + self.G(y1)
        return torch.cat([y1, y2], dim=1)

    def inverse(self, y: Tensor) -> Tensor:
        """``y``: (B, n, ...) -> ``x``: (B, n, ...)."""
        y1, y2 = torch.split(y, [self.n1, self.n2], dim=1)
        x2 = y2 - self.G(y1)
        x1 = y1 - self.F(x2)
        return torch.cat([x1, x2], dim=1)

    def backward_pass(self, y: Tensor, dy: Tensor) -> tuple[Tensor, Tensor, ParamGrads]:
        """Algorithm 1 of Gomez et al. 2017: one evaluation of G and of F both inverts and differentiates.

        ``z1 = y1``; ``x2 = y2 - G(z1)``; ``x1 = z1 - F(x2)``;
        ``dz1 = dy1 + (dG/dz1)^T dy2``; ``dx2 = dy2 + (dF/dx2)^T dz1``; ``dx1 = dz1``;
        ``dw_G = (dG/dw_G)^T dy2``; ``dw_F = (dF/dw_F)^T dz1``.
        """
        y1, y2 = torch.split(y.detach(), [self.n1, self.n2], dim=1)
        dy1, dy2 = torch.split(dy, [self.n1, self.n2], dim=1)
        g_params = [p for p in self.G.parameters() if p.requires_grad]
        f_params = [p for p in self.F.parameters() if p.requires_grad]
        with torch.enable_grad():
            z1 = y1.detach().requires_grad_(True)
            g = self.G(z1)
            dz1_g, *dw_g = torch.autograd.grad(g, [z1, *g_params], dy2, allow_unused=True)
        dz1 = dy1 if dz1_g is None else dy1 + dz1_g
        x2 = (y2 - g.detach()).detach()
        with torch.enable_grad():
            x2_leaf = x2.requires_grad_(True)
            f = self.F(x2_leaf)
            dx2_f, *dw_f = torch.autograd.grad(f, [x2_leaf, *f_params], dz1, allow_unused=True)
        dx2 = dy2 if dx2_f is None else dy2 + dx2_f
        x1 = y1 - f.detach()
        by_id = {id(p): gr for p, gr in zip(g_params, dw_g, strict=True)}
        by_id.update({id(p): gr for p, gr in zip(f_params, dw_f, strict=True)})
        x = torch.cat([x1, x2.detach()], dim=1)
        dx = torch.cat([dz1, dx2], dim=1)
        return x, dx, [by_id.get(id(p)) for p in self.parameters()]


def squeeze2d(x: Tensor) -> Tensor:
    """Space-to-depth (Dinh et al., RealNVP 2017, sec. 3.6): (B, C, H, W) -> (B, 4C, H/2, W/2), a permutation."""
    b, c, h, w = x.shape
    x = x.reshape(b, c, h // 2, 2, w // 2, 2).permute(0, 1, 3, 5, 2, 4)
    return x.reshape(b, 4 * c, h // 2, w // 2)


def unsqueeze2d(y: Tensor) -> Tensor:
    """Depth-to-space, the inverse of :func:`squeeze2d`: (B, 4C, H, W) -> (B, C, 2H, 2W)."""
    b, c4, h, w = y.shape
    y = y.reshape(b, c4 // 4, 2, 2, h, w).permute(0, 1, 4, 2, 5, 3)
    return y.reshape(b, c4 // 4, 2 * h, 2 * w)


class Squeeze(ReversibleLayer):
    """Invertible 2x2 squeeze: (B, C, H, W) -> (B, 4C, H/2, W/2). A permutation: ``log|det J| = 0``."""

    def forward(self, x: Tensor) -> Tensor:
        return squeeze2d(x)

    def inverse(self, y: Tensor) -> Tensor:
        return unsqueeze2d(y)

    def backward_pass(self, y: Tensor, dy: Tensor) -> tuple[Tensor, Tensor, ParamGrads]:
        """A permutation P has vector-Jacobian product ``P^T dy = P^{-1} dy``: no recomputation."""
        return unsqueeze2d(y), unsqueeze2d(dy), []


class _ReversibleFunction(torch.autograd.Function):
    """Runs the layers without a graph, saves only the output, and rebuilds activations in backward."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, layers: nn.ModuleList, *params: Tensor) -> Tensor:  # type: ignore[override]
        y = x
        with torch.no_grad():
            for layer in layers:
                y = layer(y)
        if y is x:
            y = x.clone()
        ctx.layers = layers
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx: Any, dy: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        if torch.is_grad_enabled():  # create_graph=True: the rebuilt activations are cut from x's graph
            raise RuntimeError("memory-saving reversible backprop is first-order only (no create_graph, double "
                               "backward or autograd.functional.jvp/hessian); use eval() mode or "
                               "set_memory_saving(False)")
        (y,) = ctx.saved_tensors
        y = y.detach()
        per_layer: list[ParamGrads] = []
        for layer in reversed(ctx.layers):
            y, dy, grads = layer.backward_pass(y, dy)
            per_layer.append(grads)
        flat = [g for grads in reversed(per_layer) for g in grads]
        dx = dy if ctx.needs_input_grad[0] else None
        return (dx, None, *flat)


class ReversibleSequence(nn.Module):
    """A chain of :class:`ReversibleLayer` with switchable memory-saving backprop.

    ``forward``: (B, *s_in) -> (B, *s_out). With ``memory_saving`` on, in training mode and with a graph being
    built, only the final output is saved for backward (activation memory O(1) in depth). That backward is
    first-order only (it raises under ``create_graph=True``; no ``torch.func`` transforms), so in ``eval()``
    mode, or with ``memory_saving`` off, the layers run under ordinary autograd, which supports double backward and
    Jacobian-vector products (the stability measurements need them).
    """

    def __init__(self, layers: list[ReversibleLayer], memory_saving: bool = True) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.memory_saving = memory_saving

    def _flat_params(self) -> list[Tensor]:
        # the order backward returns gradients in: layer by layer, each layer's parameters() order
        return [p for layer in self.layers for p in layer.parameters()]

    def forward(self, x: Tensor) -> Tensor:
        params = self._flat_params()
        needs_graph = torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in params))
        if self.memory_saving and self.training and needs_graph and len(self.layers) > 0:
            out: Tensor = _ReversibleFunction.apply(x, self.layers, *params)
            return out
        for layer in self.layers:
            x = layer(x)
        return x

    def inverse(self, y: Tensor) -> Tensor:
        """(B, *s_out) -> (B, *s_in)."""
        for layer in reversed(self.layers):
            y = layer.inverse(y)  # type: ignore[operator]
        return y
