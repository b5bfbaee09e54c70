"""Local Lipschitz estimates of an invertible map and of its inverse from the Jacobian's singular values.

For a differentiable bijection ``f`` the local Lipschitz constant at ``x`` is the spectral norm of the
Jacobian, ``Lip_x(f) = sigma_max(J_f(x))``, and by the inverse function theorem the inverse's at
``z = f(x)`` is ``Lip_z(f^-1) = sigma_max(J_f(x)^-1) = 1 / sigma_min(J_f(x))``. Their product is the local
condition number. Behrmann et al., "Understanding and Mitigating Exploding Inverses in Invertible Neural
Networks" (AISTATS 2021) use these bi-Lipschitz quantities to explain when inverses explode; for an
i-ResNet block ``F = x + g(x)`` with ``Lip(g) <= c < 1`` the bounds ``Lip(F) <= 1 + c`` and
``Lip(F^-1) <= 1 / (1 - c)`` hold (Behrmann et al., "Invertible Residual Networks", ICML 2019, Lemma 2).

Two paths, per point:

- ``"exact"`` (small D): the full Jacobian by D batched backward passes, then its singular values.
- ``"power"`` (large D): power iteration on ``J^T J`` with a Jacobian-vector product (the double-backward
  trick: ``J v = d/du <J^T u, v>``) and a vector-Jacobian product, reusing one forward graph for all
  iterations. ``Lip(f^-1)`` is the same power iteration through ``model.inverse`` at ``z`` for analytic
  inverses. For iterative inverses, and analytic ones that carry no autograd graph, it is inverse
  iteration on ``J_f^T J_f`` with conjugate-gradient solves (``1 / sigma_min``): the derivative of an
  unrolled fixed-point loop is not the inverse's Jacobian (a loop that stops after one step from a start
  at its fixed point differentiates to ``I - J_g``, not ``(I + J_g)^-1``).

The maps must treat batch elements independently (``eval()`` mode), so that the batched Jacobian is
block diagonal and one batched product serves every point at once.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, cast

import torch
from torch import Tensor

from models.base import InvertibleModel

Map = Callable[[Tensor], Tensor]
Method = Literal["auto", "exact", "power"]


@dataclass
class LipschitzEstimate:
    """Per-point local Lipschitz estimates.

    Attributes:
        forward: ``Lip_x(f)`` per point, (B,).
        inverse: ``Lip_z(f^-1)`` at ``z = f(x)`` per point, (B,).
        method: ``"exact"`` or ``"power"``; ``inverse_method`` says how the inverse's was found
            (``"exact"``, ``"power-inverse"`` through ``model.inverse`` or ``"cg"`` by inverse iteration).
    """

    forward: Tensor
    inverse: Tensor
    method: str
    inverse_method: str

    @property
    def condition(self) -> Tensor:
        """Local condition number ``Lip(f) * Lip(f^-1)`` per point, (B,)."""
        return self.forward * self.inverse

    def summary(self) -> dict[str, Any]:
        """Max and median of each quantity (non-finite values count as infinite)."""
        out: dict[str, Any] = {"method": self.method, "inverse_method": self.inverse_method}
        for key, t in (("forward", self.forward), ("inverse", self.inverse), ("condition", self.condition)):
            t = torch.nan_to_num(t.detach().double(), nan=float("inf"))
            out[f"{key}_max"] = float(t.max())
            out[f"{key}_median"] = float(t.median())
        return out


# ----------------------------------------------------------------------------------------- exact path
def batched_jacobian(fn: Map, x: Tensor) -> Tensor:
    """Per-example Jacobians of a batch-independent map by ``D_out`` batched backward passes.

    ``fn``: (B, *shape) -> (B, *shape_out); ``x``: (B, *shape). Returns (B, D_out, D_in).
    """
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        y = fn(x)
    flat = y.reshape(y.shape[0], -1)
    rows = []
    for i in range(flat.shape[1]):
        (g,) = torch.autograd.grad(flat[:, i].sum(), x, retain_graph=i + 1 < flat.shape[1], allow_unused=True)
        rows.append(torch.zeros_like(x) if g is None else g)
    return torch.stack([r.reshape(r.shape[0], -1) for r in rows], dim=1).detach()


def exact_singular_values(fn: Map, x: Tensor) -> Tensor:
    """Singular values of each example's Jacobian, descending: (B, *shape) -> (B, D).

    Examples whose Jacobian has a non-finite entry (an overflow out of distribution) get NaN rows.
    """
    jac = batched_jacobian(fn, x)
    finite = torch.isfinite(jac).flatten(1).all(dim=1)
    out = torch.full((jac.shape[0], min(jac.shape[1:])), float("nan"), dtype=jac.dtype, device=jac.device)
    if bool(finite.any()):
        out[finite] = torch.linalg.svdvals(jac[finite])
    return out


# ----------------------------------------------------------------------------------------- power path
class _JacobianProducts:
    """``J v`` and ``J^T u`` for every point of a batch, from one forward graph of ``fn`` at ``x``."""

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
        """``J v``: (B, *shape) -> (B, *shape_out), by differentiating ``J^T u`` with respect to ``u``."""
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

    Each iteration costs one JVP and one VJP; stops when every point's estimate changes by less than
    ``tol`` relatively. The estimate ``||J v||`` with unit ``v`` approaches ``sigma_max`` from below.
    """
    ops = _JacobianProducts(fn, x)
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


