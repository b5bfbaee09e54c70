"""Log-det estimators for a residual block ``F(x) = x + g(x)`` with ``Lip(g) < 1``.

All work from a vector-Jacobian product ``vjp(v) = v^T J_g(x)`` batched over probes, ``v``: (P, B, *shape) ->
(P, B, *shape), built once per forward from one evaluation of ``g`` (:meth:`models.iresnet.ResidualNet.linearize`),
so the terms reuse one graph. Result shapes are (B,).

- ``exact``: ``log|det(I + J_g)|`` from the full Jacobian (:func:`models.jacobian.jacobian_from_vjp`), small D only.
- ``series`` (Behrmann et al., "Invertible Residual Networks", ICML 2019, sec. 4):
  ``log det(I + J) = sum_{k>=1} (-1)^{k+1} tr(J^k) / k``, truncated after ``n`` terms, each trace by Hutchinson's
  estimator ``tr(A) ~ v^T A v`` with Gaussian or Rademacher probes ``v``; biased by the truncation.
- ``roulette`` (Chen et al., "Residual Flows for Invertible Generative Modeling", NeurIPS 2019, sec. 3.1): the
  Russian-roulette estimator ``sum_{k=1}^{N} (-1)^{k+1} tr(J^k) / (k P(N >= k))`` with ``N = n0 + T``, ``n0`` terms
  always computed and a random tail ``T`` (geometric on {1, 2, ...} or Poisson on {0, 1, ...}); unbiased.
- Neumann gradient (Chen et al. 2019, sec. 3.2, the memory-saving option): the value is computed without a
  graph, and the gradient of ``log det(I + J) = tr((I + J)^{-1} dJ)`` is estimated by
  ``w^T dJ v`` with ``w^T = sum_{k=0}^{N-1} (-1)^k v^T J^k / P(N >= k + 1)`` (computed without a graph) through one
  differentiable vjp, so the memory does not grow with the number of terms.

For vectors of at most ``terms x probes`` dimensions (a 2-D density), :func:`block_logdet` first builds the full
Jacobian (:func:`models.jacobian.jacobian_from_vjp`: D rows through the network in one call) and runs the series on
it (:func:`matrix_series`: a (D, D) product per term instead of a pass through the network): the same estimate from
the same probes, for D rows through the network instead of ``terms x probes``.

The settings of all of them are one :class:`models.base.EstimatorSettings` (part of the model contract).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from models.base import EstimatorSettings
from models.jacobian import jacobian_from_vjp

__all__ = ["VJP", "EstimatorSettings", "block_logdet", "exact_logdet", "matrix_series", "neumann_coefficients",
           "neumann_series", "power_series", "roulette_weights", "sample_probes", "sample_tail", "series_coefficients",
           "tail_survival"]

VJP = Callable[[Tensor], Tensor]


def sample_probes(shape: Sequence[int], kind: str, like: Tensor, generator: torch.Generator | None) -> Tensor:
    """Hutchinson probes with ``E[v v^T] = I``: Gaussian or Rademacher, of ``shape`` = (P, B, *x_shape)."""
    v = torch.randn(tuple(shape), generator=generator, dtype=like.dtype, device=like.device)
    return v.sign() if kind == "rademacher" else v


def tail_survival(tail: str, param: float, j: int) -> float:
    """``P(T >= j)`` of the roulette tail ``T``."""
    if j <= 0:
        return 1.0
    if tail == "geometric":  # T on {1, 2, ...}: P(T >= j) = (1 - p)^(j - 1)
        return (1.0 - param) ** (j - 1)
    # Poisson(lambda) on {0, 1, ...}: 1 - CDF(j - 1)
    cdf = sum(math.exp(-param) * param**i / math.factorial(i) for i in range(j))
    return max(1.0 - cdf, 0.0)


def sample_tail(tail: str, param: float, generator: torch.Generator | None) -> int:
    """One draw of the roulette tail ``T``."""
    device = generator.device if generator is not None else torch.device("cpu")
    u = float(torch.rand((), generator=generator, dtype=torch.float64, device=device))
    if tail == "geometric":  # inverse CDF on {1, 2, ...}
        return 1 if param >= 1 else 1 + math.floor(math.log1p(-u) / math.log1p(-param))
    j, cdf, pmf = 0, math.exp(-param), math.exp(-param)
    while u > cdf and j < 10_000:
        j += 1
        pmf *= param / j
        cdf += pmf
    return j


def roulette_weights(settings: EstimatorSettings, generator: torch.Generator | None) -> list[float]:
    """Draw ``N = n0 + T`` and return the term weights ``1 / P(N >= k)`` for ``k = 1..N`` (capped at max_terms)."""
    n0 = settings.exact_terms
    n = min(n0 + sample_tail(settings.tail, settings.tail_param, generator), settings.max_terms)
    return [1.0 / tail_survival(settings.tail, settings.tail_param, k - n0) for k in range(1, n + 1)]


def _dot(a: Tensor, b: Tensor) -> Tensor:
    """Per-example inner product averaged over probes: (P, B, ...) x (P, B, ...) -> (B,)."""
    return (a * b).flatten(2).sum(dim=2).mean(dim=0)


def series_coefficients(weights: Sequence[float]) -> list[float]:
    """The power series' term coefficients ``c_k = (-1)^{k+1} weights[k-1] / k``, ``k = 1..len(weights)``."""
    return [(-1) ** (k + 1) * weight / k for k, weight in enumerate(weights, start=1)]


