"""gateway/envelope.py: delivery ids (UUIDv7) and the raw envelope record."""

from __future__ import annotations

import random
import time
import uuid

import pytest
from hookline.gateway.envelope import KEPT_HEADERS, EnvelopeEncoder, new_delivery_id, raw_envelope
from hookline.schemas import codec
from starlette.datastructures import Headers

from tests.unit.helpers import T0, payload_bytes, source

SECRET_HEADERS = {
    "x-signature": "a" * 64,
    "webhook-signature": "v1,c2lnbmF0dXJl",
    "authorization": "Bearer very-secret-bearer",
    "cookie": "session=very-secret-cookie",
    "x-api-key": "very-secret-api-key",
    "proxy-authorization": "Basic c2VjcmV0",
}
USEFUL_HEADERS = {
    "content-type": "application/json",
    "user-agent": "PartnerPanel/2.1",
    "webhook-id": "msg_1",
    "webhook-timestamp": "1795255200",
    "x-request-id": "req-42",
    "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
}


def test_delivery_id_is_uuid_version_7() -> None:
    for now in (0, 1, T0, 2**48 - 1, None):
        parsed = uuid.UUID(new_delivery_id(now))
        assert parsed.version == 7
        assert parsed.variant == uuid.RFC_4122


def test_delivery_id_text_is_canonical_lowercase() -> None:
    text = new_delivery_id(T0)
    assert text == str(uuid.UUID(text))
    assert len(text) == 36


def test_delivery_id_carries_the_millisecond_timestamp() -> None:
    for now in (1, T0, 2**47 + 12345):
        assert uuid.UUID(new_delivery_id(now)).int >> 80 == now
    before = int(time.time() * 1000)
    stamped = uuid.UUID(new_delivery_id()).int >> 80
    after = int(time.time() * 1000)
    assert before <= stamped <= after


def test_delivery_ids_sort_by_time() -> None:
    rng = random.Random(7)
    times = [*sorted(rng.sample(range(T0 - 10**9, T0 + 10**9), 300)), T0 + 10**9 + 1]
    ids = [new_delivery_id(t) for t in times]
    assert sorted(ids) == ids
    # Crossing a hex digit boundary of the timestamp keeps the order too.
    assert new_delivery_id(0xFFF) < new_delivery_id(0x1000)
    assert new_delivery_id(T0) < new_delivery_id(T0 + 1)


def test_delivery_ids_are_unique_within_one_millisecond() -> None:
    ids = {new_delivery_id(T0) for _ in range(2000)}
    assert len(ids) == 2000


def envelope(headers: object, **overrides: object) -> dict[str, object]:
    kwargs: dict[str, object] = {
        "source": source("partner", "partner", "token", (b"dev-partner-token",)),
        "body": payload_bytes("partner-order-status.json"),
        "headers": headers,
        "client_ip": "203.0.113.9",
        "received_at_ms": T0,
        "delivery_id": new_delivery_id(T0),
    }
    kwargs.update(overrides)
    return raw_envelope(**kwargs)  # type: ignore[arg-type]


def test_raw_envelope_fields() -> None:
    body = payload_bytes("partner-order-status.json")
    src = source("partner-sandbox", "partner", "token", (b"t",), environment="sandbox")
    delivery_id = new_delivery_id(T0)
    record = raw_envelope(src, body, {}, "203.0.113.9", T0, delivery_id)
    assert record == {
        "delivery_id": delivery_id,
        "source": "partner-sandbox",
        "kind": "partner",
        "environment": "sandbox",
        "received_at": T0,
        "body": body,
        "headers": {},
        "client_ip": "203.0.113.9",
        "verification": "token",
    }
    assert codec.decode_as(
        codec.WEBHOOK_ENVELOPE, codec.encode(codec.WEBHOOK_ENVELOPE, record)
    ) == (record)


def test_raw_envelope_keeps_only_allow_listed_headers() -> None:
    record = envelope({**SECRET_HEADERS, **USEFUL_HEADERS, "x-forwarded-for": "1.2.3.4"})
    assert record["headers"] == USEFUL_HEADERS
    for name in ("x-signature", "webhook-signature", "authorization", "cookie"):
        assert name in SECRET_HEADERS
        assert name not in KEPT_HEADERS


