"""Peak RSS of this process and of its child processes, as their own (Linux ``/proc``).

Not ``ru_maxrss``: on exec, Linux carries the exec-ing process's high-water mark over into the
new program's, so a process started by a large one (a benchmark that has just generated a
database, a test session) reports at least its parent's peak. ``VmHWM`` is the new program's
own peak, and as a high-water mark it can be read at any time after the peak.
"""

from __future__ import annotations

import os
import resource
import threading
import time
from types import TracebackType


def peak_mb(pid: str = "self") -> float | None:
    """``VmHWM`` of a process in MB, None if it cannot be read (gone, or not Linux)."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def own_peak_mb() -> float:
    found = peak_mb()
    return found if found is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class ChildPeaks:
    """While open, polls the ``VmHWM`` of this process's children (the SQLite scan's child):
    the highest one seen is ``max_mb``."""

    def __init__(self, interval: float = 0.005) -> None:
        self.max_mb = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, args=(interval,), daemon=True)

    def _poll(self, interval: float) -> None:
        while not self._stop.is_set():
            for pid in _children():
                self.max_mb = max(self.max_mb, peak_mb(pid) or 0.0)
            time.sleep(interval)

    def __enter__(self) -> ChildPeaks:
        self._thread.start()
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self._stop.set()
        self._thread.join()


def _children() -> list[str]:
    pids: list[str] = []
    for task in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{task}/children") as children:
                pids += children.read().split()
        except OSError:
            continue
    return pids
