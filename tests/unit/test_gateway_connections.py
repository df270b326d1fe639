"""gateway/connections.py without a network (limits, cap, waiting order); log throttling."""

from __future__ import annotations

import asyncio
import logging
import resource
from typing import Any

import pytest
from hookline.gateway.connections import (
    DESCRIPTOR_RESERVE,
    ConnectionLimits,
    Connections,
    SettingError,
    connection_cap,
)
from hookline.gateway.throttled_log import ThrottleFilter


def test_limits_default_and_read_from_the_environment() -> None:
    assert ConnectionLimits.from_env({}) == ConnectionLimits()
    limits = ConnectionLimits.from_env(
        {
            "HOOKLINE_MAX_HEADER_BYTES": "8192",
            "HOOKLINE_MAX_HEADERS": "50",
            "HOOKLINE_HEADER_TIMEOUT": "2.5",
            "HOOKLINE_KEEP_ALIVE_TIMEOUT": "1",
            "HOOKLINE_MAX_CONNECTIONS": "300",
        }
    )
    assert limits == ConnectionLimits(8192, 50, 2.5, 1.0, 300)


@pytest.mark.parametrize("value", ["abc", "0", "-1", "1.5"])
def test_a_bad_limit_names_its_variable(value: str) -> None:
    with pytest.raises(SettingError, match="HOOKLINE_MAX_CONNECTIONS"):
        ConnectionLimits.from_env({"HOOKLINE_MAX_CONNECTIONS": value})


def test_the_cap_leaves_descriptors_free() -> None:
    soft = connection_cap(10**9)  # raises the soft limit to the hard one first
    limit, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert soft == limit - DESCRIPTOR_RESERVE
    assert connection_cap(100) == 100


class FakeProtocol:
    """What Connections uses of a protocol: a loop, eviction and the head timeout."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.evicted: str | None = None
        self.timed_out = False

    def evict(self, reason: str) -> None:
        self.evicted = reason

    def head_timed_out(self) -> None:
        self.timed_out = True


async def test_past_the_cap_the_longest_waiting_connection_is_evicted() -> None:
    loop = asyncio.get_running_loop()
    guard = Connections(ConnectionLimits(header_timeout_s=3600), cap=3)
    first, second, third, fourth = (FakeProtocol(loop) for _ in range(4))
    registered: list[Any] = [first, second, third]
    for protocol in registered:
        assert guard.opened(protocol)
        guard.wait_for_head(protocol)
    guard.head_arrived(first)  # busy with a request: not a candidate
    assert guard.opened(fourth)
    assert second.evicted == "too_many_connections"
    assert first.evicted is None
    assert third.evicted is None
    assert len(guard.open) == 3


async def test_when_no_connection_is_idle_the_new_one_is_refused() -> None:
    loop = asyncio.get_running_loop()
    guard = Connections(ConnectionLimits(header_timeout_s=3600), cap=1)
    busy, late = FakeProtocol(loop), FakeProtocol(loop)
    assert guard.opened(busy)  # type: ignore[arg-type]
    assert not guard.opened(late)  # type: ignore[arg-type]
    assert busy.evicted is None
    assert guard.open == {busy}


def test_uvicorn_warnings_are_rate_limited_and_counted(caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]
    logger = logging.getLogger("test.uvicorn.error")
    throttle = ThrottleFilter(per_second=1.0, burst=3, clock=lambda: now[0])
    logger.addFilter(throttle)
    try:
        with caplog.at_level(logging.INFO, logger="test.uvicorn.error"):
            logger.info("Started server process")
            for _ in range(500):
                logger.warning("Invalid HTTP request received.")
            now[0] += 1.0
            logger.warning("Unsupported upgrade request.")
            logger.info("Shutting down")
    finally:
        logger.removeFilter(throttle)
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0] == "Started server process"
    assert lines[1:4] == ["Invalid HTTP request received."] * 3
    assert lines[4].startswith("(497 similar lines not logged")
    assert lines[4].endswith("Unsupported upgrade request.")
    assert lines[5] == "Shutting down"
    assert len(lines) == 6


# -- the protocol, fed bytes by hand -----------------------------------------------------------


class FakeTransport(asyncio.Transport):
    """Records what the protocol writes and whether it closed the connection."""

    def __init__(self) -> None:
        super().__init__()
        self.written = b""
        self.closing = False
        self.eof = False
        self.paused = False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("203.0.113.9", 40000), "sockname": ("127.0.0.1", 8000)}.get(
            name, default
        )

    def write(self, data: Any) -> None:
        self.written += bytes(data)

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True

    def abort(self) -> None:
        self.closing = True

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        self.eof = True

    def pause_reading(self) -> None:
        self.paused = True

    def resume_reading(self) -> None:
        self.paused = False


class Recorder:
    """An ASGI app that keeps each request's scope and whole body, and answers 204."""

    def __init__(self) -> None:
        self.requests: list[tuple[dict[str, Any], bytes]] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        self.requests.append((scope, body))
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})


