"""schemas/avro_writer.py: the compiled writers write exactly fastavro's bytes, or raise.

Every current schema is checked against ``fastavro.schemaless_writer`` on the
records the pipeline's pure functions make, on seeded random records, and on
invalid values, where ``codec.encode`` must still raise what it raised when
fastavro wrote every record (or ``CodecError`` where fastavro would coerce).
"""

from __future__ import annotations

import io
import json
import random
from collections import OrderedDict, defaultdict
from collections.abc import Iterator
from decimal import Decimal
from enum import IntEnum, StrEnum
from pathlib import Path
from typing import Any

import fastavro
import jwt
import pytest
from hookline.core.sources import Source
from hookline.gateway.envelope import new_delivery_id, raw_envelope
from hookline.schemas import codec
from hookline.schemas.avro_writer import UnsupportedSchema, compile_writer
from hookline.streams.dedup import new_entry
from hookline.streams.normalize import DeadLetter, Delivery, dead_letter, normalize
from hookline.streams.order_state import retire

from tests.unit.flow import Flow, checkout, order_status, payment, refund
from tests.unit.helpers import PAYLOADS, T0, payload, source

CURRENT = {schema.name: schema for schema in codec.REGISTRY}
RECORDS = sorted(name for name, schema in CURRENT.items() if schema.plain["type"] == "record")
WRITERS = {name: compile_writer(schema.plain) for name, schema in CURRENT.items()}


def fastavro_bytes(schema: Any, record: Any) -> bytes:
    out = io.BytesIO()
    fastavro.schemaless_writer(out, schema, record)
    return out.getvalue()


def assert_same_bytes(name: str, record: Any) -> None:
    """The compiled writer and codec.encode write what fastavro writes."""
    schema = CURRENT[name]
    expected = fastavro_bytes(schema.plain, record)
    assert WRITERS[name](record) == expected, record
    if name in RECORDS:
        assert codec.encode(name, record) == schema.header + expected


# -- (a) the records the pipeline makes ---------------------------------------------------------

SOURCES: dict[str, Source] = {
    kind: source(kind, kind, "token", dedup_window_ms=3_600_000)
    for kind in ("partner", "payments", "vignette-sales", "envelope")
}


def _bodies() -> Iterator[tuple[str, bytes]]:
    for path in sorted(PAYLOADS.glob("*.json")):
        kind = next(k for k in sorted(SOURCES, key=len, reverse=True) if path.name.startswith(k))
        if kind == "payments":  # the claims travel as a JWT (payments-body.md)
            token = jwt.encode(payload(path.name), "k" * 32, algorithm="HS256")
            yield kind, json.dumps({"token": token}).encode()
        else:
            yield kind, path.read_bytes()


