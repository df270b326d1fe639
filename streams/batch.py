"""Outputs first, state second: the rule that makes crash recovery exact.

(Table ``orders``, which two stages write, reverses it, with an outbox in
each record: see :meth:`Batch.flush` and streams/redelivery.py.)

A stateful stage handles its input in batches. For each batch it computes
every output record and every table write, sends the outputs, waits until
Kafka acknowledged all of them, and only then writes the table. So:

- a table entry (and its changelog record) proves its outputs exist: an input
  replayed after a crash that finds its effect in the table re-emits nothing,
  because there is nothing missing;
- an input whose table write was lost is simply processed again: the stage is
  deterministic, so it re-emits byte-identical records.

Before sending, the worker confirms with the group coordinator that it is
still a member of the generation it read the batch in (see
streams/membership.py): a worker frozen past its session timeout wakes up
evicted and drops its batch instead of writing over the new owner.

The changelog records of the table writes are sent once the outputs are
acknowledged, stamped with the batch's consumer-group generation (see
streams/fencing.py), and the local store is written only after Kafka
acknowledged them. So a changelog record never exists without the outputs it
stands for. Sent in one burst, a changelog record could land while an output
did not: aiokafka's producer has one request in flight per broker and puts
one batch per partition in each request, so an output to a partition another
stage had a batch queued for waited for a later request, while the changelog
went in this one. A worker killed in between left a dedup entry for a
delivery whose events were never written (its retries were then dropped as
duplicates), or an order's state version whose ``orders.changes`` record
was never written. And the local store (RocksDB on disk included) never holds a
write its changelog lacks: a worker killed -9 and restarted on its disk, whose
partitions later move to a worker with an empty data directory, hands over
exactly the state it had. Faust commits offsets only after flushing the
producer, so neither the outputs nor the state of a committed input can be
lost. The price is one more produce round trip per batch; the other stages
run meanwhile.

Outputs go straight to aiokafka, under Faust's producer: a batch builds one
record batch per topic partition (the partition Kafka's default partitioner
gives the key, core/partitioner.py), submits each with ``send_batch`` and
waits for those few acknowledgements. Sent record by record, each output
paid for a partitioner call, an accumulator append and a future of its own
(~15 % of the worker's CPU). A batch that fails must never be committed:
its events are not acked (streams/take.py acks a batch only when the stage
asks for the next one), and the process ends at once (see
:func:`streams.pipeline.fatal`) rather than let Faust restart the stage
past it.

A table key lives in one partition (one RocksDB database per partition) and
its changelog records go to that partition. A batch spans several
partitions, so each read and write names the partition of the input event
that caused it (Faust's table API would take it from its "current event"
context variable): every input touching a table
key arrives on that key's partition (tables transactions and orders are keyed
like their input topic; a dedup entry lives in the partition of its
delivery's ordering key, which all retries of the delivery share).
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Callable, Mapping
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from aiokafka.producer.message_accumulator import BatchBuilder
from aiokafka.structs import RecordMetadata
from faust.types import TP, EventT, TableT, TopicT
from hookline.core.partitioner import key_hash
from hookline.streams.exactly_once import Transaction
from hookline.streams.fencing import generation_header
from hookline.streams.internals import aiokafka_producer, store_delete, store_get, store_put
from hookline.streams.membership import confirm_membership
from hookline.streams.redelivery import renew

Output = tuple[str, bytes, bytes | None, int | None, list[tuple[str, bytes]] | None]

#: Test-only fault injection: ``HOOKLINE_FAIL_SENDS=<stage>`` makes that stage's
#: first batch with outputs fail to send them, as a broker refusing them would
#: (after its changelog records, in a state-first batch).
_FAIL_SENDS = set(filter(None, os.environ.get("HOOKLINE_FAIL_SENDS", "").split(",")))

#: Test-only: ``HOOKLINE_STOP_BEFORE_FLUSH=<stage>`` makes the worker stop itself
#: (SIGSTOP) once, in that stage's first batch with table writes, after computing
#: it and before sending it: a worker frozen mid-batch, as a long pause would.
_STOP_BEFORE_FLUSH = set(filter(None, os.environ.get("HOOKLINE_STOP_BEFORE_FLUSH", "").split(",")))

#: Marks a key to delete in :class:`Batch` writes.
DELETE = object()


async def send_acknowledged(
    producer: AIOKafkaProducer, sends: list[Output], stage: str = ""
) -> dict[tuple[str, int], int]:
    """Send all, then wait until Kafka acknowledged every one.

    Returns the offset of the last record written to each topic partition.
    Raises if any send failed: the batch is then not acknowledged, the worker
    crashes and the inputs are processed again.
    """
    if not sends:
        return {}
    if stage in _FAIL_SENDS:
        _FAIL_SENDS.discard(stage)
        raise KafkaError(f"injected send failure in stage {stage} (HOOKLINE_FAIL_SENDS)")
    ids: dict[str, list[int]] = {}
    # A delivery's outputs share keys (an order's change, state and event):
    # each key is hashed once per call.
    hashes: dict[bytes, int] = {}
    batches: dict[tuple[str, int], list[BatchBuilder]] = {}
    for topic, key, value, partition, headers in sends:
        if partition is None:
            partitions = ids.get(topic)
            if partitions is None:
                partitions = ids[topic] = sorted(await producer.partitions_for(topic))
            # Every output has a key; a keyless one would go where b"" goes.
            hashed_key = key or b""
            hashed = hashes.get(hashed_key)
            if hashed is None:
                hashed = hashes[hashed_key] = key_hash(hashed_key)
            partition = partitions[hashed % len(partitions)]  # as partition_for
        builders = batches.get((topic, partition))
        if builders is None:
            builders = batches[(topic, partition)] = [producer.create_batch()]
        appended = builders[-1].append(key=key, value=value, timestamp=None, headers=headers)
        if appended is None:  # full: the next batch (a first record always fits)
            builders.append(producer.create_batch())
            builders[-1].append(key=key, value=value, timestamp=None, headers=headers)
    pending: list[tuple[tuple[str, int], int, asyncio.Future[RecordMetadata]]] = []
    for (topic, partition), builders in batches.items():
        for builder in builders:
            # Closed, or aiokafka's send() could add someone else's record to it.
            builder.close()
            future = await producer.send_batch(builder, topic, partition=partition)
            pending.append(((topic, partition), builder.record_count(), future))
    # Every future awaited, so that a failure shared by several (a fenced
    # transactional producer) is raised once, not also logged as unretrieved.
    results = await asyncio.gather(*(future for _, _, future in pending), return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result
    acks: list[RecordMetadata] = results  # type: ignore[assignment]
    last: dict[tuple[str, int], int] = {}
    for (tp, count, _), ack in zip(pending, acks, strict=True):
        offset = ack.offset + count - 1
        if offset > last.get(tp, -1):
            last[tp] = offset
    return last


class Batch:
    """Reads through, buffers outputs and writes, then applies them in order.

    Table values are stored encoded (``encode``/``decode``); within a batch
    they stay decoded, so a key touched many times is decoded once.

    ``state_first`` reverses the rule for a table whose inputs come from more
    than one topic (``orders``: see :meth:`flush`); ``on_read`` sees every
    value read from the store (not from this batch's own writes), and may
    add outputs for it; ``on_write`` sees every value about to be written,
    with the input event that wrote it last.
    """

    def __init__(
        self,
        table: TableT,
        encode: Callable[[Any], bytes],
        decode: Callable[[bytes], Any],
        on_put: Callable[[EventT, bytes, Any], None] | None = None,
        stage: str = "",
        stamp: Callable[[int, int], int] | None = None,
        on_written: Callable[[dict[int, tuple[int, int]]], None] | None = None,
        state_first: bool = False,
        on_read: Callable[[Batch, EventT, bytes, Any], None] | None = None,
        on_write: Callable[[EventT, Any], None] | None = None,
    ) -> None:
        self.table = table
        self.stage = stage
        self.state_first = state_first
        #: The group generation the batch's inputs were read in (fencing).
        self.generation = table.app.consumer_generation_id
        self._stamp = stamp or (lambda partition, generation: generation)
        self._on_written = on_written
        self._encode = encode
        self._decode = decode
        self._on_put = on_put
        self._on_read = on_read
        self._on_write = on_write
        self._sends: list[Output] = []
        self._writes: dict[bytes, tuple[EventT, Any]] = {}
        #: Exactly once: the transaction of the batch's input partition, which
        #: sends everything and applies the store writes once it commits
        #: (streams/exactly_once.py). None: at least once, as described above.
        self.transaction: Transaction | None = None

    def get(self, event: EventT, key: bytes) -> Any:
        """The value as this batch left it so far, else the table's (decoded)."""
        pending = self._writes.get(key)
        if pending is not None:
            value = pending[1]
            return None if value is DELETE else value
        stored = store_get(self.table.data, key, event.message.partition)
        if stored is None:
            return None
        value = self._decode(stored)
        if self._on_read is not None:
            self._on_read(self, event, key, value)
            pending = self._writes.get(key)  # on_read may have written it
            if pending is not None:
                value = pending[1]
                return None if value is DELETE else value
        return value

    def put(self, event: EventT, key: bytes, value: Any) -> None:
        self._writes[key] = (event, value)
        self._read_in(event)
        if self._on_put is not None:
            self._on_put(event, key, value)

    def delete(self, event: EventT, key: bytes) -> None:
        self._writes[key] = (event, DELETE)
        self._read_in(event)

    def consumed(self, events: list[EventT]) -> None:
        """The batch's inputs: it is stamped with the oldest generation they were read in."""
        for event in events:
            self._read_in(event)

    def _read_in(self, event: EventT) -> None:
        """Stamp the batch with the oldest generation its inputs were read in."""
        generation = getattr(event.message, "generation_id", None)
        if generation is not None and generation < self.generation:
            self.generation = generation

    def send(self, topic: TopicT, key: bytes, value: bytes) -> None:
        self._sends.append((_name(topic), key, value, None, None))

    @property
    def sends(self) -> int:
        return len(self._sends)

    async def flush(self) -> None:
        """Send the outputs and write the state, in the order that keeps a crash exact.

        Outputs first (the default): the outputs, awaited; then the changelog
        records, awaited; then the local store. A table entry then proves its
        outputs exist, and an input whose entry was lost is processed again
        and re-emits the same records: exact as long as every input of the
        table comes from one log, replayed in the same order.

        State first: the changelog records, awaited, and the local store; then
        the outputs. For a table fed by two logs (``orders``: order events
        straight from ``raw``, transaction updates from ``order-inputs``) a
        replay after a crash may meet the inputs in another order, and an
        output sent but not recorded could be computed again differently. So
        a version is decided once its changelog record is acknowledged, and
        the record carries the outputs it owes (streams/pipeline.py sends
        them again when the writer may have died first).
        """
        await self.confirm()
        if self.state_first:
            await self.write_state_then_send()
        else:
            await self.send_outputs()
            await self.write_state()

    async def write_state_then_send(self, *others: Batch) -> None:
        """State first: the changelog and store, then the outputs (and ``others``').

        Interrupted in between (a cancelled stage), the records written may
        owe their outputs while this process goes on: it renews its identity,
        so they are read as another writer's and sent again
        (streams/redelivery.py).
        """
        try:
            await self.write_state()
            await self.send_outputs(*others)
        except BaseException:
            renew()
            raise

    async def confirm(self) -> None:
        """Before anything leaves: still the owner? (streams/membership.py)."""
        if self._writes and self.stage in _STOP_BEFORE_FLUSH:
            _STOP_BEFORE_FLUSH.discard(self.stage)
            os.kill(os.getpid(), signal.SIGSTOP)
        if self.transaction is None and (self._sends or self._writes):
            await confirm_membership(self.table.app, self.generation)

    async def send_outputs(self, *others: Batch) -> None:
        """Send this batch's outputs (and ``others``'), wait for their acknowledgements."""
        sends = self._sends
        for other in others:
            sends = sends + other._sends  # noqa: SLF001 (another Batch)
        if self.transaction is not None:
            self.transaction.send(sends)
        else:
            producer = aiokafka_producer(self.table.app)
            await send_acknowledged(producer, sends, self.stage)
        self._sends.clear()
        for other in others:
            other._sends.clear()  # noqa: SLF001 (another Batch)

    async def write_state(self) -> None:
        """Send the changelog records, wait for them; then write the local store
        (and the changelog offsets it has)."""
        if not self._writes:
            return
        table = self.table
        changelog = _name(table.changelog_topic)
        headers: dict[int, list[tuple[str, bytes]]] = {}
        writes: list[tuple[bytes, EventT, bytes | None]] = []
        records: list[Output] = []
        on_write = self._on_write
        transaction = self.transaction
        for key, (event, value) in self._writes.items():
            if value is DELETE:
                encoded = None
            else:
                if on_write is not None:
                    on_write(event, value)
                encoded = self._encode(value)
            writes.append((key, event, encoded))
            partition = event.message.partition
            if transaction is not None:  # no stale writer commits: no stamp
                records.append((changelog, key, encoded, partition, None))
                continue
            stamped = headers.get(partition)
            if stamped is None:
                stamped = headers[partition] = generation_header(
                    self._stamp(partition, self.generation)
                )
            records.append((changelog, key, encoded, partition, stamped))
        self._writes.clear()
        if transaction is not None:
            transaction.send(records)
            transaction.after_commit(lambda last: _store(table, writes, changelog, last))
            return
        producer = aiokafka_producer(table.app)
        last = await send_acknowledged(producer, records)
        newest = _store(table, writes, changelog, last)
        if self._on_written is not None:
            self._on_written(
                {p: (offset, self._stamp(p, self.generation)) for p, offset in newest.items()}
            )


def _store(
    table: TableT,
    writes: list[tuple[bytes, EventT, bytes | None]],
    changelog: str,
    last: Mapping[tuple[str, int], int],
) -> dict[int, int]:
    """Write the local store, and the changelog offset it now has per partition."""
    store: Any = table.data
    for key, event, encoded in writes:
        if encoded is None:
            store_delete(store, key, event.message.partition)
        else:
            store_put(store, key, encoded, event.message.partition)
    newest = {p: offset for (topic, p), offset in last.items() if topic == changelog}
    for partition, offset in newest.items():
        store.set_persisted_offset(TP(changelog, partition), offset)
    return newest


def _name(topic: TopicT, _names: dict[int, str] = {}) -> str:  # noqa: B006 (a cache)
    name = _names.get(id(topic))
    if name is None:
        name = _names[id(topic)] = topic.get_topic_name()
    return name
