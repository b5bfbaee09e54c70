"""Exact Jacobians by autograd, the reference every log-det and Lipschitz estimate is checked against."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor


def batch_jacobian(fn: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
    """Per-example Jacobians of a batch-independent map.

    ``fn``: (B, *shape) -> (B, *shape_out); ``x``: (B, *shape). Returns (B, D_out, D_in) with
    D = prod(shape). Costs one ``jacobian`` call per example; meant for small D.
    """
    shape = x.shape[1:]
    rows = []
    for xi in x:
        def single(v: Tensor, _shape: torch.Size = shape) -> Tensor:
            return fn(v.reshape(1, *_shape)).reshape(-1)

        j = torch.autograd.functional.jacobian(single, xi.reshape(-1).detach())
        rows.append(j)
    return torch.stack(rows)


def jacobian_slogdet(fn: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
    """Exact ``log|det dfn/dx|`` per example. ``x``: (B, *shape) -> (B,)."""
    return torch.linalg.slogdet(batch_jacobian(fn, x))[1]


def jacobian_singular_values(fn: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
    """Singular values of each example's Jacobian, descending. ``x``: (B, *shape) -> (B, D)."""
    return torch.linalg.svdvals(batch_jacobian(fn, x))
