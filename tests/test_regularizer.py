"""The finite-difference regulariser's penalty against a hand computation on a linear map (issue 13's done-when).

Behrmann et al., "Understanding and Mitigating Exploding Inverses in Invertible Neural Networks" (AISTATS 2021),
asteroidhouse/INN-exploding-inverses ``classification/train_inn_classifier.py``: the penalty is
``coeff * ||f(x + eps d) - f(x)||^2 / eps`` (norm over the whole batch) plus the same for ``f^-1`` at ``z``. For
``f(x) = A x + b`` the differences are exactly ``eps A v_b`` and ``eps A^-1 w_b``, so with unit directions
``v_b``, ``w_b`` per example::

    penalty = weight * sum_b (||eps A v_b||^2 + ||eps A^-1 w_b||^2) / eps

computed here with numpy from the matrix itself, independent of the model's forward and inverse code.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import Tensor

from bench.regularizers import FDRegularizer
from models.template import LinearFlow

SHAPE = (1, 2, 2)  # an image-shaped input: directions are normalised over all of C x H x W per example
D = 4
B = 5


def _flow(seed: int = 3) -> tuple[LinearFlow, np.ndarray]:
    """A float64 linear flow with a random, non-symmetric, well-conditioned A and a non-zero bias."""
    g = torch.Generator().manual_seed(seed)
    a = torch.eye(D, dtype=torch.float64) + 0.4 * torch.randn(D, D, generator=g, dtype=torch.float64)
    model = LinearFlow(SHAPE).double()
    with torch.no_grad():
        model.weight.copy_(a)
        model.bias.copy_(torch.randn(D, generator=g, dtype=torch.float64))
    return model, a.numpy().copy()


def _unit_rows(d: np.ndarray) -> np.ndarray:
    """(B, D) -> each row divided by its own Euclidean norm."""
    return np.stack([row / np.sqrt(np.sum(row**2)) for row in d])


def _hand_penalty(a: np.ndarray, v: np.ndarray, w: np.ndarray, eps: float, weight: float) -> float:
    """weight * sum_b (||eps A v_b||^2 + ||eps A^-1 w_b||^2) / eps, row by row. ``v``, ``w``: (B, D)."""
    a_inv = np.linalg.inv(a)
    total = 0.0
    for vb, wb in zip(v, w, strict=True):
        total += float(np.sum((eps * a @ vb) ** 2) + np.sum((eps * a_inv @ wb) ** 2))
    return weight * total / eps


def _directions(generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Two batches of directions (B, *SHAPE) from ``generator``, unit norm per example (by hand)."""
    raw = [torch.randn(B, D, generator=generator, dtype=torch.float64).numpy() for _ in range(2)]
    v, w = (torch.from_numpy(_unit_rows(r)).reshape(B, *SHAPE) for r in raw)
    return v, w


@pytest.mark.parametrize(("eps", "weight"), [(0.1, 1e-4), (0.01, 1.0), (0.5, 3.0)])
def test_penalty_with_given_directions_equals_the_hand_computation(eps: float, weight: float) -> None:
    model, a = _flow()
    x = torch.randn(B, *SHAPE, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    v, w = _directions(torch.Generator().manual_seed(2))
    reg = FDRegularizer(eps=eps, weight=weight)
    pen = reg.penalty(model, x, directions=(v, w))
    expected = _hand_penalty(a, v.reshape(B, D).numpy(), w.reshape(B, D).numpy(), eps, weight)
    assert float(pen.detach()) == pytest.approx(expected, rel=1e-10)
    # the per-example quotients are ||A v_b|| and ||A^-1 w_b||
    fwd, inv = reg.quotients(model, x, directions=(v, w))
    a_inv = np.linalg.inv(a)
    np.testing.assert_allclose(fwd.detach().numpy(), np.linalg.norm(v.reshape(B, D).numpy() @ a.T, axis=1),
                               rtol=1e-10)
    np.testing.assert_allclose(inv.detach().numpy(), np.linalg.norm(w.reshape(B, D).numpy() @ a_inv.T, axis=1),
                               rtol=1e-10)


def test_random_directions_are_unit_per_example_and_drawn_forward_then_inverse() -> None:
    """Without ``directions`` the regulariser draws ``v`` like ``x`` then ``w`` like ``z`` from torch's global
    generator and normalises each example's direction (not each coordinate over the batch, as the authors' code
    does): the penalty equals the hand computation with those draws, and differs from the per-coordinate form."""
    model, a = _flow()
    x = torch.randn(B, *SHAPE, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    reg = FDRegularizer(eps=0.1, weight=1e-4)
    torch.manual_seed(7)
    pen = float(reg.penalty(model, x).detach())
    torch.manual_seed(7)
    raw_v = torch.randn_like(x).reshape(B, D).numpy()
    raw_w = torch.randn_like(x).reshape(B, D).numpy()
    assert pen == pytest.approx(_hand_penalty(a, _unit_rows(raw_v), _unit_rows(raw_w), 0.1, 1e-4), rel=1e-10)
    per_coordinate = _hand_penalty(a, raw_v / np.linalg.norm(raw_v, axis=0), raw_w / np.linalg.norm(raw_w, axis=0),
                                   0.1, 1e-4)
    assert abs(pen - per_coordinate) > 1e-3 * pen


def test_penalty_gradient_is_the_analytic_one() -> None:
    """d/dA of weight * eps * sum_b (||A v_b||^2 + ||A^-1 w_b||^2) is
    2 weight eps (A sum_b v_b v_b^T - A^-T sum_b u_b u_b^T) with u_b = A^-1 w_b; the bias gets none (it cancels
    in both differences)."""
    model, a = _flow()
    x = torch.randn(B, *SHAPE, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    v, w = _directions(torch.Generator().manual_seed(2))
    eps, weight = 0.1, 0.5
    FDRegularizer(eps=eps, weight=weight).penalty(model, x, directions=(v, w)).backward()
    vn, wn = v.reshape(B, D).numpy(), w.reshape(B, D).numpy()
    a_inv = np.linalg.inv(a)
    u = wn @ a_inv.T
    expected = 2 * weight * eps * (a @ (vn.T @ vn) - a_inv.T @ (u.T @ u))
    assert model.weight.grad is not None and model.bias.grad is not None
    np.testing.assert_allclose(model.weight.grad.numpy(), expected, rtol=1e-9, atol=1e-15)
    np.testing.assert_allclose(model.bias.grad.numpy(), np.zeros(D), atol=1e-12)
