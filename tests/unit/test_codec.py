"""schemas/codec.py: single-object encoding, CRC-64-AVRO fingerprints (PRODUCT.md section 3)."""

from __future__ import annotations

import io
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import fastavro
import pytest
from fastavro.schema import load_schema, to_parsing_canonical_form
from hookline.schemas import codec

from tests.unit.helpers import SCHEMAS, T0

# -- CRC-64-AVRO, written from the Avro specification ("Schema Fingerprints") --

EMPTY = 0xC15D213AA4D7A795


def _fp_table() -> list[int]:
    table = []
    for i in range(256):
        fp = i
        for _ in range(8):
            fp = (fp >> 1) ^ (EMPTY & -(fp & 1))
        table.append(fp)
    return table


FP_TABLE = _fp_table()


def fingerprint64(buf: bytes) -> int:
    fp = EMPTY
    for byte in buf:
        fp = (fp >> 8) ^ FP_TABLE[(fp ^ byte) & 0xFF]
    return fp


def header_for(canonical_form: str) -> bytes:
    return b"\xc3\x01" + fingerprint64(canonical_form.encode()).to_bytes(8, "little")


# -- sample records, one per record type ---------------------------------------

CAUSE = {
    "event_id": "d-1:0",
    "delivery_id": "d-1",
    "source": "partner",
    "kind": "partner",
    "type": "order.status_changed",
    "received_at": T0,
    "provider_event_type": "ORDER_STATUS_CHANGED",
}
STATE = {
    "order_id": "ord_5a71",
    "environment": "production",
    "transaction_id": "tr_8c1f0d2a",
    "order_status": "ACTIVE",
    "payment_status": "SUCCEEDED",
    "confirmation_pdf_url": "https://files.example.com/c/ord_5a71.pdf",
    "vignette_id": "kp_1",
    "version": 3,
    "updated_at": T0 + 5,
    "amount": Decimal("49.9900"),
    "currency": "EUR",
    "refunded_amount": Decimal("-0.0100"),
}
ENVELOPE = {
    "delivery_id": "0197586c-e3f2-73d5-8e28-c30c8b68b479",
    "source": "partner",
    "kind": "partner",
    "environment": "production",
    "received_at": T0,
    "body": b'{"event_type": "X"}\x00\xff',
    "headers": {"content-type": "application/json", "user-agent": "ua"},
    "client_ip": "10.0.0.1",
    "verification": "token",
}
EVENT = {
    "event_id": "d-1:0",
    "delivery_id": "d-1",
    "source": "vignette-sales",
    "kind": "vignette-sales",
    "environment": "sandbox",
    "type": "transaction.status_changed",
    "provider_event_type": "sale.failed",
    "entity_type": "transaction",
    "entity_id": "sale_1",
    "received_at": T0,
    "occurred_at": T0 - 1000,
    "order_id": None,
    "transaction_id": "sale_1",
    "order_ids": ["row_1", "row_2"],
    "order_status": None,
    "payment_status": "FAILED",
    "confirmation_pdf_url": None,
    "vignette_id": None,
    "error": {"code": "VEHICLE_NOT_FOUND", "message": "no such plate"},
    "amount": Decimal("1234567890.1234"),
    "currency": "HUF",
    "refused_amount": None,
    "provider_event_id": None,
}

SAMPLES: dict[str, dict[str, Any]] = {
    codec.WEBHOOK_ENVELOPE: ENVELOPE,
    codec.DEAD_LETTER: {
        "delivery_id": ENVELOPE["delivery_id"],
        "envelope": ENVELOPE,
        "stage": "normalize",
        "reason": "unknown partner event_type 'X'",
        "dead_lettered_at": T0 + 7,
    },
    codec.CANONICAL_EVENT: EVENT,
    codec.ORDER_STATE: STATE,
    codec.ORDER_CHANGE: {
        "order_id": "ord_5a71",
        "environment": "production",
        "version": 3,
        "before": dict(STATE, version=2, payment_status=None),
        "after": STATE,
        "changed_fields": ["payment_status"],
        "cause": CAUSE,
    },
    codec.REJECTED_FACT: {
        "order_id": "ord_5a71",
        "field": "order_status",
        "value": "PENDING",
        "rule": "status_regression",
        "cause": CAUSE,
        "rejected_at": T0 + 5,
    },
    "hookline.ChangeCause": CAUSE,
    "hookline.ProviderError": {"code": None, "message": "m"},
    codec.DEDUP_ENTRY: {"delivery_id": "d-1", "received_at": T0, "expires_at": T0 + 10},
    codec.TRANSACTION_UPDATE: {
        "order_id": "ord_5a71",
        "transaction_id": "tr_8c1f0d2a",
        "payment_status": "PENDING",
        "transaction_version": 2,
        "cause": CAUSE,
    },
    codec.TRANSACTION_RECORD: {
        "transaction_id": "tr_8c1f0d2a",
        "payment_status": "CANCELED",
        "status_received_at": T0,
        "status_event_id": "d-1:0",
        "version": 4,
        "order_ids": ["ord_5a71", "ord_5a72"],
        "status_cause": CAUSE,
        "expires_at": T0 + 99,
    },
    codec.ORDER_RECORD: {
        "state": STATE,
        "transaction_version": 2,
        "pdf_received_at": T0,
        "pdf_event_id": "d-1:0",
        "vignette_received_at": 0,
        "vignette_event_id": "",
        "expires_at": T0 + 99,
    },
}

