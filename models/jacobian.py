"""Jacobians by autograd: the one utility every exact log-det, Lipschitz estimate and conformance check uses.

A map here is ``fn: (B, *shape) -> (B, *shape_out)`` and its per-example Jacobian ``J_b = d fn(x)_b / d x_b`` is
returned as ``(B, D_out, D_in)`` with ``D = prod(shape)``. Three ways to get the full Jacobian:

- :func:`batch_jacobian` with ``batched=False`` (the reference): one call of ``fn`` per example on a batch of
  one, so it is right for any map, including one whose examples interact (batch statistics in training mode);
  costs B forward calls and B x D_out backward passes.
- :func:`batch_jacobian` with ``batched=True``: one forward of the whole batch and ``D_out`` backward passes,
  row ``i`` of every example's Jacobian at once (``sum_b y_b[i]`` differentiated by ``x``). Needs a map that
  treats examples independently (``eval()`` mode), so that the batched Jacobian is block diagonal.
- :func:`jacobian_by_replicas`: each example repeated ``D`` times, copy ``j`` differentiated along the unit
  vector ``e_j``, so one forward and one backward pass over ``B x D`` rows give all ``B`` Jacobians and the
  outputs; for square maps (bijections) of moderate ``B x D`` (callers chunk the batch). Same independence
  condition.

A model that has its own vector-Jacobian product (an i-ResNet block, :meth:`models.iresnet.ResidualNet.linearize`)
builds the full Jacobian from it with :func:`jacobian_from_vjp`. From the Jacobian: :func:`jacobian_slogdet`
(``log|det J|``) and :func:`jacobian_singular_values`. Without it, at large D: :class:`JacobianProducts` gives
``J v`` and ``J^T u`` from one forward graph; :func:`lanczos_extremes` finds both extreme singular values of every
point at once by Lanczos on ``J^T J`` (one JVP and one VJP per step), with an a-posteriori bound on each one's
error; :func:`power_sigma_max` / :func:`power_sigma_min` find them by power iteration on ``J^T J`` and by inverse
iteration with conjugate-gradient solves.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

Map = Callable[[Tensor], Tensor]

__all__ = ["FactoredVJP", "JacobianProducts", "LanczosResult", "Map", "batch_jacobian", "jacobian_by_replicas",
           "jacobian_from_vjp", "jacobian_singular_values", "jacobian_slogdet", "lanczos_extremes", "power_sigma_max",
           "power_sigma_min"]


class FactoredVJP(abc.ABC):
    """A vector-Jacobian product that also knows its full Jacobian (:class:`models.iresnet.ChainVJP`). A base class
    rather than a runtime-checkable Protocol: ``isinstance`` against a Protocol inspects the attributes on every
    call (measured 9 us for a ChainVJP, 18 us for a plain function; once per log-det or Newton step), against a
    base class 0.3-0.4 us."""

    @abc.abstractmethod
    def __call__(self, v: Tensor) -> Tensor:
        """``v^T J``: (P, B, D) -> (P, B, D)."""

    @abc.abstractmethod
    def jacobian(self) -> Tensor:
        """(B, D, D), or (1, D, D) when it is the same at every point."""


# ----------------------------------------------------------------------------------------- full Jacobian
def batch_jacobian(fn: Map, x: Tensor, *, batched: bool = False, create_graph: bool = False) -> Tensor:
    """Per-example Jacobians: ``x``: (B, *shape) -> (B, D_out, D_in).

    Args:
        fn: the map (see the module docstring).
        x: the points.
        batched: False: one call of ``fn`` per example (any map); True: one batched forward and ``D_out``
            backward passes (``fn`` must treat examples independently).
        create_graph: keep the graph, so the Jacobian can be differentiated (e.g. by the parameters of ``fn``);
            otherwise it is returned detached.
    """
    if not batched:
        shape = x.shape[1:]
        rows = []
        for xi in x:
            def single(v: Tensor, _shape: torch.Size = shape) -> Tensor:
                return fn(v.reshape(1, *_shape)).reshape(-1)

            rows.append(torch.autograd.functional.jacobian(single, xi.reshape(-1).detach(),
                                                           create_graph=create_graph))
        return torch.stack(rows)
    x = x.detach().requires_grad_(True)
    rows = []
    with torch.enable_grad():
        flat = fn(x).reshape(x.shape[0], -1)
        for i in range(flat.shape[1]):
            (g,) = torch.autograd.grad(flat[:, i].sum(), x, retain_graph=create_graph or i + 1 < flat.shape[1],
                                       create_graph=create_graph, allow_unused=True)
            rows.append(torch.zeros_like(x) if g is None else g)
    jac = torch.stack([r.reshape(r.shape[0], -1) for r in rows], dim=1)
    return jac if create_graph else jac.detach()


def jacobian_by_replicas(fn: Map, x: Tensor, *, create_graph: bool = False) -> tuple[Tensor, Tensor]:
    """Outputs and per-example Jacobians of a square map from one forward and one backward pass over B x D rows.

    ``x``: (B, *shape) -> (``fn(x)``: (B, *shape_out), (B, D, D)); ``fn`` must treat examples independently and
    have ``D_out = D_in = D``. Detached unless ``create_graph``.
    """
    b, d = x.shape[0], math.prod(x.shape[1:])
    rep = x.detach().repeat_interleave(d, dim=0).requires_grad_(True)
    with torch.enable_grad():
        y_rep = fn(rep)
        if math.prod(y_rep.shape[1:]) != d:
            raise ValueError(f"jacobian_by_replicas needs a square map; got D_in {d}, D_out "
                             f"{math.prod(y_rep.shape[1:])}")
        eye = torch.eye(d, device=x.device, dtype=y_rep.dtype).repeat(b, 1)
        (rows,) = torch.autograd.grad(y_rep.reshape(b * d, d), rep, grad_outputs=eye, create_graph=create_graph)
    jac = rows.reshape(b, d, d)
    y = y_rep.reshape(b, d, *y_rep.shape[1:])[:, 0]
    return (y, jac) if create_graph else (y.detach(), jac.detach())


def jacobian_from_vjp(vjp: Map, x: Tensor) -> Tensor:
    """The full per-example Jacobian ``J(x)``: (B, D, D) of a square map from its vector-Jacobian product
    ``vjp(v) = v^T J(x)``, batched over a leading probe axis ((P, B, *shape) -> (P, B, *shape)), at ``x``: (B, *shape):
    one call on the D unit vectors (row ``i`` of ``J`` is ``e_i^T J``). Differentiable where ``vjp`` is. A
    :class:`FactoredVJP` (:class:`models.iresnet.ChainVJP`, which knows the Jacobian's factors) gives it directly,
    without the product against the unit vectors."""
    if isinstance(vjp, FactoredVJP):
        jac = vjp.jacobian()
        return jac.expand(x.shape[0], *jac.shape[1:])
    b, d = x.shape[0], math.prod(x.shape[1:])
    eye = torch.eye(d, dtype=x.dtype, device=x.device)
    basis = eye[:, None, :].expand(d, b, d).reshape(d, b, *x.shape[1:])
    return vjp(basis).reshape(d, b, d).transpose(0, 1)


def jacobian_slogdet(fn: Map, x: Tensor, *, batched: bool = False, create_graph: bool = False) -> Tensor:
    """Exact ``log|det d fn / dx|`` per example. ``x``: (B, *shape) -> (B,). Options as :func:`batch_jacobian`;
    with ``create_graph`` the result is differentiable by the parameters of ``fn``."""
    return torch.linalg.slogdet(batch_jacobian(fn, x, batched=batched, create_graph=create_graph))[1]


def jacobian_singular_values(fn: Map, x: Tensor, *, batched: bool = False) -> Tensor:
    """Singular values of each example's Jacobian, descending: (B, *shape) -> (B, min(D_out, D_in)).

    Examples whose Jacobian has a non-finite entry (an overflow out of distribution) get NaN rows.
    """
    jac = batch_jacobian(fn, x, batched=batched)
    finite = torch.isfinite(jac).flatten(1).all(dim=1)
    out = torch.full((jac.shape[0], min(jac.shape[1:])), float("nan"), dtype=jac.dtype, device=jac.device)
    if bool(finite.any()):
        out[finite] = torch.linalg.svdvals(jac[finite])
    return out


# ----------------------------------------------------------------------------------------- products
class JacobianProducts:
    """``J v`` and ``J^T u`` for every point of a batch, from one forward graph of ``fn`` at ``x``.

    ``J^T u`` is one vector-Jacobian product; ``J v`` is the double-backward trick ``J v = d/du <J^T u, v>``
    (``J^T u`` is linear in ``u``), so both reuse the graph built once here. ``fn`` must treat examples
    independently. ``trivial`` is True when the output does not depend on ``x`` through autograd.
    """

    def __init__(self, fn: Map, x: Tensor) -> None:
        self.x = x.detach().requires_grad_(True)
        with torch.enable_grad():
            self.y = fn(self.x)
            self._u = torch.zeros_like(self.y, requires_grad=True)
            self.trivial = not self.y.requires_grad
            self._jtu = self._u
            if not self.trivial:
                (self._jtu,) = torch.autograd.grad(self.y, self.x, self._u, create_graph=True)

    def vjp(self, u: Tensor) -> Tensor:
        """``J^T u``: (B, *shape_out) -> (B, *shape)."""
        (g,) = torch.autograd.grad(self.y, self.x, u, retain_graph=True)
        return g.detach()

    def jvp(self, v: Tensor) -> Tensor:
        """``J v``: (B, *shape) -> (B, *shape_out)."""
        (g,) = torch.autograd.grad(self._jtu, self._u, v, retain_graph=True, allow_unused=True)
        return torch.zeros_like(self.y) if g is None else g.detach()


def _rownorm(t: Tensor) -> Tensor:
    return t.reshape(t.shape[0], -1).norm(dim=1)


def _normalise(t: Tensor) -> Tensor:
    n = _rownorm(t).clamp_min(torch.finfo(t.dtype).tiny)
    return t / n.reshape(-1, *([1] * (t.dim() - 1)))


def _start_vector(x: Tensor, seed: int) -> Tensor:
    g = torch.Generator(device="cpu").manual_seed(seed)
    return _normalise(torch.randn(x.shape, generator=g, dtype=x.dtype).to(x.device))


def power_sigma_max(fn: Map, x: Tensor, iters: int = 100, tol: float = 1e-7, seed: int = 0) -> Tensor:
    """Largest singular value of each example's Jacobian by power iteration on ``J^T J``: (B, *shape) -> (B,).

    Each iteration costs one JVP and one VJP; stops when every point's estimate changes by less than ``tol``
    relatively. The estimate ``||J v||`` with unit ``v`` approaches ``sigma_max`` from below. The start vector
    is drawn from a generator seeded with ``seed``.
    """
    ops = JacobianProducts(fn, x)
    if ops.trivial:
        return torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
    v = _start_vector(x, seed)
    sigma = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
    for _ in range(iters):
        jv = ops.jvp(v)
        new = _rownorm(jv)
        v = _normalise(ops.vjp(jv))
        done = bool(((new - sigma).abs() <= tol * new.abs().clamp_min(1e-30)).all())
        sigma = new
        if done:
            break
    return sigma


def _batched_cg(apply: Map, b: Tensor, iters: int, tol: float) -> Tensor:
    """Solve ``A w = b`` per example for a symmetric positive definite batched operator ``apply``:
    (B, *shape) -> (B, *shape)."""
    def dot(p: Tensor, q: Tensor) -> Tensor:
        return (p * q).reshape(p.shape[0], -1).sum(dim=1).reshape(-1, *([1] * (p.dim() - 1)))

    w = torch.zeros_like(b)
    r = b.clone()
    p = r.clone()
    rr = dot(r, r)
    b_norm = dot(b, b).sqrt()
    for _ in range(iters):
        ap = apply(p)
        alpha = rr / dot(p, ap).clamp_min(torch.finfo(b.dtype).tiny)
        w = w + alpha * p
        r = r - alpha * ap
        rr_new = dot(r, r)
        if bool((rr_new.sqrt() <= tol * b_norm).all()):
            break
        p = r + (rr_new / rr.clamp_min(torch.finfo(b.dtype).tiny)) * p
        rr = rr_new
    return w


def power_sigma_min(fn: Map, x: Tensor, iters: int = 50, tol: float = 1e-7, cg_iters: int | None = None,
                    cg_tol: float = 1e-10, seed: int = 0) -> Tensor:
    """Smallest singular value of each example's Jacobian by inverse iteration: (B, *shape) -> (B,).

    ``v <- (J^T J)^-1 v`` with the solve done by conjugate gradients on JVP/VJP products (``cg_iters`` defaults
    to 2 D). Accurate while ``cond(J)^2`` is well inside the dtype's range.
    """
    ops = JacobianProducts(fn, x)
    if ops.trivial:
        return torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
    cg_iters = cg_iters if cg_iters is not None else 2 * x[0].numel()

    def normal(v: Tensor) -> Tensor:
        return ops.vjp(ops.jvp(v))

    v = _start_vector(x, seed)
    sigma = torch.full((x.shape[0],), float("inf"), dtype=x.dtype, device=x.device)
    for _ in range(iters):
        v = _normalise(_batched_cg(normal, v, cg_iters, cg_tol))
        new = _rownorm(ops.jvp(v))
        done = bool(((new - sigma).abs() <= tol * new.abs().clamp_min(1e-30)).all())
        sigma = new
        if done:
            break
    return sigma


# ----------------------------------------------------------------------------------------- Lanczos
@dataclass
class LanczosResult:
    """Extreme singular values of each point's Jacobian from Lanczos on ``J^T J``, with error bounds.

    Attributes:
        sigma_max, sigma_min: (B,) the square roots of the largest and smallest Ritz values; ``sigma_max`` is
            never above the true largest singular value and ``sigma_min`` never below the true smallest (Ritz
            values lie inside the spectrum). NaN for a point whose products were not finite.
        max_err, min_err: (B,) a-posteriori bounds on the relative error ``|sigma - s| / s`` to the nearest
            singular value ``s`` of ``J``: with the Ritz pair's residual ``r = beta_k |e_k^T y|`` there is an
            eigenvalue ``s^2`` of ``J^T J`` within ``r`` of the Ritz value ``theta = sigma^2``, so
            ``|sigma - s| <= r / sigma`` and ``|sigma - s| / s <= r / (theta - r)`` (``inf`` where ``theta <= r``;
            NaN where the products were not finite). The nearest singular value is the extreme one unless Lanczos
            has not yet told apart the top (bottom) of the spectrum: a cluster of extreme singular values closer
            than the bound can leave ``sigma_max`` at the cluster's second value, an error the bound does not
            cover (at most the cluster's width).
        iters: Lanczos steps taken by the last point to stop (each step one JVP and one VJP for the points still
            running).
        steps: (B,) steps after which each point stopped (reached ``rtol``, or the cap).
        converged: (B,) bool: the point's requested bounds are at most ``rtol``.
    """

    sigma_max: Tensor
    sigma_min: Tensor
    max_err: Tensor
    min_err: Tensor
    iters: int
    steps: Tensor
    converged: Tensor


def _check_due(steps: int) -> bool:
    """Whether Lanczos checks its bounds after ``steps`` steps: every step up to 16, then every ``steps // 8``
    (the dense eigen-decompositions of the tridiagonals then cost about 3 times the last one's, and a point
    runs at most 1/8 more steps than it needed)."""
    return steps <= 16 or steps % max(1, steps // 8) == 0


def _relative_bound(theta: Tensor, resid: Tensor) -> Tensor:
    """``r / (theta - r)`` (B,): the bound on ``|sqrt(theta) - s| / s`` of :class:`LanczosResult`; inf where
    ``theta <= r``."""
    gap = theta - resid
    return torch.where(gap > 0, resid / gap.clamp_min(torch.finfo(theta.dtype).tiny), torch.full_like(theta, math.inf))


def lanczos_extremes(fn: Map, x: Tensor, iters: int = 100, rtol: float = 1e-3, seed: int = 0,
                     need_min: bool = True) -> LanczosResult:
    """Largest and smallest singular values of each example's Jacobian by Lanczos on ``J^T J``.

    ``x``: (B, *shape); ``fn`` must treat examples independently. Every step applies ``J^T J`` to one vector per
    point (a JVP and a VJP through :class:`JacobianProducts`, one graph for all steps and points), orthogonalises
    it against all earlier Lanczos vectors of its point (full re-orthogonalisation, twice: the Krylov basis stays
    orthonormal in floating point, so no spurious copies of converged Ritz values appear), and extends the
    tridiagonal ``T_k``. A point stops once the bounds of :class:`LanczosResult` on its ``sigma_max`` (and with
    ``need_min`` its ``sigma_min``) are at most ``rtol`` (checked every step up to 16 steps, then every ``k // 8``
    steps), or after ``min(iters, D)`` steps; stopped points leave the batch (the graph is rebuilt for the points
    still running, one forward), so a batch of many points costs the sum of their steps, not its slowest point's
    times their number. The extreme Ritz values
    converge at the rate of the Chebyshev polynomials on the spectrum (Kaniel-Paige), much faster than power
    iteration, and ``sigma_min`` needs no inner solves; it is as accurate as ``J^T J`` is resolved in the dtype
    (about ``eps * cond(J)^2`` relatively), so use float64 for ill-conditioned maps. The start vector is drawn from
    a generator seeded with ``seed``. Memory: ``B * min(iters, D) * D`` numbers for the basis.
    """
    ops = JacobianProducts(fn, x)
    b, shape = x.shape[0], x.shape
    dtype, device = x.dtype, x.device
    if ops.trivial:
        zero = torch.zeros(b, dtype=dtype, device=device)
        return LanczosResult(zero, zero.clone(), zero.clone(), zero.clone(), 0, torch.zeros(b, dtype=torch.long),
                             torch.ones(b, dtype=torch.bool))
    q = _start_vector(x, seed).reshape(b, -1)
    k_max = max(1, min(iters, q.shape[1]))
    basis = torch.zeros(b, k_max, q.shape[1], dtype=dtype, device=device)
    nan = torch.full((b,), math.nan, dtype=dtype, device=device)
    out = {key: nan.clone() for key in ("max", "min", "max_err", "min_err")}
    steps = torch.zeros(b, dtype=torch.long, device=device)
    finite_all = torch.ones(b, dtype=torch.bool, device=device)
    rows = torch.arange(b, device=device)  # the points still running, as indices into x
    alphas: list[Tensor] = []
    betas: list[Tensor] = []
    tiny = torch.finfo(dtype).tiny
    taken = 0
    for k in range(k_max):
        basis[:, k] = q
        w = ops.vjp(ops.jvp(q.reshape(len(rows), *shape[1:]))).reshape(len(rows), -1)
        finite = torch.isfinite(w).all(dim=1)
        finite_all[rows] &= finite
        w = torch.where(finite.unsqueeze(1), w, torch.zeros_like(w))
        alphas.append((q * w).sum(dim=1))
        span = basis[:, :k + 1]
        for _ in range(2):
            w = w - torch.einsum("bk,bkd->bd", torch.einsum("bkd,bd->bk", span, w), span)
        beta = w.norm(dim=1)
        betas.append(beta)
        last = k + 1 == k_max
        taken = k + 1
        q = w / beta.clamp_min(tiny).unsqueeze(1)
        if not (last or _check_due(k + 1)):
            continue
        tri = torch.diag_embed(torch.stack(alphas, dim=1))
        if k:
            off = torch.diag_embed(torch.stack(betas[:-1], dim=1), offset=1)
            tri = tri + off + off.transpose(1, 2)
        theta, vecs = torch.linalg.eigh(tri)
        resid = beta.unsqueeze(1) * vecs[:, -1, :].abs()  # (rows, k + 1): the residual of each Ritz pair
        top, low = theta[:, -1], theta[:, 0]
        err_top = _relative_bound(top, resid[:, -1])
        err_low = _relative_bound(low, resid[:, 0]) if need_min else torch.full_like(low, math.inf)
        ok = err_top <= rtol
        if need_min:
            ok &= err_low <= rtol
        now = ok | ~finite | last
        if bool(now.any()):
            done = rows[now]
            out["max"][done] = top[now].clamp_min(0).sqrt()
            out["min"][done] = low[now].clamp_min(0).sqrt()
            out["max_err"][done] = err_top[now]
            out["min_err"][done] = err_low[now]
            steps[done] = k + 1
        if bool(now.all()):
            break
        if bool(now.any()):
            # drop the stopped points: a graph of the running ones only, so the products cost what they need
            keep = ~now
            rows, q, basis, finite = rows[keep], q[keep], basis[keep], finite[keep]
            alphas = [a[keep] for a in alphas]
            betas = [c[keep] for c in betas]
            ops = JacobianProducts(fn, x[rows])
    for key in out:
        out[key] = torch.where(finite_all, out[key], nan)
    converged = finite_all & (out["max_err"] <= rtol)
    if need_min:
        converged &= out["min_err"] <= rtol
    return LanczosResult(out["max"], out["min"], out["max_err"], out["min_err"], taken, steps, converged)
