"""The library adapters over nflows 0.14 and FrEIA 0.2: invertibility, exact log-dets, quirks normalised, and
FrEIA's IResNetLayer defects detected (never patched)."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import FrEIA.modules as Fm
import numpy as np
import pytest
import torch
from torch import Tensor

from models import registry
from models.base import InverseSettings, InvertibleModel, standard_normal_log_prob
from models.freia_flows import GlowFreia, NiceFreia, RealNVPFreia, as_ladj
from models.freia_iresnet import IResNetFreia
from models.jacobian import jacobian_slogdet
from models.nflows_flows import MAFNflows, NiceNflows, NSFNflows, RealNVPNflows

EXACT: dict[str, type[InvertibleModel]] = {
    "nice-nflows": NiceNflows,
    "realnvp-nflows": RealNVPNflows,
    "maf-nflows": MAFNflows,
    "nsf-nflows": NSFNflows,
    "nice-freia": NiceFreia,
    "realnvp-freia": RealNVPFreia,
    "glow-freia": GlowFreia,
}
SMALL = {"depth": 2, "hidden": 16}


def _x(shape: tuple[int, ...], n: int = 4, seed: int = 1) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    if len(shape) > 1:  # image-like data in (0, 1)
        return torch.rand((n, *shape), generator=g, dtype=torch.float64)
    return torch.randn((n, *shape), generator=g, dtype=torch.float64) * 1.5 + 0.3


def _max_abs(t: Tensor) -> float:
    return float(t.detach().abs().max())


def _model(cls: type[InvertibleModel], shape: tuple[int, ...], seed: int = 0, **kw: object) -> InvertibleModel:
    torch.manual_seed(seed)
    model = cls(shape=shape, **kw).double()  # type: ignore[arg-type]
    model.data_init(_x(shape, n=32, seed=seed + 100))
    return model


def _exact_logdet_with_graph(model: InvertibleModel, x: Tensor) -> Tensor:
    """log|det dz/dx| per example, differentiable w.r.t. the parameters. x: (B, *shape) -> (B,)."""
    out = []
    for xi in x:
        def single(v: Tensor, _shape: torch.Size = x.shape[1:]) -> Tensor:
            return model(v.reshape(1, *_shape))[0].reshape(-1)

        j = torch.autograd.functional.jacobian(single, xi.reshape(-1).detach().clone(), create_graph=True)
        out.append(torch.linalg.slogdet(j)[1])
    return torch.stack(out)


# ------------------------------------------------------------------------------------------- registry
@pytest.mark.parametrize("name", [*EXACT, "iresnet-freia"])
def test_registry_maps_names_to_these_classes(name: str) -> None:
    cls = registry.get(name)
    family, backend = name.split("-")
    assert cls.family == family and cls.backend == backend
    if name != "iresnet-freia":
        assert cls is EXACT[name]


# ------------------------------------------------------------------------------------------- exact adapters
@pytest.mark.parametrize("name", list(EXACT))
@pytest.mark.parametrize("shape", [(2,), (4,), (1, 4, 4), (1, 8, 8)])
def test_float64_round_trip(name: str, shape: tuple[int, ...]) -> None:
    cls = EXACT[name]
    model = _model(cls, shape).eval()
    x = _x(shape)
    with torch.no_grad():
        z, ladj = model(x)
        x_rec = model.inverse(z)
    assert z.shape == x.shape and z.dtype == torch.float64
    assert isinstance(ladj, Tensor) and ladj.shape == (4,) and ladj.dtype == torch.float64
    assert _max_abs(z - x) > 1e-2  # not the identity
    assert _max_abs(x_rec - x) <= cls.roundtrip_tol
    assert cls.roundtrip_tol <= 1e-10


@pytest.mark.parametrize("name", list(EXACT))
@pytest.mark.parametrize("shape", [(4,), (1, 4, 4)])
def test_ladj_matches_autograd_slogdet_and_log_prob(name: str, shape: tuple[int, ...]) -> None:
    cls = EXACT[name]
    model = _model(cls, shape)
    x = _x(shape, n=3)
    z, ladj = model(x)
    exact = jacobian_slogdet(lambda v: model(v)[0], x)
    assert float(exact.abs().max()) > 1e-3  # a non-trivial log-det to match
    assert _max_abs(ladj - exact) <= cls.logdet_tol
    assert torch.allclose(model.log_prob(x), standard_normal_log_prob(z) + ladj, atol=1e-12, rtol=0)


@pytest.mark.parametrize("name", list(EXACT))
@pytest.mark.parametrize("shape", [(4,), (1, 4, 4)])
def test_gradients_reach_every_parameter(name: str, shape: tuple[int, ...]) -> None:
    model = _model(EXACT[name], shape).train()
    (-model.log_prob(_x(shape, n=8)).mean()).backward()
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    assert trainable
    dead = [n for n, p in trainable if p.grad is None or not bool(torch.isfinite(p.grad).all())
            or float(p.grad.abs().max()) == 0.0]
    assert not dead, dead


@pytest.mark.parametrize("name", list(EXACT))
def test_ladj_gradient_is_the_exact_log_det_gradient(name: str) -> None:
    model = _model(EXACT[name], (4,), **SMALL)
    x = _x((4,), n=2)
    params = [p for p in model.parameters() if p.requires_grad]
    g_ladj = torch.autograd.grad(model(x)[1].sum(), params, allow_unused=True)
    g_true = torch.autograd.grad(_exact_logdet_with_graph(model, x).sum(), params, allow_unused=True)
    flat = [torch.cat([(torch.zeros_like(p) if g is None else g).reshape(-1) for p, g in zip(params, gs, strict=True)])
            for gs in (g_ladj, g_true)]
    assert float(flat[1].norm()) > 0
    assert torch.allclose(flat[0], flat[1], atol=1e-9, rtol=1e-7)


@pytest.mark.parametrize("name", list(EXACT))
def test_config_rebuilds_with_overridden_hyper_parameters(name: str) -> None:
    cls = EXACT[name]
    model = _model(cls, (4,), **SMALL).eval()
    cfg = model.config()
    assert cfg["depth"] == 2 and cfg["hidden"] == 16
    twin = cls(**json.loads(json.dumps(cfg))).double()
    twin.load_state_dict(model.state_dict())
    twin.eval()
    x = _x((4,))
    with torch.no_grad():
        assert torch.equal(model(x)[0], twin(x)[0]) and torch.equal(model(x)[1], twin(x)[1])


@pytest.mark.parametrize("name", [*EXACT, "iresnet-freia"])
def test_depth_adds_blocks(name: str) -> None:
    cls = registry.get(name)
    counts = [sum(p.numel() for p in cls(shape=(4,), depth=d, hidden=8).parameters() if p.requires_grad)
              for d in (1, 2, 4)]
    assert counts[0] < counts[1] < counts[2]


@pytest.mark.parametrize("name", list(EXACT))
def test_construction_follows_torch_seed_and_leaves_numpy_rng_alone(name: str) -> None:
    cls = EXACT[name]
    np.random.seed(123)
    before = np.random.get_state(legacy=False)["state"]
    before = {"key": before["key"].copy(), "pos": before["pos"]}
    torch.manual_seed(5)
    a = cls(shape=(6,), **SMALL)
    torch.manual_seed(5)
    b = cls(shape=(6,), **SMALL)
    after = np.random.get_state(legacy=False)["state"]
    assert np.array_equal(after["key"], before["key"]) and after["pos"] == before["pos"]
    sa, sb = a.state_dict(), b.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("name", ["nice-nflows", "realnvp-nflows", "maf-nflows", "nsf-nflows", "nice-freia"])
def test_data_init_standardises_the_latent(name: str) -> None:
    cls = EXACT[name]
    torch.manual_seed(0)
    model = cls(shape=(4,)).double()
    x = _x((4,), n=256) * torch.tensor([5.0, 0.2, 1.0, 3.0], dtype=torch.float64)
    with torch.no_grad():
        std_before = model(x)[0].std(dim=0)
        model.data_init(x)
        z = model(x)[0]
    assert _max_abs(std_before - 1) > 0.3
    assert torch.allclose(z.std(dim=0), torch.ones(4, dtype=torch.float64), atol=1e-6)


def test_glow_actnorm_is_identity_until_data_init_then_standardises() -> None:
    torch.manual_seed(0)
    model = GlowFreia(shape=(1, 4, 4)).double()
    acts = [m for m in model.inn.modules() if isinstance(m, Fm.ActNorm)]
    assert len(acts) == model.config()["depth"]
    x = _x((1, 4, 4), n=64)
    with torch.no_grad():
        model(x)  # a forward pass must not trigger FrEIA's first-batch init
        assert all(float(a.scale.abs().max()) == 0.0 and float(a.bias.abs().max()) == 0.0 for a in acts)
        model.data_init(x)
        h = model.inn.module_list[0]((x,))[0][0]  # the squeeze, then the first ActNorm
        y = acts[0]((h,))[0][0]
    per_channel = y.transpose(0, 1).reshape(y.shape[1], -1)
    assert torch.allclose(per_channel.mean(dim=1), torch.zeros(4, dtype=torch.float64), atol=1e-9)
    assert torch.allclose(per_channel.std(dim=1), torch.ones(4, dtype=torch.float64), atol=1e-9)


@pytest.mark.parametrize("name", ["realnvp-nflows", "glow-freia", "nice-freia"])
def test_data_init_survives_a_constant_feature(name: str) -> None:
    model = _model(EXACT[name], (4,))
    x = _x((4,), n=32)
    x[:, 2] = 0.0  # e.g. a digits pixel that is always blank
    model.data_init(x)
    z, ladj = model(x)
    assert bool(torch.isfinite(z).all()) and bool(torch.isfinite(ladj).all())


def test_glow_rotation_mixing_is_float32_exact_only() -> None:
    model = _model(GlowFreia, (4,), mixing="rotation")
    x = _x((4,), n=3)
    with torch.no_grad():
        z, ladj = model(x)
        err = _max_abs(model.inverse(z) - x)
    exact = jacobian_slogdet(lambda v: model(v)[0], x)
    assert err <= 1e-5 and _max_abs(ladj - exact) <= 1e-5


@pytest.mark.parametrize(("jac", "expected"), [(0, 0.0), (0.0, 0.0), (np.float64(1.5), 1.5),
                                                (torch.tensor([2.0]), 2.0), (torch.tensor(3.0), 3.0)])
def test_as_ladj_turns_freia_log_dets_into_batch_tensors(jac: object, expected: float) -> None:
    x = torch.zeros(5, 3, dtype=torch.float64)
    out = as_ladj(jac, x)
    assert isinstance(out, Tensor) and out.shape == (5,) and out.dtype == torch.float64
    assert torch.equal(out, torch.full((5,), expected, dtype=torch.float64))


def test_as_ladj_keeps_gradients_and_rejects_wrong_shapes() -> None:
    s = torch.tensor([0.5], requires_grad=True)
    as_ladj(s * 2, torch.zeros(3, 2)).sum().backward()
    assert s.grad is not None and float(s.grad) == 6.0
    with pytest.raises(ValueError, match="shape"):
        as_ladj(torch.zeros(2), torch.zeros(3, 2))


def _banana(n: int, g: torch.Generator) -> Tensor:
    """A 2-D density one coupling can nearly Gaussianise: x1 ~ N(0, 1), x2 = x1^2 / 2 + 0.3 N(0, 1). (n, 2)."""
    a = torch.randn(n, generator=g)
    return torch.stack([a, 0.5 * a**2 + 0.3 * torch.randn(n, generator=g)], dim=1)


def _train_banana(model: InvertibleModel, steps: int = 60) -> tuple[float, float, float, float]:
    """Adam on -log_prob; returns test (NLL before, NLL after, mean |z|^2/2 before, after)."""
    g = torch.Generator().manual_seed(0)
    model.data_init(_banana(256, g))
    test = _banana(512, g)

    def measure() -> tuple[float, float]:
        torch.manual_seed(1)
        with torch.no_grad():
            z, ladj = model(test)
        return float(-(standard_normal_log_prob(z) + ladj).mean()), float(0.5 * (z**2).sum(1).mean())

    nll0, sq0 = measure()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(steps):
        loss = -model.log_prob(_banana(128, g)).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        model.after_step()
    nll1, sq1 = measure()
    return nll0, nll1, sq0, sq1


@pytest.mark.parametrize("name", list(EXACT))
def test_short_training_improves_a_two_d_likelihood(name: str) -> None:
    torch.manual_seed(0)
    before, after, _, _ = _train_banana(EXACT[name](shape=(2,)))
    assert after < before - 0.3, (before, after)


# ------------------------------------------------------------------------------------------- iresnet-freia
def _iresnet(shape: tuple[int, ...], seed: int = 0, **kw: object) -> IResNetFreia:
    torch.manual_seed(seed)
    model = IResNetFreia(shape, **{"depth": 2, "hidden": 16, **kw}).double()  # type: ignore[arg-type]
    model.data_init(_x(shape, n=32, seed=seed + 100))
    return model


def _to_the_bound(model: IResNetFreia) -> None:
    """Blow every weight up, then let FrEIA rescale it to ``spectral_norm_max`` (as strong as allowed)."""
    with torch.no_grad():
        for block in model.blocks:
            for layer in block.layers:
                layer.weight.mul_(10.0)
    model.lipschitz_correction()


def test_iresnet_declares_estimator_and_iterative_inverse() -> None:
    caps = IResNetFreia.capabilities
    assert caps.logdet == "estimator" and caps.inverse == "iterative" and set(caps.inputs) == {"vector", "image"}
    assert IResNetFreia.logdet_tol > EXACT["realnvp-freia"].logdet_tol
    assert set(IResNetFreia((4,)).known_defects()) == {"gradients", "inputs_untouched"}


@pytest.mark.parametrize("shape", [(4,), (1, 4, 4)])
def test_iresnet_round_trip_reports_fixed_iterations_and_residual(shape: tuple[int, ...]) -> None:
    model = _iresnet(shape, actnorm=True).eval()
    x = _x(shape)
    with torch.no_grad():
        z, _ = model(x)
        x_rec, info = model.invert(z)
    assert _max_abs(z - x) > 1e-2
    assert _max_abs(x_rec - x) <= IResNetFreia.roundtrip_tol
    assert info.iterations == 50 and info.per_block == [50, 50]
    assert info.converged and info.residual <= 1e-5 and model.inverse_settings().tol == 1e-5


def test_iresnet_inverse_says_when_it_has_not_converged() -> None:
    model = _iresnet((4,), fixed_point_iterations=2)
    _to_the_bound(model)
    with torch.no_grad():
        z, _ = model(_x((4,)) * 3)
        _, info = model.invert(z)
    assert info.iterations == 2 and not info.converged and info.residual > 1e-5


def test_iresnet_configure_inverse_sets_the_iteration_count() -> None:
    model = _iresnet((4,)).eval()
    _to_the_bound(model)
    z = model.encode(_x((4,)) * 3).detach()
    assert model.inverse_settings() == InverseSettings(solver="fixed_point", tol=1e-5, max_iter=50)
    model.configure_inverse(replace(model.inverse_settings(), max_iter=3))
    _, info = model.invert(z)
    assert info.per_block == [3, 3] and all(b.fixed_point_iterations == 3 for b in model.blocks)
    assert IResNetFreia(**model.config()).inverse_settings() == model.inverse_settings()
    with pytest.raises(ValueError, match="cannot change solver='anderson'"):
        model.configure_inverse(replace(model.inverse_settings(), solver="anderson"))


@pytest.mark.parametrize(("shape", "draws", "actnorm"), [((1,), 1, False), ((4,), 64, False), ((4,), 32, True),
                                                         ((1, 4, 4), 24, False)])
def test_iresnet_ladj_is_unbiased_against_slogdet(shape: tuple[int, ...], draws: int, actnorm: bool) -> None:
    model = _iresnet(shape, depth=1 if len(shape) > 1 else 2, hidden=8, actnorm=actnorm)
    _to_the_bound(model)
    x = _x(shape, n=3)
    exact = jacobian_slogdet(lambda v: model(v)[0], x)
    est = torch.stack([model(x)[1] for _ in range(draws)])  # (R, B)
    assert est.shape == (draws, 3)
    bias = (est.mean(0) - exact).abs()
    se = est.std(0) / math.sqrt(draws) if draws > 1 else torch.zeros(3, dtype=torch.float64)
    # at D = 1 a Rademacher probe is exact, so the only error is the series' truncation
    assert bool((bias <= IResNetFreia.logdet_tol + 4 * se).all()), (bias, se)
    torch.manual_seed(7)
    log_prob = model.log_prob(x)
    torch.manual_seed(7)  # the same Hutchinson probes
    z, ladj = model(x)
    assert torch.allclose(log_prob, standard_normal_log_prob(z) + ladj, atol=1e-12, rtol=0)


def test_iresnet_ladj_carries_no_parameter_gradient_although_the_true_log_det_does() -> None:
    model = _iresnet((4,))
    _to_the_bound(model)
    x = _x((4,), n=2)
    z, ladj = model(x)
    params = [p for p in model.parameters() if p.requires_grad]
    if ladj.requires_grad:
        grads = torch.autograd.grad(ladj.sum(), params, allow_unused=True)
        assert all(g is None or float(g.abs().max()) == 0.0 for g in grads)
    true_grads = torch.autograd.grad(_exact_logdet_with_graph(model, x).sum(), params, allow_unused=True)
    assert sum(float(g.norm()) for g in true_grads if g is not None) > 1e-3
    assert z.requires_grad  # the latent itself does train
    assert "gradient" in model.known_defects()["gradients"]


def test_iresnet_spectral_norm_is_only_bounded_by_lipschitz_correction() -> None:
    torch.manual_seed(0)
    model = IResNetFreia((4,), depth=2, hidden=16)
    bound = model.blocks[0].spectral_norm_max

    def norms() -> list[float]:
        return [float(torch.linalg.matrix_norm(layer.weight.detach(), 2)) for b in model.blocks for layer in b.layers]

    assert max(norms()) <= bound * 1.01  # corrected once at construction
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    loss = -model.log_prob(_x((4,), n=64).float() * 3).mean()
    opt.zero_grad()
    loss.backward()
    opt.step()
    assert max(norms()) > bound * 1.1  # nothing in FrEIA's forward/backward keeps the bound
    model.after_step()
    assert max(norms()) <= bound * 1.01


def test_iresnet_lipschitz_correction_works_in_float64_through_the_adapter() -> None:
    model = _iresnet((4,))
    with pytest.raises(RuntimeError):  # FrEIA's own call draws float32 power-iteration vectors
        model.blocks[0].lipschitz_correction()
    model.after_step()  # the adapter runs it in the weights' dtype


def test_iresnet_reverse_log_det_is_taken_at_the_output_not_the_input() -> None:
    # D = 1: a Rademacher probe is exact and 60 terms leave < 1e-7 of series, so any gap is not estimator noise
    model = _iresnet((1,), depth=1, hidden=8, jacobian_iterations=60)
    _to_the_bound(model)
    x = torch.linspace(-3.0, 3.0, 13, dtype=torch.float64).reshape(-1, 1)
    z = model(x)[0].detach()
    at_x = jacobian_slogdet(lambda v: model(v)[0], x)  # the true log|det dF/dx| at x
    at_y = jacobian_slogdet(lambda v: model(v)[0], z)  # the same function evaluated at y = F(x)
    rev = model.library_inverse_logdet(z)
    assert torch.equal(rev, model.library_inverse_logdet(z))  # no estimator noise at D = 1
    assert _max_abs(rev + at_y) <= 1e-7  # FrEIA's -J is evaluated at y ...
    gap = _max_abs(rev + at_x)
    assert gap > 1e-4  # ... which is not the true inverse log-det -J(x)
    assert _max_abs(model(x)[1] - at_x) <= 1e-7  # the forward estimate is right


def test_iresnet_works_under_no_grad_and_flips_the_callers_requires_grad() -> None:
    model = _iresnet((4,), actnorm=True)
    x = _x((4,))
    z_only = model.encode(x)  # the latent without the estimator leaves x alone ...
    assert not x.requires_grad
    with torch.no_grad():
        z, ladj = model(x)
    assert not z.requires_grad and not ladj.requires_grad and ladj.shape == (4,)
    assert torch.equal(z, z_only.detach())
    assert x.requires_grad  # ... the estimator sets requires_grad on the caller's leaf input (kept visible)


def test_iresnet_configure_estimator_maps_to_freia_settings() -> None:
    model = _iresnet((4,))
    settings = model.estimator_settings()
    assert (settings.method, settings.terms, settings.probes, settings.probe) == ("series", 10, 1, "rademacher")
    model.configure_estimator(replace(settings, terms=7, probes=3))
    assert all(b.jacobian_iterations == 7 and b.hutchinson_samples == 3 for b in model.blocks)
    assert model.estimator_settings() == replace(settings, terms=7, probes=3)
    cfg = model.config()
    assert cfg["jacobian_iterations"] == 7 and cfg["hutchinson_samples"] == 3
    with pytest.raises(ValueError, match="cannot change method='roulette'"):
        model.configure_estimator(replace(settings, method="roulette"))


def test_iresnet_actnorm_variant_standardises_and_its_log_det_has_a_gradient() -> None:
    model = _iresnet((4,), actnorm=True)
    x = _x((4,), n=256) * 4
    model.data_init(x)
    first_act = model.inn.module_list[1]
    assert isinstance(first_act, Fm.ActNorm)
    with torch.no_grad():
        h = model.inn.module_list[0]([x], jac=False)[0][0]
        y = first_act([h])[0][0]
    assert torch.allclose(y.std(dim=0), torch.ones(4, dtype=torch.float64), atol=1e-9)
    assert model(x[:2])[1].requires_grad  # through ActNorm's scale only


def test_iresnet_training_without_log_det_gradient_worsens_the_likelihood() -> None:
    # the consequence of the missing gradient: the optimiser only shrinks z, so the true NLL gets worse
    torch.manual_seed(0)
    nll0, nll1, sq0, sq1 = _train_banana(IResNetFreia((2,)))
    assert sq1 < sq0  # the N(z) term it does see improves ...
    assert nll1 > nll0  # ... while the likelihood it is meant to maximise degrades


def test_nsf_splines_invert_inside_and_outside_their_interval() -> None:
    """Points far outside ``[-tail_bound, tail_bound]`` take the linear tails: still exact round trips and log-dets,
    and a spline layer there is the identity (its ladj is 0 when every coordinate lies in the tails)."""
    torch.manual_seed(0)
    model = NSFNflows((2,), depth=2, hidden=16, bins=4, tail_bound=1.0).double()
    with torch.no_grad():  # perturb every parameter so the splines are far from the identity
        for p in model.parameters():
            p.add_(0.5 * torch.randn_like(p))
    g = torch.Generator().manual_seed(3)
    x = torch.cat([torch.randn(8, 2, generator=g, dtype=torch.float64) * 0.4,
                   torch.randn(8, 2, generator=g, dtype=torch.float64) * 6.0])
    with torch.no_grad():
        z, ladj = model(x)
        assert _max_abs(model.inverse(z) - x) < 1e-9
    exact = jacobian_slogdet(lambda t: model(t)[0], x)
    assert _max_abs(ladj - exact) < 1e-8
    spline = model.steps[1]
    far = torch.full((3, 2), 50.0, dtype=torch.float64)
    with torch.no_grad():
        out, spline_ladj = spline(far)
    assert torch.equal(out, far) and torch.equal(spline_ladj, torch.zeros(3, dtype=torch.float64))
