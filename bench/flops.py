"""FLOPs of one call of a model (a forward with log-det, an inverse, the forward unit), counted by PyTorch, and
the model's trainable parameter count that goes beside them.

Counted with ``torch.utils.flop_counter.FlopCounterMode`` (a ``TorchDispatchMode``): every ATen operator the call
dispatches, inside nflows and FrEIA modules as in native ones, every iteration of a fixed-point inverse, and the
backward operators of ``torch.autograd.grad`` calls made inside the call (the log-det estimators' vector-Jacobian
products). Its formulas cover matrix products and convolutions only (``mm``, ``addmm``, ``bmm``, ``baddbmm``,
convolutions forward and backward, attention kernels), at 2 FLOPs per multiply-add: a dense ``(B, D) @ (D, D)``
product counts ``2 B D^2``. Everything else counts zero: biases, elementwise ops and activations, the splines of
a neural spline flow, reductions, ``slogdet``, linear solves and decompositions. Figures therefore compare the
network work of two models, not their total arithmetic; say so beside them (:data:`COUNTS`).

Per example: the count of one call on a batch of ``B`` divided by ``B``; work that does not grow with the batch
(products of weights alone) is spread over it, so the batch goes beside the figure (:func:`flop_extra`).

``FlopCounterMode`` also tracks the ``nn.Module`` hierarchy with global module hooks, and those hooks break
``torch.autograd.grad`` inside the counted call ("A leaf node was passed to _will_engine_execute_node",
pytorch/pytorch#131753; FrEIA's ``IResNetLayer`` computes its log-det that way). :class:`TotalFlopCounter` is
``FlopCounterMode`` with that tracking off: every count goes to the total (``"Global"``), which is all this
module reads, so the totals are the same.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn
from torch.utils.flop_counter import FlopCounterMode
from torch.utils.module_tracker import ModuleTracker

#: the counter named in rows' extra
COUNTER = "torch.utils.flop_counter.FlopCounterMode"
#: what :data:`COUNTER` counts, for the report's FLOP footnote (rows name the counter, not this text)
COUNTS = ("matrix products and convolutions only (mm, addmm, bmm, baddbmm, convolution, attention; 2 FLOPs per "
          "multiply-add): elementwise ops, activations, splines, reductions, slogdet and solves count zero")


class _NoModuleTracking(ModuleTracker):
    """A module tracker that installs no hooks: ``parents`` stays ``{"Global"}``, so every count is a total."""

    def __enter__(self) -> _NoModuleTracking:
        return self

    def __exit__(self, *args: object) -> None:
        return None


class TotalFlopCounter(FlopCounterMode):
    """``FlopCounterMode(display=False)`` counting totals only, without module hooks (module docstring)."""

    def __init__(self) -> None:
        super().__init__(display=False)
        self.mod_tracker = _NoModuleTracking()


def count_flops(call: Callable[[], object]) -> int:
    """FLOPs of ``call()`` (the whole call, every example of its batch), as :class:`TotalFlopCounter` counts them.

    The call runs under the caller's autograd mode; what it returns is dropped.
    """
    with TotalFlopCounter() as counter:
        call()
    return int(counter.get_total_flops())


def flops_per_example(call: Callable[[], object], batch: int) -> float:
    """FLOPs of ``call()`` on a batch of ``batch`` examples, divided by ``batch``."""
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    return count_flops(call) / batch


def flop_extra(batch: int, **more: Any) -> dict[str, Any]:
    """The ``extra`` of a FLOP row: the counter (:data:`COUNTER`; what it counts is :data:`COUNTS`), the batch the
    count was divided by, ``more``."""
    return {"counter": COUNTER, "batch": int(batch), **more}


def trainable_parameters(model: nn.Module) -> int:
    """The number of trainable scalars: ``numel`` summed over the parameters with ``requires_grad``."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
