"""The ``cost`` task: throughput in both directions and the memory of a training step.

- ``forward_throughput``, ``inverse_throughput``: examples per second on a test batch (option ``batch``,
  default 256), median over timed rounds (:func:`bench.timing.throughput`), the trained model; the forward
  is the full ``forward`` (z and log-det, what ``log_prob`` costs), under ``no_grad`` except for log-det
  estimators (autograd); the inverse under ``no_grad``. Absolute figures depend on the machine: compare
  them within one run record.
- ``train_memory_bytes``: memory of one training step's loss (``-log_prob`` for density models, the
  cross-entropy of ``logits`` otherwise) in training mode: on the CPU the bytes of tensors saved for
  backward (``bench.memory.saved_tensor_bytes``, deterministic); on CUDA the peak allocation of forward
  plus backward above what was allocated before (``torch.cuda.max_memory_allocated``). Memory-saving
  models are measured with memory saving on; ``extra`` holds the ordinary-backprop figure beside it.
- ``memory_depth_ratio`` (memory-saving models whose config has ``depth``): saved bytes at the largest
  depth over the smallest (option ``depths``, default 2, 4, 8; fresh ``ctx.make_model(depth=d)`` each,
  memory saving on), with the whole curve in both modes in ``extra``: activation memory independent of
  depth gives 1 (Gomez et al., "The Reversible Residual Network", NeurIPS 2017), ordinary backprop grows
  linearly.

Options: ``batch`` (256), ``train_batch`` (budget batch size), ``rounds`` (7), ``max_seconds`` (5, per direction),
``depths``.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor
from torch.nn import functional as F

from bench.tasks.base import Metric, Task, TaskContext
from bench.tasks.measure import (
    eval_inputs,
    failed_metrics,
    grad_context,
    measured_model,
    reconstruction,
    resolve_grad_mode,
)
from bench.timing import throughput
from models.base import InvertibleModel

_SPECS: list[tuple[str, str, bool | None]] = [
    ("forward_throughput", "examples/s", True),
    ("inverse_throughput", "examples/s", True),
    ("train_memory_bytes", "bytes", False),
]
_DEPTH: tuple[str, str, bool | None] = ("memory_depth_ratio", "ratio", False)


def training_loss(model: InvertibleModel, x: Tensor, y: Tensor | None = None) -> Tensor:
    """The scalar a training step differentiates: mean NLL (density) or cross-entropy of the logits."""
    if model.capabilities.density:
        return -model.log_prob(x).mean()
    logits = model.logits(x)
    if y is None:
        return logits.logsumexp(dim=1).mean()
    return F.cross_entropy(logits, y)


def step_memory(model: InvertibleModel, x: Tensor, y: Tensor | None, device: torch.device) -> dict[str, Any]:
    """Memory of one training step of ``model`` on ``x`` (B, *shape), in training mode.

    Returns ``{"saved_tensor_bytes": int}`` and, on CUDA, ``"cuda_peak_bytes"`` (peak of forward + backward
    above the allocation before the step).
    """
    from bench.memory import cuda_peak_bytes, saved_tensor_bytes

    def step() -> None:
        training_loss(model, x, y).backward()
        model.zero_grad(set_to_none=True)

    was_training = model.training
    model.train()
    try:
        with torch.enable_grad():
            out: dict[str, Any] = {"saved_tensor_bytes": int(saved_tensor_bytes(lambda: training_loss(model, x, y)))}
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
    requires_text: ClassVar[str] = "nothing beyond the contract (every model)"
    metrics: ClassVar[tuple[str, ...]] = tuple(s[0] for s in _SPECS)

    def run(self, ctx: TaskContext) -> list[Metric]:
        opts = ctx.options
        model, result = measured_model(ctx)
        caps = model.capabilities
        specs = _SPECS + ([_DEPTH] if caps.memory_saving else [])
        if getattr(result, "diverged", False):
            return failed_metrics(specs, "diverged", "training diverged")
        model.eval()
        mode = resolve_grad_mode(model, str(opts.get("grad", "auto")), full_forward=True)
        inv_mode = resolve_grad_mode(model, str(opts.get("grad", "auto")), full_forward=False)
        x = eval_inputs(ctx, int(opts.get("batch", 256)))
        n = int(x.shape[0])
        z, _, _ = reconstruction(model, x, inv_mode)

        def forward() -> None:
            with grad_context(mode):
                model(x)

        def inverse() -> None:
            with grad_context(inv_mode):
                model.inverse(z)

        rounds, max_seconds = int(opts.get("rounds", 7)), float(opts.get("max_seconds", 5.0))
        fwd = throughput(forward, n, rounds=rounds, device=ctx.device, max_seconds=max_seconds)
        inv = throughput(inverse, n, rounds=rounds, device=ctx.device, max_seconds=max_seconds)
        common = {"batch": n, "dtype": str(x.dtype).replace("torch.", ""), "device": str(ctx.device)}
        metrics = [
            Metric("forward_throughput", fwd.median, "examples/s", True,
                   extra={**common, "grad_mode": mode, "what": "forward (z and log-det)", **fwd.as_extra()}),
            Metric("inverse_throughput", inv.median, "examples/s", True,
                   extra={**common, "grad_mode": inv_mode, **inv.as_extra()}),
        ]

        xb, yb = self._train_batch(ctx)
        if caps.memory_saving:
            model.set_memory_saving(False)
            ordinary = step_memory(model, xb, yb, ctx.device)
            model.set_memory_saving(True)
        mem = step_memory(model, xb, yb, ctx.device)
        mem_extra: dict[str, Any] = {**mem, "batch": int(xb.shape[0]),
                                     "method": "cuda_peak" if "cuda_peak_bytes" in mem else "saved_tensors"}
        if caps.memory_saving:
            mem_extra.update(memory_saving=True, bytes_ordinary=_bytes(ordinary))
        metrics.append(Metric("train_memory_bytes", float(_bytes(mem)), "bytes", False, extra=mem_extra))
        if caps.memory_saving:
            metrics.append(self._depth_curve(ctx, xb, yb))
        return metrics

    @staticmethod
    def _train_batch(ctx: TaskContext) -> tuple[Tensor, Tensor | None]:
        n = int(ctx.options.get("train_batch", ctx.budget.batch_size))
        x = eval_inputs(ctx, n)
        y = ctx.dataset.test_y[: x.shape[0]].to(ctx.device) if ctx.dataset.test_y is not None else None
        return x, y

    @staticmethod
    def _depth_curve(ctx: TaskContext, x: Tensor, y: Tensor | None) -> Metric:
        if "depth" not in ctx.make_model().config():
            return Metric(_DEPTH[0], None, _DEPTH[1], _DEPTH[2], status="unsupported",
                          extra={"reason": "the model has no 'depth' hyper-parameter"})
        depths = sorted(int(d) for d in ctx.options.get("depths", (2, 4, 8)))
        saving: list[int] = []
        ordinary: list[int] = []
        for d in depths:
            m = ctx.make_model(depth=d).to(ctx.device)
            m.data_init(x)
            for enabled, store in ((True, saving), (False, ordinary)):
                m.set_memory_saving(enabled)
                store.append(_bytes(step_memory(m, x, y, ctx.device)))
        ratio = saving[-1] / saving[0] if saving[0] > 0 else float("inf")
        return Metric(_DEPTH[0], ratio, _DEPTH[1], _DEPTH[2],
                      extra={"depth": depths, "bytes_saving": saving, "bytes_ordinary": ordinary,
                             "ratio_ordinary": ordinary[-1] / ordinary[0] if ordinary[0] > 0 else None,
                             "batch": int(x.shape[0])})
