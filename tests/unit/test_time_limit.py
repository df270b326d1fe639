"""gateway/time_limit.py: one timer for many requests, with asyncio.timeout's semantics."""

from __future__ import annotations

import asyncio
import time

import pytest
import uvloop
from hookline.gateway.time_limit import UNLIMITED, TimeLimit


async def test_an_overdue_block_ends_in_timeout_error() -> None:
    limit = TimeLimit(0.05)
    started = time.monotonic()
    with pytest.raises(TimeoutError), limit.use():
        await asyncio.sleep(10)
    assert 0.04 <= time.monotonic() - started < 1.0
    assert limit.in_progress == 0
    assert asyncio.current_task().cancelling() == 0  # type: ignore[union-attr]


async def test_a_block_that_finishes_in_time_is_left_alone() -> None:
    limit = TimeLimit(0.2)
    with limit.use():
        await asyncio.sleep(0.01)
    assert limit.in_progress == 0
    await asyncio.sleep(0.3)  # the timer armed for that use fires into nothing
    with limit.use():
        await asyncio.sleep(0)


async def test_each_of_many_uses_expires_on_its_own_time() -> None:
    limit = TimeLimit(0.1)
    outcomes: dict[int, str] = {}

    async def one(index: int, work_s: float) -> None:
        try:
            with limit.use():
                await asyncio.sleep(work_s)
            outcomes[index] = "done"
        except TimeoutError:
            outcomes[index] = "timeout"

    async def staggered(index: int) -> None:
        await asyncio.sleep(index * 0.01)
        # Odd ones are slow: each must time out 0.1 s after its own start.
        await one(index, 0.3 if index % 2 else 0.01)

    started = time.monotonic()
    await asyncio.gather(*(staggered(i) for i in range(20)))
    assert outcomes == {i: "timeout" if i % 2 else "done" for i in range(20)}
    assert time.monotonic() - started < 0.6
    assert limit.in_progress == 0


async def test_someone_elses_cancellation_passes_through() -> None:
    limit = TimeLimit(10)

    async def guarded() -> None:
        with limit.use():
            await asyncio.sleep(10)

    task = asyncio.create_task(guarded())
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert limit.in_progress == 0


async def test_a_cancellation_during_expiry_is_not_swallowed() -> None:
    limit = TimeLimit(10)

    async def guarded() -> None:
        with limit.use():
            await asyncio.sleep(10)

    task = asyncio.create_task(guarded())
    await asyncio.sleep(0)  # the task is inside the block
    loop = asyncio.get_running_loop()
    limit._expire(loop, loop.time() + 20)  # what the timer does once the use is overdue  # noqa: SLF001
    task.cancel()  # its owner cancels it too, before it runs again
    with pytest.raises(asyncio.CancelledError):
        await task
    assert limit.in_progress == 0


async def test_no_limit() -> None:
    with TimeLimit(None).use():
        await asyncio.sleep(0.01)
    with UNLIMITED.use():
        await asyncio.sleep(0)
    assert UNLIMITED.in_progress == 0


def test_on_uvloop_as_the_gateway_runs() -> None:
    """uvloop's timers count whole milliseconds: a limit must still fire, once, on time."""

    async def scenario() -> list[str]:
        limit = TimeLimit(0.03)
        outcomes = []
        for work_s in (0.001, 0.2, 0.0, 0.2):
            started = time.monotonic()
            try:
                with limit.use():
                    await asyncio.sleep(work_s)
                outcomes.append("done")
            except TimeoutError:
                assert 0.025 <= time.monotonic() - started < 0.5
                outcomes.append("timeout")
        assert limit.in_progress == 0
        return outcomes

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        assert runner.run(scenario()) == ["done", "timeout", "done", "timeout"]
