"""The seam: everything hookline takes from Faust, mode and aiokafka beyond their public API.

Every read or write of a private attribute of a Faust, mode or aiokafka
object is a function here, and nowhere else: ruff's ``SLF`` rule is on for
every other module (pyproject.toml). Each function says what it relies on,
why the public API does not do, and which mechanism needs it; those that
exist only for a quirk of the embedded broker (Tansu) or of Faust say so.
Each records the names it relies on with :func:`relies_on`, and
tests/unit/test_internals.py fails when one of them is missing from the
installed (pinned) faust-streaming, mode or aiokafka: the place to look
after an upgrade.

The Faust subclasses in streams/transport.py (the worker's consumer and its
thread) override and call underscore methods of the classes they extend,
which no attribute access shows: :data:`SUBCLASS_RELIANCE` names them, and
the same test checks that they exist and that the list is complete.

docs/design.md, "What sits behind the seam", lists the mechanisms built on
this module and which of them Kafka makes unnecessary.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any, NamedTuple, TypeVar

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.consumer.fetcher import Fetcher
from aiokafka.consumer.group_coordinator import GroupCoordinator
from aiokafka.consumer.subscription_state import (
    Assignment,
    Subscription,
    SubscriptionState,
    TopicPartitionState,
)
from faust.stores import memory, rocksdb
from faust.transport.conductor import Conductor
from faust.transport.consumer import Consumer as FaustConsumer
from faust.transport.drivers import aiokafka as driver
from mode import Service
from mode.utils.queues import FlowControlEvent, ThrowableQueue

F = TypeVar("F", bound=Callable[..., Any])

#: (owner class, attribute name, the seam function relying on it): every
#: non-public name the functions below use, checked by tests/unit/test_internals.py.
RELIED_ON: list[tuple[type, str, str]] = []


def relies_on(*uses: tuple[type, str]) -> Callable[[F], F]:
    """Record that the decorated function reads or writes ``owner.name`` for each use."""

    def record(function: F) -> F:
        RELIED_ON.extend((owner, name, function.__name__) for owner, name in uses)
        return function

    return record


# -- The worker's consumer (streams/transport.py) --------------------------------


@relies_on((AIOKafkaConsumer, "_fetch_max_wait_ms"))
def set_fetch_max_wait(consumer: AIOKafkaConsumer, ms: int) -> None:
    """Set the broker's fetch wait on a consumer Faust made, before it starts.

    Faust passes ``fetch_max_wait_ms=1500`` to the consumer it makes, with no
    setting to change it; aiokafka reads the attribute when ``start()`` makes
    its fetcher. Tansu's quirk: it answers a fetch only when the wait ends,
    where Kafka answers as soon as a record arrives, so on Tansu every hop
    between stages waited it out. On Kafka the wait costs no latency and this
    only applies ``HOOKLINE_FETCH_MAX_WAIT_MS``.
    """
    consumer._fetch_max_wait_ms = ms


@relies_on((AIOKafkaConsumer, "_isolation_level"))
def set_isolation_level(consumer: AIOKafkaConsumer, level: str) -> None:
    """Set ``read_committed`` (or not) on a consumer Faust made, before it starts.

    Faust reads only committed records in its own exactly-once mode alone,
    which also replaces its producer, and has no setting for it otherwise.
    The worker reads committed records in both of its modes (its own
    transactional writes, streams/exactly_once.py, and any transactional
    writer upstream), so the consumer is told here; aiokafka reads the
    attribute when ``start()`` makes its fetcher.
    """
    consumer._isolation_level = level


@relies_on((AIOKafkaConsumer, "_fetcher"), (Fetcher, "_prefetch_backoff"))
def set_prefetch_backoff(consumer: AIOKafkaConsumer, seconds: float) -> None:
    """Shorten how long aiokafka holds back a fetch while records are buffered.

    aiokafka's fetcher sends no fetch to a broker while one of its partitions
    holds records younger than ``prefetch_backoff`` (100 ms), a constructor
    argument of the fetcher that the consumer does not expose. Call after the
    consumer started (the fetcher is made by ``start()``). Not a Tansu quirk:
    every broker hosting both an input and the next stage's topic shows it.
    """
    consumer._fetcher._prefetch_backoff = seconds


@relies_on(
    (AIOKafkaConsumer, "_subscription"),
    (SubscriptionState, "subscription"),
    (SubscriptionState, "is_assigned"),
    (Subscription, "assignment"),
    (Assignment, "state_value"),
    (TopicPartitionState, "has_valid_position"),
    (TopicPartitionState, "position"),
)
def fetch_positions(consumer: AIOKafkaConsumer, partitions: list[Any]) -> dict[Any, int]:
    """The next offset the consumer will fetch, per assigned partition that has one.

    For the contiguity check (streams/positions.py): records fetched but
    never delivered, because Faust drops a poll that arrives while its flow
    is paused, are read again. ``AIOKafkaConsumer.position()`` waits for a
    position to be set and must run in the consumer's thread; this reads
    aiokafka's subscription state without waiting. Exists for Faust's quirk,
    on any broker.
    """
    subscription = consumer._subscription
    assignment = subscription.subscription and subscription.subscription.assignment
    if assignment is None:
        return {}
    positions = {}
    for tp in partitions:
        if subscription.is_assigned(tp):
            state = assignment.state_value(tp)
            if state is not None and state.has_valid_position:
                positions[tp] = state.position
    return positions


@relies_on((Service, "_stopped"))
def stopped_flag(service: Any) -> Callable[[], bool]:
    """The bound ``is_set`` of a mode service's stop flag, read once per poll.

    mode's public ``should_stop`` property reads the same flag (and the
    crashed flag); Faust's drain loop, which streams/transport.py copies,
    binds the flag's ``is_set`` once and calls it every iteration.
    """
    is_set: Callable[[], bool] = service._stopped.is_set
    return is_set


@relies_on((FlowControlEvent, "_queues"), (ThrowableQueue, "_queue"))
def flow_control_queued(flow: FlowControlEvent) -> Iterator[Any]:
    """Every item in the queues Faust's flow control manages, oldest first per queue.

    ``FlowControlEvent.resume()`` clears those queues (the stages' input
    queues among them) and keeps no record of what it dropped; the queues
    are listed only in its private weak set, and an asyncio queue's items
    only in its private deque. For reading the dropped input records again
    (streams/transport.py, ``read_cleared_records_again``): a Faust quirk,
    on any broker.
    """
    for queue in flow._queues:
        yield from queue._queue  # type: ignore[attr-defined]


@relies_on((Conductor, "_tp_to_callback_lock"), (Conductor, "_tp_index"))
def conductor_channels(conductor: Conductor, tp: Any) -> set[Any] | None:
    """The channels the Conductor delivers ``tp``'s records to; None while it re-indexes.

    The Conductor indexes channels by partition when partitions are assigned,
    under a lock it also holds while changing subscriptions; it offers no
    public lookup. Used to hand a stage's input records straight to its
    queue, skipping Faust's per-record handler (a CPU cost, on any broker).
    """
    if conductor._tp_to_callback_lock.locked():
        return None
    channels: set[Any] = conductor._tp_index.get(tp) or set()
    return channels


# -- Group membership (streams/membership.py) -------------------------------------


class GroupMember(NamedTuple):
    """The worker's place in its consumer group, as its consumer knows it."""

    group_id: str
    generation: int
    member_id: str
    #: The group coordinator's node id; None while it is unknown.
    coordinator_id: int | None


