"""The training loss compiled with ``torch.compile``, falling back to eager where a model does not allow it.

A training task's ``compile`` option (:data:`CompileMode`) asks :func:`bench.tasks.training._fit` to run the
model's loss, :func:`models.loss.training_loss` (forward, log-det and loss; its backward compiled with it by
AOTAutograd), through ``torch.compile``:

Each compiled training starts from ``torch._dynamo.reset()``: a worker that trains many models in one process
would otherwise reach dynamo's recompile limit (each model is a new closure of the same code) and run the rest
eagerly without saying so. A first step in which dynamo produced no graph at all counts as a fallback
(``fallback_error = "NoGraph"``).

- ``"off"``: eager, as without the option;
- ``"default"``: ``torch.compile(mode="default")`` (TorchInductor kernels);
- ``"reduce-overhead"``: ``torch.compile(mode="reduce-overhead")``, which on CUDA also captures the step's
  kernels in CUDA graphs (replayed with one launch); on the CPU it compiles as ``"default"`` does.

The optimiser step, gradient clipping, ``after_step``, ``data_init`` and a regulariser's penalty stay eager.
``fullgraph = True`` (option ``compile_fullgraph``) makes a graph break an error instead of a split graph.

Fallback: when the model declares it cannot be compiled (:attr:`models.base.InvertibleModel.compile_unsupported`)
or the first compiled step (compiling, the forward and the backward) raises, the step is run again eagerly from
the same random state (probes and dequantisation noise as eager training would draw) and the rest of training
is eager. :class:`CompileRecord` says what happened: the mode requested, the mode used, and for a fallback the
exception type and the first line of its message. The first compiled step's wall time (tracing and compiling
included) is ``compile_seconds``; the training loop keeps it off the training clock, so steps/s and the time
budget count compiled steps only, and the cost of compiling is reported beside them.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor

from bench.options import opt
from models.base import InvertibleModel
from models.loss import Objective, training_loss

CompileMode = Literal["off", "default", "reduce-overhead"]
#: The modes of the ``compile`` option, in the order the options table shows them.
COMPILE_MODES: tuple[CompileMode, ...] = ("off", "default", "reduce-overhead")

#: The metadata of a training task's ``compile`` and ``compile_fullgraph`` options (likelihood, classification).
COMPILE_OPT = opt("the training loss through torch.compile (reduce-overhead: with CUDA graphs on CUDA); eager where "
                  "the model cannot be compiled, recorded in train_time's extra.compile")
COMPILE_FULLGRAPH_OPT = opt("with compile: a graph break is a compile failure (eager fallback) instead of a split "
                            "graph")
#: ``loss(y, ldj, labels) -> scalar``: ``y`` (B, *shape), ``ldj`` (B,), ``labels`` (B,) or None.
LossFn = Callable[[Tensor, Tensor, Tensor | None], Tensor]


@dataclass
class CompileRecord:
    """How a training run's loss was computed.

    Attributes:
        requested: the ``compile`` option (``"off"``, ``"default"`` or ``"reduce-overhead"``).
        used: the mode the steps ran with: ``requested``, or ``"off"`` after a fallback.
        fullgraph: whether a graph break was an error (``compile_fullgraph``).
        cuda_graphs: ``reduce-overhead`` on a CUDA device, where TorchInductor captures CUDA graphs; it skips
            them (with a warning, not recorded here) for graphs that mutate their inputs, e.g. buffers a forward
            updates in training mode.
        fallback_error: the exception type of a fallback (``"declared"`` when the model declares it), else ``""``.
        fallback_reason: the first line of the exception's message (or the model's declaration), else ``""``.
        compile_seconds: wall time of the first compiled step (tracing, compiling and the step itself; a failed
            attempt included), kept off the training clock; 0 when nothing was compiled. Later steps that recompile
            or, under ``reduce-overhead``, record their CUDA graphs (the second and third calls) stay on the clock.
    """

    requested: CompileMode = "off"
    used: CompileMode = "off"
    fullgraph: bool = False
    cuda_graphs: bool = False
    fallback_error: str = ""
    fallback_reason: str = ""
    compile_seconds: float = 0.0

    @property
    def fell_back(self) -> bool:
        """Whether compiling was asked for and the steps ran eagerly."""
        return self.requested != "off" and self.used == "off"


def first_line(exc: BaseException) -> str:
    """The first non-empty line of an exception's message (its type name if the message is empty)."""
    for line in str(exc).splitlines():
        if line.strip():
            return line.strip()
    return type(exc).__name__


