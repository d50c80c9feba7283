"""Ctrl-C as a flag read between training steps, agreed on by every DDP rank."""

from __future__ import annotations

import signal
import threading
import time
from typing import Any

from richkd_deploy.dist import DistContext


class StopRequest:
    """SIGINT (Ctrl-C) as a flag that the loop reads between steps, not an exception
    raised wherever the step happens to be. A second Ctrl-C more than a second after the
    first interrupts at once (a stuck step). Under DDP the flag is agreed on by all
    ranks, so they stop after the same step and rank 0's checkpoint is of that step
    (torchrun passes the Ctrl-C to every worker, and stops them all)."""

    def __init__(self, dist: DistContext) -> None:
        self.dist = dist
        self.since: float | None = None
        self._previous: Any = None

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():  # signal handlers live there only
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)

    def _handle(self, signum: int, frame: Any) -> None:
        if self.since is not None and time.monotonic() - self.since > 1.0:
            raise KeyboardInterrupt
        self.since = self.since or time.monotonic()

    def check(self) -> None:
        """Raise KeyboardInterrupt here if any rank was asked to stop."""
        requested = self.since is not None
        if self.dist.enabled:
            requested = self.dist.reduce_sums([float(requested)])[0] > 0
        if requested:
            raise KeyboardInterrupt
