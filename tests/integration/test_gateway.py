"""The gateway as a real process against a real Kafka-protocol broker (PRODUCT.md 1-3).

One gateway subprocess (HOOKLINE_SOURCES=tests/sources.test.toml) serves the
whole module. Records are looked up on ``<env>.webhooks.raw`` by the delivery id
the gateway answered (the record key) or by a unique marker in the body.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import socket
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import jwt
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from hookline.schemas import codec
from prometheus_client.parser import text_string_to_metric_families

from hookline.supervisor import dev_secrets
from tests.conftest import STDHOOKS_SECRET, TEST_SOURCES, hookline_env
from tests.support import processes
from tests.support.broker import TestBroker
from tests.support.kafka import Record, topic_partitions
from tests.support.signing import (
    hmac_signature,
    payload,
    payments_body,
    standard_webhooks_headers,
    unsigned_jwt,
)

pytestmark = pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning")

PRODUCTION_RAW = "production.webhooks.raw"
SANDBOX_RAW = "sandbox.webhooks.raw"
RAW_TOPICS = (PRODUCTION_RAW, SANDBOX_RAW)
LIMIT = 1024 * 1024  # the default body limit (PRODUCT.md section 2)

DEV = dev_secrets()
PARTNER = DEV["PARTNER_SECRET"]
PARTNER_SANDBOX = DEV["PARTNER_SANDBOX_SECRET"]
VIGNETTE = DEV["VIGNETTE_SALES_SECRET"]
PAYMENTS = DEV["PAYMENTS_SECRET"]
PAYMENTS_NEXT = DEV["PAYMENTS_SECRET_NEXT"]
ENVELOPE = DEV["ENVELOPE_SECRET"]
CLAIMS: dict[str, Any] = json.loads(payload("payments-claims.json"))
#: Seed 002's example token: signed with a key nobody here knows.
SEED_002_JWT = (
    "eyJ0eXAiOiJKV1QiLCJhbGciOiJIUzI1NiJ9.eyJwYXltZW50T3JkZXJJZCI6IjAxOTc1ODZjLWUzZjItNzNkNS04"
    "ZTI4LWMzMGM4YjY4YjQ3OSIsIm9yZGVyUmVmZXJlbmNlIjoiVEVTVC1kZjdhMzFmYy03MmQ0LTRmMmItYmJlZC1h"
    "NzlkZThkYTJkYjMiLCJwYXltZW50UHVycG9zZSI6IlRlc3Qgb3JkZXIgIzEyMzQiLCJwYXltZW50U3RhdHVzIjoi"
    "Y29tcGxldGVkIiwicGF5bWVudERldGFpbHMiOnsiYW1vdW50IjoxMi4zNCwiY3VycmVuY3kiOiJFVVIiLCJkZWJ0"
    "b3JJYmFuIjoiTFQzNzczMDAwMTAwMTAyNjkzNjIifSwiZXZlbnQiOiJwYXltZW50LmNvbXBsZXRlZCJ9.Pbi6JJV"
    "qtY-J3jlcdAyd8DMkLQEjTRvdDSb85exjeeY"
)

#: What tests/sources.test.toml configures: source -> (kind, environment, verification).
SOURCES = {
    "partner": ("partner", "production", "token"),
    "partner-sandbox": ("partner", "sandbox", "token"),
    "vignette-sales": ("vignette-sales", "production", "hmac-sha256"),
    "payments": ("payments", "production", "jwt-hs256"),
    "envelope": ("envelope", "production", "token"),
    "partner-stdhooks": ("partner", "production", "standard-webhooks"),
    "envelope-open": ("envelope", "sandbox", "none"),
    "partner-office": ("partner", "production", "token"),
    "partner-local": ("partner", "production", "token"),
}


def all_secrets(env: dict[str, str]) -> set[str]:
    """Every secret value the gateway holds, in the forms it could leak."""
    names = {
        "PARTNER_SECRET",
        "PARTNER_SANDBOX_SECRET",
        "VIGNETTE_SALES_SECRET",
        "PAYMENTS_SECRET",
        "PAYMENTS_SECRET_NEXT",
        "ENVELOPE_SECRET",
        "STDHOOKS_SECRET",
    }
    values = {env[name] for name in names} | set(DEV.values())
    stdhooks_b64 = STDHOOKS_SECRET.removeprefix("whsec_")
    values |= {STDHOOKS_SECRET, stdhooks_b64, base64.b64decode(stdhooks_b64).decode()}
    return {v for v in values if v}


def marker() -> str:
    return f"it-{uuid.uuid4().hex}"


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def hs_jwt(header: dict[str, Any], claims: dict[str, Any], key: str) -> str:
    """A JWT with any header, HMAC-SHA256-signed with ``key`` (for alg confusion)."""
    signing_input = f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(claims).encode())}"
    signature = hmac.new(key.encode(), signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64url(signature)}"


def token_body(token: str) -> bytes:
    return json.dumps({"token": token}).encode()


def partner_body(uid: str, event_type: str = "ORDER_STATUS_CHANGED") -> bytes:
    document = json.loads(payload("partner-order-status.json"))
    document.update(event_type=event_type, order_id=f"ord_{uid}", test_marker=uid)
    return json.dumps(document).encode()


def vignette_body(uid: str) -> bytes:
    document = json.loads(payload("vignette-sales-success.json"))
    document.update(saleId=f"sale_{uid}", test_marker=uid)
    return json.dumps(document).encode()


def envelope_body(uid: str) -> bytes:
    document = json.loads(payload("envelope-user-create.json"))
    document.update(id=f"wh_{uid}", test_marker=uid)
    return json.dumps(document).encode()


@dataclass
class Delivery:
    source: str
    body: bytes
    params: dict[str, str] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)


def with_token(source: str, body: bytes, secret: str) -> Delivery:
    return Delivery(source, body, params={"token": secret})


def hmac_signed(body: bytes, secret: str = VIGNETTE) -> Delivery:
    return Delivery("vignette-sales", body, headers={"X-Signature": hmac_signature(body, secret)})


def stdhooks_signed(body: bytes, timestamp: int | None = None, secret: str = STDHOOKS_SECRET):
    headers = standard_webhooks_headers(body, secret, msg_id=f"msg_{marker()}", timestamp=timestamp)
    return Delivery("partner-stdhooks", body, headers=headers)


# --------------------------------------------------------------------------- fixtures


@dataclass
class Gateway:
    process: processes.ServiceProcess
    url: str
    env: dict[str, str]
    bootstrap: str
    client: httpx.AsyncClient
    #: Every answer that was not 200, for the no-secret-in-error-bodies check.
    errors: list[httpx.Response] = field(default_factory=list)
    accepted_ids: set[str] = field(default_factory=set)

    async def post(self, delivery: Delivery, **kwargs: Any) -> httpx.Response:
        headers = {"Content-Type": "application/json", **delivery.headers}
        return await self.client.post(
            f"/webhooks/{delivery.source}",
            content=delivery.body,
            params=delivery.params,
            headers=headers,
            **kwargs,
        )

    @property
    def address(self) -> tuple[str, int]:
        parts = urlsplit(self.url)
        return parts.hostname or "127.0.0.1", parts.port or 80


@pytest.fixture(scope="module")
def gateway_process(
    broker: TestBroker, log_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[processes.ServiceProcess]:
    env = hookline_env(
        broker.bootstrap_servers,
        tmp_path_factory.mktemp("gateway-data"),
        HOOKLINE_SOURCES=str(TEST_SOURCES),
    )
    process = processes.gateway(env, log_dir).start()
    try:
        deadline = time.monotonic() + 30
        while httpx.get(f"{process.url}/readyz", timeout=3).status_code != 200:  # type: ignore[attr-defined]
            assert time.monotonic() < deadline, f"gateway never ready:\n{process.log()[-3000:]}"
            time.sleep(0.2)
        # Ours answered, not something else that took the port meanwhile.
        assert process.process is not None
        assert process.process.poll() is None, process.log()[-3000:]
        yield process
    finally:
        process.stop()


@pytest.fixture(scope="module")
async def gateway(
    gateway_process: processes.ServiceProcess, broker: TestBroker
) -> AsyncIterator[Gateway]:
    url: str = gateway_process.url  # type: ignore[attr-defined]
    gw: Gateway

    async def remember(response: httpx.Response) -> None:
        await response.aread()
        if response.status_code == 200 and response.url.path.startswith("/webhooks/"):
            gw.accepted_ids.add(response.json()["id"])
        elif response.status_code != 200:
            gw.errors.append(response)

    async with httpx.AsyncClient(
        base_url=url, timeout=15, event_hooks={"response": [remember]}
    ) as client:
        gw = Gateway(gateway_process, url, gateway_process.env, broker.bootstrap_servers, client)
        yield gw


class RawTopics:
    """A consumer over both raw topics that keeps what it read between tests."""

    def __init__(self, bootstrap: str) -> None:
        self.bootstrap = bootstrap
        self.consumer = AIOKafkaConsumer(
            bootstrap_servers=bootstrap,
            enable_auto_commit=False,
            group_id=None,
            auto_offset_reset="earliest",
            fetch_max_bytes=8 * LIMIT,
            max_partition_fetch_bytes=4 * LIMIT,
            # A long-polling fetch delays the ListOffsets sent on the same connection.
            fetch_max_wait_ms=20,
        )
        self.partitions: list[TopicPartition] = []
        self.records: list[Record] = []
        self.by_key: dict[str, Record] = {}

    async def start(self) -> None:
        await self.consumer.start()
        deadline = time.monotonic() + 15
        while True:
            self.partitions = await topic_partitions(self.bootstrap, RAW_TOPICS)
            if {tp.topic for tp in self.partitions} == set(RAW_TOPICS):
                break
            assert time.monotonic() < deadline, "raw topics were not created by the gateway"
            await asyncio.sleep(0.2)
        self.consumer.assign(self.partitions)
        # From now on: this module's deliveries, not the whole history of a shared cluster.
        await self.consumer.seek_to_end(*self.partitions)
        for tp in self.partitions:
            await self.consumer.position(tp)

    async def stop(self) -> None:
        await self.consumer.stop()

    async def caught_up(self, timeout: float = 15.0) -> list[Record]:
        """Read up to the end offsets as of now: everything acknowledged so far."""
        end = await self.consumer.end_offsets(self.partitions)
        deadline = time.monotonic() + timeout
        while True:
            behind = [tp for tp in self.partitions if await self.consumer.position(tp) < end[tp]]
            if not behind:
                return self.records
            assert time.monotonic() < deadline, f"could not read up to {end}"
            batch = await self.consumer.getmany(*behind, timeout_ms=200)
            for tp, messages in batch.items():
                for m in messages:
                    name, value = codec.decode(m.value)
                    record = Record(
                        tp.topic, tp.partition, m.offset, m.key.decode(), name, value, m.value
                    )
                    self.records.append(record)
                    self.by_key[record.key] = record

    async def get(self, delivery_id: str) -> Record:
        await self.caught_up()
        assert delivery_id in self.by_key, f"{delivery_id} acknowledged but not on a raw topic"
        return self.by_key[delivery_id]

    async def containing(self, needle: bytes) -> list[Record]:
        """Records (read up to now) whose value bytes contain ``needle``."""
        await self.caught_up()
        return [r for r in self.records if needle in r.raw]


@pytest.fixture(scope="module")
async def raw_topics(gateway: Gateway) -> AsyncIterator[RawTopics]:
    topics = RawTopics(gateway.bootstrap)
    await topics.start()
    try:
        yield topics
    finally:
        await topics.stop()


def scrape(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def sample(samples: dict[Any, float], name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


async def metrics(gateway: Gateway) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    response = await gateway.client.get("/metrics")
    assert response.status_code == 200
    return scrape(response.text)


def assert_envelope(
    record: Record, delivery: Delivery, delivery_id: str, started_ms: int, ended_ms: int
) -> None:
    kind, environment, verification = SOURCES[delivery.source]
    envelope = record.value
    assert record.topic == f"{environment}.webhooks.raw"
    assert record.key == delivery_id
    assert record.schema == codec.WEBHOOK_ENVELOPE
    assert envelope["delivery_id"] == delivery_id
    assert envelope["body"] == delivery.body  # byte for byte
    assert envelope["source"] == delivery.source
    assert envelope["kind"] == kind
    assert envelope["environment"] == environment
    assert envelope["verification"] == verification
    assert started_ms - 5 <= envelope["received_at"] <= ended_ms + 5
    assert envelope["client_ip"] == "127.0.0.1"
    assert envelope["headers"].get("content-type") == "application/json"
    for name in envelope["headers"]:
        assert name not in {"x-signature", "webhook-signature", "authorization", "cookie"}


async def assert_accepted(
    gateway: Gateway, raw_topics: RawTopics, delivery: Delivery
) -> tuple[str, Record]:
    started = int(time.time() * 1000)
    response = await gateway.post(delivery)
    ended = int(time.time() * 1000)
    assert response.status_code == 200, response.text
    answer = response.json()
    assert set(answer) == {"accepted", "id"}
    assert answer["accepted"] is True
    delivery_id = answer["id"]
    assert isinstance(delivery_id, str)
    assert uuid.UUID(delivery_id).version == 7
    record = await raw_topics.get(delivery_id)
    assert_envelope(record, delivery, delivery_id, started, ended)
    return delivery_id, record


async def assert_not_published(raw_topics: RawTopics, body: bytes) -> None:
    found = await raw_topics.containing(body)
    assert not found, f"refused body was published: {[(r.topic, r.key) for r in found]}"


# --------------------------------------------------------------------------- accepted


EXAMPLES: dict[str, Callable[[], Delivery]] = {
    "partner-checkout-multi": lambda: with_token(
        "partner", payload("partner-checkout-multi.json"), PARTNER
    ),
    "partner-checkout-single": lambda: with_token(
        "partner", payload("partner-checkout-single.json"), PARTNER
    ),
    "partner-order-confirmation": lambda: with_token(
        "partner", payload("partner-order-confirmation.json"), PARTNER
    ),
    "partner-order-status": lambda: with_token(
        "partner", payload("partner-order-status.json"), PARTNER
    ),
    "vignette-sales-success": lambda: hmac_signed(payload("vignette-sales-success.json")),
    "vignette-sales-failure": lambda: hmac_signed(payload("vignette-sales-failure.json")),
    "envelope-refund": lambda: with_token("envelope", payload("envelope-refund.json"), ENVELOPE),
    "envelope-user-create": lambda: with_token(
        "envelope", payload("envelope-user-create.json"), ENVELOPE
    ),
    "payments": lambda: Delivery("payments", payments_body(CLAIMS, PAYMENTS)),
    "payments-rotation-next-secret": lambda: Delivery(
        "payments", payments_body(CLAIMS, PAYMENTS_NEXT)
    ),
    "partner-standard-webhooks": lambda: stdhooks_signed(payload("partner-order-status.json")),
    "partner-sandbox": lambda: with_token(
        "partner-sandbox", payload("partner-checkout-single.json"), PARTNER_SANDBOX
    ),
    "envelope-open-sandbox": lambda: Delivery("envelope-open", payload("envelope-refund.json")),
    "partner-local-allowed-ip": lambda: with_token(
        "partner-local", payload("partner-order-status.json"), PARTNER
    ),
}


@pytest.mark.parametrize("example", list(EXAMPLES))
async def test_authentic_example_is_accepted_and_published_raw(
    gateway: Gateway, raw_topics: RawTopics, example: str
) -> None:
    await assert_accepted(gateway, raw_topics, EXAMPLES[example]())


async def test_standard_webhooks_headers_are_kept_but_not_the_signature(
    gateway: Gateway, raw_topics: RawTopics
) -> None:
    delivery = stdhooks_signed(partner_body(marker()))
    _, record = await assert_accepted(gateway, raw_topics, delivery)
    headers = record.value["headers"]
    assert headers["webhook-id"] == delivery.headers["webhook-id"]
    assert headers["webhook-timestamp"] == delivery.headers["webhook-timestamp"]
    assert "webhook-signature" not in headers


async def test_unknown_partner_event_type_is_still_accepted(
    gateway: Gateway, raw_topics: RawTopics
) -> None:
    uid = marker()
    delivery = with_token("partner", partner_body(uid, event_type=f"SOMETHING_NEW_{uid}"), PARTNER)
    await assert_accepted(gateway, raw_topics, delivery)


async def test_body_exactly_at_the_limit_is_accepted(
    gateway: Gateway, raw_topics: RawTopics
) -> None:
    body = padded_body(marker(), LIMIT)
    json.loads(body)
    await assert_accepted(gateway, raw_topics, with_token("partner", body, PARTNER))


async def test_sandbox_sources_never_write_to_production_topics(
    gateway: Gateway, raw_topics: RawTopics
) -> None:
    uids = [marker(), marker()]
    deliveries = [
        with_token("partner-sandbox", partner_body(uids[0]), PARTNER_SANDBOX),
        Delivery("envelope-open", envelope_body(uids[1])),
    ]
    for delivery in deliveries:
        _, record = await assert_accepted(gateway, raw_topics, delivery)
        assert record.topic == SANDBOX_RAW
    # Whatever the production topics are (raw, or anything a worker made of it),
    # none holds a byte of these deliveries.
    for uid in uids:
        hits = [r for r in await raw_topics.containing(uid.encode()) if r.topic != SANDBOX_RAW]
        assert not hits
    assert not await production_records_containing(gateway.bootstrap, uids)


async def production_records_containing(bootstrap: str, needles: list[str]) -> list[str]:
    """Scan every ``production.`` topic, undecoded, for the needles."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        group_id=None,
        auto_offset_reset="earliest",
        fetch_max_bytes=8 * LIMIT,
        max_partition_fetch_bytes=4 * LIMIT,
        fetch_max_wait_ms=20,
    )
    await consumer.start()
    hits: list[str] = []
    try:
        partitions = [
            tp for tp in await topic_partitions(bootstrap) if tp.topic.startswith("production.")
        ]
        if not partitions:
            return hits
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        end = await consumer.end_offsets(partitions)
        deadline = time.monotonic() + 20
        while behind := [tp for tp in partitions if await consumer.position(tp) < end[tp]]:
            assert time.monotonic() < deadline
            batch = await consumer.getmany(*behind, timeout_ms=200)
            for tp, messages in batch.items():
                for m in messages:
                    data = (m.key or b"") + (m.value or b"")
                    hits += [f"{tp.topic}@{m.offset}" for n in needles if n.encode() in data]
    finally:
        await consumer.stop()
    return hits


