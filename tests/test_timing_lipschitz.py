"""bench.timing (ratios by alternating rounds), models.jacobian (the Jacobian utility) and bench.lipschitz (local
bi-Lipschitz estimates)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import pytest
import torch
from torch import Tensor, nn

import bench.timing as timing
from bench.lipschitz import LipschitzEstimate, Method, local_lipschitz
from models.base import Capabilities, InverseInfo, InvertibleModel
from models.jacobian import (
    batch_jacobian,
    jacobian_by_replicas,
    jacobian_singular_values,
    jacobian_slogdet,
    power_sigma_max,
    power_sigma_min,
)
from models.template import LinearFlow

# ----------------------------------------------------------------------------------------------- timing


class FakeClock:
    """A perf_counter that only moves when a timed function says so."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def work(self, seconds: float) -> None:
        self.now += seconds


def test_time_ratio_of_a_function_against_itself_is_near_one() -> None:
    a = torch.randn(48, 48)

    def work() -> None:
        for _ in range(4):
            a @ a

    # 20 ms samples: long against the scheduler's time slices on a shared machine, so contention averages out
    stats = timing.time_ratio(work, work, rounds=15, warmup=2, min_time=0.02)
    assert stats.n == 15 and len(stats.times_a) == len(stats.times_b) == 15
    assert 0.5 < stats.median < 2.0  # a ratio of identical work, with a generous band for a shared machine
    assert stats.q25 <= stats.median <= stats.q75


def test_time_ratio_alternates_in_abba_order() -> None:
    log: list[str] = []
    timing.time_ratio(lambda: log.append("a"), lambda: log.append("b"), rounds=4, warmup=1, number=1)
    assert log == ["a", "b", "a", "b", "b", "a", "a", "b", "b", "a"]


def test_time_ratio_and_throughput_arithmetic_on_a_fake_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = FakeClock()
    monkeypatch.setattr(timing.time, "perf_counter", clock)
    stats = timing.time_ratio(lambda: clock.work(0.3), lambda: clock.work(0.1), rounds=6, warmup=1, number=2)
    assert stats.median == pytest.approx(3.0)
    assert stats.times_a == pytest.approx([0.3] * 6) and stats.times_b == pytest.approx([0.1] * 6)
    assert stats.ratios == pytest.approx([3.0] * 6)
    tp = timing.throughput(lambda: clock.work(0.5), n_items=10, rounds=3, warmup=0, number=1)
    assert tp.median == pytest.approx(20.0) and tp.n == 3


def test_calibration_repeats_fast_functions_to_min_time(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = FakeClock()
    monkeypatch.setattr(timing.time, "perf_counter", clock)
    calls = {"a": 0}

    def a() -> None:
        calls["a"] += 1
        clock.work(1e-4)

    stats = timing.time_ratio(a, lambda: clock.work(2e-4), rounds=2, warmup=0, min_time=1e-2)
    assert stats.number == 100  # the faster function (1e-4 s) needs 100 calls per sample for 1e-2 s
    assert calls["a"] == 1 + 2 * 100


def test_cuda_device_is_synchronised_around_each_sample(monkeypatch: pytest.MonkeyPatch) -> None:
    syncs: list[object] = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: syncs.append(device))
    timing.time_call(lambda: None, number=3, device="cuda")
    assert len(syncs) == 2
    timing.time_call(lambda: None, number=3, device="cpu")
    assert len(syncs) == 2


# ----------------------------------------------------------------------------------------------- lipschitz


def known_spectrum(d: int) -> list[float]:
    """Largest 3, smallest 0.25, the rest in [1, 2]: well separated extremes for power iteration."""
    return [3.0, *torch.linspace(1.0, 2.0, d - 2).tolist(), 0.25]


class NoGradInverse(LinearFlow):
    """LinearFlow whose inverse keeps no autograd graph (as a fixed-point loop under no_grad would)."""

    @torch.no_grad()
    def inverse(self, z: Tensor) -> Tensor:
        return super().inverse(z)


