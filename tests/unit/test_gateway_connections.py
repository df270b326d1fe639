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
