"""The fewest evaluations of ``g`` any Krylov-type solver needs to invert a residual block, on its linearisation.

A solver of ``x + g(x) = y`` that forms each new point by linear combination of ``y`` and the values of ``g`` it
has seen (plain iteration, Anderson acceleration, Broyden's method, GMRES with Jacobian-vector products) keeps its
points in ``x0 + K_n(A, r0)`` on the block linearised at the solution ``x*``: there ``A = I + J_g(x*)``, the
error ``e = x* - x`` has residual ``G(x) - x = A e``, and after ``n`` evaluations of ``G(x) = y - g(x)`` the point
returned lies in ``x0 + K_n``, ``K_n = span{r0, A r0, ..., A^{n-1} r0}`` with ``r0 = A e0``, ``e0 = x* - x0``
(Saad, "Iterative Methods for Sparse Linear Systems", 2nd ed. 2003, ch. 6: GMRES minimises the residual over that
space; Walker & Ni, SIAM J. Numer. Anal. 2011: Anderson acceleration without truncation is GMRES on a linear
problem). So ``min_{x in x0 + K_n} ||x* - x||_2`` is a floor under the error of every such solver after ``n``
evaluations: exact for a linear block, and a model of a nonlinear one near its solution (far from it the block is
not linear, and in float32 the iteration also has a rounding floor).

:func:`krylov_floor` computes that least error per example by Arnoldi's process in float64 (each new direction
orthogonalised twice against the previous ones), and :func:`evaluations_needed` the fewest ``n`` reaching a target.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["evaluations_needed", "krylov_floor"]


def krylov_floor(jacobian: Tensor, error0: Tensor, max_evaluations: int) -> Tensor:
    """The least 2-norm error ``min_{x in x0 + K_n(A, A e0)} ||x* - x||`` for ``n = 1..max_evaluations``.

    Args:
        jacobian: ``J_g(x*)``: (B, D, D), ``jacobian[b, i, j] = d g_i / d x_j`` (as
            :func:`models.jacobian.jacobian_from_vjp` gives it); ``A = I + J``.
        error0: ``e0 = x* - x0``: (B, D) (``-g(x*)`` for the start ``x0 = y``).
        max_evaluations: the largest ``n``.

    Returns:
        (max_evaluations, B), float64, non-increasing in ``n``; once the space stops growing (at most ``D``
        directions) the value stays at the error left, zero up to rounding where ``e0`` lies in it.
    """
    a = torch.eye(jacobian.shape[1], dtype=torch.float64, device=jacobian.device) + jacobian.double()
    e0 = error0.double()
    tiny = torch.finfo(torch.float64).tiny
    left = e0.clone()  # the part of e0 outside the space so far
    basis: list[Tensor] = []
    direction = torch.einsum("bij,bj->bi", a, e0)  # r0 = A e0
    floors = []
    for _ in range(max_evaluations):
        before = direction.norm(dim=1, keepdim=True)
        for _ in range(2):  # Gram-Schmidt against the basis, twice: orthogonal to rounding
            for q in basis:
                direction = direction - (direction * q).sum(dim=1, keepdim=True) * q
        norm = direction.norm(dim=1, keepdim=True)
        grows = norm > 1e-10 * before  # else the new direction lies in the space: it has stopped growing
        q = torch.where(grows, direction / norm.clamp_min(tiny), 0.0)
        basis.append(q)
        left = left - (left * q).sum(dim=1, keepdim=True) * q
        floors.append(left.norm(dim=1))
        direction = torch.einsum("bij,bj->bi", a, q)
    return torch.cummin(torch.stack(floors), dim=0).values


def evaluations_needed(floor: Tensor, target: float) -> Tensor:
    """The fewest evaluations whose floor is at most ``target``, per example: (N, B) -> (B,) int64, 0 where no
    ``n <= N`` reaches it."""
    reached = floor <= target
    first = reached.to(torch.int64).argmax(dim=0) + 1
    return torch.where(reached.any(dim=0), first, 0)
