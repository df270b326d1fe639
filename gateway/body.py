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


async def discard(stream: AsyncIterator[bytes], limit: int, seconds: float = 2.0) -> None:
    """Read and drop what is left of a refused body, within bounds, after answering."""
    with contextlib.suppress(Exception):
        async with asyncio.timeout(seconds):
            dropped = 0
            async for chunk in stream:
                dropped += len(chunk)
                if dropped > limit:
                    return


def parse_object(body: bytes, max_depth: int) -> dict[str, Any]:
    """The body as a strict JSON object, or :class:`BadBody` saying why not."""
    try:
        return loads_object(body, max_depth)
    except NotAJsonObject as exc:
        raise BadBody(str(exc)) from None
