"""gateway/body.py's BodyBudget: shares per source and per client, eviction of stalled bodies.

The budget's clock is injected, so "stalled" is a clock value here, not a wait.
"""

from __future__ import annotations

import asyncio

import pytest
from hookline.gateway.body import BodyBudget, Busy, Evicted, read_body
from starlette.types import Message


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Stalling:
    """A receive channel that serves ``first`` (more to come), then waits for ever."""

    def __init__(self, first: bytes) -> None:
        self.first = first
        self.served = asyncio.Event()

    async def __call__(self) -> Message:
        if not self.served.is_set():
            self.served.set()
            return {"type": "http.request", "body": self.first, "more_body": True}
        await asyncio.Event().wait()
        raise AssertionError("unreachable")


def whole(body: bytes) -> Stalling:
    """A channel whose first message is the whole body."""
    channel = Stalling(body)

    async def receive() -> Message:
        channel.served.set()
        return {"type": "http.request", "body": body, "more_body": False}

    return receive  # type: ignore[return-value]


async def stall(
    budget: BodyBudget, size: int, source: str = "s", client: str = "c"
) -> asyncio.Task:
    """A request holding ``size`` bytes of its body, waiting for the rest."""
    channel = Stalling(b"x" * size)

    async def run() -> bytes:
        with budget.hold(source, client) as hold:
            return await read_body(channel, 10**9, hold=hold)

    task = asyncio.create_task(run())
    await channel.served.wait()
    await asyncio.sleep(0)  # let it charge the chunk
    return task


async def take_whole(budget: BodyBudget, size: int, source: str = "s", client: str = "c") -> bytes:
    with budget.hold(source, client) as hold:
        return await read_body(whole(b"y" * size), 10**9, hold=hold)  # type: ignore[arg-type]


async def test_a_stalled_body_is_evicted_to_make_room_for_a_new_one() -> None:
    clock = Clock()
    budget = BodyBudget(100, stall_s=1.0, clock=clock)
    stalled = await stall(budget, 90)
    assert budget.used == 90
    clock.now = 1.5
    assert await take_whole(budget, 50) == b"y" * 50
    with pytest.raises(Evicted):
        await stalled
    assert budget.used == 0
    assert budget.evicted == 1


async def test_a_body_still_arriving_is_not_evicted_and_the_new_one_is_refused() -> None:
    clock = Clock()
    budget = BodyBudget(100, stall_s=1.0, clock=clock)
    recent = await stall(budget, 90)
    clock.now = 0.5  # its last bytes are half a second old: not stalled
    with pytest.raises(Busy):
        await take_whole(budget, 50)
    assert not recent.done()
    assert budget.used == 90
    recent.cancel()
    with pytest.raises(asyncio.CancelledError):
        await recent
    assert budget.used == 0


async def test_a_whole_body_may_use_the_reserve_but_never_beyond_it() -> None:
    clock = Clock()
    budget = BodyBudget(100, reserve=20, clock=clock)
    held = await stall(budget, 90)
    assert await take_whole(budget, 30) == b"y" * 30  # 90 + 30 <= 100 + 20
    with pytest.raises(Busy):
        await take_whole(budget, 31)
    held.cancel()
    await asyncio.gather(held, return_exceptions=True)
    assert budget.used == 0


async def test_one_source_cannot_take_another_sources_room() -> None:
    clock = Clock()
    budget = BodyBudget(100, per_source=50, clock=clock)
    flood = [await stall(budget, 25, source="attacked") for _ in range(2)]
    refused = await stall(budget, 10, source="attacked")  # its share is spent, nothing stalled
    with pytest.raises(Busy):
        await refused
    other = await stall(budget, 40, source="other")
    assert not other.done()
    assert budget.used == 90
    for task in [*flood, other]:
        task.cancel()
    await asyncio.gather(*flood, other, return_exceptions=True)
    assert budget.used == 0


async def test_one_client_address_is_bounded_and_evicts_its_own_stalled_bodies_first() -> None:
    clock = Clock()
    budget = BodyBudget(1000, per_client=100, clock=clock)
    other = await stall(budget, 60, client="203.0.113.9")
    clock.now = 0.5
    own = await stall(budget, 90, client="198.51.100.7")
    clock.now = 2.0  # both stalled now; the other client's is the older
    assert await take_whole(budget, 50, client="198.51.100.7") == b"y" * 50
    with pytest.raises(Evicted):
        await own
    assert not other.done()  # the full pool was 198.51.100.7's: only its bodies were candidates
    other.cancel()
    await asyncio.gather(other, return_exceptions=True)
    assert budget.used == 0


async def test_the_longest_stalled_body_goes_first() -> None:
    clock = Clock()
    budget = BodyBudget(100, clock=clock)
    oldest = await stall(budget, 40)
    clock.now = 1.0
    newer = await stall(budget, 40)
    clock.now = 5.0
    await take_whole(budget, 30)
    with pytest.raises(Evicted):
        await oldest
    assert not newer.done()
    newer.cancel()
    await asyncio.gather(newer, return_exceptions=True)


async def test_a_complete_body_is_no_longer_evictable() -> None:
    clock = Clock()
    budget = BodyBudget(100, clock=clock)
    with budget.hold("s", "c") as hold:
        await read_body(whole(b"z" * 90), 1000, hold=hold)  # type: ignore[arg-type]
        clock.now = 10.0  # verified slowly: still held, but not a candidate
        with pytest.raises(Busy):
            await take_whole(budget, 20)
        assert budget.used == 90
    assert budget.used == 0
