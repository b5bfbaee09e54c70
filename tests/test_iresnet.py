"""Native i-ResNet and Residual Flow: log-dets against autograd, estimator statistics, spectral norms, inverses.

References: Behrmann et al., "Invertible Residual Networks", ICML 2019; Chen et al., "Residual Flows for
Invertible Generative Modeling", NeurIPS 2019.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import replace
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils._python_dispatch import TorchDispatchMode

from bench.suite import SuiteError, parse_suite, validate_names
from models.activations import ELU, LipSwish
from models.actnorm import ActNorm
from models.base import InverseSettings
from models.iresnet import ChainVJP, IResNetNative, ResFlowNative, ResidualBlock, ResidualFlow, ResidualNet
from models.jacobian import jacobian_from_vjp, jacobian_slogdet
from models.logdet_estimators import (
    EstimatorSettings,
    block_logdet,
    matrix_series,
    neumann_series,
    power_series,
    sample_tail,
    tail_survival,
)
from models.loss import training_loss
from models.spectral_norm import SpectralNormConv2d, SpectralNormLayer, SpectralNormLinear
from models.squeeze import squeeze, unsqueeze

MODELS = [IResNetNative, ResFlowNative]
SHAPES = [(3,), (1, 4, 4)]
SMALL: dict[str, Any] = {"depth": 2, "hidden": 16}


def saturate(module: nn.Module, factor: float = 10.0, iterations: int = 200) -> None:
    """Scale every spectrally normalised weight up so that its normalised version sits at ``c``."""
    with torch.no_grad():
        for layer in module.modules():
            if isinstance(layer, SpectralNormLayer):
                layer.weight.mul_(factor)
                layer.power_iterate(iterations)


def near_identity(net: ResidualNet, sign: float = -1.0, noise: float = 0.1) -> None:
    """Square layers ``c (I + noise)`` with positive pre-activation biases, so ``J_g ~ sign c^3 I``: a block whose
    higher power-series terms are large (random weights give a much smaller ``J_g`` than the bound ``c^3``)."""
    with torch.no_grad():
        for i, layer in enumerate(net.layers):
            assert isinstance(layer, SpectralNormLinear) and layer.weight.shape[0] == layer.weight.shape[1]
            d = layer.weight.shape[0]
            w = torch.eye(d, dtype=layer.weight.dtype) + noise * torch.randn(d, d, dtype=layer.weight.dtype) / d**0.5
            last = i == len(net.layers) - 1
            layer.weight.copy_(5.0 * (sign if last else 1.0) * w)
            layer.bias.fill_(0.0 if last else 3.0)
            layer.power_iterate(200)


def net_of(model: ResidualFlow, i: int = 0) -> ResidualNet:
    block = model.blocks[i]
    assert isinstance(block, ResidualBlock)
    return block.net


def make(cls: type[ResidualFlow], shape: tuple[int, ...], seed: int = 0, **kw: Any) -> ResidualFlow:
    """A small float64 model with initialised ActNorms (non-trivial scales), in eval mode."""
    torch.manual_seed(seed)
    model = cls(shape, **{**SMALL, **kw}).double()
    saturate(model, factor=3.0)
    model.data_init(1.7 * torch.randn(16, *shape, dtype=torch.float64) + 0.3)
    return model.eval()


def exact_probes(d: int, batch: int, shape: tuple[int, ...]) -> Tensor:
    """Probes ``sqrt(D) e_i``, i = 1..D: their mean of ``v^T A v`` is exactly ``tr(A)``. -> (D, B, *shape)."""
    eye = math.sqrt(d) * torch.eye(d, dtype=torch.float64)
    return eye[:, None, :].expand(d, batch, d).reshape(d, batch, *shape).clone()


# ------------------------------------------------------------------------------------------ log-det exact
@pytest.mark.parametrize("cls", MODELS)
@pytest.mark.parametrize("shape", SHAPES)
def test_exact_method_equals_autograd_slogdet(cls: type[ResidualFlow], shape: tuple[int, ...]) -> None:
    model = make(cls, shape, method="exact")
    x = torch.randn(5, *shape, dtype=torch.float64)
    z, ladj = model(x)
    reference = jacobian_slogdet(model.encode, x)
    assert ladj.shape == (5,)
    assert z.shape == x.shape
    assert torch.allclose(ladj, reference, atol=1e-9, rtol=0)
    assert torch.allclose(model.exact_logdet(x), reference, atol=1e-9, rtol=0)


@pytest.mark.parametrize("probes", [1, 3])
def test_analytic_vjp_equals_autograd_vjp(probes: int) -> None:
    """The analytic vjp (for vectors :class:`ChainVJP`, whose single-probe path runs on matrices) equals autograd's,
    and so do the parameter gradients of a quantity built from it."""
    torch.manual_seed(1)
    for shape, act in [(SHAPES[0], "elu"), (SHAPES[0], "lipswish"), (SHAPES[1], "elu"), (SHAPES[1], "lipswish")]:
        net = ResidualNet(shape, 8, 0.9, act).double()
        x = torch.randn(4, *shape, dtype=torch.float64)
        v = torch.randn(probes, 4, *shape, dtype=torch.float64)
        weights = net.weights(update=False)
        g1, vjp1 = net.linearize(x, weights, "analytic")
        g2, vjp2 = net.linearize(x, weights, "autograd")
        assert torch.allclose(g1, g2)
        out1, out2 = vjp1(v), vjp2(v)
        assert torch.allclose(out1, out2, atol=1e-12)
        # and the gradients of a second-order quantity through both agree
        params = [p for p in net.parameters() if p.requires_grad]
        grads1 = torch.autograd.grad((out1 * v).sum(), params, allow_unused=True, retain_graph=True)
        grads2 = torch.autograd.grad((out2 * v).sum(), params, allow_unused=True)
        assert sum(g is not None for g in grads1) >= len(params) - 1  # only the last bias leaves J unchanged
        for a, b in zip(grads1, grads2, strict=True):
            assert (a is None and b is None) or (a is not None and b is not None and torch.allclose(a, b, atol=1e-10))


# ------------------------------------------------------------------------------------------ estimators
def _estimates(model: ResidualFlow, x: Tensor, rounds: int) -> Tensor:
    with torch.no_grad():
        return torch.stack([model(x)[1] for _ in range(rounds)])  # (rounds, B)


def test_series_bias_shrinks_with_terms() -> None:
    model = make(IResNetNative, (3,), depth=1, hidden=3, probes=2000, probe="rademacher", eval_seed=None)
    near_identity(net_of(model))  # J_g ~ -0.73 I: the truncation bias is large for few terms
    x = torch.randn(4, 3, dtype=torch.float64)
    exact = model.exact_logdet(x)
    biases, errors = [], []
    for terms in (1, 2, 10):
        model.configure_estimator(replace(model.estimator_settings(), terms=terms))
        est = _estimates(model, x, rounds=6)
        diff = est.mean(dim=0) - exact
        biases.append(diff.abs().mean().item())
        errors.append((est.std(dim=0) / math.sqrt(est.shape[0])).mean().item())
    assert biases[0] > biases[1] > biases[2]
    assert biases[0] > 10 * errors[0]  # the one-term bias is far outside the noise
    assert biases[2] < biases[0] / 5


@pytest.mark.parametrize("tail", ["geometric", "poisson"])
def test_roulette_is_unbiased(tail: str) -> None:
    param = 0.5 if tail == "geometric" else 2.0
    # Lip(g) <= 0.8^3 = 0.51 keeps the roulette's variance finite (sum_k Lip^(2k) / P(N >= k) converges)
    model = make(ResFlowNative, (3,), depth=1, hidden=3, probes=8, eval_seed=None, tail=tail, tail_param=param,
                 coeff=0.8)
    near_identity(net_of(model))
    x = torch.randn(6, 3, dtype=torch.float64)
    exact = model.exact_logdet(x).mean()
    est = _estimates(model, x, rounds=600).mean(dim=1)  # batch mean per draw
    se = est.std() / math.sqrt(est.numel())
    assert (est.mean() - exact).abs() < 3 * se
    # the test has power: truncating after the n0 always-computed terms is detectably biased
    model.configure_estimator(replace(model.estimator_settings(), method="series", terms=2, probes=400))
    trunc = _estimates(model, x, rounds=10).mean(dim=1)
    assert (trunc.mean() - exact).abs() > 3 * se + 3 * trunc.std() / math.sqrt(trunc.numel())


@pytest.mark.parametrize(("tail", "param"), [("geometric", 0.5), ("geometric", 0.2), ("poisson", 2.0)])
def test_roulette_tail_survival_matches_draws(tail: str, param: float) -> None:
    gen = torch.Generator().manual_seed(0)
    draws = torch.tensor([sample_tail(tail, param, gen) for _ in range(20000)])
    for j in range(0, 6):
        empirical = (draws >= j).double().mean().item()
        expected = tail_survival(tail, param, j)
        assert abs(empirical - expected) < 4 * math.sqrt(expected * (1 - expected) / 20000) + 1e-12


def test_eval_seed_makes_the_estimate_repeatable() -> None:
    model = make(ResFlowNative, (3,))
    x = torch.randn(4, 3, dtype=torch.float64)
    (z1, l1), (z2, l2) = model(x), model(x)
    assert torch.equal(z1, z2) and not torch.equal(l1, l2)  # z is deterministic, the default estimate is not
    torch.manual_seed(11)
    l3 = model(x)[1]
    torch.manual_seed(11)
    assert torch.equal(model(x)[1], l3)  # the global RNG drives it
    model.configure_estimator(replace(model.estimator_settings(), eval_seed=0))
    assert torch.equal(model(x)[1], model(x)[1])
    model.train()
    assert not torch.equal(model(x)[1], model(x)[1])  # training draws fresh probes regardless


def test_configure_estimator_and_inverse_update_config() -> None:
    model = make(IResNetNative, (3,))
    model.configure_estimator(replace(model.estimator_settings(), terms=7, probe="rademacher"))
    model.configure_inverse(InverseSettings(solver="anderson", tol=1e-7, max_iter=30, anderson_memory=3))
    assert model.estimator_settings().terms == 7 and model.estimator_settings().probe == "rademacher"
    assert model.config()["terms"] == 7 and model.config()["inverse_tol"] == 1e-7
    rebuilt = IResNetNative(**model.config())
    assert rebuilt.estimator_settings() == model.estimator_settings()
    assert rebuilt.inverse_settings() == model.inverse_settings()
    assert rebuilt.inverse_settings() == InverseSettings("anderson", 1e-7, 30, 3)
    with pytest.raises(TypeError):
        replace(model.estimator_settings(), nterms=3)  # type: ignore[call-arg]
    with pytest.raises(ValueError, match="unknown log-det method"):
        replace(model.estimator_settings(), method="magic")  # type: ignore[arg-type]


def test_cost_knobs_and_precision_bounds() -> None:
    series, roulette = IResNetNative((2,)).estimator_settings(), ResFlowNative((2,)).estimator_settings()
    assert series.cost_knobs() == ("terms", "probes") and roulette.cost_knobs() == ("exact_terms", "probes")
    assert EstimatorSettings(method="exact").cost_knobs() == ()
    assert series.work() == 5 and roulette.work() == 2 + 1 / 0.5  # n0 + E[Geom(0.5)] = 4 terms, 1 probe
    high = series.at_least(terms=20, exact_terms=20, probes=8)
    assert (high.terms, high.probes, high.exact_terms) == (20, 8, series.exact_terms)  # exact_terms: not a knob
    assert roulette.at_least(terms=20, exact_terms=20, probes=8).knobs() == {"exact_terms": 20, "probes": 8}
    assert series.at_most(terms=1, probes=1).changes_from(series) == {"terms": 1}
    with pytest.raises(ValueError, match="not cost knobs"):
        series.at_least(tail_param=3)


# ------------------------------------------------------------------------------------------ gradients
def test_neumann_gradient_equals_series_gradient_with_exact_traces() -> None:
    """With probes whose Hutchinson mean is the exact trace, the Neumann gradient of the n-term series is the
    gradient of the n-term series (by cyclicity of the trace), and both tend to the gradient of log|det|."""
    torch.manual_seed(2)
    d, batch = 3, 4
    net = ResidualNet((d,), 8, 0.6, "lipswish").double()
    saturate(net)
    x = torch.randn(batch, d, dtype=torch.float64, requires_grad=True)
    params = [p for p in net.parameters() if p is not net.layers[-1].bias] + [x]  # the last bias leaves J alone
    v = exact_probes(d, batch, (d,))

    def grads(fn: str, terms: int) -> Tensor:
        _, vjp = net.linearize(x, net.weights(update=False))
        est = power_series(vjp, v, [1.0] * terms) if fn == "series" else neumann_series(vjp, v, [1.0] * terms)
        return torch.cat([g.reshape(-1) for g in torch.autograd.grad(est.sum(), params)])

    for terms in (3, 8):
        g_series, g_neumann = grads("series", terms), grads("neumann", terms)
        assert torch.allclose(g_series, g_neumann, atol=1e-10, rtol=1e-8)
    _, vjp = net.linearize(x, net.weights(update=False))
    with torch.no_grad():
        assert torch.allclose(neumann_series(vjp, v, [1.0] * 8), power_series(vjp, v, [1.0] * 8))
    # towards the exact log-det gradient as the terms grow
    weights = net.weights(update=False)
    jac = torch.stack([torch.autograd.functional.jacobian(lambda u: net.evaluate(u[None], weights)[0], xi,
                                                          create_graph=True) for xi in x])
    exact = torch.linalg.slogdet(torch.eye(d, dtype=torch.float64) + jac)[1]
    g_exact = torch.cat([g.reshape(-1) for g in torch.autograd.grad(exact.sum(), params)])
    err = [(grads("neumann", t) - g_exact).norm().item() for t in (2, 6, 30)]
    assert err[0] > err[1] > err[2]
    assert err[2] < 1e-6 * g_exact.norm().item()


@pytest.mark.parametrize("neumann", [False, True])
@pytest.mark.parametrize("weights", [[1.0] * 5, [1.0, 1.0, 2.0, 4.0, 8.0, 16.0]])
def test_series_on_the_explicit_jacobian_equals_the_series_through_the_network(neumann: bool,
                                                                               weights: list[float]) -> None:
    """:func:`matrix_series` (Horner's rule on the (D, D) Jacobian, what small vectors use) gives the value and the
    gradient of :func:`power_series` / :func:`neumann_series` through the network's vjp, from the same probes."""
    torch.manual_seed(3)
    d, batch = 3, 6
    net = ResidualNet((d,), 8, 0.8, "elu").double()
    saturate(net)
    x = torch.randn(batch, d, dtype=torch.float64, requires_grad=True)
    v = torch.randn(2, batch, d, dtype=torch.float64)
    params = [*net.parameters(), x]

    def value_and_grads(explicit: bool) -> tuple[Tensor, Tensor]:
        _, vjp = net.linearize(x, net.weights(update=False))
        if explicit:
            est = matrix_series(jacobian_from_vjp(vjp, x), v, weights, neumann)
        else:
            est = neumann_series(vjp, v, weights) if neumann else power_series(vjp, v, weights)
        grads = torch.autograd.grad(est.sum(), params, allow_unused=True)
        return est.detach(), torch.cat([torch.zeros_like(p).reshape(-1) if g is None else g.reshape(-1)
                                        for p, g in zip(params, grads, strict=True)])

    (value_net, grad_net), (value_mat, grad_mat) = value_and_grads(False), value_and_grads(True)
    assert value_net.abs().max() > 1e-2 and grad_net.norm() > 1e-2
    torch.testing.assert_close(value_mat, value_net, atol=1e-12, rtol=1e-10)
    torch.testing.assert_close(grad_mat, grad_net, atol=1e-12, rtol=1e-10)


@pytest.mark.parametrize("hidden_layers", [1, 2, 3])
@pytest.mark.parametrize("activation", ["elu", "lipswish"])
def test_chain_jacobian_is_the_vjp_on_the_unit_vectors(hidden_layers: int, activation: str) -> None:
    """:meth:`ChainVJP.jacobian` (what :func:`jacobian_from_vjp` uses for vector blocks) equals the vjp applied to
    the unit vectors bit for bit, and autograd's Jacobian of ``g``; its gradients by the parameters equal theirs (to
    rounding: the sums run in another order)."""
    torch.manual_seed(4)
    d, batch = 3, 5
    net = ResidualNet((d,), 7, 0.8, activation, hidden_layers=hidden_layers).double()
    saturate(net)
    x = torch.randn(batch, d, dtype=torch.float64)
    weights = net.weights(update=False)
    _, vjp = net.linearize(x, weights)
    assert isinstance(vjp, ChainVJP)
    basis = torch.eye(d, dtype=torch.float64)[:, None, :].expand(d, batch, d)
    by_products = vjp(basis).transpose(0, 1)
    direct = jacobian_from_vjp(vjp, x)
    assert direct.shape == (batch, d, d) and torch.equal(direct, by_products)
    reference = torch.stack([torch.autograd.functional.jacobian(lambda u: net.evaluate(u[None], weights)[0], xi)
                             for xi in x])
    torch.testing.assert_close(direct, reference, atol=1e-12, rtol=1e-10)
    params = list(net.parameters())
    probe = torch.randn(batch, d, d, dtype=torch.float64)
    grads = [torch.autograd.grad((jac * probe).sum(), params, retain_graph=True, allow_unused=True)
             for jac in (direct, by_products)]
    for a, b in zip(*grads, strict=True):
        assert (a is None) == (b is None)
        if a is not None and b is not None:
            torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-10)
    assert any(g is not None and g.abs().max() > 1e-3 for g in grads[0])


