"""streams/take.py: which events a stage gets, and when they are acked.

The rules are checked against small stand-ins for the few Faust objects the
function touches (an app's flow control, generation and pending set; a
channel's queue; events with messages; the consumer's ``ack``): Kafka plays
no part in them.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import pytest
from hookline.streams.take import FIRST_BATCH, batches

TOPIC = "production.webhooks.raw"


@dataclass(eq=False)
class Message:
    offset: int
    generation_id: int
    topic: str = TOPIC
    tracked: bool = False
    acked: bool = False
    refcount: int = 1  # the channel's reference, taken when it was queued


@dataclass(eq=False)
class Event:
    message: Message


@dataclass
class Consumer:
    """Faust's ``Consumer.ack``: marks the message and records its offset (once)."""

    acked: list[int]
    unacked: set[Message] = field(default_factory=set)

    def ack(self, message: Message) -> bool:
        assert message.refcount == 0, "acked while a channel still holds it"
        message.acked = True
        self.acked.append(message.offset)
        return True


@dataclass
class Flow:
    active: bool = True

    def is_active(self) -> bool:
        return self.active


@dataclass
class Channel:
    queue: asyncio.Queue[Event] = field(default_factory=asyncio.Queue)

    def __aiter__(self) -> Channel:
        return self

    async def __anext__(self) -> Event:  # never called: batches() reads the queue
        raise AssertionError("read through the queue")


@dataclass
class Stage:
    """A stream as batches() sees it: ``stream.app`` and ``stream.channel``."""

    channel: Channel = field(default_factory=Channel)
    acked: list[int] = field(default_factory=list)
    generation: int = 3

    def __post_init__(self) -> None:
        consumer = Consumer(self.acked)
        topics = type("Topics", (), {"acking_topics": {TOPIC}})()
        self.app: Any = type("App", (), {})()
        self.app.consumer, self.app.topics = consumer, topics
        self.app.flow_control = Flow()
        self.app.consumer_generation_id = self.generation

    def put(self, *offsets: int, generation: int | None = None) -> None:
        for offset in offsets:
            message = Message(offset, self.generation if generation is None else generation)
            self.channel.queue.put_nowait(Event(message))


def offsets(events: list[Any]) -> list[int]:
    return [event.message.offset for event in events]


async def test_a_batch_is_what_is_queued_up_to_the_maximum_in_order() -> None:
    stage = Stage()
    stage.put(*range(7))
    taken = batches(stage, max_events=5)  # type: ignore[arg-type]
    assert offsets(await anext(taken)) == [0, 1, 2, 3, 4]
    assert offsets(await anext(taken)) == [5, 6]


async def test_events_are_acked_only_when_the_next_batch_is_asked_for() -> None:
    stage = Stage()
    stage.put(0, 1)
    taken = batches(stage, max_events=10)  # type: ignore[arg-type]
    first = await anext(taken)
    assert stage.acked == []  # being processed: not acked
    assert all(event.message.tracked for event in first)  # a rebalance waits for them
    assert {e.message for e in first} <= stage.app.consumer.unacked
    stage.put(2)
    assert offsets(await anext(taken)) == [2]
    assert stage.acked == [0, 1]


async def test_a_batch_that_failed_is_never_acked() -> None:
    stage = Stage()
    stage.put(0, 1)

    async def process() -> None:
        async for _ in batches(stage, max_events=10):  # type: ignore[arg-type]
            raise RuntimeError("send failed")

    with pytest.raises(RuntimeError):
        await process()
    assert stage.acked == []


async def acked_with(stage: Stage, message: Message) -> list[int]:
    """Offsets the consumer recorded once a batch of ``message`` and offset 1 was processed."""
    stage.channel.queue.put_nowait(Event(message))
    stage.put(1)
    taken = batches(stage, max_events=10)  # type: ignore[arg-type]
    await anext(taken)
    stage.put(2)
    await anext(taken)  # asking for the next batch acks the first
    return stage.acked


async def test_a_message_two_channels_hold_is_acked_when_both_acked_it() -> None:
    stage = Stage()
    message = Message(0, stage.generation, refcount=2)  # queued for two channels
    assert await acked_with(stage, message) == [1]  # offset 0 still held by the other channel
    assert message.refcount == 1
    assert not message.acked


async def test_an_acked_message_is_not_acked_again() -> None:
    stage = Stage()
    assert await acked_with(stage, Message(0, stage.generation, acked=True)) == [1]


async def test_events_of_an_earlier_generation_are_dropped_unacked() -> None:
    stage = Stage()
    stage.put(0, 1, generation=2)  # fetched before the last rebalance
    stage.put(2, 3)
    taken = batches(stage, max_events=10)  # type: ignore[arg-type]
    assert offsets(await anext(taken)) == [2, 3]
    stage.put(4)
    await anext(taken)
    assert stage.acked == [2, 3]  # never 0 or 1: a commit must not pass them
    assert all(message.offset >= 2 for message in stage.app.consumer.unacked)  # nor pending


async def test_events_taken_while_the_flow_is_paused_are_dropped_unacked() -> None:
    stage = Stage()
    stage.put(0, 1)
    stage.app.flow_control.active = False  # a rebalance in progress
    taken = batches(stage, max_events=10)  # type: ignore[arg-type]
    waiting = asyncio.ensure_future(anext(taken))
    await asyncio.sleep(0.01)
    assert not waiting.done()  # nothing to process: still waiting
    stage.app.flow_control.active = True
    stage.put(5)
    assert offsets(await asyncio.wait_for(waiting, 1)) == [5]
    assert stage.acked == []


async def test_an_idle_stage_waits_for_its_first_event_without_a_timer() -> None:
    stage = Stage()
    taken = batches(stage, max_events=10)  # type: ignore[arg-type]
    waiting = asyncio.ensure_future(anext(taken))
    await asyncio.sleep(0.05)
    assert not waiting.done()
    stage.put(9)
    assert offsets(await asyncio.wait_for(waiting, 1)) == [9]


async def test_batches_ramp_up_under_load_and_start_small_again_after_a_lull() -> None:
    stage = Stage()
    stage.put(*range(200))
    taken = batches(stage, max_events=100, lull_s=0.05)  # type: ignore[arg-type]
    sizes = [len(await anext(taken)) for _ in range(4)]
    assert sizes == [FIRST_BATCH, 2 * FIRST_BATCH, 100, 200 - 100 - 3 * FIRST_BATCH]
    stage.put(*range(200, 400))  # the queue ran dry but the next poll came at once: still large
    assert len(await anext(taken)) == 100
    waiting = asyncio.ensure_future(anext(taken))
    await asyncio.sleep(0)
    assert len(await asyncio.wait_for(waiting, 1)) == 100
    waiting = asyncio.ensure_future(anext(taken))
    await asyncio.sleep(0.06)  # a lull: nothing came for longer than lull_s
    stage.put(*range(400, 600))
    assert len(await asyncio.wait_for(waiting, 1)) == FIRST_BATCH


async def test_the_batches_end_when_faust_ends_the_stream() -> None:
    """Faust stops a worker by throwing StopAsyncIteration into each channel's queue."""
    stage = Stage()
    taken = batches(stage, max_events=10)  # type: ignore[arg-type]
    waiting = asyncio.ensure_future(anext(taken))
    await asyncio.sleep(0)
    getter = stage.channel.queue._getters[0]  # type: ignore[attr-defined]  # noqa: SLF001 (the waiting get)
    getter.set_exception(StopAsyncIteration())
    with pytest.raises(StopAsyncIteration):  # the generator ended, not a RuntimeError
        await asyncio.wait_for(waiting, 1)
