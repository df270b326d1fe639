"""One time limit (the body timeout, the publish timeout) shared by every request.

``asyncio.timeout`` arms a timer of its own for each use and disarms it at
the end: with two limits per request (reading the body, waiting for Kafka)
that was about 7 % of the gateway's CPU per request under load, for limits
that almost never fire. Every use of one :class:`TimeLimit` lasts the same
number of seconds, so uses end due in the order they started: they are kept
in one insertion-ordered dict, starting one is an insert, ending one a
delete, and a single timer, armed for the oldest use, cancels the overdue
ones. The semantics are ``asyncio.timeout``'s: an overdue use has its task
cancelled, and the cancellation leaves the ``with`` block as
:class:`TimeoutError`; any other cancellation passes through unchanged.
"""

from __future__ import annotations

import asyncio
from types import TracebackType


class TimeLimit:
    """``with limit.use():`` bounds the block to ``seconds`` (no limit when None)."""

    def __init__(self, seconds: float | None) -> None:
        self.seconds = seconds
        #: Uses in progress, oldest (first due) first.
        self._due: dict[_Use, float] = {}
        self._timer: asyncio.TimerHandle | None = None

    def use(self) -> _Use:
        return _Use(self)

    @property
    def in_progress(self) -> int:
        return len(self._due)

    def _start(self, use: _Use, loop: asyncio.AbstractEventLoop) -> None:
        assert self.seconds is not None
        due = loop.time() + self.seconds
        self._due[use] = due
        if self._timer is None:
            self._timer = loop.call_at(due, self._expire, loop, due)

    def _expire(self, loop: asyncio.AbstractEventLoop, when: float) -> None:
        self._timer = None
        # A timer may fire a little before loop.time() reaches ``when`` (uvloop
        # counts milliseconds): what it was armed for is due all the same.
        now = max(loop.time(), when)
        overdue = []
        for use, due in self._due.items():
            if due > now:
                self._timer = loop.call_at(due, self._expire, loop, due)
                break
            overdue.append(use)
        for use in overdue:
            del self._due[use]
            use.expired = True
            use.task.cancel()


class _Use:
    """One ``with`` block under a :class:`TimeLimit`."""

    __slots__ = ("_cancelling", "_limit", "expired", "task")

    def __init__(self, limit: TimeLimit) -> None:
        self._limit = limit
        self.expired = False

    def __enter__(self) -> _Use:
        limit = self._limit
        if limit.seconds is not None:
            task = asyncio.current_task()
            if task is None:
                raise RuntimeError("TimeLimit must be used inside a task")
            self.task = task
            self._cancelling = task.cancelling()
            limit._start(self, task.get_loop())  # noqa: SLF001 (TimeLimit's own helper)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if not self.expired:
            self._limit._due.pop(self, None)  # noqa: SLF001 (TimeLimit's own helper)
            return
        # As asyncio.timeout: our cancellation becomes TimeoutError unless the
        # task was also cancelled by someone else meanwhile.
        if self.task.uncancel() <= self._cancelling and exc_type is asyncio.CancelledError:
            raise TimeoutError from exc


#: For callers with no limit to apply.
UNLIMITED = TimeLimit(None)
