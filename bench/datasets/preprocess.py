"""Optional pre-processing of a data set with a log-det: the logit transform of RealNVP.

``preprocess = "logit"`` (with ``alpha``, default 0.05) sets ``Dataset.preprocess`` to :class:`LogitTransform`,
``y = logit(alpha + (1 - 2 alpha) x)`` (Dinh et al., "Density estimation using Real NVP", ICLR 2017, section 4.1,
in the symmetric form common in flow code); the task adds its log-det to the model's log-likelihood
(``bench.units``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
from torch import Tensor

from bench.datasets.base import Dataset

DEFAULT_ALPHA = 0.05


@dataclass(frozen=True)
class LogitTransform:
    """``x -> y = logit(alpha + (1 - 2 alpha) x)`` elementwise, with ``log|det dy/dx|`` per example.

    ``x``: (N, ...) in ``[0, 1]``; returns ``(y (N, ...), ladj (N,))`` where
    ``ladj = sum_i [log(1 - 2 alpha) - log s_i - log(1 - s_i)]``, ``s = alpha + (1 - 2 alpha) x``.
    """

    alpha: float = DEFAULT_ALPHA

    def __post_init__(self) -> None:
        if not 0 < self.alpha < 0.5:
            raise ValueError(f"logit alpha must lie in (0, 0.5), got {self.alpha}")

    def __call__(self, x: Tensor) -> tuple[Tensor, Tensor]:
        s = self.alpha + (1 - 2 * self.alpha) * x
        y = torch.log(s) - torch.log1p(-s)
        elem = math.log(1 - 2 * self.alpha) - torch.log(s) - torch.log1p(-s)
        return y, elem.reshape(x.shape[0], -1).sum(1)

    def inverse(self, y: Tensor) -> Tensor:
        """``y -> x = (sigmoid(y) - alpha) / (1 - 2 alpha)``."""
        return (torch.sigmoid(y) - self.alpha) / (1 - 2 * self.alpha)


def with_preprocess(ds: Dataset, preprocess: str, alpha: float | None) -> Dataset:
    """``ds`` with ``preprocess`` (``"none"`` or ``"logit"``) set; the logit needs data in ``[0, 1]``."""
    if preprocess == "none":
        return ds
    if preprocess != "logit":
        raise ValueError(f"unknown preprocess {preprocess!r}; accepted: 'none', 'logit'")
    lo = min(float(ds.train_x.min()), float(ds.test_x.min()))
    top = 1.0 - 1.0 / ds.levels if ds.levels else 1.0
    hi = max(float(ds.train_x.max()), float(ds.test_x.max()))
    if lo < 0 or hi > top + 1e-6:
        raise ValueError(f"preprocess='logit' needs data in [0, 1]; {ds.name} spans [{lo:.3g}, {hi:.3g}]")
    t = LogitTransform(DEFAULT_ALPHA if alpha is None else float(alpha))
    desc = (f"{ds.description} Pre-processing: y = logit(alpha + (1 - 2 alpha) x), alpha = {t.alpha}, "
            "its log-det added to the log-likelihood.")
    return replace(ds, preprocess=t, description=desc, meta={**ds.meta, "preprocess": "logit", "alpha": t.alpha})
