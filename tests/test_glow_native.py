"""The native Glow (models/glow.py): conformance in both couplings, the authors' affine scale and its bound, the
multi-scale layout, and memory-saving gradients (log-det included) equal to stored-activation ones."""

from __future__ import annotations

import pytest
import torch

from models.glow import SCALE_OFFSET, Coupling, GlowAdditiveNative, GlowNative, InvertibleLU, OnTail, Squeeze
from models.jacobian import jacobian_slogdet
from models.loss import training_loss
from models.testing import validate


@pytest.mark.parametrize("name", ["glow-native", "glow-additive-native"])
def test_conformance(name: str) -> None:
    failed = [(r.name, r.shape, r.figure) for r in validate(name) if not r.passed]
    assert not failed


def test_additive_is_the_default_of_its_subclass_and_rebuilds() -> None:
    model = GlowAdditiveNative((4,))
    assert model.config()["coupling"] == "additive"
    assert type(model)(**model.config()).config() == model.config()
    assert GlowNative((4,)).config()["coupling"] == "affine"


def test_affine_scale_is_the_authors_and_bounds_the_inverse() -> None:
    torch.manual_seed(0)
    coupling = Coupling(4, "affine", scale_eps=0.01, hidden=8, image=False).double()
    last = list(coupling.net.modules())[-1]
    assert isinstance(last, torch.nn.Linear)
    with torch.no_grad():  # shift 0 and h = -50 everywhere: scale = sigmoid(-48) + 0.01, at its floor
        last.weight.zero_()
        last.bias.copy_(torch.tensor([0.0, 0.0, -50.0, -50.0]))
    x = torch.randn(3, 4, dtype=torch.float64)
    with torch.no_grad():
        y, ladj = coupling(x)
    scale = torch.sigmoid(torch.tensor(-50.0 + SCALE_OFFSET, dtype=torch.float64)) + 0.01
    assert torch.allclose(y[:, 2:], x[:, 2:] * scale)  # shift 0: y_b = (x_b + 0) * scale
    assert torch.allclose(ladj, torch.full((3,), 2 * float(torch.log(scale)), dtype=torch.float64))
    # the inverse stretches by 1 / scale, up to 1 / scale_eps = 100
    dz = 1e-3 * torch.tensor([[0.0, 0.0, 1.0, 0.0]], dtype=torch.float64).expand(3, 4)
    with torch.no_grad():
        stretch = float((coupling.inverse(y + dz) - coupling.inverse(y)).norm() / dz.norm())
    assert stretch == pytest.approx(float(1 / scale), rel=1e-9)
    assert 99.0 < stretch <= GlowNative((4,), scale_eps=0.01).max_inverse_amplification()
    assert GlowAdditiveNative((4,)).max_inverse_amplification() == 1.0


def test_additive_coupling_is_volume_preserving() -> None:
    coupling = Coupling(5, "additive", scale_eps=0.01, hidden=8, image=False)
    x = torch.randn(4, 5)
    with torch.no_grad():
        y, ladj = coupling(x)
        assert torch.equal(ladj, torch.zeros(4))
        assert torch.allclose(coupling.inverse(y), x, atol=1e-6)


def test_lu_map_starts_as_a_rotation_and_its_logdet_is_sum_log_s() -> None:
    torch.manual_seed(0)
    lu = InvertibleLU(6).double()
    w = lu.weight().detach()
    assert torch.allclose(w @ w.T, torch.eye(6, dtype=torch.float64), atol=1e-6)  # factors stored in float32
    with torch.no_grad():
        lu.log_s.add_(torch.linspace(-1, 1, 6, dtype=torch.float64))
    x = torch.randn(2, 6, 3, 3, dtype=torch.float64)
    with torch.no_grad():
        _, ladj = lu(x)
        assert torch.allclose(ladj, 9 * lu.log_s.sum().expand(2))
        assert float(torch.linalg.slogdet(lu.weight())[1]) == pytest.approx(float(lu.log_s.sum()), abs=1e-10)


def test_multiscale_layout_factors_out_half_the_channels_per_level() -> None:
    model = GlowNative((1, 8, 8), depth=2, levels=3)
    assert model.levels_used == 3
    squeezes = [m for m in model.layers if isinstance(m, OnTail) and isinstance(m.layer, Squeeze)]
    # level 1: (1, 8, 8) -> (4, 4, 4), 2 channels out (32 entries); level 2: (2, 4, 4) -> (8, 2, 2), 4 out (16)
    assert [(m.offset, m.in_shape, m.out_shape) for m in squeezes] == [
        (0, (1, 8, 8), (4, 4, 4)), (32, (2, 4, 4), (8, 2, 2)), (48, (4, 2, 2), (16, 1, 1))]
    assert sorted({m.offset for m in model.layers if isinstance(m, OnTail)}) == [0, 32, 48]
    # levels are capped by the squeezes the shape allows
    assert GlowNative((1, 4, 4), levels=3).levels_used == 2
    with pytest.raises(ValueError, match="cannot be split"):
        GlowNative((1, 3, 3))


def test_factored_out_latents_do_not_depend_on_later_levels() -> None:
    torch.manual_seed(0)
    model = GlowNative((1, 8, 8), depth=1, levels=3, hidden=8).double().eval()
    x = torch.rand(2, 1, 8, 8, dtype=torch.float64)
    with torch.no_grad():
        z = model(x)[0].reshape(2, -1)
    last_level = [m for m in model.layers if isinstance(m, OnTail) and m.offset == 48 and isinstance(m.layer, Coupling)]
    with torch.no_grad():
        for m in last_level:
            for p in m.parameters():
                p.add_(0.3)
        z2 = model(x)[0].reshape(2, -1)
        ladj = model(x)[1]
    assert torch.equal(z[:, :48], z2[:, :48]) and not torch.allclose(z[:, 48:], z2[:, 48:])
    assert float(jacobian_slogdet(lambda v: model(v)[0], x).sub(ladj).abs().max()) < 1e-9


@pytest.mark.parametrize("coupling", ["affine", "additive"])
@pytest.mark.parametrize("objective", ["likelihood", "classification"])
def test_memory_saving_gradients_equal_stored_ones(coupling: str, objective: str) -> None:
    torch.manual_seed(0)
    model = GlowNative((1, 4, 4), 3, coupling=coupling, depth=2, levels=2, hidden=8).double()  # type: ignore[arg-type]
    x = torch.rand(5, 1, 4, 4, dtype=torch.float64)
    model.data_init(x)
    model.train()
    grads = []
    for enabled in (True, False):
        model.set_memory_saving(enabled)
        model.zero_grad()
        training_loss(model, x, torch.arange(5) % 3, objective=objective).backward()  # type: ignore[arg-type]
        grads.append(torch.cat([p.grad.reshape(-1) for p in model.parameters() if p.grad is not None]))
    assert grads[0].shape == grads[1].shape
    assert float((grads[0] - grads[1]).norm() / grads[1].norm()) < 1e-10


def test_memory_saving_backward_is_first_order_only() -> None:
    model = GlowNative((4,), memory_saving=True).train()
    x = torch.randn(3, 4, requires_grad=True)
    z, ladj = model(x)
    with pytest.raises(RuntimeError, match="first-order"):
        torch.autograd.grad((z.sum() + ladj.sum()), x, create_graph=True)
