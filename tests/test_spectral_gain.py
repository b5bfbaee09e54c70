"""The weight gain and the start-at-bound initialisation of the spectrally normalised layers
(models/spectral_norm.py) and of the native i-ResNet / Residual Flow (models/iresnet.py), and the quick suite's
2-D configuration of those models."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import pytest
import torch

from models.iresnet import IResNetNative, ResFlowNative, ResidualFlow, ResidualNet
from models.spectral_norm import SpectralNormConv2d, SpectralNormLayer, SpectralNormLinear
from models.testing import validate

QUICK = Path(__file__).resolve().parents[1] / "bench" / "suites" / "quick.toml"
TWO_D = ("gaussians8", "checkerboard", "moons", "spirals")
NATIVE = {"iresnet-native": IResNetNative, "resflow-native": ResFlowNative}


def _quick_overrides(model: str) -> list[dict[str, Any]]:
    """The quick suite's per-data-set hyper-parameters of ``model`` on its 2-D sets."""
    suite = tomllib.loads(QUICK.read_text())
    return [suite["datasets"][d].get("models", {}).get(model, {}) for d in TWO_D]


def _exact_norm(layer: SpectralNormLayer) -> float:
    return float(torch.linalg.matrix_norm(layer.normalized_weight(update=False).detach(), 2))


def _branch_lip_bound(net: ResidualNet) -> float:
    """The product of the exact spectral norms of the branch's normalised weights (activations are 1-Lipschitz)."""
    out = 1.0
    for w in net.weights(update=False):
        out *= float(torch.linalg.matrix_norm(w.detach(), 2))
    return out


@pytest.mark.parametrize("gain", [1.0, 4.0, 16.0])
def test_gain_keeps_the_bound_through_training(gain: float) -> None:
    torch.manual_seed(0)
    layer = SpectralNormLinear(2, 64, coeff=0.9, gain=gain, n_power_iterations=5).double()
    opt = torch.optim.SGD(layer.parameters(), lr=0.5)
    x = torch.randn(128, 2, dtype=torch.float64)
    target = torch.randn(128, 64, dtype=torch.float64) * 10.0  # pulls the weight's norm up, against the bound
    for _ in range(20):
        opt.zero_grad()
        ((layer(x) - target) ** 2).mean().backward()
        opt.step()
    layer(x)  # a training forward: power iteration catches up with the last step
    singular = torch.linalg.svdvals(layer.normalized_weight(update=False).detach())
    assert singular.max().item() <= 0.9 * (1 + 1e-3)
    assert singular.max().item() >= 0.9 * (1 - 1e-2)  # the target forced the layer to its bound


def test_gain_scales_the_weight_used() -> None:
    torch.manual_seed(1)
    plain = SpectralNormLinear(3, 3, coeff=100.0).double()  # a bound that does not bite
    gained = SpectralNormLinear(3, 3, coeff=100.0, gain=4.0).double()
    gained.weight.data.copy_(plain.weight.data)
    gained.power_iterate(50)  # the singular vectors of the copied weight
    plain.power_iterate(50)
    torch.testing.assert_close(gained.normalized_weight(), 4.0 * plain.normalized_weight())
    assert gained.sigma().item() == pytest.approx(4.0 * plain.sigma().item(), rel=1e-6)


@pytest.mark.parametrize("gain", [1.0, 4.0])
@pytest.mark.parametrize("shape", [(2, 64), (64, 64), (64, 2)])
def test_rescale_to_bound_puts_the_layer_at_c(gain: float, shape: tuple[int, int]) -> None:
    torch.manual_seed(2)
    layer = SpectralNormLinear(shape[0], shape[1], coeff=0.9, gain=gain).double()
    before = float(torch.linalg.matrix_norm(gain * layer.weight.detach(), 2))
    layer.rescale_to_bound()
    full = float(torch.linalg.matrix_norm(gain * layer.weight.detach(), 2))
    assert full == pytest.approx(0.9, abs=1e-3)
    assert _exact_norm(layer) == pytest.approx(0.9, abs=1e-3)
    assert before != pytest.approx(0.9, abs=1e-2)  # the default initialisation's norm was elsewhere


def test_gain_must_be_positive() -> None:
    with pytest.raises(ValueError, match="gain"):
        SpectralNormLinear(2, 2, gain=0.0)
    with pytest.raises(ValueError, match="weight_gain"):
        IResNetNative((2,), weight_gain=-1.0)


@pytest.mark.parametrize("cls", [IResNetNative, ResFlowNative])
def test_init_at_bound_starts_each_branch_further_from_the_identity(cls: type[ResidualFlow]) -> None:
    torch.manual_seed(3)
    default = cls((2,), depth=3)
    torch.manual_seed(3)
    at_bound = cls((2,), depth=3, init_at_bound=True)
    coeff = float(at_bound.config()["coeff"])
    layers = int(at_bound.config()["hidden_layers"]) + 1
    for b_default, b_bound in zip(default.blocks, at_bound.blocks, strict=True):
        assert isinstance(b_default.net, ResidualNet) and isinstance(b_bound.net, ResidualNet)
        lip_default = _branch_lip_bound(b_default.net)
        lip_bound = _branch_lip_bound(b_bound.net)
        assert lip_bound > lip_default
        assert lip_bound == pytest.approx(coeff**layers, rel=1e-2)


