"""SIGTERM and SIGINT as a request to stop cleanly: Slurm preemption and `scancel`, a spot instance's
notice, Ctrl-C.

Before training starts there is nothing to save, so the first signal stops at once (`Preempted`). Once
training runs it only records the request: `SFTTrainer` finishes the optimizer step, every rank agrees (one
all-reduce per step), saves a complete checkpoint and stops; `finetune/sft.py` exits with
`exits.PREEMPTED`. Repeated SIGTERMs are ignored (launchers forward the one a scheduler sent to every
process); a second Ctrl-C stops at once without saving.
"""

from __future__ import annotations

import logging
import signal
from types import FrameType

logger = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Preempted(Exception):
    """A stop signal arrived before training started: nothing to save."""


class StopRequest:
    """Installed while `finetune/sft.py` runs; the previous handlers come back on exit."""

    def __init__(self) -> None:
        self.signal: str | None = None
        self.training = False
        self._interrupts = 0
        self._previous: dict[int, object] = {}

    def __enter__(self) -> StopRequest:
        for sig in STOP_SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    @property
    def requested(self) -> bool:
        return self.signal is not None

    def _handle(self, signum: int, _frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if signum == signal.SIGINT:
            self._interrupts += 1
            if self._interrupts > 1:
                raise KeyboardInterrupt
        if self.signal is not None:
            return
        self.signal = name
        if not self.training:
            raise Preempted(f"stopped by {name} before training started: nothing to save")
        logger.warning(
            "%s received: finishing this step, saving a checkpoint, then exiting%s",
            name,
            " (Ctrl-C again to stop at once without saving)" if signum == signal.SIGINT else "",
        )
