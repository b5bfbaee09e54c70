"""``glow-nflows``: Glow's learned LU-decomposed 1x1 map, float64 round trip and log-det on vectors and images,
multi-scale factor-out, and nflows 0.14's cache defects detected (never patched)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Sequence

import pytest
import torch
from nflows.transforms import ActNorm, LULinear, OneByOneConvolution
from torch import Tensor

from models import registry
from models.base import InvertibleModel
from models.freia_flows import GlowFreia
from models.jacobian import jacobian_slogdet
from models.nflows_flows import RealNVPNflows
from models.nflows_glow import GlowNflows, half_mask, init_rotation_
from models.subnets import MLP
from models.testing import validate

VECTORS = [(2,), (4,), (5,)]
IMAGES = [(1, 4, 4), (3, 4, 4), (1, 8, 8)]


def _x(shape: tuple[int, ...], n: int = 4, seed: int = 1) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    if len(shape) > 1:  # image-like data in (0, 1)
        return torch.rand((n, *shape), generator=g, dtype=torch.float64)
    return torch.randn((n, *shape), generator=g, dtype=torch.float64) * 1.5 + 0.3


def _model(shape: tuple[int, ...], seed: int = 0, perturb: float = 0.0, **kw: object) -> GlowNflows:
    """A float64 GlowNflows, data-initialised; ``perturb`` adds that much Gaussian noise to every parameter, so the
    couplings and LU maps are far from their near-identity / rotation start."""
    torch.manual_seed(seed)
    model = GlowNflows(shape=shape, depth=2, hidden=16, **kw).double()  # type: ignore[arg-type]
    model.data_init(_x(shape, n=32, seed=seed + 100))
    if perturb:
        with torch.no_grad():
            for p in model.parameters():
                p.add_(perturb * torch.randn_like(p))
    return model


def _weight(lin: LULinear) -> Tensor:
    """The (C, C) matrix ``L U`` that nflows' ``LULinear`` applies (before ``OneByOneConvolution``'s permutation)."""
    lower, upper = lin._create_lower_upper()
    return lower @ upper


def _is_permutation(w: Tensor, tol: float = 1e-6) -> bool:
    near = (w.abs() - 1).abs().le(tol) | w.abs().le(tol)
    return bool(near.all()) and bool(((w.abs() > 0.5).sum(0) == 1).all())


# ------------------------------------------------------------------------------------------- registry, size
def test_registered_as_glow_nflows() -> None:
    cls = registry.get("glow-nflows")
    assert cls is GlowNflows and cls.family == "glow" and cls.backend == "nflows"
    assert "glow-nflows" in registry.names()
    assert cls.width_hparam == "hidden"


def test_default_size_matches_glow_freia_and_realnvp_nflows() -> None:
    """Vectors at the defaults: as many coupling subnets of the same MLP shape as glow-freia (4 two-sided blocks) and
    realnvp-nflows (8 one-sided layers)."""
    def subnets(m: InvertibleModel) -> list[tuple[int, ...]]:
        return sorted(tuple(layer.in_features for layer in mod.net if isinstance(layer, torch.nn.Linear))
                      for mod in m.modules() if isinstance(mod, MLP))

    torch.manual_seed(0)
    ours = subnets(GlowNflows(shape=(64,)))
    assert len(ours) == 8
    assert ours == subnets(GlowFreia(shape=(64,))) == subnets(RealNVPNflows(shape=(64,)))


# ------------------------------------------------------------------------------------------- the learned 1x1 map
@pytest.mark.parametrize("shape", [(6,), (1, 4, 4)])
def test_lu_factors_are_parameters_that_learn(shape: tuple[int, ...]) -> None:
    model = _model(shape).train()
    maps = model.mixing_maps()
    image = len(shape) > 1
    assert len(maps) == 2 * (2 if image else 1)  # depth 2 (per level; 2 levels for images)
    assert all(isinstance(m, OneByOneConvolution) == image for m in maps)
    params = dict(model.named_parameters())
    factors = [getattr(m, n) for m in maps for n in ("lower_entries", "upper_entries", "unconstrained_upper_diag")]
    ids = {id(p) for p in params.values()}
    assert all(isinstance(f, torch.nn.Parameter) and f.requires_grad and id(f) in ids for f in factors)
    before = [_weight(m).detach().clone() for m in maps]
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    opt.zero_grad()
    (-model.log_prob(_x(shape, n=16)).mean()).backward()
    for f in factors:
        assert f.grad is not None and float(f.grad.abs().max()) > 0
    opt.step()
    after = [_weight(m).detach() for m in maps]
    for w0, w1 in zip(before, after, strict=True):
        assert float((w1 - w0).abs().max()) > 1e-4  # the map moved
        assert not _is_permutation(w0) and not _is_permutation(w1)


@pytest.mark.parametrize("n", [2, 4, 16, 64])
def test_lu_map_starts_as_a_random_rotation(n: int) -> None:
    torch.manual_seed(n)
    lin = LULinear(n).double()
    init_rotation_(lin)
    w = _weight(lin).detach()
    assert torch.allclose(w @ w.T, torch.eye(n, dtype=w.dtype), atol=1e-10)
    assert abs(float(lin.logabsdet().detach())) <= 1e-4  # |det| = 1
    assert not _is_permutation(w)
    assert bool((lin.upper_diag > lin.eps).all())


def test_vector_mixing_step_applies_its_lu_weight() -> None:
    """The step the flow runs is the matrix L U: its Jacobian is W, and its ladj log|det W|."""
    model = _model((4,), perturb=0.1)
    lin = model.mixing_maps()[0]
    x = _x((4,), n=3)
    jac = torch.autograd.functional.jacobian(lambda v: lin(v)[0].sum(0), x)  # (4, B, 4)
    assert torch.allclose(jac[:, 0, :], _weight(lin), atol=1e-12)
    assert torch.allclose(lin(x)[1], torch.linalg.slogdet(_weight(lin))[1].expand(3), atol=1e-12)


# ------------------------------------------------------------------------------------------- exactness
@pytest.mark.parametrize("shape", [*VECTORS, *IMAGES])
@pytest.mark.parametrize("perturb", [0.0, 0.1])
def test_float64_round_trip_and_log_det(shape: tuple[int, ...], perturb: float) -> None:
    model = _model(shape, perturb=perturb).eval()
    x = _x(shape, n=3)
    with torch.no_grad():
        z, ladj = model(x)
        x_rec = model.inverse(z)
    assert z.shape == x.shape and z.dtype == torch.float64 and ladj.shape == (3,)
    assert float((z - x).abs().max()) > 1e-2  # not the identity
    assert float((x_rec - x).abs().max()) <= min(1e-8, GlowNflows.roundtrip_tol)
    exact = jacobian_slogdet(lambda v: model(v)[0], x)
    assert float(exact.abs().max()) > 1e-3
    assert float((ladj - exact).abs().max()) <= min(1e-6, GlowNflows.logdet_tol)


@pytest.mark.parametrize("levels", [1, 2, 3])
def test_levels_give_valid_multiscale_flows(levels: int) -> None:
    model = _model((2, 8, 8), levels=levels, perturb=0.05).eval()
    assert len(model.level_steps) == levels
    x = _x((2, 8, 8), n=2)
    z, ladj = model(x)
    assert torch.allclose(model.inverse(z), x, atol=1e-10, rtol=0)
    assert torch.allclose(ladj, jacobian_slogdet(lambda v: model(v)[0], x), atol=1e-8, rtol=0)


def test_factored_out_half_does_not_see_the_later_levels() -> None:
    """Level 1's factored-out half (the first D/2 latent entries) does not depend on level 2's parameters."""
    model = _model((1, 8, 8), perturb=0.05).eval()
    x = _x((1, 8, 8), n=3)
    with torch.no_grad():
        z0 = model(x)[0].reshape(3, -1)
        for step in model.level_steps[1]:
            for p in step.parameters():
                p.add_(0.3 * torch.randn_like(p))
        z1 = model(x)[0].reshape(3, -1)
    half = 64 // 2
    assert torch.equal(z0[:, :half], z1[:, :half])
    assert float((z0[:, half:] - z1[:, half:]).abs().max()) > 1e-3


def test_data_init_standardises_every_actnorm_output() -> None:
    """data_init follows nflows' multi-scale cascade: each ActNorm's output on the init batch has zero mean and unit
    standard deviation per channel (the second level's ActNorms see the half that goes on)."""
    torch.manual_seed(0)
    model = GlowNflows(shape=(1, 8, 8), depth=2, hidden=16).double()
    x = _x((1, 8, 8), n=64, seed=5)
    model.data_init(x)
    outputs: list[Tensor] = []
    hooks = [s.register_forward_hook(lambda _m, _i, out: outputs.append(out[0]))
             for s in model.steps if isinstance(s, ActNorm)]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    assert len(outputs) == 4
    for out in outputs:
        flat = out.transpose(0, 1).reshape(out.shape[1], -1)
        assert torch.allclose(flat.mean(1), torch.zeros(out.shape[1], dtype=flat.dtype), atol=1e-8)
        assert torch.allclose(flat.std(1), torch.ones(out.shape[1], dtype=flat.dtype), atol=1e-2)


def test_half_mask_and_shape_errors() -> None:
    assert half_mask(5).tolist() == [-1, -1, 1, 1, 1]
    with pytest.raises(ValueError, match="2 \\*\\* levels"):
        GlowNflows(shape=(1, 4, 4), levels=3)
    with pytest.raises(ValueError, match="D >= 2"):
        GlowNflows(shape=(1,))


def test_registered_defaults_conform() -> None:
    results = validate("glow-nflows")
    assert {r.shape for r in results} == {(4,), (1, 4, 4)}
    assert all(r.passed for r in results), [(r.name, r.shape, r.figure) for r in results if not r.passed]


# ------------------------------------------------------------------------------------------- nflows' defects
class _CachedGlow(GlowNflows):
    """GlowNflows with nflows' LU cache on by default, so the conformance checks build it that way."""

    def __init__(self, shape: Sequence[int], num_classes: int | None = None, depth: int = 8, hidden: int = 64,
                 hidden_layers: int = 2, levels: int = 2, cache: bool = True) -> None:
        super().__init__(shape, num_classes, depth, hidden, hidden_layers, levels, cache)


def test_cached_float64_inverse_defect_is_detected() -> None:
    results = validate(_CachedGlow)
    defects = _CachedGlow(shape=(4,)).known_defects()
    assert set(defects) == {"roundtrip", "dtype_float64"}
    failed = {(r.name, r.shape) for r in results if not r.passed}
    assert failed == {(name, shape) for name in defects for shape in [(4,), (1, 4, 4)]}
    for r in results:
        if not r.passed:
            assert r.known_defect and "same dtype" in r.figure
    assert GlowNflows(shape=(4,)).known_defects() == {}


def test_cached_float32_inverse_works_but_goes_stale_in_eval_mode() -> None:
    """In float32 on the CPU the cache is right; parameters loaded in eval mode leave the old W in use."""
    torch.manual_seed(0)
    x = torch.randn(64, 4)
    model, other = GlowNflows(shape=(4,), cache=True), GlowNflows(shape=(4,), cache=True)
    model.data_init(x)
    other.data_init(x)
    model.eval()
    other.eval()
    with torch.no_grad():
        z = model(x)[0]
        assert float((model.inverse(z) - x).abs().max()) <= 1e-4
        model.load_state_dict(other.state_dict())  # in eval mode: nflows does not invalidate the cache
        stale, fresh = model(x)[0], other(x)[0]
        assert float((stale - fresh).abs().max()) > 1e-2  # the old W is still applied
        model.train()  # train(True) invalidates it
        model.eval()
        assert torch.allclose(model(x)[0], fresh, atol=1e-6)


def test_lu_inverse_uses_deprecated_triangular_solve() -> None:
    """nflows' LULinear inverse calls torch.triangular_solve, deprecated by torch (warned once per process, hence a
    fresh interpreter)."""
    code = ("import warnings, torch\nfrom nflows.transforms import LULinear\nwarnings.simplefilter('always')\n"
            "with warnings.catch_warnings(record=True) as w:\n    LULinear(3).inverse(torch.randn(2, 3))\n"
            "print(any('triangular_solve is deprecated' in str(x.message) for x in w))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "True"
