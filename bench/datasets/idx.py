"""MNIST and Fashion-MNIST from the original IDX files (LeCun et al.'s format), read with numpy; no download.

IDX format: a 4-byte magic ``0x00 0x00 <type> <ndim>``, then ``ndim`` big-endian uint32 sizes, then the data
in C order, big-endian (type ``0x08`` uint8, ``0x09`` int8, ``0x0B`` int16, ``0x0C`` int32, ``0x0D`` float32,
``0x0E`` float64). Files may be gzip-compressed (``.gz``, as distributed and as Debian installs them).

Files looked for (each as ``NAME`` or ``NAME.gz``): ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte``. Search order, first folder holding all four wins:

- ``"fashion-mnist"``: ``root``; ``$INVBENCH_DATA``; ``$FASHION_MNIST_DIR``; each of those also with the
  sub-folders ``FashionMNIST/raw`` (torchvision's layout) and ``fashion-mnist``; then
  ``/usr/share/datasets/fashion-mnist`` (Debian's ``dataset-fashion-mnist`` package).
- ``"mnist"``: ``root``; ``$INVBENCH_DATA``; ``$MNIST_DIR``; sub-folders ``MNIST/raw`` and ``mnist``;
  then ``/usr/share/datasets/mnist``.

Images are ``(N, 1, 28, 28)``, 8-bit: ``levels = 256``, stored as ``k / 256``, dequantised ``x = (k + u) / 256``.
The official 60000 / 10000 train / test split is kept; ``n_train`` / ``n_test`` take a fixed random subset.
"""

from __future__ import annotations

import gzip
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bench.datasets.arrays import from_arrays, search_dirs, searched
from bench.datasets.base import Dataset, DatasetInfo
from bench.datasets.source import DatasetSource, FileOptions, check_sizes

