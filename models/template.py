"""A copyable template adapter: a dense linear flow ``z = W x + b``.

It is the smallest model that satisfies the whole contract (exact log-det, analytic inverse, density),
so it doubles as the fixture with a known spectrum: its Jacobian is ``W`` everywhere, so
``Lip(f) = sigma_max(W)`` and ``Lip(f^-1) = 1 / sigma_min(W)``. Copy this file into your own package,
replace the maths, and run ``invbench validate my_pkg.my_module:MyFlow``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from models.base import Capabilities, InvertibleModel


class LinearFlow(InvertibleModel):
    """``z = W x + b`` on flattened inputs. ``x``: (B, *shape) -> ``z``: (B, *shape), ``ladj = log|det W|``.

    Args:
        shape: input shape, (D,) or (C, H, W).
        singular_values: if given (length D), ``W = U diag(s) V^T`` with random orthogonal U, V, so the
            spectrum is known exactly; otherwise ``W = I + 0.1 * noise``.
        seed: seed of the random initialisation.
    """

    family = "linear"
    backend = "template"
    capabilities = Capabilities(density=True, logdet="exact", inverse="analytic", inputs=("vector", "image"))

    def __init__(self, shape: Sequence[int], num_classes: int | None = None,
                 singular_values: Sequence[float] | None = None, seed: int = 0) -> None:
        super().__init__(shape, num_classes, singular_values=list(singular_values) if singular_values else None,
                         seed=seed)
        d = self.dim
        g = torch.Generator().manual_seed(seed)
        if singular_values is not None:
            if len(singular_values) != d:
                raise ValueError(f"need {d} singular values, got {len(singular_values)}")
            u, _ = torch.linalg.qr(torch.randn(d, d, generator=g))
            v, _ = torch.linalg.qr(torch.randn(d, d, generator=g))
            w = u @ torch.diag(torch.tensor(list(singular_values), dtype=torch.float32)) @ v.T
        else:
            w = torch.eye(d) + 0.1 * torch.randn(d, d, generator=g)
        self.weight = nn.Parameter(w)
        self.bias = nn.Parameter(torch.zeros(d))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``x``: (B, *shape) -> ``z``: (B, *shape), ``ladj``: (B,)."""
        flat = x.reshape(x.shape[0], -1)
        z = flat @ self.weight.T + self.bias
        ladj = torch.linalg.slogdet(self.weight)[1].expand(x.shape[0])
        return z.reshape(x.shape), ladj

    def inverse(self, z: Tensor) -> Tensor:
        """``z``: (B, *shape) -> ``x``: (B, *shape) by a linear solve."""
        flat = z.reshape(z.shape[0], -1) - self.bias
        x = torch.linalg.solve(self.weight, flat.T).T
        return x.reshape(z.shape)
