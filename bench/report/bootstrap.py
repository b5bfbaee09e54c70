"""Percentile bootstrap intervals over seeds, and the rule that decides whether a "best" is told apart.

Every interval in the report is a 95 % percentile bootstrap interval (Efron and Tibshirani, "An Introduction to
the Bootstrap", 1993, ch. 13) over seeds: the seeds of one (model, data set) are resampled with replacement
(:data:`N_BOOT` times), the statistic is recomputed on every resample, and the interval is the 2.5th and 97.5th
percentiles of the resampled statistics. Aggregates over data sets (a median rank, a worst case) resample every
(model, data set) independently and recompute the aggregate on each joint resample, as rliable does for its
aggregate scores (Agarwal et al., "Deep Reinforcement Learning at the Edge of the Statistical Precipice",
NeurIPS 2021).

The random generator of a group is seeded from :data:`SEED` and the group's name, so a report made twice from
the same store is identical and a group's interval does not depend on which other groups the store holds. With
one seed there is nothing to resample: the interval is the single value, which says nothing about seed noise.

The tie rule (:func:`leader`): the best entry by its point estimate is "best" only where its interval does not
overlap the runner-up's, nor any other entry's (closed intervals: touching counts as overlap; a third entry with a
wide interval, e.g. one that includes an infinite value, can overlap the leader where the runner-up does not);
otherwise the leader and the entries overlapping it are tied.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

#: resamples per interval
N_BOOT = 2000
#: the coverage of every interval
LEVEL = 0.95
#: the base seed of every resampling (a group's generator adds the CRC-32 of its name)
SEED = 20261201


@dataclass(frozen=True)
class Interval:
    """A point estimate and its percentile bootstrap interval ``[low, high]`` (``low <= high``)."""

    point: float
    low: float
    high: float

    def overlaps(self, other: Interval) -> bool:
        """Whether the closed intervals share a point."""
        return self.low <= other.high and other.low <= self.high

    @property
    def width(self) -> float:
        return self.high - self.low


def rng_for(name: str) -> np.random.Generator:
    """The generator of one resampled group: seeded from :data:`SEED` and ``name`` (deterministic)."""
    return np.random.default_rng([SEED, zlib.crc32(name.encode("utf-8"))])


def resample_means(values: np.ndarray, name: str, n_boot: int = N_BOOT) -> np.ndarray:
    """Means over resampled seeds: ``values`` (keys, seeds), NaN where a key has no value at a seed ->
    (n_boot, keys). Every resample draws ``seeds`` column indices with replacement (one draw shared by all
    keys, so quantities measured on the same seed stay paired); a key with no value in a resample is NaN."""
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 2:
        raise ValueError(f"values must be (keys, seeds), got shape {values.shape}")
    n_keys, n_seeds = values.shape
    if n_seeds == 0:
        return np.full((n_boot, n_keys), math.nan)
    idx = rng_for(name).integers(0, n_seeds, size=(n_boot, n_seeds))
    drawn = values[:, idx]  # (keys, n_boot, seeds)
    present = ~np.isnan(drawn)
    count = present.sum(axis=2)
    total = np.where(present, drawn, 0.0).sum(axis=2)
    with np.errstate(invalid="ignore", divide="ignore"):
        means = np.where(count > 0, total / np.maximum(count, 1), math.nan)
    # an infinite value makes its mean infinite (or NaN for +inf and -inf together), as np.mean would
    return means.T


def percentile_interval(point: float, replicates: np.ndarray, level: float = LEVEL) -> Interval:
    """``point`` with the percentile interval of ``replicates`` (n_boot,); NaN replicates are left out (all NaN:
    a NaN interval)."""
    reps = np.asarray(replicates, dtype=np.float64)
    reps = reps[~np.isnan(reps)]
    if reps.size == 0 or math.isnan(point):
        return Interval(point, math.nan, math.nan)
    alpha = (1.0 - level) / 2.0
    # the inverted-CDF definition picks resampled values, never interpolates (so infinite values stay valid)
    low, high = np.quantile(reps, [alpha, 1.0 - alpha], method="inverted_cdf")
    return Interval(float(point), float(min(low, point)), float(max(high, point)))


def seed_interval(values: Sequence[float], name: str = "", statistic: Callable[[np.ndarray], np.ndarray] | None = None,
                  n_boot: int = N_BOOT, level: float = LEVEL) -> Interval:
    """The interval of a statistic of one group's per-seed values (default: the mean).

    ``statistic`` maps resampled means (n_boot,) to the judged quantity (e.g. ``np.abs`` for "closest to zero"),
    applied to the point estimate as well. The point is the statistic of the mean of ``values``; the interval is
    widened to contain it where the percentiles alone would not (possible for skewed data and a non-linear
    statistic).
    """
    vals = np.asarray(values, dtype=np.float64)
    vals = vals[~np.isnan(vals)]
    if vals.size == 0:
        return Interval(math.nan, math.nan, math.nan)
    f = statistic or (lambda a: a)
    point = float(f(np.asarray([vals.mean()]))[0])
    if vals.size == 1:
        return Interval(point, point, point)
    reps = f(resample_means(vals[None, :], name, n_boot)[:, 0])
    return percentile_interval(point, reps, level)


@dataclass(frozen=True)
class Verdict:
    """The outcome of the tie rule over one column: ``best`` (told apart from every other entry) or ``tied`` (the
    leader and every entry whose interval overlaps the leader's); both empty when fewer than two are judged."""

    best: frozenset[str]
    tied: frozenset[str]


def leader(intervals: Mapping[str, Interval], higher_is_better: bool) -> Verdict:
    """Apply the tie rule to ``intervals`` (name -> interval of the judged quantity); entries with a NaN point
    are not judged. The leader has the best point (ties broken by name); it is ``best`` when its interval
    overlaps no other entry's (the runner-up's first of all), else it and every entry overlapping it are
    ``tied``."""
    judged = {k: v for k, v in intervals.items() if not math.isnan(v.point)}
    if len(judged) < 2:
        return Verdict(frozenset(), frozenset())
    order = sorted(judged, key=lambda k: (-judged[k].point if higher_is_better else judged[k].point, str(k)))
    top = judged[order[0]]
    overlapping = [k for k in order[1:] if _overlap(judged[k], top)]
    if not overlapping:
        return Verdict(frozenset({order[0]}), frozenset())
    return Verdict(frozenset(), frozenset([order[0], *overlapping]))


def _overlap(a: Interval, b: Interval) -> bool:
    """Overlap, treating a NaN bound (no interval) as the point itself."""
    lo_a, hi_a = (a.point, a.point) if math.isnan(a.low) else (a.low, a.high)
    lo_b, hi_b = (b.point, b.point) if math.isnan(b.low) else (b.low, b.high)
    return lo_a <= hi_b and lo_b <= hi_a
