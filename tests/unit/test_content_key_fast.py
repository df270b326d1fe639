"""core/content_key.py's orjson path: byte-for-byte the digest it always was.

Digests live for days in the deduplication tables, across upgrades: a digest
that changed for the same content would turn a provider's retry into a
"conflict". So the new :func:`digest` is compared with a frozen copy of the
implementation it replaced (the standard library's ``json.dumps``), on every
JSON body the tests ship, on seeded random documents, and on the exact
documents where orjson writes (or accepts) something else, which must take the
reference path. Where the reference raises, the same exception must come out.
"""

from __future__ import annotations

import collections
import dataclasses
import datetime
import enum
import hashlib
import json
import math
import random
import struct
import sys
import types
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import orjson
import pytest
from hookline.core import content_key
from hookline.core.content_key import digest
from hookline.core.json_object import loads_object

# -- the reference: core/content_key.py as it was, frozen -------------------------------------


def reference_without(document: Mapping[str, Any], paths: Iterable[str]) -> dict[str, Any]:
    result = dict(document)
    for path in paths:
        _reference_drop(result, path.split("."))
    return result


def _reference_drop(node: dict[str, Any], parts: list[str]) -> None:
    head, rest = parts[0], parts[1:]
    if head not in node:
        return
    if not rest:
        del node[head]
        return
    child = node[head]
    if isinstance(child, dict):
        node[head] = dict(child)
        _reference_drop(node[head], rest)


def _reference_canonical_numbers(node: Any) -> Any:
    if isinstance(node, float) and node.is_integer():
        return int(node)
    if isinstance(node, dict):
        return {key: _reference_canonical_numbers(value) for key, value in node.items()}
    if isinstance(node, list):
        return [_reference_canonical_numbers(value) for value in node]
    return node


def reference_digest(document: Mapping[str, Any], ignore: Iterable[str] = ()) -> str:
    content = _reference_canonical_numbers(reference_without(document, ignore))
    text = json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


# -- helpers ----------------------------------------------------------------------------------


def outcome(function: Callable[..., str], *args: Any) -> tuple[str, str]:
    """The digest, or the exception's type and message: both must match the reference."""
    try:
        return ("digest", function(*args))
    except RecursionError:
        return ("raised", "RecursionError")  # the message names where the stack ran out
    except Exception as exc:
        return ("raised", f"{type(exc).__name__}: {exc}")


def fast_path_taken(document: Any, ignore: tuple[str, ...] = ()) -> bool:
    """Whether digest() writes this document with orjson (no fallback)."""
    try:
        content = content_key._plain_dict(document, content_key._skip_tree(ignore), 1)  # noqa: SLF001 (the fast path itself)
        orjson.dumps(content, option=content_key._ORJSON_OPTIONS)  # noqa: SLF001
    except (content_key._NotPlain, TypeError, RecursionError):  # noqa: SLF001
        return False
    return True


def assert_same(document: Any, ignore: Iterable[str] = ()) -> None:
    # Not an iterator: both calls read the same paths.
    assert not isinstance(ignore, Iterator)
    assert outcome(digest, document, ignore) == outcome(reference_digest, document, ignore)


def bits(pattern: int) -> float:
    return struct.unpack("<d", struct.pack("<Q", pattern))[0]


def pattern(value: float) -> int:
    return struct.unpack("<Q", struct.pack("<d", value))[0]


# -- (a) every JSON body the tests ship -------------------------------------------------------

TESTS = Path(__file__).resolve().parents[1]
SHARED_PAYLOADS = TESTS.parents[1] / "shared" / "spec" / "payloads"
BODIES = sorted(TESTS.rglob("*.json")) + (
    sorted(SHARED_PAYLOADS.glob("*.json")) if SHARED_PAYLOADS.is_dir() else []
)
#: The dedup_ignore of the sources in the tests and docs, then paths that hit the fixtures.
IGNORES: list[tuple[str, ...]] = [
    (),
    ("sent_at", "meta.attempt"),
    ("created_at",),
    ("amount", "orders", "data.amount", "paymentDetails.amount", "vignetteSale.data"),
    ("vignetteSale.data.totalCurrencyAmount.amountEUR", "vignetteSale.success", "data"),
    ("vignetteSale", "vignetteSale.error.code", "event_type.deeper", "missing.path"),
]