def _batched_cg(apply: Callable[[Tensor], Tensor], b: Tensor, iters: int, tol: float) -> Tensor:
    """Solve ``A w = b`` per example for a symmetric positive definite batched operator ``apply``."""
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

    ``v <- (J^T J)^-1 v`` with the solve done by conjugate gradients on JVP/VJP products
    (``cg_iters`` defaults to D). Accurate while ``cond(J)^2`` is well inside the dtype's range.
    """
    ops = _JacobianProducts(fn, x)
    if ops.trivial:
        return torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
    d = x[0].numel()
    cg_iters = cg_iters if cg_iters is not None else 2 * d

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


# ----------------------------------------------------------------------------------------- model level
def has_latent_map(model: InvertibleModel) -> bool:
    """Whether the model overrides ``InvertibleModel.encode`` with its own ``x -> z`` map (z without the log-det)."""
    return type(model).encode is not InvertibleModel.encode


def latent_map(model: InvertibleModel) -> Map:
    """``x -> z`` without the log-det: ``model.encode`` (``model(x)[0]`` unless the model overrides it).
    (B, *shape) -> (B, *shape)."""
    return cast(Map, model.encode)


def inverse_is_differentiable(model: InvertibleModel, z: Tensor) -> bool:
    """Whether ``model.inverse`` keeps an autograd graph from ``z`` (one inverse on two points)."""
    probe = z[:2].detach().requires_grad_(True)
    with torch.enable_grad():
        out = model.inverse(probe)
    return bool(out.requires_grad)


def local_lipschitz(model: InvertibleModel, x: Tensor, method: Method = "auto", exact_max_dim: int = 64,
                    iters: int = 100, tol: float = 1e-7, seed: int = 0) -> LipschitzEstimate:
    """Local Lipschitz constants of ``model`` at ``x`` and of its inverse at ``z = model(x)[0]``.

    ``x``: (B, *shape). ``method="auto"`` uses the exact Jacobian when D <= ``exact_max_dim`` and power
    iteration otherwise. Returns per-point estimates (B,); tasks report the max (and the median).
    """
    fwd = latent_map(model)
    d = x[0].numel()
    use_exact = method == "exact" or (method == "auto" and d <= exact_max_dim)
    if use_exact:
        s = exact_singular_values(fwd, x)
        return LipschitzEstimate(forward=s[:, 0], inverse=1.0 / s[:, -1], method="exact", inverse_method="exact")
    lip_f = power_sigma_max(fwd, x, iters=iters, tol=tol, seed=seed)
    with torch.no_grad():
        z = fwd(x.detach())
    if model.capabilities.inverse == "analytic" and inverse_is_differentiable(model, z):
        lip_inv = power_sigma_max(model.inverse, z, iters=iters, tol=tol, seed=seed + 1)
        how = "power-inverse"
    else:
        lip_inv = 1.0 / power_sigma_min(fwd, x, iters=max(10, iters // 2), tol=tol, seed=seed + 1)
        how = "cg"
    return LipschitzEstimate(forward=lip_f, inverse=lip_inv, method="power", inverse_method=how)