_DTYPES: dict[int, str] = {0x08: "u1", 0x09: "i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_CODES: dict[str, int] = {"uint8": 0x08, "int8": 0x09, "int16": 0x0B, "int32": 0x0C, "float32": 0x0D, "float64": 0x0E}
FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def _read_bytes(path: Path) -> bytes:
    raw = path.read_bytes()
    return gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw


def read_idx_header(path: str | os.PathLike[str]) -> tuple[tuple[int, ...], np.dtype]:
    """``(shape, dtype)`` from an IDX file's header, reading only its first bytes (gzip or not)."""
    path = Path(path)
    with open(path, "rb") as raw:
        gz = raw.read(2) == b"\x1f\x8b"
    with (gzip.open(path, "rb") if gz else open(path, "rb")) as fh:
        magic = fh.read(4)
        if len(magic) < 4 or magic[0] != 0 or magic[1] != 0 or magic[2] not in _DTYPES:
            raise ValueError(f"{path}: not an IDX file (magic bytes {magic.hex()})")
        sizes = fh.read(4 * magic[3])
    if len(sizes) < 4 * magic[3]:
        raise ValueError(f"{path}: truncated IDX header")
    shape = tuple(int(n) for n in np.frombuffer(sizes, dtype=">u4"))
    return shape, np.dtype(_DTYPES[magic[2]]).newbyteorder("=")


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an IDX file (gzip-compressed or not, detected from its first bytes) into a numpy array."""
    path = Path(path)
    data = _read_bytes(path)
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _DTYPES:
        raise ValueError(f"{path}: not an IDX file (magic bytes {data[:4].hex()})")
    ndim = data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise ValueError(f"{path}: truncated IDX header")
    shape = tuple(int(s) for s in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    dtype = np.dtype(_DTYPES[data[2]])
    count = int(np.prod(shape)) if shape else 1
    if len(data) - header != count * dtype.itemsize:
        raise ValueError(f"{path}: IDX header says shape {shape} ({count * dtype.itemsize} bytes), "
                         f"file holds {len(data) - header} bytes of data")
    arr = np.frombuffer(data, dtype=dtype, count=count, offset=header).reshape(shape)
    return arr.astype(dtype.newbyteorder("="))


def write_idx(path: str | os.PathLike[str], array: np.ndarray) -> None:
    """Write ``array`` as an IDX file; gzip-compressed when ``path`` ends in ``.gz`` (used by tests and users)."""
    arr = np.asarray(array)
    if arr.dtype.name not in _CODES:
        raise ValueError(f"IDX cannot hold dtype {arr.dtype}")
    code = _CODES[arr.dtype.name]
    payload = (bytes([0, 0, code, arr.ndim]) + np.asarray(arr.shape, dtype=">u4").tobytes()
               + arr.astype(np.dtype(_DTYPES[code])).tobytes())
    path = Path(path)
    path.write_bytes(gzip.compress(payload) if path.suffix == ".gz" else payload)


@dataclass(frozen=True)
class _Source:
    name: str
    env_var: str
    subdirs: tuple[str, ...]
    system_dir: str
    how_to_get: str


_SOURCES: dict[str, _Source] = {
    "fashion-mnist": _Source(
        "fashion-mnist", "FASHION_MNIST_DIR", ("FashionMNIST/raw", "fashion-mnist"),
        "/usr/share/datasets/fashion-mnist",
        "`apt-get install dataset-fashion-mnist` (Debian/Ubuntu), or torchvision.datasets.FashionMNIST(DIR, "
        "download=True) on a machine with network",
    ),
    "mnist": _Source(
        "mnist", "MNIST_DIR", ("MNIST/raw", "mnist"), "/usr/share/datasets/mnist",
        "torchvision.datasets.MNIST(DIR, download=True) on a machine with network",
    ),
}


def _find(folder: Path, stem: str) -> Path | None:
    for cand in (folder / stem, folder / f"{stem}.gz"):
        if cand.is_file():
            return cand
    return None


def locate(name: str, root: str | os.PathLike[str] | None = None) -> dict[str, Path]:
    """The four IDX files of ``name`` (``"mnist"`` or ``"fashion-mnist"``) from the first folder holding all.

    Raises FileNotFoundError with a one-line message naming every folder searched and how to get the data.
    """
    src = _SOURCES[name]
    dirs = search_dirs(root, ("INVBENCH_DATA", src.env_var), src.subdirs, (src.system_dir,))
    for d in dirs:
        found = {stem: _find(d, stem) for stem in FILES}
        if all(found.values()):
            return {k: v for k, v in found.items() if v is not None}
    raise FileNotFoundError(
        f"{name}: no folder holds all of {', '.join(f + '[.gz]' for f in FILES)}; "
        f"{searched(dirs, root, ('INVBENCH_DATA', src.env_var))}; get it with {src.how_to_get}, "
        "then pass --data-dir DIR (or root=DIR) or set INVBENCH_DATA=DIR. Nothing is downloaded."
    )


def load_idx_dataset(name: str, root: str | os.PathLike[str] | None = None, n_train: int | None = None,
                     n_test: int | None = None) -> Dataset:
    """``"mnist"`` or ``"fashion-mnist"`` as (N, 1, 28, 28) 8-bit images with labels 0..9."""
    files = locate(name, root)
    x_tr, y_tr = read_idx(files[FILES[0]]), read_idx(files[FILES[1]])
    x_te, y_te = read_idx(files[FILES[2]]), read_idx(files[FILES[3]])
    for x, y, split in ((x_tr, y_tr, "train"), (x_te, y_te, "t10k")):
        if x.ndim != 3 or y.ndim != 1 or len(x) != len(y) or x.dtype != np.uint8:
            raise ValueError(f"{name}: {split} files hold images {x.shape} {x.dtype} and labels {y.shape}; "
                             "expected (N, H, W) uint8 and (N,)")
    folder = files[FILES[0]].parent
    desc = (f"{name} from IDX files in {folder}: (1, {x_tr.shape[1]}, {x_tr.shape[2]}) 8-bit images stored as k/256, "
            "dequantised x = (k + u)/256, u ~ U[0, 1); official train/test split.")
    return from_arrays(name, x_tr[:, None], x_te[:, None], y_tr, y_te, levels=256, n_train=n_train, n_test=n_test,
                       description=desc, meta={"source": str(folder)}, num_classes=10)


class IdxSource(DatasetSource[FileOptions]):
    """``"mnist"`` or ``"fashion-mnist"``; :meth:`info` finds the files and reads only their headers."""

    Options = FileOptions

    def __init__(self, name: str) -> None:
        self.name = name

    def info(self, options: FileOptions, seed: int = 0) -> DatasetInfo:
        files = locate(self.name, options.root)
        (train, dtype), (test, _) = (read_idx_header(files[FILES[i]]) for i in (0, 2))
        if len(train) != 3 or len(test) != 3 or dtype != np.uint8:
            raise ValueError(f"{self.name}: {files[FILES[0]]} holds images {train} {dtype}; expected (N, H, W) uint8")
        check_sizes(self.name, options, train[0], test[0])
        return DatasetInfo(self.name, "image", (1, train[1], train[2]), 10, 256)

    def read(self, options: FileOptions, seed: int) -> Dataset:
        return load_idx_dataset(self.name, root=options.root, n_train=options.n_train, n_test=options.n_test)


fashion_mnist = IdxSource("fashion-mnist")
mnist = IdxSource("mnist")
