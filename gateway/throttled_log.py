"""Refusal log lines, rate-limited: an attacker must not be able to flood the log.

Every refusal is counted in the metrics; the log only needs enough lines to
show what is being refused. A token bucket lets ``burst`` lines through at
once and ``per_second`` after that; the lines it holds back are counted and
reported in the next line that goes through.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable


class ThrottledLog:
    def __init__(
        self,
        logger: logging.Logger,
        per_second: float = 2.0,
        burst: int = 20,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._logger = logger
        self._per_second = per_second
        self._burst = float(burst)
        self._clock = clock
        self._tokens = float(burst)
        self._last = clock()
        self.suppressed = 0

    def warning(self, message: str, *args: object) -> None:
        now = self._clock()
        self._tokens = min(self._burst, self._tokens + (now - self._last) * self._per_second)
        self._last = now
        if self._tokens < 1.0:
            self.suppressed += 1
            return
        self._tokens -= 1.0
        if self.suppressed:
            self._logger.warning(
                "%d similar lines not logged (rate limit; the metrics count every one)",
                self.suppressed,
            )
            self.suppressed = 0
        self._logger.warning(message, *args)