RECORD_NAMES = sorted(s.name for s in codec.REGISTRY if s.parsed["type"] == "record")
ALL_NAMES = sorted(s.name for s in codec.REGISTRY)


def sample(name: str) -> dict[str, Any]:
    if name in SAMPLES:
        return SAMPLES[name]
    if name == codec.DELIVERY:
        return {
            "delivery_id": "d-1",
            "source": "vignette-sales",
            "received_at": T0,
            "ordering_key": "sale_1",
            "dedup_key": "vignette-sales|body:00",
            "dedup_window_ms": 3600_000,
            "events": [EVENT, dict(EVENT, event_id="d-1:1")],
        }
    raise AssertionError(f"no sample for {name}")


def sample_fitting_schema(name: str) -> dict[str, Any]:
    """The sample fitted to the current schema, which changes more often than these samples.

    Fields the schema does not have are dropped; fields the sample lacks get
    their schema default, as a decoded record has them.
    """
    parsed = codec.REGISTRY.schema(name).parsed
    record = sample(name)
    fitted = {}
    for field in parsed["fields"]:
        if field["name"] in record:
            fitted[field["name"]] = record[field["name"]]
        elif "default" in field:
            fitted[field["name"]] = field["default"]
    return fitted


# -- the fingerprint ----------------------------------------------------------


def test_independent_crc64_matches_the_avro_spec_for_null() -> None:
    assert fingerprint64(b'"null"') == 0x63DD24E7CC258F8A


def test_codec_fingerprint_of_null_schema() -> None:
    fp = codec.crc64_avro_fingerprint('"null"')
    assert fp == (0x63DD24E7CC258F8A).to_bytes(8, "little")
    assert codec.MAGIC + fp == bytes.fromhex("C3018A8F25CCE724DD63")


@pytest.mark.parametrize("text", ["", '"int"', '{"type":"fixed","name":"f","size":16}', "é€"])
def test_codec_fingerprint_agrees_with_independent_crc(text: str) -> None:
    assert codec.crc64_avro_fingerprint(text) == fingerprint64(text.encode()).to_bytes(8, "little")


def test_every_avsc_file_is_in_the_registry() -> None:
    on_disk = sorted(path.stem for path in SCHEMAS.glob("*.avsc"))
    assert on_disk == ALL_NAMES
    assert len(on_disk) >= 14


@pytest.mark.parametrize("name", ALL_NAMES)
def test_codec_crc_of_each_registry_canonical_form(name: str) -> None:
    canonical = to_parsing_canonical_form(codec.REGISTRY.schema(name).parsed)
    assert canonical.startswith("{") or canonical.startswith('"')
    assert codec.crc64_avro_fingerprint(canonical) == header_for(canonical)[2:]


def test_fingerprints_are_distinct() -> None:
    headers = [s.header for s in codec.REGISTRY]
    assert len(set(headers)) == len(headers)


@pytest.mark.parametrize("name", ALL_NAMES)
def test_header_is_crc64_of_the_avsc_parsing_canonical_form(name: str) -> None:
    # PRODUCT.md 3: "any consumer resolves the fingerprint against that folder". A
    # consumer loads schemas/<fullname>.avsc (references resolved from the folder)
    # and fingerprints its Parsing Canonical Form, which defines every named type
    # at its first use, exactly like Java's SchemaNormalization.parsingFingerprint64.
    consumer_schema = load_schema(str(SCHEMAS / f"{name}.avsc"))
    expected = header_for(to_parsing_canonical_form(consumer_schema))
    assert codec.REGISTRY.schema(name).header == expected
    if name in RECORD_NAMES:
        assert codec.encode(name, sample_fitting_schema(name))[: codec.HEADER_SIZE] == expected


# -- round trips ----------------------------------------------------------------


@pytest.mark.parametrize("name", RECORD_NAMES)
def test_round_trip(name: str) -> None:
    record = sample_fitting_schema(name)
    data = codec.encode(name, record)
    assert data[:10] == codec.REGISTRY.schema(name).header
    decoded_name, decoded = codec.decode(data)
    assert decoded_name == name
    assert decoded == record
    assert codec.decode_as(name, data) == record


def test_round_trip_fills_defaults_and_keeps_bytes_exact() -> None:
    minimal = {k: v for k, v in ENVELOPE.items() if k not in ("headers", "client_ip")}
    decoded = codec.decode_as(codec.WEBHOOK_ENVELOPE, codec.encode(codec.WEBHOOK_ENVELOPE, minimal))
    assert decoded["headers"] == {}
    assert decoded["client_ip"] is None
    assert decoded["body"] == ENVELOPE["body"]
    assert isinstance(decoded["received_at"], int)