def test_block_logdet_takes_the_explicit_jacobian_only_below_terms_times_probes(monkeypatch: pytest.MonkeyPatch
                                                                                ) -> None:
    calls: list[int] = []
    original = matrix_series

    def counting(jac: Tensor, *args: Any) -> Tensor:
        calls.append(jac.shape[1])
        return original(jac, *args)

    monkeypatch.setattr("models.logdet_estimators.matrix_series", counting)
    settings = EstimatorSettings(method="series", terms=5, probes=1)
    for d in (2, 5, 6):
        net = ResidualNet((d,), 8, 0.9, "elu").double()
        x = torch.randn(4, d, dtype=torch.float64)
        _, vjp = net.linearize(x, net.weights(update=False))
        block_logdet(vjp, x, settings, None)
    assert calls == [2, 5]


@pytest.mark.parametrize(("cls", "options"), [(IResNetNative, {}), (ResFlowNative, {}),
                                              (IResNetNative, {"neumann_grad": True}),
                                              (ResFlowNative, {"neumann_grad": False})])
@pytest.mark.parametrize("shape", SHAPES)
def test_gradients_reach_every_parameter(cls: type[ResidualFlow], options: dict[str, Any],
                                         shape: tuple[int, ...]) -> None:
    model = make(cls, shape, **options).train()
    x = torch.randn(8, *shape, dtype=torch.float64)
    model.log_prob(x).mean().backward()
    head = {id(p) for p in model.head.parameters()}
    for name, p in model.named_parameters():
        if id(p) in head:
            assert p.grad is None, name
            continue
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name
    model.zero_grad()
    model.logits(x).sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.head.parameters())


