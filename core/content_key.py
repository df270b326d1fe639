"""What makes two deliveries "the same JSON content" (PRODUCT.md section 4).

A provider retry may re-serialize its body: other whitespace, other key order,
``15.70`` written ``15.7``. Hashing the bytes would call that a new event.
The digest here is over a canonical form instead: keys sorted, no
whitespace, integral floats written as integers, and the fields a source
names in ``dedup_ignore`` (a send time, an attempt counter) left out.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from typing import Any


def without(document: Mapping[str, Any], paths: Iterable[str]) -> dict[str, Any]:
    """A copy of ``document`` without the dotted ``paths`` (copying only what changes)."""
    result = dict(document)
    for path in paths:
        _drop(result, path.split("."))
    return result


def _drop(node: dict[str, Any], parts: list[str]) -> None:
    head, rest = parts[0], parts[1:]
    if head not in node:
        return
    if not rest:
        del node[head]
        return
    child = node[head]
    if isinstance(child, dict):
        node[head] = dict(child)
        _drop(node[head], rest)


def _canonical_numbers(node: Any) -> Any:
    if isinstance(node, float) and node.is_integer():
        return int(node)
    if isinstance(node, dict):
        return {key: _canonical_numbers(value) for key, value in node.items()}
    if isinstance(node, list):
        return [_canonical_numbers(value) for value in node]
    return node


def digest(document: Mapping[str, Any], ignore: Iterable[str] = ()) -> str:
    """Hex SHA-256 of the canonical JSON of ``document`` minus ``ignore``."""
    content = _canonical_numbers(without(document, ignore))
    text = json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()
