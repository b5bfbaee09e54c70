"""The inverse's solvers beyond plain iteration: Newton's method, Anderson's ring buffers and ``solver = "auto"``.

Every solver is checked against the exact fixed point (float64): a linear contraction with a known solution, and
residual blocks solved to 1e-13 by plain iteration; the speed-ups are asserted as iteration counts, which do not
depend on the machine (the timings are in tests/benchmarks/test_bench_iresnet.py).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import pytest
import torch
from test_inverse_bound import contraction
from torch import Tensor

from models.fixed_point import ErrorBound, anderson, fixed_point, newton
from models.iresnet import AUTO_PROBE, NEWTON_MAX_DIM, IResNetNative, ResidualBlock, ResidualNet
from models.krylov import evaluations_needed, krylov_floor


def linear_newton(a: Tensor, b: Tensor) -> Callable[[Tensor], tuple[Tensor, Callable[[], Tensor]]]:
    """``G(x) = A x + b`` as ``y - g(x)`` with ``g(x) = -A x`` (and ``y = b``): ``J_g = -A`` for every example."""
    def linearize(x: Tensor) -> tuple[Tensor, Callable[[], Tensor]]:
        return x @ a.T + b, lambda: (-a).expand(x.shape[0], *a.shape)
    return linearize


def test_newton_solves_a_linear_map_in_one_step_and_its_bound_holds() -> None:
    a, b, x_star = contraction(d=5, lip=0.95)
    lip = float(torch.linalg.matrix_norm(a, ord=2))
    x0 = torch.zeros(3, 5, dtype=torch.float64)
    x, result = newton(linear_newton(a, b), x0, 1e-13, 1e-13, 50, bound=ErrorBound(lip))
    # iteration 1 evaluates G at x0 and steps to the exact solution; iteration 2 finds residual ~ 0
    assert result.converged and result.iterations == 2
    assert float((x - x_star).abs().max()) < 1e-12
    assert result.error_bound is not None and float((x - x_star).norm(dim=1).max()) <= result.error_bound + 1e-15


def test_newton_replaces_a_non_finite_step_by_the_plain_one() -> None:
    a, b, x_star = contraction(d=4, lip=0.5)

    def broken(x: Tensor) -> tuple[Tensor, Callable[[], Tensor]]:
        return x @ a.T + b, lambda: torch.full((x.shape[0], 4, 4), float("nan"), dtype=x.dtype)

    x0 = torch.zeros(2, 4, dtype=torch.float64)
    x, result = newton(broken, x0, 1e-12, 1e-12, 200)
    _, plain = fixed_point(lambda x: x @ a.T + b, x0, 1e-12, 1e-12, 200)
    assert result.converged and result.iterations == plain.iterations
    assert float((x - x_star).abs().max()) < 1e-10


def test_newton_backtracks_where_full_steps_overshoot() -> None:
    """``g(x) = -0.99 sin(x)`` elementwise on 61 x 2 points: ``I + J_g = 1 - 0.99 cos(x)`` is near singular around
    0, where full Newton steps overshoot by factors of 6 and more (full steps alone stall after 4 iterations at
    residual 13); with backtracking the solve converges, in far fewer evaluations than plain iteration."""
    lip = 0.99
    y = torch.linspace(-3, 3, 61, dtype=torch.float64).reshape(-1, 1) * torch.tensor([1.0, 0.5], dtype=torch.float64)

    def linearize(x: Tensor) -> tuple[Tensor, Callable[[], Tensor]]:
        return y + lip * torch.sin(x), lambda: torch.diag_embed(-lip * torch.cos(x))

    x, result = newton(linearize, y.clone(), 1e-12, 1e-12, 200)
    _, plain = fixed_point(lambda x: y + lip * torch.sin(x), y.clone(), 1e-12, 1e-12, 100_000)
    assert result.converged and plain.converged
    assert result.iterations * 50 < plain.iterations, (result.iterations, plain.iterations)
    assert float((x - lip * torch.sin(x) - y).abs().max()) < 1e-10


def slow_block(d: int, seed: int = 0) -> tuple[ResidualBlock, Tensor, Tensor]:
    """A float64 block contracting slowly: ``g(x) = W_2 elu(W_1 x + 10) + b_2`` with ``W_i`` 0.99 times random
    orthogonal matrices (hidden width d), so the ELU stays linear and ``J_g = W_2 W_1``, a rotation scaled by 0.98.
    Returns the block, an output batch ``y`` (64, d) and its exact inverse ``x*`` (plain iteration to 1e-14)."""
    g = torch.Generator().manual_seed(seed)
    net = ResidualNet((d,), d, 0.99, "elu", hidden_layers=1).double()
    with torch.no_grad():
        for layer in net.layers:
            q, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
            layer.weight.copy_(0.99 * q)
            layer.power_iterate(50)
        net.layers[0].bias.fill_(10.0)
    block = ResidualBlock(net)
    y = 2 * torch.randn(64, d, generator=g, dtype=torch.float64)
    x_star, res = block.inverse(y, "fixed_point", 1e-14, 1e-14, 100_000)
    assert res.converged
    return block, y, x_star


@pytest.mark.parametrize("d", [2, 6])
def test_accelerated_solvers_reach_the_fixed_point_in_fewer_iterations(d: int) -> None:
    block, y, x_star = slow_block(d)
    iterations = {}
    for solver in ("fixed_point", "anderson", "newton", "auto"):
        x, res = block.inverse(y, solver, 1e-11, 1e-11, 10_000)  # type: ignore[arg-type]
        assert res.converged, solver
        assert float((x - x_star).abs().max()) < 1e-9, solver
        assert len(res.history) == res.iterations, solver
        iterations[solver] = res.iterations
    assert iterations["newton"] < iterations["anderson"] < iterations["fixed_point"], iterations
    assert iterations["auto"] < iterations["fixed_point"] / 2, iterations


def test_auto_stays_with_plain_iteration_on_a_fast_contraction() -> None:
    torch.manual_seed(0)
    block = ResidualBlock(ResidualNet((2,), 32, 0.2, "elu", hidden_layers=1)).double()
    y = torch.randn(64, 2, dtype=torch.float64)
    x_auto, auto = block.inverse(y, "auto", 1e-12, 1e-12, 1000)
    x_plain, plain = block.inverse(y, "fixed_point", 1e-12, 1e-12, 1000)
    assert auto.converged and auto.iterations == plain.iterations > AUTO_PROBE
    assert torch.equal(x_auto, x_plain)


def test_anderson_ring_buffer_wraps_and_converges() -> None:
    block, y, x_star = slow_block(6, seed=1)
    x, res = block.inverse(y, "anderson", 1e-12, 1e-12, 10_000, memory=2)
    assert res.converged and res.iterations > 3 * 2  # the two slots were overwritten several times
    assert float((x - x_star).abs().max()) < 1e-10


def test_anderson_bound_holds_at_every_iteration_with_a_short_memory() -> None:
    a, b, x_star = contraction(d=8, lip=0.97)
    lip = float(torch.linalg.matrix_norm(a, ord=2))
    x0 = torch.zeros(3, 8, dtype=torch.float64)
    for cap in range(1, 30):
        x, result = anderson(lambda x: x @ a.T + b, x0, 0.0, 0.0, cap, memory=3, bound=ErrorBound(lip))
        assert result.error_bound is not None
        assert float((x - x_star).norm(dim=1).max()) <= result.error_bound * (1 + 1e-9) + 1e-15


def test_newton_is_refused_where_the_jacobian_is_too_large() -> None:
    IResNetNative((NEWTON_MAX_DIM,), solver="newton")
    with pytest.raises(ValueError, match=r"newton.*anderson"):
        IResNetNative((NEWTON_MAX_DIM + 1,), solver="newton")
    model = IResNetNative((1, 4, 4))
    with pytest.raises(ValueError, match="newton"):
        model.configure_inverse(dataclasses.replace(model.inverse_settings(), solver="newton"))
    assert model.inverse_settings().solver == "auto"  # the refused change left the settings as they were


def test_the_native_models_default_to_auto_and_round_trip() -> None:
    for shape in ((2,), (1, 4, 4)):
        torch.manual_seed(0)
        model = IResNetNative(shape, depth=2, hidden=16, coeff=0.97, init_at_bound=True).double().eval()
        x = torch.randn(16, *shape, dtype=torch.float64)
        model.data_init(x)
        x_rec, info = model.invert(model.encode(x))
        assert model.inverse_settings().solver == "auto" and info.converged
        assert float((x_rec - x).abs().max()) < 1e-8


def _krylov_case(d: int, lip: float, seed: int = 0) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The linear map ``G(x) = A x + b`` of :func:`contraction` as ``y - g(x)`` with ``g(x) = -A x``: ``J_g = -A`` for
    three examples, their starts ``x0`` (random) and errors ``e0 = x* - x0``; returns (A, b, x0, e0)."""
    a, b, x_star = contraction(d=d, lip=lip, seed=seed)
    x0 = torch.randn(3, d, generator=torch.Generator().manual_seed(seed + 1), dtype=torch.float64)
    return a, b, x0, x_star - x0


