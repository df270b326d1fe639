"""The sink's loop: consume, buffer, land a batch in the tables, then tell Kafka.

Positions come from the tables, never from Kafka: when partitions are
assigned the sink seeks each to the offset stored in its table's newest
snapshot (``warehouse.tables``), and it commits offsets to its Kafka group
only after the table commit that holds them (a copy for lag dashboards).
A batch is committed when it holds ``batch_rows`` records or its oldest
record waited ``commit_interval_s``; one table commit per table and batch,
the tables' side by side. One batch lands while the next is read (at most
one in flight, so up to two batches in memory): what is read meanwhile
continues from the landed offsets, or queues behind the batch when its
commit failed, and a partition fenced or revoked meanwhile is read again
from the table's offset.

While the warehouse is unreachable nothing is committed anywhere: the batch
waits in memory, consumption is paused (the sink stays in its group) and the
commit is retried with a growing delay.

A partition whose log ends below the offset its table holds is not the log
the table was landed from (the topic was recreated, or the warehouse belongs
to another cluster, e.g. an embedded broker that started empty again): the
sink stops with :class:`TopicRestarted` instead of reading on from wherever
the consumer resets to, which would skip records without a trace.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import defaultdict
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, ConsumerRecord
from aiokafka.errors import KafkaError
from aiokafka.structs import TopicPartition
from hookline.schemas import codec
from hookline.schemas.codec import CodecError, UnknownSchema
from hookline.warehouse import metrics, rows
from hookline.warehouse.commit import CommitResult, PartitionBatch, TableWriter
from hookline.warehouse.decoder import Decoded, DecoderPool
from hookline.warehouse.rows import MappingError
from hookline.warehouse.tables import WarehouseError
from pyiceberg.catalog import Catalog

log = logging.getLogger("hookline.sink")

DEFAULT_BATCH_ROWS = 50_000
DEFAULT_COMMIT_INTERVAL_S = 60.0
DEFAULT_GROUP = "hookline-sink"
DEFAULT_DECODERS = 2
#: More decoder processes than this is a typo, not a machine (each loads pyarrow).
MAX_DECODERS = 64


class SinkError(RuntimeError):
    """A record the sink cannot land; it stops in front of it rather than skip it."""


class TopicRestarted(SinkError):
    """A partition ends below the offset the warehouse holds for it: not the same log."""


@dataclass(frozen=True)
class SinkConfig:
    bootstrap_servers: str
    environments: tuple[str, ...]
    batch_rows: int = DEFAULT_BATCH_ROWS
    commit_interval_s: float = DEFAULT_COMMIT_INTERVAL_S
    group_id: str = DEFAULT_GROUP
    retry_max_s: float = 30.0
    #: How long a killed sink holds its partitions (HOOKLINE_SESSION_TIMEOUT).
    session_timeout_s: float = 30.0
    #: Processes that decode records into Arrow rows (warehouse.decoder); 0: this one.
    decoders: int = DEFAULT_DECODERS


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, sink: Sink) -> None:
        self.sink = sink

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        self.sink.forget(revoked)

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        await self.sink.position(assigned)


class Sink:
    def __init__(self, config: SinkConfig, catalog: Catalog) -> None:
        self.config = config
        self.writers = {
            table.topic(env): TableWriter(catalog, table, env)
            for env in config.environments
            for table in rows.TABLES
        }
        self.consumer: AIOKafkaConsumer | None = None
        self._buffer: dict[TopicPartition, PartitionBatch] = {}
        self._counts: dict[TopicPartition, int] = {}  # records (tombstones too) per part
        self._buffered = 0
        self._oldest: float | None = None  # monotonic time of the oldest buffered record
        self._base: dict[TopicPartition, int | None] = {}  # the table's offset, as we know it
        self._next: dict[TopicPartition, int] = {}  # the next offset we accept
        self._epoch: dict[TopicPartition, int] = defaultdict(int)  # bumped on every seek
        self._unpositioned: set[TopicPartition] = set()
        self._position_at = 0.0  # when to try positioning them again
        self._retry_at: float | None = None
        self._backoff = 1.0
        self._stop = asyncio.Event()
        self._ready_logged = False
        self._lag_at = 0.0
        #: The flush landing the previous batch while the next one is read (at most one).
        self._inflight: asyncio.Task[bool] | None = None
        #: Decodes records off this process while it runs (None: take() decodes them).
        self.decoders: DecoderPool | None = None

    def stop(self) -> None:
        self._stop.set()

    async def stopped(self) -> None:
        await self._stop.wait()

    # -- positions -----------------------------------------------------------------

    def forget(self, revoked: list[TopicPartition]) -> None:
        """Drop what was read from partitions another sink now owns: it re-reads them."""
        for tp in revoked:
            self._drop_buffer(tp)
            self._epoch[tp] += 1
            self._base.pop(tp, None)
            self._unpositioned.discard(tp)

    async def position(self, assigned: list[TopicPartition]) -> None:
        """Seek every assigned partition to the offset its table holds."""
        assert self.consumer is not None
        by_topic: dict[str, list[TopicPartition]] = defaultdict(list)
        for tp in assigned:
            by_topic[tp.topic].append(tp)
        for topic, group in by_topic.items():
            try:
                stored = await asyncio.to_thread(self.writers[topic].offsets)
            except WarehouseError as exc:
                log.error("cannot read positions of %s from the warehouse: %s", topic, exc)
                self._unpositioned.update(group)
                self.consumer.pause(*group)
                continue
            for tp in group:
                self._seek(tp, stored.get(tp.partition))
        if not self._ready_logged and assigned:
            self._ready_logged = True
            log.info(
                "sink ready: %d partition(s) assigned; landing %s",
                len(self.consumer.assignment()),
                ", ".join(sorted(w.identifier for w in self.writers.values())),
            )

    def _seek(self, tp: TopicPartition, offset: int | None) -> None:
        assert self.consumer is not None
        self._drop_buffer(tp)
        self._epoch[tp] += 1
        self._base[tp] = offset
        self._next[tp] = offset or 0
        # Offset 0 below the log start resets to the earliest (auto_offset_reset).
        self.consumer.seek(tp, offset or 0)
        if tp in self._unpositioned:
            self._unpositioned.discard(tp)
            if self._retry_at is None:
                self.consumer.resume(tp)

    def _drop_buffer(self, tp: TopicPartition) -> None:
        if self._buffer.pop(tp, None) is not None:
            self._counts.pop(tp, None)
            self._recount()

    def _recount(self) -> None:
        self._buffered = sum(self._counts.get(tp, 0) for tp in self._buffer)
        metrics.BUFFERED.set(self._buffered)
        if not self._buffer:
            self._oldest = None

    # -- records -------------------------------------------------------------------

    def take(self, tp: TopicPartition, messages: list[ConsumerRecord]) -> None:
        """Buffer a partition's records; raise :class:`SinkError` at one that cannot land."""
        if tp in self._unpositioned or tp not in self._base:
            return  # read before we positioned it: it will be read again
        writer = self.writers[tp.topic]
        expected = self._next.get(tp, 0)
        part = self._buffer.get(tp)
        if self.decoders is not None:
            self._hand_over(tp, writer, messages, part, expected)
            return
        taken = tombstones = 0
        try:
            for message in messages:
                if message.offset < expected:
                    continue  # fetched before a seek
                if part is None:
                    part = self._buffer[tp] = PartitionBatch(self._base[tp], message.offset)
                    self._counts[tp] = 0
                    if self._oldest is None:
                        self._oldest = time.monotonic()
                if message.value is None:
                    tombstones += 1
                else:
                    row = self._row(writer, tp, message)
                    if row is not None:
                        part.rows.append(row)
                part.next_offset = expected = message.offset + 1
                taken += 1
        finally:
            # Counted once per fetch: a metric's labels() per record cost more than its row.
            if taken:
                metrics.RECORDS_READ.labels(tp.topic).inc(taken)
                self._counts[tp] += taken
                self._buffered += taken
            if tombstones:
                metrics.ROWS_SKIPPED.labels(writer.identifier, "tombstone").inc(tombstones)
            self._next[tp] = expected
            metrics.BUFFERED.set(self._buffered)

    def _hand_over(
        self,
        tp: TopicPartition,
        writer: TableWriter,
        messages: list[ConsumerRecord],
        part: PartitionBatch | None,
        expected: int,
    ) -> None:
        """take() with decoder processes: the fetch's values become one decoder job."""
        assert self.decoders is not None
        start = 0  # a fetch's offsets ascend: only its head can predate a seek
        while start < len(messages) and messages[start].offset < expected:
            start += 1
        if start == len(messages):
            return
        if start:
            messages = messages[start:]
        if part is None:
            part = self._buffer[tp] = PartitionBatch(self._base[tp], messages[0].offset)
            self._counts[tp] = 0
            if self._oldest is None:
                self._oldest = time.monotonic()
        job = self.decoders.submit(writer.table_def, [m.value for m in messages])
        part.decoding.append((job, messages))
        part.next_offset = self._next[tp] = messages[-1].offset + 1
        metrics.RECORDS_READ.labels(tp.topic).inc(len(messages))
        self._counts[tp] += len(messages)
        self._buffered += len(messages)
        metrics.BUFFERED.set(self._buffered)

    async def _resolve(self, tp: TopicPartition, part: PartitionBatch) -> None:
        """Turn a partition's decoder jobs into its rows and batches, in offset order.

        A record that goes the general way and stops the sink (:class:`SinkError`)
        cuts the partition in front of it: its rows before it stay, for the commit
        that precedes the stop, and everything after it goes.
        """
        writer = self.writers[tp.topic]
        jobs, part.decoding = part.decoding, []
        for job, messages in jobs:
            decoded: Decoded = await job
            if decoded.tombstones:
                metrics.ROWS_SKIPPED.labels(writer.identifier, "tombstone").inc(
                    len(decoded.tombstones)
                )
            for i, reason, mapping in decoded.unlandable:
                error = MappingError(reason) if mapping else CodecError(reason)
                self._unlandable(writer, tp, messages[i], error)
            for i in decoded.general:
                try:
                    row = self._row(writer, tp, messages[i])
                except SinkError:
                    before = i - sum(1 for s in decoded.skipped() if s < i)
                    part.batches.append(decoded.rows.slice(0, before))
                    part.next_offset = messages[i].offset
                    raise
                if row is not None:
                    part.rows.append(row)
            part.batches.append(decoded.rows)

    def _check_same_log(self, tp: TopicPartition) -> None:
        """Raise :class:`TopicRestarted` when the fetched log ends below the table's offset.

        The high watermark comes with every fetch (the embedded broker's
        ListOffsets answer can be low; its fetch's is right). On the log the
        table was landed from it is never below an offset the table holds.
        """
        assert self.consumer is not None
        stored, high = self._base.get(tp), self.consumer.highwater(tp)
        if stored is None or high is None or high >= stored:
            return
        raise TopicRestarted(
            f"{tp.topic} partition {tp.partition} ends at offset {high}, below offset "
            f"{stored} which the warehouse's table {self.writers[tp.topic].identifier} "
            "already holds: the topic was recreated or this warehouse was landed from "
            "another Kafka cluster (an embedded broker starts empty). The sink stops rather "
            "than skip records; land this cluster into a new warehouse (--warehouse DIR or "
            "--catalog NAME)"
        )

    def _row(
        self, writer: TableWriter, tp: TopicPartition, message: ConsumerRecord
    ) -> rows.Row | None:
        """The record's row; None for a record no release could land (counted, logged).

        A record of a schema this release does not know stops the sink in
        front of it instead (:class:`SinkError`): a newer release lands it.
        """
        data = message.value
        read = writer.read_bytes
        if read is not None and data[: codec.HEADER_SIZE] == writer.header:
            # The table's record in today's schema: straight into its row.
            if type(data) is not bytes:
                data = bytes(data)
            error: Exception
            try:
                row, end = read(data, codec.HEADER_SIZE)
            except MappingError as exc:
                error = exc
            except Exception as exc:  # ValueError: truncated, not UTF-8, out of range...
                error = CodecError(f"corrupt {writer.table_def.record} record: {exc}")
            else:
                if end == len(data):
                    return row
                trailing = len(data) - end
                error = CodecError(f"{trailing} trailing bytes after a {writer.table_def.record}")
            self._unlandable(writer, tp, message, error)
            return None
        try:
            name, value = codec.decode(data)
            if name != writer.table_def.record:
                where = f"{tp.topic} partition {tp.partition} offset {message.offset}"
                raise SinkError(f"{where}: a {name}, expected a {writer.table_def.record}")
            return writer.read_row(value)  # type: ignore[no-any-return]
        except UnknownSchema as exc:
            where = f"{tp.topic} partition {tp.partition} offset {message.offset}"
            raise SinkError(
                f"{where} cannot be landed ({exc}). The sink stops in front of it and "
                "committed everything before it; a hookline release whose schemas/ knows "
                "this record resumes exactly there"
            ) from exc
        except (CodecError, MappingError) as exc:
            self._unlandable(writer, tp, message, exc)
            return None

    def _unlandable(
        self, writer: TableWriter, tp: TopicPartition, message: ConsumerRecord, exc: Exception
    ) -> None:
        # Corrupt, or a value no table column can hold: no release would
        # land it, and stopping here would stop every later row.
        metrics.ROWS_SKIPPED.labels(writer.identifier, "unlandable").inc()
        where = f"{tp.topic} partition {tp.partition} offset {message.offset}"
        log.error("%s cannot be landed (%s); skipped, it stays on its topic", where, exc)

    def due(self) -> bool:
        if not self._buffer:
            return False
        if self._buffered >= self.config.batch_rows:
            return True
        return (
            self._oldest is not None
            and time.monotonic() - self._oldest >= self.config.commit_interval_s
        )

    # -- commits -------------------------------------------------------------------

    async def flush(self) -> bool:
        """Land the buffer; False (and the buffer kept) when the warehouse failed."""
        if not self._buffer:
            return True
        assert self.consumer is not None
        taken, counts = self._buffer, self._counts
        epochs = {tp: self._epoch[tp] for tp in taken}
        self._buffer, self._counts, self._buffered, self._oldest = {}, {}, 0, None
        by_topic: dict[str, dict[int, PartitionBatch]] = defaultdict(dict)
        for tp, part in taken.items():
            by_topic[tp.topic][tp.partition] = part
        stop: SinkError | None = None
        for tp, part in taken.items():
            try:
                await self._resolve(tp, part)
            except SinkError as exc:  # the partition ends in front of the record
                stop = stop or exc
        landed: dict[TopicPartition, int] = {}
        failed: list[TopicPartition] = []
        # The tables are independent: their commits run side by side, so one's
        # Parquet encoding and file writes (outside the GIL) overlap another's.
        outcomes = await asyncio.gather(
            *(self._commit(topic, parts) for topic, parts in sorted(by_topic.items()))
        )
        for topic, parts, result in outcomes:
            writer = self.writers[topic]
            if result is None:
                failed += [TopicPartition(topic, p) for p in parts]
                continue
            self._record(writer, result)
            for partition, offset in result.committed.items():
                tp = TopicPartition(topic, partition)
                if self._epoch[tp] == epochs[tp]:
                    self._base[tp] = offset
                    landed[tp] = offset
                    newer = self._buffer.get(tp)
                    if newer is not None:  # read meanwhile: it continues from the new offset
                        newer.base = offset
            for partition, offset in result.fenced.items():
                tp = TopicPartition(topic, partition)
                if self._epoch[tp] == epochs[tp] and tp in self.consumer.assignment():
                    log.warning(
                        "%s partition %d was moved on to %s by another writer; re-reading "
                        "from there",
                        topic,
                        partition,
                        offset,
                    )
                    self._seek(tp, offset)
        for tp in failed:  # back in front of anything read since
            if self._epoch[tp] == epochs[tp]:
                part, count = taken[tp], counts[tp]
                newer = self._buffer.get(tp)
                if newer is not None:
                    part.rows += newer.rows
                    part.batches += newer.batches
                    part.decoding += newer.decoding
                    part.next_offset = newer.next_offset
                    count += self._counts[tp]
                self._buffer[tp] = part
                self._counts[tp] = count
        if failed:
            self._recount()
            self._oldest = time.monotonic()
        if landed:
            try:  # only a copy, for lag dashboards: positions come from the tables
                await self.consumer.commit(landed)
            except KafkaError as exc:
                log.debug("group offset commit skipped: %s", exc)
        self.update_lag(force=True)
        if stop is not None:
            raise stop
        return not failed

    async def _commit(
        self, topic: str, parts: dict[int, PartitionBatch]
    ) -> tuple[str, dict[int, PartitionBatch], CommitResult | None]:
        """One table's commit in a thread; None for a warehouse failure (logged)."""
        writer = self.writers[topic]
        try:
            return topic, parts, await asyncio.to_thread(writer.commit, parts)
        except WarehouseError as exc:
            metrics.COMMITS.labels(writer.identifier, "failed").inc()
            log.error("%s", exc)
            return topic, parts, None

    def _record(self, writer: TableWriter, result: CommitResult) -> None:
        name = writer.identifier
        metrics.COMMIT_SECONDS.labels(name).observe(result.seconds)
        if result.committed:
            metrics.COMMITS.labels(name, "committed").inc()
            metrics.LAST_COMMIT.labels(name).set(time.time())
            metrics.ROWS_WRITTEN.labels(name).inc(result.rows_written)
        if result.fenced:
            metrics.COMMITS.labels(name, "fenced").inc()
        if result.conflicts:
            metrics.COMMITS.labels(name, "conflict").inc(result.conflicts)
        if result.duplicates:
            metrics.ROWS_SKIPPED.labels(name, "duplicate").inc(result.duplicates)
        if result.stale:
            metrics.ROWS_SKIPPED.labels(name, "stale").inc(result.stale)
        if result.committed:
            skipped = []
            if result.duplicates:
                skipped.append(f"{result.duplicates} duplicate")
            if result.stale:
                skipped.append(f"{result.stale} stale")
            log.info(
                "%s: +%d row(s)%s in %.2fs; offsets %s",
                name,
                result.rows_written,
                f" ({', '.join(skipped)} skipped)" if skipped else "",
                result.seconds,
                ", ".join(f"p{p}={o}" for p, o in sorted(result.committed.items())),
            )

    def update_lag(self, force: bool = False) -> None:
        """Records in the assigned partitions that no table holds yet, per topic."""
        now = time.monotonic()
        if self.consumer is None or (not force and now - self._lag_at < 5):
            return
        self._lag_at = now
        lag: dict[str, int] = dict.fromkeys(self.writers, 0)
        for tp in self.consumer.assignment():
            high = self.consumer.highwater(tp)
            if high is not None:
                lag[tp.topic] += max(0, high - (self._base.get(tp) or 0))
        for topic, value in lag.items():
            metrics.LAG.labels(topic).set(value)

    # -- the loop ------------------------------------------------------------------

    async def _start_consumer(self) -> AIOKafkaConsumer | None:
        attempt = 0
        while not self._stop.is_set():
            attempt += 1
            consumer = AIOKafkaConsumer(
                isolation_level="read_committed",
                bootstrap_servers=self.config.bootstrap_servers,
                group_id=self.config.group_id,
                enable_auto_commit=False,
                auto_offset_reset="earliest",
                client_id="hookline-sink",
                session_timeout_ms=int(self.config.session_timeout_s * 1000),
                heartbeat_interval_ms=max(100, int(self.config.session_timeout_s * 1000 / 3)),
            )
            try:
                await consumer.start()
                return consumer
            except (KafkaError, OSError) as exc:
                await consumer.stop()
                if attempt == 1 or attempt % 10 == 0:
                    log.warning("waiting for Kafka at %s (%s)", self.config.bootstrap_servers, exc)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), 1.0)
        return None

    async def run(self) -> None:
        consumer = await self._start_consumer()
        if consumer is None:
            return
        self.consumer = consumer
        if self.config.decoders > 0:
            self.decoders = DecoderPool(self.config.decoders)
            await self.decoders.start()
        consumer.subscribe(topics=sorted(self.writers), listener=_Rebalance(self))
        try:
            while not self._stop.is_set():
                await self._step()
            await self._settle()
            waiting = self._buffered
            if self._buffer and not await self.flush():
                log.error("stopping with %d record(s) not landed; they are read again", waiting)
        finally:
            await consumer.stop()
            if self.decoders is not None:
                self.decoders.close()

    async def _step(self) -> None:
        assert self.consumer is not None
        now = time.monotonic()
        if self._unpositioned and self._retry_at is None and now >= self._position_at:
            self._position_at = now + 5.0  # the warehouse was unreachable: not every loop
            await self.position(sorted(self._unpositioned & self.consumer.assignment()))
        if self._retry_at is not None:
            self.consumer.pause(*self.consumer.assignment())
            if now >= self._retry_at:
                if await self.flush():
                    log.info("warehouse reachable again; resuming")
                    self._retry_at, self._backoff = None, 1.0
                    self.consumer.resume(*(self.consumer.assignment() - self._unpositioned))
                else:
                    self._fail_later()
        data = await self.consumer.getmany(timeout_ms=200, max_records=self.config.batch_rows)
        for tp in self.consumer.assignment():
            self._check_same_log(tp)  # before landing anything of this fetch
        if self._inflight is not None and self._inflight.done():
            await self._settle()
        try:
            for tp, messages in data.items():
                self.take(tp, messages)
        except SinkError:
            await self._settle()
            await self.flush()  # everything in front of the bad record
            raise
        if self._retry_at is None and self.due():
            # One batch lands while the next is read and decoded; a third waits.
            await self._settle()
            if self._retry_at is None:
                self._inflight = asyncio.create_task(self.flush())
        self.update_lag()

    async def _settle(self) -> None:
        """Wait for the flush in flight; on a warehouse failure, retry later."""
        if self._inflight is None:
            return
        try:
            ok = await self._inflight
        finally:
            self._inflight = None
        if not ok:
            self._fail_later()

    def _fail_later(self) -> None:
        assert self.consumer is not None
        self._retry_at = time.monotonic() + self._backoff
        log.error(
            "warehouse commit failed; %d record(s) wait in memory, nothing is committed to "
            "Kafka; retrying in %.0fs",
            self._buffered,
            self._backoff,
        )
        self._backoff = min(self._backoff * 2, self.config.retry_max_s)
        self.consumer.pause(*self.consumer.assignment())
