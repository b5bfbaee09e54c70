"""An adapter over memcnn 1.5.2: a RevNet of memcnn ``AdditiveCoupling`` blocks, each wrapped in memcnn's
``InvertibleModuleWrapper`` for memory-saving backprop, as a classifier and a NICE-like density model.

Gomez et al., "The Reversible Residual Network: Backpropagation Without Storing Activations", NeurIPS 2017.
memcnn's ``AdditiveCoupling(Fm, Gm)`` computes ``y1 = x1 + Fm(x2)``, ``y2 = x2 + Gm(y1)`` (eq. 1-2 of the paper;
``log|det J| = 0``) and ``InvertibleModuleWrapper(fn, keep_input=False)`` runs ``fn`` without a graph, frees its
input's storage and, in backward, rebuilds the input with ``fn.inverse`` before recomputing ``fn`` with a graph.
The architecture is the one of ``revnet-native`` (:class:`models.revnet.RevNetNative`); see
:class:`RevNetMemcnn` for what differs.

Quirks of memcnn normalised here (library behaviour, not defects):

- the wrapper frees its input's storage (``storage().resize_(0)``) on *every* call, also under ``torch.no_grad()``
  and in ``eval()`` mode: called on the caller's tensor it leaves that tensor with no data (measured: 0 bytes of
  storage after one ``no_grad`` call). The adapter runs the wrappers only where memory saving is meant to act
  (training mode, a graph being built, memory saving on) and hands the first one a copy of ``x``; everywhere else
  it calls the couplings themselves (ordinary autograd, which also supports double backward and the JVPs the
  stability task takes);
- ``InvertibleModuleWrapper.inverse`` frees *its* input the same way, so the contract's ``inverse`` calls the
  couplings' own ``inverse`` (analytic, no recomputation);
- the wrapper keeps what backward needs (its output) as an attribute of its autograd context, not through
  ``save_for_backward``, so ``bench.memory.saved_tensor_bytes`` (the cost task's CPU figure) does not see it. The
  squeezes at the start of image stages and the final un-squeeze back to x's layout are wrapped too (permutations
  with exact inverses), so the chain frees every intermediate and keeps only its last output, which the scaling
  (``forward``) or the head (``logits``) saves and the figure counts;
- the wrapper detaches its output in place (``detach_``), which PyTorch refuses on a view, and frees its input's
  storage, which a view shares: the squeezes here return tensors with their own storage (:class:`FreshSqueeze`).

Known defect of memcnn, measured here, not patched (memcnn issue 12, "set Fm to eval() mode during reconstruction in
backward?"): with ``BatchNorm`` in the coupling functions (``norm="batch"``) and memory saving on, every training
step runs each ``BatchNorm`` three times in training mode (the forward, the reconstruction of the input in backward,
and the recomputation with a graph), so its running statistics are updated three times per step instead of once:
``num_batches_tracked`` counts 3 per step and, with PyTorch's momentum ``m = 0.1``, one step moves the running mean
and variance ``(1 - (1 - m)^3) / m = 2.71`` times as far as ordinary backprop does: a relative difference of 1.71
(measured 1.710000 by :func:`batchnorm_defect` on 9 models, shapes (6,), (5,), (1, 8, 8), depth 4, hidden 16,
batch 32, float32 and float64); ``keep_input=True`` (no reconstruction) still recomputes, so it updates twice
(``(1 - (1 - m)^2) / m = 1.9``). The parameter gradients are *not* affected: in training mode BatchNorm normalises
with the current batch's statistics, which the reconstruction sees again (up to round-off), so the memory-saving
gradient matches ordinary backprop to round-off (relative error 1.3e-7 to 2.8e-7 in float32, 2.1e-16 to 4.0e-16
in float64 with BatchNorm; 4.0e-8 to 1.0e-7 and 7.2e-17 to 1.8e-16 without, same 9 models). What differs is the
model in ``eval()`` mode, which normalises with the running statistics: after that one step its latents differ from
the ordinary-backprop twin's by 2.0 % to 5.4 % (relative norm), and test accuracy and test likelihood are measured
on statistics averaged with an effective momentum of 0.271. There is no BatchNorm configuration
that avoids it without patching memcnn (``track_running_stats=False`` makes ``eval()`` outputs depend on the rest
of the batch, so the map is no longer a function of one example, and a momentum rescaled to undo the triple update
would be a patch of the library's behaviour). The default, ``norm="none"``, has no BatchNorm in the coupling
functions (as ``revnet-native``, whose docstring gives the same reason) and so has no such defect.
"""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from models.base import Capabilities, InvertibleModel
from models.loss import Objective, training_loss
from models.reversible import Squeeze, squeeze2d, unsqueeze2d
from models.revnet import ConvResidual, MLPResidual, _blocks_per_stage

