"""Faust's Kafka transport: a short fetch wait, and end offsets a recovery can trust.

faust-streaming hardcodes ``fetch_max_wait_ms=1500`` for its consumer: a fetch
for partitions without data waits that long on the broker. Kafka answers it
as soon as data arrives; the embedded broker (Tansu) only when the wait ends.
And a worker's fetch covers only the partitions it has nothing buffered for:
during a burst, its fetch for the internal topics (``order-inputs`` while
``raw`` is still buffered) waited out the whole wait at every hop. 20 ms
bounds that to a few tens of milliseconds per hop (a burst's first order
state 150 ms after its first webhook, where 100 ms gave 230-350), at the
price of ~45 empty fetches a second on an idle worker: measured on
2026-11-30, an idle worker used 10 % of a core (decoding fetch responses
for every assigned partition, in pure Python) and the embedded broker 26 %.
On Kafka a longer wait costs no latency (a fetch is answered as soon as a
record arrives), so ``HOOKLINE_FETCH_MAX_WAIT_MS`` sets it (the compose
stack: 500 ms, ~2 fetches a second when idle).

Under a burst, ``raw`` always holds fetched records not yet consumed, and
aiokafka's fetcher holds back every fetch to a broker while one of its
partitions holds records younger than ``prefetch_backoff`` (100 ms): the
records of every later hop waited up to that long at each hop, on a
single-broker cluster every time (a burst's first order state 250-700 ms
after its first webhook). 10 ms (:data:`PREFETCH_BACKOFF_S`) brings that to
50-90 ms; partitions still holding records are left out of the fetch
either way.

Table recovery reads each changelog up to its end offset; those are taken
from a fetch's high watermark as well as from ListOffsets (see
streams/end_offsets.py for why).

Faust hands each fetched record to the streams in a race against a paused
flow (a rebalance): ``wait_first(deliver(record), suspend_flow.wait())``, four
tasks created and three cancelled per record, about a tenth of the worker's
CPU. :meth:`Consumer._drain_messages` runs the same race once per fetch: the
records of a fetch are delivered in order by one task, which a paused flow
cancels as it cancelled the delivery of one record (the undelivered records
are fetched again: after a rebalance Faust seeks to the committed offsets).

A stage's input record then skips Faust's per-record handler (the
Conductor's ``on_message``: a lock, flow control and producer-buffer awaits,
a deserializer call and an ``Event`` per record, ~10 % of the CPU): when one
channel alone reads the partition and it reads raw bytes, the record goes
straight into that channel's queue as a :class:`streams.take.InputEvent`,
with the same queue-pressure callbacks. Anything else takes Faust's path.
A poll's records become Faust messages in one pass per partition
(:meth:`Consumer._poll`), not through Faust's per-record async generator.

Registered under the ``faust.transports`` entry point as ``hookline``;
streams/app.py selects it with a ``hookline://`` consumer URL.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable, Mapping
from functools import partial
from typing import Any

from aiokafka.errors import KafkaError
from faust import Topic
from faust.transport.consumer import CONSUMER_FETCHING
from faust.transport.drivers import aiokafka as driver
from faust.types import TP
from faust.types.tuples import ConsumerMessage
from hookline.core.settings import DEFAULT_FETCH_MAX_WAIT_MS
from hookline.streams import internals
from hookline.streams.client_settings import worker_client_settings
from hookline.streams.end_offsets import fetched_end_offsets
from hookline.streams.exactly_once import PartitionProducers, committed_end_offsets
from hookline.streams.positions import Positions, Verdict
from hookline.streams.take import InputEvent
from mode import ServiceT
from mode.utils.queues import FlowControlEvent

#: A partition's queue and the put that signals its pressure (see Consumer._route).
Route = tuple[Any, Callable[[Any], bool]]

#: aiokafka sends no fetch to a broker while any of its partitions holds
#: records fetched less than this long ago and not yet consumed (its default:
#: 100 ms).
PREFETCH_BACKOFF_S = 0.01
#: Records delivered between two yields to the event loop (Faust's own figure).
YIELD_EVERY = 100


def _transactions(app: Any) -> PartitionProducers | None:
    """The worker's transactional producers (streams/app.py), in exactly-once mode."""
    return getattr(app, "hookline_transactions", None)


