"""Space-to-depth squeeze (Dinh et al., "Density estimation using Real NVP", ICLR 2017, sec. 3.6).

``(B, C, H, W) -> (B, 4C, H/2, W/2)``: each 2x2 spatial patch becomes 4 channels. A permutation, so
``log|det| = 0``; used by i-ResNets and Residual Flows to trade resolution for channels.
"""

from __future__ import annotations

from torch import Tensor


def squeeze(x: Tensor) -> Tensor:
    """``x``: (B, C, H, W) with even H, W -> (B, 4C, H/2, W/2)."""
    b, c, h, w = x.shape
    if h % 2 or w % 2:
        raise ValueError(f"squeeze needs even height and width, got {h}x{w}")
    x = x.reshape(b, c, h // 2, 2, w // 2, 2)
    return x.permute(0, 1, 3, 5, 2, 4).reshape(b, 4 * c, h // 2, w // 2)


def unsqueeze(x: Tensor) -> Tensor:
    """Inverse of :func:`squeeze`: (B, 4C, H, W) -> (B, C, 2H, 2W)."""
    b, c4, h, w = x.shape
    if c4 % 4:
        raise ValueError(f"unsqueeze needs a channel count divisible by 4, got {c4}")
    c = c4 // 4
    x = x.reshape(b, c, 2, 2, h, w)
    return x.permute(0, 1, 4, 2, 5, 3).reshape(b, c, 2 * h, 2 * w)


def squeezed_shape(shape: tuple[int, int, int], times: int) -> tuple[int, int, int]:
    """The (C, H, W) shape after ``times`` squeezes; raises if a side is not divisible by ``2**times``."""
    c, h, w = shape
    if h % (2**times) or w % (2**times):
        raise ValueError(f"cannot squeeze {h}x{w} {times} time(s)")
    return (c * 4**times, h // 2**times, w // 2**times)
