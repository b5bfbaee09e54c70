"""CIFAR-10 from the "python version" batches (Krizhevsky, 2009) in torchvision's folder layout; no download.

Files: ``cifar-10-batches-py/data_batch_1`` .. ``data_batch_5`` and ``test_batch``: pickled dicts with
``b"data"`` (10000, 3072) uint8 (1024 red, 1024 green, 1024 blue values, each a row-major 32x32 plane) and
``b"labels"`` (10000 ints in 0..9). They are read with :mod:`pickle` and numpy (torchvision is not imported)
through an unpickler that only admits the numpy array reconstruction hooks, so a tampered file cannot run code.

Search order, first folder holding all six files wins: ``root``, ``$INVBENCH_DATA``, ``$CIFAR10_DIR``, each
also with the sub-folder ``cifar-10-batches-py`` (torchvision's layout: ``CIFAR10(root)`` keeps the files in
``<root>/cifar-10-batches-py``).

Images are ``(N, 3, 32, 32)``, 8-bit: ``levels = 256``, stored as ``k / 256``, dequantised
``x = (k + u) / 256``. The official 50000 / 10000 split is kept; ``n_train`` / ``n_test`` take a fixed subset.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np

from bench.datasets.arrays import from_arrays, search_dirs, searched
from bench.datasets.base import Dataset, DatasetInfo
from bench.datasets.source import DatasetSource, FileOptions

TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_FILES = ("test_batch",)
_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"), ("numpy", "dtype"),
    ("_codecs", "encode"),  # how pickle protocol 2 writes bytes from Python 3: str -> bytes, no side effects
}


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickler restricted to plain containers and numpy arrays."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"CIFAR batch refers to {module}.{name}, which is not a numpy array type")


def read_batch(path: str | os.PathLike[str]) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR-10 batch file -> ``(images (N, 3, 32, 32) uint8, labels (N,) int64)``."""
    with open(path, "rb") as f:
        d = _ArrayUnpickler(f, encoding="bytes").load()
    if not isinstance(d, dict):
        raise ValueError(f"{path}: expected a pickled dict, got {type(d).__name__}")
    data = d.get(b"data", d.get("data"))
    labels = d.get(b"labels", d.get("labels"))
    if data is None or labels is None:
        raise ValueError(f"{path}: batch dict lacks 'data' or 'labels' (keys: {sorted(map(str, d))})")
    x = np.asarray(data, dtype=np.uint8)
    y = np.asarray(labels, dtype=np.int64)
    if x.ndim != 2 or x.shape[1] != 3 * 32 * 32 or len(x) != len(y):
        raise ValueError(f"{path}: data {x.shape} and labels {y.shape}; expected (N, 3072) and (N,)")
    return x.reshape(-1, 3, 32, 32), y


def locate(root: str | os.PathLike[str] | None = None) -> Path:
    """The folder holding the six CIFAR-10 batch files; FileNotFoundError naming every folder searched."""
    env = ("INVBENCH_DATA", "CIFAR10_DIR")
    dirs = search_dirs(root, env, ("cifar-10-batches-py",))
    for d in dirs:
        if all((d / f).is_file() for f in (*TRAIN_FILES, *TEST_FILES)):
            return d
    raise FileNotFoundError(
        "cifar10: no folder holds data_batch_1..5 and test_batch (CIFAR-10 python version); "
        f"{searched(dirs, root, env)}; "
        "get it with torchvision.datasets.CIFAR10(DIR, download=True) on a machine with network (or unpack "
        "cifar-10-python.tar.gz into DIR), then pass --data-dir DIR (or root=DIR) or set INVBENCH_DATA=DIR. "
        "Nothing is downloaded."
    )


def load_cifar10(root: str | os.PathLike[str] | None = None, n_train: int | None = None,
                 n_test: int | None = None) -> Dataset:
    """CIFAR-10 as (N, 3, 32, 32) 8-bit images with labels 0..9."""
    folder = locate(root)
    train = [read_batch(folder / f) for f in TRAIN_FILES]
    x_te, y_te = read_batch(folder / TEST_FILES[0])
    x_tr = np.concatenate([b[0] for b in train])
    y_tr = np.concatenate([b[1] for b in train])
    desc = (f"cifar10 from {folder}: (3, 32, 32) 8-bit images stored as k/256, dequantised x = (k + u)/256, "
            "u ~ U[0, 1); official train/test split.")
    return from_arrays("cifar10", x_tr, x_te, y_tr, y_te, levels=256, n_train=n_train, n_test=n_test,
                       description=desc, meta={"source": str(folder)}, num_classes=10)


class Cifar10Source(DatasetSource[FileOptions]):
    """``"cifar10"``; :meth:`info` finds the batch files without reading them."""

    Options = FileOptions
    name = "cifar10"

    def info(self, options: FileOptions, seed: int = 0) -> DatasetInfo:
        locate(options.root)
        return DatasetInfo(self.name, "image", (3, 32, 32), 10, 256)

    def read(self, options: FileOptions, seed: int) -> Dataset:
        return load_cifar10(root=options.root, n_train=options.n_train, n_test=options.n_test)


cifar10 = Cifar10Source()