def pipeline_records() -> dict[str, list[dict[str, Any]]]:
    """Per schema, what normalize, dedup, the join and the order stage write for a small story."""
    found: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for index, (kind, body) in enumerate(_bodies()):
        received_at = T0 + index * 1000
        delivery_id = new_delivery_id(received_at)
        headers = {"content-type": "application/json", "user-agent": "ü-agent/1"}
        envelope = raw_envelope(
            SOURCES[kind], body, headers, "203.0.113.9", received_at, delivery_id
        )
        found[codec.WEBHOOK_ENVELOPE].append(envelope)
        value = codec.encode(codec.WEBHOOK_ENVELOPE, envelope)
        result = normalize(delivery_id.encode(), value, "production", SOURCES)
        assert isinstance(result, Delivery), result
        found[codec.CANONICAL_EVENT] += result.events
        found[codec.DEDUP_ENTRY].append(
            new_entry(delivery_id, received_at, result.window_ms, result.content_digest)
        )
        found[codec.DELIVERY].append(
            {
                "delivery_id": delivery_id,
                "source": envelope["source"],
                "received_at": received_at,
                "ordering_key": result.events[0]["entity_id"],
                "dedup_key": result.dedup_key,
                "dedup_window_ms": result.window_ms,
                "events": result.events,
            }
        )
        letter = dead_letter(envelope, "normalize", f"reason ✗ {index}", delivery_id.encode())
        found[codec.DEAD_LETTER].append(letter.record)
    garbage = normalize(b"k", b"\xc3\x01garbage", "production", SOURCES)
    assert isinstance(garbage, DeadLetter)
    found[codec.DEAD_LETTER].append(garbage.record)

    class Recording(Flow):
        def to_transaction(self, transaction_id: str, event: Any) -> list[dict[str, Any]]:
            updates = super().to_transaction(transaction_id, event)
            found[codec.TRANSACTION_UPDATE] += updates
            return updates

    flow = Recording().run(
        [
            checkout("tr-1", "PENDING", T0, {"o-1": "15.7", "o-2": "0.05", "o-3": None}),
            order_status("o-1", "CREATED", T0 + 1, transaction_id="tr-1"),
            payment("tr-1", "SUCCEEDED", T0 + 2),
            order_status("o-1", "ACTIVE", T0 + 3, "tr-1", pdf="https://files.example.com/ö.pdf"),
            checkout("tr-2", "FAILED", T0 + 4, {"o-2": "99999999999999.9999"}, currency="HUF"),
            refund("o-1", "5.5", T0 + 5),
            refund("o-2", None, T0 + 6),
            order_status("o-4", "DEFERRED", T0 + 7),
            order_status("o-4", "CREATED", T0 + 8),  # a rejected fact
        ]
    )
    found[codec.REJECTED_FACT] += flow.facts
    found[codec.TRANSACTION_RECORD] += flow.transactions.values()
    found[codec.ORDER_RECORD] += flow.orders.values()
    found[codec.ORDER_RECORD] += [retire(record) for record in flow.orders.values()]
    for change in (c for changes in flow.changes.values() for c in changes):
        found[codec.ORDER_CHANGE].append(change)
        found[codec.ORDER_STATE] += [s for s in (change["before"], change["after"]) if s]
        found["hookline.ChangeCause"].append(change["cause"])
    found["hookline.ProviderError"] += [
        e["error"] for e in found[codec.CANONICAL_EVENT] if e["error"]
    ]
    return found


PIPELINE = pipeline_records()


def test_the_story_covers_every_record_schema() -> None:
    assert set(RECORDS) <= PIPELINE.keys()
    events = PIPELINE[codec.CANONICAL_EVENT]
    assert any(e["amount"] is not None for e in events)
    assert any(e["order_ids"] for e in events)
    assert any(r["claims"] and r["refunds"] for r in PIPELINE[codec.ORDER_RECORD])
    assert any(r["members"] for r in PIPELINE[codec.TRANSACTION_RECORD])


@pytest.mark.parametrize("name", RECORDS)
def test_pipeline_records_are_written_as_fastavro_writes_them(name: str) -> None:
    for record in PIPELINE[name]:
        assert_same_bytes(name, record)


def test_every_current_schema_is_compiled() -> None:
    # None falls back to fastavro today; a schema that would (a double, a
    # three-way union...) fails compile_writer with UnsupportedSchema above.
    assert WRITERS.keys() == CURRENT.keys()


def test_enum_schemas() -> None:
    for name in ("hookline.OrderStatus", "hookline.PaymentStatus"):
        for symbol in CURRENT[name].plain["symbols"]:
            assert_same_bytes(name, symbol)


# -- (b) random valid records ----------------------------------------------------------------

_ALPHABETS = (
    "abcdefghijklmnopqrstuvwxyz0123456789-_:/.",
    "áéíóöőúüűÁÉ ßçñ€£¥",
    "日本語中文한국어",
    "😀🚗🧾𝄞",  # outside the BMP: four UTF-8 bytes each
    "\x00\n\t\x7f\u200b\ufeff",
)
_LONGS = (
    0,
    1,
    -1,
    63,
    64,
    -64,
    -65,
    8191,
    8192,
    2**27 - 1,
    2**27,
    2**41 - 1,
    2**41,
    2**56,
    2**63 - 1,
    -(2**63),
    T0,
    -T0,
)


