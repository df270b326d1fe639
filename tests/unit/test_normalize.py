"""streams/normalize.py: raw record in, Delivery or DeadLetter out (nothing dropped)."""

from __future__ import annotations

import json
import time
from decimal import Decimal
from typing import Any

import jwt
import pytest
from hookline.core import adapters
from hookline.core.adapters import adapter_for, payments
from hookline.core.events import DeliveryContext
from hookline.core.sources import DEFAULT_DEDUP_WINDOW_MS, Source
from hookline.gateway.envelope import new_delivery_id, raw_envelope
from hookline.schemas import codec
from hookline.streams.normalize import (
    RAW_POSITION_HEADER,
    DeadLetter,
    Delivery,
    Identified,
    dead_letter,
    identify,
    map_events,
    normalize,
)

from tests.unit.helpers import T0, payload, payload_bytes, source

HOUR = 3_600_000
IGNORE = ("sent_at", "meta.attempt")
SOURCES: dict[str, Source] = {
    "partner": source("partner", "partner", "token", dedup_window_ms=HOUR, dedup_ignore=IGNORE),
    "partner-sandbox": source("partner-sandbox", "partner", "token", environment="sandbox"),
    "vignette-sales": source("vignette-sales", "vignette-sales", "hmac-sha256"),
    "payments": source("payments", "payments", "jwt-hs256", dedup_window_ms=72 * HOUR),
    "envelope": source("envelope", "envelope", "token", dedup_window_ms=2 * HOUR),
    "envelope-ignoring": source("envelope-ignoring", "envelope", "token", dedup_ignore=IGNORE),
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


def run(
    key: bytes | None, value: bytes | None, environment: str = "production"
) -> Delivery | DeadLetter:
    return normalize(key, value, environment, SOURCES)


def delivered(key: bytes | None, value: bytes | None, environment: str = "production") -> Delivery:
    result = run(key, value, environment)
    assert isinstance(result, Delivery), result
    return result


def dead(result: Delivery | DeadLetter, stage: str) -> dict[str, Any]:
    assert isinstance(result, DeadLetter), result
    record = codec.decode_as(codec.DEAD_LETTER, result.value)
    assert record == result.record
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
    delivery = delivered(key, value)
    adapter = adapter_for(SOURCES[source_name].kind)
    document = json.loads(body)
    ctx = DeliveryContext(envelope["delivery_id"], source_name, envelope["kind"], "production", T0)
    kind_key, digest = adapter.dedup_identity(document, SOURCES[source_name].dedup_ignore)
    assert delivery.envelope == envelope
    assert delivery.envelope["delivery_id"] == key.decode()
    assert delivery.dedup_key == f"{source_name}|{kind_key}"
    assert delivery.content_digest == digest
    assert len(delivery.content_digest) == 64
    assert delivery.window_ms == SOURCES[source_name].dedup_window_ms
    assert delivery.events == adapter.to_events(document, ctx)
    assert delivery.events
    for event in delivery.events:  # every event is publishable as is
        encoded = codec.encode(codec.CANONICAL_EVENT, event)
        assert codec.decode_as(codec.CANONICAL_EVENT, encoded) == event


def test_payments_record_becomes_a_delivery() -> None:
    body = payments_body(**CLAIMS)
    delivery = delivered(*raw("payments", body)[:2])
    assert delivery.window_ms == 72 * HOUR
    assert delivery.dedup_key == f"payments|claims:{delivery.content_digest}"
    [event] = delivery.events
    assert (event["transaction_id"], event["payment_status"]) == ("tr_8c1f0d2a", "SUCCEEDED")


def test_money_reaches_the_events() -> None:
    checkout = delivered(*raw("partner", payload_bytes("partner-checkout-multi.json"))[:2])
    assert [(e["type"], e["amount"], e["currency"]) for e in checkout.events] == [
        ("transaction.status_changed", None, None),
        ("order.priced", Decimal("15.7000"), "EUR"),
        ("order.priced", Decimal("15.7000"), "EUR"),
    ]
    refund = delivered(*raw("envelope", payload_bytes("envelope-refund.json"))[:2])
    [event] = refund.events
    assert (event["type"], event["amount"], event["currency"]) == (
        "order.refunded",
        Decimal("15.7000"),
        "EUR",
    )


def test_retries_meet_under_one_key() -> None:
    body = payload_bytes("partner-order-status.json")
    first = delivered(*raw("partner", body, T0)[:2])
    retry = delivered(*raw("partner", body, T0 + 60_000)[:2])
    assert first.dedup_key == retry.dedup_key
    assert first.content_digest == retry.content_digest
    assert first.envelope["delivery_id"] != retry.envelope["delivery_id"]

    resigned = [payments_body(**CLAIMS, iat=1_700_000_000 + n, jti=f"j{n}") for n in range(2)]
    assert resigned[0] != resigned[1]
    a, b = (delivered(*raw("payments", body)[:2]) for body in resigned)
    assert a.dedup_key == b.dedup_key
    assert a.content_digest == b.content_digest


def test_reserialized_retry_meets_under_one_key() -> None:
    body = payload_bytes("partner-checkout-multi.json")
    document = json.loads(body)
    reordered = json.dumps(dict(reversed(list(document.items()))), indent=4).encode()
    assert b"15.70" in body
    assert b"15.70" not in reordered
    assert reordered != body
    first = delivered(*raw("partner", body)[:2])
    retry = delivered(*raw("partner", reordered)[:2])
    assert (first.dedup_key, first.content_digest) == (retry.dedup_key, retry.content_digest)
    changed = body.replace(b'"amount": 15.70}', b'"amount": 15.71}', 1)
    assert changed != body
    assert delivered(*raw("partner", changed)[:2]).dedup_key != first.dedup_key


def with_fields(name: str, **fields: Any) -> bytes:
    return json.dumps(payload(name) | fields).encode()


def test_the_sources_dedup_ignore_is_applied() -> None:
    name = "partner-order-status.json"
    first = with_fields(name, sent_at="10:00:00", meta={"attempt": 1, "trace": "t1"})
    retry = with_fields(name, sent_at="10:05:00", meta={"attempt": 2, "trace": "t1"})
    other = with_fields(name, sent_at="10:05:00", meta={"attempt": 2, "trace": "t2"})
    a, b, c = (delivered(*raw("partner", body)[:2]) for body in (first, retry, other))
    assert a.dedup_key == b.dedup_key
    assert a.content_digest == b.content_digest
    assert c.dedup_key != a.dedup_key  # meta.trace is not ignored
    # The same bodies from a source without dedup_ignore are different deliveries.
    plain = [delivered(*raw("partner-sandbox", body)[:2], "sandbox") for body in (first, retry)]
    assert plain[0].dedup_key != plain[1].dedup_key


def test_envelope_dedup_ignore_turns_a_conflict_into_a_retry() -> None:
    name = "envelope-refund.json"
    first = with_fields(name, sent_at="09:00:00")
    retry = with_fields(name, sent_at="09:05:00")
    plain = [delivered(*raw("envelope", body)[:2]) for body in (first, retry)]
    ignoring = [delivered(*raw("envelope-ignoring", body)[:2]) for body in (first, retry)]
    assert plain[0].dedup_key == plain[1].dedup_key == "envelope|id:wh_01JD8Q5R2N7"
    assert plain[0].content_digest != plain[1].content_digest
    assert ignoring[0].dedup_key == ignoring[1].dedup_key == "envelope-ignoring|id:wh_01JD8Q5R2N7"
    assert ignoring[0].content_digest == ignoring[1].content_digest


def test_different_bodies_and_sources_have_different_dedup_keys() -> None:
    status = delivered(*raw("partner", payload_bytes("partner-order-status.json"))[:2])
    confirmation = delivered(*raw("partner", payload_bytes("partner-order-confirmation.json"))[:2])
    assert status.dedup_key != confirmation.dedup_key
    body = payload_bytes("partner-order-status.json")
    sandbox = normalize(*raw("partner-sandbox", body)[:2], "sandbox", SOURCES)
    assert isinstance(sandbox, Delivery)
    assert sandbox.dedup_key != status.dedup_key
    assert sandbox.content_digest == status.content_digest  # same content, other source


def test_unknown_source_gets_the_default_window_and_no_ignore() -> None:
    # The ghost source names fields to ignore, but the worker's sources do not know it.
    ghost = source("ghost", "partner", "token", dedup_window_ms=HOUR, dedup_ignore=IGNORE)
    name = "partner-order-status.json"
    first, retry = (with_fields(name, sent_at=at) for at in ("10:00:00", "10:05:00"))
    a = delivered(*raw("ghost", first, src=ghost)[:2])
    b = delivered(*raw("ghost", retry, src=ghost)[:2])
    assert a.window_ms == b.window_ms == DEFAULT_DEDUP_WINDOW_MS
    assert a.dedup_key.startswith("ghost|json:")
    assert a.dedup_key != b.dedup_key


# -- dead letters -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        b"garbage",
        b"",
        None,
        b'{"event_type": "ORDER_STATUS_CHANGED"}',
        b"\xc3\x01\x00body",  # the marker, but too short for a fingerprint
    ],
)
def test_garbage_is_dead_lettered_at_decode(value: bytes | None) -> None:
    before = int(time.time() * 1000)
    result = run(b"some-delivery-id", value)
    record = dead(result, "decode")
    assert result.key == b"some-delivery-id"
    assert record["delivery_id"] == "some-delivery-id"
    assert record["envelope"]["body"] == (value or b"")
    assert record["envelope"]["environment"] == "production"
    assert before <= record["dead_lettered_at"] <= int(time.time() * 1000)


