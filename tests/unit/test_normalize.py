"""streams/normalize.py: raw record in, Delivery or DeadLetter out (nothing dropped)."""

from __future__ import annotations

import json
import time
from typing import Any

import jwt
import pytest

from gateway.envelope import new_delivery_id, raw_envelope
from hookline.sources import DEFAULT_DEDUP_WINDOW_MS, Source
from schemas import codec
from streams.adapters import adapter_for
from streams.events import DeliveryContext
from streams.normalize import Normalized, normalize
from tests.unit.helpers import T0, payload, payload_bytes, source

HOUR = 3_600_000
SOURCES: dict[str, Source] = {
    "partner": source("partner", "partner", "token", dedup_window_ms=HOUR),
    "partner-sandbox": source("partner-sandbox", "partner", "token", environment="sandbox"),
    "vignette-sales": source("vignette-sales", "vignette-sales", "hmac-sha256"),
    "payments": source("payments", "payments", "jwt-hs256", dedup_window_ms=72 * HOUR),
    "envelope": source("envelope", "envelope", "token", dedup_window_ms=2 * HOUR),
}
KEY = "payments-jwt-key-0123456789abcdef-0123"


def raw(
    source_name: str,
    body: bytes,
    received_at: int = T0,
    src: Source | None = None,
) -> tuple[bytes, bytes, dict[str, Any]]:
    """(key, value, envelope) of a raw record the way the gateway writes it."""
    delivery_id = new_delivery_id(received_at)
    envelope = raw_envelope(
        src or SOURCES[source_name],
        body,
        {"content-type": "application/json", "x-signature": "s" * 64},
        "203.0.113.9",
        received_at,
        delivery_id,
    )
    return delivery_id.encode(), codec.encode(codec.WEBHOOK_ENVELOPE, envelope), envelope


def run(key: bytes | None, value: bytes | None, environment: str = "production") -> Normalized:
    return normalize(key, value, environment, SOURCES)


def dead_letter(result: Normalized, stage: str) -> dict[str, Any]:
    assert result.dead_letter
    record = codec.decode_as(codec.DEAD_LETTER, result.value)
    assert record == result.detail
    assert record["stage"] == stage
    assert record["reason"]
    assert len(record["reason"]) <= 1000
    assert record["delivery_id"] == record["envelope"]["delivery_id"]
    return record


def payments_body(**claims: Any) -> bytes:
    return json.dumps({"token": jwt.encode(claims, KEY, algorithm="HS256")}).encode()


CLAIMS = payload("payments-claims.json")
GOOD = [
    ("partner", "partner-order-status.json"),
    ("partner", "partner-checkout-multi.json"),
    ("partner", "partner-checkout-single.json"),
    ("partner", "partner-order-confirmation.json"),
    ("vignette-sales", "vignette-sales-success.json"),
    ("vignette-sales", "vignette-sales-failure.json"),
    ("envelope", "envelope-refund.json"),
    ("envelope", "envelope-user-create.json"),
]


@pytest.mark.parametrize(("source_name", "name"), GOOD)
def test_good_record_becomes_a_delivery(source_name: str, name: str) -> None:
    body = payload_bytes(name)
    key, value, envelope = raw(source_name, body)
    result = run(key, value)
    assert not result.dead_letter
    delivery = codec.decode_as(codec.DELIVERY, result.value)
    assert delivery == result.detail
    adapter = adapter_for(SOURCES[source_name].kind)
    document = json.loads(body)
    ctx = DeliveryContext(envelope["delivery_id"], source_name, envelope["kind"], "production", T0)
    assert delivery["delivery_id"] == envelope["delivery_id"]
    assert delivery["source"] == source_name
    assert delivery["received_at"] == T0
    assert delivery["dedup_key"] == f"{source_name}|{adapter.dedup_key(document, body)}"
    assert delivery["dedup_window_ms"] == SOURCES[source_name].dedup_window_ms
    assert delivery["events"] == adapter.to_events(document, ctx)
    assert result.key  # a record key, the same for every copy of the delivery (below)


def test_payments_record_becomes_a_delivery() -> None:
    body = payments_body(**CLAIMS)
    key, value, _ = raw("payments", body)
    delivery = codec.decode_as(codec.DELIVERY, run(key, value).value)
    assert delivery["dedup_window_ms"] == 72 * HOUR
    assert delivery["dedup_key"].startswith("payments|")
    [event] = delivery["events"]
    assert (event["transaction_id"], event["payment_status"]) == ("tr_8c1f0d2a", "SUCCEEDED")


def test_retries_meet_under_one_key() -> None:
    body = payload_bytes("partner-order-status.json")
    first = run(*raw("partner", body, T0)[:2])
    retry = run(*raw("partner", body, T0 + 60_000)[:2])
    assert first.key == retry.key
    assert first.detail["dedup_key"] == retry.detail["dedup_key"]
    assert first.detail["delivery_id"] != retry.detail["delivery_id"]

    resigned = [payments_body(**CLAIMS, iat=1_700_000_000 + n, jti=f"j{n}") for n in range(2)]
    assert resigned[0] != resigned[1]
    a, b = (run(*raw("payments", body)[:2]) for body in resigned)
    assert a.detail["dedup_key"] == b.detail["dedup_key"]
    assert a.key == b.key


