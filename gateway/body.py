"""Bounded reading and parsing of request bodies.

Every body is bounded three ways, because the gateway faces the open
internet: in size (refused as soon as the limit is crossed, or at once from
Content-Length, so nothing over the limit is buffered), in time (a body that
stops arriving is answered 408 instead of holding its connection and memory
forever), and, for senders not yet verified, in total (a shared
:class:`BodyBudget`; past it, 503). Parsing is hookline.core.json_object's strict,
depth-bounded JSON.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any

from hookline.core.json_object import NotAJsonObject, loads_object
from hookline.gateway.time_limit import UNLIMITED, TimeLimit
from starlette.responses import JSONResponse
from starlette.types import Receive, Scope, Send


class BodyTooLarge(Exception):
    pass


class BadBody(Exception):
    """Not something hookline can accept as a webhook body (answered 400)."""


class BodyTimeout(Exception):
    """The body did not arrive in time (answered 408)."""


class ClientGone(Exception):
    """The client closed the connection before its body was complete."""


class Busy(Exception):
    """The budget for unverified bodies is spent (answered 503, Retry-After)."""


class Evicted(Exception):
    """The body stalled while the budget was needed: evicted to make room (answered 408)."""


def declared_length(content_length: str | None) -> int | None:
    """Content-Length as a number (None when absent); :class:`BadBody` when not one."""
    if content_length is None:
        return None
    # int() would also take "+1", " 1", "1_0" and "²" (str.isdigit() is true for it)
    if not (content_length.isascii() and content_length.isdigit()):
        raise BadBody("invalid Content-Length")
    return int(content_length)


class BodyBudget:
    """Bytes of bodies held at once for senders not yet verified.

    Charged as bytes arrive (not by what Content-Length declares, so a sender
    that stalls after a few bytes holds only those), released when the request
    is verified or refused. A sender that proved itself before its body (a
    query token) is not charged.

    The budget protects memory, and must not hand the sources it protects to
    whoever fills it: besides the total, ``per_source`` and ``per_client``
    (bytes, per source name and per client address) bound what one target or
    one sender can hold. When a chunk does not fit, bodies that have made no
    progress for ``stall_s`` (in the pool that is full, longest stalled first)
    are evicted, their requests answered 408, before the chunk is refused. The
    shares bound what incomplete bodies hold: the final chunk of a body (the
    whole body in hand, about to be verified and let go) is admitted past
    them, and past the total by up to ``reserve`` bytes. So a stalled flood
    costs its senders their connections, not the authentic senders their
    deliveries. Invariant: ``used`` never exceeds ``limit + reserve``.
    """

    def __init__(
        self,
        limit: int,
        on_change: Callable[[int], None] | None = None,
        *,
        per_source: int | None = None,
        per_client: int | None = None,
        reserve: int = 0,
        stall_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limit = limit
        self.reserve = reserve
        self.stall_s = stall_s
        self.evicted = 0
        self._on_change = on_change
        self._clock = clock
        self._total = _Pool(limit)
        self._per_source = per_source
        self._per_client = per_client
        self._sources: dict[str, _Pool] = {}
        self._clients: dict[str, _Pool] = {}

    @property
    def used(self) -> int:
        return self._total.used

    def hold(self, source: str | None = None, client: str | None = None) -> BodyHold:
        pools = [self._total]
        if self._per_source is not None and source is not None:
            pools.append(self._pool(self._sources, source, self._per_source))
        if self._per_client is not None and client is not None:
            pools.append(self._pool(self._clients, client, self._per_client))
        return BodyHold(self, pools)

    @staticmethod
    def _pool(pools: dict[str, _Pool], key: str, cap: int) -> _Pool:
        pool = pools.get(key)
        if pool is None:
            pool = pools[key] = _Pool(cap, pools, key)
        pool.holds += 1
        return pool

    def _take(self, hold: BodyHold, size: int, final: bool) -> bool:
        now = self._clock()
        for pool in hold.pools:
            while pool.used + size > pool.cap:
                victim = pool.stalled(now - self.stall_s, hold)
                if victim is None:
                    break
                self._evict(victim)
        fits = all(pool.used + size <= pool.cap for pool in hold.pools)
        if not fits and not (final and self._total.used + size <= self.limit + self.reserve):
            return False
        for pool in hold.pools:
            pool.used += size
            pool.order.pop(hold, None)
            pool.order[hold] = None
        hold.size += size
        hold.progress_at = now
        self._changed()
        return True

    def _evict(self, victim: BodyHold) -> None:
        self.evicted += 1
        victim.evicted = True
        victim.release()
        if victim.task is not None:
            victim.task.cancel()

    def _give(self, hold: BodyHold) -> None:
        for pool in hold.pools:
            pool.used -= hold.size
            pool.order.pop(hold, None)
        self._changed()

    def _changed(self) -> None:
        if self._on_change:
            self._on_change(self._total.used)


class _Pool:
    """Bytes held against one bound; ``order``: its evictable holds, oldest progress first."""

    __slots__ = ("cap", "holds", "key", "order", "owner", "used")

    def __init__(self, cap: int, owner: dict[str, _Pool] | None = None, key: str = "") -> None:
        self.cap = cap
        self.used = 0
        self.holds = 0
        self.order: dict[BodyHold, None] = {}
        self.owner = owner
        self.key = key

    def stalled(self, since: float, other_than: BodyHold) -> BodyHold | None:
        """The hold with the oldest progress if it made none after ``since``."""
        for hold in self.order:
            if hold is other_than:
                continue
            return hold if hold.progress_at <= since else None
        return None

    def leave(self) -> None:
        self.holds -= 1
        if self.owner is not None and self.holds == 0:
            del self.owner[self.key]


class BodyHold:
    """One request's share of a :class:`BodyBudget`; released once, whatever happens."""

    def __init__(self, budget: BodyBudget, pools: list[_Pool]) -> None:
        self._budget = budget
        self.pools = pools
        self.size = 0
        self.progress_at = 0.0
        self.evicted = False
        self.task: asyncio.Task[Any] | None = None
        self._left = False

    def take(self, size: int, final: bool = False) -> None:
        """Charge ``size`` more bytes (``final``: the body's last); :class:`Busy` if refused."""
        if self.task is None:
            self.task = asyncio.current_task()
        if not self._budget._take(self, size, final):  # noqa: SLF001 (BodyBudget's own helper)
            raise Busy

    def finish(self) -> None:
        """The body is complete: its bytes stay charged, but it can no longer be evicted."""
        for pool in self.pools:
            pool.order.pop(self, None)

    def release(self) -> None:
        if self.size:
            self._budget._give(self)  # noqa: SLF001 (BodyBudget's own helper)
            self.size = 0
        else:
            self.finish()

    def __enter__(self) -> BodyHold:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()
        if not self._left:
            self._left = True
            for pool in self.pools:
                pool.leave()


