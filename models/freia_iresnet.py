"""Adapter over FrEIA 0.2's ``IResNetLayer``, wrapped as it is so that its defects stay measurable.

An i-ResNet block (Behrmann, Grathwohl, Chen, Duvenaud & Jacobsen, "Invertible Residual Networks", ICML 2019)
is ``F(x) = x + g(x)`` with ``Lip(g) < 1``; ``log|det dF/dx| = sum_k (-1)^(k+1) tr(J_g^k) / k`` is estimated
with a truncated power series and Hutchinson probes, and ``F^-1(y)`` is the fixed point of
``x <- y - g(x)``. FrEIA's implementation departs from the paper in ways this adapter does NOT patch
(the conformance checks and ``tests/test_library_adapters.py`` measure them):

1. **No log-det gradient.** ``_jacobian`` calls ``torch.autograd.grad`` without ``create_graph=True``, so the
   returned log-det is a constant to the optimiser: maximum likelihood only sees the ``N(z)`` term
   (Behrmann et al. differentiate through the estimator, their sec. 3.3). See :meth:`IResNetFreia.known_defects`.
2. **Lipschitz bound only on request.** ``g``'s weights are rescaled to spectral norm <= ``spectral_norm_max``
   only when ``lipschitz_correction()`` is called (power iteration, then a rescale); nothing in ``forward``
   enforces it (the paper normalises every forward pass, following Miyato et al. 2018). The adapter calls it
   once at construction and in :meth:`~IResNetFreia.after_step`, as FrEIA's docs intend; a training loop that
   skips ``after_step`` leaves ``Lip(g)``, hence invertibility and the power series' convergence, unbounded.
3. **Reverse-mode log-det at the wrong point.** In ``rev=True`` it returns ``-J`` evaluated at the reverse
   pass's *input* ``y`` rather than at the reconstructed ``x = F^-1(y)`` (:meth:`~IResNetFreia.library_inverse_logdet`
   exposes it). The contract's ``ladj`` is the forward one, so ``log_prob`` is unaffected.
4. **Fixed-count inverse.** ``fixed_point_iterations`` (50) iterations, no tolerance, no convergence report:
   the adapter records the iteration count and the measured residual ``max_b ||y - (x + g(x))||`` in
   ``last_inverse`` and calls it converged when that is <= ``inverse_tol`` (1e-5). The count and the tolerance
   are the model's :class:`~models.base.InverseSettings` (``max_iter``, ``tol``); the solver is plain iteration.
5. **Mutates the caller's input.** When its input is a leaf tensor it sets ``requires_grad = True`` on it (to
   take the vector-Jacobian products), so ``model(x)`` flips ``x.requires_grad`` for the caller's ``x``.

Normalised here (library quirks, not defects): ``IResNetLayer.forward`` takes ``autograd.grad`` and so fails under
``torch.no_grad()``; the adapter runs each block under ``torch.enable_grad()`` and detaches the output when the
caller had gradients off. ``lipschitz_correction()`` draws its power-iteration start in the default dtype and fails
on a float64 model; the adapter runs it with the default dtype set to the weights' dtype.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import ClassVar

import FrEIA.framework as Ff
import FrEIA.modules as Fm
import torch
from torch import Tensor

from models.base import Capabilities, EstimatorSettings, InverseInfo, InverseSettings, InvertibleModel, refuse_changes
from models.freia_flows import as_ladj, init_actnorms, numpy_seeded_from_torch


@contextlib.contextmanager
def _default_dtype(dtype: torch.dtype) -> Iterator[None]:
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


class IResNetFreia(InvertibleModel):
    """A stack of ``depth`` FrEIA ``IResNetLayer`` blocks (optionally each followed by FrEIA's ``ActNorm``).

    ``x``: (B, D) or (B, C, H, W) -> ``z``: same shape, ``ladj``: (B,) FrEIA's power-series/Hutchinson estimate
    (Rademacher probes, ``jacobian_iterations`` terms, ``hutchinson_samples`` probes, drawn from torch's global RNG
    on every call). ``g`` is ``Linear/Conv3x3 -> ELU -> ... -> Linear/Conv3x3`` with ``internal_layers`` hidden
    layers of width ``hidden``. See the module docstring for the defects kept visible.

    Args:
        shape: (D,) or (C, H, W).
        depth: number of i-ResNet blocks.
        hidden: FrEIA's ``internal_size`` (hidden units / channels of ``g``); ``None``: 64 units for vectors, 16
            channels for images (``g`` runs at full resolution, 3x3 convs, ``2 * terms + 1`` passes per block, so
            64 channels cost ~10 s per training step on an 8x8 batch of 256 on one CPU thread).
        internal_layers: FrEIA's ``n_internal_layers``.
        actnorm: follow each block with FrEIA's ``ActNorm`` (Behrmann et al. use it between blocks for density
            estimation). Off by default so that ``ladj`` is FrEIA's estimator alone (ActNorm's log-det would carry
            a gradient and blur defect 1).
        jacobian_iterations: power-series terms.
        hutchinson_samples: Hutchinson probes per term.
        fixed_point_iterations: iterations of the inverse.
        lipschitz_iterations: power iterations per ``lipschitz_correction()``.
        spectral_norm_max: the bound ``c`` each weight matrix is rescaled to.
        inverse_tol: residual ``max_b ||y - (x + g(x))||`` at or below which a block's inverse counts as converged
            (FrEIA has no tolerance: it only decides the ``converged`` report).
    """

    family = "iresnet"
    width_hparam = "hidden"
    backend = "freia"
    capabilities = Capabilities(density=True, logdet="estimator", inverse="iterative", inputs=("vector", "image"))
    #: the fixed-point inverse stops after a fixed count; 1e-6 is what 50 iterations reach for c = 0.8 per layer
    roundtrip_tol: ClassVar[float] = 1e-6
    #: the estimator's bias against the exact log-det: the power series truncated after 20 terms
    logdet_tol: ClassVar[float] = 1e-3

    def __init__(self, shape: Sequence[int], num_classes: int | None = None, depth: int = 4, hidden: int | None = None,
                 internal_layers: int = 1, actnorm: bool = False, jacobian_iterations: int = 10,
                 hutchinson_samples: int = 1, fixed_point_iterations: int = 50, lipschitz_iterations: int = 10,
                 spectral_norm_max: float = 0.8, inverse_tol: float = 1e-5) -> None:
        super().__init__(shape, num_classes, depth=depth, hidden=hidden, internal_layers=internal_layers,
                         actnorm=actnorm, jacobian_iterations=jacobian_iterations,
                         hutchinson_samples=hutchinson_samples, fixed_point_iterations=fixed_point_iterations,
                         lipschitz_iterations=lipschitz_iterations, spectral_norm_max=spectral_norm_max,
                         inverse_tol=inverse_tol)
        self.solve = InverseSettings(solver="fixed_point", tol=inverse_tol, max_iter=fixed_point_iterations)
        width = hidden if hidden is not None else (64 if self.input_kind == "vector" else 16)
        with numpy_seeded_from_torch():
            self.inn = Ff.SequenceINN(*self.shape)
            for _ in range(depth):
                self.inn.append(Fm.IResNetLayer, internal_size=width, n_internal_layers=internal_layers,
                                jacobian_iterations=jacobian_iterations, hutchinson_samples=hutchinson_samples,
                                fixed_point_iterations=fixed_point_iterations,
                                lipschitz_iterations=lipschitz_iterations, spectral_norm_max=spectral_norm_max)
                if actnorm:
                    self.inn.append(Fm.ActNorm)
        for m in self.inn.modules():
            if isinstance(m, Fm.ActNorm):
                m.init_on_next_batch = False  # identity until data_init
        self.lipschitz_correction()  # start contractive (FrEIA does not do it at construction)

    # ------------------------------------------------------------------------------------------- blocks
    @property
    def blocks(self) -> list[Fm.IResNetLayer]:
        """The FrEIA ``IResNetLayer`` modules, in forward order."""
        return [m for m in self.inn.module_list if isinstance(m, Fm.IResNetLayer)]

    def lipschitz_correction(self) -> None:
        """FrEIA's ``lipschitz_correction()`` on every block (power iteration, rescale to ``spectral_norm_max``)."""
        for block in self.blocks:
            with _default_dtype(block.layers[0].weight.dtype):
                block.lipschitz_correction()

    def after_step(self) -> None:
        """After each optimiser step: FrEIA's ``lipschitz_correction()``; without it nothing bounds ``Lip(g)``."""
        self.lipschitz_correction()

    # ------------------------------------------------------------------------------------------- contract
    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``x``: (B, *shape) -> ``z``: (B, *shape), ``ladj``: (B,) FrEIA's estimate (no parameter gradient)."""
        grad_enabled = torch.is_grad_enabled()
        h = x
        ladj = x.new_zeros(x.shape[0])
        for m in self.inn.module_list:
            if isinstance(m, Fm.IResNetLayer):
                with torch.enable_grad():  # FrEIA takes autograd.grad inside forward
                    out, jac = m([h], jac=True)
                h = out[0] if grad_enabled else out[0].detach()
            else:
                out, jac = m([h], jac=True)
                h = out[0]
            ladj = ladj + as_ladj(jac, x)
        return h, ladj

    def encode(self, x: Tensor) -> Tensor:
        """``x``: (B, *shape) -> ``z``: (B, *shape) without the log-det (FrEIA's ``jac=False``): no
        ``autograd.grad`` inside, so it composes with JVP/VJP and costs one pass of ``g`` per block."""
        h = x
        for m in self.inn.module_list:
            h = m([h], jac=False)[0][0]
        return h

    def inverse(self, z: Tensor) -> Tensor:
        """``z``: (B, *shape) -> ``x``: (B, *shape) by FrEIA's fixed-count fixed-point iteration per block.

        Sets ``last_inverse``: iterations = ``fixed_point_iterations`` per block, residual = the largest measured
        ``max_b ||y - (x + g(x))||`` over blocks, converged = residual <= ``inverse_tol``.
        """
        h = z
        per_block: list[int] = []
        worst = 0.0
        for m in reversed(self.inn.module_list):
            if isinstance(m, Fm.IResNetLayer):
                out, _ = m([h], rev=True, jac=False)
                x_block = out[0]
                with torch.no_grad():
                    r = (h - (x_block + m.residual(x_block))).reshape(h.shape[0], -1).norm(dim=1).max()
                per_block.append(int(m.fixed_point_iterations))
                worst = max(worst, float(r))
            else:
                out, _ = m([h], rev=True, jac=True)
                x_block = out[0]
            h = x_block
        tol = self.solve.tol if self.solve.tol is not None else 1e-5
        self.last_inverse = InverseInfo(iterations=max(per_block, default=0), residual=worst,
                                        converged=worst <= tol, per_block=per_block)
        return h

    def library_inverse_logdet(self, z: Tensor) -> Tensor:
        """What FrEIA's reverse mode reports as the log-det of ``F^-1`` at ``z``: (B, *shape) -> (B,), detached.

        The sum over blocks of ``block([y], rev=True, jac=True)[1]``; for an ``IResNetLayer`` that is ``-J``
        estimated at the block's reverse input ``y``, where the true value is ``-log|det dF/dx|`` at
        ``x = F^-1(y)`` (defect 3 of the module docstring).
        """
        h = z
        total = z.new_zeros(z.shape[0])
        for m in reversed(self.inn.module_list):
            with torch.enable_grad():
                out, jac = m([h], rev=True, jac=True)
            h = out[0].detach()
            total = total + as_ladj(jac, z).detach()
        return total

    def data_init(self, x: Tensor) -> None:
        """Initialise every ``ActNorm`` (if ``actnorm``) on its own input, walking ``x``: (B, *shape)."""
        init_actnorms(self.inn, x)

    # ------------------------------------------------------------------------------------------- settings
    def estimator_settings(self) -> EstimatorSettings:
        """FrEIA's estimator: the truncated series with ``terms`` = ``jacobian_iterations`` and ``probes`` =
        ``hutchinson_samples`` Rademacher probes (the other fields at their defaults, which FrEIA does not read)."""
        first = self.blocks[0] if self.blocks else None
        terms = int(first.jacobian_iterations) if first else int(self._hparams["jacobian_iterations"])
        probes = int(first.hutchinson_samples) if first else int(self._hparams["hutchinson_samples"])
        return EstimatorSettings(method="series", terms=terms, probes=probes, probe="rademacher")

    def configure_estimator(self, settings: EstimatorSettings) -> None:
        """Set ``jacobian_iterations`` and ``hutchinson_samples`` on every block; FrEIA has nothing else to set."""
        refuse_changes(self.estimator_settings(), settings, ("terms", "probes"), "FrEIA's IResNetLayer")
        for block in self.blocks:
            block.jacobian_iterations = settings.terms
            block.hutchinson_samples = settings.probes
        self._hparams.update(jacobian_iterations=settings.terms, hutchinson_samples=settings.probes)

    def inverse_settings(self) -> InverseSettings:
        """Plain iteration, ``max_iter`` = ``fixed_point_iterations`` (always all of them), ``tol`` =
        ``inverse_tol`` (only for the ``converged`` report)."""
        return self.solve

    def configure_inverse(self, settings: InverseSettings) -> None:
        """Set ``fixed_point_iterations`` on every block and the tolerance of the report; FrEIA has one solver."""
        refuse_changes(self.solve, settings, ("tol", "max_iter"), "FrEIA's IResNetLayer")
        if settings.tol is None:
            raise ValueError("FrEIA's IResNetLayer needs an explicit tol (it has no dtype default)")
        for block in self.blocks:
            block.fixed_point_iterations = settings.max_iter
        self.solve = settings
        self._hparams.update(fixed_point_iterations=settings.max_iter, inverse_tol=settings.tol)

    def known_defects(self) -> dict[str, str]:
        return {
            "gradients": (
                "FrEIA 0.2 IResNetLayer takes its power-series log-det with torch.autograd.grad without "
                "create_graph=True, so ladj carries no gradient to the parameters: maximum-likelihood training "
                "optimises only the N(z) term"
            ),
            "inputs_untouched": (
                "FrEIA 0.2 IResNetLayer sets requires_grad=True on a leaf input to take its vector-Jacobian "
                "products, changing the caller's tensor"
            ),
        }
