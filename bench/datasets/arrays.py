"""Arrays into :class:`~bench.datasets.base.Dataset`: shared helpers and a user's own ``.npz`` / ``.npy`` files.

The helpers here are used by every file-backed loader (digits, IDX, CIFAR-10):

- :func:`discrete_to_tensor` maps integer levels ``k`` in ``[0, L)`` to ``k / L`` (float32), the stored form
  of discrete data (``Dataset.dequantize`` later adds ``u / L``, ``u ~ U[0, 1)``, so ``x = (k + u) / L``);
- :func:`subset` draws a fixed random subset when ``n_train`` / ``n_test`` ask for fewer examples;
- :func:`search_dirs` lists the folders a loader looks in, in order (explicit root, environment variables,
  conventional sub-folders, system folders), so the "not found" error can name every one of them.

A user's own data set is ``load("path/to/file.npz")`` with keys ``x_train``, ``x_test`` and optionally
``y_train``, ``y_test``, ``levels``; or ``load("path/to/file.npy")``, one array split 80/20 by a fixed seed.
Example arrays are ``(N, D)`` (vectors), ``(N, C, H, W)`` (images) or ``(N, H, W)`` (images, one channel
added). With ``levels = L`` the arrays hold integers ``k`` in ``[0, L)``; without, they are continuous values
used as they are.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from bench.datasets.base import Dataset

#: seed of every fixed split and subset: the same examples for every run seed, so seeds vary only the model
SPLIT_SEED = 0


def discrete_to_tensor(k: np.ndarray, levels: int) -> Tensor:
    """Integer levels ``k`` (any shape, values in ``[0, levels)``) -> float32 tensor ``k / levels``."""
    arr = np.asarray(k)
    if arr.size and (arr.min() < 0 or arr.max() >= levels):
        raise ValueError(f"discrete values must lie in [0, {levels}), got [{arr.min()}, {arr.max()}]")
    if not np.issubdtype(arr.dtype, np.integer):
        if not np.all(np.isfinite(arr)) or not np.all(arr == np.round(arr)):
            raise ValueError(f"with levels={levels} the arrays must hold integer levels k, got non-integer values")
    return torch.from_numpy(arr.astype(np.float32) / np.float32(levels))


def labels_to_tensor(y: np.ndarray | None, n: int, what: str) -> Tensor | None:
    """Labels ``(N,)`` of non-negative integers -> int64 tensor; None stays None."""
    if y is None:
        return None
    arr = np.asarray(y)
    if arr.ndim != 1 or arr.shape[0] != n:
        raise ValueError(f"{what} must have shape ({n},) to match its inputs, got {arr.shape}")
    if arr.size and not np.all(arr == np.round(arr)):
        raise ValueError(f"{what} must hold integer class labels")
    out = torch.from_numpy(arr.astype(np.int64))
    if out.numel() and int(out.min()) < 0:
        raise ValueError(f"{what} must be non-negative class indices, got min {int(out.min())}")
    return out


def subset(n_total: int, n: int | None, what: str, seed: int = SPLIT_SEED) -> np.ndarray:
    """Indices of a fixed random subset of size ``n`` out of ``n_total`` (all, in order, when ``n`` is None)."""
    if n is None or n == n_total:
        return np.arange(n_total)
    if n <= 0 or n > n_total:
        raise ValueError(f"{what}={n} is out of range: the split holds {n_total} examples")
    rng = np.random.default_rng(seed)
    return np.sort(rng.permutation(n_total)[:n])


def search_dirs(
    root: str | os.PathLike[str] | None,
    env_vars: Sequence[str],
    subdirs: Sequence[str],
    system_dirs: Sequence[str] = (),
) -> list[Path]:
    """Candidate folders in search order, without duplicates.

    For each base folder (``root``, then every path in each environment variable, ``os.pathsep``-separated)
    the base itself and then ``base/<subdir>`` for each of ``subdirs``; finally ``system_dirs``.
    """
    bases: list[Path] = []
    if root is not None:
        bases.append(Path(root).expanduser())
    for var in env_vars:
        for part in os.environ.get(var, "").split(os.pathsep):
            if part:
                bases.append(Path(part).expanduser())
    out: list[Path] = []
    for base in bases:
        for cand in [base, *(base / s for s in subdirs)]:
            if cand not in out:
                out.append(cand)
    for sd in system_dirs:
        if Path(sd) not in out:
            out.append(Path(sd))
    return out


def searched(dirs: Sequence[Path], root: str | os.PathLike[str] | None, env_vars: Sequence[str]) -> str:
    """One line naming every folder searched and where the search came from (for "not found" errors)."""
    origin = ", ".join([f"root={str(root) if root is not None else 'not given'}",
                        *(f"${v}={os.environ.get(v) or 'unset'}" for v in env_vars)])
    return f"looked in: {', '.join(str(d) for d in dirs) or 'nowhere'} ({origin})"


def _example_array(x: np.ndarray, what: str) -> tuple[np.ndarray, str]:
    """Check ``x``'s rank; returns ``(x, kind)`` with (N, H, W) promoted to (N, 1, H, W)."""
    if x.ndim == 2:
        return x, "vector"
    if x.ndim == 3:
        return x[:, None], "image"
    if x.ndim == 4:
        return x, "image"
    raise ValueError(f"{what} must be (N, D), (N, H, W) or (N, C, H, W), got shape {x.shape}")