# --------------------------------------------------------------------------- forgeries


def forged_claims(uid: str) -> dict[str, Any]:
    return {**CLAIMS, "paymentOrderId": uid, "iat": int(time.time())}


def tampered_jwt(uid: str) -> str:
    genuine = jwt.encode(forged_claims(uid), PAYMENTS, algorithm="HS256")
    header, _, signature = genuine.split(".")
    richer = {**forged_claims(uid), "paymentDetails": {"amount": 0.01, "currency": "EUR"}}
    return f"{header}.{b64url(json.dumps(richer).encode())}.{signature}"


FORGERIES: dict[str, tuple[Callable[[str], Delivery], str]] = {
    "partner-wrong-token": (
        lambda uid: with_token("partner", partner_body(uid), "not-the-partner-token"),
        "bad_token",
    ),
    "partner-missing-token": (lambda uid: Delivery("partner", partner_body(uid)), "missing_token"),
    # Refused for its token before anything parses it (not a 400).
    "partner-wrong-token-not-json": (
        lambda uid: with_token("partner", f"not json {uid}".encode(), "not-the-partner-token"),
        "bad_token",
    ),
    "partner-empty-token": (lambda uid: with_token("partner", partner_body(uid), ""), ""),
    "partner-token-prefix": (
        lambda uid: with_token("partner", partner_body(uid), PARTNER[:-1]),
        "",
    ),
    "partner-sandbox-token-on-production": (
        lambda uid: with_token("partner", partner_body(uid), PARTNER_SANDBOX),
        "bad_token",
    ),
    "partner-production-token-on-sandbox": (
        lambda uid: with_token("partner-sandbox", partner_body(uid), PARTNER),
        "bad_token",
    ),
    "partner-token-in-header-not-query": (
        lambda uid: Delivery("partner", partner_body(uid), headers={"token": PARTNER}),
        "missing_token",
    ),
    "envelope-wrong-token": (
        lambda uid: with_token("envelope", envelope_body(uid), PARTNER),
        "bad_token",
    ),
    "envelope-missing-token": (lambda uid: Delivery("envelope", envelope_body(uid)), ""),
    "vignette-wrong-secret": (
        lambda uid: hmac_signed(vignette_body(uid), "not-the-vignette-key"),
        "bad_signature",
    ),
    "vignette-missing-signature": (
        lambda uid: Delivery("vignette-sales", vignette_body(uid)),
        "missing_signature",
    ),
    "vignette-signature-too-short": (
        lambda uid: Delivery(
            "vignette-sales",
            vignette_body(uid),
            headers={"X-Signature": hmac_signature(vignette_body(uid), VIGNETTE)[:-1]},
        ),
        "malformed_signature",
    ),
    "vignette-signature-too-long": (
        lambda uid: Delivery(
            "vignette-sales",
            vignette_body(uid),
            headers={"X-Signature": hmac_signature(vignette_body(uid), VIGNETTE) + "0"},
        ),
        "malformed_signature",
    ),
    "vignette-signature-not-hex": (
        lambda uid: Delivery(
            "vignette-sales", vignette_body(uid), headers={"X-Signature": "zz" * 32}
        ),
        "malformed_signature",
    ),
    "vignette-signature-of-other-body": (
        lambda uid: Delivery(
            "vignette-sales",
            vignette_body(uid),
            headers={"X-Signature": hmac_signature(vignette_body(uid) + b" ", VIGNETTE)},
        ),
        "bad_signature",
    ),
    "vignette-secret-as-signature": (
        lambda uid: Delivery(
            "vignette-sales", vignette_body(uid), headers={"X-Signature": VIGNETTE}
        ),
        "malformed_signature",
    ),
    "payments-alg-none": (
        lambda uid: Delivery("payments", token_body(unsigned_jwt(forged_claims(uid)))),
        "jwt_algorithm",
    ),
    "payments-hs512": (
        lambda uid: Delivery(
            "payments", token_body(jwt.encode(forged_claims(uid), PAYMENTS, algorithm="HS512"))
        ),
        "jwt_algorithm",
    ),
    "payments-rs256-header-hmac-signed": (
        lambda uid: Delivery(
            "payments",
            token_body(hs_jwt({"alg": "RS256", "typ": "JWT"}, forged_claims(uid), PAYMENTS)),
        ),
        "jwt_algorithm",
    ),
    "payments-wrong-key": (
        lambda uid: Delivery("payments", payments_body(forged_claims(uid), "not-the-payments-key")),
        "bad_signature",
    ),
    "payments-tampered-claims": (
        lambda uid: Delivery("payments", token_body(tampered_jwt(uid))),
        "bad_signature",
    ),
    "payments-seed-002-example-token": (
        lambda uid: Delivery(
            "payments", json.dumps({"token": SEED_002_JWT, "test_marker": uid}).encode()
        ),
        "bad_signature",
    ),
    "payments-garbage-token": (
        lambda uid: Delivery("payments", token_body(f"not.a.{uid}")),
        "",
    ),
    "payments-secret-as-token": (lambda uid: Delivery("payments", token_body(PAYMENTS)), ""),
    "stdhooks-10-minutes-old": (
        lambda uid: stdhooks_signed(partner_body(uid), timestamp=int(time.time()) - 600),
        "bad_timestamp",
    ),
    "stdhooks-10-minutes-ahead": (
        lambda uid: stdhooks_signed(partner_body(uid), timestamp=int(time.time()) + 600),
        "bad_timestamp",
    ),
    "stdhooks-wrong-secret": (
        lambda uid: stdhooks_signed(
            partner_body(uid), secret="whsec_" + base64.b64encode(b"x" * 32).decode()
        ),
        "bad_signature",
    ),
    "stdhooks-missing-headers": (
        lambda uid: Delivery("partner-stdhooks", partner_body(uid)),
        "missing_signature",
    ),
    "ip-not-allowed": (
        lambda uid: with_token("partner-office", partner_body(uid), PARTNER),
        "ip_not_allowed",
    ),
    "ip-not-allowed-spoofed-forwarded-for": (
        lambda uid: Delivery(
            "partner-office",
            partner_body(uid),
            params={"token": PARTNER},
            headers={"X-Forwarded-For": "10.1.2.3", "X-Real-IP": "10.1.2.3"},
        ),
        "ip_not_allowed",
    ),
    "allowed-ip-but-wrong-token": (
        lambda uid: with_token("partner-local", partner_body(uid), "not-the-partner-token"),
        "bad_token",
    ),
}


