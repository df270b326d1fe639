"""What makes two deliveries "the same JSON content" (PRODUCT.md section 4).

A provider retry may re-serialize its body: other whitespace, other key order,
``15.70`` written ``15.7``. Hashing the bytes would call that a new event.
The digest here is over a canonical form instead: keys sorted, no
whitespace, integral floats written as integers, and the fields a source
names in ``dedup_ignore`` (a send time, an attempt counter) left out.

The canonical text is the standard library's ``json.dumps(sort_keys=True,
separators=(",", ":"), ensure_ascii=False)``, UTF-8 with "surrogatepass", and
it must never change: digests live for days in the deduplication tables, and
a new digest for old content turns a provider's retry into a "conflict".
The end of :func:`digest` computes it exactly so. Before that, :func:`digest`
reaches the same bytes several times faster with orjson, for documents where
orjson was shown to write what the standard library writes
(tests/unit/test_content_key_fast.py). The differences found, and where each
goes:

* floats below 1e-4 in magnitude: Python writes ``1e-05``, orjson ``0.00001``
  (or ``1.5e-7`` for ``1.5e-07``); NaN and infinities: Python writes ``NaN``
  and ``Infinity``, orjson ``null``. The walk sends any such float to the
  reference. Non-integral finite floats from 1e-4 on are below 2**52, where
  both write the same shortest round-trip decimal (integral floats are
  written as integers before either sees them).
* integers beyond 64 bits (also ``int(1e20)``) and lone surrogates (which
  Python passes through with "surrogatepass"): orjson raises, so they go to
  the reference too, as do non-string keys and nesting orjson refuses.
* anything but exact ``dict``/``list``/``str``/``int``/``float``/``bool``/
  ``None`` (subclasses, tuples, enums, other mappings), which orjson might
  write differently or accept where the standard library raises: the walk
  refuses them, so the reference gives today's result or today's error.

Control characters, ``"\\u0000"``, U+007F, U+2028/U+2029, every other code
point and the order of sorted keys (code point order for both) are written
identically and need no check.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple

import orjson

#: Sorted keys; subclasses of builtins, dataclasses and datetimes raise
#: instead of being converted (the walk refuses them first anyway).
_ORJSON_OPTIONS = (
    orjson.OPT_SORT_KEYS
    | orjson.OPT_PASSTHROUGH_SUBCLASS
    | orjson.OPT_PASSTHROUGH_DATACLASS
    | orjson.OPT_PASSTHROUGH_DATETIME
)
#: Nesting the walk follows before leaving the document to the reference
#: (orjson itself refuses 255 levels; webhooks are parsed with at most 32).
_MAX_DEPTH = 200
#: Smallest magnitude of a float both libraries write alike (Python writes
#: ``9.999999999999999e-05`` just below, orjson ``0.00009999999999999999``).
_SMALLEST_SAFE = 1e-4
_LARGEST_SAFE = 1e16


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


class _NotPlain(Exception):
    """The document holds something orjson may write unlike the standard library."""


class _Skip(NamedTuple):
    """The ``dedup_ignore`` paths at one level of nesting, as a tree."""

    #: Keys dropped at this level.
    drop: tuple[str, ...]
    #: Keys whose object holds deeper dropped paths.
    into: dict[str, _Skip]


_LEAF = object()


@functools.lru_cache(maxsize=64)
def _skip_tree(paths: tuple[str, ...]) -> _Skip | None:
    """``paths`` as a tree, parsed once per source rather than per delivery.

    Drops the same fields as :func:`without`: a path under one that is
    dropped whole changes nothing, whichever comes first.
    """
    root: dict[str, Any] = {}
    for path in paths:
        if type(path) is not str:
            raise _NotPlain
        *parents, last = path.split(".")
        level = root
        for part in parents:
            child = level.setdefault(part, {})
            if child is _LEAF:
                break
            level = child
        else:
            level[last] = _LEAF
    return _freeze(root)


def _freeze(level: dict[str, Any]) -> _Skip | None:
    if not level:
        return None
    drop = tuple(key for key, child in level.items() if child is _LEAF)
    into = {key: _freeze(child) for key, child in level.items() if child is not _LEAF}
    return _Skip(drop, {key: child for key, child in into.items() if child is not None})


def _plain_dict(node: dict[str, Any], skip: _Skip | None, depth: int) -> dict[str, Any]:
    """``node`` minus ``skip``, integral floats as ints; a copy only if that changes it.

    Raises :class:`_NotPlain` for anything orjson is not known to write as
    the standard library does. The float and type checks are repeated inline
    in :func:`_plain_list` rather than shared: a call per value would cost
    more than the check (this runs for every delivery).
    """
    copy: dict[str, Any] | None = None
    into: dict[str, _Skip] = {}
    if skip is not None:
        into = skip.into
        for key in skip.drop:
            if key in node:
                if copy is None:
                    copy = dict(node)
                del copy[key]
    # Assigning existing keys while iterating a dict is allowed (its size stays).
    for key, value in (node if copy is None else copy).items():
        kind = type(value)
        if kind is str or kind is int or kind is bool or value is None:
            continue
        if kind is float:
            if not value.is_integer():
                if _SMALLEST_SAFE <= abs(value) < _LARGEST_SAFE:  # False for NaN, infinities
                    continue
                raise _NotPlain
            new = int(value)
        elif depth >= _MAX_DEPTH:
            raise _NotPlain
        elif kind is dict:
            new = _plain_dict(value, into.get(key) if into else None, depth + 1)
            if new is value:
                continue
        elif kind is list:
            new = _plain_list(value, depth + 1)
            if new is value:
                continue
        else:
            raise _NotPlain
        if copy is None:
            copy = dict(node)
        copy[key] = new
    return node if copy is None else copy


def _plain_list(node: list[Any], depth: int) -> list[Any]:
    """``node`` with integral floats as ints; a copy only if that changes it."""
    copy: list[Any] | None = None
    for index, value in enumerate(node):
        kind = type(value)
        if kind is str or kind is int or kind is bool or value is None:
            continue
        if kind is float:
            if not value.is_integer():
                if _SMALLEST_SAFE <= abs(value) < _LARGEST_SAFE:
                    continue
                raise _NotPlain
            new = int(value)
        elif depth >= _MAX_DEPTH:
            raise _NotPlain
        elif kind is dict:
            new = _plain_dict(value, None, depth + 1)
            if new is value:
                continue
        elif kind is list:
            new = _plain_list(value, depth + 1)
            if new is value:
                continue
        else:
            raise _NotPlain
        if copy is None:
            copy = list(node)
        copy[index] = new
    return node if copy is None else copy


def digest(document: Mapping[str, Any], ignore: Iterable[str] = ()) -> str:
    """Hex SHA-256 of the canonical JSON of ``document`` minus ``ignore``.

    orjson writes the text when one walk (the one that drops ``ignore`` and
    turns integral floats into ints) finds nothing it may write differently;
    otherwise, or if orjson refuses, the standard library does as it always did.
    """
    if type(document) is dict:
        if type(ignore) is not tuple:
            ignore = tuple(ignore)  # the reference may need the paths again
        try:
            content = _plain_dict(document, _skip_tree(ignore), 1)
            text = orjson.dumps(content, option=_ORJSON_OPTIONS)
        except (_NotPlain, TypeError, RecursionError):
            # TypeError: orjson.JSONEncodeError (a 64-bit overflow, a lone
            # surrogate, a non-string key), or paths that are not strings.
            pass
        else:
            return hashlib.sha256(text).hexdigest()
    # The reference, inline (not a call: the same stack depth as ever, for
    # the same RecursionError on the same absurdly deep documents).
    content = _canonical_numbers(without(document, ignore))
    text = json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()
