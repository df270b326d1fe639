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


def declared_length(content_length: str | None) -> int | None:
    """Content-Length as a number (None when absent); :class:`BadBody` when not one."""
    if content_length is None:
        return None
    if not content_length.isdigit():  # int() would also take "+1", " 1", "1_0"
        raise BadBody("invalid Content-Length")
    return int(content_length)


class BodyBudget:
    """Bytes of bodies held at once for senders not yet verified.

    Charged as bytes arrive (not by what Content-Length declares, so a sender
    that stalls after a few bytes holds only those), released when the request
    is verified or refused. A sender that proved itself before its body (a
    query token) is not charged.
    """

    def __init__(self, limit: int, on_change: Callable[[int], None] | None = None) -> None:
        self.limit = limit
        self.used = 0
        self._on_change = on_change

    def hold(self) -> BodyHold:
        return BodyHold(self)

    def _take(self, size: int) -> bool:
        if self.used + size > self.limit:
            return False
        self.used += size
        if self._on_change:
            self._on_change(self.used)
        return True

    def _give(self, size: int) -> None:
        self.used -= size
        if self._on_change:
            self._on_change(self.used)


class BodyHold:
    """One request's share of a :class:`BodyBudget`; released once, whatever happens."""

    def __init__(self, budget: BodyBudget) -> None:
        self._budget = budget
        self.size = 0

    def take(self, size: int) -> None:
        if not self._budget._take(size):
            raise Busy
        self.size += size

    def release(self) -> None:
        if self.size:
            self._budget._give(self.size)
            self.size = 0

    def __enter__(self) -> BodyHold:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()


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
                if chunk:
                    size += len(chunk)
                    if size > limit:
                        raise BodyTooLarge
                    if hold is not None:
                        hold.take(len(chunk))
                    chunks.append(chunk)
                if not message.get("more_body", False):
                    break
    except TimeoutError:
        raise BodyTimeout from None
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
