"""The memcnn 1.5.2 RevNet adapter (Gomez et al., NeurIPS 2017): invertibility, the same maps as ``revnet-native``,
memcnn's memory-saving backprop, the quirks the adapter normalises and memcnn's BatchNorm defect, detected."""

from __future__ import annotations

import json
import math
import re
from typing import Any

import memcnn
import pytest
import torch
from torch import Tensor, nn

from bench.memory import saved_tensor_bytes
from models import registry
from models.jacobian import jacobian_slogdet
from models.loss import Objective, training_loss
from models.memcnn_revnet import BatchNormDefect, RevNetMemcnn, batchnorm_defect
from models.revnet import RevNetNative

SHAPES = [(4,), (5,), (2,), (1, 4, 4), (3, 3, 3), (1, 8, 8)]
MOMENTUM = 0.1  # PyTorch's BatchNorm default


def _model(shape: tuple[int, ...], seed: int = 0, **kw: object) -> RevNetMemcnn:
    torch.manual_seed(seed)
    return RevNetMemcnn(shape, **{"depth": 3, "hidden": 8, **kw}).double()  # type: ignore[arg-type]


def _x(shape: tuple[int, ...], n: int = 4, seed: int = 1) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn((n, *shape), generator=g, dtype=torch.float64)


def _grads(model: nn.Module) -> Tensor:
    return torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in model.parameters()])


def test_registry_and_declarations() -> None:
    model = registry.create("revnet-memcnn", shape=(6,), depth=2)
    assert isinstance(model, RevNetMemcnn) and model.family == "revnet" and model.backend == "memcnn"
    caps = model.capabilities
    assert caps.memory_saving and caps.classifier and caps.density and not caps.volume_preserving
    assert model.width_hparam == "hidden" and "depth" in model.config()  # the cost task's memory-vs-depth curve
    assert model.config()["scaling"] is True and model.nll_floor() is None
    assert model.config()["norm"] == "none" and model.known_defects() == {}
    floor = RevNetMemcnn((64,), scaling=False).nll_floor()
    assert floor is not None and floor == pytest.approx(32 * math.log(2 * math.pi))


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
    assert float((z - x).abs().max()) > 1e-2  # not the identity
    assert float((x_rec - x).abs().max()) < 1e-12


@pytest.mark.parametrize("shape", [(5,), (1, 4, 4)])
def test_ladj_zero_without_scaling_and_sum_of_log_scales_with_it(shape: tuple[int, ...]) -> None:
    x = _x(shape, n=3)
    plain = _model(shape, scaling=False).eval()  # memcnn's memory-saving backward refuses torch.autograd.grad
    _, ladj = plain(x)
    assert torch.equal(ladj, torch.zeros(3, dtype=torch.float64))
    assert float(jacobian_slogdet(lambda v: plain(v)[0], x).abs().max()) < 1e-10
    scaled = _model(shape).eval()
    assert scaled.log_scale is not None
    scaled.log_scale.data.copy_(torch.linspace(-0.5, 1.0, scaled.dim).reshape(shape))
    _, ladj = scaled(x)
    assert float(ladj.detach().abs().max()) > 0.1
    assert torch.allclose(ladj, jacobian_slogdet(lambda v: scaled(v)[0], x), atol=1e-10)


def _native_twin(model: RevNetMemcnn, **kw: object) -> RevNetNative:
    """``revnet-native`` of ``model``'s configuration carrying its weights (F <- Fm, G <- Gm, block by block)."""
    cfg = {k: v for k, v in model.config().items() if k != "norm"}
    native = RevNetNative(**{**cfg, **kw}).double()  # type: ignore[arg-type]
    state = {}
    for key, value in model.state_dict().items():
        key = re.sub(r"^layers\.(\d+)\.Fm\.", r"trunk.layers.\1.F.", key)
        key = re.sub(r"^layers\.(\d+)\.Gm\.", r"trunk.layers.\1.G.", key)
        state[key] = value
    native.load_state_dict(state)
    return native


