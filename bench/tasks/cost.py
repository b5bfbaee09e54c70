"""The ``cost`` task: throughput in both directions and the memory of a training step.

- ``forward_throughput``, ``inverse_throughput``: examples per second on a test batch (option ``batch``,
  default 256), median over timed rounds (:func:`bench.timing.throughput`), the trained model; the forward
  is the full ``forward`` (z and log-det, what ``log_prob`` costs), under ``no_grad`` except for log-det
  estimators (autograd); the inverse under ``no_grad``. Absolute figures depend on the machine: compare
  them within one run record.
- ``train_memory_bytes``: memory of one training step's loss (:func:`models.loss.training_loss` for the
  option ``objective``: the mean NLL for density models, the cross-entropy of ``logits`` otherwise) in training
  mode: on the CPU the bytes of tensors saved for
  backward (``bench.memory.saved_tensor_bytes``, deterministic); on CUDA the peak allocation of forward
  plus backward above what was allocated before (``torch.cuda.max_memory_allocated``). Memory-saving
  models are measured with memory saving on; ``extra`` holds the ordinary-backprop figure beside it.
- ``params``: trainable parameters of the model (the capacity figure beside the costs).
- ``flops_forward``, ``flops_inverse``: FLOPs per example of one full forward (z and log-det, in the grad mode of
  ``forward_throughput``: an estimator's vector-Jacobian products are counted) and of one inverse (every
  iteration of a fixed-point inverse; ``extra["iterations"]``), on the same test batch, counted by
  :mod:`bench.flops` (``torch.utils.flop_counter.FlopCounterMode``). Matrix products and convolutions only:
  splines, activations, slogdet and solves count zero (``bench.flops.COUNTS``; ``extra["counter"]`` names the
  counter). Deterministic for a given model and
  batch, except for a Russian-roulette log-det, whose forward count is one draw of its random number of terms
  (``extra["estimator"]``).
- ``memory_depth_ratio`` (memory-saving models whose config has ``depth``): saved bytes at the largest
  depth over the smallest (option ``depths``, default 2, 4, 8; fresh ``ctx.make_model(depth=d)`` each,
  memory saving on), with the whole curve in both modes in ``extra``: activation memory independent of
  depth gives 1 (Gomez et al., "The Reversible Residual Network", NeurIPS 2017), ordinary backprop grows
  linearly.

The options are :class:`CostOptions`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor

from bench.flops import flop_extra, flops_per_example, trainable_parameters
from bench.options import Options, opt
from bench.tasks.base import Metric, MetricSpec, Task, TaskContext
from bench.tasks.measure import (
    GradMode,
    GradOption,
    eval_inputs,
    failed_metrics,
    grad_context,
    measured_model,
    options_of,
    reconstruction,
    resolve_grad_mode,
)
from bench.timing import throughput
from models.base import InvertibleModel
from models.loss import Objective, training_loss

FORWARD = MetricSpec("forward_throughput", "examples/s", "up", "examples per second of the full forward (z, log-det)")
INVERSE = MetricSpec("inverse_throughput", "examples/s", "up", "examples per second of the inverse")
MEMORY = MetricSpec("train_memory_bytes", "bytes", "down",
                    "memory of one training step (CPU: bytes saved for backward; CUDA: peak allocation)")
PARAMS = MetricSpec("params", "parameters", None, "trainable parameters of the model")
FLOPS_FORWARD = MetricSpec("flops_forward", "FLOPs/example", "down",
                           "FLOPs of one full forward (z, log-det) per example; matrix products and convolutions only")
FLOPS_INVERSE = MetricSpec("flops_inverse", "FLOPs/example", "down",
                           "FLOPs of one inverse per example (every iteration); matrix products and convolutions only")
DEPTH = MetricSpec("memory_depth_ratio", "ratio", "down",
                   "training-step memory at the largest depth over the smallest (memory-saving models)")
SPECS: tuple[MetricSpec, ...] = (FORWARD, INVERSE, MEMORY, PARAMS, FLOPS_FORWARD, FLOPS_INVERSE, DEPTH)


@dataclass(frozen=True)
class CostOptions(Options):
    """Options of the ``cost`` task (see the module docstring)."""

    batch: int = field(default=256, metadata=opt("test examples per timed call", min=1))
    train_batch: int | None = field(default=None, metadata=opt(
        "examples in the measured training step (none: the budget's batch size)", min=1))
    rounds: int = field(default=7, metadata=opt("timed rounds per direction", min=1))
    max_seconds: float = field(default=5.0, metadata=opt("time limit per direction, seconds", min=0.0,
                                                         min_exclusive=True))
    depths: tuple[int, ...] = field(default=(2, 4, 8), metadata=opt(
        "depths of the memory-against-depth curve (memory-saving models with a depth hyper-parameter)", min=1))
    grad: GradOption = field(default="auto", metadata=opt(
        "autograd mode of the timed calls (auto: grad only where the forward needs autograd for its log-det)"))
    objective: Objective | None = field(default=None, metadata=opt(
        "the objective the measured model is trained for and whose training step is measured (none: likelihood "
        "for density models)"))

    def __post_init__(self) -> None:
        if len(self.depths) < 2:
            raise ValueError(f"depths: give at least two depths, got {list(self.depths)}")


def step_memory(model: InvertibleModel, x: Tensor, y: Tensor | None, device: torch.device,
                objective: Objective | None = None) -> dict[str, Any]:
    """Memory of one training step of ``model`` on ``x`` (B, *shape), in training mode.

    Returns ``{"saved_tensor_bytes": int}`` and, on CUDA, ``"cuda_peak_bytes"`` (peak of forward + backward
    above the allocation before the step).
    """
    from bench.memory import cuda_peak_bytes, saved_tensor_bytes

    def loss() -> Tensor:
        return training_loss(model, x, y, objective=objective)

    def step() -> None:
        loss().backward()
        model.zero_grad(set_to_none=True)

    was_training = model.training
    model.train()
    try:
        with torch.enable_grad():
            out: dict[str, Any] = {"saved_tensor_bytes": int(saved_tensor_bytes(loss))}
            if device.type == "cuda":
                out["cuda_peak_bytes"] = int(cuda_peak_bytes(step, device))
    finally:
        model.train(was_training)
    return out


def _bytes(mem: dict[str, Any]) -> int:
    return int(mem.get("cuda_peak_bytes", mem["saved_tensor_bytes"]))


class CostTask(Task):
    """Throughput both ways, training-step memory and memory against depth (see module docstring)."""

    name: ClassVar[str] = "cost"
    Options = CostOptions
    requires_text: ClassVar[str] = "nothing beyond the contract (every model)"
    metric_specs: ClassVar[tuple[MetricSpec, ...]] = SPECS

    def run(self, ctx: TaskContext) -> list[Metric]:
        opts = options_of(ctx, CostOptions)
        model, result = measured_model(ctx, objective=opts.objective)
        caps = model.capabilities
        specs = SPECS if caps.memory_saving else tuple(s for s in SPECS if s is not DEPTH)
        if result.diverged:
            return failed_metrics(specs, "diverged", "training diverged")
        model.eval()
        mode = resolve_grad_mode(model, opts.grad, full_forward=True)
        inv_mode = resolve_grad_mode(model, opts.grad, full_forward=False)
        x = eval_inputs(ctx, opts.batch)
        n = int(x.shape[0])
        z, _, _ = reconstruction(model, x, inv_mode)

        def forward() -> None:
            with grad_context(mode):
                model(x)

        def inverse() -> None:
            with grad_context(inv_mode):
                model.inverse(z)

        fwd = throughput(forward, n, rounds=opts.rounds, device=ctx.device, max_seconds=opts.max_seconds)
        inv = throughput(inverse, n, rounds=opts.rounds, device=ctx.device, max_seconds=opts.max_seconds)
        common = {"batch": n, "dtype": str(x.dtype).replace("torch.", ""), "device": str(ctx.device)}
        metrics = [
            FORWARD(fwd.median, extra={**common, "grad_mode": mode, "what": "forward (z and log-det)",
                                       **fwd.as_extra()}),
            INVERSE(inv.median, extra={**common, "grad_mode": inv_mode, **inv.as_extra()}),
        ]

        xb, yb = self._train_batch(ctx, opts)
        if caps.memory_saving:
            model.set_memory_saving(False)
            ordinary = step_memory(model, xb, yb, ctx.device, opts.objective)
            model.set_memory_saving(True)
        mem = step_memory(model, xb, yb, ctx.device, opts.objective)
        mem_extra: dict[str, Any] = {**mem, "batch": int(xb.shape[0]),
                                     "method": "cuda_peak" if "cuda_peak_bytes" in mem else "saved_tensors"}
        if caps.memory_saving:
            mem_extra.update(memory_saving=True, bytes_ordinary=_bytes(ordinary))
        metrics.append(MEMORY(float(_bytes(mem)), extra=mem_extra))
        metrics.extend(self._capacity(model, x, z, mode, inv_mode))
        if caps.memory_saving:
            metrics.append(self._depth_curve(ctx, opts, xb, yb))
        return metrics

    @staticmethod
    def _capacity(model: InvertibleModel, x: Tensor, z: Tensor, mode: GradMode, inv_mode: GradMode) -> list[Metric]:
        """``params``, ``flops_forward`` and ``flops_inverse`` of ``model`` on ``x`` (B, *shape) and ``z = f(x)``."""
        n = int(x.shape[0])

        def forward() -> None:
            with grad_context(mode):
                model(x)

        def inverse() -> None:
            with grad_context(inv_mode):
                model.invert(z)

        fwd = flops_per_example(forward, n)
        inv = flops_per_example(inverse, n)
        estimator = model.estimator_settings()
        fwd_extra = flop_extra(n, grad_mode=mode, what="forward (z and log-det)")
        if estimator is not None:
            fwd_extra["estimator"] = estimator.as_dict()
        info = model.last_inverse
        inv_extra = flop_extra(n, grad_mode=inv_mode, iterations=int(info.iterations), converged=bool(info.converged))
        return [PARAMS(float(trainable_parameters(model))), FLOPS_FORWARD(fwd, extra=fwd_extra),
                FLOPS_INVERSE(inv, extra=inv_extra)]

    @staticmethod
    def _train_batch(ctx: TaskContext, opts: CostOptions) -> tuple[Tensor, Tensor | None]:
        x = eval_inputs(ctx, opts.train_batch or ctx.budget.batch_size)
        y = ctx.dataset.test_y[: x.shape[0]].to(ctx.device) if ctx.dataset.test_y is not None else None
        return x, y

    @staticmethod
    def _depth_curve(ctx: TaskContext, opts: CostOptions, x: Tensor, y: Tensor | None) -> Metric:
        if "depth" not in ctx.make_model().config():
            return DEPTH(None, status="unsupported", extra={"reason": "the model has no 'depth' hyper-parameter"})
        depths = sorted(opts.depths)
        saving: list[int] = []
        ordinary: list[int] = []
        for d in depths:
            m = ctx.make_model(depth=d).to(ctx.device)
            m.data_init(x)
            for enabled, store in ((True, saving), (False, ordinary)):
                m.set_memory_saving(enabled)
                store.append(_bytes(step_memory(m, x, y, ctx.device, opts.objective)))
        ratio = saving[-1] / saving[0] if saving[0] > 0 else float("inf")
        return DEPTH(ratio, extra={"depth": depths, "bytes_saving": saving, "bytes_ordinary": ordinary,
                                   "ratio_ordinary": ordinary[-1] / ordinary[0] if ordinary[0] > 0 else None,
                                   "batch": int(x.shape[0])})
