"""A stage's input, in batches, read straight from its agent's topic queue.

Why not ``Stream.take_events``: it moves every event through Faust's stream
machinery (a processor coroutine, sensors, a context variable, an ack
coroutine), and wakes every idle agent every ``within`` seconds; together
about a sixth of the worker's CPU. A stage only needs the events, in order,
and acks once its batch is durable. So a batch here is what the topic's queue
holds: waiting only for the first event, never on a timer. Under load the
queue fills while a batch is processed, so batches grow by themselves; when
quiet, an event is processed as soon as it arrives.

How much a batch takes ramps up: ``FIRST_BATCH`` events after a lull (the
stage waited ``LULL_S`` for an event), twice as many after each full batch,
up to ``max_events``. A burst's first events then cross every stage in small
batches (a first output within tens of milliseconds, where one 500-event
batch per stage took hundreds), and a sustained load is still read in full
batches.

Acks, the rule that keeps commits honest: an event is acked only when the
stage asks for the next batch, that is after its batch was processed and its
outputs and state acknowledged by Kafka. A batch that fails ends the worker
(:func:`streams.pipeline.fatal`): nothing of it is acked.

An event fetched in an earlier generation of the consumer group, or while the
flow is paused for a rebalance, is dropped *without* an ack: after the
rebalance Faust seeks every assigned partition back to its committed offset
and the event is fetched again, by whichever worker then owns its partition.
Faust's own stream acks such events as "skipped", and an ack of an event
nobody processed lets a commit move past it.

Each event taken is tracked as pending, as Faust's stream does, so a
rebalance waits for the batch in progress (``stream_wait_empty``) before it
hands the partition over.

What the queue holds: :class:`InputEvent`, which streams/transport.py puts
there itself for a stage's input (Faust's per-record handler, its event and
its acks through three layers each took a lock and several calls per record),
or Faust's own ``Event`` when Faust delivered the record. A batch is acked in
one pass under Faust's ack lock, with the consumer's own bookkeeping
(:func:`ack_all`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

from faust.types import EventT, StreamT
from faust.types.tuples import Message, ack_lock

#: Events in the first batch after a lull (then 2x per full batch).
FIRST_BATCH = 32
#: A stage that waited this long for its next event starts small again. Not
#: merely an empty queue: under load the queue runs dry between two polls of
#: the consumer, and starting over at 32 events each time made most batches
#: small (every batch pays two produce round trips and a membership check).
LULL_S = 0.05


class InputEvent:
    """A record for a stage: what the stages read of Faust's ``Event``, and no more.

    Faust's ``Event`` carries the app, copies the headers into a dict and
    acks through the message, its refcount and the consumer, each under the
    ack lock; a stage reads only ``key``, ``value`` and ``message`` (its
    partition, offset, generation), and :func:`ack_all` acks a whole batch.
    """

    __slots__ = ("key", "message", "value")

    def __init__(self, message: Message) -> None:
        self.message = message
        self.key = message.key
        self.value = message.value


def ack_all(consumer: Any, events: list[Any]) -> None:
    """Ack each event's message, as ``Event.ack`` would, in one critical section.

    ``Message.ack`` drops one reference and, at the last one, lets the
    consumer record the offset as processed (``Consumer.ack``, which a
    commit reads); both under Faust's ack lock, which is reentrant.
    """
    ack = consumer.ack
    with ack_lock:
        for event in events:
            message = event.message
            if not message.acked:
                refcount = message.refcount = max(message.refcount - 1, 0)
                if not refcount:
                    ack(message)


def drop_unacked(consumer: Any, events: list[Any]) -> None:
    """Take ``events`` out of their batch, in place: never acked, no longer tracked.

    The batch's list is what :func:`batches` acks when the next batch is
    asked for, so an event taken out is never acked and no commit moves past
    it; untracked, a rebalance does not wait for it. Its partition's next
    owner (or this worker, after the rebalance's seek) reads it again.
    """
    unacked = consumer.unacked
    for event in events:
        message = event.message
        message.tracked = False
        unacked.discard(message)
    events.clear()


async def batches(
    stream: StreamT, max_events: int, lull_s: float = LULL_S
) -> AsyncIterator[list[EventT]]:
    """Yield lists of events; each list is acked when the next one is asked for."""
    app = stream.app
    consumer = app.consumer
    # Iterating the agent's channel subscribes its topic (the Conductor), as
    # iterating the stream would; the iterator has the queue events land in.
    channel = aiter(stream.channel)
    queue = channel.queue  # type: ignore[attr-defined]
    unacked = consumer.unacked
    acking_topics = app.topics.acking_topics
    flow = app.flow_control
    size = min(FIRST_BATCH, max_events)
    clock = time.monotonic
    while True:
        events: list[EventT] = []
        waiting_since = clock()
        try:
            event = await queue.get()
        except StopAsyncIteration:  # Faust ends its streams so when the worker stops
            return
        if clock() - waiting_since >= lull_s:
            size = min(FIRST_BATCH, max_events)  # after a lull: small again
        lingered = False
        while True:
            message = event.message
            if flow.is_active() and message.generation_id == app.consumer_generation_id:
                if not message.tracked and message.topic in acking_topics:
                    message.tracked = True
                    unacked.add(message)
                events.append(event)
            if len(events) >= size:
                break
            if queue.empty():
                if lingered:
                    break
                # Once: let the consumer hand over the rest of a fetch.
                lingered = True
                await asyncio.sleep(0)
                if queue.empty():
                    break
            event = queue.get_nowait()
        if not events:
            continue
        if len(events) >= size:
            size = min(size * 2, max_events)
        yield events
        ack_all(consumer, events)