class RandomRecords:
    """Valid values of a parsed schema: edge cases mixed with plain random ones."""

    def __init__(self, named: dict[str, Any], seed: int) -> None:
        self.named = named
        self.rng = random.Random(seed)

    def text(self) -> str:
        rng = self.rng
        size = rng.choice((0, 1, rng.randrange(64), rng.randrange(300), 255, 256))
        if rng.random() < 0.01:
            size = 8200  # beyond the length tables
        return "".join(rng.choices(rng.choice(_ALPHABETS), k=size))

    def long(self) -> int:
        rng = self.rng
        if rng.random() < 0.4:
            return rng.choice(_LONGS)
        value = rng.getrandbits(rng.randrange(1, 64))
        return -value - 1 if rng.random() < 0.3 else value

    def decimal(self, precision: int, scale: int) -> Decimal:
        rng = self.rng
        if rng.random() < 0.2:
            limit = 10**precision - 1
            return Decimal(rng.choice((0, limit, -limit, 128, -128, 255, -256))).scaleb(-scale)
        places = rng.randrange(scale + 1)
        digits = rng.randrange(1, precision - scale + places + 1)
        unscaled = rng.randrange(10**digits)
        sign = rng.choice((0, 1))
        if rng.random() < 0.1:  # exponent notation, e.g. 1.2E+3
            return Decimal((sign, tuple(map(int, str(unscaled % 1000))), rng.randrange(1, 4)))
        return Decimal((sign, tuple(map(int, str(unscaled))), -places))

    def value(self, schema: Any, depth: int = 0) -> Any:
        rng = self.rng
        if isinstance(schema, str) and schema in self.named:
            schema = self.named[schema]
        if isinstance(schema, list):
            branches = [s for s in schema if s != "null"]
            if "null" in schema and rng.random() < 0.35:
                return None
            return self.value(rng.choice(branches), depth)
        if isinstance(schema, dict):
            kind = schema["type"]
            if schema.get("logicalType") == "decimal":
                return self.decimal(schema["precision"], schema["scale"])
            if kind == "record":
                record = {}
                for field in schema["fields"]:
                    if ("default" in field or "null" in field["type"]) and rng.random() < 0.2:
                        continue  # left out: the default (or null) is written
                    record[field["name"]] = self.value(field["type"], depth + 1)
                return record
            if kind == "enum":
                return rng.choice(schema["symbols"])
            if kind == "array":
                size = rng.choice((0, 1, rng.randrange(10), 70 if depth < 2 else 2))
                return [self.value(schema["items"], depth + 1) for _ in range(size)]
            if kind == "map":
                entries = range(rng.randrange(5))
                return {self.text(): self.value(schema["values"], depth + 1) for _ in entries}
            schema = kind
        return {
            "string": self.text,
            "long": self.long,
            "boolean": lambda: rng.random() < 0.5,
            "bytes": lambda: rng.randbytes(rng.choice((0, 1, 100, 300))),
        }[schema]()


@pytest.mark.parametrize("name", RECORDS)
def test_random_records_are_written_as_fastavro_writes_them(name: str) -> None:
    plain = CURRENT[name].plain
    records = RandomRecords(plain["__named_schemas"], seed=sum(map(ord, name)))
    for _ in range(300):
        assert_same_bytes(name, records.value(plain))


@pytest.mark.parametrize(
    "amount",
    [
        Decimal("0"),
        Decimal("-0"),
        Decimal("0.0000"),
        Decimal("-0.0000"),
        Decimal("1"),
        Decimal("1.5"),  # fewer places than the scale: rescaled
        Decimal("-1.50"),
        Decimal("49.9900"),
        Decimal("-0.0001"),
        Decimal("-128"),  # fastavro sizes it to two bytes, one more than needed
        Decimal("-0.0128"),
        Decimal("127"),
        Decimal("99999999999999.9999"),
        Decimal("-99999999999999.9999"),
        Decimal("12E+3"),
        Decimal("1.2E+3"),
        Decimal("0E+5"),
    ],
)
def test_decimals(amount: Decimal) -> None:
    state = dict(PIPELINE[codec.ORDER_STATE][0], amount=amount, refunded_amount=-amount)
    assert_same_bytes(codec.ORDER_STATE, state)


