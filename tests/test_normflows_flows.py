"""The normflows 1.7.3 adapters: glow-normflows (GlowBlock / MultiscaleFlow, learned LU maps) and resflow-normflows
(Residual + LipschitzMLP / LipschitzCNN): normflows' own numbers reproduced, its quirks normalised, its defects
detected (never patched)."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import normflows as nf
import pytest
import torch
from torch import Tensor, nn

from models import registry
from models.base import InvertibleModel, standard_normal_log_prob
from models.jacobian import jacobian_slogdet
from models.normflows_flows import UNCAPPED, GlowNormflows, ResFlowNormflows, as_ladj
from models.testing import validate

SMALL = {"depth": 2, "hidden": 16}
LIPSCHITZ_LAYERS = (nf.nets.lipschitz.InducedNormLinear, nf.nets.lipschitz.InducedNormConv2d)


def _x(shape: tuple[int, ...], n: int = 4, seed: int = 1) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    if len(shape) > 1:  # image-like data in (0, 1)
        return torch.rand((n, *shape), generator=g, dtype=torch.float64)
    return torch.randn((n, *shape), generator=g, dtype=torch.float64) * 1.5 + 0.3


def _model(cls: type[InvertibleModel], shape: tuple[int, ...], seed: int = 0, **kw: object) -> InvertibleModel:
    torch.manual_seed(seed)
    model = cls(shape=shape, **{**SMALL, **kw}).double()  # type: ignore[arg-type]
    model.data_init(_x(shape, n=64, seed=seed + 100))
    return model


def _at_bound(model: nn.Module) -> None:
    """Every Lipschitz layer at its bound ``||W||_2 = coeff`` (weights scaled up, normflows' soft normalisation
    divides them back to the bound): the strongest Jacobians the blocks allow, as training pushes them."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, LIPSCHITZ_LAYERS):
                m.weight.mul_(1e3)
    nf.utils.update_lipschitz(model, 100)


def _resflow(shape: tuple[int, ...] = (2,), seed: int = 0, **kw: object) -> ResFlowNormflows:
    torch.manual_seed(seed)
    model = ResFlowNormflows(shape=shape, **{**SMALL, **kw}).double()  # type: ignore[arg-type]
    _at_bound(model)
    model.data_init(_x(shape, n=64, seed=seed + 100))
    return model


def _grads(model: nn.Module, out: Tensor) -> Tensor:
    params = [p for p in model.parameters() if p.requires_grad]
    grads = torch.autograd.grad(out, params, allow_unused=True)
    return torch.cat([(torch.zeros_like(p) if g is None else g).reshape(-1)
                      for p, g in zip(params, grads, strict=True)])


def _iresblocks(model: ResFlowNormflows) -> list[Any]:
    """normflows' ``iResBlock`` of every block (untyped library modules)."""
    return [block.iresblock for block in model.blocks]


# ------------------------------------------------------------------------------------------- registry, helpers
@pytest.mark.parametrize(("name", "cls"), [("resflow-normflows", ResFlowNormflows), ("glow-normflows", GlowNormflows)])
def test_registry_maps_names_to_these_classes(name: str, cls: type[InvertibleModel]) -> None:
    assert registry.get(name) is cls
    assert (cls.family, cls.backend) == tuple(name.split("-"))
    assert cls.width_hparam == "hidden"


def test_as_ladj_broadcasts_every_normflows_log_det_form() -> None:
    x = torch.zeros(3, 2, dtype=torch.float64)
    for log_det, expected in [(0, [0.0] * 3), (torch.tensor(1.5), [1.5] * 3), (torch.tensor([[1.0], [2.0], [3.0]]),
                                                                            [1.0, 2.0, 3.0])]:
        out = as_ladj(log_det, x)
        assert out.shape == (3,) and out.dtype == torch.float64 and out.tolist() == expected


# ------------------------------------------------------------------------------------------- resflow-normflows
def test_resflow_is_normflows_own_flow_in_eval() -> None:
    """At D = 2 normflows' eval mode takes the exact log-det (brute force): the adapter's log_prob is normflows'
    ``NormalizingFlow.log_prob`` over the same modules (latent -> data order) and equals the exact value."""
    model = _resflow((2,)).eval()
    flows: list[nn.Module] = []
    for norm, block in zip(model.norms, model.blocks, strict=True):
        flows = [block, norm, *flows]
    reference = nf.NormalizingFlow(nf.distributions.DiagGaussian(2, trainable=False), flows).double()
    x = _x((2,))
    lp = model.log_prob(x)
    assert torch.allclose(lp, reference.log_prob(x), atol=1e-12, rtol=0)
    z, ladj = (t.detach() for t in model(x))
    assert torch.allclose(ladj, model.exact_logdet(x), atol=1e-10, rtol=0)
    assert float(ladj.abs().min()) > 1e-3 and float((z - x).abs().max()) > 1e-2


