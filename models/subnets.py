"""Subnetworks shared by the library adapters: the ``s``/``t`` networks of coupling blocks.

Both libraries take a *constructor* ``f(n_in, n_out) -> nn.Module`` and call the module on the passive half:
FrEIA as ``net(u)``, nflows as ``net(u, context)``. :class:`MLP` and :class:`ConvNet` accept both calls.
The last layer starts small (its default initialisation times ``out_scale``), so every coupling starts close
to the identity (as Glow zero-initialises it, Kingma & Dhariwal 2018, sec. 3.3) while every parameter still
receives a non-zero gradient from the first step.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Literal

import torch
from torch import Tensor, nn

SubnetKind = Literal["mlp", "conv"]
SubnetConstructor = Callable[[int, int], nn.Module]


def _shrink_(layer: nn.Linear | nn.Conv2d, out_scale: float) -> None:
    with torch.no_grad():
        layer.weight.mul_(out_scale)
        if layer.bias is not None:
            layer.bias.mul_(out_scale)


class MLP(nn.Module):
    """``Linear -> ReLU -> (Linear -> ReLU) x (hidden_layers - 1) -> Linear``: (B, n_in) -> (B, n_out).

    Args:
        n_in: input features (the passive half, plus context features if a context is passed).
        n_out: output features.
        hidden: hidden width.
        hidden_layers: number of hidden layers (>= 1).
        out_scale: factor applied to the last layer's default initialisation.
    """

    def __init__(self, n_in: int, n_out: int, hidden: int = 64, hidden_layers: int = 2,
                 out_scale: float = 0.1) -> None:
        super().__init__()
        if hidden_layers < 1:
            raise ValueError(f"hidden_layers must be >= 1, got {hidden_layers}")
        layers: list[nn.Module] = [nn.Linear(n_in, hidden), nn.ReLU()]
        for _ in range(hidden_layers - 1):
            layers += [nn.Linear(hidden, hidden), nn.ReLU()]
        last = nn.Linear(hidden, n_out)
        _shrink_(last, out_scale)
        layers.append(last)
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        """``x``: (B, n_in) [and ``context``: (B, n_ctx), concatenated] -> (B, n_out)."""
        if context is not None:
            x = torch.cat([x, context], dim=1)
        return self.net(x)


class ConvNet(nn.Module):
    """Glow's coupling network, ``Conv3x3 -> ReLU -> (Conv1x1 -> ReLU) x (hidden_layers - 1) -> Conv3x3``.

    (B, c_in, H, W) -> (B, c_out, H, W); zero padding keeps H and W (Kingma & Dhariwal 2018, sec. 3.3).

    Args:
        c_in: input channels (the passive half, plus context channels if a context is passed).
        c_out: output channels.
        hidden: hidden channels.
        hidden_layers: number of hidden layers (>= 1).
        out_scale: factor applied to the last layer's default initialisation.
    """

    def __init__(self, c_in: int, c_out: int, hidden: int = 64, hidden_layers: int = 2,
                 out_scale: float = 0.1) -> None:
        super().__init__()
        if hidden_layers < 1:
            raise ValueError(f"hidden_layers must be >= 1, got {hidden_layers}")
        layers: list[nn.Module] = [nn.Conv2d(c_in, hidden, 3, padding=1), nn.ReLU()]
        for _ in range(hidden_layers - 1):
            layers += [nn.Conv2d(hidden, hidden, 1), nn.ReLU()]
        last = nn.Conv2d(hidden, c_out, 3, padding=1)
        _shrink_(last, out_scale)
        layers.append(last)
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        """``x``: (B, c_in, H, W) [and ``context``: (B, c_ctx, H, W), concatenated] -> (B, c_out, H, W)."""
        if context is not None:
            x = torch.cat([x, context], dim=1)
        return self.net(x)


def subnet_constructor(kind: SubnetKind, hidden: int = 64, hidden_layers: int = 2,
                       out_scale: float = 0.1) -> SubnetConstructor:
    """A picklable ``f(n_in, n_out) -> nn.Module`` for FrEIA's ``subnet_constructor`` or nflows'
    ``transform_net_create_fn``: :class:`MLP` for ``"mlp"`` (vectors), :class:`ConvNet` for ``"conv"`` (images)."""
    if kind == "mlp":
        return partial(MLP, hidden=hidden, hidden_layers=hidden_layers, out_scale=out_scale)
    if kind == "conv":
        return partial(ConvNet, hidden=hidden, hidden_layers=hidden_layers, out_scale=out_scale)
    raise ValueError(f"unknown subnet kind {kind!r}; expected 'mlp' or 'conv'")