@pytest.mark.parametrize("forgery", list(FORGERIES))
async def test_forgery_is_refused_401_and_never_published(
    gateway: Gateway, raw_topics: RawTopics, forgery: str
) -> None:
    build, reason = FORGERIES[forgery]
    uid = marker()
    delivery = build(uid)
    response = await gateway.post(delivery)
    assert response.status_code == 401, response.text
    if reason:
        assert reason in response.json()["detail"]
    await assert_not_published(raw_topics, delivery.body)
    await assert_not_published(raw_topics, uid.encode())


# --------------------------------------------------------------------------- 400 / 404 / 413


def bad_request(source: str, body: bytes) -> Delivery:
    if source == "vignette-sales":
        return hmac_signed(body)
    if source == "payments":
        return Delivery(source, body)
    return with_token(source, body, {"partner": PARTNER, "envelope": ENVELOPE}[source])


BAD_BODIES: dict[str, Callable[[str], Delivery]] = {
    "partner-not-json": lambda uid: bad_request("partner", f"event_type={uid}".encode()),
    "partner-truncated-json": lambda uid: bad_request("partner", partner_body(uid)[:-1]),
    "partner-empty-body": lambda uid: bad_request("partner", b""),
    "partner-json-array": lambda uid: bad_request(
        "partner", json.dumps([json.loads(partner_body(uid))]).encode()
    ),
    "partner-json-string": lambda uid: bad_request("partner", json.dumps(uid).encode()),
    "partner-without-event-type": lambda uid: bad_request(
        "partner", json.dumps({"order_id": uid, "status": "ACTIVE"}).encode()
    ),
    "partner-not-utf8": lambda uid: bad_request(
        "partner", b'{"event_type": "\xff\xfe", "id": "' + uid.encode() + b'"}'
    ),
    "vignette-sales-without-sale-id": lambda uid: bad_request(
        "vignette-sales",
        json.dumps({"vignetteId": uid, "vignetteSale": {"success": True}}).encode(),
    ),
    "vignette-sales-json-array": lambda uid: bad_request(
        "vignette-sales", json.dumps([uid]).encode()
    ),
    "payments-without-token": lambda uid: bad_request(
        "payments", json.dumps({"jwt": jwt.encode(forged_claims(uid), PAYMENTS)}).encode()
    ),
    "payments-not-json": lambda uid: bad_request("payments", f"token={uid}".encode()),
    "envelope-without-id": lambda uid: bad_request(
        "envelope", json.dumps({"type": "x", "data": {"marker": uid}}).encode()
    ),
    "partner-nested-too-deep": lambda uid: bad_request(
        "partner", ('{"event_type": "' + uid + '", "x": ' + "[" * 100 + "]" * 100 + "}").encode()
    ),
}


