"""The zuko 1.6 adapters: invertibility, exact log-dets, zuko's own density reproduced, the structure the docstrings
claim (spline bound, coupling halves of NSF with passes = 2, autoregressive Jacobians), data-initialised
standardisation, and sizes equal to the nflows counterparts."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor

from models import registry
from models.base import InvertibleModel, UnsupportedCapability, standard_normal_log_prob
from models.jacobian import jacobian_slogdet
from models.nflows_flows import MAFNflows, NiceNflows, RealNVPNflows
from models.zuko_flows import SLOPE, ElementwiseAffine, MAFZuko, NiceZuko, NSFZuko, RealNVPZuko, _ZukoFlow

ZUKO: dict[str, type[_ZukoFlow]] = {
    "nsf-zuko": NSFZuko,
    "maf-zuko": MAFZuko,
    "realnvp-zuko": RealNVPZuko,
    "nice-zuko": NiceZuko,
}
SMALL = {"depth": 2, "hidden": 16}


def _x(d: int, n: int = 4, seed: int = 1) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn((n, d), generator=g, dtype=torch.float64) * 1.5 + 0.3


def _model(cls: type[_ZukoFlow], d: int, seed: int = 0, **kw: object) -> _ZukoFlow:
    torch.manual_seed(seed)
    model = cls(shape=(d,), **kw).double()  # type: ignore[arg-type]
    model.data_init(_x(d, n=64, seed=seed + 100))
    return model


def _jacobian(model: InvertibleModel, x: Tensor) -> Tensor:
    """dz/dx at one point ``x``: (D,) -> (D, D)."""
    return torch.autograd.functional.jacobian(lambda v: model(v.unsqueeze(0))[0].squeeze(0), x).detach()


@pytest.mark.parametrize("name", list(ZUKO))
def test_registry_maps_names_to_these_classes(name: str) -> None:
    cls = registry.get(name)
    family, backend = name.split("-")
    assert cls is ZUKO[name] and cls.family == family and cls.backend == backend == "zuko"
    assert cls.capabilities.inputs == ("vector",) and cls.width_hparam == "hidden"


@pytest.mark.parametrize("name", list(ZUKO))
@pytest.mark.parametrize("d", [2, 4, 7])
def test_float64_round_trip(name: str, d: int) -> None:
    cls = ZUKO[name]
    model = _model(cls, d).eval()
    x = _x(d)
    with torch.no_grad():
        z, ladj = model(x)
        x_rec = model.inverse(z)
    assert z.shape == x.shape and z.dtype == torch.float64
    assert isinstance(ladj, Tensor) and ladj.shape == (4,) and ladj.dtype == torch.float64
    assert float((z - x).abs().max()) > 1e-2  # not the identity
    assert float((x_rec - x).abs().max()) <= cls.roundtrip_tol <= 1e-10


@pytest.mark.parametrize("name", list(ZUKO))
@pytest.mark.parametrize("standardize", [False, True])
def test_ladj_matches_slogdet_and_log_prob_is_zukos_own(name: str, standardize: bool) -> None:
    model = _model(ZUKO[name], 5, standardize=standardize)
    x = _x(5, n=3)
    with torch.no_grad():
        z, ladj = model(x)
        lp = model.log_prob(x)
    exact = jacobian_slogdet(lambda v: model(v)[0], x).detach()
    assert float(exact.abs().max()) > 1e-3  # a non-trivial log-det to match
    assert float((ladj - exact).abs().max()) <= ZUKO[name].logdet_tol
    assert torch.allclose(lp, standard_normal_log_prob(z) + ladj, atol=1e-12, rtol=0)
    if model.standardize is None and model.scaling is None:  # the bare zuko flow: zuko's NormalizingFlow density
        with torch.no_grad():
            assert torch.allclose(lp, model.flow().log_prob(x), atol=1e-10, rtol=0)


@pytest.mark.parametrize("name", list(ZUKO))
def test_gradients_reach_every_parameter(name: str) -> None:
    model = _model(ZUKO[name], 4).train()
    (-model.log_prob(_x(4, n=8)).mean()).backward()
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    assert trainable
    dead = [n for n, p in trainable if p.grad is None or not bool(torch.isfinite(p.grad).all())
            or float(p.grad.abs().max()) == 0.0]
    assert not dead, dead


@pytest.mark.parametrize("name", list(ZUKO))
def test_images_and_one_dimension_are_refused(name: str) -> None:
    with pytest.raises(UnsupportedCapability, match="vector"):
        ZUKO[name](shape=(1, 4, 4))
    with pytest.raises(ValueError, match="D >= 2"):
        ZUKO[name](shape=(1,))


def test_elementwise_affine_standardises_through_the_soft_clip() -> None:
    g = torch.Generator().manual_seed(0)
    h = torch.randn(500, 3, generator=g, dtype=torch.float64) * torch.tensor([0.01, 1.0, 50.0]) + 4.0
    h[:, 0] = h[:, 0] * 0 + 2.0  # a constant feature
    h[:, 0] += torch.linspace(0, 1e-8, 500, dtype=torch.float64)  # std far below 1e-6
    t = ElementwiseAffine(3).double()
    t.initialize(h)
    with torch.no_grad():
        y, ladj = t().call_and_ladj(h)
    assert torch.allclose(y[:, 1:].mean(0), torch.zeros(2, dtype=torch.float64), atol=1e-12)
    assert torch.allclose(y[:, 1:].std(0), torch.ones(2, dtype=torch.float64), atol=1e-9)
    assert abs(float(y[:, 0].mean())) < 1e-7  # constant feature: unit scale, centred
    expected = -torch.log(h[:, 1:].std(0)).sum()
    assert torch.allclose(ladj, expected.expand(500), atol=1e-9)
    # a std outside the soft clip's range (1e-3, 1e3) is held at 0.99 of its bound, not turned into inf / nan
    t.initialize(h * 1e6)
    bound = -math.log(SLOPE)
    with torch.no_grad():
        log_scale = t.scale / (1 + t.scale.abs() / bound)  # zuko's soft clip of the raw scale
        _, ladj_big = t().call_and_ladj(h * 1e6)
    assert torch.allclose(log_scale[1:], torch.full((2,), -0.99 * bound, dtype=torch.float64), atol=1e-12)
    assert bool(torch.isfinite(ladj_big).all())


@pytest.mark.parametrize("name", list(ZUKO))
def test_data_init_standardises_the_stated_steps(name: str) -> None:
    x = _x(6, n=256, seed=3) * torch.tensor([1.0, 3.0, 0.2, 5.0, 1.0, 2.0], dtype=torch.float64) + 7.0
    torch.manual_seed(0)
    model = ZUKO[name](shape=(6,)).double()
    model.data_init(x)
    with torch.no_grad():
        if model.standardize is not None:
            h = model.standardize()(x)
            assert torch.allclose(h.mean(0), torch.zeros(6, dtype=torch.float64), atol=1e-10)
            assert torch.allclose(h.std(0), torch.ones(6, dtype=torch.float64), atol=1e-8)
        if model.scaling is not None:
            z, _ = model(x)
            assert torch.allclose(z.mean(0), torch.zeros(6, dtype=torch.float64), atol=1e-10)
            assert torch.allclose(z.std(0), torch.ones(6, dtype=torch.float64), atol=1e-8)
    assert (model.standardize is None) == (name == "nice-zuko")
    assert (model.scaling is None) == (name != "nice-zuko")


def test_nsf_spline_is_the_identity_outside_its_bound() -> None:
    model = _model(NSFZuko, 4, depth=1, standardize=False)
    x = torch.tensor([[5.5, -6.0, 7.0, -9.0], [-5.01, 5.01, 12.0, -5.2]], dtype=torch.float64)
    inside = torch.tensor([[0.5, -1.0, 2.0, -3.0]], dtype=torch.float64)
    with torch.no_grad():
        z, ladj = model(x)
        moved = model(inside)[0] - inside
    assert torch.equal(z, x) and torch.equal(ladj, torch.zeros(2, dtype=torch.float64))
    assert float(moved.abs().min()) > 0  # every feature moves inside [-5, 5]


def test_nsf_two_passes_is_coupling_of_halves_and_more_passes_autoregressive() -> None:
    x = _x(6, n=1, seed=5)[0] * 0.5
    coupling = _model(NSFZuko, 6, depth=1, standardize=False)  # passes = 2
    jac = _jacobian(coupling, x)
    off = jac - torch.diag(torch.diagonal(jac))
    assert float(off[:3].abs().max()) == 0.0  # first half: unconditional element-wise splines
    assert float(off[3:, 3:].abs().max()) == 0.0  # second half: element-wise given ...
    assert float(off[3:, :3].abs().min()) > 0.0  # ... every feature of the first half
    autoregressive = _model(NSFZuko, 6, depth=1, standardize=False, passes=6)
    jac = _jacobian(autoregressive, x)
    assert float(torch.triu(jac, diagonal=1).abs().max()) == 0.0  # z_i depends on x_<=i only
    rows, cols = torch.tril_indices(6, 6, offset=-1)
    assert float(jac[rows, cols].abs().min()) > 0.0  # ... and on every one of them
    with torch.no_grad():
        z, _ = autoregressive(x.unsqueeze(0))
        assert float((autoregressive.inverse(z) - x).abs().max()) <= NSFZuko.roundtrip_tol


@pytest.mark.parametrize(("zuko_cls", "nflows_cls"), [(MAFZuko, MAFNflows), (RealNVPZuko, RealNVPNflows),
                                                      (NiceZuko, NiceNflows)])
@pytest.mark.parametrize("d", [2, 64])
def test_sized_like_the_nflows_counterpart(zuko_cls: type[InvertibleModel], nflows_cls: type[InvertibleModel],
                                           d: int) -> None:
    def count(m: InvertibleModel) -> int:
        return sum(p.numel() for p in m.parameters())

    assert count(zuko_cls(shape=(d,))) == count(nflows_cls(shape=(d,)))
    small, wide = zuko_cls(shape=(d,), hidden=16), zuko_cls(shape=(d,), hidden=32)  # type: ignore[call-arg]
    assert count(small) < count(wide)  # the width hyper-parameter match_params scales


@pytest.mark.parametrize("name", list(ZUKO))
def test_sampling_inverts_base_draws(name: str) -> None:
    model = _model(ZUKO[name], 3, **SMALL).eval()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        s = model.sample(16, generator=g)
        z, _ = model(s)
    g = torch.Generator().manual_seed(0)
    assert s.shape == (16, 3) and bool(torch.isfinite(s).all())
    assert torch.allclose(z, torch.randn((16, 3), generator=g, dtype=torch.float64), atol=1e-9)
