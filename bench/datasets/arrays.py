"""Arrays into :class:`~bench.datasets.base.Dataset`: shared helpers and a user's own ``.npz`` / ``.npy`` files.

The helpers here are used by every file-backed loader (digits, IDX, CIFAR-10):

- :func:`discrete_to_tensor` maps integer levels ``k`` in ``[0, L)`` to ``k / L`` (float32), the stored form
  of discrete data (``Dataset.dequantize`` later adds ``u / L``, ``u ~ U[0, 1)``, so ``x = (k + u) / L``);
- :func:`subset` draws a fixed random subset when ``n_train`` / ``n_test`` ask for fewer examples;
- :func:`search_dirs` lists the folders a loader looks in, in order (explicit root, environment variables,
  conventional sub-folders, system folders), so the "not found" error can name every one of them.

A user's own data set (:class:`ArraySource`) is ``load("path/to/file.npz")`` with keys ``x_train``, ``x_test``
and optionally ``y_train``, ``y_test``, ``levels``; or ``load("path/to/file.npy")``, one array split 80/20 by a
fixed seed. Relative paths are resolved against the current directory. Example arrays are ``(N, D)`` (vectors),
``(N, C, H, W)`` (images) or ``(N, H, W)`` (images, one channel added). With ``levels = L`` (the option, e.g.
``levels = 256`` in a suite's ``[datasets."x.npz"]`` table, or the ``levels`` key of the ``.npz``) the arrays hold
integers ``k`` in ``[0, L)``; without, they are continuous values used as they are, and integer arrays are an
error (integer images read as continuous values would give meaningless likelihoods). :func:`file_info` reads
the metadata from the array headers (and the small label and ``levels`` arrays) without reading the inputs;
:func:`checked_file_info` (the source's ``info``, which the runner reads before any compute) also streams the
inputs in chunks for NaN and infinities; every error names the file.
"""

from __future__ import annotations

import contextlib
import os
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import numpy as np
import torch
from torch import Tensor

from bench.datasets.base import Dataset, DatasetInfo
from bench.datasets.source import DatasetSource, LoaderOptions, check_sizes
from bench.options import opt

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
        with np.errstate(over="ignore"):  # a value beyond float32's range becomes inf, refused below
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


@dataclass(frozen=True)
class ArrayOptions(LoaderOptions):
    """Options of a user's ``.npz`` / ``.npy`` file."""

    levels: int | None = field(default=None, metadata=opt(
        "discrete levels L: the arrays hold integers k in [0, L) (an .npz may store a 'levels' key instead)", min=2))


_NPZ_KEYS = ("x_train", "x_test", "y_train", "y_test", "levels")
_EXPECTED = "expected x_train, x_test and optionally y_train, y_test, levels"


def _data_file(path: str) -> Path:
    """The file ``path`` names (absolute); FileNotFoundError naming where it was looked for."""
    given = Path(path).expanduser()
    p = given.absolute()
    if not p.is_file():
        how = "" if given.is_absolute() else (
            f" (relative paths are resolved against the current directory {Path.cwd()})")
        raise FileNotFoundError(f"no such data file: {p}{how}")
    if p.suffix not in (".npz", ".npy"):
        raise ValueError(f"{p}: a data file must be .npz (x_train, x_test, ...) or .npy (one array)")
    return p


def _read_header(fh: IO[bytes]) -> tuple[tuple[int, ...], bool, np.dtype]:
    """``(shape, fortran_order, dtype)`` from the header of a ``.npy`` stream, without reading the data."""
    version = np.lib.format.read_magic(fh)
    read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    shape, fortran, dtype = read(fh)
    return tuple(int(n) for n in shape), bool(fortran), np.dtype(dtype)


def _array_header(fh: IO[bytes]) -> tuple[tuple[int, ...], np.dtype]:
    """``(shape, dtype)`` from the header of a ``.npy`` stream, without reading the data."""
    shape, _, dtype = _read_header(fh)
    return shape, dtype