@pytest.mark.parametrize("case", list(BAD_BODIES))
async def test_malformed_authentic_body_is_400_and_not_published(
    gateway: Gateway, raw_topics: RawTopics, case: str
) -> None:
    uid = marker()
    delivery = BAD_BODIES[case](uid)
    response = await gateway.post(delivery)
    assert response.status_code == 400, response.text
    assert response.json()["detail"]
    await assert_not_published(raw_topics, uid.encode())


NOT_JSON_BUT_PYTHON_PARSES_IT: dict[str, Callable[[str], bytes]] = {
    # RFC 8259 has no NaN/Infinity literals...
    "nan-and-infinity": lambda uid: (
        b'{"event_type": "ORDER_STATUS_CHANGED", "order_id": "' + uid.encode() + b'", '
        b'"amount": NaN, "fee": Infinity}'
    ),
    # ...and JSON exchanged between systems MUST be UTF-8 (section 8.1).
    "utf-16": lambda uid: json.dumps({"event_type": "ORDER_STATUS_CHANGED", "id": uid}).encode(
        "utf-16"
    ),
}


@pytest.mark.parametrize("case", list(NOT_JSON_BUT_PYTHON_PARSES_IT))
async def test_body_that_is_not_strict_json_is_400(
    gateway: Gateway, raw_topics: RawTopics, case: str
) -> None:
    uid = marker()
    body = NOT_JSON_BUT_PYTHON_PARSES_IT[case](uid)
    response = await gateway.post(with_token("partner", body, PARTNER))
    assert response.status_code == 400, response.text
    await assert_not_published(raw_topics, body)


