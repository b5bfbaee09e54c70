"""The bits/dim convention of ``bench.units`` against hand-computed cases."""

from __future__ import annotations

import math

import pytest
import torch

from bench.units import bits_per_dim


def test_continuous_bits_per_dim_is_nll_over_d_ln2() -> None:
    # D = 2, NLL = 3 nats: 3 / (2 ln 2) bits/dim
    assert bits_per_dim(3.0, 2) == pytest.approx(3 / (2 * math.log(2)), rel=1e-15)
    assert bits_per_dim(3.0, 2, levels=None) == bits_per_dim(3.0, 2)


def test_discrete_bits_per_dim_adds_d_ln_levels() -> None:
    # levels = 256 adds D ln 256 nats before dividing: (3 + 2 ln 256) / (2 ln 2) = 3 / (2 ln 2) + 8
    got = bits_per_dim(3.0, 2, levels=256)
    assert got == pytest.approx((3 + 2 * math.log(256)) / (2 * math.log(2)), rel=1e-15)
    assert got == pytest.approx(3 / (2 * math.log(2)) + 8, rel=1e-15)


def test_uniform_density_on_the_unit_cube_costs_log2_levels_bits() -> None:
    # The uniform density on [0, 1)^D has NLL 0 on dequantised data: exactly log2(L) bits per dimension.
    assert bits_per_dim(0.0, 784, levels=256) == pytest.approx(8.0, rel=1e-15)
    assert bits_per_dim(0.0, 64, levels=17) == pytest.approx(math.log2(17), rel=1e-15)


def test_tensor_input_is_elementwise() -> None:
    nll = torch.tensor([0.0, 3.0], dtype=torch.float64)
    out = bits_per_dim(nll, 2, levels=256)
    assert isinstance(out, torch.Tensor)
    torch.testing.assert_close(out, torch.tensor([8.0, 8 + 3 / (2 * math.log(2))], dtype=torch.float64))


def test_non_positive_dim_is_rejected() -> None:
    with pytest.raises(ValueError):
        bits_per_dim(1.0, 0)