def test_different_bodies_and_sources_have_different_dedup_keys() -> None:
    status = run(*raw("partner", payload_bytes("partner-order-status.json"))[:2])
    confirmation = run(*raw("partner", payload_bytes("partner-order-confirmation.json"))[:2])
    assert status.detail["dedup_key"] != confirmation.detail["dedup_key"]
    body = payload_bytes("partner-order-status.json")
    sandbox = normalize(*raw("partner-sandbox", body)[:2], "sandbox", SOURCES)
    assert not sandbox.dead_letter
    assert sandbox.detail["dedup_key"] != status.detail["dedup_key"]


def test_unknown_source_gets_the_default_window() -> None:
    ghost = source("ghost", "partner", "token")
    key, value, _ = raw("ghost", payload_bytes("partner-order-status.json"), src=ghost)
    result = run(key, value)
    assert not result.dead_letter
    assert result.detail["dedup_window_ms"] == DEFAULT_DEDUP_WINDOW_MS


# -- dead letters -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        b"garbage",
        b"",
        None,
        b'{"event_type": "ORDER_STATUS_CHANGED"}',
        b"\xc3\x01" + b"\x00" * 8 + b"body",
    ],
)
def test_garbage_is_dead_lettered_at_decode(value: bytes | None) -> None:
    before = int(time.time() * 1000)
    result = run(b"some-delivery-id", value)
    record = dead_letter(result, "decode")
    assert result.key == b"some-delivery-id"
    assert record["delivery_id"] == "some-delivery-id"
    assert record["envelope"]["body"] == (value or b"")
    assert record["envelope"]["environment"] == "production"
    assert before <= record["dead_lettered_at"] <= int(time.time() * 1000)


def test_garbage_without_key_is_dead_lettered() -> None:
    record = dead_letter(run(None, b"garbage"), "decode")
    assert record["delivery_id"]


def test_other_record_type_is_dead_lettered_at_decode() -> None:
    entry = codec.encode(codec.DEDUP_ENTRY, {"delivery_id": "d", "received_at": 1, "expires_at": 2})
    dead_letter(run(b"k", entry), "decode")


def test_truncated_envelope_is_dead_lettered_at_decode() -> None:
    key, value, _ = raw("partner", payload_bytes("partner-order-status.json"))
    record = dead_letter(run(key, value[:-3]), "decode")
    assert record["envelope"]["body"] == value[:-3]


def test_environment_mismatch_is_dead_lettered() -> None:
    key, value, envelope = raw("partner-sandbox", payload_bytes("partner-order-status.json"))
    result = run(key, value, environment="production")
    record = dead_letter(result, "decode")
    assert record["envelope"] == envelope
    assert "sandbox" in record["reason"]


def test_unknown_partner_event_type_is_dead_lettered_with_complete_envelope() -> None:
    body = json.dumps({"event_type": "ORDER_TELEPORTED", "order_id": "ord_1"}).encode()
    key, value, envelope = raw("partner", body)
    result = run(key, value)
    record = dead_letter(result, "normalize")
    assert record["envelope"] == envelope  # replayable: every field, body byte for byte
    assert record["envelope"]["body"] == body
    assert "ORDER_TELEPORTED" in record["reason"]
    assert result.key == key


@pytest.mark.parametrize(
    ("source_name", "body"),
    [
        ("partner", b"not json"),
        ("partner", b"[1, 2]"),
        ("partner", b"\xff\xfe"),
        ("partner", b"[" * 100_000 + b"]" * 100_000),
        (
            "partner",
            json.dumps({"event_type": "ORDER_STATUS_CHANGED", "status": "ACTIVE"}).encode(),
        ),
        (
            "vignette-sales",
            json.dumps({"saleId": "s", "vignetteSale": {"success": "yes"}}).encode(),
        ),
        ("payments", b'{"token": "not-a-jwt"}'),
        ("payments", b"{}"),
        ("payments", b'{"token": 5}'),
        ("payments", payments_body(paymentStatus="completed")),
        ("envelope", json.dumps({"id": 5, "type": "x", "data": {}}).encode()),
        ("payments", payments_body(**{**CLAIMS, "paymentStatus": "refunded"})),
        ("envelope", json.dumps({"id": "wh_1", "type": "x", "data": []}).encode()),
        ("partner", json.dumps({"event_type": "X" * 5000}).encode()),
    ],
)
def test_unmappable_bodies_are_dead_lettered_at_normalize(source_name: str, body: bytes) -> None:
    key, value, envelope = raw(source_name, body)
    record = dead_letter(run(key, value), "normalize")
    assert record["envelope"] == envelope


def test_unknown_kind_is_dead_lettered_at_normalize() -> None:
    odd = source("odd", "partner", "token")
    key, _, envelope = raw("odd", b"{}", src=odd)
    envelope = dict(envelope, kind="fax")
    record = dead_letter(run(key, codec.encode(codec.WEBHOOK_ENVELOPE, envelope)), "normalize")
    assert record["envelope"] == envelope


def test_envelope_body_without_id_is_dead_lettered() -> None:
    body = json.dumps({"type": "subscription_event_refund", "data": {"order_id": "o"}}).encode()
    key, value, envelope = raw("envelope", body)
    record = dead_letter(run(key, value), "normalize")
    assert record["envelope"] == envelope