class ContractiveResidual(InvertibleModel):
    """``F(x) = x + c tanh(W x + b)`` with ``||W||_2 = 1``, so ``Lip(g) <= c`` (Behrmann et al., ICML 2019)."""

    family = "contractive"
    backend = "test"
    capabilities = Capabilities(density=True, logdet="exact", inverse="iterative")

    def __init__(self, shape: Sequence[int], num_classes: int | None = None, c: float = 0.9,
                 eigenvalues: Sequence[float] | None = None, seed: int = 0) -> None:
        super().__init__(shape, num_classes, c=c, eigenvalues=list(eigenvalues) if eigenvalues else None, seed=seed)
        g = torch.Generator().manual_seed(seed)
        d = self.dim
        if eigenvalues is not None:  # symmetric W with the given eigenvalues (|.| <= 1)
            q, _ = torch.linalg.qr(torch.randn(d, d, generator=g))
            w = q @ torch.diag(torch.tensor(list(eigenvalues))) @ q.T
            b = torch.zeros(d)
        else:
            w = torch.randn(d, d, generator=g)
            w = w / torch.linalg.matrix_norm(w, 2)
            b = 0.3 * torch.randn(d, generator=g)
        self.c = c
        self.weight = nn.Parameter(w)
        self.bias = nn.Parameter(b)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        z = x + self.c * torch.tanh(x @ self.weight.T + self.bias)
        t = torch.tanh(x @ self.weight.T + self.bias)
        jac = torch.eye(self.dim, dtype=x.dtype) + self.c * (1 - t**2).unsqueeze(-1) * self.weight
        return z, torch.linalg.slogdet(jac)[1]

    def inverse(self, z: Tensor) -> Tensor:
        x, iterations, res = z.clone(), 0, math.inf
        while iterations < 500 and res >= 1e-13:
            new = z - self.c * torch.tanh(x @ self.weight.T + self.bias)
            res = float((new - x).detach().abs().max())
            x, iterations = new, iterations + 1
        self.last_inverse = InverseInfo(iterations=iterations, residual=res, converged=res < 1e-13)
        return x


def test_exact_path_recovers_a_known_spectrum() -> None:
    s = [2.5, 1.5, 1.0, 0.8, 0.6, 0.4]
    model = LinearFlow((6,), singular_values=s).double().eval()
    x = torch.randn(5, 6, dtype=torch.float64)
    est = local_lipschitz(model, x)
    assert est.method == "exact" and est.inverse_method == "exact"
    assert torch.allclose(est.forward, torch.full((5,), 2.5, dtype=torch.float64), rtol=1e-6)
    assert torch.allclose(est.inverse, torch.full((5,), 1 / 0.4, dtype=torch.float64), rtol=1e-6)
    assert torch.allclose(est.condition, torch.full((5,), 2.5 / 0.4, dtype=torch.float64), rtol=1e-6)
    summary = est.summary()
    assert summary["forward_max"] == pytest.approx(2.5) and summary["inverse_median"] == pytest.approx(2.5)


def test_power_path_recovers_a_known_spectrum_at_d100() -> None:
    model = LinearFlow((100,), singular_values=known_spectrum(100)).double().eval()
    x = torch.randn(3, 100, dtype=torch.float64)
    est = local_lipschitz(model, x, method="power")  # D = 100 > 64
    assert est.method == "power" and est.inverse_method == "power-inverse"
    assert torch.allclose(est.forward, torch.full((3,), 3.0, dtype=torch.float64), rtol=1e-5)
    assert torch.allclose(est.inverse, torch.full((3,), 4.0, dtype=torch.float64), rtol=1e-5)


def test_power_path_falls_back_to_cg_when_the_inverse_has_no_graph() -> None:
    model = NoGradInverse((100,), singular_values=known_spectrum(100)).double().eval()
    x = torch.randn(2, 100, dtype=torch.float64)
    est = local_lipschitz(model, x, method="power")
    assert est.inverse_method == "cg"
    assert torch.allclose(est.inverse, torch.full((2,), 4.0, dtype=torch.float64), rtol=1e-5)


def test_the_three_jacobian_paths_agree_with_the_analytic_jacobian() -> None:
    model = ContractiveResidual((5,), c=0.8).double().eval()
    x = torch.randn(4, 5, dtype=torch.float64)

    def fn(v: Tensor) -> Tensor:
        return model(v)[0]

    t = torch.tanh(x @ model.weight.T + model.bias).detach()
    analytic = torch.eye(5, dtype=torch.float64) + 0.8 * (1 - t**2).unsqueeze(-1) * model.weight.detach()
    torch.testing.assert_close(batch_jacobian(fn, x), analytic, atol=1e-12, rtol=0)
    torch.testing.assert_close(batch_jacobian(fn, x, batched=True), analytic, atol=1e-12, rtol=0)
    z, jac = jacobian_by_replicas(fn, x)
    torch.testing.assert_close(jac, analytic, atol=1e-12, rtol=0)
    torch.testing.assert_close(z, fn(x).detach(), atol=1e-12, rtol=0)
    s = jacobian_singular_values(fn, x)
    assert torch.allclose(power_sigma_max(fn, x, iters=500, tol=1e-12), s[:, 0], rtol=1e-6)
    assert torch.allclose(power_sigma_min(fn, x, iters=200, tol=1e-12), s[:, -1], rtol=1e-6)


