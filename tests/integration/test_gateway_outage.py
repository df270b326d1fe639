"""Kafka away: the gateway answers 503 with Retry-After in time, then recovers by itself.

PRODUCT.md section 2: "Kafka unreachable or no ack within the publish timeout:
503 with Retry-After; the provider retries, nothing is lost". These tests
freeze and kill a broker, so they use their own embedded broker (never the
session's) and their own gateway with HOOKLINE_PUBLISH_TIMEOUT=2.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from hookline.infra.broker import EmbeddedBroker

from tests.conftest import TEST_SOURCES, hookline_env
from tests.support import processes
from tests.support.kafka import read_topics
from tests.support.signing import DEV, payload

pytestmark = pytest.mark.skipif(
    bool(os.environ.get("KAFKA_BOOTSTRAP_SERVERS")),
    reason="outage tests freeze and kill their own embedded broker; not run on an external cluster",
)

PUBLISH_TIMEOUT_S = 2.0
#: A refusal must come within the publish timeout plus a small margin.
ANSWER_WITHIN_S = PUBLISH_TIMEOUT_S + 2.0
RAW = "production.webhooks.raw"


@dataclass
class Rig:
    broker: EmbeddedBroker
    gateway: processes.ServiceProcess
    log_dir: Path

    @property
    def url(self) -> str:
        return self.gateway.url  # type: ignore[attr-defined,no-any-return]


@pytest.fixture(scope="module")
def rig(log_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    broker = EmbeddedBroker(log_path=log_dir / "outage-broker.log").start()
    env = hookline_env(
        broker.bootstrap_servers,
        tmp_path_factory.mktemp("outage-data"),
        HOOKLINE_SOURCES=str(TEST_SOURCES),
        HOOKLINE_PUBLISH_TIMEOUT=str(PUBLISH_TIMEOUT_S),
    )
    setup = Rig(broker, processes.gateway(env, log_dir), log_dir)
    try:
        setup.gateway.start()
        deadline = time.monotonic() + 30
        while httpx.get(f"{setup.url}/readyz", timeout=5).status_code != 200:
            assert time.monotonic() < deadline, setup.gateway.log()[-3000:]
            time.sleep(0.2)
        # Ours answered, not something else that took the port meanwhile.
        assert setup.gateway.process is not None
        assert setup.gateway.process.poll() is None, setup.gateway.log()[-3000:]
        yield setup
    finally:
        setup.gateway.stop()
        setup.broker.stop()  # the current one: a test may have replaced it


@pytest.fixture
async def client(rig: Rig) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=rig.url, timeout=15) as c:
        yield c


def partner_delivery() -> tuple[bytes, str]:
    document = json.loads(payload("partner-order-status.json"))
    uid = f"it-{uuid.uuid4().hex}"
    document.update(order_id=f"ord_{uid}", test_marker=uid)
    return json.dumps(document).encode(), uid


async def post(client: httpx.AsyncClient, body: bytes) -> tuple[httpx.Response, float]:
    started = time.monotonic()
    response = await client.post(
        "/webhooks/partner",
        params={"token": DEV["PARTNER_SECRET"]},
        content=body,
        headers={"Content-Type": "application/json"},
    )
    return response, time.monotonic() - started


async def assert_unavailable(client: httpx.AsyncClient) -> httpx.Response:
    """A delivery now is refused with 503 and Retry-After, within the publish timeout."""
    body, _ = partner_delivery()
    response, seconds = await post(client, body)
    assert response.status_code == 503, response.text
    assert int(response.headers["retry-after"]) > 0
    assert seconds < ANSWER_WITHIN_S, f"503 after {seconds:.1f}s"
    return response


async def wait_readyz(client: httpx.AsyncClient, status: int, within: float) -> float:
    started = time.monotonic()
    while True:
        response = await client.get("/readyz")
        if response.status_code == status:
            return time.monotonic() - started
        assert time.monotonic() - started < within, f"/readyz still {response.status_code}"
        await asyncio.sleep(0.2)


async def accepted_again(client: httpx.AsyncClient, within: float) -> tuple[str, bytes, float]:
    """POST until one is accepted; every attempt answers in time, with 200 or 503."""
    started = time.monotonic()
    while True:
        body, _ = partner_delivery()
        response, seconds = await post(client, body)
        assert seconds < ANSWER_WITHIN_S, f"answered after {seconds:.1f}s"
        if response.status_code == 200:
            return response.json()["id"], body, time.monotonic() - started
        assert response.status_code == 503, response.text
        assert "retry-after" in response.headers
        assert time.monotonic() - started < within, "never accepted again"
        await asyncio.sleep(0.3)


async def assert_on_raw_topic(bootstrap: str, delivery_id: str, body: bytes) -> None:
    records = await read_topics(
        bootstrap, RAW, until=lambda rs: any(r.key == delivery_id for r in rs), timeout=20, idle=0
    )
    [record] = [r for r in records if r.key == delivery_id]
    assert record.value["body"] == body


async def test_frozen_broker_503_with_retry_after_then_recovers(
    rig: Rig, client: httpx.AsyncClient
) -> None:
    pid = rig.gateway.process.pid if rig.gateway.process else None
    body, _ = partner_delivery()
    assert (await post(client, body))[0].status_code == 200

    rig.broker.pause()
    try:
        await assert_unavailable(client)
        await wait_readyz(client, 503, within=8)
        await assert_unavailable(client)
    finally:
        rig.broker.resume()

    delivery_id, body, _ = await accepted_again(client, within=20)
    await wait_readyz(client, 200, within=10)
    assert rig.gateway.process is not None
    assert rig.gateway.process.poll() is None
    assert rig.gateway.process.pid == pid  # recovered without a restart
    await assert_on_raw_topic(rig.broker.bootstrap_servers, delivery_id, body)


@dataclass
class Restart:
    """What happened while the broker was stopped and then restarted, empty."""

    pid: int | None
    refused: list[httpx.Response]
    readyz_down_after: float
    accepted: list[tuple[str, bytes]]
    accepted_after: float
    bootstrap: str


@pytest.fixture(scope="module")
async def restart(rig: Rig) -> Restart:
    async with httpx.AsyncClient(base_url=rig.url, timeout=15) as client:
        pid = rig.gateway.process.pid if rig.gateway.process else None
        body, _ = partner_delivery()
        assert (await post(client, body))[0].status_code == 200
        port = rig.broker.port

        rig.broker.stop()
        refused = [await assert_unavailable(client)]
        down_after = await wait_readyz(client, 503, within=8)
        refused.append(await assert_unavailable(client))

        # Same address, but an empty broker: Tansu keeps everything in memory.
        rig.broker = EmbeddedBroker(port=port, log_path=rig.log_dir / "outage-broker-2.log")
        rig.broker.start()
        delivery_id, body, seconds = await accepted_again(client, within=30)
        accepted = [(delivery_id, body)]
        for _ in range(3):
            body, _ = partner_delivery()
            response, _ = await post(client, body)
            assert response.status_code == 200, response.text
            accepted.append((response.json()["id"], body))
        await wait_readyz(client, 200, within=10)
        return Restart(pid, refused, down_after, accepted, seconds, rig.broker.bootstrap_servers)


async def test_stopped_broker_503_then_restarted_broker_accepts_again(
    rig: Rig, restart: Restart
) -> None:
    assert [r.status_code for r in restart.refused] == [503, 503]
    assert all(int(r.headers["retry-after"]) > 0 for r in restart.refused)
    assert restart.readyz_down_after < 8
    assert restart.accepted_after < 20, f"accepted again only after {restart.accepted_after:.1f}s"
    assert rig.gateway.process is not None
    assert rig.gateway.process.poll() is None
    assert rig.gateway.process.pid == restart.pid  # recovered without a restart


async def test_deliveries_accepted_after_the_restart_are_on_the_raw_topic(
    restart: Restart,
) -> None:
    wanted = {delivery_id: body for delivery_id, body in restart.accepted}
    records = await read_topics(
        restart.bootstrap,
        RAW,
        until=lambda rs: wanted.keys() <= {r.key for r in rs},
        timeout=6,
        idle=0,
    )
    found = {r.key: r.value["body"] for r in records if r.key in wanted}
    assert found == wanted