with warnings.catch_warnings():  # memcnn decorates with torch.cuda.amp.custom_fwd/bwd, deprecated in torch 2.4+
    warnings.simplefilter("ignore", FutureWarning)
    import memcnn
# memcnn frees storages through tensor.storage(), whose TypedStorage torch 2 deprecates (once per process): its
# warning, not the user's, so it is silenced for memcnn's module only
warnings.filterwarnings("ignore", message="TypedStorage is deprecated", category=UserWarning, module=r"memcnn\.")

HeadKind = Literal["linear", "pool"]
NormKind = Literal["none", "batch"]


class PreActMLP(nn.Sequential):
    """The paper's pre-activation residual function for vectors, ``BN -> ReLU -> Linear -> BN -> ReLU -> Linear``:
    (B, n_in) -> (B, n_out) (Gomez et al. 2017, sec. 5, with fully connected layers in place of convolutions)."""

    def __init__(self, n_in: int, n_out: int, hidden: int) -> None:
        super().__init__(nn.BatchNorm1d(n_in), nn.ReLU(), nn.Linear(n_in, hidden),
                         nn.BatchNorm1d(hidden), nn.ReLU(), nn.Linear(hidden, n_out))


class PreActConv(nn.Sequential):
    """The paper's pre-activation residual function, ``BN -> ReLU -> Conv3x3 -> BN -> ReLU -> Conv3x3``:
    (B, c_in, H, W) -> (B, c_out, H, W) (Gomez et al. 2017, sec. 5)."""

    def __init__(self, c_in: int, c_out: int, hidden: int) -> None:
        super().__init__(nn.BatchNorm2d(c_in), nn.ReLU(), nn.Conv2d(c_in, hidden, 3, padding=1),
                         nn.BatchNorm2d(hidden), nn.ReLU(), nn.Conv2d(hidden, c_out, 3, padding=1))


class FreshSqueeze(Squeeze):
    """The invertible 2x2 squeeze (B, C, H, W) -> (B, 4C, H/2, W/2), both ways returning a tensor with its own
    storage. memcnn's wrapper detaches its output in place (``detach_``, which PyTorch refuses on a view) and frees
    its input's storage, which a view of the input would share; :func:`models.reversible.squeeze2d` returns a
    view where the permutation only moves size-1 dimensions (e.g. (B, 4, 2, 2) -> (B, 16, 1, 1))."""

    def forward(self, x: Tensor) -> Tensor:
        return squeeze2d(x).clone(memory_format=torch.contiguous_format)

    def inverse(self, y: Tensor) -> Tensor:
        return unsqueeze2d(y).clone(memory_format=torch.contiguous_format)


class FreshUnsqueeze(nn.Module):
    """``times`` depth-to-space steps, the trunk's layout back to the input's: (B, 4^k C, H, W) -> (B, C, 2^k H,
    2^k W) with ``k = times``, inverse the reverse; both return a tensor with its own storage (see
    :class:`FreshSqueeze`)."""

    def __init__(self, times: int) -> None:
        super().__init__()
        self.times = times

    def forward(self, h: Tensor) -> Tensor:
        for _ in range(self.times):
            h = unsqueeze2d(h)
        return h.clone(memory_format=torch.contiguous_format)

    def inverse(self, y: Tensor) -> Tensor:
        for _ in range(self.times):
            y = squeeze2d(y)
        return y.clone(memory_format=torch.contiguous_format)


def _residual(kind: Literal["mlp", "conv"], norm: NormKind, n_in: int, n_out: int, hidden: int) -> nn.Module:
    if kind == "mlp":
        return PreActMLP(n_in, n_out, hidden) if norm == "batch" else MLPResidual(n_in, n_out, hidden)
    return PreActConv(n_in, n_out, hidden) if norm == "batch" else ConvResidual(n_in, n_out, hidden)