def test_jacobian_by_replicas_refuses_a_non_square_map() -> None:
    with pytest.raises(ValueError, match="square"):
        jacobian_by_replicas(lambda v: v[:, :2], torch.randn(3, 4))


@pytest.mark.parametrize("batched", [False, True])
def test_slogdet_with_create_graph_differentiates_by_the_parameters(batched: bool) -> None:
    # d log|det W| / dW = W^-T for the linear map x -> W x + b (the Jacobian is W everywhere)
    model = LinearFlow((3,), singular_values=[2.0, 1.0, 0.5]).double().eval()
    x = torch.randn(2, 3, dtype=torch.float64)
    logdet = jacobian_slogdet(lambda v: model(v)[0], x, batched=batched, create_graph=True)
    expected = torch.linalg.slogdet(model.weight.detach())[1]  # log(2 * 1 * 0.5) = 0 up to float32 rounding
    torch.testing.assert_close(logdet.detach(), expected.expand(2))
    (grad,) = torch.autograd.grad(logdet.sum(), model.weight)
    torch.testing.assert_close(grad, 2 * torch.linalg.inv(model.weight.detach()).T)
    assert not jacobian_slogdet(lambda v: model(v)[0], x, batched=batched).requires_grad


@pytest.mark.parametrize("method", ["exact", "power", "lanczos"])
def test_iresnet_bounds_hold_and_are_attained(method: Method) -> None:
    c = 0.9
    torch.manual_seed(0)
    model = ContractiveResidual((8,), c=c).double().eval()
    x = 2 * torch.randn(16, 8, dtype=torch.float64)
    est = local_lipschitz(model, x, method=method, iters=300, tol=1e-10, rtol=1e-10)
    assert bool((est.forward <= 1 + c + 1e-9).all()) and bool((est.forward >= 1 - c - 1e-9).all())
    assert bool((est.inverse <= 1 / (1 - c) + 1e-7).all()) and bool((est.inverse >= 1 / (1 + c) - 1e-9).all())
    # at x = 0 with b = 0 and W symmetric with eigenvalues +1 and -1, J = I + c W attains both bounds
    tight = ContractiveResidual((8,), c=c, eigenvalues=[1.0, -1.0, 0.5, 0.2, 0.0, -0.3, -0.6, 0.9]).double().eval()
    at0 = local_lipschitz(tight, torch.zeros(1, 8, dtype=torch.float64), method=method, iters=2000, tol=1e-13,
                          rtol=1e-12)
    assert float(at0.forward[0]) == pytest.approx(1 + c, rel=1e-6)
    assert float(at0.inverse[0]) == pytest.approx(1 / (1 - c), rel=1e-5)


def test_power_and_exact_paths_agree_on_a_nonlinear_map() -> None:
    model = ContractiveResidual((10,), c=0.7, seed=3).double().eval()
    x = torch.randn(6, 10, dtype=torch.float64)
    exact = local_lipschitz(model, x, method="exact")
    power = local_lipschitz(model, x, method="power", iters=500, tol=1e-12)
    assert power.inverse_method == "cg"  # iterative inverse: inverse iteration on J_f, not autograd through it
    assert torch.allclose(power.forward, exact.forward, rtol=1e-6)
    assert torch.allclose(power.inverse, exact.inverse, rtol=1e-6)


def test_non_finite_jacobians_give_nan_rows_and_count_as_infinite() -> None:
    def fn(v: Tensor) -> Tensor:
        return torch.exp(v**2)  # overflows to inf at |v| > ~9.4 in float32

    x = torch.tensor([[0.5, 0.1], [30.0, 0.2]])
    s = jacobian_singular_values(fn, x, batched=True)
    assert torch.isfinite(s[0]).all() and torch.isnan(s[1]).all()
    summary = LipschitzEstimate(forward=s[:, 0], inverse=1 / s[:, -1], method="exact", inverse_method="exact").summary()
    assert summary["forward_max"] == float("inf") and summary["inverse_max"] == float("inf")
