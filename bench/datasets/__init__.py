"""Data sets by name: :func:`load`, :func:`info` (metadata without the arrays), :func:`names`, :func:`source`.

Names (see each module for the exact definition and the files it reads):

- generated 2-D densities with exact log-density and entropy (:mod:`bench.datasets.toy2d`): ``gaussians8``,
  ``checkerboard``, ``moons``, ``spirals``, ``rings`` (option ``noise``; ``seed`` draws the samples,
  defaults ``n_train=10000``, ``n_test=5000``);
- ``digits`` (1, 8, 8) and ``digits-flat`` (64,): scikit-learn's bundled 8x8 digits (:mod:`bench.datasets.digits`);
- ``fashion-mnist``, ``mnist``: IDX files (:mod:`bench.datasets.idx`); ``cifar10``: python batches
  (:mod:`bench.datasets.cifar`); found under ``root`` / ``$INVBENCH_DATA`` / conventional folders, never downloaded;
- any path ending in ``.npz`` or ``.npy`` (absolute, or relative to the current directory): a user's own arrays
  (:mod:`bench.datasets.arrays`, option ``levels`` for integer data);
- plug-ins: the entry-point group ``invertible_bench.datasets`` and ``"module:attr"`` strings, naming a
  :class:`~bench.datasets.source.DatasetSource` instance or a function ``fn(seed=..., **options) -> Dataset``.

The names are a :class:`models.registry.Registry` (:data:`registry`) of sources; each source declares its options
as a dataclass (:meth:`DatasetSource.parse` validates a suite's table: an unknown key is one line with the near
names) and gives its :class:`DatasetInfo` (kind, shape, classes, levels) without loading the arrays, so the runner
checks which tasks a model supports before any compute and loads each data set only in the workers.

What the models see: discrete data (digits, images, arrays with ``levels``) is stored as ``k / L`` and, once
dequantised by :meth:`Dataset.dequantize`, lies in ``[0, 1)``; continuous data is used as it is. Fixed splits
(digits, ``.npy``) and subsets (``n_train`` / ``n_test`` on file data) use a fixed seed, so ``seed`` only
changes generated data. Optional pre-processing with a log-det: ``preprocess = "logit"`` with ``alpha``
(:mod:`bench.datasets.preprocess`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from bench.datasets.base import Dataset, DatasetInfo
from bench.datasets.preprocess import LogitTransform
from bench.datasets.source import CallableSource, DatasetSource
from models.registry import Registry, is_target

__all__ = ["Dataset", "DatasetInfo", "DatasetSource", "LogitTransform", "info", "is_path", "load", "load_table",
           "names", "parse_options", "registry", "source"]

ENTRY_POINT_GROUP = "invertible_bench.datasets"

_BUILTIN: dict[str, str] = {
    "gaussians8": "bench.datasets.toy2d:gaussians8",
    "checkerboard": "bench.datasets.toy2d:checkerboard",
    "moons": "bench.datasets.toy2d:moons",
    "spirals": "bench.datasets.toy2d:spirals",
    "rings": "bench.datasets.toy2d:rings",
    "digits": "bench.datasets.digits:digits",
    "digits-flat": "bench.datasets.digits:digits_flat",
    "fashion-mnist": "bench.datasets.idx:fashion_mnist",
    "mnist": "bench.datasets.idx:mnist",
    "cifar10": "bench.datasets.cifar:cifar10",
}


def is_loader(obj: object) -> bool:
    """Whether ``obj`` can be a data-set registry entry: a source instance or a (non-class) function."""
    return isinstance(obj, DatasetSource) or (callable(obj) and not isinstance(obj, type))


#: the data-set registry: sources (or plug-in loader functions) by name
registry: Registry[Any] = Registry(
    "data set", ENTRY_POINT_GROUP, _BUILTIN, check=is_loader,
    want="a bench.datasets.DatasetSource or a function returning a Dataset",
    name_rule=(r"^[a-z0-9]+([-_][a-z0-9]+)*$", "lower-case words joined by '-' or '_'"), sort=False,
    hint="or give a path to a .npz/.npy file, or 'module:function'")


def names() -> list[str]:
    """Every named data set (user files are loaded by path and not listed)."""
    return registry.names()


def is_path(name: str) -> bool:
    """Whether ``name`` names a user's file: it ends in ``.npz`` / ``.npy`` or contains a path separator."""
    seps = [s for s in (os.sep, os.altsep, "/") if s]
    return name.endswith((".npz", ".npy")) or any(s in name for s in seps)


def source(name: str) -> DatasetSource[Any]:
    """The source of a registered name, a ``"module:attr"`` plug-in or a path to a ``.npz`` / ``.npy`` file.

    Unknown names raise :class:`models.registry.UnknownName` (a KeyError) listing the near matches.
    """
    if is_path(name) and not is_target(name) and name not in registry:
        from bench.datasets.arrays import ArraySource

        return ArraySource(name)
    obj = registry.get(name)
    return obj if isinstance(obj, DatasetSource) else CallableSource(name, obj)


def _options(src: DatasetSource[Any], name: str, options: Mapping[str, Any], root: str | None, where: str | None
             ) -> Any:
    opts = {k: v for k, v in options.items() if v is not None}  # None from Python callers: the default
    if root is not None and "root" in src.option_names():
        opts.setdefault("root", str(root))
    return src.parse(opts, where or f"data set {name!r}")


def parse_options(name: str, options: Mapping[str, Any] | None, where: str | None = None) -> Any:
    """The validated loader options of ``name`` (an instance of its source's options dataclass); raises
    :class:`bench.options.OptionError` (one line, ``where`` first) or UnknownName."""
    return _options(source(name), name, options or {}, None, where)


def info(name: str, options: Mapping[str, Any] | None = None, *, seed: int = 0, root: str | None = None
         ) -> DatasetInfo:
    """What ``load(name, **options)`` would give, without loading the arrays (a plug-in function is loaded).

    Raises FileNotFoundError naming every place searched when the data is missing.
    """
    src = source(name)
    return src.info(_options(src, name, options or {}, root, None), seed)


def load(name: str, *, root: str | None = None, seed: int = 0, **options: Any) -> Dataset:
    """Load a data set by name (:func:`names`), ``"module:attr"`` plug-in or path to a ``.npz`` / ``.npy`` file.

    ``root``: folder to search first for file-backed data sets. ``seed``: sampling seed of generated data
    (an option ``seed`` wins). ``options``: the source's options (``n_train``, ``n_test``, ``preprocess``,
    ``alpha`` everywhere; ``noise`` for 2-D densities, ``levels`` for user files, ...); None means the default.
    Unknown names raise KeyError listing near matches; unknown options raise ValueError (OptionError).
    """
    src = source(name)
    return src.load(_options(src, name, options, root, None), seed)


def load_table(name: str, table: Mapping[str, Any] | None, *, seed: int = 0) -> Dataset:
    """Load with a suite's table of loader options (which may hold its own ``seed``, winning over ``seed``)."""
    src = source(name)
    return src.load(_options(src, name, table or {}, None, None), seed)