def test_krylov_floor_is_the_least_error_over_the_krylov_space() -> None:
    """Against a direct least-squares solve over the explicit Krylov matrix ``[r0, A r0, ..., A^{n-1} r0]``, and exact
    from ``n = D`` on, where the space is all of it."""
    d = 6
    a, _, _, e0 = _krylov_case(d, 0.9)
    jac = (-a).expand(3, d, d)
    floor = krylov_floor(jac, e0, 2 * d)  # past D the space stops growing
    big_a = torch.eye(d, dtype=torch.float64) - a
    for n in range(1, d + 1):
        for b in range(3):
            powers = [big_a @ e0[b]]
            for _ in range(n - 1):
                powers.append(big_a @ powers[-1])
            k = torch.stack(powers, dim=1)  # (D, n)
            coeffs = torch.linalg.lstsq(k, e0[b].unsqueeze(1)).solution
            least = float((e0[b] - (k @ coeffs).squeeze(1)).norm())
            assert abs(float(floor[n - 1, b]) - least) <= 1e-8 * float(e0[b].norm()), (n, b)
    assert bool(torch.isfinite(floor).all()) and bool((floor[d - 1:] <= 1e-10 * e0.norm(dim=1)).all())
    assert bool((floor[1:] <= floor[:-1]).all())