async def test_unknown_source_is_404(gateway: Gateway) -> None:
    response = await gateway.post(with_token("no-such-source", partner_body(marker()), PARTNER))
    assert response.status_code == 404
    response = await gateway.client.post("/webhooks/PARTNER", params={"token": PARTNER})
    assert response.status_code == 404


async def post_large(gateway: Gateway, delivery: Delivery, content: Any = None) -> httpx.Response:
    """POST a body the gateway refuses before it is all sent, on a fresh async client.

    The gateway answers 413 at once, then reads and drops the rest (bounded)
    before closing, so the client gets the answer rather than a reset.
    """
    async with httpx.AsyncClient(base_url=gateway.url, timeout=15) as client:
        response = await client.post(
            f"/webhooks/{delivery.source}",
            params=delivery.params,
            headers={"Content-Type": "application/json", **delivery.headers},
            content=delivery.body if content is None else content,
        )
    gateway.errors.append(response)
    return response


def padded_body(uid: str, size: int) -> bytes:
    prefix = partner_body(uid)[:-1] + b', "pad": "'
    body = prefix + b"a" * (size - len(prefix) - 2) + b'"}'
    assert len(body) == size
    return body


async def test_body_over_limit_with_content_length_is_413(
    gateway: Gateway, raw_topics: RawTopics
) -> None:
    uid = marker()
    delivery = with_token("partner", padded_body(uid, LIMIT + 1), PARTNER)
    response = await post_large(gateway, delivery)
    assert response.request.headers["content-length"] == str(LIMIT + 1)
    assert response.status_code == 413
    await assert_not_published(raw_topics, uid.encode())