def test_values_fastavro_accepts_that_are_not_plain_types() -> None:
    class Status(StrEnum):
        ACTIVE = "ACTIVE"

    class Version(IntEnum):
        TWO = 2

    state = PIPELINE[codec.ORDER_STATE][0]
    assert_same_bytes(
        codec.ORDER_STATE, dict(state, order_status=Status.ACTIVE, vignette_id=Status.ACTIVE)
    )
    assert_same_bytes(codec.ORDER_STATE, dict(state, version=Version.TWO))
    assert_same_bytes(codec.ORDER_STATE, OrderedDict(state))
    change = PIPELINE[codec.ORDER_CHANGE][0]
    assert_same_bytes(codec.ORDER_CHANGE, dict(change, changed_fields=("a", "b")))
    assert_same_bytes(codec.ORDER_CHANGE, dict(change, after=OrderedDict(change["after"])))
    envelope = PIPELINE[codec.WEBHOOK_ENVELOPE][0]
    assert_same_bytes(codec.WEBHOOK_ENVELOPE, dict(envelope, body=bytearray(b"\x00\xff")))
    minimal = {k: v for k, v in envelope.items() if k not in ("headers", "client_ip")}
    assert_same_bytes(codec.WEBHOOK_ENVELOPE, minimal)  # defaults: {} and null


# -- (c) invalid values ------------------------------------------------------------------------

EVENT = PIPELINE[codec.CANONICAL_EVENT][0]
STATE = PIPELINE[codec.ORDER_STATE][-1]
RECORD = PIPELINE[codec.ORDER_RECORD][0]
ENVELOPE = PIPELINE[codec.WEBHOOK_ENVELOPE][0]
CHANGE = PIPELINE[codec.ORDER_CHANGE][-1]

