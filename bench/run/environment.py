"""The run record (``<run>/run.json``): the machine, device, library versions, determinism flags and git commit.

Everything a reader needs to know where a number came from, captured once per session of a run.
"""

from __future__ import annotations

import json
import os
import platform
import socket
import subprocess
import sys
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

LIBRARIES: tuple[str, ...] = ("torch", "numpy", "nflows", "FrEIA", "pandas", "scipy", "scikit-learn", "matplotlib",
                              "submitit")
REPO_DIR = Path(__file__).resolve().parent.parent


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def cpu_model() -> str:
    """The CPU's marketing name (``/proc/cpuinfo`` on Linux, ``platform.processor()`` elsewhere)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def library_versions() -> dict[str, str | None]:
    """Installed versions of the libraries that shape the numbers (None when not installed)."""
    out: dict[str, str | None] = {}
    for name in LIBRARIES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def git_info(repo: Path = REPO_DIR) -> dict[str, Any]:
    """``{"commit": sha or "unknown", "dirty": bool or None}`` of the repository this code runs from."""

    def git(*args: str) -> str | None:
        try:
            res = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, timeout=10,
                                 check=False)
        except (OSError, subprocess.SubprocessError):
            return None
        return res.stdout.strip() if res.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    if not commit:
        return {"commit": "unknown", "dirty": None}
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "dirty": None if status is None else bool(status)}


def torch_record() -> dict[str, Any]:
    """torch's CUDA/cuDNN versions, GPUs, threads and determinism / TF32 flags."""
    import torch

    cuda = torch.cuda.is_available()
    cudnn = torch.backends.cudnn
    rec: dict[str, Any] = {
        "cuda_available": cuda,
        "cuda_version": torch.version.cuda,
        "cudnn_version": cudnn.version() if cudnn.is_available() else None,
        "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if cuda else [],
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "determinism": {
            "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
            "cudnn_benchmark": bool(cudnn.benchmark),
            "cudnn_deterministic": bool(cudnn.deterministic),
            "tf32_matmul": bool(torch.backends.cuda.matmul.allow_tf32),
            "tf32_cudnn": bool(cudnn.allow_tf32),
            "float32_matmul_precision": torch.get_float32_matmul_precision(),
        },
    }
    return rec


def capture(*, run_id: str, suite: str, device: str, command: list[str] | None = None,
            executor: dict[str, Any] | None = None) -> dict[str, Any]:
    """The run record for a session starting now."""
    cores_visible: int | None
    try:
        cores_visible = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores_visible = os.cpu_count()
    return {
        "run_id": run_id,
        "suite": suite,
        "start_time": now_iso(),
        "end_time": None,
        "hostname": socket.gethostname(),
        "os": platform.platform(),
        "python": sys.version.split()[0],
        "python_implementation": platform.python_implementation(),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpu_count_visible": cores_visible,
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "device": device,
        "versions": library_versions(),
        **torch_record(),
        "git": git_info(),
        "command": list(command if command is not None else sys.argv),
        "executor": executor or {},
    }


def write_record(path: Path, record: dict[str, Any]) -> None:
    """Write ``run.json`` atomically."""
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(record, indent=2, sort_keys=True, default=str) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def read_record(path: Path) -> dict[str, Any] | None:
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        return None
    return data if isinstance(data, dict) else None