async def test_chunked_body_over_limit_is_413(gateway: Gateway, raw_topics: RawTopics) -> None:
    uid = marker()
    body = padded_body(uid, LIMIT + 65536)

    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(body), 65536):
            yield body[start : start + 65536]

    delivery = with_token("partner", b"", PARTNER)
    response = await post_large(gateway, delivery, chunks())
    assert response.request.headers.get("transfer-encoding") == "chunked"
    assert "content-length" not in response.request.headers
    assert response.status_code == 413
    await assert_not_published(raw_topics, uid.encode())


def raw_http(gateway: Gateway, head: str, body: bytes, timeout: float = 5.0) -> tuple[bytes, float]:
    """Send a request by hand, never finishing its body; return (answer head, seconds)."""
    with socket.create_connection(gateway.address, timeout=timeout) as sock:
        started = time.monotonic()
        sock.sendall(head.encode() + body)
        answer = b""
        while b"\r\n\r\n" not in answer:
            chunk = sock.recv(65536)
            if not chunk:
                break
            answer += chunk
        return answer, time.monotonic() - started


def test_huge_content_length_is_refused_without_reading_the_body(gateway: Gateway) -> None:
    head = (
        f"POST /webhooks/partner?token={PARTNER} HTTP/1.1\r\n"
        f"Host: {gateway.address[0]}\r\n"
        "Content-Type: application/json\r\n"
        "Content-Length: 50000000\r\n\r\n"
    )
    answer, seconds = raw_http(gateway, head, b'{"event_type": "ORDER_STA')
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert seconds < 2.0


