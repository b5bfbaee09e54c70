"""Spectrally normalised linear and convolutional layers with a Lipschitz coefficient ``c``.

Behrmann et al., "Invertible Residual Networks", ICML 2019, sec. 3 (after Miyato et al., "Spectral
Normalization for GANs", ICLR 2018): the weight used is ``W_eff = W / max(1, sigma(W) / c)``, so
``||W_eff||_2 <= c`` whenever ``sigma(W)`` is the operator norm, and ``W`` is left alone when it is already small.
Here ``W = gain * weight`` with the trained parameter ``weight`` and a constant ``gain`` (default 1), the
equalised-learning-rate parametrisation of Karras et al., "Progressive Growing of GANs", ICLR 2018: Adam moves
each entry of ``weight`` by about ``lr`` per step, so ``gain`` multiplies the step on ``W``.
:meth:`SpectralNormLayer.rescale_to_bound` scales ``weight`` so that a layer starts with ``||W||_2 = c``.
``sigma`` is estimated by power iteration with persistent vectors ``u``, ``v`` (buffers): in training mode each
forward does ``n_power_iterations`` steps and stores them; in eval mode the stored vectors are used unchanged,
so evaluation is deterministic. Power iteration gives ``sigma_est <= sigma``, so the bound holds up to the
iteration's convergence; ``init_iterations`` steps are run at construction. With a tolerance ``tol`` the iteration
runs to convergence instead, as the Residual Flows code does (Chen et al., NeurIPS 2019; rtqichen/residual-flows,
``--sn-tol 1e-3``): in every training forward, and once more when the layer leaves training mode (their
``update_lipschitz`` before validation), each time until ``u`` and ``v`` change by at most ``tol (1 + max |.|)`` in
root-mean-square, at most :data:`TOL_MAX_ITERATIONS` steps.

For a convolution the operator is the convolution *with its padding at the actual input size*, not the
reshaped kernel matrix: power iteration runs through ``conv2d`` and its adjoint ``conv_transpose2d`` on
vectors of shape ``(1, C, H, W)`` (Behrmann et al. 2019, appendix; Gouk et al. 2018).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

#: power-iteration steps of :meth:`SpectralNormConv2d.operator_norm`
NORM_ITERATIONS = 200
#: the most power-iteration steps one convergence to ``tol`` takes (the Residual Flows code allows 20000)
TOL_MAX_ITERATIONS = 1000


def _normalize(t: Tensor, eps: float = 1e-12) -> Tensor:
    return t / torch.linalg.vector_norm(t).clamp_min(eps)


class SpectralNormLayer(nn.Module):
    """Common machinery: ``weight``, ``bias``, buffers ``u`` (output space) and ``v`` (input space).

    Subclasses implement the operator ``_op(x, W)`` and its adjoint ``_adjoint(y, W)`` without bias.
    """

    weight: nn.Parameter
    bias: nn.Parameter
    u: Tensor
    v: Tensor

    def __init__(self, coeff: float, n_power_iterations: int, init_iterations: int, gain: float = 1.0,
                 tol: float | None = None) -> None:
        super().__init__()
        if coeff <= 0:
            raise ValueError(f"coeff must be positive, got {coeff}")
        if gain <= 0:
            raise ValueError(f"gain must be positive, got {gain}")
        if tol is not None and not tol > 0:
            raise ValueError(f"the power-iteration tolerance must be positive or None, got {tol}")
        #: power iteration to convergence at this tolerance instead of ``n_power_iterations`` steps (None: steps)
        self.tol = tol
        self.coeff = float(coeff)
        #: ``(key, value)`` of the last :meth:`operator_norm`
        self._norm_cache: tuple[tuple[tuple[int, torch.dtype, int], ...], float] | None = None
        self._weight_cache: tuple[tuple[tuple[int, torch.dtype, int], ...], Tensor] | None = None
        #: the weight used is ``gain * weight`` before normalisation (``sigma`` is that product's norm)
        self.gain = float(gain)
        self.n_power_iterations = int(n_power_iterations)
        self.init_iterations = int(init_iterations)

    def _op(self, x: Tensor, w: Tensor) -> Tensor:
        raise NotImplementedError

    def _adjoint(self, y: Tensor, w: Tensor) -> Tensor:
        raise NotImplementedError

    def _init_vectors(self, u_shape: tuple[int, ...], v_shape: tuple[int, ...]) -> None:
        g = torch.Generator().manual_seed(0)
        self.register_buffer("u", _normalize(torch.randn(u_shape, generator=g)))
        self.register_buffer("v", _normalize(torch.randn(v_shape, generator=g)))
        self.power_iterate(self.init_iterations)

    @torch.no_grad()
    def power_iterate(self, iterations: int) -> None:
        """Run ``iterations`` power-iteration steps on ``W^T W`` and store ``u``, ``v`` (``W = gain * weight``
        has the singular vectors of ``weight``, so the iteration runs on ``weight``)."""
        if iterations <= 0:
            return
        u, v = self._power_steps(self.weight.detach(), iterations)
        self.u.copy_(u)
        self.v.copy_(v)

    def _converged_steps(self, w: Tensor) -> tuple[Tensor, Tensor]:
        """``(u, v)`` after power-iteration steps from the stored vectors until neither moved by more than
        ``tol (1 + max |.|)`` in root-mean-square (the Residual Flows code's test with atol = rtol = tol), at least one
        step and at most :data:`TOL_MAX_ITERATIONS`; ``w`` detached, the buffers left unchanged."""
        assert self.tol is not None
        u, v = self.u, self.v
        for _ in range(TOL_MAX_ITERATIONS):
            v_new = _normalize(self._adjoint(u, w))
            u_new = _normalize(self._op(v_new, w))
            moved = torch.stack([(u_new - u).pow(2).mean().sqrt() / (1 + u_new.abs().amax()),
                                 (v_new - v).pow(2).mean().sqrt() / (1 + v_new.abs().amax())]).amax()
            u, v = u_new, v_new
            if float(moved) <= self.tol:
                break
        return u, v

    @torch.no_grad()
    def converge(self) -> None:
        """With a tolerance, run power iteration to it and store ``u``, ``v`` (a no-op without one)."""
        if self.tol is None:
            return
        u, v = self._converged_steps(self.weight.detach())
        self.u.copy_(u)
        self.v.copy_(v)

    def train(self, mode: bool = True) -> SpectralNormLayer:
        """Leaving training mode converges the power iteration first where the layer has a tolerance, so that
        evaluation uses an estimate of ``sigma`` for the weights as they are after the last optimizer step."""
        if self.training and not mode:
            self.converge()
        super().train(mode)
        return self

    def _power_steps(self, w: Tensor, iterations: int) -> tuple[Tensor, Tensor]:
        """``(u, v)`` after ``iterations`` steps ``v <- W^T u / ||.||``, ``u <- W v / ||.||`` from the stored ``u``
        (the stored ``v`` for none); ``w`` detached, the buffers left unchanged."""
        u, v = self.u, self.v
        for _ in range(iterations):
            v = _normalize(self._adjoint(u, w))
            u = _normalize(self._op(v, w))
        return u, v

    def sigma(self) -> Tensor:
        """The power-iteration estimate ``u^T W v`` of ``||W||_2`` from the stored vectors, ``W = gain * weight``
        (differentiable in ``weight``); scalar."""
        # a graph saves u and v, which a later training forward updates in place: give it copies
        u, v = (self.u.clone(), self.v.clone()) if torch.is_grad_enabled() else (self.u, self.v)
        return self.gain * (u * self._op(v, self.weight)).sum()

    def normalized_weight(self, update: bool = False) -> Tensor:
        """``W / max(1, sigma / c)`` with ``W = gain * weight``; ``update`` runs power iteration first (training
        mode only, :meth:`_iterate_ratio`). Same shape as ``weight``. Outside grad mode the result is kept until
        ``weight``, ``u`` or ``v`` change (:meth:`_key`), so evaluations, inverses and scoring do not recompute it on
        every call."""
        if update and self.training and (self.n_power_iterations > 0 or self.tol is not None):
            return self._scaled(self._iterate_ratio())
        if torch.is_grad_enabled():  # a fresh graph to the weight
            return self._normalized()
        key = self._key()
        cached = self._weight_cache
        if cached is None or cached[0] != key:
            cached = self._weight_cache = (key, self._normalized())
        return cached[1]

    def _iterate_ratio(self) -> Tensor:
        """``n_power_iterations`` power-iteration steps (with a tolerance: the steps to convergence, then one more),
        stored in ``u``, ``v``, and ``sigma / c`` of the result, the last product taken with a graph to ``weight``:
        ``sigma / c = ||W v'||`` with ``v' = (gain / c) v`` scaled outside the graph, which is ``u^T W v / c`` for the
        new ``u = W v / ||W v||`` (what :meth:`sigma` gives right after :meth:`power_iterate`) with the same gradient
        ``gain u v^T / c``: one product and a norm in the graph where ``sigma()`` and the division by ``c`` take
        five operations. Scalar."""
        weight = self.weight
        w = weight.detach()  # u and v are buffers, so the iteration has no graph without a no_grad block
        if self.tol is not None:
            u = self._converged_steps(w)[0]
        else:
            u = self._power_steps(w, self.n_power_iterations - 1)[0]
        v = _normalize(self._adjoint(u, w))
        scale = self.gain / self.coeff
        wv = self._op(v if scale == 1.0 else v * scale, weight)
        ratio = torch.linalg.vector_norm(wv)
        torch.div(wv.detach(), ratio.detach().clamp_min(1e-12), out=self.u)
        self.v.copy_(v)
        return ratio

    def _normalized(self) -> Tensor:
        return self._scaled(self.sigma() / self.coeff)

    def _scaled(self, ratio: Tensor) -> Tensor:
        """``W / max(1, ratio)`` for ``ratio = sigma / c`` (scalar) of ``W = gain * weight``."""
        w = self.weight if self.gain == 1.0 else self.gain * self.weight
        return w / torch.clamp(ratio, min=1.0)

    def _key(self) -> tuple[tuple[int, torch.dtype, int], ...]:
        """Storage, dtype and version counter of ``weight``, ``u`` and ``v``: a new key whenever one changes."""
        return tuple((t.data_ptr(), t.dtype, t._version) for t in (self.weight, self.u, self.v))

    @torch.no_grad()
    def rescale_to_bound(self) -> None:
        """Scale ``weight`` so that ``||gain * weight||_2 = c`` by the power-iteration estimate: the layer starts
        at its bound and the normalisation divides by 1, so none of a step on ``weight`` is scaled away (PyTorch's
        default initialisation gives a ``Linear(2, 64)`` a norm of about 3.3, which ``c = 0.9`` divides by 3.7)."""
        iterations = max(self.init_iterations, 1)
        self.power_iterate(iterations)
        self.weight.mul_(self.coeff / float(self.sigma()))
        self.power_iterate(iterations)

    def affine(self, x: Tensor, w: Tensor) -> Tensor:
        """``x -> op(x; w) + b``."""
        raise NotImplementedError

    def operator_norm(self) -> float:
        """``||W_eff||_2`` of the weight in use (``normalized_weight()``), for certifying a block's Lipschitz
        constant: exact (largest singular value) for a linear layer; a convolution estimates it by
        :data:`NORM_ITERATIONS` power-iteration steps from the stored vectors (an estimate from below).

        Kept until ``weight``, ``u`` or ``v`` change (their version counters and storage), so the inverse, which asks
        for it on every call, pays for it once per set of weights."""
        key = self._key()
        cached = self._norm_cache
        if cached is None or cached[0] != key:
            cached = self._norm_cache = (key, self._operator_norm())
        return cached[1]

    @torch.no_grad()
    def _operator_norm(self) -> float:
        raise NotImplementedError

    def transpose(self, y: Tensor, w: Tensor) -> Tensor:
        """The adjoint (vector-Jacobian product) ``y -> op^T(y; w)``."""
        return self._adjoint(y, w)

    def forward(self, x: Tensor) -> Tensor:
        return self.affine(x, self.normalized_weight(update=True))


class SpectralNormLinear(SpectralNormLayer):
    """``x -> x W_eff^T + b`` with ``||W_eff||_2 <= c``. ``x``: (..., in_features) -> (..., out_features)."""

    def __init__(self, in_features: int, out_features: int, coeff: float = 0.9, n_power_iterations: int = 1,
                 init_iterations: int = 50, gain: float = 1.0, tol: float | None = None) -> None:
        super().__init__(coeff, n_power_iterations, init_iterations, gain, tol)
        lin = nn.Linear(in_features, out_features)
        self.weight = nn.Parameter(lin.weight.detach().clone())
        self.bias = nn.Parameter(lin.bias.detach().clone())
        self._init_vectors((out_features,), (in_features,))

    def _op(self, x: Tensor, w: Tensor) -> Tensor:
        """``W x`` for a vector ``x``: (in_features,) -> (out_features,), one product (a single node in a graph)."""
        return torch.mv(w, x)

    def _adjoint(self, y: Tensor, w: Tensor) -> Tensor:
        """``W^T y``: (out_features,) -> (in_features,)."""
        return torch.mv(w.T, y)

    def affine(self, x: Tensor, w: Tensor) -> Tensor:
        return F.linear(x, w, self.bias)

    @torch.no_grad()
    def _operator_norm(self) -> float:
        return float(torch.linalg.matrix_norm(self.normalized_weight().double(), ord=2))


class SpectralNormConv2d(SpectralNormLayer):
    """Stride-1 'same' convolution with ``||conv_W_eff||_2 <= c`` as an operator on ``(C_in, H, W)`` inputs.

    ``x``: (B, in_channels, H, W) -> (B, out_channels, H, W); ``input_hw`` = (H, W) is the size the operator norm
    is taken at (the norm of a padded convolution depends on it).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, input_hw: tuple[int, int],
                 coeff: float = 0.9, n_power_iterations: int = 1, init_iterations: int = 50,
                 gain: float = 1.0, tol: float | None = None) -> None:
        super().__init__(coeff, n_power_iterations, init_iterations, gain, tol)
        if kernel_size % 2 != 1:
            raise ValueError(f"kernel_size must be odd for a size-preserving convolution, got {kernel_size}")
        self.padding = kernel_size // 2
        self.input_hw = (int(input_hw[0]), int(input_hw[1]))
        conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=self.padding)
        self.weight = nn.Parameter(conv.weight.detach().clone())
        assert conv.bias is not None
        self.bias = nn.Parameter(conv.bias.detach().clone())
        h, w = self.input_hw
        self._init_vectors((1, out_channels, h, w), (1, in_channels, h, w))

    def _op(self, x: Tensor, w: Tensor) -> Tensor:
        return F.conv2d(x, w, padding=self.padding)

    def _adjoint(self, y: Tensor, w: Tensor) -> Tensor:
        return F.conv_transpose2d(y, w, padding=self.padding)

    def affine(self, x: Tensor, w: Tensor) -> Tensor:
        return F.conv2d(x, w, self.bias, padding=self.padding)

    @torch.no_grad()
    def _operator_norm(self) -> float:
        w = self.normalized_weight()
        v = self.v.clone()
        for _ in range(NORM_ITERATIONS):
            v = _normalize(self._adjoint(_normalize(self._op(v, w)), w))
        return float(self._op(v, w).norm())