def _coupling(n: int, kind: Literal["mlp", "conv"], norm: NormKind, hidden: int) -> nn.Module:
    """memcnn ``AdditiveCoupling`` over ``n`` features/channels (dim 1). memcnn splits with ``torch.chunk``:
    ``x1`` gets ``n - n // 2``, ``x2`` gets ``n // 2``; ``Fm``: (B, n // 2, ...) -> (B, n - n // 2, ...) and
    ``Gm`` the reverse."""
    if n < 2:
        raise ValueError(f"a coupling block needs at least 2 features/channels to split, got {n}")
    n1, n2 = n - n // 2, n // 2
    return memcnn.AdditiveCoupling(Fm=_residual(kind, norm, n2, n1, hidden), Gm=_residual(kind, norm, n1, n2, hidden))


class RevNetMemcnn(InvertibleModel):
    """A RevNet of memcnn ``AdditiveCoupling`` blocks with memcnn's memory-saving backprop; a classifier and a flow.

    The same model as ``revnet-native`` (:class:`models.revnet.RevNetNative`), with the blocks and the
    memory-saving mechanism taken from memcnn 1.5.2: data to latent ``z = exp(s) * T(x)`` with ``T`` the trunk of
    ``depth`` additive couplings (images: one invertible 2x2 squeeze at the start of each stage, ``T(x)``
    un-squeezed back to x's shape) and ``s`` (*shape) NICE's learned diagonal scaling (Dinh, Krueger & Bengio,
    "NICE", 2015, sec. 3.3), implemented in this adapter (memcnn has no density layer). The trunk is
    volume-preserving (memcnn's couplings have ``log|det J| = 0``; memcnn computes no log-det, the adapter supplies
    the analytic zero), so ``ladj = sum(s)``, and with ``scaling=False`` ``ladj = 0`` exactly and the NLL can never
    go below ``(D/2) ln(2 pi)`` (:meth:`nll_floor`). ``data_init`` sets ``s = -log std`` of ``T(x)`` per element.
    Classifier: ``logits(x) = W vec(T(x)) + b`` (``head="linear"``) or ``W mean_{HW}(T(x)) + b`` (``head="pool"``)
    on the trunk's internal layout; the logits do not read the scaling.

    Differences from ``revnet-native``, all from memcnn:

    - memcnn splits a block's input with ``torch.chunk``: for an odd number ``n`` of features/channels the *first*
      half gets the extra one (``n - n // 2``; ``revnet-native`` gives it to the second), so ``F`` maps ``n // 2``
      to ``n - n // 2`` features and ``G`` the reverse. Even ``n`` (every image stage after a squeeze, even D):
      the same split, the same parameter count and the same functions;
    - memory saving is memcnn's per-block checkpoint (``InvertibleModuleWrapper``: reconstruct the input with
      ``fn.inverse``, then recompute ``fn`` with a graph: two evaluations of ``F`` and ``G`` per block in backward)
      where ``revnet-native`` runs the paper's Algorithm 1 (one evaluation of each, which both inverts and
      differentiates). memcnn's backward refuses ``torch.autograd.grad`` (it checks
      ``torch.autograd._is_checkpoint_valid()``): with memory saving on, a training-mode graph is differentiated
      with ``.backward()`` only (``revnet-native``'s accepts first-order ``autograd.grad`` too); the
      Jacobians the suite takes run in ``eval()`` mode or with memory saving off, as ordinary autograd;
    - ``norm="batch"`` gives the coupling functions the paper's pre-activation form with BatchNorm
      (``BN -> ReLU -> Linear/Conv -> BN -> ReLU -> Linear/Conv``), which exposes memcnn's running-statistics defect
      (module docstring; :meth:`known_defects`). In training mode the trunk then depends on the whole batch, so
      training-mode ``log_prob`` is not a per-example density; ``eval()`` mode (running statistics) is.

    Shapes: vectors (B, D) with D >= 2; images (B, C, H, W), squeezed at the start of each stage while H and W are
    even, needing at least 2 channels once squeezed.

    Args:
        shape: (D,) or (C, H, W).
        num_classes: classes of the head (default 10).
        depth: number of coupling blocks in the trunk (the cost task's memory-vs-depth curve varies it).
        hidden: hidden width (units of the MLP, channels of the conv) of every coupling function.
        stages: image stages (each starts with a squeeze); ignored for vectors.
        head: ``"linear"`` or ``"pool"`` (images).
        memory_saving: start with memcnn's memory-saving backprop on (see :meth:`set_memory_saving`).
        scaling: NICE's learned diagonal scaling of the latent. Off: a volume-preserving flow.
        norm: ``"none"`` (``Linear/Conv -> ReLU -> Linear/Conv``, as ``revnet-native``) or ``"batch"`` (the
            paper's BatchNorm functions; memcnn's running-statistics defect).
    """

    family = "revnet"
    backend = "memcnn"
    width_hparam = "hidden"
    # not volume-preserving as a class: only with scaling=False (nll_floor answers per instance)
    capabilities = Capabilities(density=True, logdet="exact", inverse="analytic", classifier=True,
                                memory_saving=True, inputs=("vector", "image"), volume_preserving=False)

    def __init__(self, shape: Sequence[int], num_classes: int | None = None, depth: int = 4, hidden: int = 64,
                 stages: int = 2, head: HeadKind = "linear", memory_saving: bool = True, scaling: bool = True,
                 norm: NormKind = "none") -> None:
        super().__init__(shape, num_classes, depth=depth, hidden=hidden, stages=stages, head=head,
                         memory_saving=memory_saving, scaling=scaling, norm=norm)
        if depth < 1 or hidden < 1 or stages < 1:
            raise ValueError(f"depth, hidden and stages must be >= 1, got {depth}, {hidden}, {stages}")
        if head not in ("linear", "pool"):
            raise ValueError(f"head must be 'linear' or 'pool', got {head!r}")
        if norm not in ("none", "batch"):
            raise ValueError(f"norm must be 'none' or 'batch', got {norm!r}")
        layers: list[nn.Module] = []
        self._squeezes = 0
        if self.input_kind == "vector":
            if head == "pool":
                raise ValueError("head='pool' needs image inputs")
            n = self.shape[0]
            layers = [_coupling(n, "mlp", norm, hidden) for _ in range(depth)]
            feature_shape: tuple[int, ...] = (n,)
        else:
            c, h, w = self.shape
            for count in _blocks_per_stage(depth, stages):
                if h % 2 == 0 and w % 2 == 0:
                    layers.append(FreshSqueeze())
                    self._squeezes += 1
                    c, h, w = 4 * c, h // 2, w // 2
                if c < 2:
                    raise ValueError(f"image shape {self.shape} cannot be split into two channel groups: "
                                     "it needs C >= 2 or even H and W for a squeeze")
                layers.extend(_coupling(c, "conv", norm, hidden) for _ in range(count))
            feature_shape = (c, h, w)
        self.feature_shape = feature_shape
        #: the trunk's layers (memcnn couplings and squeezes), run directly outside memory saving
        self.layers = nn.ModuleList(layers)
        #: the trunk's layout back to the input's (no parameters; the identity for vectors)
        self.unsqueeze = FreshUnsqueeze(self._squeezes)
        # memcnn's wrappers around the same modules (a plain list: the parameters are registered once, above)
        self._wrappers: list[nn.Module] = [memcnn.InvertibleModuleWrapper(fn=m, keep_input=False,
                                                                          keep_input_inverse=False)
                                           for m in [*layers, self.unsqueeze]]
        self._memory_saving = bool(memory_saving)
        n_classes = self.num_classes or 10
        n_in = feature_shape[0] if head == "pool" else math.prod(feature_shape)
        self.head = nn.Linear(n_in, n_classes)
        #: NICE's log-scales ``s`` (*shape), in the input layout; None without the scaling
        self.log_scale = nn.Parameter(torch.zeros(self.shape)) if scaling else None

    # ------------------------------------------------------------------------------------ the trunk
    def _saving_now(self, x: Tensor) -> bool:
        """Whether this call builds a graph that memcnn's memory saving should act on."""
        trunk_grad = any(p.requires_grad for p in self.layers.parameters())
        return self._memory_saving and self.training and torch.is_grad_enabled() and (x.requires_grad or trunk_grad)

    def _trunk(self, x: Tensor, input_layout: bool) -> Tensor:
        """``T(x)``: (B, *shape) -> (B, *shape) (``input_layout``) or (B, *feature_shape).

        With memory saving acting, every layer (and, for ``input_layout``, the final un-squeeze) runs in its memcnn
        wrapper: each frees its input's storage and rebuilds it in backward, so only the last output stays alive
        (the tensor the scaling or the head then saves). The first wrapper gets a copy of ``x``, never ``x``."""
        count = len(self.layers) + (1 if input_layout and self._squeezes else 0)
        if self._saving_now(x):
            h = x.clone()
            for wrapper in self._wrappers[:count]:
                h = wrapper(h)
            return h
        for layer in [*self.layers, self.unsqueeze][:count]:
            x = layer(x)
        return x

    def features(self, x: Tensor) -> Tensor:
        """The trunk's output ``T(x)`` in its own layout. ``x``: (B, *shape) -> (B, *feature_shape)."""
        return self._trunk(x, input_layout=False)

    # ------------------------------------------------------------------------------------ contract
    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``x``: (B, *shape) -> ``z = exp(s) * T(x)``: (B, *shape), ``ladj = sum(s)``: (B,) (zeros without the
        scaling: the trunk is volume-preserving)."""
        h = self._trunk(x, input_layout=True)
        if self.log_scale is None:
            return h, torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
        return h * self.log_scale.exp(), self.log_scale.sum().expand(x.shape[0])

    def inverse(self, z: Tensor) -> Tensor:
        """``z``: (B, *shape) -> ``x``: (B, *shape), analytic: the scaling undone, then each layer's own
        ``inverse`` in reverse (``x2 = y2 - Gm(y1)``, ``x1 = y1 - Fm(x2)`` for a coupling)."""
        if self.log_scale is not None:
            z = z * torch.exp(-self.log_scale)
        h = self.unsqueeze.inverse(z) if self._squeezes else z
        for layer in reversed(self.layers):
            h = layer.inverse(h)  # type: ignore[operator]
        return h

    def data_init(self, x: Tensor) -> None:
        """Set the log-scales to ``-log std`` of ``T(x)`` per element over the batch ``x``: (B, *shape), B >= 2
        (elements with std <= 1e-6 keep 0); nothing without the scaling."""
        if self.log_scale is None or x.shape[0] < 2:
            return
        with torch.no_grad():
            std = self._trunk(x, input_layout=True).std(dim=0)
            self.log_scale.copy_(torch.where(std > 1e-6, -torch.log(std.clamp_min(1e-6)), torch.zeros_like(std)))

    def nll_floor(self) -> float | None:
        """``(D/2) ln(2 pi)`` nats without the scaling (volume-preserving, see the base class); None with it."""
        return 0.5 * self.dim * math.log(2 * math.pi) if self.log_scale is None else None

    def logits(self, x: Tensor) -> Tensor:
        """``x``: (B, *shape) -> (B, num_classes)."""
        h = self.features(x)
        if self._hparams["head"] == "pool":
            return self.head(h.mean(dim=(2, 3)))
        return self.head(h.reshape(h.shape[0], -1))

    def set_memory_saving(self, enabled: bool) -> None:
        """On: in training mode with a graph being built, every layer runs inside memcnn's
        ``InvertibleModuleWrapper`` (``keep_input=False``): activation memory independent of depth, one
        reconstruction and one recomputation of every block in backward, first-order gradients only (memcnn
        refuses ``torch.autograd.grad``; use ``.backward()``). Off, or in ``eval()`` mode: ordinary autograd through
        the couplings (double backward and JVPs work)."""
        self._memory_saving = bool(enabled)
        self._hparams["memory_saving"] = bool(enabled)

    @property
    def memory_saving(self) -> bool:
        return self._memory_saving

    def known_defects(self) -> dict[str, str]:
        """``{"running_stats": ...}`` with ``norm="batch"`` (memcnn issue 12; measured by :func:`batchnorm_defect`,
        not by a conformance check of :mod:`models.testing`, which builds the default ``norm="none"``); none
        otherwise."""
        if self._hparams["norm"] != "batch":
            return {}
        return {"running_stats": (
            "memcnn 1.5.2 InvertibleModuleWrapper runs each BatchNorm of the coupling functions three times in "
            "training mode per memory-saving step (forward, reconstruction, recomputation): running statistics "
            "updated 3 times per step, each step moving them (1 - 0.9^3) / 0.1 = 2.71x as far as ordinary backprop "
            "(relative difference 1.71); gradients agree to round-off; eval-mode outputs differ")}


@dataclass(frozen=True)
class BatchNormDefect:
    """One training step of a model with BatchNorm, memory saving on vs off, from the same state (see
    :func:`batchnorm_defect`).

    Attributes:
        grad_rel_err: ``||g_saving - g_ordinary|| / ||g_ordinary||`` over every parameter's gradient.
        stat_rel_diff: ``||d_saving - d_ordinary|| / ||d_ordinary||``, ``d`` the change of every running mean and
            variance in the step (0 without the defect; ``(1 - (1 - m)^k) / m - 1`` for ``k`` training-mode passes
            over the same batch statistics at momentum ``m``).
        batches_tracked_saving: ``num_batches_tracked`` added by the step with memory saving (1 per BatchNorm
            without the defect), the maximum over BatchNorm layers.
        batches_tracked_ordinary: the same with ordinary backprop.
        eval_rel_diff: ``||z_saving - z_ordinary|| / ||z_ordinary||`` of the two models' ``eval()``-mode latents on
            the same batch after the step (same parameters up to the round-off of ``grad_rel_err``, different
            running statistics).
    """

    grad_rel_err: float
    stat_rel_diff: float
    batches_tracked_saving: int
    batches_tracked_ordinary: int
    eval_rel_diff: float


def _batchnorms(model: nn.Module) -> list[nn.BatchNorm1d | nn.BatchNorm2d]:
    return [m for m in model.modules() if isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d)]


def _stats(model: nn.Module) -> Tensor:
    parts = [t.detach().reshape(-1).double() for bn in _batchnorms(model)
             for t in (bn.running_mean, bn.running_var) if t is not None]
    return torch.cat(parts)


def _tracked(model: nn.Module) -> int:
    counts = [int(bn.num_batches_tracked) for bn in _batchnorms(model) if bn.num_batches_tracked is not None]
    return max(counts) if counts else 0


def batchnorm_defect(model: RevNetMemcnn, x: Tensor, objective: Objective | None = None) -> BatchNormDefect:
    """Measure memcnn's running-statistics defect on two copies of ``model`` (left untouched): one training-mode
    forward and ``.backward()`` of :func:`models.loss.training_loss` on ``x``: (B, *shape), B >= 2, with memory
    saving on and off; no optimiser step (the parameters stay as they are). Raises ``ValueError`` for a model
    without BatchNorm (``norm="none"``: nothing to measure)."""
    if not _batchnorms(model):
        raise ValueError("the model has no BatchNorm layer (norm='none'): memcnn's running-statistics defect "
                         "cannot occur")
    results: dict[bool, tuple[Tensor, Tensor, int, RevNetMemcnn]] = {}
    for enabled in (True, False):
        twin = copy.deepcopy(model).train()
        twin.set_memory_saving(enabled)
        before, tracked = _stats(twin), _tracked(twin)
        twin.zero_grad(set_to_none=True)
        with torch.enable_grad():
            training_loss(twin, x, objective=objective).backward()
        grad = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1).double()
                          for p in twin.parameters()])
        results[enabled] = (grad, _stats(twin) - before, _tracked(twin) - tracked, twin)
    (g_on, d_on, t_on, m_on), (g_off, d_off, t_off, m_off) = results[True], results[False]
    with torch.no_grad():
        z_on, z_off = m_on.eval()(x)[0].double(), m_off.eval()(x)[0].double()
    return BatchNormDefect(
        grad_rel_err=float((g_on - g_off).norm() / g_off.norm()),
        stat_rel_diff=float((d_on - d_off).norm() / d_off.norm()),
        batches_tracked_saving=t_on, batches_tracked_ordinary=t_off,
        eval_rel_diff=float((z_on - z_off).norm() / z_off.norm()))