def test_chunked_body_is_refused_once_over_the_limit_before_it_ends(gateway: Gateway) -> None:
    head = (
        f"POST /webhooks/partner?token={PARTNER} HTTP/1.1\r\n"
        f"Host: {gateway.address[0]}\r\n"
        "Content-Type: application/json\r\n"
        "Transfer-Encoding: chunked\r\n\r\n"
    )
    size = LIMIT + 4096
    chunk = f"{size:x}\r\n".encode() + b"a" * size + b"\r\n"  # and no final 0-chunk
    answer, seconds = raw_http(gateway, head, chunk)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert seconds < 2.0


# --------------------------------------------------------------------------- health, metrics


async def test_healthz_and_readyz(gateway: Gateway) -> None:
    health = await gateway.client.get("/healthz")
    assert health.status_code == 200
    ready = await gateway.client.get("/readyz")
    assert ready.status_code == 200


async def test_metrics_count_outcomes_reasons_and_publish_time(gateway: Gateway) -> None:
    before = await metrics(gateway)
    scanner_path = f"scanner-{marker()}"
    assert (await gateway.post(with_token(scanner_path, b"{}", PARTNER))).status_code == 404
    wrong = with_token("partner", partner_body(marker()), "wrong")
    assert (await gateway.post(wrong)).status_code == 401
    assert (await gateway.post(hmac_signed(vignette_body(marker()), "wrong"))).status_code == 401
    good = with_token("partner", partner_body(marker()), PARTNER)
    assert (await gateway.post(good)).status_code == 200
    assert (await gateway.post(with_token("partner", b"[]", PARTNER))).status_code == 400
    too_large = with_token("partner", padded_body(marker(), LIMIT + 1), PARTNER)
    assert (await post_large(gateway, too_large)).status_code == 413
    response = await gateway.client.get("/metrics")
    assert response.headers["content-type"].startswith("text/plain")
    after = scrape(response.text)

    def grew(name: str, **labels: str) -> float:
        return sample(after, name, **labels) - sample(before, name, **labels)

    deliveries = "hookline_gateway_deliveries_total"
    assert grew(deliveries, source="unknown", outcome="not_found") == 1
    assert grew(deliveries, source="partner", outcome="accepted") == 1
    assert grew(deliveries, source="partner", outcome="unauthorized") == 1
    assert grew(deliveries, source="partner", outcome="bad_request") == 1
    assert grew(deliveries, source="partner", outcome="too_large") == 1
    assert grew(deliveries, source="vignette-sales", outcome="unauthorized") == 1
    assert not any(scanner_path in value for _, labels in after for _, value in labels)
    failures = "hookline_gateway_verification_failures_total"
    assert grew(failures, source="partner", reason="bad_token") == 1
    assert grew(failures, source="vignette-sales", reason="bad_signature") == 1
    assert grew("hookline_gateway_publish_seconds_count", environment="production") == 1
    assert grew("hookline_gateway_publish_seconds_sum", environment="production") > 0
    buckets = [
        labels for name, labels in after if name == "hookline_gateway_publish_seconds_bucket"
    ]
    assert any(("le", "+Inf") in labels for labels in buckets)
    assert ("hookline_gateway_requests_in_flight", frozenset()) in after
    assert sample(after, "hookline_gateway_requests_in_flight") == 0


