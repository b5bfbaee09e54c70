"""The data-set contract shared by every loader and every task.

All tensors are float32 on the CPU; tasks move them. Discrete data (digits, images) is stored as
``k / levels`` and dequantised with uniform noise (``x = (k + u) / levels``) for both training and evaluation;
evaluation uses a fixed generator (see ``bench.units`` for the convention that bits/dim depends on).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor


@dataclass(frozen=True)
class DatasetInfo:
    """What is known about a data set without its arrays: all that ``Task.supports`` may read.

    ``bench.datasets.info(name, options)`` gives it from constants (generated sets, digits), from file headers
    (IDX, a user's ``.npz`` / ``.npy``) or from a folder search (CIFAR-10), and :attr:`Dataset.info` gives the
    same for loaded data.

    Attributes:
        name: the data set's name as :attr:`Dataset.name` has it.
        kind: ``"vector"`` (examples (D,)) or ``"image"`` (examples (C, H, W)).
        shape: shape of one example.
        num_classes: number of classes of the labels, or None when unlabelled.
        levels: discrete levels per dimension, or None when continuous.
    """

    name: str
    kind: str
    shape: tuple[int, ...]
    num_classes: int | None = None
    levels: int | None = None

    @property
    def dim(self) -> int:
        return math.prod(self.shape)


@dataclass
class Dataset:
    """A data set with train/test splits.

    Attributes:
        name: registry name, e.g. ``"moons"``, ``"digits"``, ``"fashion-mnist"``.
        kind: ``"vector"`` (x: (N, D)) or ``"image"`` (x: (N, C, H, W)).
        train_x, test_x: inputs as above, in the scaled space the models see.
        train_y, test_y: int64 labels (N,) or None.
        num_classes: number of classes, or None.
        levels: discrete levels per dimension (17 for digits, 256 for 8-bit images) or None when continuous.
            For discrete data ``*_x`` hold the integer levels ``k`` mapped to ``k / levels`` (no noise);
            :meth:`dequantize` adds ``u / levels``, ``u ~ U[0, 1)``.
        log_density: exact ``log p(x)`` (N, D) -> (N,) for generated densities, else None.
        entropy: exact differential entropy in nats (the floor of any model's expected test NLL), else None.
        preprocess: optional ``x -> (y, log|det dy/dx|)`` applied before the model; its log-det is added
            to the model's log-likelihood (``bench.units``).
        description: the documented pre-processing, one paragraph.
        meta: free-form facts about the data; ``meta["image_shape"]`` marks vectors that are flattened images
            (so samples can be shown as images).
    """

    name: str
    kind: str
    train_x: Tensor
    test_x: Tensor
    train_y: Tensor | None = None
    test_y: Tensor | None = None
    num_classes: int | None = None
    levels: int | None = None
    log_density: Callable[[Tensor], Tensor] | None = None
    entropy: float | None = None
    preprocess: Callable[[Tensor], tuple[Tensor, Tensor]] | None = None
    description: str = ""
    meta: dict[str, object] = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, ...]:
        """Shape of one example: (D,) or (C, H, W)."""
        return tuple(self.train_x.shape[1:])

    @property
    def dim(self) -> int:
        return math.prod(self.shape)

    @property
    def info(self) -> DatasetInfo:
        """This data set's metadata (as ``bench.datasets.info`` gives it without loading)."""
        return DatasetInfo(self.name, self.kind, self.shape, self.num_classes, self.levels)

    def dequantize(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Uniform dequantisation of discrete data stored as ``k / levels``; identity when continuous."""
        if self.levels is None:
            return x
        u = torch.rand(x.shape, generator=generator, dtype=x.dtype).to(x.device)
        return x + u / self.levels
