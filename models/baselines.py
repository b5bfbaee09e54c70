"""Baselines the trained models are held against: models fitted in closed form, not contenders.

:class:`GaussianFit` (``gaussian-fit``) is the full-covariance Gaussian fitted by maximum likelihood to the whole
training set, written as an exact affine flow. A flow that ends where this Gaussian is has learned nothing a
Gaussian could not; the likelihood rows of this model carry ``extra["baseline"] = "gaussian"`` (its ClassVar
``baseline``) so that the report can show it as a reference row.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import ClassVar

import torch
from torch import Tensor, nn

from models.base import Capabilities, InvertibleModel

#: Relative ridge added to the fitted covariance: ``ridge * mean(diag Sigma)`` on the diagonal.
DEFAULT_RIDGE = 1e-6


class GaussianFit(InvertibleModel):
    """The maximum-likelihood full-covariance Gaussian ``N(mu, Sigma)`` as the affine flow ``z = L^-1 (x - mu)``,
    ``Sigma = L L^T`` (Cholesky), fitted in closed form (:meth:`fit_closed_form`) to the whole training set.

    Shapes: ``x``: (B, *shape), flattened to (B, D) with D = prod(shape) (images: the pixels of one example), so
    vector and image data both work; the covariance has D^2 entries and the fit costs O(N D^2 + D^3) (D = 64
    for 8x8 digits, 784 for 28x28 images).

    The maps (all exact, in closed form):

    - forward: ``z = W (x - mu)`` with ``W = L^-1`` lower triangular with a positive diagonal (a matrix
      product), ``ladj = log|det W| = sum_i log W_ii = -(1/2) log det Sigma``, the same for every example;
    - inverse: ``x = mu + L z``, computed as the triangular solve ``W x' = z``, ``x = x' + mu``;
    - ``log_prob(x) = log N(z; 0, I) + ladj = log N(x; mu, Sigma)``; ``sample``: ``mu + L z``, ``z ~ N(0, I)``.

    The fit (:meth:`fit_closed_form` on the pre-processed, already dequantised training set ``y``: (N, *shape)),
    in float64: ``mu = mean(y)``, ``Sigma = (1/N) sum (y - mu)(y - mu)^T`` (the maximum-likelihood, biased,
    covariance: the Gaussian that maximises the training likelihood), plus the ridge
    ``ridge * mean(diag Sigma) * I`` (relative to the data's mean variance, so it does not depend on the data's
    units; an absolute floor of ``ridge`` where every variance is 0) so that directions of zero training variance
    (a constant pixel, N <= D) still give a proper density. It raises every eigenvalue ``lambda_i`` of Sigma by
    ``eps = ridge * mean(diag Sigma)``, so it changes ``log det Sigma`` by ``sum_i log(1 + eps / lambda_i)``: about
    ``D * ridge`` nats where the eigenvalues are near the mean variance, more where some variance is tiny.
    Then ``L = cholesky(Sigma)`` and ``W = L^-1``.

    Parameters (trainable, so the model is also an ordinary flow that gradient steps could train, the training
    step and its memory are measurable, and its parameter count is the Gaussian's D + D(D+1)/2):
    ``loc`` (D,) = mu, ``log_diag`` (D,) = log W_ii, ``offdiag`` (D(D-1)/2,) = W's strictly lower triangle
    (row-major, :func:`torch.tril_indices` with offset -1). As built (before any fit) the model is N(0, I), the
    identity map. :meth:`data_init` fits the first training batch (a data-dependent initialisation); training
    loops fit the whole set with :meth:`fit_closed_form` instead of taking optimiser steps
    (``closed_form_fit = True``).

    Args:
        shape: (D,) or (C, H, W).
        num_classes: unused (not a classifier); accepted by the constructor convention.
        ridge: the relative ridge above (>= 0).
    """

    family = "gaussian"
    backend = "fit"
    capabilities = Capabilities(density=True, logdet="exact", inverse="analytic", inputs=("vector", "image"))
    closed_form_fit: ClassVar[bool] = True
    baseline: ClassVar[str | None] = "gaussian"
    #: the triangular solve of the inverse in float64 reconstructs to about 1e-12 at the conformance checks' D
    roundtrip_tol: ClassVar[float] = 1e-9
    _tril: Tensor  # (2, D(D-1)/2) row and column indices of W's strictly lower triangle (a buffer)

    def __init__(self, shape: Sequence[int], num_classes: int | None = None, ridge: float = DEFAULT_RIDGE) -> None:
        super().__init__(shape, num_classes, ridge=ridge)
        if not ridge >= 0 or not math.isfinite(ridge):
            raise ValueError(f"ridge must be a finite number >= 0, got {ridge!r}")
        d = self.dim
        self.ridge = float(ridge)
        self.loc = nn.Parameter(torch.zeros(d))
        self.log_diag = nn.Parameter(torch.zeros(d))
        self.offdiag = nn.Parameter(torch.zeros(d * (d - 1) // 2))
        self.register_buffer("_tril", torch.tril_indices(d, d, offset=-1), persistent=False)

    # ------------------------------------------------------------------------------------ the affine map
    def weight(self) -> Tensor:
        """``W = L^-1``: (D, D) lower triangular with diagonal ``exp(log_diag)``."""
        w = torch.diag(self.log_diag.exp())
        return w.index_put((self._tril[0], self._tril[1]), self.offdiag)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``x``: (B, *shape) -> ``z = W (x - mu)``: (B, *shape), ``ladj = sum_i log W_ii``: (B,)."""
        flat = x.reshape(x.shape[0], -1) - self.loc
        z = flat @ self.weight().T
        return z.reshape(x.shape), self.log_diag.sum().expand(x.shape[0])

    def inverse(self, z: Tensor) -> Tensor:
        """``z``: (B, *shape) -> ``x = mu + L z``: (B, *shape), by the triangular solve ``W (x - mu) = z``."""
        flat = z.reshape(z.shape[0], -1)
        x = torch.linalg.solve_triangular(self.weight(), flat.T, upper=False).T + self.loc
        return x.reshape(z.shape)

    # ------------------------------------------------------------------------------------ the fit
    def fit_closed_form(self, y: Tensor) -> None:
        """Set ``mu``, ``W = L^-1`` to the maximum-likelihood Gaussian of ``y``: (N, *shape) (see the class
        docstring for the ridge); computed in float64 and stored in the parameters' dtype and device."""
        flat = y.detach().reshape(y.shape[0], -1).to(torch.float64)
        if flat.shape[1] != self.dim:
            raise ValueError(f"data of shape {tuple(y.shape[1:])} for a model of shape {self.shape}")
        if flat.shape[0] < 1:
            raise ValueError("fit_closed_form needs at least one example")
        mu = flat.mean(0)
        centred = flat - mu
        cov = centred.T @ centred / flat.shape[0]
        scale = float(cov.diagonal().mean())
        cov = cov + self.ridge * (scale if scale > 0 else 1.0) * torch.eye(self.dim, dtype=torch.float64)
        chol = torch.linalg.cholesky(cov)
        w = torch.linalg.solve_triangular(chol, torch.eye(self.dim, dtype=torch.float64), upper=False)
        with torch.no_grad():
            self.loc.copy_(mu)
            self.log_diag.copy_(w.diagonal().log())
            self.offdiag.copy_(w[self._tril[0], self._tril[1]])

    def data_init(self, x: Tensor) -> None:
        """Fit the Gaussian to the first training batch ``x``: (B, *shape) (a data-dependent initialisation)."""
        self.fit_closed_form(x)

    def covariance(self) -> Tensor:
        """The model's ``Sigma = L L^T = (W^T W)^-1``: (D, D)."""
        eye = torch.eye(self.dim, dtype=self.loc.dtype, device=self.loc.device)
        chol = torch.linalg.solve_triangular(self.weight().detach(), eye, upper=False)
        return chol @ chol.T
