"""gateway/throttled_log.py at INFO: the worker logs its rejected facts through it."""

from __future__ import annotations

import logging

import pytest
from hookline.gateway.throttled_log import ThrottledLog


def test_info_lines_are_rate_limited_at_info_and_the_rest_counted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = [0.0]
    logger = logging.getLogger("test.throttled.info")
    throttled = ThrottledLog(logger, per_second=1.0, burst=2, clock=lambda: now[0])
    with caplog.at_level(logging.INFO, logger="test.throttled.info"):
        for i in range(50):
            throttled.info("rejected fact %d", i, order_id=f"o{i}")
        now[0] += 1.0
        throttled.info("rejected fact again")
    assert [r.levelno for r in caplog.records] == [logging.INFO] * 4
    assert [r.getMessage() for r in caplog.records] == [
        "rejected fact 0",
        "rejected fact 1",
        "48 similar lines not logged (rate limit; the metrics count every one)",
        "rejected fact again",
    ]
    assert caplog.records[0].order_id == "o0"  # structured fields go with the line