def test_raw_envelope_with_request_headers_of_any_case() -> None:
    # What the gateway passes: Starlette's case-insensitive request headers.
    mixed = {k.title(): v for k, v in {**SECRET_HEADERS, **USEFUL_HEADERS}.items()}
    record = envelope(Headers(headers=mixed))
    assert record["headers"] == USEFUL_HEADERS


def test_no_secret_header_value_reaches_the_encoded_record() -> None:
    record = envelope({**SECRET_HEADERS, **USEFUL_HEADERS})
    encoded = codec.encode(codec.WEBHOOK_ENVELOPE, record)
    for value in SECRET_HEADERS.values():
        assert value.encode() not in encoded


def test_no_query_string_is_recorded() -> None:
    token = "dev-partner-token-in-the-query"
    src = source("partner", "partner", "token", (token.encode(),))
    record = envelope(USEFUL_HEADERS, source=src)
    assert set(record) == codec.REGISTRY.schema(codec.WEBHOOK_ENVELOPE).fields
    assert token.encode() not in codec.encode(codec.WEBHOOK_ENVELOPE, record)
    for value in record["headers"].values():  # type: ignore[attr-defined]
        assert "token=" not in value
        assert "?" not in value


def test_long_header_is_truncated() -> None:
    record = envelope({"user-agent": "u" * 10_000})
    assert record["headers"] == {"user-agent": "u" * 512}


@pytest.mark.parametrize("verify", ["token", "hmac-sha256", "standard-webhooks", "none"])
def test_verification_method_is_recorded(verify: str) -> None:
    record = envelope({}, source=source("s", "envelope", verify, (b"k",)))
    assert record["verification"] == verify
    assert record["kind"] == "envelope"


# -- EnvelopeEncoder: what the gateway writes, byte for byte codec.encode's ------------------


def random_text(rng: random.Random, longest: int) -> str:
    alphabet = "abcXYZ09-_/:;= \u00e9\u00ff\u0100\u20ac\U0001f600"
    return "".join(rng.choice(alphabet) for _ in range(rng.randrange(longest)))


@pytest.mark.parametrize("seed", range(40))
def test_the_envelope_encoder_writes_what_codec_encode_writes(seed: int) -> None:
    rng = random.Random(seed)
    src = source(
        random_text(rng, 40) or "s",
        rng.choice(["partner", "vignette-sales", "payments", "envelope"]),
        rng.choice(["token", "hmac-sha256", "jwt-hs256", "standard-webhooks", "none"]),
        environment=rng.choice(["production", "sandbox"]),
    )
    encoder = EnvelopeEncoder(src)
    for _ in range(20):
        received_at = rng.choice([0, 1, 63, 64, 8191, 8192, T0, 2**47 + rng.randrange(1000)])
        body = rng.randbytes(rng.choice([0, 1, 63, 64, 200, 8191, 8192, 70_000]))
        names = [*KEPT_HEADERS, *SECRET_HEADERS, "x-forwarded-for"]
        headers = {name: random_text(rng, 700) for name in names if rng.random() < 0.5}
        client_ip = rng.choice([None, "127.0.0.1", "2001:db8::1", ""])
        delivery_id = new_delivery_id(received_at)
        ours = encoder.encode(delivery_id, received_at, body, headers, client_ip)
        record = raw_envelope(src, body, headers, client_ip, received_at, delivery_id)
        assert ours == codec.encode(codec.WEBHOOK_ENVELOPE, record)
        assert codec.decode_as(codec.WEBHOOK_ENVELOPE, ours) == record


def test_the_envelope_encoder_refuses_to_start_when_it_disagrees_with_the_codec(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real = codec.encode

    def changed(name: str, record: dict[str, object]) -> bytes:
        return real(name, {**record, "headers": {}})  # as if a field's encoding changed

    monkeypatch.setattr(codec, "encode", changed)
    with pytest.raises(RuntimeError, match="disagrees"):
        EnvelopeEncoder(source("partner"))


def test_the_envelope_encoder_keeps_no_secret_header() -> None:
    encoder = EnvelopeEncoder(source("partner"))
    encoded = encoder.encode(
        new_delivery_id(T0), T0, b"{}", {**SECRET_HEADERS, **USEFUL_HEADERS}, None
    )
    for value in SECRET_HEADERS.values():
        assert value.encode() not in encoded
    assert codec.decode_as(codec.WEBHOOK_ENVELOPE, encoded)["headers"] == USEFUL_HEADERS