@pytest.mark.parametrize("cls", [IResNetNative, ResFlowNative])
def test_config_round_trips_the_new_hyper_parameters(cls: type[ResidualFlow]) -> None:
    torch.manual_seed(4)
    model = cls((2,), depth=2, weight_gain=4.0, init_at_bound=True)
    cfg = model.config()
    assert cfg["weight_gain"] == 4.0 and cfg["init_at_bound"] is True
    rebuilt = cls(**cfg)
    rebuilt.load_state_dict(model.state_dict())
    assert rebuilt.config() == cfg
    x = torch.randn(16, 2)
    model.eval()
    rebuilt.eval()
    torch.testing.assert_close(rebuilt(x)[0], model(x)[0])
    gains = {m.gain for m in rebuilt.modules() if isinstance(m, SpectralNormLayer)}
    assert gains == {4.0}


@pytest.mark.parametrize("cls", [IResNetNative, ResFlowNative])
def test_defaults_keep_the_plain_parametrisation(cls: type[ResidualFlow]) -> None:
    cfg = cls((2,)).config()
    assert cfg["weight_gain"] == 1.0 and cfg["init_at_bound"] is False
    assert {m.gain for m in cls((2,)).modules() if isinstance(m, SpectralNormLayer)} == {1.0}


@pytest.mark.parametrize("name", sorted(NATIVE))
def test_quick_suite_two_d_configuration(name: str) -> None:
    given = [o for o in _quick_overrides(name) if o]
    assert given, f"quick.toml gives {name} no 2-D overrides"
    assert all(o == given[0] for o in given), "one configuration wherever a 2-D set gives one"
    hp = given[0]
    base = NATIVE[name]
    model = base((2,), **hp)  # every key is a constructor argument
    cfg = model.config()
    assert all(cfg[k] == v for k, v in hp.items())
    if cfg["method"] == "exact":
        assert cfg["neumann_grad"] is False

    # the suite's inverse_tol is its error budget for the float32 inverse; the conformance round trip is held to
    # 1e-7 in float64, so it runs at the model's float64 default (1e-10)
    trained_hp = {k: v for k, v in hp.items() if k != "inverse_tol"}

    class Quick(base):  # type: ignore[valid-type, misc]
        """``base`` with the quick suite's 2-D hyper-parameters (its inverse tolerance aside) as its defaults."""

        def __init__(self, shape: tuple[int, ...], num_classes: int | None = None, **kw: Any) -> None:
            super().__init__(shape, num_classes, **{**trained_hp, **kw})

    results = validate(Quick, shape=(2,))
    failed = [f"{r.name}: {r.figure}" for r in results if not r.passed]
    assert not failed, failed
    assert len(results) >= 10


def test_operator_norm_is_kept_until_the_weights_change() -> None:
    """The certified norm the inverse asks for on every call is computed once per set of weights: the same value
    while nothing changes, the new exact norm after an in-place update or a dtype change."""
    torch.manual_seed(0)
    layer = SpectralNormLinear(3, 5, coeff=0.9).eval()

    def exact() -> float:
        with torch.no_grad():
            return float(torch.linalg.matrix_norm(layer.normalized_weight().double(), ord=2))

    first = layer.operator_norm()
    assert layer.operator_norm() == first
    assert first == pytest.approx(exact())
    with torch.no_grad():
        layer.weight.mul_(0.5)
    halved = layer.operator_norm()
    assert halved == pytest.approx(exact())
    assert halved != first
    layer.double()
    assert layer.operator_norm() == pytest.approx(halved)


def test_normalized_weight_is_kept_outside_grad_mode_until_weight_or_vectors_change() -> None:
    for layer in (SpectralNormLinear(5, 7, 0.9, 1, gain=3.0), SpectralNormConv2d(2, 3, 3, (4, 4), 0.9, 1)):
        with torch.no_grad():
            first = layer.normalized_weight()
            assert layer.normalized_weight() is first  # kept
        fresh = layer.normalized_weight()  # grad mode: a new tensor with a graph to the weight
        assert fresh.grad_fn is not None and torch.equal(fresh.detach(), first)
        opt = torch.optim.SGD(layer.parameters(), lr=0.1)
        fresh.sum().backward()
        opt.step()  # changes weight in place (its version counter)
        with torch.no_grad():
            after_step = layer.normalized_weight()
            assert after_step is not first and torch.equal(after_step, layer._normalized())
            layer.power_iterate(3)  # changes u and v in place
            after_power = layer.normalized_weight()
            assert after_power is not after_step and torch.equal(after_power, layer._normalized())
        layer.double()  # new storage and dtype
        with torch.no_grad():
            assert layer.normalized_weight().dtype == torch.float64