async def connected(
    limits: ConnectionLimits,
) -> tuple[Any, FakeTransport, Recorder]:
    from hookline.gateway.connections import guarded_protocol
    from uvicorn.config import Config
    from uvicorn.server import ServerState

    app = Recorder()
    protocol_class = guarded_protocol(limits, cap=10)
    config = Config(app, http=protocol_class, lifespan="off", log_config=None)
    protocol = protocol_class(
        config=config, server_state=ServerState(), app_state={}, _loop=asyncio.get_running_loop()
    )
    transport = FakeTransport()
    protocol.connection_made(transport)
    return protocol, transport, app


async def test_header_bytes_past_the_limit_never_reach_the_parser() -> None:
    protocol, transport, app = await connected(ConnectionLimits(max_header_bytes=1024))
    head = b"POST /webhooks/partner HTTP/1.1\r\nHost: a\r\nX-Big: "
    fed: list[int] = []
    feed = protocol.parser.feed_data
    protocol.parser = type(  # count what the parser is given
        "Counting", (), {"feed_data": lambda self, data: (fed.append(len(data)), feed(data))[1]}
    )()
    protocol.data_received(head + b"a" * 10_000)
    assert transport.written.startswith(b"HTTP/1.1 431 ")
    assert transport.written.endswith(b'{"detail":"request headers too large"}')
    assert transport.eof  # answered, then our side ended
    assert sum(fed) == 1024
    protocol.data_received(b"a" * 100_000)  # lingering: dropped, never parsed
    assert sum(fed) == 1024
    assert transport.paused  # past the linger's bytes: no more reading
    assert not app.requests


async def test_a_head_split_across_reads_at_the_limit_is_served() -> None:
    protocol, transport, app = await connected(ConnectionLimits(max_header_bytes=64))
    request = b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\n"  # 48 bytes
    assert len(request) <= 64
    protocol.data_received(request[:20])
    protocol.data_received(request[20:] + b"{}" + b"GET /y HTTP/1.1\r\nHost: a\r\n\r\n")
    for _ in range(10):
        await asyncio.sleep(0)
    assert transport.written.startswith(b"HTTP/1.1 204 ")
    assert transport.written.count(b"HTTP/1.1 204 ") == 2
    assert [(scope["path"], body) for scope, body in app.requests] == [("/x", b"{}"), ("/y", b"")]


async def test_too_many_headers_are_refused() -> None:
    protocol, transport, app = await connected(ConnectionLimits(max_headers=3))
    lines = b"".join(b"X-%d: v\r\n" % i for i in range(4))
    protocol.data_received(b"GET / HTTP/1.1\r\n" + lines + b"\r\n")
    assert transport.written.startswith(b"HTTP/1.1 431 ")
    assert not app.requests


async def test_a_request_with_an_upgrade_header_keeps_its_body() -> None:
    protocol, transport, app = await connected(ConnectionLimits())
    body = b'{"order_id": "ord_1"}'
    protocol.data_received(
        b"POST /webhooks/partner HTTP/1.1\r\nHost: a\r\nConnection: Upgrade, HTTP2-Settings\r\n"
        b"Upgrade: h2c\r\nContent-Length: %d\r\n\r\n" % len(body) + body[:5]
    )
    protocol.data_received(body[5:])
    for _ in range(10):
        await asyncio.sleep(0)
    assert app.requests[0][1] == body
    assert transport.written.startswith(b"HTTP/1.1 204 ")
    assert b"connection: close" in transport.written  # the parser cannot read another request
    assert transport.closing


async def test_an_unparseable_request_is_a_json_400() -> None:
    protocol, transport, _ = await connected(ConnectionLimits())
    protocol.data_received(b"BROKEN \x00 REQUEST\r\n\r\n")
    assert transport.written.startswith(b"HTTP/1.1 400 ")
    assert transport.written.endswith(b'{"detail":"invalid HTTP request"}')
