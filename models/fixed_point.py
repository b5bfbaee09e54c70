"""Solvers for inverting residual blocks: plain iteration, Anderson acceleration and Newton's method.

A residual block ``y = x + g(x)`` with ``Lip(g) = L < 1`` is inverted by the Banach iteration
``x_{k+1} = G(x_k) = y - g(x_k)``, whose error shrinks like ``L^k`` (Behrmann et al., "Invertible Residual
Networks", ICML 2019, Algorithm 1). Anderson acceleration (Anderson 1965; type-II form of Walker & Ni, SIAM
J. Numer. Anal. 2011) extrapolates from the last ``m`` iterates: with residuals ``f_i = G(x_i) - x_i`` it solves
``gamma = argmin ||f_k - dF gamma||`` (per example, ridge-regularised normal equations) and steps to
``x_{k+1} = G(x_k) - dG gamma``, where ``dF``, ``dG`` hold successive differences of ``f`` and ``G(x)``.

Newton's method (:func:`newton`, for small vectors) solves ``(I + J_g(x_k)) dx = G(x_k) - x_k`` with the block's
exact Jacobian, shortens the step by backtracking where it does not lower the residual enough (Armijo's rule on
``||G(x) - x||``; Nocedal & Wright, "Numerical Optimization", 2nd ed. 2006, sec. 11.2), and converges quadratically
near the solution.

All three stop when ``max |G(x_k) - x_k| <= atol + rtol max |G(x_k)|`` (max over the batch), or, given an
:class:`ErrorBound`, when the a-posteriori Banach bound on the error of ``G(x_k)`` meets its target: for ``G`` with
Lipschitz constant ``L < 1`` and fixed point ``x*``, any ``x`` has ``||x* - x|| <= ||G(x) - x|| + L ||x* - x||``, so
``||x* - G(x)|| <= L ||x* - x|| <= L / (1 - L) ||G(x) - x||`` (per example, 2-norm; it holds for Anderson's
extrapolated points and Newton's iterates too, since it asks nothing of how ``x`` was found). They return ``G(x_k)``
and report iterations (evaluations of ``G``, i.e. of ``g``), the final residual ``max |G(x_k) - x_k|``, the bound
where asked for, whether the criterion was met within ``max_iter``, and the residual after every iteration. A
non-finite residual stops the solver with ``converged=False``, and so does a residual that has not gone below its
least value for :data:`STALL` iterations: in finite precision the iteration has reached its rounding floor, and more
iterations only cost time.

On a GPU, TF32 arithmetic (cuDNN's default for float32 convolutions) rounds ``g`` to about 1e-3 relative, so the
iteration cannot get below that: measured on an H100 (2026-11-23), a trained convolutional i-ResNet's inverse
stalled at residual 3e-5..4e-4 for 300 iterations per block with TF32 and converged in 5-36 iterations to 5e-6
without. :func:`ieee_fp32` turns TF32 off around a solve.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch
from torch import Tensor


@contextlib.contextmanager
def ieee_fp32() -> Iterator[None]:
    """Full float32 precision inside the block: TF32 off for cuDNN convolutions and CUDA matrix products (the
    previous settings are restored on exit, also after an exception). A no-op for CPU and float64 work."""
    cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
    saved = (cudnn.allow_tf32, matmul.allow_tf32)
    cudnn.allow_tf32, matmul.allow_tf32 = False, False
    try:
        yield
    finally:
        cudnn.allow_tf32, matmul.allow_tf32 = saved


#: iterations without a new least residual after which a solve counts as stalled at its rounding floor
STALL = 20
#: Newton's backtracking halves a step at most this many times; then the example takes the plain step ``G(x)``,
#: which a contraction always accepts (``||G(G(x)) - G(x)|| <= Lip ||G(x) - x||``)
NEWTON_HALVINGS = 5
#: Armijo's sufficient decrease: a step of length ``t`` is taken where the residual norm falls below
#: ``(1 - NEWTON_ARMIJO t)`` times its value at the point the step starts from
NEWTON_ARMIJO = 1e-4
#: the stall window of Newton's method: longer than the halvings of one backtracking, so that a step being
#: shortened is not taken for a stall (measured on a quick-suite 2-D i-ResNet, c = 0.99: a window of 3 stopped
#: solves that 4 let converge); away from the floor a Newton iteration lowers the least residual within a few steps
NEWTON_STALL = NEWTON_HALVINGS + 1


@dataclass(frozen=True)
class ErrorBound:
    """The a-posteriori bound ``lipschitz / (1 - lipschitz) * max_b ||G(x)_b - x_b||_2`` on
    ``max_b ||x*_b - G(x)_b||_2`` for a map ``G`` with Lipschitz constant ``lipschitz < 1`` (2-norm per example),
    recorded every iteration; the solve stops when it is at most ``target`` (None: the residual tolerance decides)."""

    lipschitz: float
    target: float | None = None

    def __post_init__(self) -> None:
        if not 0 <= self.lipschitz < 1:
            raise ValueError(f"an error bound needs a contraction, got Lipschitz constant {self.lipschitz}")
        if self.target is not None and not self.target > 0:
            raise ValueError(f"the error target must be positive, got {self.target}")

    @property
    def factor(self) -> float:
        """``L / (1 - L)``: the bound per unit of the 2-norm residual."""
        return self.lipschitz / (1 - self.lipschitz)


@dataclass
class SolveResult:
    """What a solve did: ``iterations`` evaluations of G, final max-abs ``residual``, ``converged``, history, and the
    a-posteriori ``error_bound`` of the returned point (None without an :class:`ErrorBound`)."""

    iterations: int = 0
    residual: float = 0.0
    converged: bool = False
    history: list[float] = field(default_factory=list)
    error_bound: float | None = None


def _check(gx: Tensor, x: Tensor, atol: float, rtol: float, bound: ErrorBound | None, result: SolveResult
           ) -> tuple[float, bool, Tensor]:
    """Record the residual (and bound) of ``G(x) = gx`` in ``result``; returns ``(residual, criterion met,
    G(x) - x)``, the last for the solvers that step with it."""
    diff = gx - x
    residual_stop = bound is None or bound.target is None
    reductions = [diff.abs().amax()]
    if bound is not None:
        reductions.append(torch.linalg.vector_norm(diff.flatten(1), dim=1).amax())
    if residual_stop:
        reductions.append(gx.abs().amax())  # the scale of the residual test
    values = torch.stack(reductions).tolist()  # one device sync
    residual = values[0]
    result.residual = residual
    result.history.append(residual)
    finite = math.isfinite(residual)
    if bound is not None:
        result.error_bound = bound.factor * values[1]
    if residual_stop:
        return residual, finite and residual <= atol + rtol * values[-1], diff
    assert bound is not None and bound.target is not None and result.error_bound is not None
    return residual, finite and result.error_bound <= bound.target, diff


def stalled(history: list[float], window: int = STALL) -> bool:
    """No residual of the last ``window`` iterations is below the least one before them."""
    return len(history) > window and min(history[-window:]) >= min(history[:-window])


@torch.no_grad()
def fixed_point(G: Callable[[Tensor], Tensor], x0: Tensor, atol: float, rtol: float, max_iter: int,
                bound: ErrorBound | None = None) -> tuple[Tensor, SolveResult]:
    """Plain iteration ``x <- G(x)`` from ``x0``: (B, ...) -> (``x``: (B, ...), result); stops on the residual
    tolerance, or on ``bound`` where given."""
    result = SolveResult()
    x = x0
    for k in range(1, max_iter + 1):
        gx = G(x)
        residual, met, _ = _check(gx, x, atol, rtol, bound, result)
        result.iterations = k
        x = gx
        if met or not math.isfinite(residual) or stalled(result.history):
            result.converged = met
            break
    return x, result


@torch.no_grad()
def anderson(G: Callable[[Tensor], Tensor], x0: Tensor, atol: float, rtol: float, max_iter: int,
             memory: int = 5, ridge: float = 1e-10, bound: ErrorBound | None = None) -> tuple[Tensor, SolveResult]:
    """Anderson-accelerated iteration from ``x0``: (B, ...) -> (``x``: (B, ...), result); stops on the residual
    tolerance, or on ``bound`` where given.

    The last ``memory`` differences of ``f`` and ``G(x)`` live in ring buffers ``dF``, ``dG`` of shape
    (B, memory, n), and their Gram matrix ``dF dF^T`` (B, memory, memory) gains one row and column per iteration,
    so an iteration costs one evaluation of ``G``, a few products of (B, memory, n) and one batched solve of a
    (B, m, m) system. An extrapolated point with a non-finite entry is replaced by the plain step there.

    Args:
        memory: how many past differences ``m`` the extrapolation uses.
        ridge: Tikhonov term relative to the mean diagonal of ``dF^T dF`` (at least 100 machine epsilons; keeps
            the small solve well posed).
    """
    result = SolveResult()
    b = x0.shape[0]
    n = x0[0].numel()
    d_f = x0.new_zeros(b, memory, n)
    d_g = x0.new_zeros(b, memory, n)
    gram = x0.new_zeros(b, memory, memory)
    pair = x0.new_zeros(b, n, 2)  # the newest difference of f and f itself, for one product with d_f
    ridge_eye = max(ridge, 100 * torch.finfo(x0.dtype).eps) * torch.eye(memory, dtype=x0.dtype, device=x0.device)
    tiny = torch.finfo(x0.dtype).tiny
    x = x0
    prev_f: Tensor | None = None
    prev_g: Tensor | None = None
    filled = 0  # differences held; the empty slots are zero, and so are their rows of the Gram matrix and gamma
    slot = 0  # where the next difference goes
    best = math.inf
    gx = x0
    for k in range(1, max_iter + 1):
        gx = G(x)
        residual, met, f = _check(gx, x, atol, rtol, bound, result)
        result.iterations = k
        if met or not math.isfinite(residual) or stalled(result.history):
            result.converged = met
            break
        if residual > 1e3 * best:  # extrapolation went astray: restart from the plain step
            filled, slot, prev_f = 0, 0, None
            d_f.zero_()
            d_g.zero_()
            gram.zero_()
        best = min(best, residual)
        g_flat = gx.reshape(b, n)
        f_flat = f.reshape(b, n)
        if prev_f is None or prev_g is None:
            prev_f, prev_g = f_flat, g_flat
            x = gx
            continue
        torch.sub(f_flat, prev_f, out=d_f[:, slot])
        torch.sub(g_flat, prev_g, out=d_g[:, slot])
        pair[:, :, 0] = d_f[:, slot]
        pair[:, :, 1] = f_flat
        products = torch.bmm(d_f, pair)  # (B, memory, 2): the new Gram column and dF f
        gram[:, slot, :] = products[:, :, 0]
        gram[:, :, slot] = products[:, :, 0]
        filled = min(filled + 1, memory)
        slot = (slot + 1) % memory
        prev_f, prev_g = f_flat, g_flat
        scale = gram.diagonal(dim1=1, dim2=2).sum(dim=1).div(filled).clamp_min(tiny)
        gamma = torch.linalg.solve_ex(gram + scale[:, None, None] * ridge_eye, products[:, :, 1:])[0]  # (B, m, 1)
        if not bool(torch.isfinite(gamma).all()):
            x = gx
            continue
        x = (g_flat - (gamma * d_g).sum(dim=1)).reshape(x0.shape)
    return gx, result


@torch.no_grad()
def newton(linearize: Callable[[Tensor], tuple[Tensor, Callable[[], Tensor]]], x0: Tensor, atol: float,
           rtol: float, max_iter: int, bound: ErrorBound | None = None) -> tuple[Tensor, SolveResult]:
    """Newton's method on ``x - G(x) = 0`` for ``G(x) = y - g(x)`` from ``x0``: (B, D) -> (``x``: (B, D), result).

    ``linearize(x)`` returns ``G(x)``: (B, D) and a function giving ``J_g(x)``: (B, D, D). At a point ``x_k``
    taken (the start, or one that passed the test below) the direction ``d`` solves ``(I + J_g(x_k)) d = G(x_k) -
    x_k`` per example (a batched LU solve; at D = 2 it measured faster than the closed form's ten elementwise
    operations; a non-finite solution is replaced by the plain direction ``G(x_k) - x_k``); ``I + J_g`` is invertible
    wherever ``||J_g|| < 1``, and near the solution the error squares each step (Newton's quadratic convergence)
    against the factor ``Lip(g)`` of plain iteration. The next point evaluated is ``x_k + t d``, first with
    ``t = 1``; it is taken where its residual norm is at most ``(1 - NEWTON_ARMIJO t)`` times that of ``x_k`` (the
    Newton direction lowers ``||x - G(x)||`` for a small enough ``t``), and otherwise ``t`` is halved for that
    example (backtracking, one evaluation per try), after :data:`NEWTON_HALVINGS` halvings replaced by the plain
    step ``G(x_k)``. Full steps alone overshoot where ``I + J_g`` is near singular (``Lip(g)`` close to 1): on a
    quick-suite 2-D i-ResNet (c = 0.99) they rise about 10x and fall back, iteration after iteration, until the
    stall rule stops the solve at errors of 1.1-1.4. The stopping rule, the returned point ``G(x)`` of the last
    point evaluated and its a-posteriori bound are those of :func:`fixed_point` (the bound asks nothing of how ``x``
    was found), except that it counts as stalled after :data:`NEWTON_STALL` iterations without a new least
    residual; an iteration is one evaluation of ``G`` and one Jacobian.
    """
    result = SolveResult()
    eye = torch.eye(x0.shape[1], dtype=x0.dtype, device=x0.device)
    shortest = 0.5 ** NEWTON_HALVINGS  # a step halved more often than this gives way to the plain step
    x = x0
    gx = x0
    # per example, the point x_k taken, G(x_k), the direction d and ||G(x_k) - x_k|| (None before the first point)
    taken_x = taken_g = taken_d = x0
    taken_norm: Tensor | None = None
    length: Tensor | None = None  # t per example; None while every example takes full steps
    for k in range(1, max_iter + 1):
        gx, jacobian = linearize(x)
        residual, met, f = _check(gx, x, atol, rtol, bound, result)
        result.iterations = k
        if met or not math.isfinite(residual) or stalled(result.history, NEWTON_STALL):
            result.converged = met
            break
        norm = f.norm(dim=1)
        step = torch.linalg.solve_ex(jacobian() + eye, f.unsqueeze(2))[0].squeeze(2)
        step = torch.where(torch.isfinite(step), step, f)
        if taken_norm is not None:
            accept = norm <= (1 - NEWTON_ARMIJO * (1.0 if length is None else length)) * taken_norm
            if not bool(accept.all()):  # backtrack where the point falls short: keep x_k, shorten its step
                pick = accept[:, None]
                taken_x, taken_g, taken_d = (torch.where(pick, x, taken_x), torch.where(pick, gx, taken_g),
                                             torch.where(pick, step, taken_d))
                taken_norm = torch.where(accept, norm, taken_norm)
                length = torch.where(accept, 1.0, 0.5 if length is None else 0.5 * length)
                x = torch.where((length < shortest)[:, None], taken_g, torch.addcmul(taken_x, length[:, None], taken_d))
                continue
        # the common case: every example takes its point and a full step
        taken_x, taken_g, taken_d, taken_norm, length = x, gx, step, norm, None
        x = x + step
    return gx, result
