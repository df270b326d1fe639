"""The data flow of one environment, as Faust agents and tables.

    <env>.webhooks.raw            (key delivery id, partitioned by ordering key)
      -> intake [table dedup]      streams/normalize.py, core/adapters/, streams/dedup.py
    <env>.hookline.transaction-facts (key transaction id)
                                   + <env>.webhooks.events + <env>.webhooks.deadletter
      -> transactions [table transactions]   streams/join.py
    <env>.hookline.order-inputs   (key order id)   <- also order events from intake
      -> orders [table orders]     streams/order_state.py
    <env>.orders.changes, <env>.orders.state (key order id)

An order event whose order lives in the partition of its raw record (the
gateway partitions raw by the order id when the webhook names one) skips
``order-inputs``: intake applies it to table ``orders`` itself, in the same
batch, as the orders stage would. Both stages then write the table, one batch
at a time (``StateTable.lock``), state first (streams/redelivery.py).

Each environment has its own topics, tables and changelogs: sandbox records
never share a topic with production ones.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import faust
import orjson
from faust.types import TP, EventT, StreamT, TopicT
from hookline.core import topics
from hookline.core.partitioner import partition_for
from hookline.core.sources import Source
from hookline.gateway.throttled_log import ThrottledLog
from hookline.schemas import codec
from hookline.streams.activation import AwaitingActivation
from hookline.streams.batch import Batch, send_acknowledged
from hookline.streams.dedup import REPLAY_HEADER, Seen, classify, conflict_reason, new_entry
from hookline.streams.exactly_once import (
    PartitionProducers,
    Transaction,
    by_partition,
    maybe_killed_in_transaction,
)
from hookline.streams.expiry import Expiry, StreamTime
from hookline.streams.fencing import FencedTable
from hookline.streams.internals import committed_offset
from hookline.streams.join import MAX_MEMBERS, apply_to_transaction
from hookline.streams.membership import Fenced
from hookline.streams.metrics import WorkerMetrics, observe_all
from hookline.streams.normalize import (
    INTERNAL_RECORD_HEADER,
    DeadLetter,
    Delivery,
    dead_letter,
    identify,
    map_events,
    unexpected,
)
from hookline.streams.order_state import OrderResult, apply_event, apply_update, retire
from hookline.streams.redelivery import MAX_OUTBOX, stamped, unpublished
from hookline.streams.routing import known_member, routes
from hookline.streams.take import batches, drop_unacked
from hookline.streams.unreadable import HeldPartitions

log = logging.getLogger("hookline.worker")
#: Rejected facts are data (orders.rejected); their log lines only show them, at a bounded rate.
REJECTIONS = ThrottledLog(log)

DAY_MS = 86_400_000


@dataclass(frozen=True)
class PipelineConfig:
    partitions: int
    join_retention_ms: int
    order_retention_ms: int
    max_json_depth: int = 32
    #: Events per batch at most. A batch's cost is mostly per event, but each
    #: flush waits for two rounds of acks and sends a produce batch per
    #: output partition: 2000 took ~10 % less CPU per delivery than 500 in
    #: alternating bench runs (docs/performance.md). Under load, a batch of
    #: 2000 keeps the event loop for ~0.2 s; after a lull batches start at 32.
    batch_max: int = 2000
    #: Where persistent stores keep their fences (None: the store is memory).
    fence_dir: Path | None = None


#: Exit status of a worker whose batch failed (EX_SOFTWARE): restart it.
FAILED_BATCH_EXIT = 70


def fatal(stage: str, body: Callable[[StreamT], Awaitable[None]]) -> Callable[..., Any]:
    """Run a stage; if a batch fails, end the process before anything is committed.

    A batch fails only for an infrastructure failure that outlasted its
    retries (a record's own problems are dead-lettered at the record, and a
    batch fenced out of the group is dropped by the stage itself).

    Faust's default supervisor would restart the agent past the abandoned
    batch (with ``Stream.take_events``, whose generator acks a batch when it
    is closed, its deliveries were committed and lost). Exiting at once (no
    await in between, so no ack and no commit can run) leaves the inputs
    uncommitted; a restarted worker processes them again.
    """

    async def agent(stream: StreamT) -> None:
        try:
            await body(stream)
        except asyncio.CancelledError:
            raise
        except BaseException:
            log.critical(
                "stage %s: a batch failed; exiting without committing it (it will be "
                "processed again after a restart)",
                stage,
                exc_info=True,
            )
            logging.shutdown()
            os._exit(FAILED_BATCH_EXIT)

    agent.__name__ = agent.__qualname__ = f"{stage}_agent"
    return agent


class StateTable:
    """A changelog-backed table of Avro records, with its expiry sweeper."""

    #: RocksDB options of each table partition's database (the memory store
    #: ignores them). Faust's defaults, a 64 MB write buffer (up to 3) and a
    #: 2 GiB block cache per database, let every memtable grow with the keys
    #: written until 64 MB, times tables x partitions: resident memory grew
    #: with the state held. These bound each database to 8 MB of memtables and
    #: 2 MB of cache, whatever the number of keys.
    ROCKSDB_OPTIONS: ClassVar[Mapping[str, int]] = {
        "write_buffer_size": 4 * 1024 * 1024,
        "max_write_buffer_number": 2,
        "block_cache_size": 2 * 1024 * 1024,
    }

    def __init__(
        self,
        table: FencedTable,
        schema: str,
        expired: Any,
        on_expired: Callable[[Any], Any] | None = None,
        state_first: bool = False,
        on_read: Callable[[Batch, EventT, bytes, Any], None] | None = None,
    ) -> None:
        self.table = table
        self._expired = expired  # the counter for this table
        self.encode = lambda record: codec.encode(schema, record)
        self.decode = lambda data: codec.decode_as(schema, data)
        self.expiry = Expiry(table, self.decode, on_expired)
        self.state_first = state_first
        self.on_read = on_read
        #: Held by a batch from its first read of the table to its last
        #: acknowledgement, when more than one stage writes the table: a batch
        #: must not read what another is still sending.
        self.lock = asyncio.Lock()

    def batch(self, stage: str, transaction: Transaction | None = None) -> Batch:
        batch = Batch(
            self.table,
            self.encode,
            self.decode,
            on_put=self.expiry.noted,
            stage=stage,
            stamp=self.table.stamp,
            on_written=self.table.written,
            state_first=self.state_first,
            on_read=self.on_read,
            on_write=_stamp if self.state_first else None,
        )
        batch.transaction = transaction
        return batch

    def sweep(self, batch: Batch, clock: StreamTime) -> None:
        """Write what expired into the batch (deleted, or retired)."""
        deleted = self.expiry.sweep(batch, clock)
        if deleted:
            self._expired.inc(deleted)

    async def finish(self, batch: Batch, clock: StreamTime) -> None:
        """Sweep what expired, then send the outputs and write the table (Batch.flush)."""
        self.sweep(batch, clock)
        await batch.flush()


def _as_json(record: dict[str, Any]) -> bytes:
    """A record as JSON for a person reading a dead letter (decimals and bytes as text)."""
    try:
        return orjson.dumps(record, default=str)
    except TypeError:
        return repr(record).encode("utf-8", "backslashreplace")


def _input_partition(event: EventT) -> Any:
    return event.message.tp


def _stamp(event: EventT, record: dict[str, Any]) -> None:
    """Name this process and the input as the record's writer (streams/redelivery.py)."""
    message = event.message
    stamped(record, message.topic, message.offset)


