"""hookline tail's pure parts: --since parsing, JSON rendering, the order/transaction match."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal

import pytest

from hookline.tail import ORDER_FIELDS, TRANSACTION_FIELDS, jsonable, mentions, parse_since

NOW = datetime(2026, 11, 21, 10, 0, tzinfo=UTC)
NOW_MS = int(NOW.timestamp() * 1000)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("15m", NOW_MS - 15 * 60_000),
        ("2h", NOW_MS - 2 * 3_600_000),
        ("90s", NOW_MS - 90_000),
        ("1d", NOW_MS - 86_400_000),
        ("2026-11-21T09:00:00Z", NOW_MS - 3_600_000),
        ("2026-11-21T09:00:00", NOW_MS - 3_600_000),  # naive = UTC
        ("2026-11-21T10:00:00+01:00", NOW_MS - 3_600_000),
    ],
)
def test_parse_since(text: str, expected: int) -> None:
    assert parse_since(text, now=NOW) == expected


@pytest.mark.parametrize("text", ["yesterday", "15", "15x", ""])
def test_parse_since_rejects_garbage(text: str) -> None:
    with pytest.raises(ValueError, match="--since"):
        parse_since(text, now=NOW)


def test_jsonable_keeps_decimals_exact_and_bytes_readable() -> None:
    value = {"amount": Decimal("12.5000"), "body": b'{"a": 1}', "blob": b"\xff\x00", "n": [1]}
    assert json.loads(json.dumps(jsonable(value))) == {
        "amount": "12.5000",
        "body": '{"a": 1}',
        "blob": {"base64": "/wA="},
        "n": [1],
    }


def test_mentions_finds_ids_at_any_depth_and_in_raw_bodies() -> None:
    change = {"order_id": "o1", "after": {"transaction_id": "t1"}, "cause": {"x": "o2"}}
    assert mentions(change, "o1", ORDER_FIELDS)
    assert mentions(change, "t1", TRANSACTION_FIELDS)
    assert not mentions(change, "o2", ORDER_FIELDS)  # only in a field of another name
    event = {"entity_type": "transaction", "entity_id": "t9", "order_ids": ["o7", "o8"]}
    assert mentions(event, "t9", TRANSACTION_FIELDS)
    assert mentions(event, "o8", ORDER_FIELDS)
    assert not mentions(event, "t9", ORDER_FIELDS)
    letter = {"envelope": {"body": json.dumps({"saleRows": [{"id": "row_1"}]}).encode()}}
    assert mentions(letter, "row_1", ORDER_FIELDS)
    assert not mentions(letter, "row_", ORDER_FIELDS)  # whole values only