def test_there_are_bodies_to_compare() -> None:
    assert len(BODIES) >= 9


@pytest.mark.parametrize("path", BODIES, ids=lambda path: path.name)
def test_every_shipped_body_has_its_old_digest(path: Path) -> None:
    body = path.read_bytes()
    for document in (loads_object(body), json.loads(body)):
        # The fields a source ignores, present: a retry's send time and attempt counter.
        stamped = {**document, "sent_at": "2026-11-21T10:15:02Z", "meta": {"attempt": 2.0}}
        for ignore in IGNORES:
            for candidate in (document, stamped):
                assert digest(candidate, ignore) == reference_digest(candidate, ignore)
                assert fast_path_taken(candidate, ignore)


def test_shipped_bodies_never_reach_the_standard_library(monkeypatch: pytest.MonkeyPatch) -> None:
    # The speed-up is the point: real payloads, integral amounts included, take orjson.
    def refuse(*args: Any, **kwargs: Any) -> str:
        raise AssertionError("json.dumps called")

    monkeypatch.setattr(content_key.json, "dumps", refuse)
    for path in BODIES:
        document = loads_object(path.read_bytes().replace(b".70", b".00"))
        assert digest(document, ("sent_at", "meta.attempt"))


# -- (b) seeded random documents --------------------------------------------------------------

CHARACTERS = (
    "abcxyzABC019 _-./:"
    '"\\/\b\f\n\r\t\x00\x01\x1f\x7f\x80\x9f\xa0'
    "éőűÿĀЖ中文日本語\u0300\u2028\u2029\ufeff\ufffd\uffff\ue000"
    "\U0001f600\U0001f4a9\U00010000\U0010ffff"
)
INTEGERS = [
    0,
    1,
    -1,
    42,
    2**31,
    2**53 + 1,
    2**63 - 1,
    2**63,
    -(2**63),
    -(2**63) - 1,
    2**64 - 1,
    2**64,
    -(2**64),
    10**30,
    -(10**40),
]
FLOATS = [
    0.0,
    -0.0,
    15.0,
    -3.0,
    15.7,
    31.4,
    0.1,
    1e-4,
    -1e-4,
    math.nextafter(1e-4, 0.0),
    1e-5,
    1.5e-7,
    5e-324,
    2.2250738585072014e-308,
    123456.789,
    2.0**52 - 0.5,
    2.0**53,
    1e15 + 0.5,
    1e16,
    1.5e16,
    2.0**63,
    -(2.0**63),
    2.0**64,
    1e20,
    1e300,
    1.7976931348623157e308,
    math.inf,
    -math.inf,
    math.nan,
]


def random_text(rng: random.Random) -> str:
    return "".join(rng.choice(CHARACTERS) for _ in range(rng.randrange(0, 8)))


def random_float(rng: random.Random) -> float:
    choice = rng.randrange(5)
    if choice == 0:
        return rng.choice(FLOATS)
    if choice == 1:  # any finite double, tiny to huge
        value = bits(rng.getrandbits(64))
        return value if math.isfinite(value) else 1.5
    if choice == 2:  # an amount
        return rng.randrange(-100_000, 100_000) / 100
    if choice == 3:  # an integral float
        return float(rng.randrange(-(10**6), 10**6)) * rng.choice((1, 1, 10**10, 10**14))
    return rng.random() * 10.0 ** rng.randrange(-8, 18)


