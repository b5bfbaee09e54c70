"""Progress display for ``invbench run``, plain stdlib.

Three modes: ``bar`` (a TTY: one redrawn line with cells done/total, the current cell and an ETA), ``lines``
(not a TTY: one plain line per finished cell), ``quiet`` (``--quiet`` or the ``CI`` environment variable:
nothing but errors). Errors (cells that ended ``error``, ``timeout`` or ``oom``) are printed in every mode.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from typing import TextIO

ERROR_STATUSES: tuple[str, ...] = ("error", "timeout", "oom")


def choose_mode(quiet: bool, stream: TextIO) -> str:
    """``quiet`` when asked or under CI, ``bar`` on a TTY, else ``lines``."""
    if quiet or os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no"):
        return "quiet"
    isatty = getattr(stream, "isatty", None)
    return "bar" if isatty is not None and isatty() else "lines"


def format_duration(seconds: float) -> str:
    """``'42s'``, ``'3m05s'``, ``'1h02m'``."""
    s = max(0, round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"


class Progress:
    """Counts finished cells out of ``total`` and shows them according to ``mode``.

    ETA: wall time per executed cell so far times the cells left (cells skipped on resume and cells answered
    without running, such as ``unsupported``, do not count towards the rate).
    """

    def __init__(self, total: int, mode: str = "lines", stream: TextIO | None = None) -> None:
        if mode not in ("bar", "lines", "quiet"):
            raise ValueError(f"unknown progress mode {mode!r}")
        self.total = total
        self.mode = mode
        self.stream = stream if stream is not None else sys.stderr
        self.done = 0
        self.executed = 0
        self.current: dict[str, str] = {}
        self._t0 = time.monotonic()
        self._exec_seconds = 0.0
        self._bar_width = 0

    # ------------------------------------------------------------------------------------------- events
    def skip(self, n: int) -> None:
        """``n`` cells already finished in an earlier session (resume)."""
        self.done += n
        self._draw()

    def start(self, label: str) -> None:
        self.current[label] = ""
        self._draw()

    def update(self, label: str, done: int, total: int, message: str = "") -> None:
        """In-cell progress reported by a task."""
        if label in self.current:
            pct = f"{100 * done // total}%" if total > 0 else ""
            self.current[label] = f"{pct} {message}".strip()
            self._draw()

    def finish(self, label: str, status: str, seconds: float, executed: bool = True, message: str = "") -> None:
        """A cell ended with ``status`` (its worst row status) after ``seconds``."""
        self.current.pop(label, None)
        self.done += 1
        if executed:
            self.executed += 1
            self._exec_seconds = time.monotonic() - self._t0
        if status in ERROR_STATUSES:
            self.error(f"{label}: {status}" + (f": {message}" if message else ""))
        if self.mode == "lines":
            self._print(f"[{self.done}/{self.total}] {label}: {status} ({seconds:.1f}s)")
        self._draw()

    def error(self, text: str) -> None:
        """Printed in every mode."""
        self._print(text)

    def close(self) -> None:
        if self.mode == "bar" and self._bar_width:
            self.stream.write("\r" + " " * self._bar_width + "\r")
            self.stream.flush()
            self._bar_width = 0

    # ------------------------------------------------------------------------------------------- drawing
    def eta(self) -> float | None:
        """Seconds left, or None before the first executed cell."""
        if self.executed == 0:
            return None
        return self._exec_seconds / self.executed * (self.total - self.done)

    def line(self, width: int = 100) -> str:
        """The bar line, at most ``width`` characters."""
        frac = self.done / self.total if self.total else 1.0
        cells = 20
        filled = round(frac * cells)
        eta = self.eta()
        head = (f"[{'#' * filled}{'.' * (cells - filled)}] {self.done}/{self.total} "
                f"ETA {format_duration(eta) if eta is not None else '?'}")
        if self.current:
            label, note = next(iter(self.current.items()))
            more = f" (+{len(self.current) - 1})" if len(self.current) > 1 else ""
            head += f" | {label}{more} {note}".rstrip()
        return head if len(head) <= width else head[: max(0, width - 3)] + "..."

    def _draw(self) -> None:
        if self.mode != "bar":
            return
        width = max(20, shutil.get_terminal_size((100, 20)).columns - 1)
        text = self.line(width)
        pad = max(0, self._bar_width - len(text))
        self.stream.write("\r" + text + " " * pad)
        self.stream.flush()
        self._bar_width = len(text)

    def _print(self, text: str) -> None:
        if self.mode == "bar" and self._bar_width:
            self.stream.write("\r" + " " * self._bar_width + "\r")
            self._bar_width = 0
        self.stream.write(text + "\n")
        self.stream.flush()
