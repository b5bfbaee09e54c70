"""Lanczos on J^T J (models.jacobian.lanczos_extremes, bench.lipschitz's large-D path) against the exact singular
values at small D: per-point errors within the reported a-posteriori bounds, their bias and spread, the inner
bounds (sigma_max from below, sigma_min from above), the cap, and the model-level paths."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor, nn

from bench.lipschitz import local_lipschitz
from models.base import Capabilities, InvertibleModel
from models.jacobian import jacobian_singular_values, lanczos_extremes
from models.template import LinearFlow

F64 = torch.float64


class TanhResidual(InvertibleModel):
    """``F(x) = x + c tanh(W x + b)`` with ``||W||_2 = 1`` (so ``Lip(g) <= c``), inverse by fixed-point iteration
    under ``no_grad`` (no autograd graph: the inverse's Lipschitz constant comes from ``sigma_min`` of ``J_F``)."""

    family = "tanhres"
    backend = "test"
    capabilities = Capabilities(density=True, logdet="exact", inverse="iterative")

    def __init__(self, shape: tuple[int, ...], num_classes: int | None = None, c: float = 0.9, seed: int = 0
                 ) -> None:
        super().__init__(shape, num_classes, c=c, seed=seed)
        g = torch.Generator().manual_seed(seed)
        w = torch.randn(self.dim, self.dim, generator=g)
        self.weight = nn.Parameter(w / torch.linalg.matrix_norm(w, 2))
        self.bias = nn.Parameter(0.3 * torch.randn(self.dim, generator=g))
        self.c = c

    def encode(self, x: Tensor) -> Tensor:
        return x + self.c * torch.tanh(x @ self.weight.T + self.bias)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        t = torch.tanh(x @ self.weight.T + self.bias)
        jac = torch.eye(self.dim, dtype=x.dtype) + self.c * (1 - t**2).unsqueeze(-1) * self.weight
        return x + self.c * t, torch.linalg.slogdet(jac)[1]

    @torch.no_grad()
    def inverse(self, z: Tensor) -> Tensor:
        x = z.clone()
        for _ in range(300):
            x = z - self.c * torch.tanh(x @ self.weight.T + self.bias)
        return x


def deep_map(d: int, seed: int) -> tuple[nn.Module, float]:
    """A 3-layer residual tanh map of width ``d`` in float64 (a nonlinear Jacobian that varies per point)."""
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(d, 2 * d), nn.Tanh(), nn.Linear(2 * d, d)).double()
    return net, 0.8


@pytest.mark.parametrize("rtol", [1e-2, 1e-3, 1e-6])
def test_errors_lie_within_the_bounds_with_their_bias_and_spread(rtol: float) -> None:
    d, b = 24, 48
    net, scale = deep_map(d, seed=1)

    def fn(v: Tensor) -> Tensor:
        return v + scale * net(v)

    x = torch.randn(b, d, dtype=F64)
    exact = jacobian_singular_values(fn, x, batched=True)
    est = lanczos_extremes(fn, x, iters=d, rtol=rtol, seed=3)
    err_max = (est.sigma_max - exact[:, 0]) / exact[:, 0]
    err_min = (est.sigma_min - exact[:, -1]) / exact[:, -1]
    assert bool(est.converged.all()) and float(est.max_err.max()) <= rtol and float(est.min_err.max()) <= rtol
    # the bounds hold per point against the nearest singular value (rounding slack 1e-12)
    for sigma, bound in ((est.sigma_max, est.max_err), (est.sigma_min, est.min_err)):
        nearest = (sigma[:, None] - exact).abs() / exact
        assert bool((nearest.min(dim=1).values <= bound + 1e-12).all())
    # inner bounds: sigma_max from below, sigma_min from above
    assert bool((err_max <= 1e-12).all()) and bool((err_min >= -1e-12).all())
    # against the extreme singular values: bias (mean signed error) and spread (std) inside the requested precision
    for err in (err_max, err_min):
        assert abs(float(err.mean())) <= rtol and float(err.std()) <= rtol
    assert est.iters <= d and int(est.steps.max()) == est.iters
    assert int(est.steps.min()) < est.iters  # points stopped at different steps and left the batch