def test_model_level_neumann_gradient_matches_exact_gradient_in_expectation() -> None:
    """Model level, through ``forward``: Neumann-gradient ladj averaged over many probes vs the exact ladj."""
    model = make(IResNetNative, (2,), depth=1, coeff=0.5, terms=25, probes=4000, probe="rademacher",
                 neumann_grad=True)
    x = torch.randn(3, 2, dtype=torch.float64)
    params = [p for n, p in model.named_parameters() if not n.startswith("head")]
    g_est = torch.cat([g.reshape(-1) for g in torch.autograd.grad(model(x)[1].sum(), params, allow_unused=True)
                       if g is not None])
    g_exact = torch.cat([g.reshape(-1) for g in torch.autograd.grad(model.exact_logdet(x).sum(), params,
                                                                     allow_unused=True) if g is not None])
    assert (g_est - g_exact).norm() < 0.05 * g_exact.norm()


# ------------------------------------------------------------------------------------------ spectral norm
def test_linear_spectral_norm_at_most_c() -> None:
    torch.manual_seed(3)
    for (n_in, n_out) in [(2, 64), (64, 64), (64, 2)]:
        layer = SpectralNormLinear(n_in, n_out, coeff=0.9).double()
        saturate(layer, iterations=0)  # only the construction-time power iterations
        layer.power_iterate(50)
        norm = torch.linalg.matrix_norm(layer.normalized_weight(), 2).item()
        assert 0.9 * (1 - 1e-3) <= norm <= 0.9 * (1 + 1e-3)
    # a weight already below c is left alone
    small = SpectralNormLinear(4, 4, coeff=0.9).double()
    with torch.no_grad():
        small.weight.mul_(0.05)
    small.power_iterate(50)
    assert torch.equal(small.normalized_weight(), small.weight)