def test_enums_survive_a_round_trip() -> None:
    for status in ("CREATED", "PENDING", "DEFERRED", "ACTIVE", "REFUNDED"):
        record = dict(STATE, order_status=status)
        assert codec.decode_as(codec.ORDER_STATE, codec.encode(codec.ORDER_STATE, record)) == record
    for status in ("PENDING", "SUCCEEDED", "FAILED", "CANCELED", "EXPIRED"):
        record = dict(STATE, payment_status=status)
        assert codec.decode_as(codec.ORDER_STATE, codec.encode(codec.ORDER_STATE, record)) == record


# -- errors ---------------------------------------------------------------------


def _good() -> bytes:
    return codec.encode(codec.WEBHOOK_ENVELOPE, ENVELOPE)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\xc3",
        b"\xc3\x01",
        b"\xc3\x01\x8a\x8f",
        b'{"event_type": "ORDER_STATUS_CHANGED"}',
        b"\xc3\x02" + b"\x00" * 20,
        b"\x01\xc3" + b"\x00" * 20,
    ],
)
def test_decode_without_marker_raises_codec_error(data: bytes) -> None:
    with pytest.raises(codec.CodecError):
        codec.decode(data)


def test_decode_with_good_body_but_no_marker_raises() -> None:
    data = _good()
    with pytest.raises(codec.CodecError):
        codec.decode(b"\x00\x00" + data[2:])


def test_decode_unknown_fingerprint_raises() -> None:
    data = _good()
    null_header = bytes.fromhex("C3018A8F25CCE724DD63")  # a valid header, but for "null"
    with pytest.raises(codec.CodecError, match="fingerprint"):
        codec.decode(null_header + data[10:])
    flipped = data[:2] + bytes([data[2] ^ 1]) + data[3:]
    with pytest.raises(codec.CodecError):
        codec.decode(flipped)


def test_decode_trailing_bytes_raises() -> None:
    with pytest.raises(codec.CodecError, match="trailing"):
        codec.decode(_good() + b"\x00")


def test_decode_every_truncation_raises() -> None:
    data = _good()
    for cut in range(len(data)):
        with pytest.raises(codec.CodecError):
            codec.decode(data[:cut])


def test_decode_as_other_type_raises() -> None:
    with pytest.raises(codec.CodecError):
        codec.decode_as(codec.DEAD_LETTER, _good())


def test_encode_unknown_field_raises() -> None:
    with pytest.raises(codec.CodecError, match="order_stat"):
        codec.encode(codec.ORDER_STATE, dict(STATE, order_stat="ACTIVE"))


def test_encode_unknown_schema_raises() -> None:
    with pytest.raises(codec.CodecError):
        codec.encode("hookline.NoSuchThing", {})


# -- interoperability with plain fastavro and the .avsc files --------------------


def _plain_read(name: str, data: bytes) -> dict[str, Any]:
    schema = load_schema(str(SCHEMAS / f"{name}.avsc"))
    return fastavro.schemaless_reader(io.BytesIO(data[codec.HEADER_SIZE :]), schema)


def _dt(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, UTC)


def test_plain_fastavro_reads_order_state_with_datetimes() -> None:
    read = _plain_read(codec.ORDER_STATE, codec.encode(codec.ORDER_STATE, STATE))
    assert read["updated_at"] == _dt(STATE["updated_at"])
    assert read["updated_at"].tzinfo is not None
    assert {k: v for k, v in read.items() if k != "updated_at"} == {
        k: v for k, v in STATE.items() if k != "updated_at"
    }


def test_plain_fastavro_reads_nested_timestamps() -> None:
    change = SAMPLES[codec.ORDER_CHANGE]
    read = _plain_read(codec.ORDER_CHANGE, codec.encode(codec.ORDER_CHANGE, change))
    assert read["cause"]["received_at"] == _dt(CAUSE["received_at"])
    assert read["after"]["updated_at"] == _dt(STATE["updated_at"])
    assert read["before"]["version"] == 2

    event = codec.encode(codec.CANONICAL_EVENT, EVENT)
    read = _plain_read(codec.CANONICAL_EVENT, event)
    assert read["received_at"] == _dt(T0)
    assert read["occurred_at"] == _dt(T0 - 1000)

    letter = SAMPLES[codec.DEAD_LETTER]
    read = _plain_read(codec.DEAD_LETTER, codec.encode(codec.DEAD_LETTER, letter))
    assert read["dead_lettered_at"] == _dt(letter["dead_lettered_at"])
    assert read["envelope"]["received_at"] == _dt(T0)
    assert read["envelope"]["body"] == ENVELOPE["body"]


def test_codec_reads_what_plain_fastavro_writes() -> None:
    schema = load_schema(str(SCHEMAS / f"{codec.ORDER_STATE}.avsc"))
    out = io.BytesIO()
    fastavro.schemaless_writer(out, schema, dict(STATE, updated_at=_dt(STATE["updated_at"])))
    data = codec.REGISTRY.schema(codec.ORDER_STATE).header + out.getvalue()
    assert codec.decode_as(codec.ORDER_STATE, data) == STATE
