"""Exactly once on Apache Kafka: one transaction per batch and input partition.

A stage's batch is split by input partition. Everything a partition's part
writes (its outputs, its tables' changelog records) and the consumer offset
past its last input are sent by that partition's transactional producer and
committed together (``send_offsets_to_transaction``, then
``commit_transaction``), or not at all. Only then does the local store take
the table writes: a worker killed at any point leaves the store behind the
changelog, never ahead, and the inputs are read again from the offset the
same transaction committed.

Zombies are fenced by the broker: each input partition has its own
transactional id, ``hookline-<group>-<topic>-<partition>``, and a producer is
started (``InitProducerId``, which aborts anything the previous owner left
open and bumps the epoch) only when the partition is assigned. A worker that
lost the partition meanwhile (frozen past its session timeout, cut off from
the coordinator) fails on its next transactional request with
``ProducerFenced``; its batch is dropped unsent, as a fenced batch is in
at-least-once mode. aiokafka's ``TxnOffsetCommit`` is version 0, without the
consumer-group fencing of KIP-447, hence one id per input partition (as Faust
and Kafka Streams' ``exactly_once`` do) rather than one per worker.

Consumers of the internal topics and the changelogs read ``read_committed``
(streams/transport.py). In this mode the worker's own protection against a
stale writer (the membership check before a flush, generation stamps on
changelog records, the outbox rule of ``orders``) does not run: the broker
does all of it. The reasoning, and what a consumer may rely on, is in
docs/design.md ("Exactly once on Kafka") and docs/consumers.md.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import os
import signal
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import (
    InvalidProducerEpoch,
    KafkaError,
    ProducerFenced,
    TransactionalIdAuthorizationFailed,
    UnknownError,
    UnsupportedVersionError,
)
from faust.types import TP
from hookline.streams.membership import Fenced

log = logging.getLogger("hookline.worker")

T = TypeVar("T")

#: Errors that mean another producer took this transactional id over: the
#: partition moved, and this batch must be dropped, never retried.
FENCING_ERRORS: tuple[type[BaseException], ...] = (
    ProducerFenced,
    InvalidProducerEpoch,
    TransactionalIdAuthorizationFailed,
)

#: Test-only fault injection: ``HOOKLINE_KILL_IN_TRANSACTION=<stage>`` makes the
#: worker kill itself (SIGKILL) in that stage's first batch with outputs, once
#: they are sent and before its input offsets are committed: mid-transaction
#: (exactly once), or between the acknowledgements and the offset commit (at
#: least once, streams/pipeline.py).
_KILL_IN_TRANSACTION = set(
    filter(None, os.environ.get("HOOKLINE_KILL_IN_TRANSACTION", "").split(","))
)


def maybe_killed_in_transaction(stage: str) -> None:
    """Test-only: die here if ``HOOKLINE_KILL_IN_TRANSACTION`` names the stage."""
    if stage in _KILL_IN_TRANSACTION:
        os.kill(os.getpid(), signal.SIGKILL)


#: Time allowed to read one changelog partition's tail (a zombie's open
#: transaction holds it until the transaction times out: 60 s by default).
PROBE_TIMEOUT_S = 120.0

#: How long a worker asks a cluster that does not answer whether it has transactions.
PROBE_PATIENCE_S = 60.0

#: The transactional id a probe uses to learn whether the broker has transactions.
PROBE_ID = "hookline-transactions-probe"


class Guarantee(enum.Enum):
    EXACTLY_ONCE = "exactly_once"
    AT_LEAST_ONCE = "at_least_once"


class TransactionsUnsupported(RuntimeError):
    """Exactly once was asked for, and the broker has no transactions."""


class TransactionsUnknown(TransactionsUnsupported):
    """The broker could not say whether it has transactions, or refused this worker them."""


async def broker_has_transactions(
    client_settings: Mapping[str, Any], patience_s: float = PROBE_PATIENCE_S
) -> bool:
    """Can a producer initialise a transactional id on this cluster?

    Apache Kafka answers ``InitProducerId`` for a transactional id; the
    embedded broker (Tansu) refuses it at once (an unknown error), which is
    the only answer read as "no transactions". A cluster that cannot answer
    yet (starting, its transaction log not ready) is asked again for
    ``patience_s``, then :class:`TransactionsUnknown` is raised: a worker
    never falls back to at least once because Kafka was slow.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + patience_s
    while True:
        producer = AIOKafkaProducer(
            **client_settings, transactional_id=PROBE_ID, request_timeout_ms=10_000
        )
        try:
            await asyncio.wait_for(producer.start(), 30.0)
            return True
        except (UnknownError, UnsupportedVersionError) as exc:
            log.debug("transactions probe refused: %r", exc)
            return False
        except TransactionalIdAuthorizationFailed as exc:
            raise TransactionsUnknown(
                f"the worker may not use transactional ids ({exc!r}): allow it to write "
                "transactional ids starting with 'hookline-' (docs/operations.md), or set "
                "HOOKLINE_PROCESSING_GUARANTEE=at_least_once"
            ) from exc
        except (KafkaError, TimeoutError, OSError) as exc:
            if loop.time() > deadline:
                raise TransactionsUnknown(
                    f"could not learn whether the broker has transactions: {exc!r}"
                ) from exc
            log.info("transactions probe: no answer yet (%r); asking again", exc)
            await asyncio.sleep(1.0)
        finally:
            await producer.stop()


