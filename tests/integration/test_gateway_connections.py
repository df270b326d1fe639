"""The gateway's connections, bounded before the app sees a request (gateway/connections.py).

A real ``hookline gateway`` process against a real broker, with small
limits so the bounds show quickly: header bytes and count, a header timeout,
idle keep-alive connections, a connection cap; plus what every route owes
(404 and 405 close without reading the body), uvicorn's own log lines
rate-limited, an Upgrade header that keeps its body, and /metrics on a
listener of its own.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from hookline.infra.broker import free_port

from tests.conftest import TEST_SOURCES, hookline_env
from tests.support import processes
from tests.support.broker import TestBroker
from tests.support.signing import DEV, payload

PARTNER = DEV["PARTNER_SECRET"]
HEADER_BYTES = 8192
HEADER_TIMEOUT_S = 1.5
KEEP_ALIVE_S = 1.0
MAX_CONNECTIONS = 200


class Gateway:
    def __init__(self, process: processes.ServiceProcess, metrics_port: int) -> None:
        self.process = process
        self.url: str = process.url  # type: ignore[attr-defined]
        parsed = httpx.URL(self.url)
        self.host, self.port = parsed.host, parsed.port or 80
        self.metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"

    def metrics(self) -> str:
        return httpx.get(self.metrics_url, timeout=5).text

    def closed(self, reason: str) -> float:
        prefix = f'hookline_gateway_connections_closed_total{{reason="{reason}"}} '
        for line in self.metrics().splitlines():
            if line.startswith(prefix):
                return float(line[len(prefix) :])
        return 0.0


@pytest.fixture(scope="module")
def gateway(
    broker: TestBroker, log_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Gateway]:
    metrics_port = free_port()
    env = hookline_env(
        broker.bootstrap_servers,
        tmp_path_factory.mktemp("bounded-gateway"),
        HOOKLINE_SOURCES=str(TEST_SOURCES),
        HOOKLINE_MAX_HEADER_BYTES=str(HEADER_BYTES),
        HOOKLINE_MAX_HEADERS="50",
        HOOKLINE_HEADER_TIMEOUT=str(HEADER_TIMEOUT_S),
        HOOKLINE_KEEP_ALIVE_TIMEOUT=str(KEEP_ALIVE_S),
        HOOKLINE_MAX_CONNECTIONS=str(MAX_CONNECTIONS),
        HOOKLINE_GATEWAY_METRICS_PORT=str(metrics_port),
    )
    process = processes.gateway(env, log_dir).start()
    try:
        deadline = time.monotonic() + 30
        while httpx.get(f"{process.url}/readyz", timeout=3).status_code != 200:  # type: ignore[attr-defined]
            assert time.monotonic() < deadline, f"gateway never ready:\n{process.log()[-3000:]}"
            time.sleep(0.2)
        yield Gateway(process, metrics_port)
    finally:
        process.stop()


def partner_body() -> bytes:
    document = json.loads(payload("partner-order-status.json"))
    document["order_id"] = f"ord_{uuid.uuid4().hex}"
    return json.dumps(document).encode()


def request(path: str, *lines: str, method: str = "POST") -> bytes:
    return (
        "\r\n".join([f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", *lines]) + "\r\n\r\n"
    ).encode()


def delivery(*extra: str) -> bytes:
    body = partner_body()
    head = request(
        f"/webhooks/partner?token={PARTNER}",
        "Content-Type: application/json",
        f"Content-Length: {len(body)}",
        *extra,
    )
    return head + body


async def answer(
    reader: asyncio.StreamReader, within: float = 5
) -> tuple[int, dict[str, str], bytes]:
    async with asyncio.timeout(within):
        raw = await reader.readuntil(b"\r\n\r\n")
        lines = raw.decode("latin-1").split("\r\n")
        headers = {}
        for line in lines[1:]:
            if ":" in line:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
        body = await reader.readexactly(int(headers.get("content-length", "0")))
    return int(lines[0].split()[1]), headers, body


async def closed_within(reader: asyncio.StreamReader, seconds: float) -> bool:
    try:
        async with asyncio.timeout(seconds):
            while await reader.read(65536):
                pass
    except TimeoutError:
        return False
    except ConnectionError:
        pass
    return True


async def send_authentic(gateway: Gateway, *extra: str) -> int:
    reader, writer = await asyncio.open_connection(gateway.host, gateway.port)
    try:
        writer.write(delivery(*extra))
        await writer.drain()
        status, _, _ = await answer(reader)
        return status
    finally:
        writer.close()


# -- headers ----------------------------------------------------------------------------------


async def received(reader: asyncio.StreamReader) -> bytes:
    """Everything the server sends until it closes (read as it arrives: a reset loses nothing)."""
    data = b""
    try:
        while chunk := await reader.read(65536):
            data += chunk
    except ConnectionError:
        pass
    return data


async def test_a_huge_header_is_cut_at_the_limit_with_a_431(gateway: Gateway) -> None:
    reader, writer = await asyncio.open_connection(gateway.host, gateway.port)
    collector = asyncio.create_task(received(reader))
    sent = 0
    try:
        writer.write(b"POST /webhooks/partner HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: ")
        try:
            while sent < 64 * 1024 * 1024 and not collector.done():
                writer.write(b"a" * 16384)
                sent += 16384
                await writer.drain()
        except ConnectionError:
            pass
        async with asyncio.timeout(5):
            data = await collector
    finally:
        writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 431 ")
    assert b"connection: close" in head
    assert json.loads(body) == {"detail": "request headers too large"}
    # Cut long before the attacker was done: what it could send is the limit,
    # the gateway's linger and the two kernels' socket buffers.
    assert sent < 24 * 1024 * 1024
    assert await send_authentic(gateway) == 200


async def test_too_many_headers_are_a_431(gateway: Gateway) -> None:
    reader, writer = await asyncio.open_connection(gateway.host, gateway.port)
    try:
        writer.write(request("/webhooks/partner", *(f"X-H{i}: v" for i in range(60))))
        await writer.drain()
        status, _, body = await answer(reader)
    finally:
        writer.close()
    assert status == 431
    assert json.loads(body) == {"detail": "request headers too large"}


async def test_headers_that_trickle_are_timed_out_with_a_408(gateway: Gateway) -> None:
    reader, writer = await asyncio.open_connection(gateway.host, gateway.port)
    started = time.monotonic()
    try:
        writer.write(b"POST /webhooks/partner HTTP/1.1\r\n")
        status = 0
        for i in range(100):
            try:
                writer.write(f"X-Slow-{i}: a\r\n".encode())
                await writer.drain()
            except ConnectionError:
                break
            if reader.at_eof() or len(reader._buffer) > 0:  # type: ignore[attr-defined]  # noqa: SLF001 (answered yet?)
                break
            await asyncio.sleep(0.1)
        status, _headers, body = await answer(reader)
        took = time.monotonic() - started
        assert await closed_within(reader, 3)
    finally:
        writer.close()
    assert status == 408
    assert json.loads(body) == {"detail": "request headers not received in time"}
    assert HEADER_TIMEOUT_S - 0.2 <= took <= HEADER_TIMEOUT_S + 2


async def test_a_silent_connection_is_closed_after_the_header_timeout(gateway: Gateway) -> None:
    reader, writer = await asyncio.open_connection(gateway.host, gateway.port)
    started = time.monotonic()
    try:
        assert await closed_within(reader, HEADER_TIMEOUT_S + 3)
    finally:
        writer.close()
    assert time.monotonic() - started >= HEADER_TIMEOUT_S - 0.2


async def test_an_idle_keep_alive_connection_is_closed(gateway: Gateway) -> None:
    reader, writer = await asyncio.open_connection(gateway.host, gateway.port)
    try:
        writer.write(delivery())
        await writer.drain()
        status, headers, _ = await answer(reader)
        assert status == 200
        assert headers.get("connection") != "close"
        started = time.monotonic()
        assert await closed_within(reader, KEEP_ALIVE_S + 3)
        assert time.monotonic() - started >= KEEP_ALIVE_S - 0.2
    finally:
        writer.close()


async def test_past_the_connection_cap_the_oldest_idle_connection_makes_room(
    gateway: Gateway,
) -> None:
    """Twice the cap of silent connections: an authentic delivery still gets through."""
    before = gateway.closed("too_many_connections")
    idle = []
    try:
        for _ in range(2 * MAX_CONNECTIONS):
            idle.append(await asyncio.open_connection(gateway.host, gateway.port))
        statuses = [await send_authentic(gateway) for _ in range(5)]
        assert statuses == [200] * 5
        first_reader = idle[0][0]
        assert await closed_within(first_reader, 1)  # the oldest went first
    finally:
        for _, writer in idle:
            writer.close()
    assert gateway.closed("too_many_connections") - before >= MAX_CONNECTIONS


# -- every route ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("POST", "/nowhere", 404),
        ("POST", "/webhooks/no-such-source", 404),
        ("PUT", "/healthz", 405),
    ],
)
async def test_a_refused_route_closes_without_reading_the_body(
    gateway: Gateway, method: str, path: str, status: int
) -> None:
    reader, writer = await asyncio.open_connection(gateway.host, gateway.port)
    try:
        writer.write(request(path, f"Content-Length: {200 * 1024 * 1024}", method=method))
        writer.write(b"x" * 65536)
        await writer.drain()
        got, headers, _ = await answer(reader)
        assert got == status
        assert headers["connection"] == "close"
        assert await closed_within(reader, 2)
    finally:
        writer.close()


async def test_a_body_sent_to_a_get_route_is_not_read_and_the_connection_closes(
    gateway: Gateway,
) -> None:
    reader, writer = await asyncio.open_connection(gateway.host, gateway.port)
    try:
        writer.write(request("/healthz", "Content-Length: 1000000", method="GET") + b"x")
        await writer.drain()
        got, headers, _ = await answer(reader)
        assert got == 200
        assert headers["connection"] == "close"
        assert await closed_within(reader, 2)
    finally:
        writer.close()


async def test_an_authentic_post_with_an_upgrade_header_keeps_its_body(gateway: Gateway) -> None:
    reader, writer = await asyncio.open_connection(gateway.host, gateway.port)
    try:
        writer.write(delivery("Connection: Upgrade, HTTP2-Settings", "Upgrade: h2c"))
        await writer.drain()
        status, headers, body = await answer(reader)
    finally:
        writer.close()
    assert status == 200, body
    assert json.loads(body)["accepted"] is True
    assert headers["connection"] == "close"


async def test_malformed_and_upgrade_requests_do_not_flood_the_log(gateway: Gateway) -> None:
    await asyncio.sleep(12)  # let the log's buckets refill after the tests above
    lines_before = len(gateway.process.log().splitlines())
    for i in range(200):
        reader, writer = await asyncio.open_connection(gateway.host, gateway.port)
        if i % 2:
            writer.write(b"BROKEN \x00 REQUEST\r\n\r\n")
        else:
            writer.write(
                request("/healthz", "Connection: Upgrade", "Upgrade: websocket", method="GET")
            )
        await writer.drain()
        await closed_within(reader, 3)
        writer.close()
    await asyncio.sleep(0.3)
    added = gateway.process.log().splitlines()[lines_before:]
    assert 1 <= len(added) <= 45, "\n".join(added[:50])


# -- metrics ----------------------------------------------------------------------------------


async def test_metrics_are_served_on_their_own_listener_only(gateway: Gateway) -> None:
    public = httpx.get(f"{gateway.url}/metrics", timeout=5)  # noqa: ASYNC210
    assert public.status_code == 404
    assert public.json() == {"detail": "Not Found"}
    text = gateway.metrics()
    assert "hookline_gateway_deliveries_total" in text
    assert (
        httpx.get(gateway.metrics_url.replace("/metrics", "/healthz"), timeout=5).status_code  # noqa: ASYNC210
        == 404
    )
