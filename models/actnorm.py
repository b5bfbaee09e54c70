"""Activation normalisation (Kingma & Dhariwal, "Glow", NeurIPS 2018, sec. 3.1).

``y = (x + b) * exp(s)`` per feature (vectors) or per channel (images), with ``log|det dy/dx| = H W sum(s)``
(``H W = 1`` for vectors). ``b`` and ``s`` are initialised from data so that the first batch has zero mean and
unit variance per feature/channel; Behrmann et al. (i-ResNet, 2019) and Chen et al. (Residual Flows, 2019) place
it between residual blocks.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn


class ActNorm(nn.Module):
    """Per-channel affine map with data-dependent initialisation.

    ``x``: (B, C) or (B, C, H, W) -> ``y`` of the same shape; ``ladj``: (B,).
    Initialisation happens on the first forward in training mode with a batch of at least 2 (or when
    :meth:`initialize` is called); the ``initialized`` buffer makes it survive ``state_dict`` round trips.
    :meth:`is_initialized` reads that buffer only until it is seen set: on a GPU every read is a host
    synchronisation, which a training forward would otherwise pay once per ActNorm.
    """

    initialized: Tensor

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(channels))
        self.log_scale = nn.Parameter(torch.zeros(channels))
        self.register_buffer("initialized", torch.tensor(False))
        #: the buffer is known to be set (it is only ever set by :meth:`initialize` or by loading a state dict)
        self._known_initialized = False

    def is_initialized(self) -> bool:
        """Whether ``initialized`` is set; the buffer is read until it is (then never again, until a state dict is
        loaded)."""
        if not self._known_initialized:
            self._known_initialized = bool(self.initialized)
        return self._known_initialized

    def _load_from_state_dict(self, *args: Any, **kwargs: Any) -> None:
        super()._load_from_state_dict(*args, **kwargs)
        self._known_initialized = False  # the loaded buffer decides

    @staticmethod
    def _view(p: Tensor, x: Tensor) -> Tensor:
        return p.view(1, -1, *([1] * (x.dim() - 2)))

    @torch.no_grad()
    def initialize(self, x: Tensor, eps: float = 1e-6) -> None:
        """Set ``b = -mean``, ``s = -log(std)`` per channel from ``x``: (B, C, ...)."""
        flat = x.transpose(0, 1).reshape(x.shape[1], -1)
        self.bias.copy_(-flat.mean(dim=1))
        self.log_scale.copy_(-torch.log(flat.std(dim=1) + eps))
        self.initialized.fill_(True)
        self._known_initialized = True

    def _maybe_init(self, x: Tensor) -> None:
        if self.training and x.shape[0] >= 2 and not self.is_initialized():
            self.initialize(x)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``x``: (B, C, ...) -> (``y``: same shape, ``ladj``: (B,))."""
        self._maybe_init(x)
        y = (x + self._view(self.bias, x)) * torch.exp(self._view(self.log_scale, x))
        spatial = x[0, 0].numel()
        ladj = (self.log_scale.sum() * spatial).expand(x.shape[0])
        return y, ladj

    def inverse_lipschitz(self) -> float:
        """The Lipschitz constant of :meth:`inverse` (2-norm): ``max_c exp(-log_scale_c)``."""
        return float(torch.exp(-self.log_scale.detach()).max())

    def inverse(self, y: Tensor) -> Tensor:
        """``y``: (B, C, ...) -> ``x``: same shape."""
        return y * torch.exp(-self._view(self.log_scale, y)) - self._view(self.bias, y)