async def resolve_guarantee(wanted: str | None, client_settings: Mapping[str, Any]) -> Guarantee:
    """The guarantee in force: ``wanted``, or exactly once where the broker allows it."""
    if wanted == Guarantee.AT_LEAST_ONCE.value:
        return Guarantee.AT_LEAST_ONCE
    supported = await broker_has_transactions(client_settings)
    if wanted == Guarantee.EXACTLY_ONCE.value and not supported:
        raise TransactionsUnsupported(
            "HOOKLINE_PROCESSING_GUARANTEE=exactly_once, but the broker has no transactions "
            "(the embedded broker has none): use Apache Kafka (`hookline broker --kafka`), "
            "or at_least_once"
        )
    return Guarantee.EXACTLY_ONCE if supported else Guarantee.AT_LEAST_ONCE


def transactional_id(group: str, tp: TP) -> str:
    return f"{group}-{tp.topic}-{tp.partition}"


class PartitionProducers:
    """One transactional producer per assigned input partition.

    Started when the partition is assigned (which fences every earlier
    owner's producer), stopped when it is revoked. A producer that was
    fenced is dropped at once, and the partition has none until it is
    assigned again: a batch of it is then dropped (:class:`Fenced`).
    """

    def __init__(
        self,
        group: str,
        client_settings: Callable[[], Mapping[str, Any]],
        is_input: Callable[[str], bool],
        producer_settings: Mapping[str, Any],
        make_producer: Callable[..., Any] = AIOKafkaProducer,
    ) -> None:
        self.group = group
        self._make_producer = make_producer
        self._client_settings = client_settings
        self._is_input = is_input
        self._producer_settings = dict(producer_settings)
        self._producers: dict[TP, AIOKafkaProducer] = {}
        #: Held by a commit, and by a stop: a producer never stops mid-transaction.
        self._locks: dict[TP, asyncio.Lock] = {}

    def lock(self, tp: TP) -> asyncio.Lock:
        lock = self._locks.get(tp)
        if lock is None:
            lock = self._locks[tp] = asyncio.Lock()
        return lock

    def producer(self, tp: TP) -> AIOKafkaProducer:
        producer = self._producers.get(tp)
        if producer is None:
            raise Fenced(f"no transactional producer for {tp.topic}[{tp.partition}]")
        return producer

    async def assigned(self, partitions: Iterable[TP]) -> None:
        """Start a producer for each input partition newly assigned."""
        new = [
            TP(tp.topic, tp.partition)
            for tp in partitions
            if self._is_input(tp.topic) and TP(tp.topic, tp.partition) not in self._producers
        ]
        if new:
            await asyncio.gather(*(self._start(tp) for tp in new))
            log.info("exactly once: %d transactional producers started", len(new))

    async def revoked(self, partitions: Iterable[TP]) -> None:
        gone = [TP(tp.topic, tp.partition) for tp in partitions]
        await asyncio.gather(*(self._stop(tp) for tp in gone if tp in self._producers))

    async def fenced(self, tp: TP) -> None:
        """Another owner took the partition's transactional id: drop this producer."""
        producer = self._producers.pop(tp, None)
        if producer is not None:
            await _stop_quietly(producer)

    async def stop(self) -> None:
        await self.revoked(list(self._producers))

    async def _start(self, tp: TP) -> None:
        producer = self._make_producer(
            **self._client_settings(),
            **self._producer_settings,
            transactional_id=transactional_id(self.group, tp),
        )
        await producer.start()
        self._producers[tp] = producer

    async def _stop(self, tp: TP) -> None:
        async with self.lock(tp):
            producer = self._producers.pop(tp, None)
            if producer is not None:
                await _stop_quietly(producer)


async def _stop_quietly(producer: AIOKafkaProducer) -> None:
    try:
        await producer.stop()
    except KafkaError as exc:  # fenced or aborted meanwhile: nothing to keep
        log.debug("transactional producer stopped with %r", exc)


