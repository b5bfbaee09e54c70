"""Memory measurements: bytes autograd saves for backward, CUDA peak allocation, peak RSS of a fresh process.

``saved_tensor_bytes`` is deterministic (it counts storages, it does not sample an allocator), so it can back
unit tests as well as reports: it is the activation memory of a training step on any device.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Iterable

import torch
from torch import Tensor

_RSS_MARK = "__INVBENCH_PEAK_RSS__"

StorageKey = tuple[str, int | None, int]


def _storage_key_and_bytes(t: Tensor) -> tuple[StorageKey | tuple[str, int], int]:
    """Identify ``t``'s storage (shared by all its views) and its size in bytes."""
    try:
        storage = t.untyped_storage()
        return (t.device.type, t.device.index, storage.data_ptr()), storage.nbytes()
    except (RuntimeError, NotImplementedError):  # sparse / nested / functional tensors have no plain storage
        return ("id", id(t)), t.numel() * t.element_size()


def saved_tensor_bytes(fn: Callable[[], Tensor], exclude: Iterable[Tensor] = ()) -> int:
    """Bytes of the distinct storages that autograd saves for backward while ``fn()`` builds its graph.

    Tensors that share a storage (views, slices, an output saved by several ops) count once, at the size of
    the whole storage (what stays alive). Storages of ``exclude`` (e.g. ``model.parameters()``) are not
    counted, which leaves the activation memory. ``fn`` takes no arguments and returns the loss (any
    tensor); the graph is discarded afterwards without running backward.
    """
    excluded = {_storage_key_and_bytes(t)[0] for t in exclude}
    counted: dict[object, int] = {}
    alive: list[Tensor] = []  # keep every saved storage alive so no address is reused while counting

    def pack(t: Tensor) -> Tensor:
        key, nbytes = _storage_key_and_bytes(t)
        if key not in excluded:
            counted.setdefault(key, nbytes)
        alive.append(t)
        return t

    def unpack(t: Tensor) -> Tensor:
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, unpack):
        out = fn()
    del out
    alive.clear()
    return sum(counted.values())


def cuda_peak_bytes(fn: Callable[[], object], device: torch.device | str | None = None) -> int:
    """Peak CUDA memory allocated while ``fn()`` runs, above what was allocated before it (bytes).

    Synchronises before and after. ``fn`` may run a whole training step (forward and backward).
    """
    dev = torch.device(device) if device is not None else torch.device("cuda", torch.cuda.current_device())
    torch.cuda.synchronize(dev)
    before = torch.cuda.memory_allocated(dev)
    torch.cuda.reset_peak_memory_stats(dev)
    result = fn()
    torch.cuda.synchronize(dev)
    peak = torch.cuda.max_memory_allocated(dev)
    del result
    return max(0, peak - before)


def peak_rss_of_fresh_process(code: str, timeout: float | None = None) -> int:
    """Peak resident set size (bytes) of a fresh ``python -c code`` process: the whole process, imports included.

    Raises ``RuntimeError`` with the child's stderr if it fails. Reads ``VmHWM`` from ``/proc/self/status``
    (Linux), else ``ru_maxrss``.
    """
    # VmHWM is the high-water mark of this process image only; ru_maxrss survives exec and would report
    # the parent's size at fork time, so it is the fallback where /proc is missing (macOS: bytes, else KiB).
    trailer = (
        "\nimport os as _o, resource as _r, sys as _s\n"
        "if _o.path.exists('/proc/self/status'):\n"
        "    _v = [int(_l.split()[1]) * 1024 for _l in open('/proc/self/status') if _l.startswith('VmHWM:')][0]\n"
        "else:\n"
        "    _v = _r.getrusage(_r.RUSAGE_SELF).ru_maxrss * (1 if _s.platform == 'darwin' else 1024)\n"
        f"print({_RSS_MARK!r}, _v, flush=True)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code + trailer], capture_output=True, text=True, timeout=timeout,
                          check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"child process exited with {proc.returncode}: {proc.stderr.strip()[-2000:]}")
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(_RSS_MARK):
            return int(line.split()[1])
    raise RuntimeError("child process did not report its peak RSS")
