"""The ``classification`` task: train ``logits`` by cross entropy under the suite's budget, report test accuracy.

Invertible classifiers (i-ResNet, RevNet) keep every bit of the input up to the final projection (Behrmann et
al., "Invertible Residual Networks", ICML 2019; Gomez et al., "The Reversible Residual Network", NeurIPS 2017);
the task measures what that costs in accuracy under the same budget as the other models. Discrete test data is
dequantised with the same fixed seeded noise as in the likelihood task (the training inputs are dequantised
afresh each step), then pre-processed as in training.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch

from bench.datasets.base import Dataset, DatasetInfo
from bench.options import Options, opt
from bench.tasks.base import Metric, MetricSpec, Task, TaskContext
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


TEST_ACCURACY = MetricSpec("test_accuracy", "fraction", "up", "fraction of the test labels predicted correctly")


def test_predictions(model: InvertibleModel, dataset: Dataset, device: torch.device, seed: int,
                     batch_size: int = 512) -> torch.Tensor:
    """Predicted classes (N,) of the test set (``argmax`` of ``model.logits``), on the CPU."""
    x = fixed_test_x(dataset, seed)
    dtype = model_dtype(model)
    preds = []
    for start in range(0, x.shape[0], batch_size):
        y, _ = preprocess_batch(dataset, x[start:start + batch_size], device, dtype)
        with evaluation_grad_mode(model):
            preds.append(model.logits(y).detach().argmax(dim=1).cpu())
    return torch.cat(preds)


class ClassificationTask(Task):
    """Test accuracy (fraction of correct test labels) after training the classifier head end to end."""

    name = "classification"
    Options = ClassificationOptions
    trains_model: ClassVar[bool] = True
    requires_text: ClassVar[str] = "a classifier model (logits) and a labelled data set"
    metric_specs: ClassVar[tuple[MetricSpec, ...]] = (TEST_ACCURACY, *TRAIN_SPECS)

    @classmethod
    def supports(cls, caps: Capabilities, dataset: DatasetInfo) -> bool:
        return caps.classifier and dataset.num_classes is not None and dataset.kind in caps.inputs

    def run(self, ctx: TaskContext) -> list[Metric]:
        dataset = ctx.dataset
        options: ClassificationOptions = ctx.options
        if dataset.test_y is None:
            raise ValueError(f"data set {dataset.name!r} has no test labels")
        model, result = trained_model(ctx, "classification")
        if result.diverged:
            acc = TEST_ACCURACY(None, status="diverged", extra={"reason": f"training diverged: {result.reason}"})
            return [acc, *train_metrics(result)]
        preds = test_predictions(model, dataset, ctx.device, ctx.seed, options.eval_batch_size)
        correct = int((preds == dataset.test_y.long().cpu()).sum())
        n = int(dataset.test_y.numel())
        acc = TEST_ACCURACY(correct / n, extra={"correct": correct, "n_test": n})
        return [acc, *train_metrics(result)]
