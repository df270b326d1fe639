"""Bounded reading and parsing of request bodies.

A body over the limit is refused as soon as the limit is crossed (or at once,
from Content-Length), so a client cannot make the gateway buffer more than the
limit. Parsing is hookline.json_object's strict, depth-bounded JSON.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

from starlette.responses import JSONResponse
from starlette.types import Receive, Scope, Send

from hookline.json_object import NotAJsonObject, loads_object


class BodyTooLarge(Exception):
    pass


class BadBody(Exception):
    """Not something hookline can accept as a webhook body (answered 400)."""


async def read_limited(
    stream: AsyncIterator[bytes], content_length: str | None, limit: int
) -> bytes:
    if content_length is not None:
        try:
            declared = int(content_length)
        except ValueError:
            raise BadBody("invalid Content-Length") from None
        if declared > limit:
            raise BodyTooLarge
    chunks: list[bytes] = []
    size = 0
    async for chunk in stream:
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge
        chunks.append(chunk)
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
