"""Unit conventions, written once.

- Log-likelihoods are in nats per example.
- Bits per dimension: ``bpd = NLL / (D ln 2)``.
- Discrete data with ``L`` levels per dimension (``L = 256`` for 8-bit images, ``L = 17`` for scikit-learn's
  digits) is uniformly dequantised on ``[0, L)`` and scaled to ``[0, 1)``: ``x = (k + u) / L``,
  ``u ~ U[0, 1)``. A density ``p`` on the scaled cube gives the discrete model a log-likelihood bound
  ``log P(k) >= E_u[log p(x)] - D ln L``, so ``NLL_discrete = NLL_scaled + D ln L`` and
  ``bpd = (NLL_scaled + D ln L) / (D ln 2)``.
- Any further pre-processing ``x -> y`` (an affine map, a logit) adds its own log-det:
  ``log p_x(x) = log p_y(y) + log|det dy/dx|``.
"""

from __future__ import annotations

import math

from torch import Tensor


def bits_per_dim(nll_nats: float | Tensor, dim: int, levels: int | None = None) -> float | Tensor:
    """Bits per dimension of an NLL in nats per example.

    ``levels=None`` for continuous data (bpd = NLL / (D ln 2)); for data with ``levels`` discrete values per
    dimension, the NLL is of the dequantised data scaled to [0, 1) and ``D ln levels`` is added first.
    """
    if dim <= 0:
        raise ValueError(f"dim must be positive, got {dim}")
    offset = 0.0 if levels is None else dim * math.log(levels)
    return (nll_nats + offset) / (dim * math.log(2))