def test_a_record_of_an_unknown_schema_is_not_dead_lettered_but_raised() -> None:
    """A single-object record whose fingerprint this release does not know is most
    likely a newer release's: the stage holds its partition (streams/unreadable.py)."""
    value = b"\xc3\x01" + b"\x00" * 8 + b"body"
    with pytest.raises(codec.UnknownSchema) as held:
        run(b"some-delivery-id", value)
    assert held.value.fingerprint == "00" * 8


def test_garbage_without_key_is_dead_lettered() -> None:
    result = run(None, b"garbage")
    record = dead(result, "decode")
    assert record["delivery_id"]
    assert result.key == b""


def test_other_record_type_is_dead_lettered_at_decode() -> None:
    entry = codec.encode(codec.DEDUP_ENTRY, {"delivery_id": "d", "received_at": 1, "expires_at": 2})
    dead(run(b"k", entry), "decode")


def test_truncated_envelope_is_dead_lettered_at_decode() -> None:
    key, value, _ = raw("partner", payload_bytes("partner-order-status.json"))
    record = dead(run(key, value[:-3]), "decode")
    assert record["envelope"]["body"] == value[:-3]


def test_environment_mismatch_is_dead_lettered() -> None:
    key, value, envelope = raw("partner-sandbox", payload_bytes("partner-order-status.json"))
    result = run(key, value, environment="production")
    record = dead(result, "decode")
    assert record["envelope"] == envelope
    assert "sandbox" in record["reason"]