def _conv_operator(layer: SpectralNormConv2d, weight: Tensor) -> Tensor:
    """The convolution (with its padding, at ``input_hw``) as an explicit (D_out, D_in) matrix."""
    h, w = layer.input_hw
    n = weight.shape[1] * h * w
    basis = torch.eye(n, dtype=weight.dtype).reshape(n, weight.shape[1], h, w)
    return F.conv2d(basis, weight, padding=layer.padding).reshape(n, -1).T


def test_conv_spectral_norm_at_most_c_as_padded_operator() -> None:
    torch.manual_seed(4)
    for (c_in, c_out, k) in [(2, 3, 3), (4, 16, 3), (16, 16, 1), (16, 4, 3)]:
        layer = SpectralNormConv2d(c_in, c_out, k, (4, 4), coeff=0.9).double()
        saturate(layer)
        weight = layer.normalized_weight()
        norm = torch.linalg.matrix_norm(_conv_operator(layer, weight), 2).item()
        assert 0.9 * (1 - 1e-3) <= norm <= 0.9 * (1 + 1e-3)
    # the padded operator's norm is not the reshaped kernel's: normalising the latter would be wrong
    kernel_norm = torch.linalg.matrix_norm(weight.reshape(weight.shape[0], -1), 2).item()
    assert abs(kernel_norm - 0.9) > 0.05