def test_training_value_is_the_roulette_estimate_not_normflows_surrogate() -> None:
    """Same draws (torch seed) in both modes: the adapter's default training value is unbiased for the exact log-det;
    normflows' own value (``training_value="surrogate"``) differs from it in expectation, with the same gradient."""
    model = _resflow((2,)).train()
    x = _x((2,))
    exact = model.exact_logdet(x).detach()
    est, sur = [], []
    for i in range(64):
        model.training_value = "estimate"
        torch.manual_seed(i)
        est.append(model(x)[1].detach())
        model.training_value = "surrogate"
        torch.manual_seed(i)
        sur.append(model(x)[1].detach())
    e, s = torch.stack(est), torch.stack(sur)
    se = e.std(0) / math.sqrt(len(est))
    assert bool(((e.mean(0) - exact).abs() <= 4 * se + 1e-9).all())
    diff = (s - e).sum(dim=1)  # paired over the same probe and roulette count, summed over the batch
    assert float(diff.mean().abs()) > 4 * float(diff.std() / math.sqrt(len(est)))
    for mode in ("estimate", "surrogate"):  # the value changes, the gradient is the surrogate's in both
        model.training_value = mode  # type: ignore[assignment]
        torch.manual_seed(7)
        grad = _grads(model, model(x)[1].sum())
        if mode == "estimate":
            first = grad
    assert torch.allclose(first, grad, atol=1e-12, rtol=1e-10)


def test_training_gradient_matches_the_exact_log_det_gradient() -> None:
    model = _resflow((2,)).train()
    x = _x((2,), n=2)
    exact = _grads(model, jacobian_slogdet(model.encode, x, create_graph=True).sum())
    mean = torch.zeros_like(exact)
    draws = 32
    for i in range(draws):
        torch.manual_seed(i)
        mean += _grads(model, model(x)[1].sum()) / draws
    assert float(exact.norm()) > 0
    assert float(torch.nn.functional.cosine_similarity(mean, exact, dim=0)) >= 0.9
    assert float((mean - exact).norm() / exact.norm()) <= 0.25


def test_estimator_hyper_parameters_are_not_trained_and_the_rest_get_gradients() -> None:
    model = _resflow((4,)).train()
    (-model.log_prob(_x((4,), n=8)).mean()).backward()
    for rb in _iresblocks(model):
        assert not rb.geom_p.requires_grad and not rb.lamb.requires_grad
    dead = [n for n, p in model.named_parameters() if p.requires_grad
            and (p.grad is None or not bool(torch.isfinite(p.grad).all()) or float(p.grad.abs().max()) == 0.0)]
    assert not dead, dead


def test_configure_estimator_reaches_normflows_blocks_and_refuses_what_it_cannot() -> None:
    model = _resflow((4,))
    s = model.estimator_settings()
    assert (s.method, s.exact_terms, s.probes, s.tail, s.tail_param, s.neumann_grad) == ("roulette", 2, 1, "geometric",
                                                                                        0.5, True)
    assert s.max_terms == UNCAPPED and s.vjp == "autograd" and s.probe == "gaussian"
    model.configure_estimator(dataclasses.replace(s, exact_terms=3, tail="poisson", tail_param=2.5, neumann_grad=False))
    for rb in _iresblocks(model):
        assert (rb.n_exact_terms, rb.n_dist, rb.neumann_grad, rb.grad_in_forward) == (3, "poisson", False, False)
        assert float(rb.lamb) == 2.5
    model.configure_estimator(dataclasses.replace(model.estimator_settings(), tail="geometric", tail_param=0.25,
                                                  method="series", terms=7))
    rb = _iresblocks(model)[0]
    assert math.isclose(float(torch.sigmoid(rb.geom_p)), 0.25, rel_tol=1e-9) and rb.n_power_series == 7
    twin = ResFlowNormflows(**model.config())
    assert twin.estimator_settings() == model.estimator_settings()
    for change in ({"probe": "rademacher"}, {"max_terms": 100}, {"vjp": "analytic"}, {"method": "exact"}):
        with pytest.raises(ValueError):
            model.configure_estimator(dataclasses.replace(model.estimator_settings(), **change))