@pytest.mark.parametrize("shape", [(4,), (6,), (1, 4, 4), (1, 8, 8)])
def test_same_maps_as_revnet_native_for_even_splits(shape: tuple[int, ...]) -> None:
    """With an even number of features/channels per block memcnn splits as revnet-native does: the same
    parameters give the same latent, log-det, logits and inverse."""
    model = _model(shape, depth=4, stages=2).eval()
    assert model.log_scale is not None
    model.log_scale.data.normal_(0.0, 0.3, generator=torch.Generator().manual_seed(2))
    native = _native_twin(model).eval()
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in native.parameters())
    x = _x(shape)
    with torch.no_grad():
        (z, ladj), (z_n, ladj_n) = model(x), native(x)
        assert float((z - z_n).abs().max()) < 1e-12 and torch.equal(ladj, ladj_n)
        assert float((model.logits(x) - native.logits(x)).abs().max()) < 1e-12
        assert float((model.inverse(z) - native.inverse(z)).abs().max()) < 1e-12


def test_odd_split_gives_the_first_half_the_extra_feature() -> None:
    """memcnn's torch.chunk split: for n = 5, x1 has 3 features (revnet-native: 2), so Fm maps 2 -> 3."""
    model = _model((5,))
    coupling: Any = model.layers[0]
    assert coupling.Fm[0].in_features == 2 and coupling.Fm[-1].out_features == 3
    assert coupling.Gm[0].in_features == 3 and coupling.Gm[-1].out_features == 2


@pytest.mark.parametrize("objective", ["likelihood", "classification"])
@pytest.mark.parametrize("shape", [(5,), (1, 4, 4), (1, 8, 8)])
def test_memory_saving_gradients_equal_ordinary_backprop(shape: tuple[int, ...], objective: Objective) -> None:
    model = _model(shape).train()
    x = _x(shape, n=8)
    grads = []
    for enabled in (True, False):
        model.set_memory_saving(enabled)
        model.zero_grad(set_to_none=True)
        training_loss(model, x, objective=objective).backward()
        grads.append(_grads(model))
    assert float(grads[1].norm()) > 0
    assert float((grads[0] - grads[1]).norm() / grads[1].norm()) < 1e-12


@pytest.mark.parametrize("requires_grad", [False, True])
@pytest.mark.parametrize("shape", [(4,), (1, 4, 4)])
def test_callers_input_survives_memcnn_freeing_storage(shape: tuple[int, ...], requires_grad: bool) -> None:
    model = _model(shape).train()
    x = _x(shape).requires_grad_(requires_grad)
    before = x.detach().clone()
    training_loss(model, x).backward()
    assert torch.equal(x.detach(), before) and x.untyped_storage().nbytes() == before.untyped_storage().nbytes()
    assert (x.grad is not None) == requires_grad
    with torch.no_grad():
        model.eval()(x)
    assert torch.equal(x.detach(), before)


def test_memcnn_wrapper_frees_its_input_even_without_grad() -> None:
    """The library behaviour the adapter normalises: one no_grad call of a wrapper leaves its input without data."""
    torch.manual_seed(0)
    wrapper = memcnn.InvertibleModuleWrapper(memcnn.AdditiveCoupling(nn.Linear(2, 2), nn.Linear(2, 2)),
                                             keep_input=False)
    x = torch.randn(3, 4)
    with torch.no_grad():
        wrapper(x)
    assert x.untyped_storage().nbytes() == 0


def test_memory_saving_refuses_autograd_grad_and_ordinary_mode_allows_it() -> None:
    model = _model((4,)).train()
    params = list(model.layers.parameters())
    with pytest.raises(RuntimeError, match=r"\.grad\(\)"):
        torch.autograd.grad(training_loss(model, _x((4,))), params)
    model.set_memory_saving(False)
    assert all(g is not None for g in torch.autograd.grad(training_loss(model, _x((4,))), params))