def test_spectral_norm_tracks_weights_during_training() -> None:
    """One power-iteration step per training forward keeps the weights used in each step at c (up to 1 %)."""
    torch.manual_seed(5)
    model = IResNetNative((1, 4, 4), depth=2, hidden=8, coeff=0.9).double()
    saturate(model, factor=3.0)
    layers = [m for m in model.modules() if isinstance(m, SpectralNormConv2d)]
    start = [layer.weight.detach().clone() for layer in layers]
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x = torch.randn(16, 1, 4, 4, dtype=torch.float64)
    worst = 0.0
    for _ in range(25):
        opt.zero_grad()
        (-model.log_prob(x).mean()).backward()  # this forward updated u, v for the current weights
        for layer in layers:
            operator = _conv_operator(layer, layer.normalized_weight(update=False))
            worst = max(worst, torch.linalg.matrix_norm(operator, 2).item())
        opt.step()
    assert worst <= 0.9 * 1.01
    moved = max(((layer.weight - w0).norm() / w0.norm()).item() for layer, w0 in zip(layers, start, strict=True))
    assert moved > 0.01  # the weights did change under the power iteration


@pytest.mark.parametrize("layer_kind", ["linear", "conv"])
@pytest.mark.parametrize(("steps", "gain"), [(1, 1.0), (3, 1.0), (1, 3.0)])
def test_training_normalisation_equals_power_iteration_then_sigma(layer_kind: str, steps: int, gain: float) -> None:
    """The training forward's fused path (the last ``W v`` with a graph, ``sigma = ||W v||``) stores the same
    ``u``, ``v`` and gives the same normalised weight and gradient as :meth:`power_iterate` followed by
    ``sigma() = u^T W v``."""
    torch.manual_seed(4)

    def make_layer() -> SpectralNormLayer:
        torch.manual_seed(4)
        if layer_kind == "linear":
            return SpectralNormLinear(6, 5, 0.7, n_power_iterations=steps, init_iterations=2, gain=gain).double()
        return SpectralNormConv2d(2, 3, 3, (4, 4), 0.7, n_power_iterations=steps, init_iterations=2,
                                  gain=gain).double()

    fused, reference = make_layer().train(), make_layer().train()
    w_fused = fused.normalized_weight(update=True)
    reference.power_iterate(steps)
    w_ref = reference.gain * reference.weight / torch.clamp(reference.sigma() / reference.coeff, min=1.0)
    assert torch.clamp(reference.sigma() / reference.coeff, min=1.0).item() > 1.0  # the normalisation is active
    torch.testing.assert_close(fused.u, reference.u, atol=1e-12, rtol=1e-10)
    torch.testing.assert_close(fused.v, reference.v, atol=1e-12, rtol=1e-10)
    torch.testing.assert_close(w_fused, w_ref, atol=1e-12, rtol=1e-10)
    probe = torch.randn_like(w_ref)
    (g_fused,) = torch.autograd.grad((w_fused * probe).sum(), fused.weight)
    (g_ref,) = torch.autograd.grad((w_ref * probe).sum(), reference.weight)
    torch.testing.assert_close(g_fused, g_ref, atol=1e-12, rtol=1e-10)