#: (schema, record): each has one invalid value.
INVALID: list[tuple[str, dict[str, Any]]] = [
    *(
        (codec.CANONICAL_EVENT, dict(EVENT, **change))
        for change in (
            {"event_id": None},
            {"event_id": 5},
            {"event_id": b"bytes"},
            {"event_id": "lone \ud800 surrogate"},
            {"provider_event_type": 5},
            {"received_at": "1"},
            {"received_at": None},
            {"received_at": 1.5},  # fastavro truncates
            {"received_at": 2.0},  # fastavro writes 2
            {"received_at": True},  # fastavro writes 1
            {"received_at": Decimal(3)},  # fastavro writes 3
            {"received_at": 2**63},
            {"received_at": -(2**63) - 1},
            {"occurred_at": 2**63},
            {"occurred_at": True},
            {"order_status": "BOGUS"},
            {"order_status": "SUCCEEDED"},  # a PaymentStatus symbol
            {"order_status": 0},
            {"order_status": ["ACTIVE"]},
            {"order_ids": "abc"},  # fastavro writes three one-letter ids
            {"order_ids": {"a", "b"}},  # fastavro writes them in set order
            {"order_ids": {"k": 1}},
            {"order_ids": None},
            {"order_ids": [1]},
            {"error": "boom"},
            {"error": {"code": 5}},
            {"amount": Decimal("1.00001")},
            {"amount": Decimal("1.00000")},  # equal to 1 but five places, as fastavro
            {"amount": Decimal("0E-10")},
            {"amount": Decimal("100000000000000")},  # 19 digits at scale 4: fastavro writes it
            {"amount": Decimal("1E+20")},  # fastavro writes it
            {"amount": Decimal("1E+9999")},
            {"amount": Decimal("NaN")},
            {"amount": Decimal("-Infinity")},
            {"amount": 1},
            {"amount": 1.5},
            {"amount": "1.5"},
            {"amount": b"\x01"},  # fastavro writes raw bytes
            {"currency": 978},
        )
    ),
    (codec.CANONICAL_EVENT, {k: v for k, v in EVENT.items() if k != "received_at"}),
    (codec.ORDER_STATE, dict(STATE, version=None)),
    (codec.ORDER_STATE, dict(STATE, refunded_amount=Decimal("0.00001"))),
    (codec.ORDER_STATE, {k: v for k, v in STATE.items() if k != "order_id"}),
    (codec.ORDER_CHANGE, dict(CHANGE, before="x")),
    (codec.ORDER_CHANGE, dict(CHANGE, before=dict(STATE, order_status="NOPE"))),
    (codec.ORDER_CHANGE, dict(CHANGE, before=[("order_id", "o")])),
    (codec.ORDER_CHANGE, dict(CHANGE, after=None)),
    (codec.ORDER_CHANGE, dict(CHANGE, after=[("order_id", "o")])),
    (codec.ORDER_CHANGE, dict(CHANGE, after={k: v for k, v in STATE.items() if k != "version"})),
    (codec.ORDER_CHANGE, dict(CHANGE, changed_fields=None)),
    (codec.ORDER_CHANGE, dict(CHANGE, cause=None)),
    (codec.ORDER_RECORD, dict(RECORD, retired=None)),  # fastavro writes false
    (codec.ORDER_RECORD, dict(RECORD, retired=0)),  # fastavro writes false
    (codec.ORDER_RECORD, dict(RECORD, retired="false")),  # fastavro writes true
    (codec.ORDER_RECORD, dict(RECORD, claims=[{"transaction_id": None}])),
    (codec.ORDER_RECORD, dict(RECORD, claims=[{"transaction_id": "t", "payment_status": "X"}])),
    (codec.ORDER_RECORD, dict(RECORD, refunds=[{"event_id": "e", "amount": Decimal("1e-5")}])),
    (codec.WEBHOOK_ENVELOPE, dict(ENVELOPE, headers={"a": 1})),
    (codec.WEBHOOK_ENVELOPE, dict(ENVELOPE, headers={1: "a"})),
    (codec.WEBHOOK_ENVELOPE, dict(ENVELOPE, headers=[("a", "b")])),
    (codec.WEBHOOK_ENVELOPE, dict(ENVELOPE, body="text")),
    (codec.WEBHOOK_ENVELOPE, dict(ENVELOPE, body=None)),
    (codec.WEBHOOK_ENVELOPE, dict(ENVELOPE, body=memoryview(b"x"))),  # fastavro writes it
]


@pytest.mark.parametrize(("name", "record"), INVALID)
def test_invalid_values_raise(name: str, record: dict[str, Any]) -> None:
    with pytest.raises(Exception):  # noqa: B017, PT011 (whatever the writer finds first)
        WRITERS[name](record)
    # Whatever fastavro raises (TypeError, ValueError, UnicodeEncodeError...),
    # or writes by coercion, encode refuses as data: one exception type for
    # callers to catch at the record, naming the schema and fastavro's reason.
    reason = ""
    try:
        fastavro_bytes(CURRENT[name].plain, record)
    except Exception as exc:
        reason = str(exc)
    with pytest.raises(codec.CodecError, match=name) as refused:
        codec.encode(name, record)
    assert reason in str(refused.value)  # "" when fastavro coerced it: refused all the same


def test_a_lone_surrogate_is_refused_as_data() -> None:
    with pytest.raises(codec.CodecError, match="surrogate"):
        codec.encode(codec.CANONICAL_EVENT, dict(EVENT, provider_event_type="\ud800"))


def test_unknown_fields_are_still_refused() -> None:
    with pytest.raises(codec.CodecError, match="order_stat"):
        codec.encode(codec.ORDER_STATE, dict(STATE, order_stat="ACTIVE"))