def test_a_step_cap_reports_an_unconverged_bound_that_still_holds() -> None:
    d = 40
    net, scale = deep_map(d, seed=2)

    def fn(v: Tensor) -> Tensor:
        return v + scale * net(v)

    x = torch.randn(16, d, dtype=F64)
    exact = jacobian_singular_values(fn, x, batched=True)
    est = lanczos_extremes(fn, x, iters=4, rtol=1e-8)
    assert est.iters == 4 and not bool(est.converged.any())
    assert float(est.min_err.min()) > 1e-8  # reached precision reported, not the asked one
    for sigma, bound in ((est.sigma_max, est.max_err), (est.sigma_min, est.min_err)):
        nearest = ((sigma[:, None] - exact).abs() / exact).min(dim=1).values
        assert bool((nearest <= bound + 1e-12).all())


def test_a_full_krylov_space_is_exact_and_non_finite_points_are_nan() -> None:
    w = torch.tensor([[3.0, 0.2, 0.0], [0.0, 2.0, 0.1], [0.3, 0.0, 0.5]], dtype=F64)

    def fn(v: Tensor) -> Tensor:
        return v @ w + torch.exp(v[:, :1] ** 3)  # overflows (value and derivative) at v_0 = 20

    x = torch.tensor([[0.5, 0.0, 0.0], [20.0, 0.0, 0.0]], dtype=F64)
    exact = jacobian_singular_values(fn, x[:1], batched=True)[0]
    est = lanczos_extremes(fn, x, iters=10, rtol=1e-12)
    assert est.iters == 3  # D steps span the whole space: the Ritz values are the singular values squared
    assert float(est.sigma_max[0]) == pytest.approx(float(exact[0]), rel=1e-12)
    assert float(est.sigma_min[0]) == pytest.approx(float(exact[-1]), rel=1e-12)
    assert math.isnan(float(est.sigma_max[1])) and not bool(est.converged[1])


def test_local_lipschitz_uses_lanczos_above_the_exact_dimension_through_the_inverse() -> None:
    spectrum = [3.0, *torch.linspace(1.0, 2.0, 98).tolist(), 0.25]
    model = LinearFlow((100,), singular_values=spectrum).double().eval()
    est = local_lipschitz(model, torch.randn(3, 100, dtype=F64), rtol=1e-6)
    assert (est.method, est.inverse_method) == ("lanczos", "lanczos-inverse")
    assert torch.allclose(est.forward, torch.full((3,), 3.0, dtype=F64), rtol=1e-6)
    assert torch.allclose(est.inverse, torch.full((3,), 4.0, dtype=F64), rtol=1e-6)
    summary = est.summary()
    assert summary["forward_err_bound"] <= 1e-6 and summary["inverse_err_bound"] <= 1e-6


def test_an_iterative_inverse_takes_one_over_sigma_min_from_the_same_run() -> None:
    model = TanhResidual((20,), c=0.9, seed=4).double().eval()
    x = 2 * torch.randn(12, 20, dtype=F64)
    exact = local_lipschitz(model, x, method="exact")
    est = local_lipschitz(model, x, method="lanczos", rtol=1e-4)
    assert est.inverse_method == "lanczos" and est.iters[0] == est.iters[1]
    rel_f = (est.forward - exact.forward).abs() / exact.forward
    rel_i = (est.inverse - exact.inverse).abs() / exact.inverse
    assert est.forward_err is not None and est.inverse_err is not None
    assert bool((rel_f <= est.forward_err + 1e-12).all()) and bool((rel_i <= est.inverse_err + 1e-12).all())
    assert float(est.forward_err.max()) <= 1e-4 and float(est.inverse_err.max()) <= 1e-4
    assert bool((est.inverse <= 1 / (1 - 0.9) + 1e-9).all())  # Lip(F^-1) <= 1 / (1 - c)