async def read_body(
    receive: Receive,
    limit: int,
    *,
    time_limit: TimeLimit = UNLIMITED,
    hold: BodyHold | None = None,
) -> bytes:
    """The whole body from the ASGI channel, within ``limit`` bytes and ``time_limit``.

    Read straight from ``receive`` rather than through a request object's
    stream: a webhook body almost always arrives in the same read as its
    headers, and then this is one call with nothing to join.
    """
    chunks: list[bytes] = []
    size = 0
    try:
        with time_limit.use():
            while True:
                message = await receive()
                if message["type"] != "http.request":
                    # http.disconnect: the client left before its body was complete.
                    raise ClientGone
                chunk = message.get("body", b"")
                more = message.get("more_body", False)
                if chunk:
                    size += len(chunk)
                    if size > limit:
                        raise BodyTooLarge
                    if hold is not None:
                        hold.take(len(chunk), final=not more)
                    chunks.append(chunk)
                if not more:
                    break
    except TimeoutError:
        raise BodyTimeout from None
    except asyncio.CancelledError:
        task = asyncio.current_task()
        # Evicted by the budget, and cancelled by nobody else: a refusal, not a cancellation.
        if hold is not None and hold.evicted and task is not None and task.uncancel() == 0:
            raise Evicted from None
        raise
    if hold is not None:
        hold.finish()
    if len(chunks) == 1:
        return chunks[0]
    return b"".join(chunks)


class LingeringJSONResponse(JSONResponse):
    """A refusal sent in full at once, then a bounded drain of the unread body.

    Closing a connection with request bytes still unread makes the kernel
    reset it, and many clients then report the reset instead of the answer
    they were sent. So the answer's bytes go out first (the client can read
    them: Content-Length says they are complete), the rest of the body is
    read and dropped (at most ``drain_bytes``, ``drain_seconds``), and only
    then does the response end and the connection close. Nothing is buffered.
    """

    def __init__(
        self,
        content: Any,
        status_code: int,
        headers: dict[str, str],
        drain_bytes: int,
        drain_seconds: float = 2.0,
    ) -> None:
        super().__init__(content, status_code=status_code, headers=headers)
        self.drain_bytes = drain_bytes
        self.drain_seconds = drain_seconds

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send(
            {"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers}
        )
        await send({"type": "http.response.body", "body": self.body, "more_body": True})
        with contextlib.suppress(Exception):
            async with asyncio.timeout(self.drain_seconds):
                dropped = 0
                while dropped <= self.drain_bytes:
                    message = await receive()
                    if message["type"] != "http.request":
                        break
                    dropped += len(message.get("body", b""))
                    if not message.get("more_body", False):
                        break
        await send({"type": "http.response.body", "body": b"", "more_body": False})


def parse_object(body: bytes, max_depth: int) -> dict[str, Any]:
    """The body as a strict JSON object, or :class:`BadBody` saying why not."""
    try:
        return loads_object(body, max_depth)
    except NotAJsonObject as exc:
        raise BadBody(str(exc)) from None
