"""Adapters over normflows 1.7.3 (Stimper, Liu, Campbell, Berenz, Ryll, Schölkopf & Hernández-Lobato,
"normflows: A PyTorch Package for Normalizing Flows", JOSS 2023): its Residual Flow and its Glow.

normflows' direction is the opposite of the contract's: a normflows ``Flow.forward`` maps latent -> data (sampling)
and ``Flow.inverse`` maps data -> latent with ``log|det d z / d x|``, which its ``log_prob`` sums. The adapters'
``forward`` therefore walks the flows in reverse calling ``inverse``, and their ``inverse`` walks them forward.

Quirks of normflows normalised here (each stated where it is handled):

- log-dets come back as python ``0`` (``Squeeze``, ``Split``/``Merge``), 0-d tensors (``ActNorm``,
  ``Invertible1x1Conv``, ``InvertibleAffine``) or (B,) tensors: :func:`as_ladj` makes a (B,) tensor of each;
- ``NormalizingFlow.inverse_and_log_det`` (and ``Composite``) accumulate the log-det in a float32 ``torch.zeros``
  whatever the input's dtype, so a float64 model's log-det would be rounded to float32: the adapters walk the flows
  themselves (vectors) or use ``MultiscaleFlow.inverse_and_log_det``, which accumulates in the input's dtype;
- ``ActNorm`` initialises itself on the first batch it sees in either direction: the adapters mark it initialised at
  construction (identity start) and initialise it explicitly in ``data_init``;
- the Residual blocks draw their Russian-roulette counts from numpy's *global* RNG (``np.random.geometric``) and
  their probes from torch's: every forward seeds numpy from torch's generator for its duration (and restores the
  caller's numpy state), so ``torch.manual_seed`` makes a forward reproducible.

:class:`ResFlowNormflows` and :class:`GlowNormflows` list their own quirks and defects.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from typing import Any, ClassVar, Literal

import normflows as nf
import numpy as np
import torch
from torch import Tensor, nn

from models.base import (
    Capabilities,
    EstimatorMethod,
    EstimatorSettings,
    InverseInfo,
    InvertibleModel,
    TailKind,
    refuse_changes,
)

TrainingValue = Literal["estimate", "surrogate"]
#: the ``max_terms`` the Residual blocks report: normflows draws the roulette count without a cap
UNCAPPED = 2**31 - 1
#: normflows' ``iResBlock._inverse_fixed_point`` stops after this many loop iterations (1002 evaluations of g)
INVERSE_LOOP_CAP = 1000
#: evaluations of ``g`` in a solve that hit normflows' cap: the first step plus ``INVERSE_LOOP_CAP + 1`` in the loop
_CAPPED_CALLS = INVERSE_LOOP_CAP + 2
#: normflows' eval-mode roulette always computes this many terms exactly (``iResBlock._logdetgrad``)
EVAL_EXACT_TERMS = 20


# ------------------------------------------------------------------------------------------------ helpers
def as_ladj(log_det: object, x: Tensor) -> Tensor:
    """A normflows log-det as the contract's ``ladj``: a (B,) tensor on ``x``'s device and dtype.

    ``log_det``: python number, 0-d or (1,) tensor (broadcast over the batch) or (B,) / (B, 1) tensor; ``x``: (B, ...).
    Gradients flow through tensor inputs unchanged.
    """
    batch = x.shape[0]
    if not isinstance(log_det, Tensor):
        return torch.full((batch,), float(log_det), dtype=x.dtype, device=x.device)  # type: ignore[arg-type]
    log_det = log_det.to(device=x.device, dtype=x.dtype)
    if log_det.numel() == 1 and batch != 1:
        return log_det.reshape(()) + x.new_zeros(batch)
    return log_det.reshape(batch)


@contextlib.contextmanager
def numpy_seeded_from_torch() -> Iterator[None]:
    """Seed numpy's global RNG from torch's (one draw of torch's CPU generator) for the duration, then restore the
    caller's numpy state: normflows' roulette counts then follow ``torch.manual_seed``."""
    state = np.random.get_state()
    np.random.seed(int(torch.randint(0, 2**31 - 1, ())))
    try:
        yield
    finally:
        np.random.set_state(state)


@contextlib.contextmanager
def replayed_rng(device: torch.device) -> Iterator[None]:
    """Run the block and then put torch's generators (CPU and ``device``) and numpy's global one back where they
    were, so the next call draws the same probes and roulette counts."""
    devices = [device] if device.type == "cuda" else []
    state = np.random.get_state()
    with torch.random.fork_rng(devices=devices):
        try:
            yield
        finally:
            np.random.set_state(state)


def mark_actnorms_initialised(module: nn.Module) -> None:
    """Switch off normflows' first-batch initialisation of every ``ActNorm`` in ``module`` (identity start)."""
    for m in module.modules():
        if isinstance(m, nf.flows.ActNorm):
            m.data_dep_init_done.fill_(1.0)


def arm_actnorms(module: nn.Module) -> list[nf.flows.ActNorm]:
    """Make every ``ActNorm`` in ``module`` initialise itself on the next batch it sees (normflows' own init:
    ``s = log(std + 1e-6)``, ``t = mean`` per channel, so its data -> latent output is standardised)."""
    acts = [m for m in module.modules() if isinstance(m, nf.flows.ActNorm)]
    for act in acts:
        act.data_dep_init_done = torch.zeros((), dtype=act.s.dtype, device=act.s.device)
    return acts


def _check_image(shape: tuple[int, ...], times: int) -> None:
    if len(shape) != 3:
        raise ValueError(f"images must be (C, H, W), got {shape}")
    if shape[1] % 2**times or shape[2] % 2**times:
        raise ValueError(f"H and W must be divisible by {2**times} for {times} squeeze(s), got {shape}")


# ------------------------------------------------------------------------------------------------ Residual Flow
class ResFlowNormflows(InvertibleModel):
    """Residual Flow (Chen, Behrmann, Duvenaud & Jacobsen, "Residual Flows for Invertible Generative Modeling",
    NeurIPS 2019) built from normflows' ``Residual`` flow and its ``LipschitzMLP`` / ``LipschitzCNN`` (normflows
    takes both from the authors' code, rtqichen/residual-flows).

    ``x``: (B, *shape) -> ``z``: (B, *shape), ``ladj``: (B,). The model is ``[squeeze] -> depth x (ActNorm ->
    Residual) -> [unsqueeze]`` in the data -> latent direction, each ``Residual`` being ``F(x) = x + g(x)`` with

    - vectors ``(D,)``: ``g = LipschitzMLP([D, hidden, ..., D])``;
    - images ``(C, H, W)``: one normflows ``Squeeze`` (space-to-depth, (C, H, W) -> (4C, H/2, W/2)) first, then
      ``g = LipschitzCNN([4C, hidden, ..., 4C], kernels [3, 1, ..., 1, 3])`` (i-ResNet's 3-1-3), and the squeeze
      undone at the end so ``z`` has x's shape.

    Configured as close to ``resflow-native`` as normflows allows: the same blocks and order, widths, ``coeff`` = 0.98
    per layer (``W / max(1, sigma / c)``, the same soft normalisation), LipSwish (``x sigmoid(softplus(beta) x) /
    1.1``, learnable), the roulette log-det with 2 exact terms and a Geom(0.5) tail, one Gaussian probe, the Neumann
    gradient (normflows' ``reduce_memory=True``, as in its example), ``init_iterations`` power iterations at
    construction and ``n_power_iterations`` per step. The differences that remain:

    1. **Pre-activation.** ``LipschitzMLP`` / ``LipschitzCNN`` put an activation *before* every layer, the first on
       the block's input: ``g = W3 phi(W2 phi(W1 phi(x)))`` where ours is ``W3 phi(W2 phi(W1 x))`` (the Residual
       Flows code's ``preact``); the bound ``Lip(g) <= c^3`` is the same.
    2. **Power iteration after the step.** normflows' layers do no power iteration in ``forward``;
       ``normflows.utils.update_lipschitz(model, n)`` does it, and the adapter calls it in :meth:`after_step`
       (ours iterates at the start of every training forward: the same count, one step earlier). Linear layers
       also run 200 iterations at construction (normflows' own), conv layers only after their first forward, which
       the adapter runs at construction (their ``u``, ``v`` are sized by the input, see below).
    3. **Evaluation estimator.** In eval mode normflows always computes 20 exact terms plus the tail (the Residual
       Flows code's evaluation setting), whatever ``exact_terms`` says, and for 2-D vectors it computes the exact
       log-det by brute force (``brute_force`` at D = 2); ``exact_terms``, ``method``, ``tail`` set the training
       estimator only. :meth:`estimator_settings` reports the training estimator.
    4. **Estimator settings.** One probe per call (normflows' ``randn_like``); ``probes = P > 1`` is done here by
       running every example P times in one batch (each replica draws its own probe, the roulette count is shared
       by the batch, as in ours) and averaging the estimates. No cap on the roulette count (``max_terms`` reports
       ``2**31 - 1``), Gaussian probes only, autograd vector-Jacobian products. ``method="exact"`` only at D = 2:
       normflows' ``brute_force`` (the 2x2 determinant of the autograd Jacobian, also in training; the setting
       the quick suite gives ``resflow-native`` on 2-D data); its ``exact_trace`` still truncates the series.
    5. **No classifier head** (``resflow-native`` has i-ResNet's linear head on ``z``).
    6. **Last layer initialisation.** ``init_zeros`` (False by default, as our PyTorch-default init) is normflows'
       option to divide the last layer's initial weight by 1000 (its example sets it).

    Quirks of normflows normalised here:

    - **Training-mode value.** With ``reduce_memory=True`` normflows' training-mode log-det is the Neumann
      *surrogate* ``v^T J (sum_k (-1)^k c_k J^k) v``, whose gradient is the log-det's but whose value is not (its
      mean is ``tr(J (I + J)^-1)``, not ``log det(I + J)``). With ``training_value="estimate"`` (default) the
      adapter first runs normflows' own roulette series on the same draws (the generators replayed,
      ``neumann_grad`` off for that call, no graph kept) and returns its value with the surrogate's gradient:
      ``value + (surrogate - surrogate.detach())``, as ``resflow-native`` does. That costs a second pass of
      vector-Jacobian products per block in training mode; ``training_value="surrogate"`` returns normflows' value
      as it is, at normflows' own cost (its figure is then not a log-likelihood).
    - ``geom_p`` and ``lamb`` of every ``iResBlock`` are ``nn.Parameter`` s that are only read with ``.item()``
      (never trained, no gradient): the adapter sets ``requires_grad=False`` on them (they stay in the state dict).
    - ``InducedNormConv2d`` sizes its power-iteration vectors ``u``, ``v`` at its first forward (from the input's
      spatial size), so a fresh model's state dict would not load into another: the adapter runs one forward of
      each ``g`` on zeros at construction.
    - The eval-mode estimator calls ``requires_grad_(True)`` on its input; the adapter never hands it the caller's
      tensor (a view when the first block has no ActNorm before it).

    Defects of normflows kept (measured, not patched; :meth:`known_defects`):

    - **Inverse without settings.** ``iResBlock.inverse`` (the public inverse) solves ``x = y - g(x)`` by fixed-point
      iteration from ``x_0 = y`` until ``max (x_{k+1} - x_k)^2 / (atol + rtol |y|) < 1`` with ``atol = rtol =
      1e-5`` fixed, i.e. a step below ``sqrt(1e-5 (1 + |y|))`` ~ 3.2e-3, not 1e-5 (the Residual Flows code's rule),
      and at most 1000 loop iterations, after which it returns silently. Nothing sets them, so
      :meth:`inverse_settings` is None and the ``settings`` check fails. The float64 round trip misses
      ``roundtrip_tol`` already at initialisation (5.0e-6 on (4,), 9.4e-7 on (1, 4, 4), 2 iterations per block; the
      ``roundtrip`` check); after the quick suite's 5 s of training on moons the float32 reconstruction error is
      3.4e-4 at 3-5 iterations per block, last step 3.3e-3 (``invbench run --models resflow-normflows --datasets
      moons --tasks inverse_cost``; ``tests/test_normflows_flows.py`` asserts it for layers at their bound). The
      adapter counts the evaluations of ``g`` (a forward hook), reports the last step ``max |x_k - x_{k-1}|`` as
      the residual and ``converged=False`` for a solve that hit the cap.

    Args:
        shape: (D,) or (C, H, W) with H, W even.
        depth: number of residual blocks.
        hidden: hidden width of each ``g`` (units / channels).
        hidden_layers: hidden layers per ``g`` (``hidden_layers + 1`` Lipschitz layers).
        coeff: normflows' ``lipschitz_const`` of every layer.
        actnorm: a normflows ``ActNorm`` before every block.
        n_power_iterations: power iterations per :meth:`after_step` (``update_lipschitz``), also normflows'
            ``max_lipschitz_iter``.
        init_iterations: power iterations at construction (``update_lipschitz`` once).
        init_zeros: normflows' ``init_zeros`` (last layer's initial weight / 1000).
        method: ``"roulette"`` (normflows' ``n_power_series=None``), ``"series"`` (``n_power_series=terms``,
            training only) or ``"exact"`` (``brute_force``, D = 2 only).
        terms: series terms (``method="series"``).
        exact_terms: normflows' ``n_exact_terms`` (training).
        probes: Hutchinson probes (replicas, see difference 4).
        tail: normflows' ``n_dist``: ``"geometric"`` or ``"poisson"``.
        tail_param: ``geom_p`` or ``lamb``.
        neumann_grad: normflows' ``reduce_memory`` (Neumann gradient computed in the forward pass).
        eval_seed: in eval mode, draw probes and roulette counts from generators seeded with it on every call.
        training_value: ``"estimate"`` or ``"surrogate"``, see the first quirk.
    """

    family = "resflow"
    backend = "normflows"
    width_hparam = "hidden"
    capabilities = Capabilities(density=True, logdet="estimator", inverse="iterative", inputs=("vector", "image"))
    #: as ``resflow-native``: what a solve to ~1e-10 gives in float64 (normflows' fixed rule may not reach it)
    roundtrip_tol: ClassVar[float] = 1e-7
    logdet_tol: ClassVar[float] = 1e-6

    def __init__(self, shape: Sequence[int], num_classes: int | None = None, depth: int = 4, hidden: int = 64,
                 hidden_layers: int = 2, coeff: float = 0.98, actnorm: bool = True, n_power_iterations: int = 1,
                 init_iterations: int = 50, init_zeros: bool = False, method: EstimatorMethod = "roulette",
                 terms: int = 5, exact_terms: int = 2, probes: int = 1, tail: TailKind = "geometric",
                 tail_param: float = 0.5, neumann_grad: bool = True, eval_seed: int | None = None,
                 training_value: TrainingValue = "estimate") -> None:
        if depth < 1 or hidden < 1 or hidden_layers < 1:
            raise ValueError("depth, hidden and hidden_layers must be >= 1")
        if training_value not in ("estimate", "surrogate"):
            raise ValueError(f"training_value must be 'estimate' or 'surrogate', got {training_value!r}")
        settings = EstimatorSettings(method=method, terms=terms, exact_terms=exact_terms, probes=probes,
                                     tail=tail, tail_param=tail_param, max_terms=UNCAPPED,
                                     neumann_grad=neumann_grad, vjp="autograd", eval_seed=eval_seed)
        super().__init__(shape, num_classes, depth=depth, hidden=hidden, hidden_layers=hidden_layers, coeff=coeff,
                         actnorm=actnorm, n_power_iterations=n_power_iterations, init_iterations=init_iterations,
                         init_zeros=init_zeros, method=method, terms=terms, exact_terms=exact_terms, probes=probes,
                         tail=tail, tail_param=tail_param, neumann_grad=neumann_grad, eval_seed=eval_seed,
                         training_value=training_value)
        self._check_method(method)
        self.training_value: TrainingValue = training_value
        self.n_power_iterations = int(n_power_iterations)
        image = self.input_kind == "image"
        if image:
            _check_image(self.shape, 1)
            c, h, w = self.shape
            self.inner_shape: tuple[int, ...] = (4 * c, h // 2, w // 2)
        else:
            self.inner_shape = self.shape
        self.squeeze: nf.flows.Squeeze | None = nf.flows.Squeeze() if image else None
        channels = self.inner_shape[0]
        widths = [channels] + [hidden] * hidden_layers + [channels]
        norms: list[nn.Module] = []
        blocks: list[nf.flows.Residual] = []
        for _ in range(depth):
            if image:
                kernels = [3] + [1] * (hidden_layers - 1) + [3]
                net: nn.Module = nf.nets.LipschitzCNN(widths, kernels, lipschitz_const=coeff,
                                                      max_lipschitz_iter=n_power_iterations, init_zeros=init_zeros)
            else:
                net = nf.nets.LipschitzMLP(widths, lipschitz_const=coeff, max_lipschitz_iter=n_power_iterations,
                                           init_zeros=init_zeros)
            blocks.append(nf.flows.Residual(net, reduce_memory=neumann_grad))
            norms.append(nf.flows.ActNorm((channels, 1, 1) if image else (channels,)) if actnorm else nn.Identity())
        self.norms = nn.ModuleList(norms)
        self.blocks = nn.ModuleList(blocks)
        for block in blocks:
            block.iresblock.geom_p.requires_grad_(False)  # read with .item() only: hyper-parameters, not weights
            block.iresblock.lamb.requires_grad_(False)
        mark_actnorms_initialised(self)
        with torch.no_grad():  # InducedNormConv2d sizes u, v at its first forward
            for block in blocks:
                block.iresblock.nnet(torch.zeros(1, *self.inner_shape))
        nf.utils.update_lipschitz(self, init_iterations)
        self.settings = settings
        self._apply_settings(settings)

    # ------------------------------------------------------------------------------------------- settings
    def _iresblocks(self) -> list[Any]:
        return [block.iresblock for block in self.blocks]

    def _check_method(self, method: str) -> None:
        if method == "exact" and self.shape != (2,):
            raise ValueError(f"normflows' Residual has an exact log-det (brute_force) only at D = 2, not for shape "
                             f"{self.shape}; use method 'roulette' or 'series'")

    def _apply_settings(self, s: EstimatorSettings) -> None:
        for rb in self._iresblocks():
            rb.brute_force = s.method == "exact"
            rb.n_power_series = s.terms if s.method == "series" else None
            rb.n_exact_terms = s.exact_terms
            rb.n_dist = s.tail
            with torch.no_grad():
                if s.tail == "geometric":
                    p = min(max(s.tail_param, 1e-12), 1 - 1e-12)
                    rb.geom_p.fill_(math.log(p) - math.log1p(-p))  # normflows stores the logit
                else:
                    rb.lamb.fill_(s.tail_param)
            rb.neumann_grad = s.neumann_grad
            rb.grad_in_forward = s.neumann_grad
        self.settings = s

    def estimator_settings(self) -> EstimatorSettings:
        """The training-mode estimator (eval mode: 20 exact terms + the tail, exact at D = 2; see difference 3)."""
        return self.settings

    def configure_estimator(self, settings: EstimatorSettings) -> None:
        """Set the method (``"exact"`` at D = 2 only), terms, tail, probes (replicas), Neumann gradient and eval seed
        on every block; probe kind, ``max_terms`` (none) and ``vjp`` (autograd) cannot change."""
        refuse_changes(self.settings, settings, ("method", "terms", "exact_terms", "probes", "tail", "tail_param",
                                                 "neumann_grad", "eval_seed"), "normflows' Residual")
        self._check_method(settings.method)
        self._apply_settings(settings)
        self._hparams.update(method=settings.method, terms=settings.terms, exact_terms=settings.exact_terms,
                             probes=settings.probes, tail=settings.tail, tail_param=settings.tail_param,
                             neumann_grad=settings.neumann_grad, eval_seed=settings.eval_seed)

    def after_step(self) -> None:
        """``normflows.utils.update_lipschitz(self, n_power_iterations)``: normflows' layers only update their
        spectral-norm estimate when asked."""
        nf.utils.update_lipschitz(self, self.n_power_iterations)

    # ------------------------------------------------------------------------------------------- the flow
    @contextlib.contextmanager
    def _draws(self, x: Tensor) -> Iterator[None]:
        """The random state of one forward: eval with ``eval_seed``: torch's generators forked and seeded with it;
        numpy's global RNG seeded from torch's either way (restored afterwards)."""
        seed = self.settings.eval_seed
        if self.training or seed is None:
            with numpy_seeded_from_torch():
                yield
            return
        devices = [x.device] if x.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(int(seed))
            with numpy_seeded_from_torch():
                yield

    def _block_forward(self, block: nf.flows.Residual, h: Tensor) -> tuple[Tensor, Tensor]:
        """One block data -> latent: normflows' ``Residual.inverse`` (``y = x + g(x)`` and its log-det estimate),
        its training-mode Neumann surrogate given the estimate's value (``training_value="estimate"``).
        ``h``: (B, *inner_shape) -> (``y``, ``ladj``: (B,))."""
        rb = block.iresblock
        if self.training and rb.neumann_grad and not rb.brute_force and self.training_value == "estimate":
            with replayed_rng(h.device), torch.no_grad():  # the same probe and count as the call below
                rb.neumann_grad = rb.grad_in_forward = False
                try:
                    _, neg = rb.forward(h.detach(), 0)  # the roulette series itself: logpx - logdet
                finally:
                    rb.neumann_grad = rb.grad_in_forward = True
            value = -neg.reshape(-1).detach()
            y, surrogate = block.inverse(h)
            surrogate = as_ladj(surrogate, h)
            return y, value.to(surrogate.dtype) + (surrogate - surrogate.detach())
        y, ladj = block.inverse(h)
        return y, as_ladj(ladj, h)

    def _walk(self, x: Tensor, with_logdet: bool) -> tuple[Tensor, Tensor | None]:
        """``x``: (B, *shape) -> (``z``: (B, *shape), ``ladj``: (B,) or None)."""
        h = x
        if self.squeeze is not None:
            h, _ = self.squeeze.inverse(h)
        ladj = x.new_zeros(x.shape[0]) if with_logdet else None
        for i, (norm, block) in enumerate(zip(self.norms, self.blocks, strict=True)):
            if isinstance(norm, nf.flows.ActNorm):
                h, l_norm = norm.inverse(h)
                ladj = None if ladj is None else ladj + as_ladj(l_norm, x)
            elif i == 0 and h is x:
                h = x.view_as(x)  # normflows calls requires_grad_(True) on a block's input: not on the caller's
            if ladj is None:
                rb: Any = block.iresblock
                h = rb.forward(h)  # x + g(x), no log-det
            else:
                h, l_block = self._block_forward(block, h)
                ladj = ladj + l_block
        if self.squeeze is not None:
            h, _ = self.squeeze.forward(h)
        return h, ladj

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``x``: (B, *shape) -> ``z``: (B, *shape), ``ladj``: (B,), normflows' estimate (the value of the roulette
        series in training mode with ``training_value="estimate"``); ``probes = P`` runs P replicas."""
        p = self.settings.probes
        with self._draws(x):
            if p == 1:
                z, ladj = self._walk(x, with_logdet=True)
            else:
                z_rep, ladj_rep = self._walk(x.repeat(p, *([1] * (x.dim() - 1))), with_logdet=True)
                assert ladj_rep is not None
                z, ladj = z_rep[: x.shape[0]], ladj_rep.reshape(p, x.shape[0]).mean(dim=0)
        assert ladj is not None
        return z, ladj

    def encode(self, x: Tensor) -> Tensor:
        """``z`` alone: ``x + g(x)`` per block (``iResBlock.forward`` without ``logpx``). ``x``: (B, *shape) ->
        (B, *shape)."""
        return self._walk(x, with_logdet=False)[0]

    def exact_logdet(self, x: Tensor) -> Tensor:
        """Exact ``log|det dz/dx|`` from the autograd Jacobian of :meth:`encode` (no estimator runs), one forward and
        one backward pass over B x D replicas (examples are independent). ``x``: (B, *shape) -> (B,), detached."""
        from models.jacobian import jacobian_by_replicas

        return torch.linalg.slogdet(jacobian_by_replicas(self.encode, x)[1])[1]

    def data_init(self, x: Tensor) -> None:
        """normflows' own ActNorm initialisation, block by block, on ``x``: (B, *shape) (B >= 2)."""
        arm_actnorms(self)
        with torch.no_grad():
            self._walk(x, with_logdet=False)

    def inverse(self, z: Tensor) -> Tensor:
        """``z``: (B, *shape) -> ``x``: (B, *shape): normflows' ``iResBlock.inverse`` per block (last first), each
        ActNorm's sampling direction between them. Sets ``last_inverse``: ``per_block`` evaluations of ``g`` per
        solve (= fixed-point steps), ``residual`` the largest last step ``max |x_k - x_{k-1}|``, ``converged``
        False where a solve hit normflows' cap."""
        info = InverseInfo(iterations=0, residual=0.0, converged=True)
        with torch.no_grad():
            h = z
            if self.squeeze is not None:
                h, _ = self.squeeze.inverse(h)
            for norm, block in zip(reversed(self.norms), reversed(self.blocks), strict=True):
                h, calls, step = self._solve(block, h)
                info.per_block.append(calls)
                info.iterations = max(info.iterations, calls)
                info.residual = max(info.residual, step) if math.isfinite(step) else math.nan
                info.converged = info.converged and calls < _CAPPED_CALLS and math.isfinite(step)
                if isinstance(norm, nf.flows.ActNorm):
                    h, _ = norm.forward(h)
            if self.squeeze is not None:
                h, _ = self.squeeze.forward(h)
        self.last_inverse = info
        return h

    @staticmethod
    def _solve(block: nf.flows.Residual, y: Tensor) -> tuple[Tensor, int, float]:
        """normflows' fixed-point inverse of one block, watched: (``x``, evaluations of g, last step max-abs)."""
        outputs: list[Tensor] = []

        def hook(_module: nn.Module, _inputs: tuple[Tensor, ...], out: Tensor) -> None:
            outputs.append(out)
            if len(outputs) > 2:
                del outputs[0]

        calls = [0]

        def count(_module: nn.Module, _inputs: tuple[Tensor, ...]) -> None:
            calls[0] += 1

        handles = [block.iresblock.nnet.register_forward_hook(hook),
                   block.iresblock.nnet.register_forward_pre_hook(count)]
        try:
            x = block.iresblock.inverse(y)
        finally:
            for handle in handles:
                handle.remove()
        # x_k = y - g(x_{k-1}) with x_0 = y, so x_k - x_{k-1} = g(x_{k-2}) - g(x_{k-1}) (g(x_{-1}) = 0)
        last = outputs[-1] if len(outputs) == 1 else outputs[-1] - outputs[-2]
        return x, calls[0], float(last.abs().max())

    def inverse_settings(self) -> None:
        """None: normflows' ``iResBlock.inverse`` takes no tolerance, cap or solver (see the defect above)."""
        return None

    def known_defects(self) -> dict[str, str]:
        return {
            "roundtrip": (
                "normflows 1.7.3 iResBlock.inverse stops at its fixed rule, a step below ~sqrt(1e-5 (1 + |y|)): the "
                "float64 round trip misses roundtrip_tol 1e-7 already at initialisation (5.0e-06 on (4,), 9.4e-07 on "
                "(1, 4, 4), 2 iterations per block); after 5 s of training on moons the float32 reconstruction error "
                "is 3.4e-04 (3-5 iterations per block, last step 3.3e-03)"
            ),
            "gradients": (
                "with reduce_memory=True (neumann_grad) normflows' MemoryEfficientLogDetEstimator.backward scales its "
                "saved tensors in place (grad_x.mul_(dL)), so a training-mode forward can be backpropagated once: "
                "a second backward (each row of a Jacobian) raises RuntimeError, and the check's exact log-det "
                "gradient through the training-mode forward cannot be taken"
            ),
            "settings": (
                "normflows 1.7.3 iResBlock.inverse (the public inverse) takes no settings: fixed-point iteration "
                "until max (x_{k+1} - x_k)^2 / (1e-5 + 1e-5 |y|) < 1 (a step below ~3.2e-3, not 1e-5) or 1000 "
                "iterations, then it returns silently; inverse_settings() is None"
            ),
        }


# ------------------------------------------------------------------------------------------------ Glow
class GlowNormflows(InvertibleModel):
    """Glow (Kingma & Dhariwal, "Glow: Generative Flow with Invertible 1x1 Convolutions", NeurIPS 2018) from
    normflows' ``GlowBlock`` and ``MultiscaleFlow``.

    ``x``: (B, *shape) -> ``z``: (B, *shape), ``ladj``: (B,), exact. A flow step in the data -> latent direction is
    normflows' ``ActNorm`` (data-initialised in :meth:`data_init`), a learned invertible linear map in Glow's LU
    parametrisation ``W = P L (U + diag(sign(s) exp(log|s|)))`` (``P`` and the signs fixed, ``L``, ``U``,
    ``log|s|`` learned, ``W`` starting as a random rotation), and an affine coupling ``x_b -> (x_b - t(x_a))
    sigmoid(h(x_a) + 2)`` on the channel halves, its network's last layer zero-initialised (each step starts as
    ActNorm and a rotation).

    - Images ``(C, H, W)``: ``levels`` = L scales of a normflows ``MultiscaleFlow``: at each scale a ``Squeeze``
      ((C', H', W') -> (4C', H'/2, W'/2)), ``depth`` ``GlowBlock`` s (``Invertible1x1Conv(use_lu=True)``, the
      coupling's network Conv3x3 -> ReLU -> Conv1x1 -> ReLU -> Conv3x3 of ``hidden`` channels), then half the
      channels factored out (``Merge``); H and W must be divisible by ``2**L``. ``z`` is the concatenation of the
      flattened per-scale latents, coarsest scale first, reshaped to x's shape (a fixed permutation: log-det 0).
    - Vectors ``(D,)``, D >= 2: ``depth`` steps of ``ActNorm``, ``InvertibleAffine(use_lu=True)`` (normflows'
      one-dimensional version of the 1x1 convolution: the same LU parametrisation on D features) and
      ``AffineCouplingBlock`` with normflows' ``MLP`` (two hidden layers of ``hidden`` ReLU units, the last layer
      zero-initialised: the analogue of GlowBlock's 3-1-3 convolutions), walked by a one-scale ``MultiscaleFlow``.

    Differences from the paper: the base is the contract's standard normal at every scale, where Glow learns the
    prior of each factored-out half from the remaining half (``split2d``) and normflows' example learns an
    unconditional Gaussian per scale; Glow's networks have 512 channels and ActNorm inside (normflows'
    ``net_actnorm``, off by default as here), K = 32 steps, L = 3 scales; the coupling's scale is
    ``sigmoid(h + 2)`` with no ``+ eps``, so it can only contract (the ActNorms expand). ``MultiscaleFlow`` is used
    for vectors too because ``NormalizingFlow.inverse_and_log_det`` accumulates its log-det in float32 (the adapter
    uses its ``inverse_and_log_det`` / ``forward_and_log_det``: its ``log_prob`` starts the sum from a python 0 and
    fails on vectors, whose first log-det, ActNorm's, is a 0-d tensor).

    Args:
        shape: (D,) with D >= 2, or (C, H, W) with H, W divisible by ``2**levels``.
        depth: flow steps (per scale for images).
        hidden: hidden channels / units of every coupling network.
        levels: scales L of the multi-scale architecture (images only).
    """

    family = "glow"
    backend = "normflows"
    width_hparam = "hidden"
    capabilities = Capabilities(density=True, logdet="exact", inverse="analytic", inputs=("vector", "image"))
    roundtrip_tol: ClassVar[float] = 1e-10
    logdet_tol: ClassVar[float] = 1e-8

    def __init__(self, shape: Sequence[int], num_classes: int | None = None, depth: int = 4, hidden: int = 64,
                 levels: int = 2) -> None:
        super().__init__(shape, num_classes, depth=depth, hidden=hidden, levels=levels)
        if depth < 1 or hidden < 1 or levels < 1:
            raise ValueError("depth, hidden and levels must be >= 1")
        flows: list[list[nn.Module]] = []
        merges: list[nn.Module] = []
        self.latent_shapes: list[tuple[int, ...]] = []
        if self.input_kind == "image":
            _check_image(self.shape, levels)
            c, h, w = self.shape
            for i in range(levels):
                channels = c * 2 ** (levels + 1 - i)
                flows.append([nf.flows.GlowBlock(channels, hidden, scale=True, scale_map="sigmoid",
                                                 split_mode="channel", init_zeros=True, use_lu=True)
                              for _ in range(depth)] + [nf.flows.Squeeze()])
                if i > 0:
                    merges.append(nf.flows.Merge())
                    k = levels - i
                    self.latent_shapes.append((c * 2**k, h // 2**k, w // 2**k))
                else:
                    self.latent_shapes.append((channels, h // 2**levels, w // 2**levels))
        else:
            d = self.shape[0]
            if d < 2:
                raise ValueError(f"coupling flows need D >= 2, got shape {self.shape}")
            steps: list[nn.Module] = []
            for _ in range(depth):  # normflows' order is latent -> data: coupling, mixing, ActNorm (as GlowBlock)
                net = nf.nets.MLP([(d + 1) // 2, hidden, hidden, 2 * (d // 2)], init_zeros=True)
                steps += [nf.flows.AffineCouplingBlock(net, scale=True, scale_map="sigmoid", split_mode="channel"),
                          nf.flows.InvertibleAffine(d, use_lu=True), nf.flows.ActNorm((d,))]
            flows.append(steps)
            self.latent_shapes.append((d,))
        assert sum(math.prod(s) for s in self.latent_shapes) == self.dim
        bases = [nf.distributions.DiagGaussian(s, trainable=False) for s in self.latent_shapes]  # N(0, I)
        self.flow = nf.MultiscaleFlow(bases, flows, merges, class_cond=False)
        mark_actnorms_initialised(self)

    def _pack(self, zs: list[Tensor]) -> Tensor:
        """Per-scale latents (coarsest first) -> (B, *shape)."""
        return torch.cat([z.reshape(z.shape[0], -1) for z in zs], dim=1).reshape(zs[0].shape[0], *self.shape)

    def _unpack(self, z: Tensor) -> list[Tensor]:
        """(B, *shape) -> per-scale latents (coarsest first)."""
        flat = z.reshape(z.shape[0], -1)
        sizes = [math.prod(s) for s in self.latent_shapes]
        return [part.reshape(z.shape[0], *s) for part, s in zip(flat.split(sizes, dim=1), self.latent_shapes,
                                                                   strict=True)]

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``x``: (B, *shape) -> ``z``: (B, *shape), ``ladj``: (B,) by ``MultiscaleFlow.inverse_and_log_det``."""
        zs, ladj = self.flow.inverse_and_log_det(x)
        return self._pack(zs), as_ladj(ladj, x)

    def inverse(self, z: Tensor) -> Tensor:
        """``z``: (B, *shape) -> ``x``: (B, *shape) by ``MultiscaleFlow.forward_and_log_det`` (log-det dropped)."""
        x, _ = self.flow.forward_and_log_det(self._unpack(z))
        return x

    def data_init(self, x: Tensor) -> None:
        """normflows' own ActNorm initialisation, step by step, on ``x``: (B, *shape) (B >= 2)."""
        arm_actnorms(self)
        with torch.no_grad():
            self.flow.inverse_and_log_det(x)
