"""Native invertible residual networks: i-ResNet and Residual Flow.

Behrmann et al., "Invertible Residual Networks", ICML 2019; Chen et al., "Residual Flows for Invertible
Generative Modeling", NeurIPS 2019.

A block is ``F(x) = x + g(x)`` with ``g`` a small network whose layers are spectrally normalised to a
coefficient ``c`` (:mod:`models.spectral_norm`) and whose activations are 1-Lipschitz
(:mod:`models.activations`), so ``Lip(g) <= c^L < 1`` and ``F`` is invertible with ``Lip(F) <= 1 + c^L`` and
``Lip(F^-1) <= 1 / (1 - c^L)``. The model is ``[squeeze] -> depth x (ActNorm -> block) -> [unsqueeze]``:

- vectors ``(D,)``: ``g = Linear(D, hidden) -> phi -> Linear(hidden, hidden) -> phi -> Linear(hidden, D)``;
- images ``(C, H, W)``: ``squeeze`` times space-to-depth first, then
  ``g = Conv3x3(C', hidden) -> phi -> Conv1x1(hidden, hidden) -> phi -> Conv3x3(hidden, C')`` (i-ResNet's 3-1-3);
  ``z`` is unsqueezed back, so ``z`` has the input's shape.

The log-det of each block comes from :mod:`models.logdet_estimators` (exact / truncated series / Russian
roulette, optional Neumann gradient); the inverse is a per-block fixed-point solve (:mod:`models.fixed_point`,
plain or Anderson), reported in ``last_inverse``. ``logits`` is i-ResNet's classifier: a linear layer on the
flattened ``z``.

:class:`IResNetNative`: ELU, 5-term series with one Gaussian probe, ``c = 0.9``.
:class:`ResFlowNative`: LipSwish, roulette with 2 exact terms + Geom(0.5) tail (4 terms expected), Neumann
gradient, ``c = 0.98``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from models.activations import Activation, make_activation
from models.actnorm import ActNorm
from models.base import (
    Capabilities,
    EstimatorMethod,
    EstimatorSettings,
    InverseInfo,
    InverseSettings,
    InvertibleModel,
    ProbeKind,
    SolverKind,
    StopKind,
    TailKind,
    VjpKind,
)
from models.fixed_point import ErrorBound, SolveResult, anderson, fixed_point, ieee_fp32, newton, stalled
from models.jacobian import FactoredVJP, jacobian_from_vjp
from models.logdet_estimators import VJP, block_logdet
from models.spectral_norm import SpectralNormConv2d, SpectralNormLayer, SpectralNormLinear
from models.squeeze import squeeze, squeezed_shape, unsqueeze

#: The largest vector dimension for which ``solver = "newton"`` is accepted: each step builds the (B, D, D) Jacobian
#: (D rows through the block's chain, :meth:`ChainVJP.jacobian`) and solves with it.
NEWTON_MAX_DIM = 16
#: ``solver = "auto"`` runs plain iteration this many steps at a time ...
AUTO_PROBE = 2
#: ... and switches to :meth:`ResidualBlock.auto_solver` once a residual is more than this fraction of the one before
#: (a slow contraction: plain iteration would need many more steps).
AUTO_SWITCH_RATE = 0.4


def newton_fits(shape: Sequence[int]) -> bool:
    """Whether a block of per-example ``shape`` takes Newton's method: a vector of at most :data:`NEWTON_MAX_DIM`
    dimensions."""
    return len(shape) == 1 and shape[0] <= NEWTON_MAX_DIM


class ChainVJP(FactoredVJP):
    """The vector-Jacobian product of ``g = W_L phi(... phi(W_1 x))`` on vectors from its saved factors, and its full
    Jacobian from the same factors.

    ``weights``: the L normalised weights ``W_i``: (out, in) (biases do not enter); ``derivs``: the L - 1 activation
    derivatives ``phi'(a_i)``: (B, hidden) at the evaluated points. ``J_g = W_L diag(phi'(a_{L-1})) ... W_1``.
    """

    def __init__(self, weights: Sequence[Tensor], derivs: Sequence[Tensor]) -> None:
        self.weights = list(weights)
        self.derivs = list(derivs)

    def __call__(self, v: Tensor) -> Tensor:
        """``v^T J_g``: (P, B, D) -> (P, B, D); the derivatives broadcast over P. One probe (the default) runs on the
        (B, width) matrix with an ``mm`` a product, where a 3-D ``matmul`` adds two reshapes that a graph records as
        nodes of their own; with more probes the 3-D products are the faster form."""
        single = v.shape[0] == 1
        product = Tensor.mm if single else Tensor.matmul
        u = v[0] if single else v
        for i in reversed(range(len(self.weights))):
            u = product(u, self.weights[i])
            if i > 0:
                u = u * self.derivs[i - 1]
        return u.unsqueeze(0) if single else u

    def jacobian(self) -> Tensor:
        """``J_g``: (B, D, D) ((1, D, D) for a single layer, the same at every point), row ``i`` the product for the
        unit vector ``e_i``: what :meth:`__call__` gives on the basis, bit for bit (``e_i^T W_L`` is row ``i`` of
        ``W_L``), without that first product: the rows of ``W_L`` times the last derivatives start the chain."""
        last = self.weights[-1]
        if not self.derivs:
            return last.expand(1, *last.shape)
        u = last.unsqueeze(1) * self.derivs[-1]  # (D, B, hidden)
        for i in reversed(range(1, len(self.weights) - 1)):
            u = (u @ self.weights[i]) * self.derivs[i - 1]
        return (u @ self.weights[0]).transpose(0, 1)


class ResidualNet(nn.Module):
    """The contractive branch ``g``: (B, *shape) -> (B, *shape), ``Lip(g) <= coeff ** len(layers)``.

    Args:
        shape: ``(D,)`` for linear layers or ``(C, H, W)`` for convolutions.
        hidden: hidden width (features or channels).
        coeff: spectral-norm coefficient ``c`` of every layer.
        activation: ``"elu"`` or ``"lipswish"``.
        hidden_layers: number of hidden layers (``hidden_layers + 1`` weight layers).
        n_power_iterations: power-iteration steps per training forward.
        sn_tol: power iteration to this tolerance instead (:class:`models.spectral_norm.SpectralNormLayer`).
        weight_gain: every layer's weight is ``weight_gain * weight`` before normalisation
            (:class:`models.spectral_norm.SpectralNormLayer`), so Adam's step on it is ``weight_gain`` times larger.
        init_at_bound: rescale every layer to ``||W||_2 = coeff`` at construction
            (:meth:`models.spectral_norm.SpectralNormLayer.rescale_to_bound`).
    """

    def __init__(self, shape: Sequence[int], hidden: int, coeff: float, activation: str, hidden_layers: int = 2,
                 n_power_iterations: int = 1, weight_gain: float = 1.0, init_at_bound: bool = False,
                 sn_tol: float | None = None) -> None:
        super().__init__()
        self.shape = tuple(shape)
        widths = [self.shape[0]] + [hidden] * hidden_layers + [self.shape[0]]
        layers: list[SpectralNormLayer] = []
        for i in range(len(widths) - 1):
            if len(self.shape) == 1:
                layers.append(SpectralNormLinear(widths[i], widths[i + 1], coeff, n_power_iterations,
                                                 gain=weight_gain, tol=sn_tol))
            else:
                kernel = 3 if i in (0, len(widths) - 2) else 1
                hw = (self.shape[1], self.shape[2])
                layers.append(SpectralNormConv2d(widths[i], widths[i + 1], kernel, hw, coeff, n_power_iterations,
                                                 gain=weight_gain, tol=sn_tol))
            if init_at_bound:
                layers[-1].rescale_to_bound()
        self.layers = nn.ModuleList(layers)
        self.acts = nn.ModuleList([make_activation(activation) for _ in range(len(layers) - 1)])

    def _layer(self, i: int) -> SpectralNormLayer:
        layer = self.layers[i]
        assert isinstance(layer, SpectralNormLayer)
        return layer

    def _act(self, i: int) -> Activation:
        act = self.acts[i]
        assert isinstance(act, Activation)
        return act

    def weights(self, update: bool) -> list[Tensor]:
        """The normalised weights; ``update`` advances power iteration (training mode only)."""
        return [self._layer(i).normalized_weight(update) for i in range(len(self.layers))]

    def evaluate(self, x: Tensor, weights: list[Tensor]) -> Tensor:
        """``g(x)`` with the given normalised weights. ``x``: (B, *shape) -> (B, *shape)."""
        h = x
        for i in range(len(self.layers)):
            h = self._layer(i).affine(h, weights[i])
            if i < len(self.acts):
                h = self._act(i)(h)
        return h

    def forward(self, x: Tensor) -> Tensor:
        return self.evaluate(x, self.weights(update=True))

    def lipschitz(self) -> float:
        """A bound on ``Lip(g)`` (2-norm) for the weights in use: the product of the layers' operator norms
        (:meth:`models.spectral_norm.SpectralNormLayer.operator_norm`; the activations are 1-Lipschitz)."""
        return math.prod(self._layer(i).operator_norm() for i in range(len(self.layers)))

    def linearize(self, x: Tensor, weights: list[Tensor], mode: str = "analytic") -> tuple[Tensor, VJP]:
        """``g(x)`` and its vector-Jacobian product from one evaluation.

        ``x``: (B, *shape) -> (``g(x)``: (B, *shape), ``vjp``) with ``vjp(v) = v^T J_g(x)`` for ``v``: (P, B, *shape).
        ``"analytic"``: ``v -> W_1^T(phi'(a_1) * W_2^T(phi'(a_2) * W_3^T v))`` through the saved derivatives, an
        ordinary differentiable expression (its gradient needs no double backward; for vectors a :class:`ChainVJP`,
        which also gives the full Jacobian from the same factors); ``"autograd"``: repeated
        ``torch.autograd.grad`` on the one graph, ``create_graph=True`` whenever grad mode is on.
        """
        if mode == "autograd":
            return self._linearize_autograd(x, weights)
        derivs: list[Tensor] = []
        h = x
        for i in range(len(self.layers)):
            h = self._layer(i).affine(h, weights[i])
            if i < len(self.acts):
                h, d = self._act(i).value_and_derivative(h)
                derivs.append(d)
        batch, shape = x.shape[0], tuple(x.shape[1:])
        if len(shape) == 1:
            return h, ChainVJP(weights, derivs)

        def vjp_conv(v: Tensor) -> Tensor:  # (P, B, C, H, W): convolutions need a 4-D batch
            p = v.shape[0]
            u = v.reshape(p * batch, *shape)
            for i in reversed(range(len(self.layers))):
                u = self._layer(i).transpose(u, weights[i])
                if i > 0:
                    d = derivs[i - 1]
                    u = (u.reshape(p, *d.shape) * d).reshape(p * batch, *d.shape[1:])
            return u.reshape(p, batch, *shape)

        return h, vjp_conv

    def _linearize_autograd(self, x: Tensor, weights: list[Tensor]) -> tuple[Tensor, VJP]:
        x_in = x if x.requires_grad else x.detach().requires_grad_(True)
        with torch.enable_grad():
            gx = self.evaluate(x_in, weights)

        def vjp(v: Tensor) -> Tensor:
            (out,) = torch.autograd.grad(gx, x_in, v, retain_graph=True, create_graph=torch.is_grad_enabled(),
                                         is_grads_batched=True)
            return out

        return (gx if torch.is_grad_enabled() else gx.detach()), vjp


class ResidualBlock(nn.Module):
    """``F(x) = x + g(x)``: (B, *shape) -> (B, *shape), with a log-det estimate and a fixed-point inverse."""

    def __init__(self, net: ResidualNet) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: Tensor, settings: EstimatorSettings | None = None, generator: torch.Generator | None = None,
                update: bool = True) -> tuple[Tensor, Tensor | None]:
        """``x``: (B, *shape) -> (``y``: (B, *shape), ``ladj``: (B,) or None when ``settings`` is None)."""
        weights = self.net.weights(update)
        if settings is None:
            return x + self.net.evaluate(x, weights), None
        gx, vjp = self.net.linearize(x, weights, settings.vjp)
        return x + gx, block_logdet(vjp, x, settings, generator)

    @torch.no_grad()
    def inverse(self, y: Tensor, solver: SolverKind = "fixed_point", atol: float = 1e-10, rtol: float = 1e-10,
                max_iter: int = 1000, memory: int = 5, bound: ErrorBound | None = None) -> tuple[Tensor, SolveResult]:
        """Solve ``x + g(x) = y`` from ``x_0 = y``. ``y``: (B, *shape) -> (``x``: (B, *shape), result); stops on
        the residual tolerance ``atol + rtol max|x|``, or on ``bound`` (the a-posteriori error bound) where given.
        ``solver``: :func:`models.fixed_point.fixed_point`, :func:`~models.fixed_point.anderson`,
        :func:`~models.fixed_point.newton` (vectors only: the Jacobian is :func:`models.jacobian.jacobian_from_vjp`
        of :meth:`ResidualNet.linearize`), or
        ``"auto"``: plain iteration, :data:`AUTO_PROBE` steps at a time, until a step shrinks the residual by less
        than the factor :data:`AUTO_SWITCH_RATE`, then :meth:`auto_solver` from that point on (iterations and
        history count both parts).

        Runs with TF32 off (:func:`models.fixed_point.ieee_fp32`): TF32 would stall the iteration near 1e-3."""
        weights = self.net.weights(update=False)

        def step(x: Tensor) -> Tensor:
            return y - self.net.evaluate(x, weights)

        def linearized(x: Tensor) -> tuple[Tensor, Callable[[], Tensor]]:
            gx, vjp = self.net.linearize(x, weights)
            return y - gx, lambda: jacobian_from_vjp(vjp, x)

        def run(kind: SolverKind, x0: Tensor, iterations: int) -> tuple[Tensor, SolveResult]:
            if kind == "anderson":
                return anderson(step, x0, atol, rtol, iterations, memory=memory, bound=bound)
            if kind == "newton":
                return newton(linearized, x0, atol, rtol, iterations, bound=bound)
            return fixed_point(step, x0, atol, rtol, iterations, bound=bound)

        with ieee_fp32():
            switch_to = self.auto_solver(y) if solver == "auto" else solver
            if solver != "auto" or switch_to == "fixed_point":
                return run(switch_to, y, max_iter)
            done = SolveResult()
            x = y
            while True:
                slow = len(done.history) >= 2 and done.history[-1] > AUTO_SWITCH_RATE * done.history[-2]
                kind: SolverKind = switch_to if slow else "fixed_point"
                left = max_iter - done.iterations
                x, part = run(kind, x, left if slow else min(AUTO_PROBE, left))
                part.iterations += done.iterations
                part.history = done.history + part.history
                done = part
                if (slow or done.converged or not math.isfinite(done.residual) or done.iterations >= max_iter
                        or stalled(done.history)):
                    return x, done

    def auto_solver(self, y: Tensor) -> SolverKind:
        """What ``solver = "auto"`` switches to on a slowly contracting solve: Newton's method for vectors of at
        most :data:`NEWTON_MAX_DIM` dimensions, Anderson acceleration for images, plain iteration for larger vectors
        (where, measured on digits as 64-vectors, neither paid for its extra work per iteration)."""
        if y.dim() == 2:
            return "newton" if newton_fits(y.shape[1:]) else "fixed_point"
        return "anderson"


class ResidualFlow(InvertibleModel):
    """A stack of residual blocks with ActNorm between them (shared by :class:`IResNetNative`, :class:`ResFlowNative`).

    Args:
        shape: ``(D,)`` or ``(C, H, W)``.
        num_classes: classes of the ``logits`` head (10 by default).
        depth: number of residual blocks.
        hidden: hidden width of each block's ``g`` (features or channels).
        hidden_layers: hidden layers per ``g`` (weight layers = ``hidden_layers + 1``).
        coeff: spectral-norm coefficient ``c`` per layer (``c >= 1`` voids the invertibility guarantee; allowed
            so that tests and stability studies can force it).
        activation: ``"elu"`` or ``"lipswish"``.
        actnorm: put an ActNorm before every block.
        squeeze: space-to-depth steps for images (``None``: one if height and width are even).
        n_power_iterations: spectral-norm power-iteration steps per training forward.
        sn_tol: instead of ``n_power_iterations`` steps, power iteration to this tolerance in every training forward
            and when the model leaves training mode (the Residual Flows code's practice, ``--sn-tol 1e-3``;
            :class:`models.spectral_norm.SpectralNormLayer`); None: the steps.
        weight_gain: each layer uses ``weight_gain * weight`` (an equalised-learning-rate parametrisation, Karras et
            al., ICLR 2018): Adam moves each entry of ``weight`` by about ``lr``, so the step on the layer's weight
            is ``weight_gain`` times larger; 1 is the plain parametrisation.
        init_at_bound: start every layer at its bound, ``||W||_2 = coeff``, instead of PyTorch's default
            initialisation (whose norm is usually above ``coeff``, so the normalisation would divide every step
            by ``sigma / coeff``; a ``Linear(2, 64)`` has ``sigma`` about 3.3).
        method, terms, exact_terms, probes, probe, tail, tail_param, max_terms, neumann_grad, vjp, eval_seed:
            the log-det estimator, see :class:`models.logdet_estimators.EstimatorSettings`.
        solver, inverse_tol, max_iter, anderson_memory: the inverse, see :class:`models.base.InverseSettings`
            (``inverse_tol`` is its ``tol``).
        solver: ``"fixed_point"``, ``"anderson"``, ``"newton"`` (vectors of at most :data:`NEWTON_MAX_DIM`
            dimensions: each step builds the block's full Jacobian) or ``"auto"`` (:meth:`ResidualBlock.inverse`).
        inverse_tol: with ``inverse_stop = "error"``, the error budget of the inverse: the blocks' certified bounds
            on the errors their own solves add (2-norm per example) sum to at most ``inverse_tol``; later blocks can
            amplify an earlier block's error, which ``last_inverse.error_bound`` bounds (see
            :meth:`ResidualFlow.inverse`; ``None``: 1e-10 in float64,
            1e-4 otherwise: in float32 a block's certifiable error floors near ``Lip / (1 - Lip)`` times the rounding of
            its residual, about 1e-6 ``||x||``); where a block is not a certified contraction, the residual stop with
            at most the residual default; with ``"residual"``, each block's solve stops at
            ``max|x_{k+1} - x_k| <= tol (1 + max|x_{k+1}|)`` (``None``: 1e-10 in float64, 1e-6 otherwise; the error
            is then up to ``Lip(g) / (1 - Lip(g))`` times that residual, composed over the blocks).
        inverse_stop: ``"error"`` (default) or ``"residual"``: what ``inverse_tol`` bounds.
        max_iter: iteration cap per block.
        anderson_memory: Anderson's history length ``m``.
    """

    family: ClassVar[str] = "iresnet"
    backend: ClassVar[str] = "native"
    capabilities: ClassVar[Capabilities] = Capabilities(density=True, logdet="estimator", inverse="iterative",
                                                        classifier=True, inputs=("vector", "image"))
    roundtrip_tol: ClassVar[float] = 1e-7
    logdet_tol: ClassVar[float] = 1e-6

    def __init__(self, shape: Sequence[int], num_classes: int | None = None, depth: int = 4, hidden: int = 64,
                 hidden_layers: int = 2, coeff: float = 0.9, activation: str = "elu", actnorm: bool = True,
                 squeeze: int | None = None, n_power_iterations: int = 1, weight_gain: float = 1.0,
                 init_at_bound: bool = False, sn_tol: float | None = None,
                 method: EstimatorMethod = "series", terms: int = 5, exact_terms: int = 2,
                 probes: int = 1, probe: ProbeKind = "gaussian", tail: TailKind = "geometric", tail_param: float = 0.5,
                 max_terms: int = 100, neumann_grad: bool = False, vjp: VjpKind = "analytic",
                 eval_seed: int | None = None, solver: SolverKind = "auto", inverse_tol: float | None = None,
                 max_iter: int = 1000, anderson_memory: int = 5, inverse_stop: StopKind = "error") -> None:
        if depth < 1 or hidden < 1 or hidden_layers < 1:
            raise ValueError("depth, hidden and hidden_layers must be >= 1")
        if weight_gain <= 0:
            raise ValueError(f"weight_gain must be positive, got {weight_gain}")
        if sn_tol is not None and not sn_tol > 0:
            raise ValueError(f"sn_tol must be positive or None, got {sn_tol}")
        settings = EstimatorSettings(method=method, terms=terms, exact_terms=exact_terms, probes=probes, probe=probe,
                                     tail=tail, tail_param=tail_param, max_terms=max_terms,
                                     neumann_grad=neumann_grad, vjp=vjp, eval_seed=eval_seed)
        solve = InverseSettings(solver=solver, tol=inverse_tol, max_iter=max_iter, anderson_memory=anderson_memory,
                                stop=inverse_stop)
        super().__init__(shape, num_classes, depth=depth, hidden=hidden, hidden_layers=hidden_layers, coeff=coeff,
                         activation=activation, actnorm=actnorm, squeeze=squeeze,
                         n_power_iterations=n_power_iterations, weight_gain=weight_gain, init_at_bound=init_at_bound,
                         sn_tol=sn_tol,
                         **settings.as_dict(), **_inverse_hparams(solve))
        self.settings = settings
        self._check_solver(solve)
        self.solve = solve
        self.n_squeeze = self._n_squeeze(squeeze)
        self.inner_shape = self._inner_shape()
        self.actnorms = nn.ModuleList(
            [ActNorm(self.inner_shape[0]) if actnorm else nn.Identity() for _ in range(depth)])
        self.blocks = nn.ModuleList([
            ResidualBlock(ResidualNet(self.inner_shape, hidden, coeff, activation, hidden_layers, n_power_iterations,
                                      weight_gain, init_at_bound, sn_tol))
            for _ in range(depth)])
        assert self.num_classes is not None
        self.head = nn.Linear(self.dim, self.num_classes)

    # ------------------------------------------------------------------------------ configuration
    def _n_squeeze(self, n_squeeze: int | None) -> int:
        if len(self.shape) == 1:
            return 0
        if len(self.shape) != 3:
            raise ValueError(f"images must be (C, H, W), got {self.shape}")
        if n_squeeze is None:
            return 1 if self.shape[1] % 2 == 0 and self.shape[2] % 2 == 0 else 0
        return int(n_squeeze)

    def _inner_shape(self) -> tuple[int, ...]:
        if len(self.shape) == 1:
            return self.shape
        c, h, w = self.shape
        return squeezed_shape((c, h, w), self.n_squeeze)

    def estimator_settings(self) -> EstimatorSettings:
        """The log-det estimator of every block (also in ``config()``)."""
        return self.settings

    def configure_estimator(self, settings: EstimatorSettings) -> None:
        """Use ``settings`` from now on, e.g. ``dataclasses.replace(model.estimator_settings(), terms=10)``."""
        self.settings = settings
        self._hparams.update(settings.as_dict())

    def inverse_settings(self) -> InverseSettings:
        """The per-block solve: solver, ``tol`` (hyper-parameter ``inverse_tol``), ``max_iter``, Anderson memory."""
        return self.solve

    def configure_inverse(self, settings: InverseSettings) -> None:
        """Use ``settings`` for every block's solve from now on; ``ValueError`` for Newton's method on images or
        on vectors of more than :data:`NEWTON_MAX_DIM` dimensions."""
        self._check_solver(settings)
        self.solve = settings
        self._hparams.update(_inverse_hparams(settings))

    def _check_solver(self, settings: InverseSettings) -> None:
        if settings.solver == "newton" and not newton_fits(self.shape):
            raise ValueError(f"solver 'newton' builds each block's full Jacobian: vectors of at most {NEWTON_MAX_DIM} "
                             f"dimensions, got shape {self.shape}; use 'anderson' or 'fixed_point'")

    # ------------------------------------------------------------------------------ the flow
    def _pre(self, x: Tensor) -> Tensor:
        for _ in range(self.n_squeeze):
            x = squeeze(x)
        return x

    def _post(self, z: Tensor) -> Tensor:
        for _ in range(self.n_squeeze):
            z = unsqueeze(z)
        return z

    def _generator(self, x: Tensor) -> torch.Generator | None:
        if self.training or self.settings.eval_seed is None:
            return None
        return torch.Generator(device=x.device).manual_seed(int(self.settings.eval_seed))

    def _transform(self, x: Tensor, settings: EstimatorSettings | None, update: bool, force_init: bool = False
                   ) -> tuple[Tensor, Tensor | None]:
        """``x``: (B, *shape) -> (``z``: (B, *shape), ``ladj``: (B,) or None when ``settings`` is None).
        ``force_init`` initialises every ActNorm from its input; otherwise each initialises itself on its first
        training-mode batch (:class:`models.actnorm.ActNorm`)."""
        generator = self._generator(x) if settings is not None else None
        h = self._pre(x)
        ladj = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device) if settings is not None else None
        for norm, block in zip(self.actnorms, self.blocks, strict=True):
            if isinstance(norm, ActNorm):
                if force_init:
                    norm.initialize(h)
                h, l_norm = norm(h)
                ladj = None if ladj is None else ladj + l_norm
            assert isinstance(block, ResidualBlock)
            h, l_block = block(h, settings, generator, update)
            if ladj is not None and l_block is not None:
                ladj = ladj + l_block
        return self._post(h), ladj

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``x``: (B, *shape) -> ``z``: (B, *shape), ``ladj``: (B,), an estimate unless ``method="exact"``."""
        z, ladj = self._transform(x, self.settings, update=True)
        assert ladj is not None
        return z, ladj

    def encode(self, x: Tensor) -> Tensor:
        """``z`` alone, without the log-det (one evaluation of each ``g``). ``x``: (B, *shape) -> (B, *shape)."""
        return self._transform(x, None, update=False)[0]

    def exact_logdet(self, x: Tensor) -> Tensor:
        """Exact ``log|det dz/dx|`` from each block's full Jacobian. ``x``: (B, *shape) -> (B,). Small D only."""
        exact = dataclasses.replace(self.settings, method="exact", neumann_grad=False)
        ladj = self._transform(x, exact, update=False)[1]
        assert ladj is not None
        return ladj

    def data_init(self, x: Tensor) -> None:
        """Initialise every ActNorm from the batch ``x``: (B, *shape), block by block."""
        with torch.no_grad():
            self._transform(x, None, update=False, force_init=True)

    def logits(self, x: Tensor) -> Tensor:
        """i-ResNet classifier: linear layer on the flattened ``z``. ``x``: (B, *shape) -> (B, num_classes)."""
        z = self._transform(x, None, update=True)[0]
        return self.head(z.reshape(z.shape[0], -1))

    def _inverse_tol(self, dtype: torch.dtype, certified: bool) -> float:
        """The tolerance each block's solve is held to: ``tol`` where given, else the default of the dtype and
        ``stop``; an ``"error"`` stop without a certificate (``certified`` False) falls back to the residual stop
        with at most the residual default (1e-6 in float32), since a residual test at the error budget's 1e-4
        leaves errors of several times that (measured on digits-flat: 4.0e-4 / 5.2e-4)."""
        residual_default = 1e-10 if dtype == torch.float64 else 1e-6
        error_default = 1e-10 if dtype == torch.float64 else 1e-4
        if self.solve.stop == "residual":
            return residual_default if self.solve.tol is None else float(self.solve.tol)
        tol = error_default if self.solve.tol is None else float(self.solve.tol)
        return tol if certified else min(tol, residual_default)

    def error_amplification(self) -> list[float] | None:
        """How much an error made in each block's solve can grow by the end of the inverse, in inversion order
        (last block first): the product of the Lipschitz constants of the inverse maps applied after it, each
        ActNorm's ``max exp(-log_scale)`` and each later block's ``1 / (1 - Lip(g))``. None when a block is not a
        certified contraction (``Lip(g) >= 1``)."""
        pairs = list(zip(reversed(self.actnorms), reversed(self.blocks), strict=True))
        lips = [self._block(block).net.lipschitz() for _, block in pairs]
        if any(not lip < 1 for lip in lips):
            return None
        norms = [norm.inverse_lipschitz() if isinstance(norm, ActNorm) else 1.0 for norm, _ in pairs]
        amplification = [0.0] * len(pairs)
        after = 1.0
        for i in reversed(range(len(pairs))):
            amplification[i] = norms[i] * after
            after *= norms[i] / (1 - lips[i])
        return amplification

    @staticmethod
    def _block(block: nn.Module) -> ResidualBlock:
        assert isinstance(block, ResidualBlock)
        return block

    def inverse(self, z: Tensor) -> Tensor:
        """Invert block by block with the configured solver. ``z``: (B, *shape) -> ``x``: (B, *shape).

        With ``stop = "error"`` every block's solve is held to ``tol / K`` on the error it adds: it stops when its
        a-posteriori Banach bound ``Lip(g_i) / (1 - Lip(g_i)) max_b ||x_{k+1} - x_k||_2`` on the distance to the exact
        inverse of its input (:class:`models.fixed_point.ErrorBound`) is at most that, so the blocks' own errors sum
        to at most ``tol`` (2-norm per example, so also max-abs). ``Lip(g_i)`` is the product of the layers' operator
        norms (exact for linear layers, a 200-step power-iteration estimate for convolutions). The later inverse maps
        can amplify an earlier block's error: ``last_inverse.error_bound`` is the certified bound on the whole
        reconstruction error, ``sum_i a_i bound_i`` with ``a_i`` the :meth:`error_amplification` of solve ``i``, a
        worst case that in a deep stack of blocks near ``Lip = 1`` is far above the error measured; the blocks' own
        bounds are in ``last_inverse.per_block_bound``. A solve whose residual stalls at its rounding floor before
        its target stops there (``converged=False``). Where a block is not a certified contraction (``Lip(g) >= 1``),
        every solve falls back to the residual stop below with ``min(tol, 1e-6)`` (float32; 1e-10 in float64), and
        the inverse reports no bound (``last_inverse.stop`` says which stop was used). With ``stop = "residual"``
        every solve stops at ``max|x_{k+1} - x_k| <= tol (1 + max|x_{k+1}|)`` (the bounds are still reported).

        Sets ``self.last_inverse``: ``per_block`` iterations in inversion order (last block first), ``history``
        the residuals of all solves concatenated in that order, ``converged`` only if every block met its criterion.
        Each block's solve runs with TF32 off (:meth:`ResidualBlock.inverse`).
        """
        amplification = self.error_amplification()
        stop: StopKind = "error" if self.solve.stop == "error" and amplification is not None else "residual"
        tol = self._inverse_tol(z.dtype, amplification is not None)
        info = InverseInfo(iterations=0, residual=0.0, converged=True, stop=stop)
        pairs = list(zip(reversed(self.actnorms), reversed(self.blocks), strict=True))
        composed = 0.0
        h = self._pre(z)
        with torch.no_grad():
            for i, (norm, block) in enumerate(pairs):
                solve = self._block(block)
                bound = None
                if amplification is not None:
                    target = tol / len(pairs) if self.solve.stop == "error" else None
                    bound = ErrorBound(solve.net.lipschitz(), target)
                h, res = solve.inverse(h, self.solve.solver, tol, tol, self.solve.max_iter,
                                       self.solve.anderson_memory, bound)
                info.per_block.append(res.iterations)
                info.history.extend(res.history)
                info.iterations = max(info.iterations, res.iterations)
                info.residual = res.residual if math.isnan(res.residual) else max(info.residual, res.residual)
                info.converged = info.converged and res.converged
                if amplification is not None and res.error_bound is not None:
                    info.per_block_bound.append(res.error_bound)
                    composed += amplification[i] * res.error_bound
                if isinstance(norm, ActNorm):
                    h = norm.inverse(h)
        info.error_bound = composed if amplification is not None else None
        self.last_inverse = info
        return self._post(h)


