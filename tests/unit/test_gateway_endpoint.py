"""The webhook route served ahead of FastAPI (gateway/app.py, gateway/webhooks.py), without Kafka.

The route is a bare ASGI endpoint for speed; these tests pin down that it
answers like the FastAPI route it replaced: the same paths and methods reach
it, the same JSON answers come back, a bug is a JSON 500, an oversized
declared body is refused unread, and a 200 means the record was published.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from hookline.core.settings import Settings
from hookline.gateway.app import create_app
from hookline.gateway.envelope import KEPT_HEADERS
from hookline.gateway.metrics import GatewayMetrics
from hookline.gateway.publish import Unavailable
from hookline.schemas import codec
from starlette.types import Message

from tests.unit.helpers import payload_bytes, source

TOKEN = "partner-token-0123456789abcdef"
HMAC_KEY = b"vignette-sales-key-0123456789abcdef"
PARTNER = payload_bytes("partner-order-status.json")
SALES = payload_bytes("vignette-sales-success.json")


class RecordingPublisher:
    """Stands in for Kafka: keeps what was published; ``fail`` makes it refuse or break."""

    def __init__(self) -> None:
        self.published: list[tuple[str, bytes, bytes, bytes]] = []
        self.fail: BaseException | None = None

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    async def ready(self) -> bool:
        return True

    async def publish(self, topic: str, key: bytes, value: bytes, ordering_key: bytes) -> None:
        if self.fail is not None:
            raise self.fail
        self.published.append((topic, key, value, ordering_key))


SOURCES = {
    "partner": source("partner", "partner", "token", (TOKEN.encode(),)),
    "vignette-sales": source("vignette-sales", "vignette-sales", "hmac-sha256", (HMAC_KEY,)),
}


@pytest.fixture
def publisher() -> RecordingPublisher:
    return RecordingPublisher()


@pytest.fixture
def metrics() -> GatewayMetrics:
    return GatewayMetrics()


@pytest.fixture
async def client(
    publisher: RecordingPublisher, metrics: GatewayMetrics
) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(Settings(max_body_bytes=4096), SOURCES, publisher, metrics)  # type: ignore[arg-type]
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway.test") as http:
        yield http


def signed(body: bytes) -> dict[str, str]:
    signature = hmac.new(HMAC_KEY, body, hashlib.sha256).hexdigest()
    return {"content-type": "application/json", "x-signature": signature}


async def test_an_authentic_delivery_is_published_and_answered_like_before(
    client: httpx.AsyncClient, publisher: RecordingPublisher
) -> None:
    response = await client.post(
        "/webhooks/vignette-sales",
        content=SALES,
        headers={**signed(SALES), "user-agent": "Sales/1", "cookie": "secret"},
    )
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.headers["content-length"] == str(len(response.content)) == "61"
    answer = response.json()
    assert answer["accepted"] is True
    # Starlette's JSONResponse would have written exactly these bytes.
    assert response.content == json.dumps(answer, separators=(",", ":")).encode()
    [(topic, key, value, ordering_key)] = publisher.published
    assert topic == "production.webhooks.raw"
    assert key == answer["id"].encode()
    assert uuid.UUID(answer["id"]).version == 7
    name, record = codec.decode(value)
    assert name == codec.WEBHOOK_ENVELOPE
    assert record["delivery_id"] == answer["id"]
    assert record["body"] == SALES
    assert record["source"] == record["kind"] == "vignette-sales"
    assert record["verification"] == "hmac-sha256"
    assert record["client_ip"] == "127.0.0.1"
    assert record["headers"] == {"content-type": "application/json", "user-agent": "Sales/1"}
    assert set(record["headers"]) <= set(KEPT_HEADERS)
    assert ordering_key


async def test_a_token_delivery_is_published(
    client: httpx.AsyncClient, publisher: RecordingPublisher
) -> None:
    response = await client.post(f"/webhooks/partner?token={TOKEN}", content=PARTNER)
    assert response.status_code == 200
    assert len(publisher.published) == 1
    assert TOKEN.encode() not in publisher.published[0][2]


@pytest.mark.parametrize(
    ("method", "path", "status", "detail"),
    [
        ("GET", "/webhooks/partner", 405, "Method Not Allowed"),
        ("PUT", "/webhooks/partner", 405, "Method Not Allowed"),
        ("POST", "/webhooks/", 404, "Not Found"),
        ("POST", "/webhooks/partner/", 404, "Not Found"),
        ("POST", "/webhooks/partner/extra", 404, "Not Found"),
        ("POST", "/webhooks/part%2Fner", 404, "Not Found"),
        ("POST", "/webhooks/nobody", 404, "unknown source"),
        ("POST", "/webhooksx/partner", 404, "Not Found"),
    ],
)
async def test_other_paths_and_methods_answer_as_fastapi_did(
    client: httpx.AsyncClient, method: str, path: str, status: int, detail: str
) -> None:
    response = await client.request(method, path, content=b"{}")
    assert response.status_code == status
    assert response.json() == {"detail": detail}


async def test_forgeries_and_bad_bodies_are_refused_and_not_published(
    client: httpx.AsyncClient, publisher: RecordingPublisher
) -> None:
    forged = await client.post(
        "/webhooks/vignette-sales", content=SALES, headers=signed(SALES + b" ")
    )
    assert forged.status_code == 401
    assert forged.json() == {"detail": "verification failed: bad_signature"}
    assert forged.headers["www-authenticate"].startswith("HMAC-SHA256")
    wrong_token = await client.post("/webhooks/partner?token=nope", content=PARTNER)
    assert wrong_token.status_code == 401
    twice = await client.post(f"/webhooks/partner?token={TOKEN}&token={TOKEN}", content=PARTNER)
    assert twice.status_code == 400
    assert twice.json() == {"detail": "query parameter 'token' given more than once"}
    not_json = await client.post("/webhooks/vignette-sales", content=b"{", headers=signed(b"{"))
    assert not_json.status_code == 400
    assert publisher.published == []


async def test_kafka_unavailable_is_503_with_retry_after(
    client: httpx.AsyncClient, publisher: RecordingPublisher
) -> None:
    publisher.fail = Unavailable("no acknowledgement within 5s")
    response = await client.post(f"/webhooks/partner?token={TOKEN}", content=PARTNER)
    assert response.status_code == 503
    assert response.headers["retry-after"] == "5"
    assert response.json() == {"detail": "Kafka unavailable: no acknowledgement within 5s"}


async def test_a_bug_is_a_json_500_and_still_raised_for_the_server_to_log(
    publisher: RecordingPublisher,
) -> None:
    publisher.fail = RuntimeError("a bug")
    app = create_app(Settings(), SOURCES, publisher)  # type: ignore[arg-type]
    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": PARTNER, "more_body": False}

    async def send(message: Message) -> None:
        sent.append(message)

    with pytest.raises(RuntimeError, match="a bug"):
        await app(scope("/webhooks/partner", f"token={TOKEN}"), receive, send)
    assert sent[0]["status"] == 500
    assert json.loads(sent[1]["body"]) == {"detail": "internal error"}


def scope(path: str, query: str = "", headers: list[tuple[bytes, bytes]] | None = None) -> Any:
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": query.encode(),
        "headers": headers or [],
        "client": ("127.0.0.1", 40000),
        "server": ("127.0.0.1", 8000),
    }


async def test_a_declared_length_over_the_limit_is_413_before_any_body_is_read() -> None:
    publisher = RecordingPublisher()
    app = create_app(Settings(max_body_bytes=4096), SOURCES, publisher)  # type: ignore[arg-type]
    events: list[str] = []
    sent: list[Message] = []

    async def receive() -> Message:
        # Only the refusal's bounded drain reads, after the answer went out.
        events.append("receive")
        return {"type": "http.request", "body": b"x" * 100, "more_body": False}

    async def send(message: Message) -> None:
        events.append("send")
        sent.append(message)

    head = [(b"content-length", b"4097")]
    await app(scope("/webhooks/partner", f"token={TOKEN}", head), receive, send)
    assert events[:2] == ["send", "send"]
    assert sent[0]["status"] == 413
    assert json.loads(sent[1]["body"]) == {"detail": "body larger than 4096 bytes"}
    assert publisher.published == []


async def test_a_root_path_mount_reaches_the_same_endpoint(publisher: RecordingPublisher) -> None:
    app = create_app(Settings(), SOURCES, publisher)  # type: ignore[arg-type]
    transport = httpx.ASGITransport(app=app, root_path="/hooks")
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway.test") as http:
        response = await http.post(f"/hooks/webhooks/partner?token={TOKEN}", content=PARTNER)
    assert response.status_code == 200
    assert len(publisher.published) == 1


async def test_gauges_read_the_live_counts(
    client: httpx.AsyncClient, metrics: GatewayMetrics
) -> None:
    await client.post(f"/webhooks/partner?token={TOKEN}", content=PARTNER)
    assert metrics.registry.get_sample_value("hookline_gateway_requests_in_flight") == 0
    assert metrics.registry.get_sample_value("hookline_gateway_unverified_body_bytes") == 0
    accepted = {"source": "partner", "outcome": "accepted"}
    assert metrics.registry.get_sample_value("hookline_gateway_deliveries_total", accepted) == 1