def model_loss(model: InvertibleModel, objective: Objective) -> LossFn:
    """The eager loss of ``objective`` for ``model`` (:func:`models.loss.training_loss`) as a function of tensors."""

    def loss(y: Tensor, ldj: Tensor, labels: Tensor | None) -> Tensor:
        if objective == "likelihood":
            return training_loss(model, y, objective="likelihood", ldj=ldj)
        return training_loss(model, y, labels, objective="classification")

    return loss


def compiled(fn: LossFn, mode: CompileMode, fullgraph: bool = False) -> LossFn:
    """``torch.compile(fn, mode=mode, fullgraph=fullgraph)``; ``fn`` itself for ``"off"``. Compiling is lazy: it
    happens on the first call."""
    if mode == "off":
        return fn
    out: LossFn = torch.compile(fn, mode=mode, fullgraph=fullgraph)
    return out


def _graphs_compiled() -> int:
    """The number of graphs dynamo has compiled in this process (its ``unique_graphs`` counter)."""
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


def _rng_state(device: torch.device) -> tuple[Tensor, Tensor | None]:
    cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    return torch.random.get_rng_state(), cuda


def _set_rng_state(device: torch.device, state: tuple[Tensor, Tensor | None]) -> None:
    torch.random.set_rng_state(state[0])
    if state[1] is not None:
        torch.cuda.set_rng_state(state[1], device)


class CompiledStep:
    """The loss and its backward for one training step, compiled as :class:`CompileRecord` says.

    ``step(y, ldj, labels, extra)`` returns the loss (0-dim, detached from nothing: the graph is already
    backpropagated) after ``loss.backward()``; ``extra()`` (the regulariser's penalty on the steps it applies to,
    or None) is added eagerly. Gradients must be zeroed by the caller before each step.
    """

    def __init__(self, model: InvertibleModel, objective: Objective, mode: CompileMode, device: torch.device,
                 fullgraph: bool = False) -> None:
        self.model = model
        self.eager = model_loss(model, objective)
        self.record = CompileRecord(requested=mode, used=mode, fullgraph=fullgraph,
                                    cuda_graphs=mode == "reduce-overhead" and device.type == "cuda")
        self.device = device
        self.pending = mode != "off"  # the first compiled step has not run yet
        self.fn = self.eager
        if mode != "off":
            why = type(model).compile_unsupported
            if why:
                self._fall_back("declared", why)
            else:
                torch._dynamo.reset()
                self.fn = compiled(self.eager, mode, fullgraph)

    def _fall_back(self, error: str, reason: str) -> None:
        self.record.used, self.record.cuda_graphs = "off", False
        self.record.fallback_error, self.record.fallback_reason = error, reason
        self.fn, self.pending = self.eager, False

    def _run(self, fn: LossFn, y: Tensor, ldj: Tensor, labels: Tensor | None,
             extra: Callable[[], Tensor | None]) -> Tensor:
        loss = fn(y, ldj, labels)
        penalty = extra()
        if penalty is not None:
            loss = loss + penalty
        if torch.isfinite(loss.detach()):
            loss.backward()
        return loss.detach()

    def step(self, y: Tensor, ldj: Tensor, labels: Tensor | None, extra: Callable[[], Tensor | None]) -> Tensor:
        """The step's loss (backpropagated where finite). The first compiled step is timed into
        ``record.compile_seconds`` and, when it raises, run again eagerly from the same random state."""
        if not self.pending:
            return self._run(self.fn, y, ldj, labels, extra)
        self.pending = False
        state = _rng_state(self.device)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        graphs = _graphs_compiled()
        t0 = time.perf_counter()
        try:
            loss = self._run(self.fn, y, ldj, labels, extra)
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
        except Exception as exc:  # any failure of tracing, compiling or the compiled kernels: run eagerly
            self.record.compile_seconds = time.perf_counter() - t0
            self._fall_back(type(exc).__name__, first_line(exc))
            for p in self.model.parameters():
                p.grad = None
            _set_rng_state(self.device, state)
            return self._run(self.eager, y, ldj, labels, extra)
        self.record.compile_seconds = time.perf_counter() - t0
        if _graphs_compiled() == graphs:  # every frame fell back to eager inside dynamo: say so, run eagerly on
            self._fall_back("NoGraph", "dynamo compiled no graph of the loss (every frame ran eagerly)")
        return loss

    @property
    def timing_first_step(self) -> bool:
        """Whether the next :meth:`step` is the first compiled one (its time is ``compile_seconds``)."""
        return self.pending


def record_from(data: Any) -> CompileRecord | None:
    """A :class:`CompileRecord` from its ``dataclasses.asdict`` form (as stored in a checkpoint), or None."""
    return CompileRecord(**data) if isinstance(data, dict) else None
