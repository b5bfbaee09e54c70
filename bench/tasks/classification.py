"""The ``classification`` task: train ``logits`` by cross entropy under the suite's budget, report test accuracy.

Invertible classifiers (i-ResNet, RevNet) keep every bit of the input up to the final projection (Behrmann et
al., "Invertible Residual Networks", ICML 2019; Gomez et al., "The Reversible Residual Network", NeurIPS 2017);
the task measures what that costs in accuracy under the same budget as the other models. Discrete test data is
dequantised with the same fixed seeded noise as in the likelihood task (the training inputs are dequantised
afresh each step), then pre-processed as in training.

Learning curve (:mod:`bench.tasks.curves`): during training the accuracy on the first ``curve_points`` test
examples is recorded at most ``curve_evals`` times (step 0, log-spaced steps, the final step), with the training
clock paused; ``eval_time`` carries the curve and ``time_to_target`` is read off it for a ``test_accuracy``
target of the data set.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch

from bench.datasets.base import Dataset, DatasetInfo
from bench.options import Options, opt
from bench.tasks.base import Metric, MetricSpec, Task, TaskContext
from bench.tasks.compiled import COMPILE_FULLGRAPH_OPT, COMPILE_OPT, CompileMode
from bench.tasks.curves import CURVE_SPECS, CurveRequest, curve_metrics
from bench.tasks.training import (
    TRAIN_SPECS,
    evaluation_grad_mode,
    fixed_test_x,
    model_dtype,
    preprocess_batch,
    train_metrics,
    trained_model,
)
from models.base import Capabilities, InvertibleModel


@dataclass(frozen=True)
class ClassificationOptions(Options):
    """Options of the ``classification`` task."""

    eval_batch_size: int = field(default=512, metadata=opt("test examples per evaluation batch", min=1))
    curve_points: int = field(default=512, metadata=opt(
        "test examples (the first ones) the learning curve's accuracy is measured on", min=1))
    curve_evals: int = field(default=12, metadata=opt(
        "most learning-curve evaluations (step 0, log-spaced steps, the final step); 0: no curve", min=0))
    compile: CompileMode = field(default="off", metadata=COMPILE_OPT)
    compile_fullgraph: bool = field(default=False, metadata=COMPILE_FULLGRAPH_OPT)


TEST_ACCURACY = MetricSpec("test_accuracy", "fraction", "up", "fraction of the test labels predicted correctly")


def test_predictions(model: InvertibleModel, dataset: Dataset, device: torch.device, seed: int,
                     batch_size: int = 512, limit: int | None = None) -> torch.Tensor:
    """Predicted classes (N,) of the test set, or of its first ``limit`` examples (``argmax`` of ``model.logits``),
    on the CPU."""
    x = fixed_test_x(dataset, seed)[:limit]
    dtype = model_dtype(model)
    preds = []
    for start in range(0, x.shape[0], batch_size):
        y, _ = preprocess_batch(dataset, x[start:start + batch_size], device, dtype)
        with evaluation_grad_mode(model):
            preds.append(model.logits(y).detach().argmax(dim=1).cpu())
    return torch.cat(preds)


def classification_curve(ctx: TaskContext, options: ClassificationOptions) -> CurveRequest | None:
    """The accuracy on the first ``options.curve_points`` test examples as a learning curve; None when
    ``options.curve_evals`` is 0."""
    if options.curve_evals == 0:
        return None
    dataset = ctx.dataset
    assert dataset.test_y is not None
    labels = dataset.test_y.long().cpu()[:options.curve_points]

    def evaluate(model: InvertibleModel) -> float:
        preds = test_predictions(model, dataset, ctx.device, ctx.seed, options.eval_batch_size, labels.numel())
        return float((preds == labels).double().mean())

    return CurveRequest(TEST_ACCURACY.name, evaluate, options.curve_evals, {"points": int(labels.numel())})


class ClassificationTask(Task):
    """Test accuracy (fraction of correct test labels) after training the classifier head end to end."""

    name = "classification"
    Options = ClassificationOptions
    trains_model: ClassVar[bool] = True
    requires_text: ClassVar[str] = "a classifier model (logits) and a labelled data set"
    target_metrics: ClassVar[tuple[str, ...]] = (TEST_ACCURACY.name,)
    metric_specs: ClassVar[tuple[MetricSpec, ...]] = (TEST_ACCURACY, *CURVE_SPECS, *TRAIN_SPECS)

    @classmethod
    def supports(cls, caps: Capabilities, dataset: DatasetInfo) -> bool:
        return caps.classifier and dataset.num_classes is not None and dataset.kind in caps.inputs

    def run(self, ctx: TaskContext) -> list[Metric]:
        dataset = ctx.dataset
        options: ClassificationOptions = ctx.options
        if dataset.test_y is None:
            raise ValueError(f"data set {dataset.name!r} has no test labels")
        model, result = trained_model(ctx, "classification", curve=classification_curve(ctx, options),
                                      compile=options.compile, compile_fullgraph=options.compile_fullgraph)
        tail = [*curve_metrics(result.curve, TEST_ACCURACY.name, ctx.targets,
                               {TEST_ACCURACY.name: (TEST_ACCURACY, lambda v: v)}), *train_metrics(result)]
        if result.diverged:
            acc = TEST_ACCURACY(None, status="diverged", extra={"reason": f"training diverged: {result.reason}"})
            return [acc, *tail]
        preds = test_predictions(model, dataset, ctx.device, ctx.seed, options.eval_batch_size)
        correct = int((preds == dataset.test_y.long().cpu()).sum())
        n = int(dataset.test_y.numel())
        acc = TEST_ACCURACY(correct / n, extra={"correct": correct, "n_test": n})
        return [acc, *tail]
