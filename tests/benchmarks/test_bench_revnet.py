"""RevNet memory-saving backprop (Gomez et al., NeurIPS 2017): activation memory vs depth, recompute overhead.

Run: ``pytest tests/benchmarks/test_bench_revnet.py --benchmark-only -q -s``. Figures go to
``benchmark.extra_info`` (and are printed):

- bytes saved for backward (``bench.memory.saved_tensor_bytes``, parameters excluded) of one training loss at
  depths 2, 4, 8, 16, memory-saving vs ordinary backprop; on CUDA also the peak allocation of a training step
  (``torch.cuda.max_memory_allocated`` above the baseline);
- time(memory-saving step) / time(ordinary step), a step being zero_grad + forward + backward (no optimiser
  update, which costs the same in both modes), median over alternating rounds in one process.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from itertools import pairwise
from typing import Any

import pytest
import torch
from torch.nn import functional as F

from bench.memory import cuda_peak_bytes, saved_tensor_bytes
from models.revnet import RevNetNative

DEPTHS = (2, 4, 8, 16)
CUDA = torch.cuda.is_available()
DEVICE = torch.device("cuda" if CUDA else "cpu")
# (shape, hidden, batch): small on a shared CPU, CIFAR-sized on a GPU
CASES: dict[str, tuple[tuple[int, ...], int, int]] = {
    "vector": ((64,), 64, 256),
    "image": ((3, 32, 32), 64, 64) if CUDA else ((1, 8, 8), 32, 64),
}


def _setup(kind: str, depth: int, memory_saving: bool) -> tuple[RevNetNative, Callable[[], torch.Tensor]]:
    shape, hidden, batch = CASES[kind]
    torch.manual_seed(0)
    model = RevNetNative(shape, depth=depth, hidden=hidden, memory_saving=memory_saving).to(DEVICE)
    x = torch.rand(batch, *shape, device=DEVICE)
    y = torch.randint(0, 10, (batch,), device=DEVICE)

    def loss() -> torch.Tensor:
        return F.cross_entropy(model.logits(x), y)

    return model, loss


def _step(model: RevNetNative, loss: Callable[[], torch.Tensor]) -> None:
    model.zero_grad(set_to_none=True)
    loss().backward()
    if CUDA:
        torch.cuda.synchronize()


@pytest.mark.parametrize("kind", list(CASES))
def test_activation_memory_vs_depth(benchmark: Any, kind: str) -> None:
    saved: dict[str, dict[int, int]] = {"memory_saving": {}, "ordinary": {}}
    peak: dict[str, dict[int, int]] = {"memory_saving": {}, "ordinary": {}}
    for mode in saved:
        for depth in DEPTHS:
            model, loss = _setup(kind, depth, mode == "memory_saving")
            saved[mode][depth] = saved_tensor_bytes(loss, exclude=model.parameters())
            if CUDA:
                _step(model, loss)  # allocate the gradients first: the peak then measures activations + work
                peak[mode][depth] = cuda_peak_bytes(lambda m=model, f=loss: _step(m, f))
    benchmark.extra_info.update({"kind": kind, "device": str(DEVICE), "shape": list(CASES[kind][0]),
                                 "batch": CASES[kind][2], "hidden": CASES[kind][1],
                                 "saved_bytes": saved, **({"cuda_peak_bytes": peak} if CUDA else {})})
    print(f"\n[revnet {kind} {DEVICE}] bytes saved for backward by depth {list(DEPTHS)}")
    for mode in saved:
        print(f"  {mode:<14} " + "  ".join(f"{saved[mode][d]:>10,}" for d in DEPTHS))
        if CUDA:
            print(f"  {'cuda peak':<14} " + "  ".join(f"{peak[mode][d]:>10,}" for d in DEPTHS))

    ms, ordinary = saved["memory_saving"], saved["ordinary"]
    assert ms[DEPTHS[-1]] <= 1.2 * ms[DEPTHS[0]], ms
    assert all(ordinary[a] < ordinary[b] for a, b in pairwise(DEPTHS)), ordinary

    model, loss = _setup(kind, DEPTHS[-1], True)
    benchmark.pedantic(_step, args=(model, loss), rounds=5, iterations=1, warmup_rounds=1)


@pytest.mark.parametrize("kind", list(CASES))
def test_recompute_time_overhead(benchmark: Any, kind: str) -> None:
    depth, rounds, per_round = 8, 15, 3
    model, loss = _setup(kind, depth, True)

    def timed(memory_saving: bool) -> float:
        model.set_memory_saving(memory_saving)
        start = time.perf_counter()
        for _ in range(per_round):
            _step(model, loss)
        return time.perf_counter() - start

    timed(True), timed(False)  # warm-up
    ratios = []
    for r in range(rounds):
        order = (True, False) if r % 2 == 0 else (False, True)
        t = {mode: timed(mode) for mode in order}
        ratios.append(t[True] / t[False])
    median = statistics.median(ratios)
    benchmark.extra_info.update({"kind": kind, "device": str(DEVICE), "depth": depth,
                                 "time_ratio_median": median, "time_ratio_min": min(ratios),
                                 "time_ratio_max": max(ratios), "rounds": rounds})
    print(f"\n[revnet {kind} {DEVICE}] depth {depth}: time(memory-saving step) / time(ordinary step) "
          f"median {median:.3f} (min {min(ratios):.3f}, max {max(ratios):.3f}, {rounds} alternating rounds)")

    model.set_memory_saving(True)
    benchmark.pedantic(_step, args=(model, loss), rounds=5, iterations=1, warmup_rounds=1)