def test_krylov_floor_of_a_multiple_of_the_identity_is_reached_in_one_evaluation() -> None:
    e0 = torch.randn(4, 5, dtype=torch.float64)
    jac = 0.7 * torch.eye(5, dtype=torch.float64).expand(4, 5, 5)
    floor = krylov_floor(jac, e0, 3)
    assert bool((floor <= 1e-12 * e0.norm(dim=1)).all())
    assert evaluations_needed(floor, 1e-9).tolist() == [1, 1, 1, 1]


@pytest.mark.parametrize("solver", ["fixed_point", "anderson"])
def test_no_solver_gets_below_the_krylov_floor_on_a_linear_block(solver: str) -> None:
    """Plain iteration and Anderson acceleration (memory longer than the run) after ``n`` evaluations, ``n = 1..12``,
    never have an error below the floor."""
    d, caps = 8, 12
    a, b, x0, e0 = _krylov_case(d, 0.95, seed=3)
    floor = krylov_floor((-a).expand(3, d, d), e0, caps)
    x_star = x0 + e0
    for cap in range(1, caps + 1):
        if solver == "anderson":
            x, result = anderson(lambda x: x @ a.T + b, x0, 0.0, 0.0, cap, memory=caps)
        else:
            x, result = fixed_point(lambda x: x @ a.T + b, x0, 0.0, 0.0, cap)
        assert result.iterations == cap
        error = (x - x_star).norm(dim=1)
        assert bool((error >= floor[cap - 1] * (1 - 1e-9) - 1e-13).all()), (cap, error, floor[cap - 1])


def test_evaluations_needed_is_the_first_evaluation_at_the_target() -> None:
    floor = torch.tensor([[1.0, 1.0], [1e-3, 0.5], [1e-6, 0.4]], dtype=torch.float64)
    assert evaluations_needed(floor, 1e-3).tolist() == [2, 0]
    assert evaluations_needed(floor, 0.45).tolist() == [2, 3]
    assert evaluations_needed(floor, 1.0).tolist() == [1, 1]
