"""Training regularisers.

:class:`FDRegularizer` is the bi-directional finite-difference penalty of Behrmann et al., "Understanding and
Mitigating Exploding Inverses in Invertible Neural Networks", AISTATS 2021: it penalises the local Lipschitz
constants of both ``f`` and ``f^-1`` along random directions, so that training keeps the inverse stable on
(and near) the data, where a likelihood objective alone lets affine blocks grow arbitrarily steep inverses.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor

from models.base import InvertibleModel


def random_unit_directions(x: Tensor) -> Tensor:
    """One random direction per example, uniform on the unit sphere of R^D. ``x``: (B, *shape) -> (B, *shape)."""
    v = torch.randn_like(x)
    norms = v.reshape(v.shape[0], -1).norm(dim=1).clamp_min(torch.finfo(v.dtype).tiny)
    return v / norms.reshape(-1, *([1] * (x.dim() - 1)))


def _per_example_norm(t: Tensor) -> Tensor:
    """``t``: (B, *shape) -> (B,), the Euclidean norm of each example."""
    return t.reshape(t.shape[0], -1).norm(dim=1)


@dataclass
class FDRegularizer:
    """Bi-directional finite differences (Behrmann et al., AISTATS 2021).

    For a batch ``x`` and random unit directions ``v``, ``v'`` (fresh per example, from torch's global RNG):

    - forward quotient ``||f(x + eps v) - f(x)|| / eps``, which tends to ``||J_f(x) v||``;
    - inverse quotient ``||f^-1(z + eps v') - f^-1(z)|| / eps`` at ``z = f(x)`` (detached: the penalty is
      about the inverse's slope at the latent code of a training point, not about moving that point),
      which tends to ``||J_f^-1(z) v'||``.

    For a linear map ``W`` the quotients equal ``||W v||`` and ``||W^-1 v'||`` exactly, whose squares have
    expectation ``||W||_F^2 / D`` and ``||W^-1||_F^2 / D``; both lie in ``[sigma_min, sigma_max]`` of the
    respective map, so they are per-direction Lipschitz estimates.

    Attributes:
        eps: step of the finite differences (in the space of ``x`` and of ``z``).
        weight: multiplier of the penalty in the loss.
        every: the training loop adds the penalty on steps ``0, every, 2 every, ...``.
    """

    eps: float = 0.01
    weight: float = 1.0
    every: int = 1

    def __post_init__(self) -> None:
        if self.eps <= 0:
            raise ValueError(f"eps must be positive, got {self.eps}")
        if self.every < 1:
            raise ValueError(f"every must be >= 1, got {self.every}")

    def applies(self, step: int) -> bool:
        """Whether the penalty is added at (0-based) training step ``step``."""
        return step % self.every == 0

    def quotients(self, model: InvertibleModel, x: Tensor) -> tuple[Tensor, Tensor]:
        """Per-example forward and inverse difference quotients. ``x``: (B, *shape) -> ((B,), (B,)).

        ``x`` and ``x + eps v`` go through the model as one batch of 2B (likewise for the inverse), so a
        layer with batch statistics sees both points under the same statistics.
        """
        b = x.shape[0]
        v = random_unit_directions(x)
        z_pair, _ = model(torch.cat([x, x + self.eps * v]))
        z, z_moved = z_pair[:b], z_pair[b:]
        forward_q = _per_example_norm(z_moved - z) / self.eps
        z0 = z.detach()
        w = random_unit_directions(z0)
        x_pair = model.inverse(torch.cat([z0, z0 + self.eps * w]))
        inverse_q = _per_example_norm(x_pair[b:] - x_pair[:b]) / self.eps
        return forward_q, inverse_q

    def penalty(self, model: InvertibleModel, x: Tensor) -> Tensor:
        """``weight * (mean forward quotient + mean inverse quotient)``, a differentiable scalar.

        ``x``: (B, *shape), the (pre-processed) training batch.
        """
        forward_q, inverse_q = self.quotients(model, x)
        return self.weight * (forward_q.mean() + inverse_q.mean())

    def config(self) -> dict[str, Any]:
        """JSON-serialisable settings (part of the checkpoint key)."""
        return {"kind": "fd", **asdict(self)}
