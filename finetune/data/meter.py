"""Time and memory of one stage of the data path (read, tokenize, pack), for the data report and the start-up log.

Peak RSS is the kernel's high-water mark of this process (``VmHWM``), reset at the start of each stage where Linux
allows it (``/proc/self/clear_refs``), so each stage gets its own peak; elsewhere it is the peak since the
process started. It counts the pages of memory-mapped Arrow files a stage has touched: the kernel can drop those
at any time, so it overstates what a stage needs. Worker processes (``num_proc``) are counted apart: the largest
peak of any worker that has ended so far.
"""

from __future__ import annotations

import resource
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def _reset_peak() -> None:
    try:
        _CLEAR_REFS.write_text("5")  # 5: reset the peak RSS to the current RSS
    except OSError:
        pass


def peak_rss_mib() -> float:
    """This process's peak RSS in MiB (since the last reset)."""
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    scale = 1 if sys.platform != "darwin" else 1 / 1024  # Linux reports KiB, macOS bytes
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 1024


def workers_peak_rss_mib() -> float:
    """The largest peak RSS of any ended child process, in MiB."""
    scale = 1 if sys.platform != "darwin" else 1 / 1024
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * scale / 1024


@contextmanager
def measure(stages: dict[str, dict[str, float]], name: str, workers: int = 1) -> Iterator[dict[str, float]]:
    """Record ``stages[name] = {"seconds", "peak_rss_mib"[, "workers", "workers_peak_rss_mib"]}`` for the block;
    the block may add its own figures to the dict it is given."""
    _reset_peak()
    figures: dict[str, float] = {}
    start = time.perf_counter()
    yield figures
    figures["seconds"] = round(time.perf_counter() - start, 3)
    figures["peak_rss_mib"] = round(peak_rss_mib(), 1)
    if workers > 1:
        figures["workers"] = workers
        figures["workers_peak_rss_mib"] = round(workers_peak_rss_mib(), 1)
    stages[name] = {**stages.get(name, {}), **figures}