@pytest.mark.parametrize("layer_kind", ["linear", "conv"])
def test_power_iteration_to_a_tolerance_finds_the_operator_norm(layer_kind: str) -> None:
    """With ``tol`` the training forward iterates to convergence (the Residual Flows code's practice): after a
    weight change that one step leaves 15 % below, sigma matches the operator norm (the largest singular value of
    the explicit matrix); leaving training mode converges again for the weights as they are then."""
    torch.manual_seed(7)  # a seed whose top two singular values are apart (at 0.9996 apart 1000 steps do not do)
    if layer_kind == "linear":
        layer: SpectralNormLayer = SpectralNormLinear(8, 6, 0.7, init_iterations=2, tol=1e-10).double()
        one: SpectralNormLayer = SpectralNormLinear(8, 6, 0.7, init_iterations=2).double()
    else:
        layer = SpectralNormConv2d(2, 3, 3, (5, 5), 0.7, init_iterations=2, tol=1e-10).double()
        one = SpectralNormConv2d(2, 3, 3, (5, 5), 0.7, init_iterations=2).double()
    one.load_state_dict(layer.state_dict())

    def exact(m: SpectralNormLayer) -> float:
        w = m.weight.detach()
        if layer_kind == "linear":
            return float(torch.linalg.matrix_norm(w, ord=2))
        basis = torch.eye(50, dtype=torch.float64).reshape(50, 2, 5, 5)
        return float(torch.linalg.matrix_norm(m._op(basis, w).reshape(50, -1), ord=2))

    with torch.no_grad():
        change = 4 * torch.randn_like(layer.weight)
        layer.weight.add_(change)
        one.weight.add_(change)
    sigma = exact(layer)
    for m in (layer.train(), one.train()):
        m.normalized_weight(update=True)
    assert float(layer.sigma().detach()) == pytest.approx(sigma, rel=1e-9)
    assert float(one.sigma().detach()) < 0.9 * sigma  # one step from the old vectors is far below
    with torch.no_grad():
        layer.weight.mul_(1.5)
        layer.weight[0].add_(1.0)
    layer.eval()
    assert float(layer.sigma().detach()) == pytest.approx(exact(layer), rel=1e-9)
    with pytest.raises(ValueError, match="tolerance"):
        SpectralNormLinear(3, 3, tol=0.0)


def test_a_model_with_sn_tol_stays_certified_where_one_step_does_not() -> None:
    """The benchmark's ring setting (4 blocks of 2x64, c = 0.9, 300 Adam steps at lr 5e-3): with one power step per
    training forward a layer's norm runs past c (the README's spectral-norm finding); with ``sn_tol`` every layer ends
    at c, so every block is a certified contraction, and the certified inverse stop is used."""
    from models.base import InverseSettings

    lips = {}
    for sn_tol in (None, 1e-3):
        torch.manual_seed(0)
        gen = torch.Generator().manual_seed(0)

        def ring(n: int, gen: torch.Generator = gen) -> Tensor:
            angle = torch.randint(0, 8, (n,), generator=gen).to(torch.float32) * (2 * math.pi / 8)
            return 2 * torch.stack([angle.cos(), angle.sin()], 1) + 0.2 * torch.randn(n, 2, generator=gen)

        model = IResNetNative((2,), coeff=0.9, sn_tol=sn_tol)
        model.data_init(ring(512))
        opt = torch.optim.Adam(model.parameters(), lr=5e-3)
        for _ in range(300):
            loss = -model.log_prob(ring(128)).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        model.eval()
        lips[sn_tol] = [model._block(b).net.lipschitz() for b in model.blocks]
        if sn_tol is not None:
            assert model.config()["sn_tol"] == sn_tol
            model.configure_inverse(InverseSettings(solver="auto", tol=1e-5, stop="error"))
            x = ring(256)
            x_rec, info = model.invert(model.encode(x).detach())
            assert info.stop == "error" and info.converged and info.error_bound is not None
            assert float((x_rec - x).abs().max()) <= 1e-5
    assert max(lips[None]) > 1.0
    assert max(lips[1e-3]) <= 0.9 ** 3 * (1 + 1e-2)
    with pytest.raises(ValueError, match="sn_tol"):
        IResNetNative((2,), sn_tol=-1.0)


def test_power_iteration_updates_only_in_training() -> None:
    model = make(IResNetNative, (3,))
    layer = next(m for m in model.modules() if isinstance(m, SpectralNormLinear))
    with torch.no_grad():
        layer.weight.add_(torch.randn_like(layer.weight))
    u0 = layer.u.clone()
    x = torch.randn(4, 3, dtype=torch.float64)
    model(x)
    assert torch.equal(layer.u, u0)
    model.train()(x)
    assert not torch.equal(layer.u, u0)


# ------------------------------------------------------------------------------------------ inverse
@pytest.mark.parametrize("cls", MODELS)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("solver", ["fixed_point", "anderson"])
def test_float64_round_trip(cls: type[ResidualFlow], shape: tuple[int, ...], solver: str) -> None:
    model = make(cls, shape, solver=solver)
    saturate(model)
    x = torch.randn(6, *shape, dtype=torch.float64)
    x_rec, info = model.invert(model(x)[0])
    assert info.converged
    assert len(info.per_block) == SMALL["depth"] and info.iterations == max(info.per_block)
    assert len(info.history) == sum(info.per_block) and info.residual <= 1e-9
    assert (x_rec - x).abs().max() <= cls.roundtrip_tol