@relies_on(
    (driver.Consumer, "_thread"),
    (driver.AIOKafkaConsumerThread, "_ensure_consumer"),
    (AIOKafkaConsumer, "_coordinator"),
    (GroupCoordinator, "group_id"),
    (GroupCoordinator, "generation"),
    (GroupCoordinator, "member_id"),
    (GroupCoordinator, "coordinator_id"),
)
def group_member(app: Any) -> GroupMember:
    """Group, generation, member id and coordinator of the worker's consumer, read together.

    For the membership check before a batch is sent (streams/membership.py),
    which fences a frozen worker's late writes without Kafka transactions;
    transactions make it unnecessary in exactly-once mode. aiokafka keeps
    these on its group coordinator, which the consumer does not expose (the
    consumer thread may reset them at any time, hence one read of all four).
    """
    coordinator = app.consumer._thread._ensure_consumer()._coordinator
    return GroupMember(
        coordinator.group_id,
        coordinator.generation,
        coordinator.member_id,
        coordinator.coordinator_id,
    )


@relies_on((FaustConsumer, "_committed_offset"))
def committed_offset(app: Any, tp: Any) -> int | None:
    """The offset Faust last committed for ``tp``, as the worker's consumer knows it.

    For the outbox redelivery rule (streams/redelivery.py): an order's
    outbox is owed again while its input record is not committed. Faust's
    consumer keeps the offsets it committed privately; asking the broker
    (``committed()``) would cost a round trip per order read. Transactions
    make the rule unnecessary in exactly-once mode (outputs and the commit
    land together).
    """
    offset: int | None = app.consumer._committed_offset.get(tp)
    return offset


# -- Sending and the local stores (streams/batch.py, streams/expiry.py) ----------


