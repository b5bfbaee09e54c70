"""Training regularisers.

:class:`FDRegularizer` is the bi-directional finite-difference penalty of Behrmann et al., "Understanding and
Mitigating Exploding Inverses in Invertible Neural Networks", AISTATS 2021: it penalises the local slopes of both
``f`` and ``f^-1`` along random directions, so that training keeps the inverse stable on (and near) the data,
where a likelihood objective alone lets affine blocks grow arbitrarily steep inverses. Its settings are
:class:`RegularizerOptions`, whose defaults are the authors' (below).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor

from bench.options import Options, opt
from models.base import InvertibleModel


def random_unit_directions(x: Tensor) -> Tensor:
    """One random direction per example, uniform on the unit sphere of R^D. ``x``: (B, *shape) -> (B, *shape)."""
    v = torch.randn_like(x)
    norms = v.reshape(v.shape[0], -1).norm(dim=1).clamp_min(torch.finfo(v.dtype).tiny)
    return v / norms.reshape(-1, *([1] * (x.dim() - 1)))


def _per_example_norm(t: Tensor) -> Tensor:
    """``t``: (B, *shape) -> (B,), the Euclidean norm of each example."""
    return t.reshape(t.shape[0], -1).norm(dim=1)


@dataclass(frozen=True)
class RegularizerOptions(Options):
    """Settings of the finite-difference regulariser (a suite's ``regularizer = {eps, weight, every}``).

    The defaults are the authors' settings in asteroidhouse/INN-exploding-inverses
    (``classification/train_inn_classifier.py``: ``epsilon = 0.1`` in the code, ``--fd_coeff=1e-4
    --fd_inv_coeff=1e-4 --regularize_every=10`` in its example command).
    """

    eps: float = field(default=0.1, metadata=opt("finite-difference step, in the space of x and of z",
                                                   min=0.0, min_exclusive=True))
    weight: float = field(default=1e-4, metadata=opt("coefficient of the penalty in the loss", min=0.0))
    every: int = field(default=10, metadata=opt("add the penalty on training steps 0, every, 2 every, ...", min=1))


@dataclass(frozen=True)
class FDRegularizer(RegularizerOptions):
    """Bi-directional finite differences (Behrmann et al., AISTATS 2021), with the authors' form of the penalty.

    For a batch ``x``: (B, *shape), ``z = f(x)`` and random unit directions ``v_b``, ``w_b`` (fresh per example,
    from torch's global RNG, each normalised to norm 1 per example)::

        penalty = weight * sum_b ( ||f(x_b + eps v_b) - f(x_b)||^2 + ||f^-1(z_b + eps w_b) - f^-1(z_b)||^2 ) / eps

    a sum over the batch of squared differences divided by ``eps``, as in the authors' code
    (``fd_coeff * torch.norm(z - z_noise)**2 / epsilon``). For a linear map ``A`` the two differences are exactly
    ``eps A v`` and ``eps A^-1 w``, so the penalty is ``weight * eps * sum_b (||A v_b||^2 + ||A^-1 w_b||^2)``; for
    ``v`` uniform on the sphere ``E ||A v||^2 = ||A||_F^2 / D``.

    Where this differs from the authors' code, and why:

    - Their directions are divided by ``torch.norm(d.view(B, -1), dim=0)``, the norm over the batch of each
      coordinate, which makes every example's direction a unit vector only at B = 1; their comment says
      "normalize to unit vector", and here each example's direction has norm 1.
    - Their inverse term compares the data ``x`` with ``f^-1(z + eps w)``; here it is ``f^-1(z)``, so the term
      is a pure finite difference of the inverse (the two agree up to the reconstruction error of ``x``).
      ``z`` is detached in that term: it penalises the inverse's slope at a training point's latent code, not
      the move of that code.

    :meth:`quotients` gives the per-example difference quotients ``||difference|| / eps`` (which tend to
    ``||J_f v||`` and ``||J_f^-1 w||``, per-direction Lipschitz estimates in ``[sigma_min, sigma_max]``);
    the penalty is ``weight * eps * sum_b (q_fwd^2 + q_inv^2)``.
    """

    def __post_init__(self) -> None:
        if self.eps <= 0:
            raise ValueError(f"eps must be positive, got {self.eps}")
        if self.weight < 0:
            raise ValueError(f"weight must be non-negative, got {self.weight}")
        if self.every < 1:
            raise ValueError(f"every must be >= 1, got {self.every}")

    @classmethod
    def from_options(cls, options: RegularizerOptions) -> FDRegularizer:
        """The regulariser with a suite's settings."""
        return cls(eps=options.eps, weight=options.weight, every=options.every)

    def applies(self, step: int) -> bool:
        """Whether the penalty is added at (0-based) training step ``step``."""
        return step % self.every == 0

    def quotients(self, model: InvertibleModel, x: Tensor, directions: tuple[Tensor, Tensor] | None = None
                  ) -> tuple[Tensor, Tensor]:
        """Per-example forward and inverse difference quotients. ``x``: (B, *shape) -> ((B,), (B,)).

        ``directions``: ``(v, w)``, each (B, *shape) with unit norm per example; None draws fresh random ones.
        ``x`` and ``x + eps v`` go through the model as one batch of 2B (likewise for the inverse), so a layer
        with batch statistics sees both points under the same statistics.
        """
        b = x.shape[0]
        v = random_unit_directions(x) if directions is None else directions[0]
        z_pair, _ = model(torch.cat([x, x + self.eps * v]))
        z, z_moved = z_pair[:b], z_pair[b:]
        forward_q = _per_example_norm(z_moved - z) / self.eps
        z0 = z.detach()
        w = random_unit_directions(z0) if directions is None else directions[1]
        x_pair = model.inverse(torch.cat([z0, z0 + self.eps * w]))
        inverse_q = _per_example_norm(x_pair[b:] - x_pair[:b]) / self.eps
        return forward_q, inverse_q

    def penalty(self, model: InvertibleModel, x: Tensor, directions: tuple[Tensor, Tensor] | None = None
                ) -> Tensor:
        """``weight * sum_b (||forward difference_b||^2 + ||inverse difference_b||^2) / eps``, a differentiable
        scalar. ``x``: (B, *shape), the (pre-processed) training batch; ``directions`` as in :meth:`quotients`.
        """
        forward_q, inverse_q = self.quotients(model, x, directions)
        # ||d||^2 / eps = eps * (||d|| / eps)^2
        return self.weight * self.eps * ((forward_q**2).sum() + (inverse_q**2).sum())

    def config(self) -> dict[str, Any]:
        """JSON-serialisable settings (part of the checkpoint key; ``penalty`` names the form above)."""
        return {"kind": "fd", "penalty": "sum_sq_over_eps", **asdict(self)}