class Transaction:
    """What one partition's part of a batch writes, committed with its input offset.

    Outputs and changelog records are collected (:meth:`send`), store writes
    are deferred (:meth:`after_commit`), and :meth:`commit` sends them all in
    one transaction with the offset past the last input, then applies the
    store writes with the offsets the changelog records got.
    """

    __slots__ = ("_after", "_sends", "group", "next_offset", "producers", "tp")

    def __init__(self, producers: PartitionProducers, tp: TP) -> None:
        self.producers = producers
        self.group = producers.group
        self.tp = tp
        #: The input offset to commit, set once the part is computed (None: none).
        self.next_offset: int | None = None
        self._sends: list[Any] = []
        self._after: list[Callable[[Mapping[tuple[str, int], int]], None]] = []

    def send(self, outputs: list[Any]) -> None:
        self._sends += outputs

    def after_commit(self, apply: Callable[[Mapping[tuple[str, int], int]], None]) -> None:
        """Call ``apply(last)`` once committed; ``last``: (topic, partition) -> last offset."""
        self._after.append(apply)

    async def commit(
        self,
        next_offset: int | None,
        send: Callable[[AIOKafkaProducer, list[Any]], Any],
        stage: str = "",
    ) -> None:
        """Send everything and the input offset ``next_offset`` in one transaction.

        ``send(producer, outputs)`` sends and waits for the acknowledgements,
        returning the last offset per (topic, partition) (streams/batch.py).
        Raises :class:`Fenced` when another owner took the partition over (the
        batch is to be dropped); any other failure is aborted and re-raised.
        """
        if not self._sends and next_offset is None:
            self._apply({})
            return
        tp = self.tp
        async with self.producers.lock(tp):
            producer = self.producers.producer(tp)
            try:
                await producer.begin_transaction()
                try:
                    last = await send(producer, self._sends)
                    if self._sends:
                        maybe_killed_in_transaction(stage)
                    if next_offset is not None:
                        await producer.send_offsets_to_transaction(
                            {TopicPartition(tp.topic, tp.partition): next_offset}, self.group
                        )
                    await producer.commit_transaction()
                except FENCING_ERRORS:
                    raise
                except BaseException:
                    await _abort(producer)
                    raise
            except FENCING_ERRORS as exc:
                await self.producers.fenced(tp)
                raise Fenced(f"{tp.topic}[{tp.partition}]: {exc!r}") from exc
        self._apply(last)

    def _apply(self, last: Mapping[tuple[str, int], int]) -> None:
        for apply in self._after:
            apply(last)
        self._after.clear()
        self._sends.clear()


async def _abort(producer: AIOKafkaProducer) -> None:
    try:
        await producer.abort_transaction()
    except (KafkaError, AssertionError) as exc:  # the broker aborts it on timeout anyway
        log.warning("aborting a transaction failed: %r", exc)


def by_partition(events: list[T], partition_of: Callable[[T], Any]) -> list[list[T]]:
    """``events`` in parts of one input partition each, in order of first appearance."""
    parts: dict[Any, list[T]] = {}
    for event in events:
        key = partition_of(event)
        part = parts.get(key)
        if part is None:
            part = parts[key] = []
        part.append(event)
    return list(parts.values())


async def committed_end_offsets(
    client_settings: Mapping[str, Any], stable: Mapping[TP, int]
) -> dict[TP, int]:
    """Per changelog partition, the offset after its last committed record.

    ``stable`` holds each partition's high watermark. Under transactions the
    record before it is a commit or abort marker, which no consumer ever
    receives: Faust's table recovery, waiting to be handed the record before
    the end offset, would never finish. Not the last stable offset: a
    transaction left open by a dead owner holds it back while committed
    records of the partition's other writer (``orders`` has two) follow. So
    each partition's tail is read ``read_committed``, from a little before
    the end and further back until a record is found (or the log start is
    reached: then nothing committed is there, and the end is the log start).
    """
    result = dict(stable)
    if not stable:
        return result
    probe = AIOKafkaConsumer(
        **client_settings,
        group_id=None,
        enable_auto_commit=False,
        isolation_level="read_committed",
        fetch_max_wait_ms=10,
    )
    await probe.start()
    try:
        partitions = [TopicPartition(tp.topic, tp.partition) for tp in stable]
        probe.assign(partitions)
        starts = await probe.beginning_offsets(partitions)
        for tp, end in stable.items():
            start = starts[TopicPartition(tp.topic, tp.partition)]
            if end is None or end <= start:
                continue
            result[tp] = await _last_committed(probe, tp, start, end)
    finally:
        await probe.stop()
    return result


async def _last_committed(probe: AIOKafkaConsumer, tp: TP, start: int, end: int) -> int:
    """The offset after the last record a read_committed reader gets in [start, end)."""
    partition = TopicPartition(tp.topic, tp.partition)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + PROBE_TIMEOUT_S
    window = 2
    while True:
        begin = max(end - window, start)
        probe.seek(partition, begin)
        last = None
        position = begin
        # To the high watermark: a read_committed reader passes a transaction
        # still open only once it ends (a dead owner's is aborted when the
        # partition's new producer starts; a zombie's at its timeout), and
        # committed records of another producer may follow it.
        while position < end:
            if loop.time() > deadline:
                raise KafkaError(f"{tp.topic}[{tp.partition}]: its tail could not be read")
            fetched = await probe.getmany(partition, timeout_ms=200)
            for record in fetched.get(partition, []):
                if record.offset < end:
                    last = record.offset
            position = await probe.position(partition)
        if last is not None:
            return last + 1
        if begin == start:
            return start
        window *= 16
