"""1-Lipschitz activations with explicit derivatives, for contractive residual branches.

The residual branch of an i-ResNet / Residual Flow needs ``Lip(phi) <= 1`` so that spectral normalisation of the
weights bounds ``Lip(g)``. Each activation here also gives its derivative ``phi'(a)`` as a differentiable tensor
expression, which the log-det estimators use to build vector-Jacobian products ``v^T J_g`` without a second
autograd pass (see :mod:`models.iresnet`).

- :class:`ELU` (Behrmann et al., "Invertible Residual Networks", ICML 2019): ``phi'(a) = exp(min(a, 0))``.
- :class:`LipSwish` (Chen et al., "Residual Flows for Invertible Generative Modeling", NeurIPS 2019, sec. 4):
  ``phi(a) = a * sigmoid(beta * a) / 1.1`` with learnable ``beta = softplus(rho) > 0``; ``max_a swish'(a) ~ 1.0998``
  for every ``beta``, so dividing by 1.1 makes it 1-Lipschitz.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

#: the vector of ones that :meth:`ELU.value_and_derivative` multiplies by the derivative (broadcast, never copied)
_ONE = torch.ones(())


class Activation(nn.Module):
    """An elementwise 1-Lipschitz activation with an explicit derivative. Shapes: any -> same."""

    def forward(self, a: Tensor) -> Tensor:
        raise NotImplementedError

    def derivative(self, a: Tensor) -> Tensor:
        """``phi'(a)``, elementwise; differentiable in ``a`` and in the activation's parameters."""
        raise NotImplementedError

    def value_and_derivative(self, a: Tensor) -> tuple[Tensor, Tensor]:
        """``(phi(a), phi'(a))`` sharing intermediate results."""
        return self(a), self.derivative(a)


class ELU(Activation):
    """``phi(a) = a`` for ``a > 0``, ``exp(a) - 1`` otherwise (alpha = 1); ``Lip = 1``."""

    def forward(self, a: Tensor) -> Tensor:
        return F.elu(a)

    def derivative(self, a: Tensor) -> Tensor:
        # exp(min(a, 0)) is 1 for a > 0 and never overflows, so its gradient is finite everywhere.
        return torch.exp(torch.clamp(a, max=0.0))

    def value_and_derivative(self, a: Tensor) -> tuple[Tensor, Tensor]:
        h = F.elu(a)
        # phi'(a) from the result, h + 1 for a <= 0 and 1 above, by ELU's own fused backward kernel applied to a
        # vector of ones: one operation, and a cheaper backward than the elementwise min(h + 1, 1) (forward and
        # backward at 256 x 64: 364 against 431 us)
        return h, torch.ops.aten.elu_backward(_ONE.to(h).expand_as(h), 1.0, 1, 1, True, h)


class LipSwish(Activation):
    """``phi(a) = a * sigmoid(beta a) / 1.1`` with ``beta = softplus(rho)`` learnable (Chen et al. 2019).

    Args:
        beta: initial value of ``beta`` (> 0).
    """

    def __init__(self, beta: float = 1.0) -> None:
        super().__init__()
        if beta <= 0:
            raise ValueError(f"beta must be positive, got {beta}")
        self.rho = nn.Parameter(torch.tensor(math.log(math.expm1(beta))))

    @property
    def beta(self) -> Tensor:
        return F.softplus(self.rho)

    def forward(self, a: Tensor) -> Tensor:
        return a * torch.sigmoid(self.beta * a) / 1.1

    def derivative(self, a: Tensor) -> Tensor:
        beta = self.beta
        s = torch.sigmoid(beta * a)
        return (s + beta * a * s * (1 - s)) / 1.1

    def value_and_derivative(self, a: Tensor) -> tuple[Tensor, Tensor]:
        beta = self.beta
        s = torch.sigmoid(beta * a)
        return a * s / 1.1, (s + beta * a * s * (1 - s)) / 1.1


def make_activation(name: str) -> Activation:
    """``"elu"`` or ``"lipswish"``."""
    table: dict[str, type[Activation]] = {"elu": ELU, "lipswish": LipSwish}
    if name not in table:
        raise ValueError(f"unknown activation {name!r}; choose from {sorted(table)}")
    return table[name]()