def random_leaf(rng: random.Random, awkward: bool) -> Any:
    choice = rng.randrange(10 if awkward else 8)
    if choice < 3:
        return random_text(rng)
    if choice == 3:
        return rng.randrange(-(10**6), 10**6)
    if choice < 6:
        return random_float(rng) if awkward else rng.randrange(-99_999, 99_999) / 100
    if choice == 6:
        return rng.choice((True, False, None))
    if choice == 7:
        return rng.choice(({}, [], ""))
    if choice == 8:
        return rng.choice(INTEGERS)
    return rng.choice(("\ud800", "a\udfffb", "\udbff\udc00"))  # lone surrogates


def random_document(rng: random.Random, depth: int, awkward: bool) -> Any:
    if depth >= 5 or rng.random() < 0.3:
        return random_leaf(rng, awkward)
    if rng.random() < 0.35:
        return [random_document(rng, depth + 1, awkward) for _ in range(rng.randrange(0, 5))]
    return {
        random_text(rng): random_document(rng, depth + 1, awkward)
        for _ in range(rng.randrange(0, 6))
    }


def random_paths(rng: random.Random, document: dict[str, Any]) -> tuple[str, ...]:
    """Dotted paths, most of them naming fields the document has."""
    paths = []
    for _ in range(rng.randrange(0, 4)):
        parts, node = [], document
        while isinstance(node, dict) and node and rng.random() < 0.8:
            key = rng.choice(list(node))
            parts.append(key)
            node = node[key]
        paths.append(".".join(parts) if rng.random() < 0.9 else random_text(rng))
    return tuple(paths)


@pytest.mark.parametrize("seed", range(8))
def test_random_documents_have_their_old_digest(seed: int) -> None:
    rng = random.Random(seed)
    fast = slow = 0
    for index in range(500):
        awkward = index % 2 == 1
        document = {"k": 0} | {
            random_text(rng): random_document(rng, 1, awkward) for _ in range(rng.randrange(8))
        }
        for ignore in ((), random_paths(rng, document)):
            assert_same(document, ignore)
            if fast_path_taken(document, ignore):
                fast += 1
            else:
                slow += 1
    # Both paths are exercised; plain documents (half of them) go fast.
    assert fast >= 500
    assert slow >= 100


def test_float_formatting_is_identical_where_orjson_is_used() -> None:
    # The walk lets through non-integral floats with 1e-4 <= |x|, all below 2**52
    # (from 2**52 on every double is integral). Both libraries write them alike.
    rng = random.Random(2026)
    low, high = pattern(1e-4), pattern(2.0**53)
    values = [bits(rng.randrange(low, high)) for _ in range(100_000)]
    values += [float(f"{rng.randrange(1, 10**9)}e{rng.randrange(-12, 9)}") for _ in range(50_000)]
    values += [
        bits(pattern(10.0**exponent) + step)
        for exponent in range(-4, 16)
        for step in (-3, -2, -1, 1, 2, 3)
    ]
    values = [x for x in values if 1e-4 <= x < 2.0**53 and not x.is_integer()]
    values += [-x for x in values]
    assert len(values) > 200_000
    assert orjson.dumps(values) == json.dumps(values, separators=(",", ":")).encode()


def test_every_character_and_key_order_is_identical() -> None:
    everything = "".join(chr(c) for c in range(0x110000) if not 0xD800 <= c < 0xE000)
    assert orjson.dumps(everything) == json.dumps(everything, ensure_ascii=False).encode()
    rng = random.Random(7)
    keys = {
        "".join(rng.choice(everything) for _ in range(rng.randrange(4))): 1 for _ in range(5000)
    }
    assert fast_path_taken(keys)
    assert digest(keys) == reference_digest(keys)


# -- (c) the documents that must take the reference path --------------------------------------


class Text(str):
    pass


class Number(float):
    pass


class Color(enum.Enum):
    RED = "red"


class Level(enum.IntEnum):
    HIGH = 3


@dataclasses.dataclass
class Point:
    x: int