def test_exact_method_is_normflows_brute_force_at_d2_only() -> None:
    model = _resflow((2,), method="exact").train()
    x = _x((2,))
    assert all(rb.brute_force for rb in _iresblocks(model))
    ladj = model(x)[1]
    assert torch.allclose(ladj.detach(), model.exact_logdet(x), atol=1e-10, rtol=0)
    exact = _grads(model, jacobian_slogdet(model.encode, x, create_graph=True).sum())
    assert torch.allclose(_grads(model, ladj.sum()), exact, atol=1e-10, rtol=1e-8)
    assert model.estimator_settings().cost_knobs() == ()
    with pytest.raises(ValueError, match="D = 2"):
        ResFlowNormflows((3,), method="exact")


def test_probes_are_replicas_that_average_the_estimate() -> None:
    model = _resflow((4,)).eval()
    x = _x((4,), n=3)
    exact = model.exact_logdet(x)
    variances = {}
    for probes in (1, 4):
        model.configure_estimator(dataclasses.replace(model.estimator_settings(), probes=probes))
        with torch.no_grad():
            draws = torch.stack([model(x)[1] for _ in range(48)])
        variances[probes] = float(draws.var(0).sum())
        se = draws.std(0) / math.sqrt(48)
        assert bool(((draws.mean(0) - exact).abs() <= 4 * se + 1e-9).all())
    assert variances[4] < variances[1] / 2  # 4 independent probes: a quarter of the variance


def test_eval_seed_makes_eval_log_dets_repeatable() -> None:
    model = _resflow((4,)).eval()
    x = _x((4,), n=3)
    model.configure_estimator(dataclasses.replace(model.estimator_settings(), eval_seed=3))
    with torch.no_grad():
        a, b = model(x)[1], model(x)[1]
        model.configure_estimator(dataclasses.replace(model.estimator_settings(), eval_seed=4))
        c = model(x)[1]
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_forward_leaves_the_callers_input_alone_without_actnorm() -> None:
    model = _resflow((2,), actnorm=False)
    for train in (True, False):
        model.train(train)
        x = _x((2,))
        before = x.clone()
        model(x)
        with torch.no_grad():
            model(x)
        assert not x.requires_grad and torch.equal(x, before)


def test_after_step_updates_the_spectral_norm_estimate() -> None:
    model = _resflow((2,))
    layer = next(m for m in model.modules() if isinstance(m, nf.nets.lipschitz.InducedNormLinear))
    with torch.no_grad():
        layer.weight.add_(torch.randn_like(layer.weight))
    u = layer.u.clone()
    model.after_step()
    assert not torch.equal(u, layer.u)


# ------------------------------------------------------------------------------------------- resflow defects
def test_inverse_stops_at_normflows_fixed_rule_above_the_round_trip_tolerance() -> None:
    """The known defect ``roundtrip``: the solve calls itself converged (normflows' rule met) while the float64
    reconstruction error exceeds the adapter's tolerance; the last step is above 1e-5, the tolerance its
    atol / rtol seem to promise, because the rule compares the *squared* step with them."""
    model = _resflow((2,)).eval()
    x = _x((2,), n=64)
    with torch.no_grad():
        x_rec, info = model.invert(model.encode(x))
    err = float((x_rec - x).abs().max())
    assert info.converged and 0 < info.iterations < 1002
    assert err > ResFlowNormflows.roundtrip_tol
    assert info.residual > 1e-5
    (check,) = validate(ResFlowNormflows, shape=(4,), checks=["roundtrip"])
    assert not check.passed and "roundtrip" in ResFlowNormflows((4,)).known_defects()


def test_inverse_reports_normflows_cap_as_not_converged() -> None:
    model = _resflow((2,), coeff=3.0).eval()  # Lip(g) up to 27: no contraction, the iteration cannot settle
    with torch.no_grad():
        model.inverse(_x((2,)) * 10)
    info = model.last_inverse
    assert not info.converged and max(info.per_block) == 1002


def test_jacobian_through_the_training_forward_fails_with_reduce_memory_only() -> None:
    """The known defect ``gradients``: normflows' memory-efficient estimator backpropagates once."""
    x = _x((2,), n=2)
    model = _resflow((2,)).train()
    with pytest.raises(RuntimeError, match="inplace operation"):
        jacobian_slogdet(lambda v: model(v)[0], x)
    plain = _resflow((2,), neumann_grad=False).train()
    assert torch.allclose(jacobian_slogdet(lambda v: plain(v)[0], x), plain.exact_logdet(x), atol=1e-10, rtol=0)
    (check,) = validate(ResFlowNormflows, shape=(4,), checks=["gradients"])
    assert not check.passed and "gradients" in ResFlowNormflows((4,)).known_defects()


