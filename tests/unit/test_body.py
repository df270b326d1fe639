"""gateway/body.py: bounded reading (413 without reading the rest) and bounded JSON."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hookline.gateway.body import BadBody, BodyTooLarge, declared_length, parse_object, read_body
from starlette.types import Message

from tests.unit.helpers import PAYLOADS


class RecordingReceive:
    """An ASGI receive channel serving a body in chunks; remembers which were pulled."""

    def __init__(self, chunks: list[bytes]) -> None:
        self.chunks = chunks
        self.pulled: list[int] = []

    async def __call__(self) -> Message:
        index = len(self.pulled)
        self.pulled.append(index)
        more = index + 1 < len(self.chunks)
        return {"type": "http.request", "body": self.chunks[index], "more_body": more}


async def test_body_at_the_limit_is_read_whole() -> None:
    body = RecordingReceive([b"ab", b"", b"cd\x00\xff", b"e"])
    data = await read_body(body, limit=7)
    assert data == b"abcd\x00\xffe"
    assert body.pulled == [0, 1, 2, 3]


async def test_a_body_in_one_message_is_returned_as_sent() -> None:
    chunk = b'{"a": 1}'
    assert await read_body(RecordingReceive([chunk]), limit=100) is chunk


async def test_an_empty_body_is_empty() -> None:
    assert await read_body(RecordingReceive([b""]), limit=100) == b""


async def test_chunks_are_joined() -> None:
    assert await read_body(RecordingReceive([b'{"a":', b" 1}"]), limit=100) == b'{"a": 1}'


async def test_streamed_chunks_crossing_the_limit_stop_reading() -> None:
    body = RecordingReceive([b"a" * 6, b"b" * 6, b"c" * 6, b"d" * 6])
    with pytest.raises(BodyTooLarge):
        await read_body(body, limit=10)
    assert body.pulled == [0, 1]  # refused on the chunk that crossed, the rest never read


async def test_one_byte_over_the_limit() -> None:
    with pytest.raises(BodyTooLarge):
        await read_body(RecordingReceive([b"x" * 11]), limit=10)
    assert await read_body(RecordingReceive([b"x" * 10]), limit=10) == b"x" * 10


@pytest.mark.parametrize(
    "value", ["abc", "", "1.5", "0x10", "12 bytes", "1e3", "+1", " 1", "1_0", "²", "\u0661"]
)
def test_invalid_content_length_is_bad_body(value: str) -> None:
    with pytest.raises(BadBody):
        declared_length(value)


def test_content_length_is_read_exactly() -> None:
    assert declared_length(None) is None
    assert declared_length("0") == 0
    assert declared_length("1617") == 1617
    assert declared_length(str(10**30)) == 10**30  # refused by the caller's limit, not here


# -- parse_object ------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [b"", b"not json", b"{", b"{'a': 1}", b'{"a": 1} trailing', b"\xff\xfe\x00", b"\x80{}"],
)
def test_non_json_is_bad_body(body: bytes) -> None:
    with pytest.raises(BadBody):
        parse_object(body, max_depth=32)


@pytest.mark.parametrize(
    "body", [b"[]", b'[{"event_type": "X"}]', b'"text"', b"42", b"null", b"true"]
)
def test_json_that_is_not_an_object_is_bad_body(body: bytes) -> None:
    with pytest.raises(BadBody):
        parse_object(body, max_depth=32)


def nested(depth: int) -> Any:
    """A document with exactly ``depth`` levels of containers, alternating dict and list."""
    node: Any = "leaf"
    for level in range(depth - 1):
        node = [node] if level % 2 else {"k": node, "n": 1}
    return {"root": node}


@pytest.mark.parametrize("limit", [1, 2, 3, 10, 64])
def test_depth_at_the_limit_passes_and_one_more_fails(limit: int) -> None:
    assert parse_object(json.dumps(nested(limit)).encode(), max_depth=limit) == nested(limit)
    with pytest.raises(BadBody):
        parse_object(json.dumps(nested(limit + 1)).encode(), max_depth=limit)


def test_deep_branch_beside_shallow_ones_is_found() -> None:
    document = {"a": 1, "b": [1, 2, {"c": 3}], "deep": nested(40), "z": {"y": {}}}
    with pytest.raises(BadBody):
        parse_object(json.dumps(document).encode(), max_depth=20)


@pytest.mark.parametrize(
    "body",
    [
        b"[" * 100_000 + b"]" * 100_000,
        b'{"a":' * 100_000 + b"1" + b"}" * 100_000,
        b'{"a":' + b"[" * 100_000 + b"]" * 100_000 + b"}",
    ],
    ids=["lists", "objects", "object-of-lists"],
)
def test_hundred_thousand_levels_is_bad_body_not_recursion_error(body: bytes) -> None:
    with pytest.raises(BadBody):
        parse_object(body, max_depth=64)


@pytest.mark.parametrize("name", sorted(p.name for p in PAYLOADS.glob("*.json")))
def test_example_payloads_pass(name: str) -> None:
    body = (PAYLOADS / name).read_bytes()
    assert parse_object(body, max_depth=32) == json.loads(body)


def test_payments_body_passes() -> None:
    assert parse_object(b'{"token": "a.b.c"}', max_depth=2) == {"token": "a.b.c"}
