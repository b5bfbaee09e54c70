"""The task contract: a task measures one aspect of one model on one data set for one seed.

A task declares, as class attributes: its options (``Options``, a frozen :class:`bench.options.Options`
dataclass, validated when the suite loads), whether it trains a model (``trains_model``: such tasks run first in
each (model, data set, seed) group so the others reuse the checkpoint), the metrics it emits (``metric_specs``:
name, unit, direction) and what it needs (``supports``; a model that lacks it gets rows with status
``unsupported`` from the runner, without the task being called). A task returns :class:`Metric` values; the
runner turns them into result rows (adding run id, suite, model, dataset, seed, config hash).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch

from bench.datasets.base import Dataset, DatasetInfo
from bench.options import Options as TaskOptions
from bench.tasks.metric import Direction, Metric, MetricSpec
from models.base import Capabilities, InvertibleModel

__all__ = ["Budget", "Direction", "Metric", "MetricSpec", "NoOptions", "Task", "TaskContext", "save_artifact"]


@dataclass
class Budget:
    """The training budget shared by every model in a suite: whichever limit is hit first stops training."""

    steps: int = 1000
    seconds: float | None = None
    batch_size: int = 256
    lr: float = 1e-3
    #: ``"constant"`` or ``"cosine"``: decay the learning rate to 0 over the budget (the larger of the step and
    #: time fractions used), which helps most when the budget is short
    schedule: str = "constant"


@dataclass
class TaskContext:
    """Everything a task needs for one cell.

    Attributes:
        make_model: builds a fresh model for the data set (shape and num_classes already bound); keyword
            arguments override hyper-parameters (e.g. ``make_model(depth=8)``).
        dataset: the data.
        seed: the cell's seed (the runner has already seeded torch/numpy/random with it).
        budget: training budget.
        device: ``torch.device`` to run on.
        options: the task's options (an instance of its ``Options`` dataclass, validated).
        progress: callback ``(done, total, message)`` for long loops; may be a no-op.
        checkpoint_dir: where trained models are cached (one file per model config x dataset x seed x
            objective x budget), so ``inverse_cost`` and ``stability`` measure the model that ``likelihood``
            trained even though each task runs as its own cell; None disables caching.
        model_name: the registry name of the model (for messages and file names).
        artifact_dir: where a task writes arrays too large for a row (density grids, samples) with
            :func:`save_artifact`; rows point to them by relative path in ``extra["artifact"]``.
        task_name: the registry name of the task.
        targets: the data set's declared targets, metric name -> threshold (the suite's ``targets`` table of the
            data set); a training task reports ``time_to_target`` for each metric it emits (reached when the
            value is on the good side of the threshold by the metric's direction).
    """

    make_model: Callable[..., InvertibleModel]
    dataset: Dataset
    seed: int
    budget: Budget
    device: torch.device
    options: Any = None
    progress: Callable[[int, int, str], None] = lambda done, total, msg: None
    checkpoint_dir: Path | None = None
    model_name: str = ""
    artifact_dir: Path | None = None
    task_name: str = ""
    targets: dict[str, float] = field(default_factory=dict)


def save_artifact(ctx: TaskContext, name: str, **arrays: Any) -> str | None:
    """Save numpy-convertible arrays as ``<artifact_dir>/<task>/<model>__<dataset>__s<seed>__<name>.npz``.

    Returns the path relative to the run directory (``artifact_dir``'s parent), or None when artifacts are off.
    """
    if ctx.artifact_dir is None:
        return None
    import numpy as np

    folder = ctx.artifact_dir / (ctx.task_name or "misc")
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{ctx.model_name}__{ctx.dataset.name}__s{ctx.seed}__{name}.npz"
    payload: dict[str, Any] = {k: np.asarray(v) for k, v in arrays.items()}
    np.savez_compressed(path, **payload)
    return str(path.relative_to(ctx.artifact_dir.parent))


@dataclass(frozen=True)
class NoOptions(TaskOptions):
    """A task without options."""


class Task(ABC):
    """A benchmark task. Subclasses set ``name``, ``Options``, ``trains_model``, ``metric_specs`` and implement
    ``run``."""

    name: ClassVar[str]
    #: the task's options dataclass; ``ctx.options`` is an instance of it
    Options: ClassVar[type[TaskOptions]] = NoOptions
    #: whether the task trains the model (training tasks run first; later tasks reuse their checkpoints)
    trains_model: ClassVar[bool] = False
    #: human-readable list of what the task needs, shown in ``unsupported`` rows
    requires_text: ClassVar[str] = ""
    #: the metrics the task reports (the runner writes one ``unsupported`` / failure row for each)
    metric_specs: ClassVar[tuple[MetricSpec, ...]] = ()
    #: the metrics a data set's ``targets`` may name for this task: it reports ``time_to_target`` for each
    target_metrics: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def parse_options(cls, data: dict[str, Any] | None, where: str) -> TaskOptions:
        """The validated options from a suite's table (raises :class:`bench.options.OptionError`, one line)."""
        return cls.Options.parse(data or {}, where)

    @classmethod
    def supports(cls, caps: Capabilities, dataset: DatasetInfo) -> bool:
        """Whether a model with ``caps`` can do this task on the data set: decided from its metadata alone (kind,
        shape, dim, num_classes, levels; the runner asks before any data is loaded). Default: every model."""
        return True

    @abstractmethod
    def run(self, ctx: TaskContext) -> list[Metric]:
        """Measure; raise on failure (the runner records the error as a row)."""
