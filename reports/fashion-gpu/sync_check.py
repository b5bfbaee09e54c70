"""Training-step time, forward time and host-device synchronisations per forward+backward of four coupling flows
on (1, 28, 28) inputs, batch 128, one process: the measurement behind NOTES.md's nflows spline finding.

    PYTHONPATH=. python reports/fashion-gpu/sync_check.py      # on a CUDA machine (runs on a CPU too, no sync count)

Synchronisations are counted with ``torch.cuda.set_sync_debug_mode("warn")`` (a prototype that may miss some).
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable

import torch

from models.registry import create

MODELS = ("realnvp-nflows", "nsf-nflows", "nice-nflows", "glow-freia")


def measure(name: str, x: torch.Tensor, n: int) -> str:
    """One line: training step and forward times (ms, mean of ``n``) and the synchronisations of one step."""
    cuda = x.device.type == "cuda"
    sync: Callable[[], None] = torch.cuda.synchronize if cuda else (lambda: None)
    torch.manual_seed(0)
    model = create(name, shape=(1, 28, 28)).to(x.device)
    model.data_init(x)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, foreach=True)

    def step() -> None:
        loss = -model.log_prob(x).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()

    for _ in range(5):
        step()
    sync()
    syncs = "n/a"
    if cuda:
        torch.cuda.set_sync_debug_mode("warn")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            (-model.log_prob(x).mean()).backward()
        torch.cuda.set_sync_debug_mode("default")
        syncs = str(sum("synchroniz" in str(w.message) for w in caught))
    sync()
    t = time.perf_counter()
    for _ in range(n):
        step()
    sync()
    step_ms = (time.perf_counter() - t) / n * 1e3
    t = time.perf_counter()
    with torch.no_grad():
        for _ in range(n):
            model.log_prob(x)
    sync()
    fwd_ms = (time.perf_counter() - t) / n * 1e3
    return f"{name:16s} train step {step_ms:7.2f} ms  forward {fwd_ms:7.2f} ms  syncs per forward+backward {syncs}"


def main() -> None:
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    x = torch.rand(128, 1, 28, 28, device=dev)
    for name in MODELS:
        print(measure(name, x, 30 if dev.type == "cuda" else 3))


if __name__ == "__main__":
    main()
