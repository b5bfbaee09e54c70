"""The runner's build check: every (model, data set, hyper-parameters) of a run built once before any compute.

The suite's loader checks each hyper-parameter's name and type against the model's constructor
(:func:`bench.suite.validate_names`); what only the constructor can judge (a width of -3, a depth that does not fit
the data set's shape, a combination of options it refuses) is judged here, before compute, rather than as an
``error`` row in every cell of that model after the rest of the suite has run. :func:`check_builds` builds each
distinct model the run will use on the CPU, with the data set's shape and classes, as the worker does
(:func:`models.registry.create`), and a constructor that raises stops the run with one line naming the model, the
data set and the error. The global random state is restored afterwards, so building changes nothing a cell
computes, and the libraries' warnings are not shown (a cell's own build logs them). On the quick suite: 60 models
in about 1.4 s. A model class that cannot be imported is skipped here: the support check gives its cells
``error`` rows (a broken optional backend must not stop the others).

This module imports torch only inside functions.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bench.datasets import DatasetInfo
    from bench.run.worker import CellSpec


class BuildError(ValueError):
    """A model that its suite's hyper-parameters do not build; the message is one line."""


def check_builds(cells: Iterable[CellSpec], info: Callable[[str, Mapping[str, Any]], DatasetInfo]) -> int:
    """Build the model of every distinct (model, data set, hyper-parameters) among ``cells`` once on the CPU;
    ``info(dataset, options)`` gives a data set's metadata. Returns how many models were built; raises
    :class:`BuildError` for the first that cannot be built."""
    import torch

    from models.registry import get

    seen: set[tuple[str, str, str]] = set()
    for cell in cells:
        key = (cell.model, cell.dataset, json.dumps(cell.hparams, sort_keys=True, default=str))
        if key in seen:
            continue
        seen.add(key)
        try:
            cls = get(cell.model)
        except Exception:
            continue
        meta = info(cell.dataset, cell.dataset_options)
        with torch.random.fork_rng(devices=[]), torch.device("cpu"), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a library's deprecation notice is the cell's to log, not this check's
            try:
                cls(shape=tuple(meta.shape), num_classes=meta.num_classes, **cell.hparams)
            except Exception as exc:
                text = " ".join(str(exc).split())
                given = ", ".join(f"{k} = {v!r}" for k, v in sorted(cell.hparams.items())) or "none"
                raise BuildError(f"{cell.model} on {cell.dataset}: the model does not build with its hyper-parameters "
                                 f"({given}): {type(exc).__name__}: {text}") from exc
    return len(seen)
