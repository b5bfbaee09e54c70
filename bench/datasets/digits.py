"""scikit-learn's bundled 8x8 handwritten digits (no download): ``"digits"`` and ``"digits-flat"``.

1797 grey-level images with 17 levels ``k`` in ``0..16`` and 10 classes (the UCI "Optical Recognition of
Handwritten Digits" test set as shipped in ``sklearn.datasets.load_digits``).

- Split: stratified by class, 1438 train / 359 test, drawn once with the fixed seed
  :data:`~bench.datasets.arrays.SPLIT_SEED` (``sklearn.model_selection.train_test_split``), so every run seed
  sees the same test images. ``meta["train_index"]`` / ``meta["test_index"]`` hold the indices into
  ``load_digits()``.
- Storage: ``k / 17`` as float32 (``levels = 17``); :meth:`Dataset.dequantize` gives ``x = (k + u) / 17``,
  ``u ~ U[0, 1)``, so the models see data in ``[0, 1)`` and bits/dim adds ``D ln 17`` (``bench.units``).
- ``"digits"`` is kind ``"image"`` with shape ``(1, 8, 8)``; ``"digits-flat"`` is the same data as kind
  ``"vector"`` with shape ``(64,)`` (row-major pixels), for models without convolutions.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from bench.datasets.arrays import SPLIT_SEED, from_arrays, subset
from bench.datasets.base import Dataset, DatasetInfo
from bench.datasets.source import DatasetSource, LoaderOptions, check_sizes

LEVELS = 17
N_TEST = 359
#: images in scikit-learn's bundled copy
N_TOTAL = 1797


@lru_cache(maxsize=1)
def _raw() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(images (1797, 8, 8) int64 in 0..16, labels (1797,), train_index, test_index)``."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    images = np.asarray(bunch.images).astype(np.int64)
    labels = np.asarray(bunch.target).astype(np.int64)
    idx = np.arange(len(labels))
    tr, te = train_test_split(idx, test_size=N_TEST, stratify=labels, random_state=SPLIT_SEED, shuffle=True)
    return images, labels, np.sort(tr), np.sort(te)


def load_digits(flat: bool = False, n_train: int | None = None, n_test: int | None = None) -> Dataset:
    """The digits data set; ``flat=True`` gives ``"digits-flat"`` (N, 64), else ``"digits"`` (N, 1, 8, 8)."""
    images, labels, tr, te = _raw()
    tr, te = tr[subset(len(tr), n_train, "n_train")], te[subset(len(te), n_test, "n_test")]
    x = images.reshape(len(images), 64) if flat else images[:, None]
    name = "digits-flat" if flat else "digits"
    shape = "(64,) row-major vectors" if flat else "(1, 8, 8) images"
    desc = (f"scikit-learn 8x8 digits as {shape}: 17 levels k = 0..16 stored as k/17 and dequantised "
            f"x = (k + u)/17, u ~ U[0, 1); stratified split {len(tr)}/{len(te)} with fixed seed {SPLIT_SEED}.")
    return from_arrays(name, x[tr], x[te], labels[tr], labels[te], levels=LEVELS, num_classes=10,
                       description=desc, meta={"source": "sklearn.datasets.load_digits",
                                               "train_index": tr.tolist(), "test_index": te.tolist(),
                                               **({"image_shape": [1, 8, 8]} if flat else {})})


class DigitsSource(DatasetSource[LoaderOptions]):
    """``"digits"`` (images (1, 8, 8)) or ``"digits-flat"`` (vectors (64,)); metadata known without sklearn."""

    def __init__(self, flat: bool) -> None:
        self.flat = flat
        self.name = "digits-flat" if flat else "digits"

    def info(self, options: LoaderOptions, seed: int = 0) -> DatasetInfo:
        check_sizes(self.name, options, N_TOTAL - N_TEST, N_TEST)
        return DatasetInfo(self.name, "vector" if self.flat else "image", (64,) if self.flat else (1, 8, 8), 10,
                           LEVELS)

    def read(self, options: LoaderOptions, seed: int) -> Dataset:
        return load_digits(flat=self.flat, n_train=options.n_train, n_test=options.n_test)


digits = DigitsSource(flat=False)
digits_flat = DigitsSource(flat=True)
