"""The loader contract: a :class:`DatasetSource` declares its options, gives its metadata without loading the
arrays (:meth:`~DatasetSource.info`) and loads them (:meth:`~DatasetSource.load`).

Every built-in data set is a source (registered in ``bench.datasets``); a user's ``.npz`` / ``.npy`` file is a
:class:`bench.datasets.arrays.ArraySource`; a plug-in (entry point ``invertible_bench.datasets`` or a
``"module:attr"`` string) is either a source instance or a plain function ``fn(seed=..., **options) -> Dataset``
(wrapped in :class:`CallableSource`: its options are checked against the function's signature, and its metadata
costs one load, since a function cannot say what it returns without running).
"""

from __future__ import annotations

import dataclasses
import inspect
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Generic, Literal, TypeVar, cast

from bench.datasets.base import Dataset, DatasetInfo
from bench.datasets.preprocess import with_preprocess
from bench.options import OptionError, Options, near, opt

OptionsT = TypeVar("OptionsT", bound=Options)


@dataclass(frozen=True)
class LoaderOptions(Options):
    """Options every built-in data set and user file takes."""

    n_train: int | None = field(default=None, metadata=opt(
        "training examples: the sample size of generated data, a fixed random subset of file data (default: all)",
        min=1))
    n_test: int | None = field(default=None, metadata=opt("test examples, as n_train", min=1))
    preprocess: Literal["none", "logit"] = field(default="none", metadata=opt(
        "'logit': y = logit(alpha + (1 - 2 alpha) x) before the model, its log-det added to the log-likelihood"))
    alpha: float | None = field(default=None, metadata=opt(
        "the logit's alpha, in (0, 0.5) (default 0.05; only with preprocess = 'logit')", min=0, min_exclusive=True))

    def __post_init__(self) -> None:
        if self.alpha is not None:
            if self.preprocess != "logit":
                raise ValueError("alpha only applies with preprocess = 'logit'")
            if not self.alpha < 0.5:
                raise ValueError(f"alpha must lie in (0, 0.5), got {self.alpha}")


@dataclass(frozen=True)
class FileOptions(LoaderOptions):
    """Options of the data sets read from files found by a folder search (IDX, CIFAR-10)."""

    root: str | None = field(default=None, metadata=opt(
        "folder searched first, before $INVBENCH_DATA and the conventional folders"))


class DatasetSource(ABC, Generic[OptionsT]):
    """One data set: its options (``Options``), its metadata without the arrays, its arrays.

    ``info`` and ``load`` raise ``FileNotFoundError`` naming every place searched when the data is missing, and
    ``ValueError`` naming the file for data that cannot be used.
    """

    #: the options dataclass; :meth:`parse` returns an instance
    Options: ClassVar[type[Options]] = LoaderOptions
    name: str = ""

    def parse(self, data: Mapping[str, Any] | None, where: str) -> OptionsT:
        """The validated options (raises :class:`bench.options.OptionError`, one line)."""
        return cast(OptionsT, self.Options.parse(data or {}, where))

    def option_names(self) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(self.Options))

    @abstractmethod
    def info(self, options: OptionsT, seed: int = 0) -> DatasetInfo:
        """The data set's metadata, read without loading its arrays."""

    @abstractmethod
    def read(self, options: OptionsT, seed: int) -> Dataset:
        """The arrays, before pre-processing; ``seed`` draws generated data (fixed splits ignore it)."""

    def load(self, options: OptionsT, seed: int) -> Dataset:
        """The data set with its pre-processing applied."""
        ds = self.read(options, seed)
        if isinstance(options, LoaderOptions):
            ds = with_preprocess(ds, options.preprocess, options.alpha)
        return ds


def check_sizes(name: str, options: LoaderOptions, n_train_total: int, n_test_total: int) -> None:
    """``n_train`` / ``n_test`` against the sizes of a fixed split (ValueError naming the data set)."""
    for what, n, total in (("n_train", options.n_train, n_train_total), ("n_test", options.n_test, n_test_total)):
        if n is not None and n > total:
            raise ValueError(f"{name}: {what}={n} is out of range: the split holds {total} examples")


@dataclass(frozen=True)
class CallOptions(Options):
    """The keyword arguments of a plug-in loader function, checked against its signature."""

    kwargs: dict[str, Any] = field(default_factory=dict, metadata=opt("keyword arguments of the function"))


class CallableSource(DatasetSource[CallOptions]):
    """A plug-in function ``fn(seed=..., **options) -> Dataset`` (``seed`` passed when ``fn`` takes it; an
    option ``seed`` wins over the cell's). What it returns must be a :class:`Dataset` with finite inputs (else
    TypeError / ValueError, one line); the runner calls it once for the metadata before any compute."""

    Options = CallOptions

    def __init__(self, name: str, fn: Callable[..., Any]) -> None:
        self.name, self.fn = name, fn

    def _parameters(self) -> tuple[list[str], bool]:
        try:
            params = inspect.signature(self.fn).parameters
        except (TypeError, ValueError):  # no introspectable signature: accept everything
            return [], True
        names = [n for n, p in params.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
        return names, any(p.kind is p.VAR_KEYWORD for p in params.values())

    def parse(self, data: Mapping[str, Any] | None, where: str) -> CallOptions:
        names, open_ended = self._parameters()
        for key in data or {}:
            if not open_ended and key not in names:
                raise OptionError(f"{where}: unknown option {key!r}{near(str(key), names)} "
                                  f"(options: {', '.join(names) or 'none'})")
        return CallOptions(dict(data or {}))

    def read(self, options: CallOptions, seed: int) -> Dataset:
        names, open_ended = self._parameters()
        kwargs = dict(options.kwargs)
        if open_ended or "seed" in names:
            kwargs.setdefault("seed", seed)
        ds = self.fn(**kwargs)
        if not isinstance(ds, Dataset):
            raise TypeError(f"data set {self.name!r} returned {type(ds).__name__}, not a bench.datasets.Dataset")
        for what, x in (("train_x", ds.train_x), ("test_x", ds.test_x)):
            finite = x.reshape(len(x), -1).isfinite().all(dim=1)
            if not bool(finite.all()):
                row = int((~finite).nonzero()[0, 0])
                raise ValueError(f"data set {self.name!r} returned {what} with NaN or infinite values, the first in "
                                 f"row {row}")
        return ds

    def info(self, options: CallOptions, seed: int = 0) -> DatasetInfo:
        return self.read(options, seed).info
