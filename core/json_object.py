"""Strict JSON objects: what the gateway accepts and the workers read, identically.

RFC 8259 JSON only, refused otherwise: not UTF-8 (or a BOM), NaN/Infinity,
numbers that overflow a double (``1e999``), lone surrogate escapes
(``"\\ud800"``, which no UTF-8 encoder can write back: they made the gateway
fail with a 500) and duplicate keys (``{"token": A, "token": B}`` means A to a
first-key-wins reader and B to a last-key-wins one, so one of them is fooled).
Nesting is bounded: deep documents are never legitimate webhooks.

orjson does the parsing (C speed, strict about everything above except
duplicate keys). Two cheap passes add what it lacks: duplicate keys are found
by comparing the ``:`` separators outside strings (one per key/value pair in
the text) with the keys the parsed objects hold; integers too long for 64
bits, which orjson would turn into floats, are re-read exactly by the standard
library so a worker sees the same numbers the provider sent.
"""

from __future__ import annotations

import json
import re
from typing import Any

import orjson

#: The gateway's default (HOOKLINE_MAX_JSON_DEPTH); workers use the same.
DEFAULT_MAX_DEPTH = 32

#: One JSON string token; applied only to text orjson has validated, where
#: every '"' outside a string opens one.
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')
#: Digits to "0", everything else to " ": a run of 19 zeros is a number that
#: orjson may not hold exactly (2**63 has 19 digits).
_DIGITS = bytes(48 if 48 <= byte <= 57 else 32 for byte in range(256))
_LONG_DIGITS = b"0" * 19


class NotAJsonObject(ValueError):
    """The bytes are not one strict JSON object; the message says why."""


def _reason(error: orjson.JSONDecodeError) -> str:
    # orjson's messages are fixed texts plus a position; a short class of
    # problem is enough for the sender, and never echoes its content.
    message = str(error)
    if "surrogate" in message and "UTF-8" not in message:
        return "body has a lone surrogate escape (not representable in UTF-8)"
    if "UTF-8" in message or "BOM" in message:
        return "body is not UTF-8"
    if "infinity" in message:
        return "body has a number out of range"
    if "recursion" in message:
        return "JSON nested too deep"
    return "body is not valid JSON"


def _exact(body: bytes) -> Any:
    """The standard library's exact integers, for the rare body that needs them."""

    def finite(text: str) -> float:
        value = float(text)
        if value in (float("inf"), float("-inf")):
            raise NotAJsonObject("body has a number out of range")
        return value

    try:
        return json.loads(body, parse_float=finite)
    except NotAJsonObject:
        raise
    except (ValueError, RecursionError):  # an integer beyond int_max_str_digits
        raise NotAJsonObject("body has a number out of range") from None


def _outside_strings(body: bytes) -> bytes:
    """The text with every string emptied: structure, numbers and literals remain."""
    if b"\\" not in body:
        # No escapes, so every '"' delimits a string: split is C speed, no regex.
        return b"".join(body.split(b'"')[0::2])
    return _STRING.sub(b"", body)


def _shape(document: dict[str, Any], limit: int) -> int | None:
    """Keys held by all objects, or None when nesting exceeds ``limit``.

    Level by level, so the depth is checked once per level and not per node:
    this walk runs for every webhook.
    """
    keys = 0
    level: list[Any] = [document]
    depth = 1
    while level:
        if depth > limit:
            return None
        below: list[Any] = []
        for node in level:
            if type(node) is dict:
                keys += len(node)
                children = node.values()
            else:
                children = node
            for child in children:
                kind = type(child)
                if kind is dict or kind is list:
                    below.append(child)
        level = below
        depth += 1
    return keys


def loads_object(body: bytes, max_depth: int = DEFAULT_MAX_DEPTH) -> dict[str, Any]:
    """The body as a strict JSON object, or :class:`NotAJsonObject` saying why not."""
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise NotAJsonObject(_reason(exc)) from None
    if not isinstance(document, dict):
        raise NotAJsonObject("body must be a JSON object")
    structure = _outside_strings(body)
    if _LONG_DIGITS in structure.translate(_DIGITS):
        document = _exact(body)
    keys = _shape(document, max_depth)
    if keys is None:
        raise NotAJsonObject(f"JSON nested deeper than {max_depth} levels")
    if keys != structure.count(b":"):
        raise NotAJsonObject("body has a duplicate key in a JSON object")
    return document