def _headers(p: Path) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """Key -> ``(shape, dtype)`` of every array in a ``.npz`` (keys as ``np.savez`` names them), or ``{"x": ...}``
    for a ``.npy``."""
    if p.stat().st_size == 0:
        raise ValueError(f"{p}: the file is empty (0 bytes)")
    try:
        if p.suffix == ".npy":
            with open(p, "rb") as fh:
                return {"x": _array_header(fh)}
        out = {}
        with zipfile.ZipFile(p) as zf:
            for member in zf.namelist():
                with zf.open(member) as fh:
                    out[member.removesuffix(".npy")] = _array_header(fh)
        return out
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
        raise ValueError(f"{p}: cannot read it as a {p.suffix} file: {exc}") from exc


def _small_arrays(p: Path, keys: Sequence[str]) -> dict[str, np.ndarray]:
    """The arrays ``keys`` of a ``.npz`` (labels, levels: small next to the inputs, which are not read)."""
    if not keys:
        return {}
    with np.load(p, allow_pickle=False) as z:
        return {k: np.asarray(z[k]) for k in keys}


def _levels_hint(p: Path, name: str, what: str, dtype: np.dtype) -> str:
    """The error for integer inputs without levels: how to declare them (``name``: the path as the user wrote it)."""
    levels = 2 if dtype == np.bool_ else 256 if dtype.itemsize == 1 else None
    shown = str(levels) if levels else "L"
    where = f'`levels = {shown}` in the data set\'s table of a suite ([datasets."{name}"])'
    store = f"a `levels` key in the .npz (np.savez(..., levels={shown}))" if p.suffix == ".npz" else \
        "store the array in a .npz with a `levels` key"
    return (f"{p}: {what} holds integers ({dtype}) but no levels are declared, so they would be read as "
            f"continuous values; declare the number of discrete levels with {where} or {store}; "
            "for continuous data store floats")


def npy_test_size(n: int) -> int:
    """How many of a ``.npy``'s ``n`` rows its fixed 80/20 split puts in the test split."""
    return max(1, round(0.2 * n))


def npy_split(n: int) -> tuple[np.ndarray, np.ndarray]:
    """The fixed 80/20 split of a ``.npy``'s ``n`` rows: (train indices, test indices), each sorted."""
    perm = np.random.default_rng(SPLIT_SEED).permutation(n)
    n_te = npy_test_size(n)
    return np.sort(perm[n_te:]), np.sort(perm[:n_te])


#: about how many bytes :func:`checked_file_info` reads at a time
SCAN_BYTES = 1 << 24