def exactly_once(app: Any) -> bool:
    return _transactions(app) is not None


def fetch_max_wait_ms(app: Any) -> int:
    """The app's fetch wait (streams/app.py sets it from the settings), else the default."""
    return int(getattr(app, "hookline_fetch_max_wait_ms", DEFAULT_FETCH_MAX_WAIT_MS))


class ConsumerThread(driver.AIOKafkaConsumerThread):
    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        # Read when the consumer starts its fetcher; not otherwise exposed.
        internals.set_fetch_max_wait(consumer, fetch_max_wait_ms(self.app))
        # Only what committed transactions wrote, in both modes (the worker's own
        # exactly-once writes, a transactional upstream writer of raw); Faust
        # sets it only for its own exactly-once mode.
        internals.set_isolation_level(consumer, "read_committed")
        return consumer

    async def on_start(self) -> None:
        await super().on_start()
        # Created by start(); not a consumer setting.
        internals.set_prefetch_backoff(self._ensure_consumer(), PREFETCH_BACKOFF_S)

    def fetch_positions(self, partitions: list[TP]) -> dict[TP, int]:
        """The next offset the client will fetch, per assigned partition that has one.

        Runs in the consumer thread; reads aiokafka's subscription state
        without waiting (``position()`` would wait for a position to be set).
        """
        return internals.fetch_positions(self._ensure_consumer(), partitions)

    async def _highwaters(self, partitions: list[TP]) -> Mapping[TP, int]:
        """End offsets a table recovery can reach (streams/end_offsets.py, streams/exactly_once.py).

        After each changelog partition's last committed record, not the
        transaction marker behind it, in either mode: a changelog written by
        an exactly-once worker ends in a marker, even after a switch to at
        least once. At least once, the end is first raised to a fetch's high
        watermark (Tansu's ListOffsets answer).
        """
        reported = await super()._highwaters(partitions)
        settings = worker_client_settings(self.app, "end-offsets")
        # The high watermark (read_committed, ListOffsets answers the last
        # stable offset, which an open transaction holds back).
        ends = await fetched_end_offsets(settings, reported)
        return await committed_end_offsets(settings, ends)


def read_cleared_records_again(
    flow: FlowControlEvent,
    positions: Positions[TP],
    is_input: Callable[[str], bool],
    rewound: Callable[[TP, int], None],
) -> None:
    """Have the input records that Faust's flow control drops from its queues read again.

    ``FlowControlEvent.resume()`` clears every queue it manages (the stages'
    among them), and table recovery resumes the flow once more after seeking
    the assigned partitions: records delivered in between were dropped
    unprocessed, never acknowledged, and the partition's commit stopped
    before the first of them for good. So the queues are read just before
    they are cleared, and each input partition is expected again from its
    earliest dropped offset (:meth:`Positions.rewind`); ``rewound`` is told
    of each partition rewound.
    """
    clear = flow.clear

    def clear_and_rewind() -> None:
        dropped = [
            (message.tp, message.offset)
            for item in internals.flow_control_queued(flow)
            if (message := getattr(item, "message", None)) is not None and is_input(message.topic)
        ]
        clear()
        for tp, offset in positions.rewind(dropped).items():
            rewound(tp, offset)

    flow.clear = clear_and_rewind  # type: ignore[method-assign]  # resume() calls self.clear()


#: How often the consumer checks for records fetched but never delivered.
OVERTAKEN_CHECK_S = 1.0