@pytest.mark.parametrize("objective", ["likelihood", "classification"])
@pytest.mark.parametrize("shape", [(6,), (1, 8, 8)])
def test_saved_bytes_constant_in_depth_only_with_memory_saving(shape: tuple[int, ...], objective: Objective) -> None:
    x = torch.rand(16, *shape)

    def activation_bytes(depth: int, memory_saving: bool) -> int:
        torch.manual_seed(0)
        model = RevNetMemcnn(shape, depth=depth, hidden=8, memory_saving=memory_saving).train()
        return saved_tensor_bytes(lambda: training_loss(model, x, objective=objective), exclude=model.parameters())

    saving = [activation_bytes(d, True) for d in (2, 4, 8)]
    ordinary = [activation_bytes(d, False) for d in (2, 4, 8)]
    assert saving[0] == saving[1] == saving[2] > 0
    assert ordinary[0] < ordinary[1] < ordinary[2]
    assert saving[0] < ordinary[0]


def test_set_memory_saving_is_in_config_and_config_rebuilds() -> None:
    model = _model((1, 4, 4), depth=3, norm="batch")
    model.set_memory_saving(False)
    cfg = json.loads(json.dumps(model.config()))
    assert cfg["memory_saving"] is False and cfg["norm"] == "batch" and cfg["depth"] == 3
    twin = RevNetMemcnn(**cfg).double()
    twin.load_state_dict(model.state_dict())
    assert not twin.memory_saving
    x = _x((1, 4, 4))
    with torch.no_grad():
        assert torch.equal(model.eval()(x)[0], twin.eval()(x)[0])


@pytest.mark.parametrize(("kw", "message"), [({"depth": 0}, "depth"), ({"head": "pool"}, "image"),
                                             ({"norm": "layer"}, "norm")])
def test_bad_hyper_parameters_are_refused(kw: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        RevNetMemcnn((4,), **kw)  # type: ignore[arg-type]


# ------------------------------------------------------------------------------ memcnn issue 12, detected
@pytest.mark.parametrize("objective", ["likelihood", "classification"])
@pytest.mark.parametrize("shape", [(6,), (5,), (1, 8, 8)])
def test_batchnorm_running_stats_defect_is_detected(shape: tuple[int, ...], objective: Objective) -> None:
    """With BatchNorm in the coupling functions memcnn's memory saving runs each BatchNorm three times in training
    mode per step on the same batch statistics: the running statistics move (1 - (1 - m)^3) / m times as far as
    with ordinary backprop, 3 batches tracked instead of 1; the gradients agree to round-off."""
    model = _model(shape, norm="batch")
    assert "running_stats" in model.known_defects()
    x = _x(shape, n=16)
    before = model.state_dict()
    found = batchnorm_defect(model, x, objective=objective)
    assert isinstance(found, BatchNormDefect)
    assert found.batches_tracked_saving == 3 and found.batches_tracked_ordinary == 1
    assert found.stat_rel_diff == pytest.approx((1 - (1 - MOMENTUM) ** 3) / MOMENTUM - 1, abs=1e-9)
    assert found.grad_rel_err < 1e-12
    assert found.eval_rel_diff > 1e-6  # the eval()-mode model differs after one step
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())  # measured on copies


def test_default_configuration_has_no_batchnorm_and_nothing_to_measure() -> None:
    model = _model((6,))
    assert not any(isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d) for m in model.modules())
    with pytest.raises(ValueError, match="no BatchNorm"):
        batchnorm_defect(model, _x((6,), n=8))


def test_memcnn_keep_input_still_updates_batchnorm_twice() -> None:
    """keep_input=True skips the reconstruction but memcnn still recomputes the forward in backward: two
    training-mode BatchNorm passes per step, the running mean moved (1 - (1 - m)^2) / m times as far."""
    torch.manual_seed(0)

    def f() -> nn.Module:
        return nn.Sequential(nn.BatchNorm1d(2), nn.Linear(2, 2))

    coupling = memcnn.AdditiveCoupling(f(), f()).double()
    wrapper = memcnn.InvertibleModuleWrapper(coupling, keep_input=True)
    bn = coupling.Fm[0]
    x = torch.randn(16, 4, dtype=torch.float64)
    wrapper(x.clone()).square().sum().backward()
    assert int(bn.num_batches_tracked) == 2
    mean = x[:, 2:].mean(0)  # F's input x2 (memcnn: the second half)
    assert torch.allclose(bn.running_mean, (1 - (1 - MOMENTUM) ** 2) * mean, atol=1e-12)