def _first_nonfinite(fh: IO[bytes], rows: np.ndarray) -> int | None:
    """The first of ``rows`` (sorted indices) of the ``.npy`` stream ``fh`` whose values are not all finite in
    float32, reading about :data:`SCAN_BYTES` at a time; None when all are finite, and for a Fortran-ordered array
    (its rows are not contiguous; not read)."""
    shape, fortran, dtype = _read_header(fh)
    if fortran or not rows.size:
        return None
    row_items = int(np.prod(shape[1:], dtype=np.int64))
    row_bytes = max(1, row_items * dtype.itemsize)
    step = max(1, SCAN_BYTES // row_bytes)
    for start in range(0, shape[0], step):
        stop = min(start + step, shape[0])
        chunk = np.frombuffer(fh.read((stop - start) * row_bytes), dtype=dtype).reshape(stop - start, row_items)
        wanted = rows[np.searchsorted(rows, start):np.searchsorted(rows, stop)] - start
        if not wanted.size:
            continue
        with np.errstate(over="ignore"):
            bad = ~np.isfinite(chunk[wanted].astype(np.float32)).all(axis=1)
        if bad.any():
            return int(wanted[np.argmax(bad)] + start)
    return None


def checked_file_info(path: str, options: ArrayOptions | None = None) -> tuple[DatasetInfo, tuple[int, int]]:
    """:func:`file_info`, after checking that the continuous inputs a data set built from ``path`` with ``options``
    would use (its ``n_train`` / ``n_test`` subsets) hold no NaN and no value that is infinite in float32 (what
    :func:`from_arrays` refuses when the data set loads): ValueError naming the file, the array and the first such
    row. Streams the file, so no whole array is in memory; integer (``levels``) data are checked as integers when
    they load, and are not read here."""
    options = options or ArrayOptions()
    info, sizes = file_info(path, options)
    if info.levels is not None:
        return info, sizes
    n_train_total, n_test_total = sizes
    p = _data_file(path)
    if p.suffix == ".npy":
        tr, te = npy_split(n_train_total + n_test_total)
        parts = [("the array (its train split)", "", tr[subset(len(tr), options.n_train, "n_train")]),
                 ("the array (its test split)", "", te[subset(len(te), options.n_test, "n_test")])]
    else:
        parts = [("x_train", "x_train.npy", subset(n_train_total, options.n_train, "n_train")),
                 ("x_test", "x_test.npy", subset(n_test_total, options.n_test, "n_test"))]
    for what, member, rows in parts:
        with contextlib.ExitStack() as stack:
            fh: IO[bytes] = (stack.enter_context(open(p, "rb")) if not member
                             else stack.enter_context(stack.enter_context(zipfile.ZipFile(p)).open(member)))
            row = _first_nonfinite(fh, rows)
        if row is not None:
            raise ValueError(f"{p}: {what} holds NaN or infinite values (in float32), the first in row {row}")
    return info, sizes


def file_info(path: str, options: ArrayOptions | None = None) -> tuple[DatasetInfo, tuple[int, int]]:
    """``(metadata, (train size, test size))`` of a user's file, from its headers; every error names the file."""
    options = options or ArrayOptions()
    p = _data_file(path)
    heads = _headers(p)
    file_levels: int | None = None
    labels: dict[str, np.ndarray] = {}
    if p.suffix == ".npy":
        shape, dtype = heads["x"]
        if len(shape) < 2 or shape[0] < 2:
            raise ValueError(f"{p}: a .npy data set must be an array (N, ...) with N >= 2, got shape {shape}")
        n_test = npy_test_size(shape[0])
        xs = {"x": (shape, dtype)}
        sizes = (shape[0] - n_test, n_test)
    else:
        if not heads:
            raise ValueError(f"{p}: the archive holds no arrays; {_EXPECTED}")
        missing = sorted({"x_train", "x_test"} - set(heads))
        if missing:
            raise ValueError(f"{p}: missing key(s) {missing}; found {sorted(heads)}; {_EXPECTED}")
        unknown = sorted(set(heads) - set(_NPZ_KEYS))
        if unknown:
            raise ValueError(f"{p}: unexpected key(s) {unknown}; {_EXPECTED}")
        xs = {k: heads[k] for k in ("x_train", "x_test")}
        sizes = (xs["x_train"][0][0] if xs["x_train"][0] else 0, xs["x_test"][0][0] if xs["x_test"][0] else 0)
        small = _small_arrays(p, [k for k in ("y_train", "y_test", "levels") if k in heads])
        if "levels" in small:
            lv = small.pop("levels")
            if lv.size != 1 or not np.issubdtype(lv.dtype, np.number) or lv.reshape(()) != int(lv.reshape(())):
                raise ValueError(f"{p}: 'levels' must be one integer, got {lv!r}")
            file_levels = int(lv.reshape(()))
        labels = small
    levels = options.levels
    if file_levels is not None:
        if levels is not None and levels != file_levels:
            raise ValueError(f"{p}: the file's 'levels' key says {file_levels}, the data set's options say {levels}")
        if file_levels < 2:
            raise ValueError(f"{p}: 'levels' must be an integer >= 2, got {file_levels}")
        levels = file_levels
    kinds = set()
    examples = set()
    for key, (shape, dtype) in xs.items():
        what = "the array" if key == "x" else key
        if dtype.hasobject or not (np.issubdtype(dtype, np.number) or dtype == np.bool_):
            raise ValueError(f"{p}: {what} must hold numbers, got dtype {dtype}")
        if levels is None and (np.issubdtype(dtype, np.integer) or dtype == np.bool_):
            raise ValueError(_levels_hint(p, path, what, dtype))
        if len(shape) not in (2, 3, 4):
            raise ValueError(f"{p}: {what} must be (N, D), (N, H, W) or (N, C, H, W), got shape {shape}")
        kinds.add("vector" if len(shape) == 2 else "image")
        examples.add(shape[1:] if len(shape) != 3 else (1, *shape[1:]))
    if len(examples) != 1:
        raise ValueError(f"{p}: x_train and x_test examples differ in shape: "
                         f"{xs['x_train'][0][1:]} vs {xs['x_test'][0][1:]}")
    num_classes = _num_classes(p, labels, sizes)
    check_sizes(str(p), options, *sizes)
    return DatasetInfo(p.name, kinds.pop(), examples.pop(), num_classes, levels), sizes


def _num_classes(p: Path, labels: dict[str, np.ndarray], sizes: tuple[int, int]) -> int | None:
    """``1 + max label`` over both splits after checking the labels' shapes and values; None without labels."""
    if not labels:
        return None
    if len(labels) == 1:
        raise ValueError(f"{p}: give labels for both splits (y_train and y_test) or for neither; "
                         f"found only {next(iter(labels))}")
    top = 0
    for (key, y), n in zip(sorted(labels.items(), key=lambda kv: kv[0] != "y_train"), sizes, strict=True):
        if y.ndim != 1 or y.shape[0] != n:
            raise ValueError(f"{p}: {key} must have shape ({n},) to match its inputs, got {y.shape}")
        if y.size and (not np.issubdtype(y.dtype, np.number) or not np.all(y == np.round(y)) or y.min() < 0):
            raise ValueError(f"{p}: {key} must hold non-negative integer class labels")
        top = max(top, int(y.max()) if y.size else 0)
    return top + 1


def load_file(path: str, n_train: int | None = None, n_test: int | None = None,
              levels: int | None = None) -> Dataset:
    """A user's ``.npz`` (keys ``x_train``, ``x_test``; optional ``y_train``, ``y_test``, ``levels``) or
    ``.npy`` (one array ``(N, ...)``, split 80/20 by the fixed seed ``SPLIT_SEED``) as a :class:`Dataset`.

    ``levels`` declares integer data (as the ``levels`` key does). The headers are checked first
    (:func:`file_info`), so every error names the file.
    """
    info, _ = file_info(path, ArrayOptions(n_train=n_train, n_test=n_test, levels=levels))
    p = _data_file(path)
    kind = (f"{info.levels} discrete levels stored as k/{info.levels}, dequantised x = (k + u)/{info.levels}"
            if info.levels else "continuous values used as they are")
    try:
        if p.suffix == ".npy":
            x = np.load(p, allow_pickle=False)
            tr_idx, te_idx = npy_split(len(x))
            desc = f"{p}: one array split 80/20 (fixed seed {SPLIT_SEED}); {kind}."
            return from_arrays(info.name, x[tr_idx], x[te_idx], levels=info.levels, n_train=n_train, n_test=n_test,
                               description=desc, meta={"source": str(p), "train_index": tr_idx.tolist(),
                                                       "test_index": te_idx.tolist()})
        with np.load(p, allow_pickle=False) as z:
            arrays = {k: z[k] for k in ("x_train", "x_test", "y_train", "y_test") if k in z.files}
        return from_arrays(info.name, arrays["x_train"], arrays["x_test"], arrays.get("y_train"),
                           arrays.get("y_test"), levels=info.levels, n_train=n_train, n_test=n_test,
                           description=f"{p}: user arrays; {kind}.", meta={"source": str(p)})
    except ValueError as exc:
        raise ValueError(f"{p}: {exc}") from exc


class ArraySource(DatasetSource[ArrayOptions]):
    """A user's ``.npz`` / ``.npy`` file named by its path (absolute, or relative to the current directory)."""

    Options = ArrayOptions

    def __init__(self, path: str) -> None:
        self.name = path

    def info(self, options: ArrayOptions, seed: int = 0) -> DatasetInfo:
        """The metadata from the headers, after :func:`checked_file_info` has streamed the inputs the data set uses
        (so a NaN stops a run before any compute, once, instead of failing every cell)."""
        return checked_file_info(self.name, options)[0]

    def read(self, options: ArrayOptions, seed: int) -> Dataset:
        return load_file(self.name, options.n_train, options.n_test, levels=options.levels)
