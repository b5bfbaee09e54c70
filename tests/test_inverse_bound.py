"""The a-posteriori error bound of the i-ResNet inverse (Banach: ``||x* - G(x)|| <= L / (1 - L) ||G(x) - x||``).

Checked on a linear contraction with a known fixed point (every iteration, both solvers), then on trained native
i-ResNets and Residual Flows: each block's bound holds against the exact inverse of its input (solved in float64),
the composed bound holds against the whole reconstruction error, and ``inverse_stop = "error"`` delivers the error
asked for.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import Tensor

from bench.datasets import load
from models.actnorm import ActNorm
from models.fixed_point import ErrorBound, anderson, fixed_point
from models.iresnet import IResNetNative, ResFlowNative, ResidualBlock, ResidualFlow
from models.loss import training_loss


def contraction(d: int = 6, lip: float = 0.9, seed: int = 0) -> tuple[Tensor, Tensor, Tensor]:
    """``A`` (d, d) with ``||A||_2 = lip``, ``b`` (d,) and the fixed point ``x* = (I - A)^-1 b`` of ``x -> A x + b``."""
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(d, d, generator=g, dtype=torch.float64)
    a = lip * a / torch.linalg.matrix_norm(a, ord=2)
    b = torch.randn(d, generator=g, dtype=torch.float64)
    return a, b, torch.linalg.solve(torch.eye(d, dtype=torch.float64) - a, b)


@pytest.mark.parametrize("solver", ["fixed_point", "anderson"])
def test_bound_holds_at_every_iteration_of_a_linear_contraction(solver: str) -> None:
    a, b, x_star = contraction()
    lip = float(torch.linalg.matrix_norm(a, ord=2))
    x0 = torch.zeros(3, a.shape[0], dtype=torch.float64)
    for cap in range(1, 40):
        run = anderson if solver == "anderson" else fixed_point
        x, result = run(lambda x: x @ a.T + b, x0, 0.0, 0.0, cap, bound=ErrorBound(lip))
        assert result.error_bound is not None
        error = float((x - x_star).norm(dim=1).max())
        assert error <= result.error_bound * (1 + 1e-9) + 1e-15, (cap, error, result.error_bound)


def test_the_bound_stops_the_solve_at_its_target() -> None:
    a, b, x_star = contraction(lip=0.95)
    lip = float(torch.linalg.matrix_norm(a, ord=2))
    x0 = torch.zeros(2, a.shape[0], dtype=torch.float64)
    x, result = fixed_point(lambda x: x @ a.T + b, x0, 0.0, 0.0, 10_000, bound=ErrorBound(lip, 1e-6))
    assert result.converged and result.error_bound is not None and result.error_bound <= 1e-6
    assert float((x - x_star).norm(dim=1).max()) <= 1e-6
    # one iteration earlier the bound was still above the target: it stopped as early as the bound allowed
    assert result.history and result.iterations > 1
    _, earlier = fixed_point(lambda x: x @ a.T + b, x0, 0.0, 0.0, result.iterations - 1, bound=ErrorBound(lip, 1e-6))
    assert not earlier.converged and earlier.error_bound is not None and earlier.error_bound > 1e-6


def trained(cls: type[ResidualFlow], coeff: float, steps: int = 150, seed: int = 0) -> tuple[ResidualFlow, Tensor]:
    """A small model of ``cls`` trained by maximum likelihood on moons, and 256 test points (float32)."""
    torch.manual_seed(seed)
    data = load("moons", seed=seed, n_train=4096, n_test=256)
    model = cls((2,), depth=4, hidden=32, hidden_layers=1, coeff=coeff, method="exact", neumann_grad=False,
                init_at_bound=True, weight_gain=4.0)
    model.data_init(data.train_x[:256])
    opt = torch.optim.Adam(model.parameters(), lr=5e-3)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        batch = data.train_x[torch.randint(0, data.train_x.shape[0], (256,), generator=gen)]
        loss = training_loss(model, batch, objective="likelihood")
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval(), data.test_x


def exact_inverse(model: ResidualFlow, z: Tensor) -> list[Tensor]:
    """The input of every block's solve and the exact inverse of that input, block by block in float64 (each
    from the float32 input the float32 inverse actually gave that block), in inversion order: pairs flattened as
    ``[y_0, x*_0, y_1, x*_1, ...]``."""
    out: list[Tensor] = []
    h = model._pre(z)
    for norm, block in zip(reversed(model.actnorms), reversed(model.blocks), strict=True):
        assert isinstance(block, ResidualBlock)
        x32, _ = block.inverse(h, model.solve.solver, 1e-9, 1e-9, 1000, 5)
        x64, res = block.double().inverse(h.double(), "fixed_point", 1e-14, 1e-14, 10_000)
        block.float()
        assert res.converged
        out += [h, x64]
        h = x32 if not isinstance(norm, ActNorm) else norm.inverse(x32)
    return out


@pytest.mark.parametrize(("cls", "coeff"), [(IResNetNative, 0.9), (ResFlowNative, 0.98)])
def test_bounds_hold_on_trained_models(cls: type[ResidualFlow], coeff: float) -> None:
    model, x = trained(cls, coeff)
    z = model(x)[0].detach()
    model.double().configure_inverse(dataclasses.replace(model.inverse_settings(), stop="error", tol=1e-12))
    x_star = model.inverse(z.double())  # the exact inverse of z, within 1e-12
    assert model.last_inverse.converged
    for dtype, tol in ((torch.float32, 1e-4), (torch.float64, 1e-8)):
        model.to(dtype)
        for stop in ("error", "residual"):
            model.configure_inverse(dataclasses.replace(model.inverse_settings(), stop=stop, tol=tol))
            x_rec = model.inverse(z.to(dtype))
            info = model.last_inverse
            assert info.stop == stop
            assert info.error_bound is not None and len(info.per_block_bound) == len(model.blocks)
            error = float((x_rec.double() - x_star).reshape(x.shape[0], -1).norm(dim=1).max())
            assert error <= info.error_bound, (dtype, stop, error, info.error_bound)
            if stop == "error":  # the error asked for, with the blocks' own bounds within it
                assert info.converged and error <= tol, (dtype, error, info)
                assert sum(info.per_block_bound) <= tol * (1 + 1e-6)
    model.float()
    # each block's own bound against the exact inverse of the input it was given
    model.configure_inverse(dataclasses.replace(model.inverse_settings(), stop="error", tol=1e-4))
    pairs = exact_inverse(model, z)
    for i, block in enumerate(reversed(model.blocks)):
        assert isinstance(block, ResidualBlock)
        lip = block.net.lipschitz()
        x_i, res = block.inverse(pairs[2 * i], model.solve.solver, 1e-4, 1e-4, 1000, 5,
                                 ErrorBound(lip, 1e-4 / len(model.blocks)))
        assert res.error_bound is not None and res.converged
        own = float((x_i.double() - pairs[2 * i + 1]).norm(dim=1).max())
        assert own <= res.error_bound * (1 + 1e-6) + 1e-12, (i, own, res.error_bound)


def test_an_error_stop_without_a_certificate_falls_back_to_a_tight_residual_stop(monkeypatch: pytest.MonkeyPatch
                                                                                  ) -> None:
    """A block whose Lipschitz bound is not below 1 (as spectral normalisation with one power step per training
    forward can leave one) has no certificate: ``stop = "error"`` then holds every solve to the residual stop at
    ``min(tol, 1e-6)`` in float32, not at the error budget's 1e-4, reports ``stop = "residual"`` and no bound, and
    still delivers the default error budget."""
    model, x = trained(IResNetNative, 0.9)
    z = model(x)[0].detach()
    first = model.blocks[-1]  # inverted first
    assert isinstance(first, ResidualBlock)
    monkeypatch.setattr(first.net, "lipschitz", lambda: 1.02)
    assert model.error_amplification() is None
    settings = dataclasses.replace(model.inverse_settings(), stop="error", tol=None)
    model.configure_inverse(settings)
    x_rec = model.inverse(z)
    info = model.last_inverse
    assert info.stop == "residual" and info.error_bound is None and not info.per_block_bound and info.converged
    assert float((x_rec - x).abs().max()) <= 1e-4
    assert info.residual <= 1e-6 * (1 + float(x_rec.abs().max()))
    # a residual stop at the error budget itself stops earlier, at a residual above what the fallback asks
    model.configure_inverse(dataclasses.replace(settings, stop="residual", tol=1e-4))
    model.inverse(z)
    assert sum(model.last_inverse.per_block) < sum(info.per_block)
    assert model.last_inverse.residual > 1e-6 * (1 + float(x_rec.abs().max()))
