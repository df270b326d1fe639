"""Log lines a client can cause, rate-limited: an attacker must not be able to flood the log.

Every refusal is counted in the metrics; the log only needs enough lines to
show what is being refused. A token bucket lets ``burst`` lines through at
once and ``per_second`` after that; the lines it holds back are counted and
reported with the next line that goes through. :class:`ThrottledLog` is the
gateway's own refusal log; :class:`ThrottleFilter` puts the same bound on a
library's logger (uvicorn's, which logs each malformed request).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable


class _Bucket:
    """``take()`` is True for at most ``burst`` calls at once and ``per_second`` after that."""

    def __init__(self, per_second: float, burst: int, clock: Callable[[], float]) -> None:
        self._per_second = per_second
        self._burst = float(burst)
        self._clock = clock
        self._tokens = float(burst)
        self._last = clock()

    def take(self) -> bool:
        now = self._clock()
        self._tokens = min(self._burst, self._tokens + (now - self._last) * self._per_second)
        self._last = now
        if self._tokens < 1.0:
            return False
        self._tokens -= 1.0
        return True


SUPPRESSED = "%d similar lines not logged (rate limit; the metrics count every one)"


class ThrottledLog:
    def __init__(
        self,
        logger: logging.Logger,
        per_second: float = 2.0,
        burst: int = 20,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._logger = logger
        self._bucket = _Bucket(per_second, burst, clock)
        self.suppressed = 0

    def warning(self, message: str, *args: object, **fields: str) -> None:
        """Log ``message`` unless over the rate; ``fields`` are the record's structured fields."""
        self._log(logging.WARNING, message, *args, **fields)

    def info(self, message: str, *args: object, **fields: str) -> None:
        """As :meth:`warning`, at INFO (the worker's rejected facts: data, not trouble)."""
        self._log(logging.INFO, message, *args, **fields)

    def _log(self, level: int, message: str, *args: object, **fields: str) -> None:
        if not self._bucket.take():
            self.suppressed += 1
            return
        if self.suppressed:
            self._logger.log(level, SUPPRESSED, self.suppressed)
            self.suppressed = 0
        self._logger.log(level, message, *args, extra=fields or None)


class ThrottleFilter(logging.Filter):
    """A logger filter letting WARNING and above through at a bounded rate (INFO and below pass).

    A held-back record is dropped and counted; the count is prefixed to the
    next record that passes, so the log still says how much it left out.
    """

    def __init__(
        self,
        per_second: float = 2.0,
        burst: int = 20,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        self._bucket = _Bucket(per_second, burst, clock)
        self.suppressed = 0

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        if not self._bucket.take():
            self.suppressed += 1
            return False
        if self.suppressed:
            record.msg = f"({SUPPRESSED % self.suppressed}) {record.msg}"
            self.suppressed = 0
        return True