@relies_on((driver.Producer, "_ensure_producer"))
def aiokafka_producer(app: Any) -> AIOKafkaProducer:
    """The started aiokafka producer under Faust's producer.

    A stage sends a whole batch and awaits all acknowledgements together
    (streams/batch.py); Faust's ``send()`` goes through its own per-record
    buffer and callbacks. Faust gives no public access to the aiokafka
    producer it made. A CPU cost, on any broker.
    """
    producer: AIOKafkaProducer = app.producer._ensure_producer()
    return producer


@relies_on((rocksdb.Store, "_db_for_partition"), (memory.Store, "_key_partition"))
def store_get(store: Any, key: bytes, partition: int) -> bytes | None:
    """A table's stored value for ``key`` in ``partition``, straight from the store.

    Faust's table API finds the partition from a context variable (the
    current event) through several layers, at a CPU cost on every read and
    write; RocksDB keeps one database per partition, reachable only through
    a private method. The memory store needs no partition to read.
    """
    if hasattr(store, "_db_for_partition"):  # RocksDB: one database per partition
        value: bytes | None = store._db_for_partition(partition).get(key)
        return value
    return store.data.get(key)  # type: ignore[no-any-return]


@relies_on((rocksdb.Store, "_db_for_partition"), (memory.Store, "_key_partition"))
def store_put(store: Any, key: bytes, value: bytes, partition: int) -> None:
    """Write ``key`` in ``partition``'s store (see :func:`store_get`).

    The memory store also records the key's partition, in the map Faust
    keeps for keys it restored from the changelog: expiry and a partition's
    hand-over find a partition's keys there (:func:`key_partitions`).
    """
    if hasattr(store, "_db_for_partition"):
        store._db_for_partition(partition).put(key, value)
    else:
        store.data[key] = value
        store._key_partition[key] = partition


@relies_on((rocksdb.Store, "_db_for_partition"), (memory.Store, "_key_partition"))
def store_delete(store: Any, key: bytes, partition: int) -> None:
    """Delete ``key`` from ``partition``'s store (see :func:`store_put`)."""
    if hasattr(store, "_db_for_partition"):
        store._db_for_partition(partition).delete(key)
    else:
        store.data.pop(key, None)
        store._key_partition.pop(key, None)


@relies_on((rocksdb.Store, "_dbs"))
def partition_dbs(store: Any) -> Mapping[int, Any] | None:
    """RocksDB's open database per partition; None for a store that has none (memory).

    Expiry scans a partition's database for due keys (streams/expiry.py);
    Faust's store iterates every partition through the table API only.
    """
    if hasattr(store, "_dbs"):
        dbs: Mapping[int, Any] = store._dbs
        return dbs
    return None


@relies_on((memory.Store, "_key_partition"))
def key_partitions(store: Any) -> Mapping[bytes, int]:
    """The memory store's partition per key (Faust's for restored keys, ours for writes)."""
    partitions: Mapping[bytes, int] = store._key_partition
    return partitions


# -- Faust subclasses -------------------------------------------------------------

#: Per Faust class that streams/transport.py extends: the underscore
#: attributes of it that hookline's subclass overrides, calls or sets
#: through ``self`` or ``super()``, with why. None exists for Tansu alone
#: except ``_highwaters`` (Tansu's ListOffsets answer, streams/end_offsets.py).
SUBCLASS_RELIANCE: dict[type, dict[str, str]] = {
    driver.AIOKafkaConsumerThread: {
        "_create_worker_consumer": "extended to set the fetch wait (set_fetch_max_wait)",
        "_ensure_consumer": "the aiokafka consumer, for the settings above",
        "_highwaters": "end offsets raised to a fetch's high watermark: Tansu's quirk only",
    },
    driver.Consumer: {
        "_new_consumer_thread": "makes hookline's consumer thread",
        "_drain_messages": "Faust's loop copied, one delivery race per fetch, contiguity check",
        "_wait_next_records": "the poll itself, as Faust's getmany does",
        "_buffered_partitions": "partitions with records buffered, as Faust's getmany reads",
        "_read_offset": "Faust's read bookkeeping, kept by perform_seek and the drain loop",
        "_committed_offset": "Faust's commit bookkeeping, kept by perform_seek",
        "_seek": "seeks a partition (perform_seek, reading skipped records again)",
        "_add_gap": "acknowledges a hole in the log for Faust's commit",
        "_commit_every": "Faust's commit-every-N setting, read by the drain loop",
        "_n_acked": "Faust's acks since the last commit, read by the drain loop",
        "_stopped": "the consumer's stop flag (stopped_flag), read by the drain loop",
        "_thread": "the consumer thread, asked for fetch positions",
        "_commit": "exactly once: the batches' transactions commit the offsets instead",
    },
}