def test_inverse_with_c_above_one_reports_not_converged() -> None:
    model = make(IResNetNative, (3,), coeff=3.0, max_iter=60)
    saturate(model, factor=100.0)  # every layer at norm 3: g is far from contractive
    x = torch.randn(6, 3, dtype=torch.float64)
    z = model.encode(x)
    _, info = model.invert(z)
    assert not info.converged
    assert max(info.per_block) == 60 or not math.isfinite(info.residual) or info.residual > 1e-6
    model.configure_inverse(replace(model.inverse_settings(), solver="anderson"))
    _, info = model.invert(z)
    assert not info.converged


def test_anderson_needs_fewer_iterations_than_fixed_point() -> None:
    torch.manual_seed(6)
    net = ResidualNet((4,), 4, 0.9, "elu").double()
    near_identity(net)  # J_g ~ -0.73 I: plain iteration contracts by ~0.73 per step
    block = ResidualBlock(net).eval()
    x = 2 * torch.randn(32, 4, dtype=torch.float64)
    y = block(x)[0]
    x_plain, plain = block.inverse(y, "fixed_point", atol=1e-10, rtol=1e-10, max_iter=1000)
    x_and, accel = block.inverse(y, "anderson", atol=1e-10, rtol=1e-10, max_iter=1000)
    assert plain.converged and accel.converged
    assert 2 * accel.iterations < plain.iterations
    assert (x_plain - x).abs().max() < 1e-8 and (x_and - x).abs().max() < 1e-8


def test_float32_default_tolerance_converges() -> None:
    torch.manual_seed(7)
    model = ResFlowNative((1, 4, 4), **SMALL)
    saturate(model)
    x = torch.randn(8, 1, 4, 4)
    model.data_init(x)
    model.eval()
    x_rec, info = model.invert(model(x)[0])
    assert info.converged and (x_rec - x).abs().max() < 1e-4


# ------------------------------------------------------------------------------------------ pieces
@pytest.mark.parametrize("cls", MODELS)
@pytest.mark.parametrize("shape", SHAPES)
def test_logits_shape(cls: type[ResidualFlow], shape: tuple[int, ...]) -> None:
    model = cls(shape, num_classes=7, **SMALL)
    assert model.logits(torch.randn(5, *shape)).shape == (5, 7)
    assert cls(shape, **SMALL).logits(torch.randn(2, *shape)).shape == (2, 10)


def test_config_rebuilds_and_state_dict_round_trips() -> None:
    model = make(ResFlowNative, (1, 4, 4), terms=3)
    rebuilt = ResFlowNative(**model.config()).double()
    rebuilt.load_state_dict(model.state_dict())
    rebuilt.eval()
    x = torch.randn(3, 1, 4, 4, dtype=torch.float64)
    torch.manual_seed(0)
    z1, l1 = model(x)
    torch.manual_seed(0)
    z2, l2 = rebuilt(x)
    assert torch.equal(z1, z2) and torch.equal(l1, l2)
    assert all(isinstance(n, ActNorm) and bool(n.initialized) for n in rebuilt.actnorms)


class _ScalarReads(TorchDispatchMode):
    """Counts the operations that copy a tensor's value to Python (on a GPU, host synchronisations)."""

    def __init__(self) -> None:
        super().__init__()
        self.reads = 0

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        if func.overloadpacket.__name__ in ("_local_scalar_dense", "is_nonzero"):
            self.reads += 1
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("cls", MODELS)
@pytest.mark.parametrize("shape", SHAPES)
def test_a_training_step_reads_no_model_tensor_into_python(cls: type[ResidualFlow], shape: tuple[int, ...]) -> None:
    """After its ActNorms are initialised, a training forward and backward copies no tensor value to Python (an
    ActNorm keeps its flag in Python: a read of the buffer is a host synchronisation on a GPU), except the Residual
    Flow's roulette length, one draw per block from a generator on the CPU."""
    model = cls(shape, **SMALL)
    x = torch.randn(8, *shape)
    model.train()
    training_loss(model, x, objective="likelihood").backward()  # initialises the ActNorms
    with _ScalarReads() as mode:
        training_loss(model, x, objective="likelihood").backward()
    roulette = model.estimator_settings().method == "roulette"
    assert mode.reads == (SMALL["depth"] if roulette else 0)


def test_actnorm_reads_its_flag_again_after_a_state_dict_is_loaded() -> None:
    """The flag kept in Python follows the buffer through ``load_state_dict``: an uninitialised state loaded into an
    initialised ActNorm makes the next training forward initialise it from that batch."""
    fresh, used = ActNorm(3), ActNorm(3)
    used.train()
    used(torch.randn(16, 3) * 5 + 2)
    assert used.is_initialized()
    used.load_state_dict(fresh.state_dict())
    assert not used.is_initialized()
    x = torch.randn(16, 3) * 3 - 1
    y, _ = used(x)
    assert used.is_initialized()
    torch.testing.assert_close(y.mean(dim=0), torch.zeros(3), atol=1e-5, rtol=0)
    fresh.load_state_dict(used.state_dict())
    assert fresh.is_initialized()


def test_defaults_differ_as_the_papers_do() -> None:
    ires, resflow = IResNetNative((2,)), ResFlowNative((2,))
    assert ires.estimator_settings().method == "series" and not ires.estimator_settings().neumann_grad
    assert resflow.estimator_settings().method == "roulette" and resflow.estimator_settings().neumann_grad
    assert isinstance(net_of(ires).acts[0], ELU) and isinstance(net_of(resflow).acts[0], LipSwish)
    assert ires.config()["coeff"] == 0.9 and resflow.config()["coeff"] == 0.98
    with pytest.raises(TypeError, match="width"):
        IResNetNative((2,), width=3)  # type: ignore[call-arg]


