"""The data flow of one environment, as Faust agents and tables.

    <env>.webhooks.raw            (key delivery id)
      -> normalize                 streams/normalize.py, streams/adapters/
    <env>.hookline.deliveries     (key ordering key)       + <env>.webhooks.deadletter
      -> dedup   [table dedup]     streams/dedup.py
    <env>.hookline.transaction-facts (key transaction id)  + <env>.webhooks.events
      -> transactions [table transactions]   streams/join.py
    <env>.hookline.order-inputs   (key order id)   <- also order events from dedup
      -> orders [table orders]     streams/order_state.py
    <env>.orders.changes, <env>.orders.state (key order id)

Each environment has its own topics, tables and changelogs: sandbox records
never share a topic with production ones.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import faust
from faust.types import EventT, StreamT, TableT, TopicT

from hookline import topics
from hookline.sources import Source
from schemas import codec
from streams.batch import Batch, Output, send_acknowledged
from streams.dedup import Seen, classify, new_entry
from streams.expiry import Expiry, StreamTime
from streams.join import apply_to_transaction
from streams.metrics import WorkerMetrics
from streams.normalize import normalize
from streams.order_state import apply_event, apply_update

log = logging.getLogger("hookline.worker")

DAY_MS = 86_400_000


@dataclass(frozen=True)
class PipelineConfig:
    partitions: int
    join_retention_ms: int
    order_retention_ms: int
    max_json_depth: int = 32
    batch_max: int = 500
    batch_within_s: float = 0.02


class StateTable:
    """A changelog-backed table of Avro records, with its expiry sweeper."""

    def __init__(self, table: TableT, schema: str, expired: Any) -> None:
        self.table = table
        self._expired = expired  # the counter for this table
        self.encode = lambda record: codec.encode(schema, record)
        self.decode = lambda data: codec.decode_as(schema, data)
        self.expiry = Expiry(table, self.decode)

    def batch(self) -> Batch:
        return Batch(self.table, self.encode, self.decode, on_put=self.expiry.noted)

    async def finish(self, batch: Batch, clock: StreamTime) -> None:
        """Delete what expired, then send outputs, await acks, write the table."""
        deleted = self.expiry.sweep(batch, clock)
        await batch.flush()
        if deleted:
            self._expired.inc(deleted)


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
        self.deliveries = self._topic(topics.deliveries(env), self.config.partitions)
        self.transaction_facts = self._topic(topics.transaction_facts(env), self.config.partitions)
        self.order_inputs = self._topic(topics.order_inputs(env), self.config.partitions)
        self.events = self._topic(topics.events(env), self.config.partitions)
        self.deadletter = self._topic(topics.deadletter(env), self.config.partitions)
        self.orders_state = self._topic(topics.orders_state(env), self.config.partitions)
        self.orders_changes = self._topic(topics.orders_changes(env), self.config.partitions)

        self.dedup_store = self._table("dedup", codec.DEDUP_ENTRY)
        self.transaction_store = self._table("transactions", codec.TRANSACTION_RECORD)
        self.order_store = self._table("orders", codec.ORDER_RECORD)

        app.agent(self.raw, name=f"{env}.normalize")(self.normalize)
        app.agent(self.deliveries, name=f"{env}.dedup")(self.dedup)
        app.agent(self.transaction_facts, name=f"{env}.transactions")(self.transactions)
        app.agent(self.order_inputs, name=f"{env}.orders")(self.orders)

    def _topic(self, name: str, partitions: int | None = None) -> TopicT:
        return self.app.topic(
            name,
            partitions=partitions,
            key_type=bytes,
            value_type=bytes,
            key_serializer="raw",
            value_serializer="raw",
        )

    def _table(self, name: str, schema: str) -> StateTable:
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
        table = self.app.Table(
            f"{self.env}.{name}",
            partitions=self.config.partitions,
            changelog_topic=changelog,
            key_type=bytes,  # bytes in, bytes out: the "raw" codec
            value_type=bytes,
        )
        return StateTable(table, schema, self.metrics.expired.labels(self.env, name))

    def _batches(self, stream: StreamT) -> Any:
        return stream.take_events(self.config.batch_max, within=self.config.batch_within_s)

    # -- stage 1: raw -> canonical events (stateless) ------------------------
    async def normalize(self, stream: StreamT) -> None:
        async for events in self._batches(stream):
            sends: list[Output] = []
            letters = []
            for event in events:
                result = normalize(
                    event.key, event.value, self.env, self.sources, self.config.max_json_depth
                )
                if result.dead_letter:
                    sends.append((self.deadletter, result.key, result.value))
                    letters.append(result.detail)
                else:
                    sends.append((self.deliveries, result.key, result.value))
            await send_acknowledged(sends)
            for detail in letters:
                self.metrics.dead_letters.labels(self.env, detail["stage"]).inc()
                log.warning(
                    "dead letter env=%s delivery_id=%s stage=%s reason=%s",
                    self.env,
                    detail["delivery_id"],
                    detail["stage"],
                    detail["reason"],
                )

    # -- stage 2: deduplication ---------------------------------------------
    async def dedup(self, stream: StreamT) -> None:
        async for events in self._batches(stream):
            self.metrics.batch_size.labels("dedup").observe(len(events))
            batch, clock = self.dedup_store.batch(), StreamTime()
            for event in events:
                delivery = self._decode(event, codec.DELIVERY)
                if delivery is None:
                    continue
                clock.saw(event, delivery["received_at"])
                # Kept in the partition of the ordering key, which every
                # retry of this delivery shares.
                dedup_key = delivery["dedup_key"].encode()
                seen = classify(batch.get(event, dedup_key), delivery)
                if seen is Seen.DUPLICATE:
                    self.metrics.duplicates.labels(self.env, delivery["source"]).inc()
                    log.info(
                        "duplicate dropped env=%s source=%s delivery_id=%s",
                        self.env,
                        delivery["source"],
                        delivery["delivery_id"],
                    )
                    continue
                if seen is Seen.REPLAY:
                    self.metrics.replays.labels(self.env, "dedup").inc()
                    continue
                for canonical in delivery["events"]:
                    self._route(batch, canonical)
                batch.put(event, dedup_key, new_entry(delivery))
            await self.dedup_store.finish(batch, clock)

    def _route(self, batch: Batch, event: dict[str, Any]) -> None:
        encoded = codec.encode(codec.CANONICAL_EVENT, event)
        batch.send(self.events, event["entity_id"].encode(), encoded)
        if event["order_id"]:
            batch.send(self.order_inputs, event["order_id"].encode(), encoded)
        if event["transaction_id"]:
            # A transaction's own event, or an order naming its transaction (membership).
            batch.send(self.transaction_facts, event["transaction_id"].encode(), encoded)
        self.metrics.events.labels(self.env, event["source"], event["type"]).inc()

    # -- stage 3: transaction side of the join -------------------------------
    async def transactions(self, stream: StreamT) -> None:
        retention = self.config.join_retention_ms
        async for events in self._batches(stream):
            self.metrics.batch_size.labels("transactions").observe(len(events))
            batch, clock = self.transaction_store.batch(), StreamTime()
            for event in events:
                canonical = self._decode(event, codec.CANONICAL_EVENT)
                if canonical is None:
                    continue
                clock.saw(event, canonical["received_at"])
                result = apply_to_transaction(batch.get(event, event.key), canonical, retention)
                if result.rejected:
                    self._rejected("payment_status", *result.rejected, canonical["event_id"])
                for update in result.updates:
                    batch.send(
                        self.order_inputs,
                        update["order_id"].encode(),
                        codec.encode(codec.TRANSACTION_UPDATE, update),
                    )
                if result.changed:
                    batch.put(event, event.key, result.record)
            await self.transaction_store.finish(batch, clock)

    # -- stage 4: order state -------------------------------------------------
    async def orders(self, stream: StreamT) -> None:
        retention = self.config.order_retention_ms
        async for events in self._batches(stream):
            self.metrics.batch_size.labels("orders").observe(len(events))
            batch, clock = self.order_store.batch(), StreamTime()
            received: list[int] = []
            for event in events:
                try:
                    name, record = codec.decode(event.value)
                except codec.CodecError as exc:
                    self._undecodable(event, exc)
                    continue
                current = batch.get(event, event.key)
                if name == codec.CANONICAL_EVENT:
                    clock.saw(event, record["received_at"])
                    result = apply_event(current, record, self.env, retention)
                elif name == codec.TRANSACTION_UPDATE:
                    clock.saw(event, record["cause"]["received_at"])
                    result = apply_update(current, record, self.env, retention)
                else:
                    self._undecodable(event, codec.CodecError(f"unexpected {name}"))
                    continue
                for field, before, after in result.rejected:
                    self._rejected(field, before, after, result.record["state"]["order_id"])
                if result.conflict:
                    self.metrics.conflicts.labels(self.env).inc()
                    log.warning("join conflict env=%s: %s", self.env, result.conflict)
                if result.change is not None:
                    change = result.change
                    batch.send(
                        self.orders_changes, event.key, codec.encode(codec.ORDER_CHANGE, change)
                    )
                    batch.send(
                        self.orders_state,
                        event.key,
                        codec.encode(codec.ORDER_STATE, change["after"]),
                    )
                    received.append(change["cause"]["received_at"])
                if result.changed:
                    batch.put(event, event.key, result.record)
            await self.order_store.finish(batch, clock)
            if received:
                self.metrics.state_changes.labels(self.env).inc(len(received))
                now_ms = time.time() * 1000
                histogram = self.metrics.end_to_end.labels(self.env)
                for at in received:
                    histogram.observe(max(now_ms - at, 0) / 1000)

    # -- helpers ---------------------------------------------------------------
    def _decode(self, event: EventT, name: str) -> dict[str, Any] | None:
        try:
            return codec.decode_as(name, event.value)
        except codec.CodecError as exc:
            self._undecodable(event, exc)
            return None

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

    def _rejected(self, field: str, before: str | None, after: str, subject: str) -> None:
        self.metrics.rejected.labels(self.env, field, before or "none", after).inc()
        log.info(
            "rejected transition env=%s %s %s -> %s (%s)", self.env, field, before, after, subject
        )