class OrderBatch:
    """A batch of table ``orders`` and what its changes are reported with."""

    __slots__ = ("batch", "clock", "full", "received", "transitions")

    def __init__(self, batch: Batch, generation: int | None = None) -> None:
        self.batch = batch
        if generation is not None:  # read from the same inputs as another batch
            batch.generation = generation
        self.clock = StreamTime()
        #: An order's outbox reached MAX_OUTBOX: flush before the next input.
        self.full = False
        #: When each change's cause arrived (for the end-to-end latency).
        self.received: list[int] = []
        #: (partition, before, after) of each change (for activation).
        self.transitions: list[tuple[int, Any, Any]] = []


class EnvironmentPipeline:
    """Topics, tables and agents for one environment."""

    def __init__(
        self,
        app: faust.App,
        environment: str,
        config: PipelineConfig,
        sources: Mapping[str, Source],
        metrics: WorkerMetrics,
    ) -> None:
        self.app = app
        self.env = environment
        self.config = config
        self.sources = sources
        self.metrics = metrics
        env = environment

        # Written by the gateway, which may have created it with another count.
        self.raw = self._topic(topics.raw(env), partitions=None)
        self.transaction_facts = self._topic(topics.transaction_facts(env), self.config.partitions)
        self.order_inputs = self._topic(topics.order_inputs(env), self.config.partitions)
        self.events = self._topic(topics.events(env), self.config.partitions)
        self.deadletter = self._topic(topics.deadletter(env), self.config.partitions)
        self.orders_state = self._topic(topics.orders_state(env), self.config.partitions)
        self.orders_changes = self._topic(topics.orders_changes(env), self.config.partitions)
        self.orders_rejected = self._topic(topics.orders_rejected(env), self.config.partitions)

        self.dedup_store = self._table("dedup", codec.DEDUP_ENTRY)
        self.transaction_store = self._table("transactions", codec.TRANSACTION_RECORD)
        # An order is retired, never deleted: its versions must never restart.
        self.order_store = self._table(
            "orders",
            codec.ORDER_RECORD,
            on_expired=retire,
            state_first=True,
            on_read=self._publish_owed,
        )
        #: The partition ids of raw and of the tables (the worker checks at
        #: start that raw has HOOKLINE_PARTITIONS).
        self._partition_ids = range(config.partitions)
        self.awaiting = AwaitingActivation(self.order_store.table, self.order_store.decode)
        metrics.watch_awaiting(env, self.awaiting)

        #: Per stage, the input partitions held at a record this release
        #: cannot read (streams/unreadable.py), reminded of once a minute.
        self.held = {
            stage: HeldPartitions(app, env, stage, metrics)
            for stage in ("intake", "transactions", "orders")
        }

        async def remind_held() -> None:
            for held in self.held.values():
                held.remind()

        app.timer(15.0, name=f"{env}.held-partitions")(remind_held)

        self._destinations = {
            "events": self.events,
            "order_inputs": self.order_inputs,
            "transaction_facts": self.transaction_facts,
        }
        app.agent(self.raw, name=f"{env}.intake")(fatal("intake", self.intake))
        app.agent(self.transaction_facts, name=f"{env}.transactions")(
            fatal("transactions", self.transactions)
        )
        app.agent(self.order_inputs, name=f"{env}.orders")(fatal("orders", self.orders))

    @property
    def partition_producers(self) -> PartitionProducers | None:
        """Exactly once: the input partitions' transactional producers
        (streams/exactly_once.py, set before the worker starts); None: at least once."""
        return getattr(self.app, "hookline_transactions", None)

    def _topic(self, name: str, partitions: int | None = None) -> TopicT:
        return self.app.topic(
            name,
            partitions=partitions,
            key_type=bytes,
            value_type=bytes,
            key_serializer="raw",
            value_serializer="raw",
        )

    def _table(
        self,
        name: str,
        schema: str,
        on_expired: Callable[[Any], Any] | None = None,
        state_first: bool = False,
        on_read: Callable[[Batch, EventT, bytes, Any], None] | None = None,
    ) -> StateTable:
        changelog = self.app.topic(
            topics.changelog(self.env, name),
            partitions=self.config.partitions,
            compacting=True,
            deleting=False,
            internal=True,
            key_type=bytes,
            value_type=bytes,
            key_serializer="raw",
            value_serializer="raw",
        )
        table = FencedTable(
            self.app,
            name=f"{self.env}.{name}",
            beacon=self.app.tables.beacon,
            partitions=self.config.partitions,
            changelog_topic=changelog,
            key_type=bytes,  # bytes in, bytes out: the "raw" codec
            value_type=bytes,
            options=dict(StateTable.ROCKSDB_OPTIONS),  # a copy: Faust's store pops from it
        )
        self.app.tables.add(table)
        table.on_fenced = self.metrics.fenced.labels(self.env, name).inc
        if self.config.fence_dir is not None:
            table.keep_fence_in(self.config.fence_dir / f"{self.env}.{name}.json")
        return StateTable(
            table,
            schema,
            self.metrics.expired.labels(self.env, name),
            on_expired,
            state_first=state_first,
            on_read=on_read,
        )

    def _batches(self, stream: StreamT) -> Any:
        return batches(stream, self.config.batch_max)

    # -- stage 1: raw -> canonical, deduplicated events -------------------------
    async def intake(self, stream: StreamT) -> None:
        """Normalize and deduplicate in one pass over ``raw``.

        The gateway partitions ``raw`` by the ordering key, which every retry
        of a delivery shares (same content, same claims, same envelope id),
        so a retry meets the first copy's dedup entry in this partition.

        A batch writes two tables: ``orders`` (its order events that live in
        their raw record's partition) and then ``dedup``. The order is what
        keeps a crash exact: the orders records (state first, then every
        output of the batch) are acknowledged before the dedup entries that
        say their deliveries were handled.
        """
        async for events in self._batches(stream):
            await self._run("intake", events, self._intake_batch)

    async def _intake_batch(self, events: list[EventT], txn: Transaction | None) -> None:
        self.metrics.batch_size.labels("intake").observe(len(events))
        batch, clock = self.dedup_store.batch("intake", txn), StreamTime()
        batch.consumed(events)
        orders = OrderBatch(self.order_store.batch("intake", txn), batch.generation)
        letters: list[dict[str, Any]] = []
        duplicates: dict[str, int] = {}
        counted: dict[tuple[str, str], int] = {}
        held = self.held["intake"]
        async with self._orders_lock(txn):
            for event in events:
                if held.holds(event):
                    continue
                try:
                    position = (event.message.partition, event.message.offset)
                    identified = identify(
                        event.key,
                        event.value,
                        self.env,
                        self.sources,
                        self.config.max_json_depth,
                        position,
                    )
                except codec.UnknownSchema as exc:
                    held.hold(event, exc, "raw record")
                    continue
                if isinstance(identified, DeadLetter):
                    batch.send(self.deadletter, identified.key, identified.value)
                    letters.append(identified.record)
                    continue
                envelope = identified.envelope
                key = identified.dedup_key.encode()
                try:
                    entry = batch.get(event, key)
                except codec.UnknownSchema as exc:
                    held.hold(event, exc, "table record")
                    continue
                clock.saw(event, envelope["received_at"])
                seen = classify(
                    entry,
                    envelope["delivery_id"],
                    envelope["received_at"],
                    identified.content_digest,
                    replaying=REPLAY_HEADER in envelope["headers"],
                )
                if seen is Seen.DUPLICATE:
                    duplicates[envelope["source"]] = duplicates.get(envelope["source"], 0) + 1
                    log.debug("duplicate dropped delivery_id=%s", envelope["delivery_id"])
                    continue
                if seen is Seen.REPLAY:
                    self.metrics.replays.labels(self.env, "intake").inc()
                    continue
                if seen is Seen.CONFLICT:
                    reason = conflict_reason(identified.dedup_key, entry)
                    letter = dead_letter(envelope, "dedup", reason, event.key or b"", position)
                    batch.send(self.deadletter, letter.key, letter.value)
                    letters.append(letter.record)
                    self.metrics.dedup_conflicts.labels(self.env, envelope["source"]).inc()
                    continue
                # New: only now are its events built (a retry never gets here).
                result = map_events(identified)
                if isinstance(result, DeadLetter):
                    batch.send(self.deadletter, result.key, result.value)
                    letters.append(result.record)
                    continue
                try:
                    claims = self._read_orders(orders, event, result.events)
                except codec.UnknownSchema as exc:
                    held.hold(event, exc, "table record")
                    continue
                for reason in self._route(batch, event, result, counted, orders, claims):
                    letter = dead_letter(envelope, "orders", reason, event.key or b"", position)
                    batch.send(self.deadletter, letter.key, letter.value)
                    letters.append(letter.record)
                if orders.full:
                    # An order's outbox is full: publish the orders part so far.
                    await self._publish_orders(orders)
                    orders = OrderBatch(self.order_store.batch("intake", txn), batch.generation)
                batch.put(
                    event,
                    key,
                    new_entry(
                        envelope["delivery_id"],
                        envelope["received_at"],
                        result.window_ms,
                        result.content_digest,
                    ),
                )
            held.release(events)
            self.dedup_store.sweep(batch, clock)
            await batch.confirm()
            await self._publish_orders(orders, batch)
            if txn is not None:
                await batch.write_state()
                self._seal(txn, events)
        await batch.write_state()
        for (source, kind), count in counted.items():
            self.metrics.events.labels(self.env, source, kind).inc(count)
        for source, count in duplicates.items():
            self.metrics.duplicates.labels(self.env, source).inc(count)
        for detail in letters:
            self.metrics.dead_letters.labels(self.env, detail["stage"]).inc()
            log.warning(
                "dead letter env=%s delivery_id=%s stage=%s reason=%s",
                self.env,
                detail["delivery_id"],
                detail["stage"],
                detail["reason"],
            )

    def _local_orders(self, event: EventT, events: list[dict[str, Any]]) -> list[bytes]:
        """The order keys of a delivery's events that live in the raw record's partition."""
        partition = event.message.partition
        keys = []
        for canonical in events:
            if canonical["order_id"]:
                key = canonical["order_id"].encode()
                if partition_for(key, self._partition_ids) == partition:
                    keys.append(key)
        return keys

    def _read_orders(
        self, orders: OrderBatch, event: EventT, events: list[dict[str, Any]]
    ) -> dict[str, dict[str, tuple[int, str]]]:
        """Read the delivery's local orders before routing any of it: a table record
        this release cannot read (``codec.UnknownSchema``) then holds the partition
        before any of the delivery was sent (streams/unreadable.py).

        Returns each local order's claims as they stand before the delivery
        (order id to transaction id to claimed stamp), for ``known_member``.
        """
        claims: dict[str, dict[str, tuple[int, str]]] = {}
        for key in self._local_orders(event, events):
            record = orders.batch.get(event, key)
            if record is not None and record["claims"]:
                claims[key.decode()] = {
                    claim["transaction_id"]: (
                        claim["claimed_received_at"],
                        claim["claimed_event_id"],
                    )
                    for claim in record["claims"]
                }
        return claims

    def _route(
        self,
        batch: Batch,
        event: EventT,
        delivery: Delivery,
        counted: dict[tuple[str, str], int],
        orders: OrderBatch,
        claims: Mapping[str, Mapping[str, tuple[int, str]]],
    ) -> list[str]:
        """Send a delivery's events where they go; count them by (source, type) in ``counted``.

        An order event whose order's partition is the raw record's own is
        applied to ``orders`` here instead of crossing ``order-inputs``; the
        reasons of those that could not be applied are returned, to be
        dead-lettered (each fact is applied or dead-lettered on its own).
        Counted per batch, not per event: a labelled metric's lookup per event
        cost more than the rest of the routing. A membership its transaction
        already has (``claims``: :meth:`_read_orders`) is not sent again
        (docs/design.md, "Memberships sent once").
        """
        topics_by_name = self._destinations
        partition = event.message.partition
        encoded = delivery.encoded
        sent: set[str] = set()
        failed: list[str] = []
        retention = self.config.join_retention_ms
        for destination, key, canonical in routes(delivery.events):
            if (
                destination == "transaction_facts"
                and canonical["entity_type"] != "transaction"
                and canonical["order_id"] in claims
                and known_member(claims[canonical["order_id"]], canonical, retention)
            ):
                continue
            key_bytes = key.encode()
            if (
                destination == "order_inputs"
                and partition_for(key_bytes, self._partition_ids) == partition
            ):
                reason = self._apply_safely(
                    orders, event, key_bytes, codec.CANONICAL_EVENT, canonical
                )
                if reason is not None:
                    failed.append(reason)
                continue
            event_id = canonical["event_id"]
            if event_id not in sent:
                sent.add(event_id)
                label = (canonical["source"], canonical["type"])
                counted[label] = counted.get(label, 0) + 1
            batch.send(topics_by_name[destination], key_bytes, encoded[event_id])
        return failed

    # -- stage 3: transaction side of the join -------------------------------
    async def transactions(self, stream: StreamT) -> None:
        async for events in self._batches(stream):
            await self._run("transactions", events, self._transactions_batch)

    async def _transactions_batch(self, events: list[EventT], txn: Transaction | None) -> None:
        retention = self.config.join_retention_ms
        self.metrics.batch_size.labels("transactions").observe(len(events))
        batch, clock = self.transaction_store.batch("transactions", txn), StreamTime()
        batch.consumed(events)
        held = self.held["transactions"]
        for event in events:
            if held.holds(event):
                continue
            try:
                canonical = self._decode(event, codec.CANONICAL_EVENT)
                if canonical is None:
                    continue
                current = batch.get(event, event.key)
            except codec.UnknownSchema as exc:
                held.hold(event, exc, "transaction fact or its table record")
                continue
            clock.saw(event, canonical["received_at"])
            try:
                result = apply_to_transaction(current, canonical, retention)
                updates = [
                    (
                        update["order_id"].encode(),
                        codec.encode(codec.TRANSACTION_UPDATE, update),
                    )
                    for update in result.updates
                ]
            except Exception as exc:
                self._internal_letter(batch, event, "transactions", canonical, exc)
                continue
            if result.rejected:
                self._rejected("payment_status", *result.rejected, canonical["event_id"])
            if result.unjoined:
                reason = (
                    f"transaction {canonical['transaction_id']} already has {MAX_MEMBERS} orders: "
                    f"{len(result.unjoined)} not joined ({', '.join(result.unjoined[:5])}...)"
                )
                self._internal_letter(batch, event, "transactions", canonical, reason)
            for key, value in updates:
                batch.send(self.order_inputs, key, value)
            if result.changed:
                batch.put(event, event.key, result.record)
        held.release(events)
        await self.transaction_store.finish(batch, clock)
        if txn is not None:
            self._seal(txn, events)

    # -- stage 4: order state -------------------------------------------------
    async def orders(self, stream: StreamT) -> None:
        async for events in self._batches(stream):
            await self._run("orders", events, self._orders_batch)

    async def _orders_batch(self, events: list[EventT], txn: Transaction | None) -> None:
        self.metrics.batch_size.labels("orders").observe(len(events))
        orders = OrderBatch(self.order_store.batch("orders", txn))
        orders.batch.consumed(events)
        held = self.held["orders"]
        async with self._orders_lock(txn):
            for event in events:
                if held.holds(event):
                    continue
                try:
                    name, record = codec.decode(event.value)
                    orders.batch.get(event, event.key)  # read first: see _read_orders
                except codec.UnknownSchema as exc:
                    held.hold(event, exc, "order input or its table record")
                    continue
                except codec.CodecError as exc:
                    self._undecodable(event, exc)
                    continue
                if name not in (codec.CANONICAL_EVENT, codec.TRANSACTION_UPDATE):
                    self._undecodable(event, codec.CodecError(f"unexpected {name}"))
                    continue
                reason = self._apply_safely(orders, event, event.key, name, record)
                if reason is not None:
                    self._internal_letter(orders.batch, event, "orders", record, reason)
                if orders.full:
                    await self._publish_orders(orders)
                    generation = orders.batch.generation
                    orders = OrderBatch(self.order_store.batch("orders", txn), generation)
            held.release(events)
            await self._publish_orders(orders)
            if txn is not None:
                self._seal(txn, events)

    async def _publish_orders(self, orders: OrderBatch, *others: Batch) -> None:
        """Write an orders batch (state first), then send its outputs and ``others``'."""
        self.order_store.sweep(orders.batch, orders.clock)
        await orders.batch.confirm()
        await orders.batch.write_state_then_send(*others)
        transaction = orders.batch.transaction
        if transaction is None:
            self._orders_changed(orders)
        else:
            transaction.after_commit(lambda _: self._orders_changed(orders))

    def _apply_safely(
        self, orders: OrderBatch, event: EventT, key: bytes, name: str, record: dict[str, Any]
    ) -> str | None:
        """:meth:`_apply_order`, with what it raises as the fact's dead-letter reason.

        ``_apply_order`` computes and encodes everything before it changes the
        batch, so a fact that raises leaves the batch as it was.
        """
        try:
            self._apply_order(orders, event, key, name, record)
        except codec.UnknownSchema:
            raise
        except codec.CodecError as exc:
            return f"order {key.decode(errors='replace')}: the new state cannot be encoded: {exc}"
        except Exception as exc:
            log.error("stage orders: applying a fact raised", exc_info=True)
            self.metrics.record_errors.labels(self.env, "orders").inc()
            return f"order {key.decode(errors='replace')}: {unexpected(exc)}"
        return None

    def _apply_order(
        self, orders: OrderBatch, event: EventT, key: bytes, name: str, record: dict[str, Any]
    ) -> None:
        """Apply an order event or a transaction update to ``orders.batch``.

        Everything that can fail (reading the table, the rules, the encoders)
        runs before the first change to the batch; keep it so.
        """
        batch, retention = orders.batch, self.config.order_retention_ms
        current = batch.get(event, key)
        result: OrderResult
        if name == codec.CANONICAL_EVENT:
            arrived = record["received_at"]
            result = apply_event(current, record, self.env, retention)
            orders.clock.saw(event, arrived)
        else:
            # The join completes when the later of its two facts arrives.
            arrived = max(record["cause"]["received_at"], record["claimed_received_at"])
            result = apply_update(current, record, self.env, retention)
            orders.clock.saw(event, record["cause"]["received_at"])
        # Encoded here, with the change: nothing below may fail.
        facts = [
            codec.encode(codec.REJECTED_FACT, rejection.fact)
            for rejection in result.rejected
            if rejection.fact is not None
        ]
        for rejection in result.rejected:
            self._rejected(
                rejection.field,
                rejection.held,
                rejection.value,
                result.record["state"]["order_id"],
                rejection.fact,
                rejection.counted,
            )
        if result.conflict:
            self.metrics.conflicts.labels(self.env).inc()
            log.warning("env=%s %s", self.env, result.conflict)
        if result.change is not None:
            change = result.change
            encoded = codec.encode(codec.ORDER_CHANGE, change)
            state = codec.encode(codec.ORDER_STATE, change["after"])
            if batch.transaction is None:  # committed with its outputs otherwise
                result.record["outbox"] = [*result.record["outbox"], encoded]
            batch.send(self.orders_changes, key, encoded)
            batch.send(self.orders_state, key, state)
            orders.received.append(arrived)
            orders.transitions.append((event.message.partition, change["before"], change["after"]))
        if facts:
            # Once per fact: its key is in the record written with this batch
            # (streams/order_state.py), so a retried delivery sends nothing;
            # and in its outbox, so a crash before the send does not lose it.
            if batch.transaction is None:
                result.record["outbox"] = [*result.record["outbox"], *facts]
            for fact in facts:
                batch.send(self.orders_rejected, key, fact)
        if len(result.record["outbox"]) >= MAX_OUTBOX:
            orders.full = True
        if result.changed:
            batch.put(event, key, result.record)

    def _publish_owed(self, batch: Batch, event: EventT, key: bytes, record: Any) -> None:
        """A record read from the store: send its outbox again if it may be unsent.

        Sent before anything this batch adds for the order, so ``orders.state``
        still ends on the newest version; the record is written back as this
        process's, still owing them until this batch is sent (streams/redelivery.py).
        Otherwise its outbox was sent: this batch's own changes start a new one.
        """
        message = event.message
        topic = record.get("input_topic")
        committed = committed_offset(self.app, TP(topic, message.partition)) if topic else None
        owed = unpublished(record, committed)
        if not owed:
            record["outbox"] = []
            return
        for item in owed:
            name, value = codec.decode(item)
            if name == codec.REJECTED_FACT:
                batch.send(self.orders_rejected, key, item)
                continue
            batch.send(self.orders_changes, key, item)
            batch.send(self.orders_state, key, codec.encode(codec.ORDER_STATE, value["after"]))
        batch.put(event, key, record)
        self.metrics.republished.labels(self.env).inc(len(owed))

    def _orders_changed(self, orders: OrderBatch) -> None:
        """After a batch's order changes were published: activation and metrics."""
        for partition, before, after in orders.transitions:
            self.awaiting.changed(partition, before, after)
        received = orders.received
        if received:
            self.metrics.state_changes.labels(self.env).inc(len(received))
            now_ms = time.time() * 1000
            observe_all(
                self.metrics.end_to_end.labels(self.env),
                [max(now_ms - at, 0) / 1000 for at in received],
            )

    # -- helpers ---------------------------------------------------------------
    async def _run(
        self,
        stage: str,
        events: list[EventT],
        body: Callable[[list[EventT], Transaction | None], Awaitable[None]],
    ) -> None:
        """Run a stage's batch: whole (at least once), or one transaction per input partition.

        A part that was fenced is dropped unacked (:meth:`_abandon`); ``events``
        keeps, in place, what the next batch request acks (streams/take.py).
        """
        transactions = self.partition_producers
        if transactions is None:
            try:
                await body(events, None)
            except Fenced as exc:
                self._abandon(stage, events, exc)
            if events:
                maybe_killed_in_transaction(stage)  # test-only: before the offset commit
            return
        # Parts are computed one after the other and committed together: each
        # has its own producer, and their keys never meet (a table key lives
        # in its input's partition). A stage writing table ``orders`` holds
        # its lock until every part's store writes are applied.
        lock = self.order_store.lock if stage != "transactions" else contextlib.nullcontext()
        parts: list[tuple[list[EventT], Transaction]] = []
        async with lock:
            for part in by_partition(events, _input_partition):
                txn = Transaction(transactions, part[0].message.tp)
                await body(part, txn)
                parts.append((part, txn))

            def send(producer: Any, sends: list[Any]) -> Any:
                return send_acknowledged(producer, sends, stage)

            results = await asyncio.gather(
                *(txn.commit(txn.next_offset, send, stage) for _, txn in parts),
                return_exceptions=True,
            )
        kept: list[EventT] = []
        for (part, _), result in zip(parts, results, strict=True):
            if isinstance(result, Fenced):
                self._abandon(stage, part, result)
            elif isinstance(result, BaseException):
                raise result
            kept += part
        events[:] = kept

    def _orders_lock(self, txn: Transaction | None) -> Any:
        """Table ``orders``'s lock for an at-least-once batch (:meth:`_run` holds it otherwise)."""
        return self.order_store.lock if txn is None else contextlib.nullcontext()

    @staticmethod
    def _seal(txn: Transaction, events: list[EventT]) -> None:
        """The part is computed: its transaction commits the offset after its last input.

        ``events`` is the part as the stage left it: without the records a
        held partition stops at (streams/unreadable.py), so none of those is
        committed.
        """
        txn.next_offset = max(event.message.offset for event in events) + 1 if events else None

    def _decode(self, event: EventT, name: str) -> dict[str, Any] | None:
        try:
            return codec.decode_as(name, event.value)
        except codec.CodecError as exc:
            self._undecodable(event, exc)
            return None

    def _abandon(self, stage: str, events: list[EventT], fenced: Fenced) -> None:
        """Drop a batch this worker may no longer write: unsent, unacked, uncommitted.

        Its partitions were handed over (or are being): after the rebalance
        their owner, this worker included, reads the inputs again from the
        committed offsets. The worker goes on (streams/membership.py).
        """
        log.warning(
            "stage %s: fenced out (%s); %d inputs dropped unsent and uncommitted, read again "
            "by their partitions' owner after the rebalance",
            stage,
            fenced,
            len(events),
        )
        self.metrics.abandoned_batches.labels(self.env, stage).inc()
        drop_unacked(self.app.consumer, events)

    def _internal_letter(
        self,
        batch: Batch,
        event: EventT,
        stage: str,
        record: dict[str, Any],
        problem: Exception | str,
    ) -> None:
        """Dead-letter a fact read from an internal topic that a stage could not apply.

        The record is not a delivery: the letter's envelope names the delivery
        behind it (its id, source, kind and time) and carries the record as JSON
        in ``body``, marked with the header ``INTERNAL_RECORD_HEADER`` so that
        ``hookline redrive`` says to replay that delivery instead.
        """
        if isinstance(problem, Exception):
            if not isinstance(problem, codec.CodecError):
                log.error("stage %s: a record raised", stage, exc_info=problem)
                self.metrics.record_errors.labels(self.env, stage).inc()
            problem = unexpected(problem)
        cause = record.get("cause") or record
        message = event.message
        envelope = {
            "delivery_id": str(cause.get("delivery_id") or "unknown"),
            "source": str(cause.get("source") or "unknown"),
            "kind": str(cause.get("kind") or "unknown"),
            "environment": self.env,
            "received_at": int(cause.get("received_at") or 0),
            "body": _as_json(record),
            "headers": {
                INTERNAL_RECORD_HEADER: f"{message.topic}[{message.partition}]@{message.offset}"
            },
            "client_ip": None,
            "verification": "none",
        }
        letter = dead_letter(envelope, stage, problem, event.key or b"")
        batch.send(self.deadletter, letter.key, letter.value)
        self.metrics.dead_letters.labels(self.env, stage).inc()
        log.warning(
            "dead letter env=%s delivery_id=%s stage=%s reason=%s",
            self.env,
            envelope["delivery_id"],
            stage,
            letter.record["reason"],
        )

    def _undecodable(self, event: EventT, exc: Exception) -> None:
        # Internal topics are written only by this worker: this is a bug or a
        # foreign writer. Logged loudly and counted; the record stays in the topic.
        message = event.message
        self.metrics.dead_letters.labels(self.env, "internal").inc()
        log.error(
            "undecodable record topic=%s partition=%s offset=%s: %s",
            message.topic,
            message.partition,
            message.offset,
            exc,
        )

    def _rejected(
        self,
        field: str,
        before: str | None,
        after: str,
        subject: str,
        fact: dict[str, Any] | None = None,
        counted: bool = True,
    ) -> None:
        """Count a refused transition; log a RejectedFact at INFO, rate-limited.

        ``fact`` is the record ``_apply_order`` publishes on ``orders.rejected``
        (docs/consumers.md, "Rejected facts"); without one (a transaction's own
        refusal, which its orders publish, or a bound reached) a DEBUG line.
        ``counted`` is False for a refusal another stage already counted.
        """
        if counted:
            self.metrics.rejected.labels(self.env, field, before or "none", after).inc()
        if fact is None:
            log.debug(
                "rejected transition env=%s %s %s -> %s (%s)",
                self.env,
                field,
                before,
                after,
                subject,
            )
            return
        REJECTIONS.info(
            "rejected fact env=%s order_id=%s rule=%s %s=%s delivery_id=%s",
            self.env,
            subject,
            fact["rule"],
            field,
            after,
            fact["cause"]["delivery_id"],
        )
