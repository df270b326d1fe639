"""Strict JSON objects: what the gateway accepts and the workers read, identically.

RFC 8259 JSON only: UTF-8, no NaN or Infinity (Python's json module accepts
both, and UTF-16/32 too, which strict parsers downstream would then reject).
Nesting is bounded: json.loads copes with deep nesting only up to Python's
recursion limit, and deep documents are never legitimate webhooks.
"""

from __future__ import annotations

import json
from typing import Any

#: The gateway's default (HOOKLINE_MAX_JSON_DEPTH); workers use the same.
DEFAULT_MAX_DEPTH = 32


class NotAJsonObject(ValueError):
    """The bytes are not one strict JSON object; the message says why."""


def _no_constants(name: str) -> Any:
    raise NotAJsonObject(f"{name} is not JSON")


def _depth_exceeds(document: Any, limit: int) -> bool:
    stack: list[tuple[Any, int]] = [(document, 1)]
    while stack:
        node, depth = stack.pop()
        children = node.values() if isinstance(node, dict) else node
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
    return False


def loads_object(body: bytes, max_depth: int = DEFAULT_MAX_DEPTH) -> dict[str, Any]:
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise NotAJsonObject("body is not UTF-8") from None
    try:
        document = json.loads(text, parse_constant=_no_constants)
    except RecursionError:
        raise NotAJsonObject(f"JSON nested deeper than {max_depth} levels") from None
    except NotAJsonObject:
        raise
    except ValueError:
        raise NotAJsonObject("body is not valid JSON") from None
    if not isinstance(document, dict):
        raise NotAJsonObject("body must be a JSON object")
    if _depth_exceeds(document, max_depth):
        raise NotAJsonObject(f"JSON nested deeper than {max_depth} levels")
    return document