def nested(levels: int) -> dict[str, Any]:
    document: dict[str, Any] = {}
    node = document
    for _ in range(levels - 1):
        node["a"] = {}
        node = node["a"]
    return document


def cyclic() -> dict[str, Any]:
    document: dict[str, Any] = {"n": 1.0}
    document["self"] = document
    return document


FALLBACKS: dict[str, Any] = {
    # Python "1e-05", orjson "0.00001" (or "1.5e-7" for "1.5e-07").
    "small float": {"x": 1e-05},
    "small float just below 1e-4": {"x": math.nextafter(1e-4, 0.0)},
    "small negative float": {"x": [-1.5e-07]},
    "smallest subnormal": {"x": 5e-324},
    # Python "NaN"/"Infinity", orjson null.
    "NaN": {"x": math.nan},
    "infinity": {"x": {"y": math.inf}},
    "negative infinity": {"x": -math.inf},
    # orjson raises beyond 64 bits; Python writes every digit.
    "2**64": {"x": 2**64},
    "-2**63 - 1": {"x": [-(2**63) - 1]},
    "integral float beyond 64 bits": {"x": 1e20},
    "huge integral float": {"x": 1.7976931348623157e308},
    # orjson raises; Python writes them through "surrogatepass".
    "lone surrogate": {"x": "\ud800"},
    "lone surrogate key": {"\udfff": 1},
    "surrogate pair as two code points": {"x": "\ud83d\ude00"},
    # Keys that are not str: Python converts them (and sorts them if it can).
    "int key": {1: "a"},
    "float key": {"a": {1.5: 2}},
    "bool and None keys": {"a": {True: 1, None: 2}},
    "mixed keys": {"a": 1, 2: "b"},
    "str subclass key": {Text("b"): 1, "a": 2},
    # Not exactly a JSON type: Python writes them (or raises) its own way.
    "str subclass": {"x": Text("v")},
    "float subclass": {"x": Number(2.0)},
    "int enum": {"x": Level.HIGH},
    "enum": {"x": Color.RED},
    "tuple": {"x": (1.0, "a", 2)},
    "dict subclass": {"x": collections.OrderedDict(b=1.0, a=2)},
    "list subclass": {"x": collections.UserList([1.0])},
    "mapping": {"x": types.MappingProxyType({"a": 1})},
    "datetime": {"x": datetime.datetime(2026, 11, 21, tzinfo=datetime.UTC)},
    "uuid": {"x": uuid.UUID(int=1)},
    "dataclass": {"x": Point(1)},
    "bytes": {"x": b"raw"},
    "set": {"x": {1}},
    "orjson fragment": {"x": orjson.Fragment(b"[1.0]")},
    # orjson refuses 255 levels; the walk leaves 200 to the reference.
    "deep": nested(300),
    "very deep": nested(5000),
    "cycle": cyclic(),
}


@pytest.mark.parametrize("name", FALLBACKS)
def test_what_orjson_writes_otherwise_takes_the_reference_path(name: str) -> None:
    document = FALLBACKS[name]
    assert not fast_path_taken(document)
    assert_same(document)
    assert_same(document, ("x", "a.y"))
    if "x" in document:  # the same value in a list, and in a list in a list
        for wrapped in ({"l": [1, document["x"]]}, {"l": [[document["x"]], 2.0]}):
            assert not fast_path_taken(wrapped)
            assert_same(wrapped)


def test_the_fallbacks_are_real_differences_or_refusals() -> None:
    # If orjson ever wrote these as the standard library does, the checks could go.
    for value in (1e-05, 1.5e-07, math.nan, math.inf):
        assert orjson.dumps(value) != json.dumps(value).encode()
    for value in (2**64, -(2**63) - 1, "\ud800"):
        with pytest.raises(orjson.JSONEncodeError):
            orjson.dumps(value)


