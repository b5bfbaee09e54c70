"""The ``memgrad`` task: how wrong memory-saving gradients become over training, without and with the regulariser.

Behrmann et al., "Understanding and Mitigating Exploding Inverses in Invertible Neural Networks", AISTATS 2021,
sec. 6 (their code: asteroidhouse/INN-exploding-inverses, ``classification/``): an invertible classifier trained
with memory-saving backprop (activations rebuilt from the outputs by the inverse, Gomez et al. 2017) gets wrong
gradients once it becomes numerically non-invertible; the bi-directional finite-difference regulariser
(:class:`bench.regularizers.FDRegularizer`, the authors' eps 0.1, weight 1e-4, every 10 steps) keeps it invertible
and its gradients right.

A classifier with memory-saving backprop (``capabilities.memory_saving``: ``glow-native``, ``revnet-native``) is
trained for classification (:func:`bench.tasks.training.train_classifier`, memory saving on) and evaluated inside
that one run at the steps ``checkpoints`` (the training loop's learning-curve hook: clock paused, random state
forked; the final step always, ``extra.final``). On a fixed batch (the first ``grad_points`` test points, their
labels) the parameter gradients of the cross-entropy are taken twice on a copy of the model in training mode, with
memory saving on (``g_ms``) and off (``g``, stored activations):

- ``memgrad_rel_err``: ``||g_ms - g|| / ||g||`` over all parameters (``inf`` when ``g_ms`` is not finite);
- ``memgrad_angle``: the angle between ``g_ms`` and ``g`` in degrees (``diverged`` when ``g_ms`` is not finite);
- ``test_accuracy``: accuracy on the first ``accuracy_points`` test points (the classifier is learning).

Each row has ``settings = {"step": k}``; ``extra`` of the gradient rows holds the float32 reconstruction error of
the batch (``recon_err``, max abs) and the count of non-finite gradient entries. With ``regularizer`` (default: the
authors' settings; none: skip) a second model is trained with the penalty added to the loss every ``every`` steps
and every row is reported again with ``variant = "reg"`` (its settings in ``extra.regularizer``).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor

from bench.datasets.base import DatasetInfo
from bench.options import Options, opt
from bench.regularizers import FDRegularizer, RegularizerOptions
from bench.tasks.base import Metric, MetricSpec, Task, TaskContext
from bench.tasks.curves import EVAL_TIME, CurveRequest
from bench.tasks.exploding import checkpoint_rows
from bench.tasks.measure import eval_inputs, options_of
from bench.tasks.training import TRAIN_SPECS, train_classifier
from models.base import Capabilities, InvertibleModel
from models.loss import training_loss

#: ``variant`` of the rows of the model trained with the regulariser
REG_VARIANT = "reg"

MEMGRAD_REL_ERR = MetricSpec("memgrad_rel_err", "relative error", "down",
                             "||g_saving - g_stored|| / ||g_stored|| of the cross-entropy's parameter gradients on a "
                             "fixed batch (settings: step)")
MEMGRAD_ANGLE = MetricSpec("memgrad_angle", "degrees", "down",
                           "angle between memory-saving and stored-activation gradients (settings: step)")
TEST_ACCURACY = MetricSpec("test_accuracy", "fraction", "up",
                           "accuracy on the first accuracy_points test points (settings: step)")
MEMGRAD_SPECS: tuple[MetricSpec, ...] = (MEMGRAD_REL_ERR, MEMGRAD_ANGLE, TEST_ACCURACY)


@dataclass(frozen=True)
class MemgradOptions(Options):
    """Options of the ``memgrad`` task (see the module docstring)."""

    checkpoints: tuple[int, ...] = field(default=(0, 100, 300, 1000, 3000), metadata=opt(
        "training steps at which the gradients are compared (within one run; the final step always is)", min=0))
    grad_points: int = field(default=64, metadata=opt("points of the fixed batch the gradients are taken on", min=1))
    accuracy_points: int = field(default=256, metadata=opt("test points for test_accuracy", min=1))
    regularizer: RegularizerOptions | None = field(default=RegularizerOptions(), metadata=opt(
        "the regularised twin (variant reg), a table {eps, weight, every} (defaults: the authors' eps = 0.1, "
        "weight = 1e-4, every = 10); none: train only the plain model"))

    def __post_init__(self) -> None:
        if not self.checkpoints:
            raise ValueError("checkpoints: give at least one step")


def gradient_vector(model: InvertibleModel, x: Tensor, y: Tensor, memory_saving: bool) -> Tensor:
    """The cross-entropy's parameter gradients at ``x``: (B, *shape), labels ``y``: (B,), concatenated: (P,) float64.
    ``model`` (a copy, in training mode) is switched to ``memory_saving`` first."""
    model.set_memory_saving(memory_saving)
    model.zero_grad(set_to_none=True)
    with torch.enable_grad():
        training_loss(model, x, y, objective="classification").backward()
    return torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1).double()
                      for p in model.parameters() if p.requires_grad])


def compare_gradients(model: InvertibleModel, x: Tensor, y: Tensor) -> dict[str, Any]:
    """``rel_err``, ``angle`` (degrees, NaN when not finite) and ``n_nonfinite`` of memory-saving against
    stored-activation gradients, on a copy of ``model`` in training mode (the model itself is not touched)."""
    twin = copy.deepcopy(model).train()
    g_ms = gradient_vector(twin, x, y, memory_saving=True)
    g = gradient_vector(twin, x, y, memory_saving=False)
    bad = int((~torch.isfinite(g_ms)).sum())
    norm = g.norm()
    if bad or not bool(torch.isfinite(g).all()):
        return {"rel_err": math.inf, "angle": math.nan, "n_nonfinite": bad}
    diff = (g_ms - g).norm()
    rel = float(diff / norm) if norm > 0 else float(diff)
    cos = float(torch.dot(g_ms, g) / (g_ms.norm() * norm).clamp_min(1e-300))
    return {"rel_err": rel, "angle": math.degrees(math.acos(max(-1.0, min(1.0, cos)))), "n_nonfinite": 0}


def batch_recon_err(model: InvertibleModel, x: Tensor) -> float:
    """Max abs error of ``f^-1(f(x))`` over the batch ``x``: (B, *shape) in the model's dtype (inf if not
    finite)."""
    with torch.no_grad():
        xr = model.inverse(model.encode(x))
    err = (xr.double() - x.double()).abs()
    return float(err.max()) if bool(torch.isfinite(err).all()) else math.inf


def checkpoint_evaluator(x: Tensor, y: Tensor, x_acc: Tensor, y_acc: Tensor, rows: list[list[Metric]]
                         ) -> Callable[[Any], float]:
    """The learning-curve callback: compares the gradients on ``(x, y)`` and measures the accuracy on
    ``(x_acc, y_acc)``, appends the rows (step filled in afterwards from the curve) and returns the relative
    error."""

    def evaluate(model: InvertibleModel) -> float:
        found = compare_gradients(model, x, y)
        extra = {"points": int(x.shape[0]), "n_nonfinite": found["n_nonfinite"],
                 "recon_err": batch_recon_err(model, x)}
        out = [MEMGRAD_REL_ERR(found["rel_err"], extra=extra)]
        if math.isfinite(found["angle"]):
            out.append(MEMGRAD_ANGLE(found["angle"], extra=extra))
        else:
            out.append(MEMGRAD_ANGLE(None, status="diverged",
                                     extra={**extra, "reason": "non-finite memory-saving gradient"}))
        with torch.no_grad():
            correct = int((model.logits(x_acc).argmax(dim=1) == y_acc).sum())
        out.append(TEST_ACCURACY(correct / int(y_acc.numel()), extra={"points": int(y_acc.numel())}))
        rows.append(out)
        return float(found["rel_err"])

    return evaluate


class MemgradTask(Task):
    """Memory-saving against stored-activation gradients over classifier training, plain and regularised."""

    name: ClassVar[str] = "memgrad"
    Options = MemgradOptions
    trains_model: ClassVar[bool] = True
    requires_text: ClassVar[str] = "a classifier with memory-saving backprop and a labelled data set"
    metric_specs: ClassVar[tuple[MetricSpec, ...]] = (*MEMGRAD_SPECS, EVAL_TIME, *TRAIN_SPECS)

    @classmethod
    def supports(cls, caps: Capabilities, dataset: DatasetInfo) -> bool:
        return (caps.classifier and caps.memory_saving and dataset.num_classes is not None
                and dataset.kind in caps.inputs)

    def run(self, ctx: TaskContext) -> list[Metric]:
        opts = options_of(ctx, MemgradOptions)
        dataset = ctx.dataset
        if dataset.test_y is None:
            raise ValueError(f"data set {dataset.name!r} has no test labels")
        x = eval_inputs(ctx, opts.grad_points)
        y = dataset.test_y.long()[:x.shape[0]].to(ctx.device)
        x_acc = eval_inputs(ctx, opts.accuracy_points)
        y_acc = dataset.test_y.long()[:x_acc.shape[0]].to(ctx.device)
        out = self._train_and_measure(ctx, opts, x, y, x_acc, y_acc, None)
        if opts.regularizer is not None:
            reg = FDRegularizer.from_options(opts.regularizer)
            rows = self._train_and_measure(ctx, opts, x, y, x_acc, y_acc, reg)
            note = opts.regularizer.to_dict()
            for row in rows:
                row.variant = REG_VARIANT
                row.extra["regularizer"] = note
            out.extend(rows)
        return out

    @staticmethod
    def _train_and_measure(ctx: TaskContext, opts: MemgradOptions, x: Tensor, y: Tensor, x_acc: Tensor,
                           y_acc: Tensor, regularizer: FDRegularizer | None) -> list[Metric]:
        evaluations: list[list[Metric]] = []
        request = CurveRequest(MEMGRAD_REL_ERR.name, checkpoint_evaluator(x, y, x_acc, y_acc, evaluations),
                               evals=len(opts.checkpoints) + 2, steps=tuple(opts.checkpoints),
                               settings={"task": "memgrad"})
        model = ctx.make_model().to(ctx.device)
        model.set_memory_saving(True)
        result = train_classifier(model, ctx.dataset, ctx.budget, ctx.device, ctx.seed, ctx.progress, curve=request,
                                  regularizer=regularizer)
        return checkpoint_rows(result, evaluations, opts.checkpoints, MEMGRAD_REL_ERR.name)
