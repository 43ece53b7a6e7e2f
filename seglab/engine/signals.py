"""SIGTERM/SIGINT during training: the handler only records the signal; the loop acts at step boundaries."""

from __future__ import annotations

import signal


class StopFlag:
    """Remembers the first SIGTERM/SIGINT; the loop acts on it at step boundaries (and between eval batches)."""

    def __init__(self) -> None:
        self.signum = 0

    def install(self) -> dict:
        """Route SIGTERM and SIGINT to this flag; return the previous handlers."""
        return {signum: signal.signal(signum, self._handle) for signum in (signal.SIGTERM, signal.SIGINT)}

    def _handle(self, signum: int, frame: object) -> None:
        self.signum = self.signum or signum
