"""The preemption flag: SIGTERM or SIGUSR1 sets it from the first moment of a trainer's life (the launcher may
signal a rank that is still starting); the engine agrees on it at step boundaries. Torch-free, so that the command
line installs it before the heavy imports."""

from __future__ import annotations

import logging
import signal
from typing import List

logger = logging.getLogger(__name__)
PREEMPT_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class PreemptionFlag:
    """SIGTERM or SIGUSR1 on any rank sets a flag; `agreed()` all-reduces it at a step boundary, so every rank
    saves and stops at the same step."""

    def __init__(self) -> None:
        self.signalled = False
        self.signal_name = ""
        self._previous: List = []

    def install(self) -> "PreemptionFlag":
        """Handle the preemption signals in this (main) thread."""
        for sig in PREEMPT_SIGNALS:
            self._previous.append((sig, signal.signal(sig, self._handle)))
        return self

    def _handle(self, signum, frame) -> None:
        self.signalled = True
        self.signal_name = signal.Signals(signum).name
        logger.warning("received %s: saving at the next step boundary", self.signal_name)

    def restore(self) -> None:
        """Put the previous handlers back."""
        for sig, handler in self._previous:
            signal.signal(sig, handler)
        self._previous.clear()