class Consumer(driver.Consumer):
    #: The next offset to deliver per input partition (streams/positions.py).
    positions: Positions[TP]

    def __post_init__(self) -> None:
        super().__post_init__()
        self.positions = Positions()
        self._changelogs: frozenset[str] = frozenset()
        #: Per input partition, the queue its records go to directly (None:
        #: through Faust's handler), for one group generation.
        self._routes: dict[TP, Route | None] = {}
        self._routes_generation: int | None = None
        #: Seeks of input partitions: a count, and per partition the count at
        #: its last seek (see :meth:`_poll`).
        self._seeks = 0
        self._sought_at: dict[TP, int] = {}
        #: Held partitions whose records were dropped (see :meth:`perform_seek`).
        self._dropped_while_held: set[TP] = set()
        self._read_cleared_records_again()

    def _read_cleared_records_again(self) -> None:
        def rewound(tp: TP, offset: int) -> None:
            self.log.info(
                "%s[%s]: queued records from offset %s dropped by flow control; reading them again",
                tp.topic,
                tp.partition,
                offset,
            )

        read_cleared_records_again(self.app.flow_control, self.positions, self._is_input, rewound)

    def _new_consumer_thread(self) -> ConsumerThread:
        return ConsumerThread(self, loop=self.loop, beacon=self.beacon)

    async def on_partitions_revoked(self, revoked: set[TP]) -> None:
        self.positions.forget(revoked)
        await super().on_partitions_revoked(revoked)
        transactions = _transactions(self.app)
        if transactions is not None:  # the stages are done with them (Faust waited)
            await transactions.revoked(revoked)

    async def on_partitions_assigned(self, assigned: set[TP], generation_id: int = 0) -> None:
        # Nothing is delivered from them until perform_seek says where to start.
        self.positions.hold(tp for tp in assigned if self._is_input(tp.topic))
        transactions = _transactions(self.app)
        if transactions is not None:
            # Fences every earlier owner (and aborts what it left open) before
            # the committed offsets are read.
            await transactions.assigned(assigned)
        await super().on_partitions_assigned(assigned, generation_id)

    async def _commit(self, offsets: Mapping[TP, int]) -> bool:
        """Exactly once: the input offsets were committed by each batch's transaction.

        Faust's commit still runs (its bookkeeping, its livelock check), but
        writes nothing: a plain offset commit beside the transactional ones
        could only repeat them.
        """
        if exactly_once(self.app):
            return True
        return bool(await super()._commit(offsets))

    def _is_input(self, topic: str) -> bool:
        """A topic a stage consumes: acked, and not a table's changelog.

        A changelog is compacted on Kafka: its offsets have holes, and Faust
        consumes it (acked too) only to recover a table, which seeks it itself.
        """
        changelogs = self._changelogs
        if not changelogs:  # tables register at start: cached once they have
            changelogs = self._changelogs = frozenset(self.app.tables.changelog_topics)
        return self.app.topics.acks_enabled_for(topic) and topic not in changelogs

    def verify_event_path(self, now: float, tp: TP) -> None:
        """Faust's livelock check, for the partitions a stream reads.

        An active table's changelog partitions stay assigned after recovery
        but no stream reads them, so Faust's "Stream has not started
        processing" fired for each of them once the worker had written to a
        table and waited ``stream_processing_timeout``: an ERROR on a healthy
        worker. Recovery has its own check (``verify_recovery_event_path``).
        """
        if tp.topic not in (self._changelogs or self.app.tables.changelog_topics):
            super().verify_event_path(now, tp)

    def _route(self, tp: TP) -> Route | None:
        """The queue of the one raw-bytes channel reading ``tp``, if that is all there is.

        Cached per generation: the Conductor indexes channels by partition
        when partitions are assigned, under a lock it also holds while
        changing subscriptions (then: Faust's path, and nothing cached).
        """
        generation = self.app.consumer_generation_id
        if generation != self._routes_generation:
            self._routes.clear()
            self._routes_generation = generation
        elif tp in self._routes:
            return self._routes[tp]
        conductor: Any = self.app.topics
        channels = internals.conductor_channels(conductor, tp)
        if channels is None:
            return None
        route = None
        if len(channels) == 1:
            (channel,) = channels
            if (
                type(channel) is Topic
                and channel.key_type is bytes
                and channel.value_type is bytes
                and channel.key_serializer == "raw"
                and channel.value_serializer == "raw"
            ):
                route = self._route_to(tp, channel.queue)
        self._routes[tp] = route
        return route

    def _route_to(self, tp: TP, queue: Any) -> Route:
        """Put into ``queue`` as the Conductor does: pausing the partition when it fills."""
        tp = TP(tp.topic, tp.partition)  # Faust's own type (its consumer asserts it)
        on_topic_buffer_full = self.app.sensors.on_topic_buffer_full

        def on_pressure_high() -> None:
            on_topic_buffer_full(tp)
            self.on_buffer_full(tp)

        def on_pressure_drop() -> None:
            self.on_buffer_drop(tp)

        put = partial(
            queue.put_nowait_enhanced,
            on_pressure_high=on_pressure_high,
            on_pressure_drop=on_pressure_drop,
        )
        return queue, put

    async def perform_seek(self) -> None:
        """Seek every assigned partition: to its committed offset, else to the log start.

        Faust's version relies on aiokafka's ``seek_to_committed``, which seeks
        only partitions whose committed offset is above 0 and leaves the others
        where earlier fetches moved them (their records dropped meanwhile).

        Records of a held partition fetched once the seek began are dropped
        (streams/positions.py) and the client's position is past them: those
        partitions are sought again once they are expected. A poll still
        under way across these seeks is dropped and sought again
        (:meth:`_drop_across_seeks`): it may hold records from before a seek.
        """
        self._dropped_while_held.clear()
        committed = await self.seek_to_committed()
        # Inputs only: a changelog is sought by the table recovery itself.
        inputs = {tp: offset for tp, offset in committed.items() if self._is_input(tp.topic)}
        missing = self.positions.held() - inputs.keys()
        if missing:  # held, and not in the answer: from the log start
            assigned = self.assignment()
            inputs.update({tp: None for tp in missing if tp in assigned})
        unsought = [tp for tp, offset in inputs.items() if not offset or offset < 0]
        starts = await self.earliest_offsets(*unsought) if unsought else {}
        positions = {tp: offset for tp, offset in inputs.items() if offset and offset > 0}
        for tp in unsought:
            # No committed offset: from the start, as consumer_auto_offset_reset="earliest".
            positions[tp] = max(starts.get(tp) or 0, 0)
            await self._seek(tp, positions[tp])
        # Faust's own bookkeeping, as its perform_seek keeps it.
        self._read_offset.update(
            {
                tp: offset if offset is not None and offset >= 0 else None
                for tp, offset in committed.items()
            }
        )
        self._committed_offset.update(
            {
                tp: offset if offset else None
                for tp, offset in committed.items()
                if offset is not None
            }
        )
        self.positions.expect(positions)
        self._sought(positions)
        again = self._dropped_while_held & positions.keys()
        self._dropped_while_held.clear()
        for tp in again:
            await self._seek(tp, positions[tp])
        self._sought(again)

    def _sought(self, partitions: Iterable[TP]) -> None:
        self._seeks += 1
        for tp in partitions:
            self._sought_at[tp] = self._seeks

    async def _seek_back(self, tp: TP, expected: int, got: int) -> None:
        """Records ``expected``..``got - 1`` were fetched but never delivered: read them again."""
        start = (await self.earliest_offsets(tp)).get(tp) or 0
        if start > expected:  # gone from the log (retention): nothing to read again
            self.log.warning(
                "%s[%s]: offsets %s..%s are no longer in the log; continuing at %s",
                tp.topic,
                tp.partition,
                expected,
                start - 1,
                start,
            )
            await self._add_gap(tp, expected, start - 1)
            expected = start
        else:
            self.log.warning(
                "%s[%s]: got offset %s where %s was due; reading again from %s",
                tp.topic,
                tp.partition,
                got,
                expected,
                expected,
            )
        self.positions.expect({tp: expected})
        self.positions.check(tp, got)  # resuming: drop what was fetched before the seek
        await self._seek(tp, expected)
        self._sought([tp])

    async def _reread_overtaken(self) -> None:
        """Seek back partitions whose fetch position passed records never delivered."""
        due = self.positions.snapshot()
        if not due:
            return
        thread = self._thread
        fetched = await thread.call_thread(thread.fetch_positions, list(due))  # type: ignore[attr-defined]
        for tp, offset in self.positions.overtaken(fetched, due).items():
            await self._seek_back(tp, offset, fetched[tp])

    async def _poll(self, timeout: float) -> list[tuple[TP, Any]]:
        """One poll's records as Faust messages, partition by partition.

        Faust's ``getmany`` does the same through an async generator that,
        per record, re-checks the flow and the generation (which cannot
        change without an await), asks the consumer thread for the
        partition's high watermark and records it for the lag monitor: here
        once per partition. Partitions are not interleaved record by record
        (Faust's round robin): every record of a poll is queued at once, each
        stage's in its own queue, so no stage waits behind another's.
        """
        seeks = self._seeks
        records, active = await self._wait_next_records(timeout)
        if not records or self.should_stop or not self.flow_active:
            return []  # a paused flow: Faust drops the poll too (fetched again after seeking)
        if self._seeks != seeks:
            await self._drop_across_seeks(records, seeks)
        buffered = self._buffered_partitions
        track_end = self.app.monitor.track_tp_end_offset
        highwater = self.highwater
        generation_id = self.app.consumer_generation_id
        fetched: list[tuple[TP, Any]] = []
        for tp, batch in records.items():
            if active is not None and tp not in active and tp not in buffered:
                continue
            track_end(tp, highwater(tp))
            topic, partition = tp
            faust_tp = TP(topic, partition)
            fetched += [
                (
                    tp,
                    ConsumerMessage(
                        topic,
                        partition,
                        record.offset,
                        None if record.timestamp is None else record.timestamp / 1000.0,
                        record.timestamp_type,
                        record.headers,
                        record.key,
                        record.value,
                        record.checksum,
                        record.serialized_key_size,
                        record.serialized_value_size,
                        faust_tp,
                        generation_id=generation_id,
                    ),
                )
                for record in batch
            ]
        return fetched

    async def _drop_across_seeks(self, records: dict[Any, Any], seeks: int) -> None:
        """Drop the records of input partitions sought while they were being fetched.

        They may come from before the seek: delivered, they would be taken for
        the records after the expected offset, across a hole in the log that
        is not there (streams/positions.py). Or they came after it, and the
        client's position is past them: so each such partition is sought
        again to its expected offset, and read from there.
        """
        for tp in [tp for tp in records if self._sought_at.get(tp, 0) > seeks]:
            del records[tp]
            expected = self.positions.expected(tp)
            if expected is not None:
                try:
                    await self._seek(tp, expected)
                except KafkaError as exc:  # revoked meanwhile: its next owner seeks
                    self.log.info("%s: not sought again: %r", tp, exc)
                self._sought([tp])

    async def _drain_messages(self, fetcher: ServiceT) -> None:  # pragma: no cover
        """Faust's loop (faust/transport/consumer.py), with one race per fetch."""
        callback = self.callback
        poll = self._poll
        consumer_should_stop = self._stopped.is_set  # type: ignore[attr-defined]
        fetcher_should_stop = internals.stopped_flag(fetcher)
        get_read_offset = self._read_offset.__getitem__
        set_read_offset = self._read_offset.__setitem__
        set_flag, unset_flag = self.diag.set_flag, self.diag.unset_flag
        commit_every = self._commit_every
        is_input = self._is_input

        positions = self.positions
        check, delivered = positions.check, positions.delivered
        DELIVER, GAP, SKIPPED = Verdict.DELIVER, Verdict.GAP, Verdict.SKIPPED
        RESUMING = Verdict.RESUMING
        is_held = positions.is_held
        dropped_while_held = self._dropped_while_held
        expected_of = positions.expected
        route_for = self._route
        flow_active = self.app.flow_control.is_active
        wait_until_producer_ebb = self.app.producer.buffer.wait_until_ebb

        async def deliver(fetched: list[tuple[TP, Any]]) -> None:
            # Faust's handler waits for its producer's buffer before each
            # record; the stages send through aiokafka (streams/batch.py), so
            # once per fetch covers any other sender.
            await wait_until_producer_ebb()
            for index, (tp, message) in enumerate(fetched):
                if index and not index % YIELD_EVERY:
                    await asyncio.sleep(0)  # let other tasks in, as Faust does
                offset = message.offset
                if is_input(message.topic):
                    verdict = check(tp, offset)
                    if verdict is GAP:
                        # A hole in the log (a transaction marker, an aborted or
                        # compacted record): acknowledged for Faust's commit.
                        await self._add_gap(tp, expected_of(tp) or 0, offset - 1)
                        verdict = DELIVER
                    if verdict is DELIVER:
                        route = route_for(tp)
                        if route is None or not flow_active():
                            await callback(message)  # waits while the flow is paused
                        else:
                            queue, put = route
                            message.refcount += 1  # the channel's reference, as Faust counts
                            event = InputEvent(message)
                            if queue.full():
                                await queue.put(event)
                            else:
                                put(event)
                        set_read_offset(tp, offset)
                        delivered(tp, offset)
                    elif verdict is RESUMING:
                        if is_held(tp):
                            dropped_while_held.add(tp)
                    elif verdict is SKIPPED:
                        try:
                            await self._seek_back(tp, positions.expected(tp) or 0, offset)
                        except KafkaError as exc:  # revoked meanwhile: its next owner seeks
                            self.log.info("%s: not sought back: %r", tp, exc)
                    continue
                # Changelogs and the like: Faust's rule (never an acked gap there).
                r_offset = get_read_offset(tp)
                if r_offset is None or offset >= r_offset:
                    await callback(message)
                    set_read_offset(tp, offset)

        checked_at = time.monotonic()
        try:
            while not (consumer_should_stop() or fetcher_should_stop()):
                if time.monotonic() - checked_at >= OVERTAKEN_CHECK_S:
                    checked_at = time.monotonic()
                    try:
                        await self._reread_overtaken()
                    except KafkaError as exc:  # a partition revoked meanwhile: next time
                        self.log.info("checking fetch positions: %r", exc)
                set_flag(CONSUMER_FETCHING)
                # Sleeping because a poll can return at once, in a loop.
                await self.sleep(0)
                if not self.should_stop:
                    fetched = await poll(1.0)
                    if commit_every is not None and self._n_acked >= commit_every:
                        self._n_acked = 0
                        await self.commit()
                    if fetched:
                        await self.wait_first(deliver(fetched), self.suspend_flow.wait())
                unset_flag(CONSUMER_FETCHING)
        except self.consumer_stopped_errors:
            if self.transport.app.should_stop:
                self.log.info("Broker stopped consumer, shutting down...")
                return
            raise
        except asyncio.CancelledError:
            if self.transport.app.should_stop:
                self.log.info("Consumer shutting down for user cancel.")
                return
            raise
        except Exception as exc:
            self.log.exception("Drain messages raised: %r", exc)
            raise
        finally:
            unset_flag(CONSUMER_FETCHING)


class Transport(driver.Transport):
    Consumer = Consumer
