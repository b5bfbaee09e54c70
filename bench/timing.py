"""Timing as ratios measured side by side in one process.

Absolute times depend on the machine, its load and its clocks; the ratio of two functions timed in
alternating rounds inside one process cancels most of that. The suite's inverse cost is such a ratio
(DESIGN.md): ``time(inverse) / time(forward)`` on the same module, batch, dtype and grad mode, in
forward-pass units.

Protocol of :func:`time_ratio`:

1. warm-up: ``warmup`` calls of ``a`` and of ``b``, alternating (lazy initialisation, allocator, caches);
2. calibration (``number=None``): each timed sample repeats its function ``number`` times, the smallest
   count that makes the faster function's sample last at least ``min_time`` seconds (timer resolution);
3. ``rounds`` rounds; round ``r`` times ``a`` then ``b`` when ``r`` is even and ``b`` then ``a`` when it is
   odd (ABBA order, so drift and "second call is warmer" effects cancel), and yields the ratio
   ``t_a / t_b`` of that round;
4. the result is the median ratio with its quartiles; per-call times of both are kept.

On CUDA the device is synchronised before and after every timed sample (``device`` argument), so the
time is the kernels' and not the launch queue's. Garbage collection is off while timing (as ``timeit``).
"""

from __future__ import annotations

import gc
import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

DeviceLike = torch.device | str | None


@dataclass
class RatioStats:
    """Median and quartiles of the per-round ratio ``t_a / t_b``.

    Attributes:
        median, q25, q75: statistics of the per-round ratios.
        n: number of rounds measured.
        times_a, times_b: seconds per call of ``a`` and ``b`` in each round (length ``n``).
        number: calls per timed sample.
    """

    median: float
    q25: float
    q75: float
    n: int
    times_a: list[float] = field(default_factory=list)
    times_b: list[float] = field(default_factory=list)
    number: int = 1

    @property
    def ratios(self) -> list[float]:
        """Per-round ratios ``t_a / t_b``."""
        return [a / b if b > 0 else math.inf for a, b in zip(self.times_a, self.times_b, strict=True)]

    def as_extra(self) -> dict[str, Any]:
        """JSON-serialisable summary for ``Metric.extra``."""
        return {"q25": self.q25, "q75": self.q75, "rounds": self.n, "number": self.number,
                "median_time_a_s": float(np.median(self.times_a)) if self.times_a else None,
                "median_time_b_s": float(np.median(self.times_b)) if self.times_b else None}


@dataclass
class Throughput:
    """Items per second over timed rounds: median, quartiles, the rounds and per-call seconds."""

    median: float
    q25: float
    q75: float
    n: int
    times: list[float] = field(default_factory=list)
    number: int = 1

    def as_extra(self) -> dict[str, Any]:
        return {"q25": self.q25, "q75": self.q75, "rounds": self.n, "number": self.number,
                "median_time_s": float(np.median(self.times)) if self.times else None}


def _is_cuda(device: DeviceLike) -> bool:
    return device is not None and torch.device(device).type == "cuda"


def synchronize(device: DeviceLike) -> None:
    """``torch.cuda.synchronize(device)`` when ``device`` is a CUDA device; nothing otherwise."""
    if device is not None and _is_cuda(device):
        torch.cuda.synchronize(torch.device(device))


@contextmanager
def _gc_off() -> Iterator[None]:
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def time_call(fn: Callable[[], Any], number: int = 1, device: DeviceLike = None) -> float:
    """Seconds per call of ``fn`` averaged over ``number`` back-to-back calls (synchronised on CUDA)."""
    synchronize(device)
    start = time.perf_counter()
    for _ in range(number):
        fn()
    synchronize(device)
    return (time.perf_counter() - start) / number


def _calibrate(fns: list[Callable[[], Any]], min_time: float, max_number: int, device: DeviceLike) -> int:
    fastest = min(time_call(f, 1, device) for f in fns)
    if fastest <= 0:
        return max_number
    return int(min(max_number, max(1, math.ceil(min_time / fastest))))


def _quartiles(values: list[float]) -> tuple[float, float, float]:
    arr = np.asarray(values, dtype=float)
    q25, med, q75 = np.percentile(arr, [25, 50, 75])
    return float(med), float(q25), float(q75)


def time_ratio(fn_a: Callable[[], Any], fn_b: Callable[[], Any], rounds: int = 15, warmup: int = 2,
               device: DeviceLike = None, number: int | None = None, min_time: float = 2e-3,
               max_number: int = 1000, max_seconds: float | None = None) -> RatioStats:
    """Median over alternating rounds of ``time(fn_a) / time(fn_b)`` (see the module docstring).

    Args:
        fn_a, fn_b: zero-argument callables (their results are discarded).
        rounds: timed rounds (each times ``a`` once and ``b`` once).
        warmup: untimed calls of each before timing.
        device: the device the functions run on; CUDA devices are synchronised around each sample.
        number: calls per timed sample; None calibrates it from ``min_time``.
        max_seconds: stop after this much timing (at least 3 rounds are still taken).
    """
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    with _gc_off():
        for _ in range(warmup):
            fn_a()
            fn_b()
        reps = number if number is not None else _calibrate([fn_a, fn_b], min_time, max_number, device)
        times_a: list[float] = []
        times_b: list[float] = []
        start = time.perf_counter()
        for r in range(rounds):
            if r % 2 == 0:
                ta = time_call(fn_a, reps, device)
                tb = time_call(fn_b, reps, device)
            else:
                tb = time_call(fn_b, reps, device)
                ta = time_call(fn_a, reps, device)
            times_a.append(ta)
            times_b.append(tb)
            if max_seconds is not None and r >= 2 and time.perf_counter() - start > max_seconds:
                break
    ratios = [a / b if b > 0 else math.inf for a, b in zip(times_a, times_b, strict=True)]
    med, q25, q75 = _quartiles(ratios)
    return RatioStats(median=med, q25=q25, q75=q75, n=len(ratios), times_a=times_a, times_b=times_b, number=reps)


def throughput(fn: Callable[[], Any], n_items: int, rounds: int = 10, warmup: int = 2, device: DeviceLike = None,
               number: int | None = None, min_time: float = 2e-3, max_number: int = 1000,
               max_seconds: float | None = None) -> Throughput:
    """Items per second of ``fn``, which processes ``n_items`` items per call: median over ``rounds``.

    Absolute throughput is machine-dependent; compare it only within one run record (same machine).
    """
    if n_items <= 0:
        raise ValueError(f"n_items must be positive, got {n_items}")
    with _gc_off():
        for _ in range(warmup):
            fn()
        reps = number if number is not None else _calibrate([fn], min_time, max_number, device)
        times: list[float] = []
        start = time.perf_counter()
        for r in range(rounds):
            times.append(time_call(fn, reps, device))
            if max_seconds is not None and r >= 2 and time.perf_counter() - start > max_seconds:
                break
    rates = [n_items / t if t > 0 else math.inf for t in times]
    med, q25, q75 = _quartiles(rates)
    return Throughput(median=med, q25=q25, q75=q75, n=len(rates), times=times, number=reps)
