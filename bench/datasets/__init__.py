"""Data sets by name: :func:`load` and :func:`names`.

Names (see each module for the exact definition and the files it reads):

- generated 2-D densities with exact log-density and entropy (:mod:`bench.datasets.toy2d`): ``gaussians8``,
  ``checkerboard``, ``moons``, ``spirals``, ``rings`` (option ``noise``; ``seed`` draws the samples,
  defaults ``n_train=10000``, ``n_test=5000``);
- ``digits`` (1, 8, 8) and ``digits-flat`` (64,): scikit-learn's bundled 8x8 digits (:mod:`bench.datasets.digits`);
- ``fashion-mnist``, ``mnist``: IDX files (:mod:`bench.datasets.idx`); ``cifar10``: python batches
  (:mod:`bench.datasets.cifar`); found under ``root`` / ``$INVBENCH_DATA`` / conventional folders, never downloaded;
- any path ending in ``.npz`` or ``.npy``: a user's own arrays (:mod:`bench.datasets.arrays`).

What the models see: discrete data (digits, images, arrays with ``levels``) is stored as ``k / L`` and, once
dequantised by :meth:`Dataset.dequantize`, lies in ``[0, 1)``; continuous data is used as it is. Fixed splits
(digits, ``.npy``) and subsets (``n_train`` / ``n_test`` on file data) use a fixed seed, so ``seed`` only
changes generated data.

Optional pre-processing with a log-det: ``preprocess="logit"`` (with ``alpha``, default 0.05) sets
``Dataset.preprocess`` to :class:`LogitTransform`, ``y = logit(alpha + (1 - 2 alpha) x)`` (Dinh et al.,
"Density estimation using Real NVP", ICLR 2017, section 4.1, in the symmetric form common in flow code); the
task adds its log-det to the model's log-likelihood (``bench.units``).
"""

from __future__ import annotations

import difflib
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import Tensor

from bench.datasets.base import Dataset

__all__ = ["Dataset", "LogitTransform", "load", "names"]


@dataclass(frozen=True)
class LogitTransform:
    """``x -> y = logit(alpha + (1 - 2 alpha) x)`` elementwise, with ``log|det dy/dx|`` per example.

    ``x``: (N, ...) in ``[0, 1]``; returns ``(y (N, ...), ladj (N,))`` where
    ``ladj = sum_i [log(1 - 2 alpha) - log s_i - log(1 - s_i)]``, ``s = alpha + (1 - 2 alpha) x``.
    """

    alpha: float = 0.05

    def __post_init__(self) -> None:
        if not 0 < self.alpha < 0.5:
            raise ValueError(f"logit alpha must lie in (0, 0.5), got {self.alpha}")

    def __call__(self, x: Tensor) -> tuple[Tensor, Tensor]:
        s = self.alpha + (1 - 2 * self.alpha) * x
        y = torch.log(s) - torch.log1p(-s)
        elem = math.log(1 - 2 * self.alpha) - torch.log(s) - torch.log1p(-s)
        return y, elem.reshape(x.shape[0], -1).sum(1)

    def inverse(self, y: Tensor) -> Tensor:
        """``y -> x = (sigmoid(y) - alpha) / (1 - 2 alpha)``."""
        return (torch.sigmoid(y) - self.alpha) / (1 - 2 * self.alpha)


def _toy(name: str) -> Callable[..., Dataset]:
    def build(root: str | None, seed: int, n_train: int | None, n_test: int | None, **opt: Any) -> Dataset:
        from bench.datasets.toy2d import load_toy

        return load_toy(name, seed=seed, n_train=n_train, n_test=n_test, **opt)

    return build


def _digits(flat: bool) -> Callable[..., Dataset]:
    def build(root: str | None, seed: int, n_train: int | None, n_test: int | None) -> Dataset:
        from bench.datasets.digits import load_digits

        return load_digits(flat=flat, n_train=n_train, n_test=n_test)

    return build


def _idx(name: str) -> Callable[..., Dataset]:
    def build(root: str | None, seed: int, n_train: int | None, n_test: int | None) -> Dataset:
        from bench.datasets.idx import load_idx_dataset

        return load_idx_dataset(name, root=root, n_train=n_train, n_test=n_test)

    return build


