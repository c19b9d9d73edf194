"""Time and memory of one stage of the data path (read, tokenize, pack), for the data report and the start-up log.

A stage's peak RSS is the largest resident size of this process seen while it ran, sampled every
`SAMPLE_SECONDS` from /proc/self/status (a spike shorter than that can be missed); the kernel's own high-water
mark is never reset, so tools that read it (``/usr/bin/time``) still see the process's true peak. Where /proc is
missing it is the peak since the process started. RSS counts the pages of memory-mapped Arrow files a stage has
touched: the kernel can drop those at any time, so it overstates what a stage needs. Worker processes
(``num_proc``) are counted apart: the largest peak of any worker that has ended so far.
"""

from __future__ import annotations

import resource
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

SAMPLE_SECONDS = 0.02
_STATUS = Path("/proc/self/status")
_SCALE = 1 / 1024 if sys.platform == "darwin" else 1  # ru_maxrss: KiB on Linux, bytes on macOS


def rss_mib() -> float | None:
    """This process's resident size now, in MiB (None without /proc)."""
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def workers_peak_rss_mib() -> float:
    """The largest peak RSS of any ended child process, in MiB."""
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * _SCALE / 1024


class _PeakSampler:
    def __init__(self):
        self.peak = rss_mib()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="rss-sampler")
        if self.peak is not None:
            self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(SAMPLE_SECONDS):
            self.peak = max(self.peak, rss_mib() or 0.0)

    def stop(self) -> float:
        if self.peak is None:
            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * _SCALE / 1024
        self._stop.set()
        self._thread.join()
        return max(self.peak, rss_mib() or 0.0)


@contextmanager
def measure(stages: dict[str, dict[str, float]], name: str, workers: int = 1) -> Iterator[dict[str, float]]:
    """Record ``stages[name] = {"seconds", "peak_rss_mib"[, "workers", "workers_peak_rss_mib"]}`` for the block;
    the block may add its own figures to the dict it is given."""
    sampler = _PeakSampler()
    figures: dict[str, float] = {}
    start = time.perf_counter()
    try:
        yield figures
    finally:
        peak = sampler.stop()
    figures["seconds"] = round(time.perf_counter() - start, 3)
    figures["peak_rss_mib"] = round(peak, 1)
    if workers > 1:
        figures["workers"] = workers
        figures["workers_peak_rss_mib"] = round(workers_peak_rss_mib(), 1)
    stages[name] = {**stages.get(name, {}), **figures}