class IResNetNative(ResidualFlow):
    """i-ResNet (Behrmann et al., ICML 2019): ELU, truncated series log-det (5 terms, 1 probe), ``c = 0.9``: the
    defaults of :class:`ResidualFlow`."""

    family = "iresnet"
    width_hparam = "hidden"


class ResFlowNative(ResidualFlow):
    """Residual Flow (Chen et al., NeurIPS 2019): LipSwish, roulette log-det (2 exact terms + Geom(0.5) tail),
    Neumann gradient, ``c = 0.98``. Arguments as :class:`ResidualFlow`, with these defaults."""

    family = "resflow"
    width_hparam = "hidden"

    def __init__(self, shape: Sequence[int], num_classes: int | None = None, depth: int = 4, hidden: int = 64,
                 hidden_layers: int = 2, coeff: float = 0.98, activation: str = "lipswish", actnorm: bool = True,
                 squeeze: int | None = None, n_power_iterations: int = 1, weight_gain: float = 1.0,
                 init_at_bound: bool = False, sn_tol: float | None = None,
                 method: EstimatorMethod = "roulette", terms: int = 5,
                 exact_terms: int = 2, probes: int = 1, probe: ProbeKind = "gaussian", tail: TailKind = "geometric",
                 tail_param: float = 0.5, max_terms: int = 100, neumann_grad: bool = True, vjp: VjpKind = "analytic",
                 eval_seed: int | None = None, solver: SolverKind = "auto", inverse_tol: float | None = None,
                 max_iter: int = 1000, anderson_memory: int = 5, inverse_stop: StopKind = "error") -> None:
        super().__init__(shape, num_classes, depth=depth, hidden=hidden, hidden_layers=hidden_layers, coeff=coeff,
                         activation=activation, actnorm=actnorm, squeeze=squeeze,
                         n_power_iterations=n_power_iterations, weight_gain=weight_gain, init_at_bound=init_at_bound,
                         sn_tol=sn_tol,
                         method=method, terms=terms, exact_terms=exact_terms,
                         probes=probes, probe=probe, tail=tail, tail_param=tail_param, max_terms=max_terms,
                         neumann_grad=neumann_grad, vjp=vjp, eval_seed=eval_seed, solver=solver,
                         inverse_tol=inverse_tol, max_iter=max_iter, anderson_memory=anderson_memory,
                         inverse_stop=inverse_stop)


def _inverse_hparams(settings: InverseSettings) -> dict[str, Any]:
    """The constructor arguments of :class:`ResidualFlow` that hold ``settings``."""
    return {"solver": settings.solver, "inverse_tol": settings.tol, "inverse_stop": settings.stop,
            "max_iter": settings.max_iter,
            "anderson_memory": settings.anderson_memory}