def test_squeeze_is_a_permutation() -> None:
    x = torch.randn(2, 3, 4, 6)
    s = squeeze(x)
    assert s.shape == (2, 12, 2, 3)
    assert torch.equal(unsqueeze(s), x)
    assert torch.equal(s.flatten().sort().values, x.flatten().sort().values)


def test_elu_derivative_equals_exp_of_min_in_value_and_gradient() -> None:
    """ELU's fused derivative (ELU's own backward kernel on the result) is ``exp(min(a, 0))``, and so is its gradient
    (the log-det's backward goes through it)."""
    torch.manual_seed(6)
    a = torch.randn(32, 8, dtype=torch.float64) * 3
    h, d = ELU().value_and_derivative(a)
    torch.testing.assert_close(h, F.elu(a), atol=0, rtol=0)
    torch.testing.assert_close(d, torch.exp(torch.clamp(a, max=0.0)), atol=1e-15, rtol=1e-14)
    x = a.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda t: ELU().value_and_derivative(t)[1], (x,))
    assert torch.autograd.gradgradcheck(lambda t: ELU().value_and_derivative(t)[1], (x,))


def test_lipswish_derivative_and_lipschitz_bound() -> None:
    act = LipSwish(beta=3.0).double()
    a = torch.linspace(-8, 8, 2001, dtype=torch.float64, requires_grad=True)
    (auto,) = torch.autograd.grad(act(a).sum(), a)
    assert torch.allclose(act.derivative(a), auto, atol=1e-12)
    assert auto.abs().max() <= 1.0
    elu = ELU()
    (auto,) = torch.autograd.grad(elu(a).sum(), a)
    assert torch.allclose(elu.derivative(a), auto, atol=1e-12)
    for fn in (act, elu):  # the fused value/derivative agrees with the separate ones, and so do its gradients
        value, deriv = fn.value_and_derivative(a)
        assert torch.allclose(value, fn(a)) and torch.allclose(deriv, fn.derivative(a), atol=1e-12)
        (g1,) = torch.autograd.grad(deriv.sum(), a)
        (g2,) = torch.autograd.grad(fn.derivative(a).sum(), a)
        assert torch.allclose(g1, g2, atol=1e-12)


def test_estimator_settings_reject_bad_values() -> None:
    with pytest.raises(ValueError):
        EstimatorSettings(probe="uniform")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        EstimatorSettings(tail="geometric", tail_param=1.5)
    with pytest.raises(ValueError, match="solver"):
        InverseSettings(solver="broyden")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_iter"):
        InverseSettings(max_iter=0)


@pytest.mark.parametrize("cls", MODELS)
def test_hyper_parameters_are_explicit_keywords(cls: type[ResidualFlow]) -> None:
    """No ``**kwargs``: the suite checks hyper-parameter names against the signature before anything runs."""
    params = inspect.signature(cls.__init__).parameters
    assert not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    model = cls((2,))
    assert set(model.config()) == set(params) - {"self"}  # shape, num_classes (a classifier: 10) and all
    assert set(EstimatorSettings().as_dict()) <= set(params)


def test_suite_rejects_a_misspelt_hyper_parameter_with_did_you_mean() -> None:
    data = {"name": "typo", "models": {"iresnet-native": {"depht": 4}}, "tasks": ["inverse_cost"],
            "datasets": ["moons"]}
    with pytest.raises(SuiteError, match=r"depht.*did you mean depth"):
        validate_names(parse_suite(data))


def test_inverse_solves_without_tf32_and_restores_the_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    """The solves of the iterative inverse run with TF32 off (on a GPU it stalls them near 1e-3; measured on an
    H100, see models.fixed_point); the caller's TF32 settings are back afterwards, also after an error."""
    torch.manual_seed(8)
    model = make(IResNetNative, (1, 4, 4))
    x = torch.randn(4, 1, 4, 4, dtype=torch.float64)
    z = model.encode(x)
    seen: list[tuple[bool, bool]] = []
    evaluate = ResidualNet.evaluate

    def spy(self: ResidualNet, h: Tensor, weights: Any) -> Tensor:
        seen.append((torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32))
        return evaluate(self, h, weights)

    monkeypatch.setattr(ResidualNet, "evaluate", spy)
    cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
    saved = (cudnn.allow_tf32, matmul.allow_tf32)  # torch's flag objects do not suit monkeypatch's undo
    cudnn.allow_tf32, matmul.allow_tf32 = True, True
    try:
        x_rec, info = model.invert(z)
        assert info.converged and (x_rec - x).abs().max() < 1e-8
        assert seen and all(flags == (False, False) for flags in seen)
        assert cudnn.allow_tf32 and matmul.allow_tf32

        def boom(self: ResidualNet, h: Tensor, weights: Any) -> Tensor:
            raise RuntimeError("solver failed")

        monkeypatch.setattr(ResidualNet, "evaluate", boom)
        with pytest.raises(RuntimeError, match="solver failed"):
            model.invert(z)
        assert cudnn.allow_tf32 and matmul.allow_tf32
    finally:
        cudnn.allow_tf32, matmul.allow_tf32 = saved