def test_unknown_partner_event_type_is_dead_lettered_with_complete_envelope() -> None:
    body = json.dumps({"event_type": "ORDER_TELEPORTED", "order_id": "ord_1"}).encode()
    key, value, envelope = raw("partner", body)
    result = run(key, value)
    record = dead(result, "normalize")
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
    record = dead(run(key, value), "normalize")
    assert record["envelope"] == envelope


def test_unknown_kind_is_dead_lettered_at_normalize() -> None:
    odd = source("odd", "partner", "token")
    key, _, envelope = raw("odd", b"{}", src=odd)
    envelope = dict(envelope, kind="fax")
    record = dead(run(key, codec.encode(codec.WEBHOOK_ENVELOPE, envelope)), "normalize")
    assert record["envelope"] == envelope


def test_envelope_body_without_id_is_dead_lettered() -> None:
    body = json.dumps({"type": "subscription_event_refund", "data": {"order_id": "o"}}).encode()
    key, value, envelope = raw("envelope", body)
    record = dead(run(key, value), "normalize")
    assert record["envelope"] == envelope


def checkout_amount(amount: Any) -> bytes:
    document = payload("partner-checkout-single.json")
    document["orders"][0]["amount"] = amount
    return json.dumps(document).encode()


def refund_amount(amount: Any) -> bytes:
    document = payload("envelope-refund.json")
    document["data"]["amount"] = amount
    return json.dumps(document).encode()


def row_amount(amount: Any) -> bytes:
    document = payload("vignette-sales-success.json")
    document["vignetteSale"]["data"]["saleRows"][0]["kapschProperties"]["price"]["amount"] = amount
    return json.dumps(document).encode()


BAD_AMOUNT_BODIES = [
    ("partner", checkout_amount, "amount of order 'ord_5a73'"),
    ("envelope", refund_amount, "'data.amount'"),
    ("vignette-sales", row_amount, "price of row 'row_1'"),
]


@pytest.mark.parametrize("amount", ["abc", True, {"value": 1}])
@pytest.mark.parametrize(("source_name", "body_of", "named"), BAD_AMOUNT_BODIES)
def test_an_amount_that_is_not_a_number_is_dead_lettered_at_normalize(
    source_name: str, body_of: Any, named: str, amount: Any
) -> None:
    key, value, envelope = raw(source_name, body_of(amount))
    record = dead(run(key, value), "normalize")
    assert named in record["reason"]
    assert record["envelope"] == envelope


@pytest.mark.parametrize(
    ("amount", "text"), [(-15.7, "-15.7"), (1.23456, "1.23456"), (10**15, "1000000000000000")]
)
@pytest.mark.parametrize(("source_name", "body_of", "named"), BAD_AMOUNT_BODIES)
def test_an_amount_out_of_range_is_refused_and_the_delivery_maps(
    source_name: str, body_of: Any, named: str, amount: Any, text: str
) -> None:
    """PRODUCT.md section 4, money out of range: refused per amount, the other facts apply."""
    key, value, _ = raw(source_name, body_of(amount))
    result = run(key, value)
    assert isinstance(result, Delivery)
    (priced,) = [e for e in result.events if e["refused_amount"] is not None]
    assert (priced["amount"], priced["refused_amount"]) == (None, text)
    assert priced["order_id"]  # the order state refuses it as a rejected fact


