"""A suite's ``match_params = N``: every model scaled to within 10 % of N trainable parameters, before any compute.

Each model class names the integer hyper-parameter that sets its width (``width_hparam`` on
:class:`models.base.InvertibleModel`, ``"hidden"`` for the built-in models, None for models without one, such as
the ``gaussian-fit`` baseline). Per (model, data set) the runner builds the model on the CPU at candidate widths,
with the data set's shape and classes and the suite's other hyper-parameters for that cell, and takes the width
whose trainable parameter count is nearest N: doubling from 1 until the count reaches N, then bisection between
the last two widths (the count grows with the width). The width goes into the cell's hyper-parameters like any
per-data-set override, replacing a value the suite gives for it, so the config hash and the checkpoints follow it;
every row of the cell carries ``extra["match_params"]`` (:class:`MatchedWidth`).

A baseline model (``baseline`` set on its class, such as ``gaussian-fit``) is not a competitor: it runs as it is,
its rows recording its own parameter count (``baseline`` true). Any other model that declares no width gets
``unsupported`` rows (its :class:`MatchedWidth` has ``hparam`` None and its own parameter count); a model whose
nearest width is more than 10 % from N stops the run before any compute with one line (:class:`MatchError`): the
target does not suit that model on that data set.

This module imports torch only inside functions (the worker imports it before choosing its device).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

#: how far from the target a matched model may be, as a fraction of the target
TOLERANCE = 0.10
#: the largest width tried
MAX_WIDTH = 1 << 14


class MatchError(ValueError):
    """No width of a model comes within :data:`TOLERANCE` of the target; the message is one line."""


@dataclass(frozen=True)
class MatchedWidth:
    """What ``match_params`` chose for one (model, data set): the width hyper-parameter and its value (None for a
    model that declares none), the trainable parameters it gives and the target; ``baseline``: the model is a
    baseline, run unscaled."""

    hparam: str | None
    value: int | None
    params: int
    target: int
    baseline: bool = False

    @property
    def matched(self) -> bool:
        return self.hparam is not None

    def as_extra(self) -> dict[str, Any]:
        return asdict(self)

    def requires(self) -> str:
        """What an unmatched model lacks, for its ``unsupported`` rows."""
        return f"a width hyper-parameter (width_hparam) to scale to match_params = {self.target}"


def match_width(model: str, shape: Sequence[int], num_classes: int | None, hparams: Mapping[str, Any],
                target: int, where: str = "") -> MatchedWidth:
    """The width of ``model`` (a registry name or ``module:Class``) whose trainable parameter count is nearest
    ``target`` for inputs of ``shape``, with the other hyper-parameters ``hparams``.

    Raises :class:`MatchError` (one line, prefixed with ``where``) when the nearest count is more than
    :data:`TOLERANCE` of ``target`` away, or when the model cannot be built at a width.
    """
    from bench.flops import trainable_parameters
    from models.registry import get

    cls = get(model)
    name = cls.width_hparam
    prefix = f"{where}: " if where else ""
    counts: dict[int, int] = {}

    def count(width: int | None) -> int:
        key = -1 if width is None else width
        if key not in counts:
            options = dict(hparams) if name is None or width is None else {**hparams, name: width}
            try:
                built = cls(shape=tuple(shape), num_classes=num_classes, **options)
            except Exception as exc:
                text = " ".join(str(exc).split())
                raise MatchError(f"{prefix}match_params = {target}: {model} with {name} = {width} cannot be built: "
                                 f"{type(exc).__name__}: {text}") from exc
            counts[key] = trainable_parameters(built)
        return counts[key]

    if cls.baseline is not None:
        return MatchedWidth(None, None, count(None), target, baseline=True)
    if name is None:
        return MatchedWidth(None, None, count(None), target)
    lo, hi = 0, 1
    while count(hi) < target:
        if hi >= MAX_WIDTH:
            raise MatchError(f"{prefix}match_params = {target}: {model} has {count(hi):,} trainable parameters at "
                             f"{name} = {hi}, the widest tried")
        lo, hi = hi, min(2 * hi, MAX_WIDTH)
    while hi - lo > 1:  # count(lo) < target <= count(hi); lo = 0 stands for "below width 1"
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if count(mid) < target else (lo, mid)
    best = hi if lo == 0 or count(hi) - target <= target - count(lo) else lo
    params = count(best)
    if abs(params - target) > TOLERANCE * target:
        side = "the fewest it can have" if best == 1 and params > target else "the nearest"
        raise MatchError(f"{prefix}match_params = {target}: {model} has {params:,} trainable parameters at "
                         f"{name} = {best} ({side}), more than {TOLERANCE:.0%} from the target")
    return MatchedWidth(name, best, params, target)