# -- schemas beyond today's -----------------------------------------------------------------------

OTHER_TYPES = {
    "type": "record",
    "name": "x.Other",
    "fields": [
        {"name": "i", "type": "int"},
        {"name": "n", "type": "null"},
        {"name": "later_null", "type": ["long", "null"]},
        {"name": "maybe_flag", "type": ["null", "boolean"]},
        {"name": "maybe_bytes", "type": ["null", "bytes"]},
        {"name": "maybe_list", "type": ["null", {"type": "array", "items": "long"}]},
        {"name": "maybe_map", "type": ["null", {"type": "map", "values": "string"}]},
        {"name": "grid", "type": {"type": "array", "items": {"type": "array", "items": "int"}}},
        {
            "name": "by_name",
            "type": {
                "type": "map",
                "values": {
                    "type": "record",
                    "name": "x.Point",
                    "fields": [{"name": "p", "type": "long"}, {"name": "q", "type": "x.Point2"}],
                },
            },
        },
    ],
}
POINT2 = {"type": "record", "name": "x.Point2", "fields": [{"name": "s", "type": "string"}]}


def test_types_no_current_schema_uses() -> None:
    named: dict[str, Any] = {}
    fastavro.parse_schema(POINT2, named_schemas=named)
    schema = fastavro.parse_schema(OTHER_TYPES, named_schemas=named)
    write = compile_writer(schema)
    samples = [
        {
            "i": 2**31 - 1,
            "n": None,
            "later_null": -5,
            "maybe_flag": False,
            "maybe_bytes": b"\x00",
            "maybe_list": [1, -(2**40)],
            "maybe_map": {"ключ": "значение"},
            "grid": [[], [-(2**31)], [1, 2, 3]],
            "by_name": {"a": {"p": 1, "q": {"s": "z"}}, "": {"p": -1, "q": {"s": ""}}},
        },
        {"i": 0, "grid": [], "by_name": {}},  # nullable fields without default: null
    ]
    for record in samples:
        assert write(record) == fastavro_bytes(schema, record)
    for bad in ({"i": 2**31}, {"i": 1, "grid": [], "by_name": {}, "maybe_flag": 1}):
        with pytest.raises((OverflowError, TypeError)):
            write(dict(samples[0], **bad))


@pytest.mark.parametrize(
    "field_type",
    [
        "double",
        "float",
        {"type": "fixed", "name": "F", "size": 4},
        ["null", "string", "long"],
        ["string", "long"],
        {"type": "long", "logicalType": "timestamp-millis"},
        {"type": "string", "logicalType": "uuid"},
        {"type": "record", "name": "Node", "fields": [{"name": "next", "type": ["null", "Node"]}]},
    ],
)
def test_what_is_not_compiled_says_so(field_type: Any) -> None:
    schema = {"type": "record", "name": "T", "fields": [{"name": "f", "type": field_type}]}
    with pytest.raises(UnsupportedSchema):
        compile_writer(schema)


def test_codec_falls_back_to_fastavro_for_a_schema_not_compiled(tmp_path: Path) -> None:
    schema = {
        "type": "record",
        "name": "Measure",
        "namespace": "x",
        "fields": [{"name": "value", "type": "double"}, {"name": "unit", "type": "string"}],
    }
    (tmp_path / "x.Measure.avsc").write_text(json.dumps(schema))
    registry = codec.Registry(tmp_path, released=tmp_path / "released")
    record = {"value": 1.5, "unit": "m"}
    data = registry.encode("x.Measure", record)
    assert data == registry.schema("x.Measure").header + fastavro_bytes(schema, record)
    assert registry.decode_as("x.Measure", data) == record


def test_generated_source_shows_in_tracebacks() -> None:
    with pytest.raises(AttributeError) as failure:
        WRITERS[codec.CANONICAL_EVENT](dict(EVENT, event_id=5))
    assert "r0['event_id'].encode()" in str(failure.traceback[-1])
