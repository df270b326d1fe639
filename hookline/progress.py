"""Progress lines on stderr for long operator commands, at most one every 2 s.

A redrive or replay may scan millions of records; an operator needs to see it
is alive without a line per record drowning the summary that follows.
"""

from __future__ import annotations

import time
from typing import TextIO

PROGRESS_EVERY_S = 2.0


class Progress:
    def __init__(self, command: str, err: TextIO, every_s: float = PROGRESS_EVERY_S) -> None:
        self.command = command
        self.err = err
        self.every_s = every_s
        self._last = time.monotonic()

    def due(self) -> bool:
        return time.monotonic() - self._last >= self.every_s

    def maybe(self, message: str) -> None:
        """Write ``message`` if the last line is old enough (cheap to call per record)."""
        if self.due():
            self.say(message)

    def say(self, message: str) -> None:
        """Write ``message`` now: a phase change or a summary line."""
        self.err.write(f"hookline {self.command}: {message}\n")
        self.err.flush()
        self._last = time.monotonic()