# ------------------------------------------------------------------------------------------- glow-normflows
def _glow(shape: tuple[int, ...], levels: int = 2, seed: int = 0) -> GlowNormflows:
    model = _model(GlowNormflows, shape, seed=seed, levels=levels)
    assert isinstance(model, GlowNormflows)
    with torch.no_grad():  # leave the zero-initialised coupling outputs, so the couplings act
        for m in model.modules():
            if isinstance(m, nn.Linear | nn.Conv2d):
                m.weight.add_(0.05 * torch.randn_like(m.weight))
    return model


@pytest.mark.parametrize(("shape", "levels"), [((2,), 1), ((3,), 1), ((5,), 1), ((1, 4, 4), 2), ((1, 8, 8), 3),
                                               ((3, 8, 8), 1)])
def test_glow_round_trip_and_log_det_are_exact(shape: tuple[int, ...], levels: int) -> None:
    model = _glow(shape, levels).eval()
    x = _x(shape, n=3)
    with torch.no_grad():
        z, ladj = model(x)
    with torch.no_grad():
        x_rec = model.inverse(z)
    assert z.shape == x.shape and ladj.shape == (3,) and float((z - x).abs().max()) > 1e-2
    assert float((x_rec - x).abs().max()) <= GlowNormflows.roundtrip_tol
    exact = jacobian_slogdet(lambda v: model(v)[0], x)
    assert float(exact.abs().max()) > 1e-3
    assert float((ladj - exact).abs().max()) <= GlowNormflows.logdet_tol


@pytest.mark.parametrize("shape", [(4,), (1, 8, 8)])
def test_glow_log_prob_is_normflows_log_prob(shape: tuple[int, ...]) -> None:
    """Images: ``MultiscaleFlow.log_prob`` with the standard normal bases; vectors: ``NormalizingFlow.log_prob`` over
    the same steps (``MultiscaleFlow.log_prob`` starts from a python 0 and fails when the first log-det it adds is a
    0-d tensor, as ActNorm's is)."""
    model = _glow(shape)
    x = _x(shape)
    with torch.no_grad():
        z, ladj = model(x)
        lp = model.log_prob(x)
        if len(shape) > 1:
            reference = model.flow.log_prob(x, None)
        else:
            base = nf.distributions.DiagGaussian(shape[0], trainable=False).double()
            reference = nf.NormalizingFlow(base, list(model.flow.flows[0])).log_prob(x)
    assert torch.allclose(lp, standard_normal_log_prob(z) + ladj, atol=1e-12, rtol=0)
    assert torch.allclose(lp, reference, atol=1e-10, rtol=0)


def test_glow_multiscale_latents() -> None:
    model = GlowNormflows((1, 8, 8), depth=1, hidden=8, levels=2)
    assert model.latent_shapes == [(8, 2, 2), (2, 4, 4)]
    blocks = [m for m in model.modules() if isinstance(m, nf.flows.GlowBlock)]
    assert len(blocks) == 2 and [b.flows[1].num_channels for b in blocks] == [8, 4]
    z = torch.randn(2, 1, 8, 8)
    assert torch.equal(model._pack(model._unpack(z)), z)
    with pytest.raises(ValueError):
        GlowNormflows((1, 6, 6), levels=2)


@pytest.mark.parametrize(("shape", "mixing"), [((4,), nf.flows.InvertibleAffine),
                                               ((1, 4, 4), nf.flows.Invertible1x1Conv)])
def test_glow_learns_its_lu_linear_maps(shape: tuple[int, ...], mixing: type[nn.Module]) -> None:
    model = _glow(shape).train()
    maps: list[Any] = [m for m in model.modules() if isinstance(m, mixing)]
    assert maps and all(m.use_lu and m.L.requires_grad and m.U.requires_grad and m.log_S.requires_grad for m in maps)
    before = [m._assemble_W().detach().clone() for m in maps]
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    (-model.log_prob(_x(shape, n=16)).mean()).backward()
    opt.step()
    after = [m._assemble_W().detach() for m in maps]
    assert all(float((a - b).abs().max()) > 1e-4 for a, b in zip(after, before, strict=True))
    x = _x(shape, n=3)
    with torch.no_grad():
        assert float((model.inverse(model(x)[0]) - x).abs().max()) <= GlowNormflows.roundtrip_tol


def test_glow_data_init_standardises_the_first_actnorm() -> None:
    model = GlowNormflows((3,), depth=1, hidden=8).double()
    first = model.flow.flows[0][-1]  # the data -> latent walk applies the last latent -> data flow first
    assert isinstance(first, nf.flows.ActNorm)
    x = _x((3,), n=256)
    model.data_init(x)
    h, _ = first.inverse(x)
    assert torch.allclose(h.mean(0), torch.zeros(3, dtype=torch.float64), atol=1e-10)
    assert torch.allclose(h.std(0), torch.ones(3, dtype=torch.float64), atol=1e-5)
