"""core/content_key.py: "the same JSON content" as one digest (PRODUCT.md section 4)."""

from __future__ import annotations

import copy
import hashlib
from typing import Any

import pytest
from hookline.core.content_key import digest, without
from hookline.core.json_object import loads_object


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def test_digest_is_sha256_of_the_canonical_text() -> None:
    # The canonical form written by hand: sorted keys, no whitespace, UTF-8 text.
    document = {"b": [2, "x", None, True], "a": 1, "c": {"z": 1.5, "y": "é"}}
    expected = sha('{"a":1,"b":[2,"x",null,true],"c":{"y":"é","z":1.5}}')
    assert digest(document) == expected
    assert len(expected) == 64


@pytest.mark.parametrize(
    "text",
    [
        b'{"b": [2, "x"], "a": 15.70}',
        b'{"a":15.7,"b":[2,"x"]}',
        b'{\n  "b" : [ 2 , "x" ] ,\n\t"a" : 1.570e1\n}',
        b'{"a": 15.700000, "b": [2.0, "x"]}',
        b'{"b": [2e0, "\\u0078"], "a": 15.7}',
    ],
)
def test_reserialized_json_has_the_same_digest(text: bytes) -> None:
    assert digest(loads_object(text)) == digest({"a": 15.7, "b": [2, "x"]})


def test_integral_floats_count_as_integers_at_any_depth() -> None:
    floats = {"n": 3.0, "list": [1.0, {"deep": -2.0}], "zero": -0.0}
    ints = {"n": 3, "list": [1, {"deep": -2}], "zero": 0}
    assert digest(floats) == digest(ints)
    assert digest({"n": 3.5}) != digest({"n": 3})


def test_unicode_escapes_and_raw_characters_are_the_same_content() -> None:
    assert digest(loads_object('{"name": "Győr"}'.encode())) == digest(
        loads_object(b'{"name": "Gy\\u0151r"}')
    )


@pytest.mark.parametrize(
    ("one", "other"),
    [
        ({"a": 15.7}, {"a": 15.71}),
        ({"a": 1}, {"a": "1"}),
        ({"a": 1}, {"a": True}),
        ({"a": 0}, {"a": False}),
        ({"a": None}, {}),
        ({"a": [1, 2]}, {"a": [2, 1]}),
        ({"a": {"b": 1}}, {"a": {"b": 1, "c": 1}}),
        ({"a": "x"}, {"A": "x"}),
        ({"a": ""}, {"a": None}),
    ],
)
def test_any_meaningful_difference_changes_the_digest(
    one: dict[str, Any], other: dict[str, Any]
) -> None:
    assert digest(one) != digest(other)


def test_ignored_fields_do_not_count() -> None:
    first = {"id": 1, "sent_at": "10:00", "meta": {"attempt": 1, "trace": "t"}}
    retry = {"id": 1, "sent_at": "10:05", "meta": {"attempt": 2, "trace": "t"}}
    ignore = ("sent_at", "meta.attempt")
    assert digest(first) != digest(retry)
    assert digest(first, ignore) == digest(retry, ignore)
    assert digest(first, ignore) == digest({"id": 1, "meta": {"trace": "t"}})
    # Only the named leaf goes: a sibling still counts.
    other_trace = {**retry, "meta": {"attempt": 2, "trace": "u"}}
    assert digest(other_trace, ignore) != digest(first, ignore)
    # An ignored field that is absent is the same as one that is present.
    assert digest({"id": 1, "meta": {"trace": "t"}}, ignore) == digest(first, ignore)


def test_without_drops_dotted_paths() -> None:
    document = {"a": 1, "meta": {"attempt": 3, "inner": {"x": 1, "y": 2}}, "sent_at": "s"}
    assert without(document, ["sent_at", "meta.inner.x"]) == {
        "a": 1,
        "meta": {"attempt": 3, "inner": {"y": 2}},
    }
    assert without(document, ["meta"]) == {"a": 1, "sent_at": "s"}
    assert without(document, []) == document


@pytest.mark.parametrize(
    "path", ["missing", "missing.deeper", "a.b", "meta.nothing", "meta.attempt.deeper", "list.x"]
)
def test_paths_that_do_not_exist_change_nothing(path: str) -> None:
    document = {"a": 1, "meta": {"attempt": 3}, "list": [{"x": 1}]}
    assert without(document, [path]) == document
    assert digest(document, [path]) == digest(document)


def test_without_leaves_the_document_alone() -> None:
    document = {"a": 1, "meta": {"attempt": 3, "inner": {"x": 1}}, "sent_at": "s"}
    snapshot = copy.deepcopy(document)
    without(document, ["sent_at", "meta.attempt", "meta.inner.x"])
    digest(document, ["sent_at", "meta.attempt", "meta.inner.x"])
    assert document == snapshot