def from_arrays(
    name: str,
    x_train: np.ndarray,
    x_test: np.ndarray,
    y_train: np.ndarray | None = None,
    y_test: np.ndarray | None = None,
    levels: int | None = None,
    n_train: int | None = None,
    n_test: int | None = None,
    description: str = "",
    meta: dict[str, object] | None = None,
    num_classes: int | None = None,
) -> Dataset:
    """Build a :class:`Dataset` from numpy arrays (shapes as in the module docstring), subsetting if asked.

    ``num_classes`` defaults to ``1 + max label`` over both splits (None without labels).
    """
    x_train, kind = _example_array(np.asarray(x_train), "x_train")
    x_test, kind_test = _example_array(np.asarray(x_test), "x_test")
    if x_train.shape[1:] != x_test.shape[1:] or kind != kind_test:
        raise ValueError(f"x_train and x_test examples differ in shape: {x_train.shape[1:]} vs {x_test.shape[1:]}")
    if (y_train is None) != (y_test is None):
        raise ValueError("give labels for both splits (y_train and y_test) or for neither")
    i_tr = subset(len(x_train), n_train, "n_train")
    i_te = subset(len(x_test), n_test, "n_test")
    if levels is not None:
        if int(levels) != levels or levels < 2:
            raise ValueError(f"levels must be an integer >= 2, got {levels}")
        levels = int(levels)
        tr, te = discrete_to_tensor(x_train[i_tr], levels), discrete_to_tensor(x_test[i_te], levels)
    else:
        tr = torch.from_numpy(np.ascontiguousarray(x_train[i_tr], dtype=np.float32))
        te = torch.from_numpy(np.ascontiguousarray(x_test[i_te], dtype=np.float32))
        if not (torch.isfinite(tr).all() and torch.isfinite(te).all()):
            raise ValueError(f"{name}: inputs contain NaN or infinite values")
    ytr = labels_to_tensor(y_train, len(x_train), "y_train")
    yte = labels_to_tensor(y_test, len(x_test), "y_test")
    ytr = None if ytr is None else ytr[torch.from_numpy(i_tr)]
    yte = None if yte is None else yte[torch.from_numpy(i_te)]
    if ytr is None:
        num_classes = None
    elif num_classes is None and yte is not None:
        num_classes = int(max(ytr.max() if ytr.numel() else 0, yte.max() if yte.numel() else 0)) + 1
    info = dict(meta or {})
    info.update(n_train_available=len(x_train), n_test_available=len(x_test), subset_seed=SPLIT_SEED)
    return Dataset(
        name=name, kind=kind, train_x=tr, test_x=te, train_y=ytr, test_y=yte, num_classes=num_classes,
        levels=levels, description=description, meta=info,
    )


def load_file(path: str, n_train: int | None = None, n_test: int | None = None) -> Dataset:
    """A user's ``.npz`` (keys ``x_train``, ``x_test``; optional ``y_train``, ``y_test``, ``levels``) or
    ``.npy`` (one array ``(N, ...)``, split 80/20 by the fixed seed ``SPLIT_SEED``) as a :class:`Dataset`."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise FileNotFoundError(f"no such data file: {p}")
    name = p.name
    if p.suffix == ".npy":
        x = np.load(p, allow_pickle=False)
        if x.ndim < 2 or len(x) < 2:
            raise ValueError(f"{p}: a .npy data set must be an array (N, ...) with N >= 2, got shape {x.shape}")
        perm = np.random.default_rng(SPLIT_SEED).permutation(len(x))
        n_te = max(1, round(0.2 * len(x)))
        tr_idx, te_idx = np.sort(perm[n_te:]), np.sort(perm[:n_te])
        desc = f"{p}: one array split 80/20 (fixed seed {SPLIT_SEED}); continuous values used as they are."
        return from_arrays(name, x[tr_idx], x[te_idx], n_train=n_train, n_test=n_test, description=desc,
                           meta={"source": str(p), "train_index": tr_idx.tolist(), "test_index": te_idx.tolist()})
    if p.suffix != ".npz":
        raise ValueError(f"{p}: a data file must be .npz (x_train, x_test, ...) or .npy (one array)")
    with np.load(p, allow_pickle=False) as z:
        keys = set(z.files)
        missing = {"x_train", "x_test"} - keys
        if missing:
            raise ValueError(f"{p}: missing key(s) {sorted(missing)}; found {sorted(keys)}; "
                             "expected x_train, x_test and optionally y_train, y_test, levels")
        unknown = keys - {"x_train", "x_test", "y_train", "y_test", "levels"}
        if unknown:
            raise ValueError(f"{p}: unexpected key(s) {sorted(unknown)}; "
                             "expected x_train, x_test and optionally y_train, y_test, levels")
        levels_arr = z["levels"] if "levels" in keys else None
        levels = None
        if levels_arr is not None:
            if levels_arr.size != 1:
                raise ValueError(f"{p}: 'levels' must be a scalar, got shape {levels_arr.shape}")
            levels = int(levels_arr.reshape(()))
        arrays = {k: z[k] for k in ("x_train", "x_test", "y_train", "y_test") if k in keys}
    desc = (f"{p}: user arrays; " + (f"{levels} discrete levels stored as k/{levels}, dequantised x = (k + u)/{levels}"
                                     if levels else "continuous values used as they are") + ".")
    return from_arrays(name, arrays["x_train"], arrays["x_test"], arrays.get("y_train"), arrays.get("y_test"),
                       levels=levels, n_train=n_train, n_test=n_test, description=desc, meta={"source": str(p)})