def test_more_decimals_in_a_raw_body_are_refused_not_rounded() -> None:
    # Exactly as a provider might write it: more decimals than the scale keeps.
    body = payload_bytes("partner-checkout-single.json").replace(
        b'"amount": 15.70}', b'"amount": 15.70001}'
    )
    assert b"15.70001" in body
    result = run(*raw("partner", body)[:2])
    assert isinstance(result, Delivery)
    assert [(e["amount"], e["refused_amount"]) for e in result.events[1:]] == [(None, "15.70001")]
    assert result.events[0]["payment_status"] == "PENDING"  # the checkout's status applies


def test_dead_letter_reason_is_bounded() -> None:
    _, _, envelope = raw("envelope", payload_bytes("envelope-refund.json"))
    letter = dead_letter(envelope, "dedup", "conflict: " + "x" * 5000, b"k")
    record = codec.decode_as(codec.DEAD_LETTER, letter.value)
    assert record == letter.record
    assert record["reason"] == ("conflict: " + "x" * 5000)[:1000]
    assert (record["stage"], letter.key, record["envelope"]) == ("dedup", b"k", envelope)


def test_a_payments_letter_keeps_the_claims_without_signature_or_iban() -> None:
    """docs/security.md, personal data: redrive re-sends the raw record it names."""
    claims = dict(CLAIMS, paymentStatus="refunded")  # unmapped: dead-lettered
    key, value, _ = raw("payments", payments_body(**claims))
    result = normalize(key, value, "production", SOURCES, raw_position=(3, 41))
    record = dead(result, "normalize")
    kept = record["envelope"]
    assert kept["headers"][RAW_POSITION_HEADER] == "3@41"
    token = json.loads(kept["body"])["token"]
    assert token.count(".") == 2
    assert token.endswith(".")  # no signature
    iban = CLAIMS["paymentDetails"]["debtorIban"]
    read = payments.claims({"token": token})
    assert read["paymentDetails"]["debtorIban"] == iban[:4] + "*" * (len(iban) - 8) + iban[-4:]
    assert {k: v for k, v in read.items() if k != "paymentDetails"} == {
        k: v for k, v in claims.items() if k != "paymentDetails"
    }
    assert iban.encode() not in result.value


def test_a_letter_without_a_raw_position_keeps_the_body_as_received() -> None:
    claims = dict(CLAIMS, paymentStatus="refunded")
    key, value, envelope = raw("payments", payments_body(**claims))
    record = dead(run(key, value), "normalize")
    assert record["envelope"]["body"] == envelope["body"]
    assert RAW_POSITION_HEADER not in record["envelope"]["headers"]


def test_other_kinds_keep_their_body_in_a_letter() -> None:
    body = payload_bytes("partner-order-status.json").replace(b"ORDER_STATUS", b"ORDER_ODD")
    key, value, envelope = raw("partner", body)
    record = dead(normalize(key, value, "production", SOURCES, raw_position=(0, 7)), "normalize")
    assert record["envelope"]["body"] == envelope["body"]
    assert record["envelope"]["headers"][RAW_POSITION_HEADER] == "0@7"


def test_identify_computes_the_dedup_identity_without_building_events(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A retry is dropped after identify: its events must not be built for it."""
    key, value, envelope = raw("partner", payload_bytes("partner-order-status.json"))
    expected = delivered(key, value)

    def refuse(*_: Any) -> Any:
        raise AssertionError("to_events called while identifying")

    monkeypatch.setattr(adapter_for("partner"), "to_events", refuse)
    identified = identify(key, value, "production", SOURCES)
    assert isinstance(identified, Identified)
    assert identified.envelope == envelope
    assert (identified.dedup_key, identified.content_digest, identified.window_ms) == (
        expected.dedup_key,
        expected.content_digest,
        expected.window_ms,
    )
    monkeypatch.undo()
    assert map_events(identified) == expected


def test_events_that_cannot_be_built_are_dead_lettered_by_map_events(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    key, value, _ = raw("partner", payload_bytes("partner-order-status.json"))
    identified = identify(key, value, "production", SOURCES, raw_position=(2, 9))
    assert isinstance(identified, Identified)

    def unmappable(*_: Any) -> Any:
        raise adapters.Unmappable("no order id")

    monkeypatch.setattr(adapter_for("partner"), "to_events", unmappable)
    letter = map_events(identified)
    assert isinstance(letter, DeadLetter)
    assert (letter.record["stage"], letter.record["reason"]) == ("normalize", "no order id")
    assert letter.record["envelope"]["headers"][RAW_POSITION_HEADER] == "2@9"