def neumann_coefficients(weights: Sequence[float]) -> list[float]:
    """The Neumann gradient's coefficients ``(-1)^k weights[k]`` of ``v^T J^k``, ``k = 0..len(weights) - 1``."""
    return [(-1) ** k * weight for k, weight in enumerate(weights)]


def power_series(vjp: VJP, v: Tensor, weights: Sequence[float]) -> Tensor:
    """``sum_k (-1)^{k+1} weights[k-1] v^T J^k v / k`` averaged over probes. ``v``: (P, B, ...) -> (B,)."""
    w = v
    acc: Tensor | None = None  # sum_k c_k v^T J^k, dotted with v once at the end
    for coeff in series_coefficients(weights):
        w = vjp(w)
        if acc is None:
            acc = w if coeff == 1.0 else coeff * w
        else:
            acc = acc.add(w, alpha=coeff)  # one fused operation instead of a product and a sum
    assert acc is not None
    return _dot(acc, v)


def neumann_series(vjp: VJP, v: Tensor, weights: Sequence[float]) -> Tensor:
    """The power-series value without a graph, plus a surrogate whose gradient is the Neumann estimate.

    Returns (B,) equal in value to :func:`power_series` with these weights; its gradient is
    ``w^T (dJ) v`` with ``w^T = sum_{k=0}^{N-1} (-1)^k weights[k] v^T J^k``.
    """
    with torch.no_grad():
        w = v
        acc = torch.zeros_like(v)
        neumann = torch.zeros_like(v)
        for a, c in zip(neumann_coefficients(weights), series_coefficients(weights), strict=True):
            neumann.add_(w, alpha=a)
            w = vjp(w)
            acc.add_(w, alpha=c)
        value = _dot(acc, v)
    if not torch.is_grad_enabled():
        return value
    surrogate = _dot(vjp(neumann), v)
    return value + (surrogate - surrogate.detach())


def exact_logdet(vjp: VJP, x: Tensor) -> Tensor:
    """``log|det(I + J_g)|`` from the full Jacobian (:func:`models.jacobian.jacobian_from_vjp`). ``x``: (B, *shape)
    -> (B,)."""
    jac = jacobian_from_vjp(vjp, x)  # (B, D, D)
    return torch.linalg.slogdet(torch.eye(jac.shape[1], dtype=x.dtype, device=x.device) + jac)[1]


def matrix_series(jac: Tensor, v: Tensor, weights: Sequence[float], neumann_grad: bool = False) -> Tensor:
    """:func:`power_series` (or, with ``neumann_grad``, :func:`neumann_series`) on an explicit Jacobian
    ``jac``: (B, D, D) of a vector block, with probes ``v``: (P, B, D) -> (B,), the same value and gradient.

    The row vectors ``sum_k c_k v^T J^k`` are evaluated by Horner's rule, ``r <- c_k v^T + r J``, one fused
    multiply-add of (B, P, D) by (B, D, D) per term; the Neumann gradient's ``w^T`` the same way, under ``no_grad``,
    with the one differentiable product ``w^T J`` of the surrogate."""
    vt = v.transpose(0, 1).contiguous()  # (B, P, D): row vectors for batched products

    def horner(coeffs: Sequence[float]) -> Tensor:  # sum_{k>=0} coeffs[k] v^T J^k
        r = coeffs[-1] * vt
        for c in reversed(coeffs[:-1]):
            r = torch.baddbmm(vt, r, jac, beta=c)
        return r

    def dot(a: Tensor) -> Tensor:
        return (a * vt).sum(dim=2).mean(dim=1)

    series = [0.0, *series_coefficients(weights)]
    if not neumann_grad:
        return dot(horner(series))
    with torch.no_grad():
        value = dot(horner(series))
        w = horner(neumann_coefficients(weights))
    if not torch.is_grad_enabled():
        return value
    surrogate = dot(torch.bmm(w, jac))
    return value + (surrogate - surrogate.detach())


def block_logdet(vjp: VJP, x: Tensor, settings: EstimatorSettings, generator: torch.Generator | None) -> Tensor:
    """The block's log-det by ``settings.method``. ``x``: (B, *shape) (only its shape/dtype used) -> (B,)."""
    if settings.method == "exact":
        return exact_logdet(vjp, x)
    if settings.method == "series":
        weights = [1.0] * settings.terms
    else:
        weights = roulette_weights(settings, generator)
    if not weights:
        return torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
    v = sample_probes((settings.probes, *x.shape), settings.probe, x, generator)
    if x.dim() == 2 and x.shape[1] <= len(weights) * settings.probes:
        return matrix_series(jacobian_from_vjp(vjp, x), v, weights, settings.neumann_grad)
    if settings.neumann_grad:
        return neumann_series(vjp, v, weights)
    return power_series(vjp, v, weights)
