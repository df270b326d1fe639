"""Bounded reading and parsing of request bodies.

A body over the limit is refused as soon as the limit is crossed (or at once,
from Content-Length), so a client cannot make the gateway buffer more than the
limit. JSON nesting is bounded too: json.loads copes with deep nesting only up
to Python's recursion limit, and deep documents are never legitimate webhooks.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any


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


def _depth_exceeds(document: Any, limit: int) -> bool:
    stack: list[tuple[Any, int]] = [(document, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict):
            children = node.values()
        elif isinstance(node, list):
            children = node
        else:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
    return False


def parse_object(body: bytes, max_depth: int) -> dict[str, Any]:
    """The body as a JSON object, or :class:`BadBody` saying why not."""
    try:
        document = json.loads(body)
    except RecursionError:
        raise BadBody(f"JSON nested deeper than {max_depth} levels") from None
    except (ValueError, UnicodeDecodeError):
        raise BadBody("body is not valid JSON") from None
    if not isinstance(document, dict):
        raise BadBody("body must be a JSON object")
    if _depth_exceeds(document, max_depth):
        raise BadBody(f"JSON nested deeper than {max_depth} levels")
    return document