async def test_in_flight_gauge_counts_a_request_being_received(gateway: Gateway) -> None:
    body = with_token("partner", partner_body(marker()), PARTNER).body
    head = (
        f"POST /webhooks/partner?token={PARTNER} HTTP/1.1\r\n"
        f"Host: {gateway.address[0]}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    reader, writer = await asyncio.open_connection(*gateway.address)
    try:
        writer.write(head + body[:10])
        await writer.drain()
        deadline = time.monotonic() + 5
        while sample(await metrics(gateway), "hookline_gateway_requests_in_flight") < 1:
            assert time.monotonic() < deadline, "in-flight gauge never rose"
            await asyncio.sleep(0.05)
        writer.write(body[10:])
        await writer.drain()
        status = await asyncio.wait_for(reader.readline(), 10)
        assert status.startswith(b"HTTP/1.1 200"), status
    finally:
        writer.close()
    assert sample(await metrics(gateway), "hookline_gateway_requests_in_flight") == 0


# --------------------------------------------------------------------------- secrets


async def test_no_secret_in_logs_metrics_error_bodies_or_records(
    gateway: Gateway, raw_topics: RawTopics, broker_kind: str
) -> None:
    secrets = all_secrets(gateway.env)
    # Requests carrying real secrets where they do not belong, on every error path.
    uid = marker()
    requests = [
        with_token("partner", b"not json", PARTNER),
        with_token("partner", b"[1]", PARTNER),
        with_token("partner-office", partner_body(uid), PARTNER),
        with_token("envelope", envelope_body(uid), PARTNER),
        with_token("partner", partner_body(uid), ENVELOPE),
        with_token("partner", partner_body(uid), PAYMENTS),
        with_token("no-such-source", partner_body(uid), PARTNER),
        Delivery("vignette-sales", vignette_body(uid), headers={"X-Signature": VIGNETTE}),
        Delivery("payments", token_body(PAYMENTS)),
        Delivery("payments", token_body(PAYMENTS_NEXT + "." + PAYMENTS + "." + PAYMENTS)),
        Delivery("payments", json.dumps({"not_token": PAYMENTS}).encode()),
        Delivery(
            "partner-stdhooks",
            partner_body(uid),
            headers={"webhook-id": "x", "webhook-timestamp": "1", "webhook-signature": "v1,x"},
        ),
        Delivery("partner-stdhooks", partner_body(uid), params={"token": STDHOOKS_SECRET}),
    ]
    for delivery in requests:
        response = await gateway.post(delivery)
        assert response.status_code in (400, 401, 404), response.text
    too_large = with_token("partner", padded_body(uid, LIMIT + 10), PARTNER)
    assert (await post_large(gateway, too_large)).status_code == 413
    # ...and accepted ones with the token in the query string.
    for source, secret in (("partner", PARTNER), ("envelope", ENVELOPE)):
        body = partner_body(marker()) if source == "partner" else envelope_body(marker())
        assert (await gateway.post(with_token(source, body, secret))).status_code == 200

    assert gateway.errors
    for response in gateway.errors:
        text = response.content.decode(errors="replace") + str(response.headers)
        leaked = [s for s in secrets if s in text]
        assert not leaked, f"{response.request.url.path} {response.status_code} leaks a secret"

    exposition = (await gateway.client.get("/metrics")).text
    assert not [s for s in secrets if s in exposition]

    await raw_topics.caught_up()
    for delivery_id in gateway.accepted_ids:
        record = raw_topics.by_key[delivery_id]
        assert not [s for s in secrets if s.encode() in record.raw], delivery_id

    await asyncio.sleep(0.3)  # the log is written unbuffered; let the last lines land
    log = gateway.process.log()
    assert "refused" in log  # it is the gateway's log, and it logs refusals...
    assert "connected to Kafka" in log  # ...and its start (not each acceptance: a metric)
    # A retried send lands once on Kafka; the embedded broker has no idempotent producer.
    producer = "idempotent" if broker_kind == "kafka" else "non-idempotent"
    assert f"({producer} producer)" in log
    leaked = sorted(s for s in secrets if s in log)
    assert not leaked, f"secrets in the gateway log: {len(leaked)}"
