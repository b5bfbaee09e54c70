"""FLOP counts (bench.flops) against analytic counts: a dense matmul on a batch of B counts 2 B D^2
(FlopCounterMode's convention: 2 FLOPs per multiply-add, the bias add not counted)."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from task_helpers import SeriesResidual
from torch import nn

from bench.flops import count_flops, flops_per_example, trainable_parameters
from models import registry
from models.iresnet import ResidualFlow
from models.spectral_norm import SpectralNormLinear
from models.template import LinearFlow


def linear_flops(model: nn.Module, batch: int) -> int:
    """2 B (in x out) summed over the dense layers (``nn.Linear``, ``SpectralNormLinear``) of ``model``: one call of
    each on a batch of ``batch``."""
    layers = [m for m in model.modules() if isinstance(m, (nn.Linear, SpectralNormLinear))]
    return sum(2 * batch * int(m.weight.numel()) for m in layers)


@pytest.mark.parametrize("shape", [(6,), (2, 2, 3)])
def test_a_dense_linear_flow_counts_its_analytic_flops(shape: tuple[int, ...]) -> None:
    batch, d = 5, 12 if len(shape) == 3 else shape[0]
    model = LinearFlow(shape).eval()
    x = torch.randn(batch, *shape)
    with torch.no_grad():
        assert count_flops(lambda: model(x)) == 2 * batch * d * d  # z = x W^T + b; slogdet counts zero
        assert flops_per_example(lambda: model(x), batch) == 2 * d * d
        assert count_flops(lambda: model.inverse(x)) == 0  # a linear solve is not a matrix product
    assert trainable_parameters(model) == d * d + d


def test_every_iteration_of_a_fixed_point_inverse_is_counted() -> None:
    batch, d = 4, 3
    model = SeriesResidual((d,), c=0.5, terms=3, probes=2)
    x = torch.randn(batch, d)
    with torch.no_grad():
        z = model.encode(x)
        inverse = count_flops(lambda: model.inverse(z))
        iterations = model.last_inverse.iterations
        assert iterations > 3
        assert inverse == iterations * 2 * batch * d * d  # one x W^T per iteration
        assert count_flops(lambda: model.encode(x)) == 2 * batch * d * d
        # the forward: x W^T for z and again for J_g, then per series term one (D x D) @ (D x probes) per example
        assert count_flops(lambda: model(x)) == 2 * (2 * batch * d * d) + 3 * 2 * batch * d * d * 2


def test_backward_products_of_autograd_grad_inside_the_call_are_counted() -> None:
    """A log-det computed with torch.autograd.grad (as FrEIA's IResNetLayer does) breaks FlopCounterMode's module
    hooks (pytorch/pytorch#131753); the counter without them counts the forward and the backward product."""
    batch, d = 7, 5
    layer = nn.Linear(d, d)
    x = torch.randn(batch, d, requires_grad=True)

    def forward_and_vjp() -> None:
        y = layer(x)
        torch.autograd.grad(y.sum(), x, create_graph=True)

    assert count_flops(forward_and_vjp) == 2 * (2 * batch * d * d)


@pytest.mark.parametrize("name", ["realnvp-nflows", "glow-freia"])
def test_library_coupling_flows_count_each_subnet_layer_once_per_direction(name: str) -> None:
    batch = 8
    model = registry.create(name, shape=(4,), depth=2, hidden=16)
    x = torch.randn(batch, 4)
    model.data_init(x)
    model.eval()
    expected = linear_flops(model, batch)
    assert expected > 0
    with torch.no_grad():
        z = model.encode(x)
        assert count_flops(lambda: model(x)) == expected
        assert count_flops(lambda: model.inverse(z)) == expected


def test_native_iresnet_counts_one_evaluation_of_g_per_fixed_point_iteration() -> None:
    """Per-example work is what grows with the batch (spectral normalisation's weight-only products do not): the
    count's increase from a batch of 4 to 12 is 8 x (iterations per block) x (FLOPs of each g)."""
    depth, iters = 3, 4
    model = registry.create("iresnet-native", shape=(2,), depth=depth, hidden=8)
    assert isinstance(model, ResidualFlow)
    model.data_init(torch.randn(64, 2))
    model.eval()
    # a tolerance float32 never meets: every block runs exactly max_iter iterations
    settings = model.inverse_settings()
    assert settings is not None
    model.configure_inverse(dataclasses.replace(settings, tol=1e-30, max_iter=iters))
    per_g = linear_flops(model.blocks[0], 1)  # every block's g has the same layers (the classifier head is not used)
    with torch.no_grad():
        small, large = torch.randn(4, 2), torch.randn(12, 2)
        enc = count_flops(lambda: model.encode(large)) - count_flops(lambda: model.encode(small))
        assert enc == 8 * depth * per_g
        model.inverse(small)  # the certifying operator norms are computed once per set of weights, then kept
        inv_small = count_flops(lambda: model.inverse(small))
        assert model.last_inverse.per_block == [iters] * depth
        inv_large = count_flops(lambda: model.inverse(large))
        assert inv_large - inv_small == 8 * depth * iters * per_g


def test_an_estimator_forward_under_autograd_counts_more_than_its_encode() -> None:
    """FrEIA's i-ResNet computes its log-det series with torch.autograd.grad inside the forward: counted, each
    term a vector-Jacobian product through g."""
    model = registry.create("iresnet-freia", shape=(2,), depth=2, hidden=8, jacobian_iterations=3)
    x = torch.randn(6, 2)
    model.eval()
    with torch.enable_grad():
        full = count_flops(lambda: model(x))
    with torch.no_grad():
        z = count_flops(lambda: model.encode(x))
    assert z == linear_flops(model, 6)
    assert full > 3 * z
