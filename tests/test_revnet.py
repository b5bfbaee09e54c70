"""The native RevNet (Gomez et al., NeurIPS 2017): invertibility, NICE's scaling and the volume-preserving floor
without it, memory-saving backprop."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import Tensor
from torch.nn import functional as F

from bench.memory import peak_rss_of_fresh_process, saved_tensor_bytes
from bench.units import bits_per_dim
from models import registry
from models.jacobian import jacobian_slogdet
from models.loss import training_loss
from models.reversible import AdditiveCouplingBlock, ReversibleLayer, Squeeze
from models.revnet import ConvResidual, MLPResidual, RevNetNative

SHAPES = [(4,), (5,), (2,), (1, 4, 4), (3, 3, 3), (1, 8, 8)]


def _model(shape: tuple[int, ...], seed: int = 0, **kw: object) -> RevNetNative:
    torch.manual_seed(seed)
    return RevNetNative(shape, **{"depth": 3, "hidden": 8, **kw}).double()  # type: ignore[arg-type]


def _x(shape: tuple[int, ...], n: int = 4, seed: int = 1) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn((n, *shape), generator=g, dtype=torch.float64)


def _loss(model: RevNetNative, x: Tensor, kind: str) -> Tensor:
    if kind == "log_prob":
        return -model.log_prob(x).mean()
    labels = torch.arange(x.shape[0]) % 10
    return F.cross_entropy(model.logits(x), labels)


def test_registry_builds_revnet() -> None:
    model = registry.create("revnet-native", shape=(6,), depth=2)
    assert isinstance(model, RevNetNative)
    assert model.capabilities.memory_saving and not model.capabilities.volume_preserving
    assert model.config()["scaling"] is True and model.log_scale is not None and model.nll_floor() is None


@pytest.mark.parametrize("scaling", [True, False])
@pytest.mark.parametrize("shape", SHAPES)
def test_roundtrip_float64(shape: tuple[int, ...], scaling: bool) -> None:
    model = _model(shape, scaling=scaling).eval()
    if model.log_scale is not None:
        model.log_scale.data.normal_(0.0, 0.5)
    x = _x(shape)
    with torch.no_grad():
        z, _ = model(x)
        x_rec = model.inverse(z)
    assert z.shape == x.shape
    assert float((z - x).abs().max()) > 1e-2  # the map is not the identity
    assert float((x_rec - x).abs().max()) < 1e-12


@pytest.mark.parametrize("shape", [(4,), (1, 4, 4)])
def test_ladj_is_exactly_zero_without_scaling_and_matches_slogdet(shape: tuple[int, ...]) -> None:
    model = _model(shape, scaling=False)
    x = _x(shape, n=3)
    z, ladj = model(x)
    assert ladj.shape == (3,) and ladj.dtype == torch.float64
    assert torch.equal(ladj, torch.zeros(3, dtype=torch.float64))
    exact = jacobian_slogdet(lambda v: model(v)[0], x)
    assert float(exact.abs().max()) < 1e-10
    assert torch.allclose(model.log_prob(x), -0.5 * (z.reshape(3, -1) ** 2).sum(1)
                          - 0.5 * model.dim * torch.log(torch.tensor(2 * torch.pi, dtype=torch.float64)))


@pytest.mark.parametrize("shape", [(4,), (1, 4, 4)])
def test_scaling_ladj_is_the_sum_of_log_scales_and_matches_slogdet(shape: tuple[int, ...]) -> None:
    """NICE's top scaling layer (Dinh et al., sec. 3.3): ladj = sum(s), the autograd Jacobian's slogdet."""
    model = _model(shape)
    assert model.log_scale is not None
    model.log_scale.data.normal_(0.0, 0.5, generator=torch.Generator().manual_seed(4))
    x = _x(shape, n=3)
    z, ladj = model(x)
    expected = model.log_scale.detach().sum().expand(3)
    assert float(expected.abs().max()) > 0.1
    assert torch.equal(ladj, expected)
    exact = jacobian_slogdet(lambda v: model(v)[0], x)
    assert torch.allclose(ladj, exact, atol=1e-10)
    unscaled = _model(shape, scaling=False)
    unscaled.load_state_dict({k: v for k, v in model.state_dict().items() if k != "log_scale"})
    with torch.no_grad():
        assert torch.allclose(z, unscaled(x)[0] * model.log_scale.exp(), atol=1e-12)
        assert torch.equal(model.logits(x), unscaled.logits(x))  # the head reads the unscaled trunk


def test_data_init_standardises_the_latent() -> None:
    model = _model((6,))
    x = 0.01 * _x((6,), n=256) + 2.0
    model.data_init(x)
    with torch.no_grad():
        z, _ = model(x)
    assert torch.allclose(z.std(0), torch.ones(6, dtype=torch.float64), atol=1e-10)


def test_nll_floor_figures() -> None:
    """(D/2) ln(2 pi) nats; in bits/dim log2(L) + log2(2 pi) / 2: 5.413 on 17-level digits, 9.326 on 8-bit data."""
    floor = _model((64,), scaling=False).nll_floor()
    assert floor is not None and floor == pytest.approx(32 * math.log(2 * math.pi))
    assert float(bits_per_dim(floor, 64, 17)) == pytest.approx(5.4132, abs=1e-4)
    assert float(bits_per_dim(floor, 64, 256)) == pytest.approx(9.3257, abs=1e-4)


def _short_fit(scaling: bool) -> tuple[float, float]:
    """Held-out NLL (nats) and the floor (D/2) ln(2 pi) after 150 Adam steps on N(0, 0.05^2 I) data in D = 4,
    from log-scales 0 (no data_init: the scaling starts as the identity)."""
    model = _model((4,), scaling=scaling)
    g = torch.Generator().manual_seed(5)
    train, test = (0.05 * torch.randn(n, 4, generator=g, dtype=torch.float64) for n in (512, 512))
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    for _ in range(150):
        opt.zero_grad()
        training_loss(model, train).backward()
        opt.step()
    with torch.no_grad():
        nll = float(-model.eval().log_prob(test).mean())
    return nll, 0.5 * 4 * math.log(2 * math.pi)


def test_scaling_goes_below_the_volume_preserving_floor_on_small_scale_data() -> None:
    """N(0, 0.05^2 I) in D = 4 has entropy 2 ln(2 pi e 0.0025) = -6.3 nats, far below the floor of 3.68: the
    scaled model gets below the floor in a short fit; without the scaling the NLL stays above it."""
    scaled, floor = _short_fit(scaling=True)
    plain, _ = _short_fit(scaling=False)
    assert scaled < floor - 1.0, (scaled, floor)
    assert plain >= floor, (plain, floor)


@pytest.mark.parametrize("memory_saving", [True, False])
@pytest.mark.parametrize("shape", [(5,), (1, 4, 4)])
def test_gradients_reach_every_parameter(shape: tuple[int, ...], memory_saving: bool) -> None:
    model = _model(shape, memory_saving=memory_saving)
    x = _x(shape, n=8)
    trunk = dict(model.trunk.named_parameters())
    head = dict(model.head.named_parameters())
    assert trunk and head

    assert model.log_scale is not None
    scale = {"log_scale": model.log_scale}

    model.zero_grad()
    _loss(model, x, "log_prob").backward()
    for name, p in {**trunk, **scale}.items():
        assert p.grad is not None and bool(torch.isfinite(p.grad).all()) and float(p.grad.abs().sum()) > 0, name
    for name, p in head.items():
        assert p.grad is None, f"log_prob does not involve the head, yet {name} got a gradient"

    model.zero_grad()
    _loss(model, x, "logits").backward()
    for name, p in {**trunk, **head}.items():
        assert p.grad is not None and bool(torch.isfinite(p.grad).all()) and float(p.grad.abs().sum()) > 0, name
    assert model.log_scale.grad is None, "the logits do not involve the scaling"


@pytest.mark.parametrize("kind", ["log_prob", "logits"])
@pytest.mark.parametrize("shape", [(5,), (1, 4, 4), (3, 3, 3)])
def test_memory_saving_gradients_equal_ordinary_backprop(shape: tuple[int, ...], kind: str) -> None:
    model = _model(shape, depth=4)
    x = _x(shape, n=6).requires_grad_(True)
    names = ["x", *(n for n, _ in model.named_parameters())]
    params = list(model.parameters())
    grads = {}
    for mode in (True, False):
        model.set_memory_saving(mode)
        out = model.features(x)
        uses_function = "_ReversibleFunction" in type(out.grad_fn).__name__
        assert uses_function == mode, type(out.grad_fn).__name__
        grads[mode] = torch.autograd.grad(_loss(model, x, kind), [x, *params], allow_unused=True)
    for i, (a, b) in enumerate(zip(grads[True], grads[False], strict=True)):
        if b is None:  # the head under log_prob, the scaling under logits
            assert a is None and (kind == "log_prob") == names[i].startswith("head."), names[i]
            continue
        assert a is not None
        rel = float((a - b).norm() / b.norm().clamp_min(1e-300))
        assert rel < 1e-6, (i, rel)


def test_memory_saving_backward_without_input_grad_and_repeated() -> None:
    model = _model((1, 4, 4))
    x = _x((1, 4, 4))
    loss = _loss(model, x, "logits")
    used = [p for n, p in model.named_parameters() if n != "log_scale"]  # the logits do not use the scaling
    g1 = torch.autograd.grad(loss, used, retain_graph=True)
    g2 = torch.autograd.grad(loss, used)
    for a, b in zip(g1, g2, strict=True):
        assert torch.equal(a, b)


def test_eval_mode_uses_ordinary_autograd_so_jvps_work() -> None:
    """The memory-saving backward is first-order only; eval() falls back to autograd (stability needs JVPs)."""
    model = _model((5,))
    x = _x((5,), n=2)
    v = _x((5,), n=2, seed=3)
    with pytest.raises(RuntimeError, match="first-order only"):  # train mode + memory saving: no double backward
        torch.autograd.functional.jvp(lambda t: model(t)[0], x, v)
    model.eval()
    assert "_ReversibleFunction" not in type(model.features(x.requires_grad_(True)).grad_fn).__name__
    _, jv = torch.autograd.functional.jvp(lambda t: model(t)[0], x.detach(), v)
    jac = torch.autograd.functional.jacobian(lambda t: model(t.unsqueeze(0))[0][0], x[0].detach())
    assert torch.allclose(jv[0], jac @ v[0], rtol=1e-10, atol=1e-12)


def _layer(kind: str) -> tuple[ReversibleLayer, tuple[int, ...]]:
    torch.manual_seed(0)
    if kind == "mlp-block":
        return AdditiveCouplingBlock(7, lambda a, b: MLPResidual(a, b, 8)).double(), (7,)
    if kind == "conv-block":
        return AdditiveCouplingBlock(5, lambda a, b: ConvResidual(a, b, 4)).double(), (5, 2, 2)
    return Squeeze(), (3, 4, 2)


@pytest.mark.parametrize("kind", ["mlp-block", "conv-block", "squeeze"])
def test_backward_pass_matches_generic_recompute(kind: str) -> None:
    """Each layer's own backward_pass (Algorithm 1 for the block; P^-1 dy for the squeeze) equals the generic
    rule: invert, recompute the forward with a graph, take the vector-Jacobian product."""
    layer, shape = _layer(kind)
    x = _x(shape, n=3)
    y = layer(x)
    dy = _x(tuple(y.shape[1:]), n=3, seed=7)
    xa, dxa, ga = layer.backward_pass(y, dy)
    xb, dxb, gb = ReversibleLayer.backward_pass(layer, y, dy)
    assert float((xa - x).abs().max()) < 1e-12 and float((xb - x).abs().max()) < 1e-12
    assert float(dxa.abs().max()) > 0
    assert torch.allclose(dxa, dxb, rtol=1e-10, atol=1e-12)
    assert len(ga) == len(gb) == len(list(layer.parameters()))
    for a, b in zip(ga, gb, strict=True):
        assert a is not None and b is not None and float(a.abs().sum()) > 0
        assert torch.allclose(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("shape", [(8,), (1, 8, 8)])
def test_saved_bytes_constant_in_depth_only_with_memory_saving(shape: tuple[int, ...]) -> None:
    x = torch.randn(16, *shape)

    def activation_bytes(depth: int, memory_saving: bool) -> int:
        torch.manual_seed(0)
        model = RevNetNative(shape, depth=depth, hidden=8, memory_saving=memory_saving)
        return saved_tensor_bytes(lambda: _loss(model, x, "logits") - model.log_prob(x).mean(),
                                  exclude=model.parameters())

    saving = {d: activation_bytes(d, True) for d in (4, 16)}
    ordinary = {d: activation_bytes(d, False) for d in (4, 16)}
    assert saving[4] > 0
    assert saving[16] <= 1.2 * saving[4], saving
    assert ordinary[16] > 2.5 * ordinary[4], ordinary
    assert ordinary[4] > saving[4], (ordinary, saving)


def test_set_memory_saving_is_in_config_and_config_rebuilds() -> None:
    model = _model((1, 4, 4), head="pool")
    model.set_memory_saving(False)
    cfg = model.config()
    json.dumps(cfg)
    assert cfg["memory_saving"] is False and cfg["depth"] == 3 and cfg["hidden"] == 8
    twin = RevNetNative(**cfg).double()
    assert not twin.memory_saving
    twin.load_state_dict(model.state_dict())
    x = _x((1, 4, 4))
    assert torch.equal(twin.logits(x), model.logits(x))
    assert model.logits(x).shape == (4, 10)


@pytest.mark.parametrize(("shape", "kw"), [((1,), {}), ((1, 3, 3), {}), ((4,), {"head": "pool"}),
                                           ((4,), {"depth": 0})])
def test_unsupported_configurations_raise(shape: tuple[int, ...], kw: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        RevNetNative(shape, **kw)  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------- bench/memory.py
def test_saved_tensor_bytes_deduplicates_and_excludes() -> None:
    w = torch.randn(100, requires_grad=True)
    x = torch.randn(100)
    assert saved_tensor_bytes(lambda: (w * w).sum()) == 400  # w saved twice, counted once
    assert saved_tensor_bytes(lambda: (w * w).sum(), exclude=[w]) == 0
    assert saved_tensor_bytes(lambda: (w * x).sum(), exclude=[w]) == 400  # x is saved for dL/dw
    assert saved_tensor_bytes(lambda: (w[:10] * w[50:60]).sum()) == 400  # two views of one storage
    with torch.no_grad():
        assert saved_tensor_bytes(lambda: (w * w).sum()) == 0


def test_peak_rss_of_fresh_process_sees_an_allocation() -> None:
    small = peak_rss_of_fresh_process("pass")
    big = peak_rss_of_fresh_process("b = bytearray(64 * 1024 * 1024); b[::4096] = b'x' * len(b[::4096])")
    assert small > 0
    assert big - small > 48 * 1024 * 1024, (small, big)
    with pytest.raises(RuntimeError):
        peak_rss_of_fresh_process("raise SystemExit(3)")