@pytest.mark.parametrize(
    "document",
    [
        {"x": 1e-4},
        {"x": -1e-4},
        {"x": 2.0**52 - 0.5},
        {"x": 2.0**53},
        {"x": 1e16},
        {"x": 2.0**63},
        {"x": -(2.0**63)},
        {"x": 2**64 - 1, "y": -(2**63)},
        {"x": -0.0, "y": [0.0, -0.0]},
        {"x": '\x00\x1f\x7f\u2028\u2029"\\/', "\u2028": "\U0001f600"},
        {"": {}, " ": [], "\n": [[], {}]},
        nested(200),
    ],
)
def test_edges_orjson_writes_alike_take_the_fast_path(document: dict[str, Any]) -> None:
    assert fast_path_taken(document)
    assert_same(document)


def test_top_level_that_is_not_exactly_a_dict() -> None:
    for document in (
        types.MappingProxyType({"a": 1.0}),
        collections.OrderedDict(b=1, a=2.0),
        collections.UserDict({"a": [1.0]}),
    ):
        assert_same(document, ("a",))
    for not_a_mapping in (None, 5, [("a", 1)], "ab"):
        assert_same(not_a_mapping, ("a",))


# -- dedup_ignore paths -----------------------------------------------------------------------

DOCUMENT = {
    "": 0,
    "a": {"": 1.0, "b": {"c": 2.0, "d": 3}, "x": [{"b": 1}]},
    "meta": {"attempt": 2.0, "trace": "t", "inner": {"x": 1, "y": 2.5}},
    "sent_at": "s",
    "list": [{"x": 1.0}],
    "text": "t",
}


@pytest.mark.parametrize(
    "ignore",
    [
        ("sent_at", "meta.attempt"),
        ("meta", "meta.attempt"),
        ("meta.attempt", "meta"),
        ("meta.inner.x", "meta.inner", "meta.inner.y"),
        ("a.b.c", "a.b.c", "a.b.d"),
        ("a.b.c.deeper", "text.deeper", "list.x", "list.0.x", "missing", "missing.x"),
        ("",),
        ("a.",),
        (".a",),
        ("a..b",),
        ("a.x.b",),
        ("sent_at", "sent_at"),
        tuple(DOCUMENT),
    ],
)
def test_ignored_paths_drop_what_they_dropped(ignore: tuple[str, ...]) -> None:
    assert fast_path_taken(DOCUMENT, ignore)
    assert_same(DOCUMENT, ignore)
    assert_same(DOCUMENT, list(ignore))
    assert digest(DOCUMENT, iter(ignore)) == reference_digest(DOCUMENT, ignore)


@pytest.mark.parametrize(
    "ignore",
    [["a", 1], ["a", ["b"]], ["a", None], 5, None, "meta"],
    ids=["int path", "list path", "None path", "int", "None", "string"],
)
def test_odd_ignore_arguments_behave_as_before(ignore: Any) -> None:
    assert_same(DOCUMENT, ignore)


def test_the_document_is_left_alone() -> None:
    document = {"a": 1.0, "meta": {"attempt": 3, "inner": {"x": 1.0}}, "list": [2.0, {"y": 3.0}]}
    snapshot = json.dumps(document)
    digest(document, ("meta.attempt", "meta.inner.x", "a"))
    digest(document)
    assert json.dumps(document) == snapshot
    assert type(document["a"]) is float
    assert type(document["list"][0]) is float


def test_recursion_limit_is_not_lowered() -> None:
    # The reference path runs at the stack depth it always ran at: the deepest
    # document the old code could digest still digests, one level more fails alike.
    low, high = 1, sys.getrecursionlimit()
    while low < high:
        middle = (low + high + 1) // 2
        if outcome(reference_digest, nested(middle))[0] == "digest":
            low = middle
        else:
            high = middle - 1
    assert low > 300
    assert outcome(digest, nested(low)) == outcome(reference_digest, nested(low))
    assert outcome(digest, nested(low + 1)) == ("raised", "RecursionError")