def _cifar10(root: str | None, seed: int, n_train: int | None, n_test: int | None) -> Dataset:
    from bench.datasets.cifar import load_cifar10

    return load_cifar10(root=root, n_train=n_train, n_test=n_test)


_LOADERS: dict[str, Callable[..., Dataset]] = {
    **{n: _toy(n) for n in ("gaussians8", "checkerboard", "moons", "spirals", "rings")},
    "digits": _digits(False),
    "digits-flat": _digits(True),
    "fashion-mnist": _idx("fashion-mnist"),
    "mnist": _idx("mnist"),
    "cifar10": _cifar10,
}
_OPTIONS: dict[str, tuple[str, ...]] = {n: ("noise",) for n in ("gaussians8", "checkerboard", "moons", "spirals",
                                                                 "rings")}


def names() -> list[str]:
    """Every named data set (user files are loaded by path and not listed)."""
    return list(_LOADERS)


def _is_path(name: str) -> bool:
    return name.endswith((".npz", ".npy")) or os.sep in name or (os.altsep is not None and os.altsep in name)


def load(name: str, *, root: str | None = None, seed: int = 0, n_train: int | None = None,
         n_test: int | None = None, **options: Any) -> Dataset:
    """Load a data set by name (:func:`names`) or by path to a ``.npz`` / ``.npy`` file.

    ``root``: folder to search first for file-backed data sets. ``seed``: sampling seed of generated data.
    ``n_train`` / ``n_test``: sizes (generated data) or fixed subsets (file data). ``options``: per data set
    (``noise`` for 2-D densities) plus ``preprocess`` (``None`` or ``"logit"``) and ``alpha`` for the logit.
    Unknown names raise KeyError listing near matches; unknown options raise ValueError.
    """
    preprocess = options.pop("preprocess", None)
    alpha = options.pop("alpha", None)
    if name in _LOADERS:
        allowed = _OPTIONS.get(name, ())
        bad = sorted(set(options) - set(allowed))
        if bad:
            raise ValueError(f"unknown option(s) {bad} for data set {name!r}; accepted: "
                             f"{', '.join([*allowed, 'preprocess', 'alpha']) }")
        ds = _LOADERS[name](root, seed, n_train, n_test, **options)
    elif _is_path(name):
        if options:
            raise ValueError(f"unknown option(s) {sorted(options)} for a data file; accepted: preprocess, alpha")
        from bench.datasets.arrays import load_file

        ds = load_file(name, n_train=n_train, n_test=n_test)
    else:
        near = difflib.get_close_matches(name, names(), n=3, cutoff=0.5)
        hint = f"did you mean {', '.join(near)}?" if near else f"known: {', '.join(names())}"
        raise KeyError(f"unknown data set {name!r}; {hint} (or give a path to a .npz/.npy file)")
    return _with_preprocess(ds, preprocess, alpha)


def _with_preprocess(ds: Dataset, preprocess: str | None, alpha: float | None) -> Dataset:
    if preprocess in (None, "none"):
        if alpha is not None:
            raise ValueError("alpha only applies with preprocess='logit'")
        return ds
    if preprocess != "logit":
        raise ValueError(f"unknown preprocess {preprocess!r}; accepted: None, 'logit'")
    lo = min(float(ds.train_x.min()), float(ds.test_x.min()))
    top = 1.0 - 1.0 / ds.levels if ds.levels else 1.0
    hi = max(float(ds.train_x.max()), float(ds.test_x.max()))
    if lo < 0 or hi > top + 1e-6:
        raise ValueError(f"preprocess='logit' needs data in [0, 1]; {ds.name} spans [{lo:.3g}, {hi:.3g}]")
    t = LogitTransform(0.05 if alpha is None else float(alpha))
    desc = (f"{ds.description} Pre-processing: y = logit(alpha + (1 - 2 alpha) x), alpha = {t.alpha}, "
            "its log-det added to the log-likelihood.")
    return replace(ds, preprocess=t, description=desc, meta={**ds.meta, "preprocess": "logit", "alpha": t.alpha})
