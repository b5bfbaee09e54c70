"""Local Lipschitz estimates of an invertible map and of its inverse from the Jacobian's singular values.

For a differentiable bijection ``f`` the local Lipschitz constant at ``x`` is the spectral norm of the
Jacobian, ``Lip_x(f) = sigma_max(J_f(x))``, and by the inverse function theorem the inverse's at
``z = f(x)`` is ``Lip_z(f^-1) = sigma_max(J_f(x)^-1) = 1 / sigma_min(J_f(x))``. Their product is the local
condition number. Behrmann et al., "Understanding and Mitigating Exploding Inverses in Invertible Neural
Networks" (AISTATS 2021) use these bi-Lipschitz quantities to explain when inverses explode; for an
i-ResNet block ``F = x + g(x)`` with ``Lip(g) <= c < 1`` the bounds ``Lip(F) <= 1 + c`` and
``Lip(F^-1) <= 1 / (1 - c)`` hold (Behrmann et al., "Invertible Residual Networks", ICML 2019, Lemma 2).

Three paths, per point, all through :mod:`models.jacobian`:

- ``"exact"`` (small D): the full Jacobian by D batched backward passes, then its singular values
  (:func:`models.jacobian.jacobian_singular_values`).
- ``"lanczos"`` (large D, what ``"auto"`` uses): Lanczos on ``J^T J`` with JVP/VJP products from one forward graph,
  every point at once (:func:`models.jacobian.lanczos_extremes`), stopped when the a-posteriori bound on each
  point's relative error is at most ``rtol`` (or after ``iters`` steps; the bound reached is reported either way).
  ``Lip(f^-1)`` is Lanczos through ``model.inverse`` at ``z`` (its largest singular value) for analytic inverses that
  keep a graph; otherwise, for iterative inverses, it is ``1 / sigma_min`` from the same Lanczos run on ``J_f`` as
  ``Lip(f)``: no inner solves.
- ``"power"`` (large D): power iteration on ``J^T J`` with a Jacobian-vector product (the double-backward
  trick: ``J v = d/du <J^T u, v>``) and a vector-Jacobian product, reusing one forward graph for all
  iterations (:func:`models.jacobian.power_sigma_max`). ``Lip(f^-1)`` is the same power iteration through
  ``model.inverse`` at ``z`` for analytic inverses. For iterative inverses, and analytic ones that carry no
  autograd graph, it is inverse iteration on ``J_f^T J_f`` with conjugate-gradient solves (``1 / sigma_min``,
  :func:`models.jacobian.power_sigma_min`): the derivative of an unrolled fixed-point loop is not the
  inverse's Jacobian (a loop that stops after one step from a start at its fixed point differentiates to
  ``I - J_g``, not ``(I + J_g)^-1``).

The maps must treat batch elements independently (``eval()`` mode), so that the batched Jacobian is
block diagonal and one batched product serves every point at once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal, cast

import torch
from torch import Tensor

from models.base import InvertibleModel
from models.jacobian import Map, jacobian_singular_values, lanczos_extremes, power_sigma_max, power_sigma_min

Method = Literal["auto", "exact", "lanczos", "power"]


@dataclass
class LipschitzEstimate:
    """Per-point local Lipschitz estimates.

    Attributes:
        forward: ``Lip_x(f)`` per point, (B,).
        inverse: ``Lip_z(f^-1)`` at ``z = f(x)`` per point, (B,).
        method: ``"exact"``, ``"lanczos"`` or ``"power"``; ``inverse_method`` says how the inverse's was found
            (``"exact"``; ``"lanczos-inverse"`` / ``"power-inverse"`` through ``model.inverse``; ``"lanczos"`` from
            the forward run's ``sigma_min``; ``"cg"`` by inverse iteration).
        forward_err, inverse_err: (B,) bounds on the relative error of each estimate against the nearest
            singular value's (0 for exact; Lanczos' a-posteriori bound, :class:`models.jacobian.LanczosResult`,
            which says when the nearest is not the extreme); None for power iteration, which has none (NaN in
            :meth:`summary`).
        forward_steps, inverse_steps: (B,) Lanczos steps of each point's estimates (None for exact and power
            iteration).
    """

    forward: Tensor
    inverse: Tensor
    method: str
    inverse_method: str
    forward_err: Tensor | None = None
    inverse_err: Tensor | None = None
    forward_steps: Tensor | None = None
    inverse_steps: Tensor | None = None

    @property
    def iters(self) -> tuple[int, int]:
        """The most Lanczos steps any point took, for the forward and for the inverse estimate (0 without)."""
        def most(t: Tensor | None) -> int:
            return 0 if t is None or not t.numel() else int(t.max())

        return most(self.forward_steps), most(self.inverse_steps)

    def select(self, index: slice) -> LipschitzEstimate:
        """The estimates of the points ``index`` (a slice of the batch)."""
        def part(t: Tensor | None) -> Tensor | None:
            return None if t is None else t[index]

        return LipschitzEstimate(self.forward[index], self.inverse[index], self.method, self.inverse_method,
                                 part(self.forward_err), part(self.inverse_err), part(self.forward_steps),
                                 part(self.inverse_steps))

    @property
    def condition(self) -> Tensor:
        """Local condition number ``Lip(f) * Lip(f^-1)`` per point, (B,)."""
        return self.forward * self.inverse

    def summary(self) -> dict[str, Any]:
        """Max and median of each quantity (non-finite values count as infinite)."""
        out: dict[str, Any] = {"method": self.method, "inverse_method": self.inverse_method,
                               "iters": list(self.iters)}
        for key, t in (("forward", self.forward), ("inverse", self.inverse), ("condition", self.condition)):
            t = torch.nan_to_num(t.detach().double(), nan=float("inf"))
            out[f"{key}_max"] = float(t.max())
            out[f"{key}_median"] = float(t.median())
        for key, err in (("forward", self.forward_err), ("inverse", self.inverse_err)):
            out[f"{key}_err_bound"] = math.nan if err is None else float(
                torch.nan_to_num(err.double(), nan=math.inf, posinf=math.inf).max())
        fwd, inv = out["forward_err_bound"], out["inverse_err_bound"]
        # condition = forward * inverse: relative errors compose as (1 + a)(1 + b) - 1
        out["condition_err_bound"] = (1 + fwd) * (1 + inv) - 1
        return out


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
                    iters: int = 100, tol: float = 1e-7, seed: int = 0, rtol: float = 1e-3) -> LipschitzEstimate:
    """Local Lipschitz constants of ``model`` at ``x`` and of its inverse at ``z = model(x)[0]``.

    ``x``: (B, *shape). ``method="auto"`` uses the exact Jacobian when D <= ``exact_max_dim`` and Lanczos otherwise.
    ``iters``: the most Lanczos (or power) steps per estimate; ``rtol``: Lanczos stops when every point's error
    bound is at most this, relative; ``tol``: power iteration stops when every estimate changes by less than this,
    relative. Returns per-point estimates (B,); tasks report the max (and the median).
    """
    fwd = latent_map(model)
    d = x[0].numel()
    use_exact = method == "exact" or (method == "auto" and d <= exact_max_dim)
    if use_exact:
        s = jacobian_singular_values(fwd, x, batched=True)
        zero = torch.zeros_like(s[:, 0])
        return LipschitzEstimate(forward=s[:, 0], inverse=1.0 / s[:, -1], method="exact", inverse_method="exact",
                                 forward_err=zero, inverse_err=zero)
    with torch.no_grad():
        z = fwd(x.detach())
    through_inverse = model.capabilities.inverse == "analytic" and inverse_is_differentiable(model, z)
    if method == "power":
        return _power(model, fwd, x, z, through_inverse, iters, tol, seed)
    run = lanczos_extremes(fwd, x, iters=iters, rtol=rtol, seed=seed, need_min=not through_inverse)
    if through_inverse:
        inv = lanczos_extremes(model.inverse, z, iters=iters, rtol=rtol, seed=seed + 1, need_min=False)
        return LipschitzEstimate(forward=run.sigma_max, inverse=inv.sigma_max, method="lanczos",
                                 inverse_method="lanczos-inverse", forward_err=run.max_err, inverse_err=inv.max_err,
                                 forward_steps=run.steps, inverse_steps=inv.steps)
    # 1 / sigma_min against 1 / s: |1/sigma - 1/s| s = |s - sigma| / sigma <= r / theta = e / (1 + e) for
    # Lanczos' bound e = r / (theta - r) on |sigma - s| / s
    inv_err = run.min_err / (1 + run.min_err)
    return LipschitzEstimate(forward=run.sigma_max, inverse=1.0 / run.sigma_min, method="lanczos",
                             inverse_method="lanczos", forward_err=run.max_err, inverse_err=inv_err,
                             forward_steps=run.steps, inverse_steps=run.steps)


def _power(model: InvertibleModel, fwd: Map, x: Tensor, z: Tensor, through_inverse: bool, iters: int, tol: float,
           seed: int) -> LipschitzEstimate:
    """The power-iteration path of :func:`local_lipschitz` (no error bounds)."""
    lip_f = power_sigma_max(fwd, x, iters=iters, tol=tol, seed=seed)
    if through_inverse:
        lip_inv = power_sigma_max(model.inverse, z, iters=iters, tol=tol, seed=seed + 1)
        how = "power-inverse"
    else:
        lip_inv = 1.0 / power_sigma_min(fwd, x, iters=max(10, iters // 2), tol=tol, seed=seed + 1)
        how = "cg"
    return LipschitzEstimate(forward=lip_f, inverse=lip_inv, method="power", inverse_method=how)
