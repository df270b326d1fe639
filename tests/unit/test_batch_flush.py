"""streams/batch.py: the order in which a batch's records reach Kafka and the store.

The rule under test: no changelog record is sent before every output of its
batch is acknowledged, and the local store is written only after the
changelog records are. A changelog record that lands without its outputs
makes a recovered table claim effects that were never published (a dedup
entry for a delivery whose events are missing: its retries are dropped).

The producer here is a recorder whose acknowledgements the test releases by
hand, so the checks see what was submitted while acks were still pending.
Kafka itself (partitions, offsets, batching on a broker) is covered by
tests/integration/test_batch_send.py.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import pytest
from hookline.streams import batch as batch_module
from hookline.streams.batch import Batch

CHANGELOG = "production.hookline.dedup-changelog"
OUTPUT = "production.hookline.order-inputs"


class Builder:
    """What send_acknowledged uses of aiokafka's BatchBuilder."""

    def __init__(self) -> None:
        self.records: list[tuple[bytes | None, bytes | None]] = []

    def append(
        self, *, key: bytes | None, value: bytes | None, timestamp: Any, headers: Any
    ) -> Any:
        self.records.append((key, value))
        return object()

    def close(self) -> None:
        pass

    def record_count(self) -> int:
        return len(self.records)


@dataclass
class Sent:
    topic: str
    partition: int
    count: int
    ack: asyncio.Future[Any]


@dataclass
class Producer:
    sent: list[Sent] = field(default_factory=list)
    offsets: dict[tuple[str, int], int] = field(default_factory=dict)

    async def partitions_for(self, topic: str) -> set[int]:
        return {0, 1, 2, 3}

    def create_batch(self) -> Builder:
        return Builder()

    async def send_batch(self, builder: Builder, topic: str, partition: int) -> asyncio.Future[Any]:
        ack: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.sent.append(Sent(topic, partition, builder.record_count(), ack))
        return ack

    def acknowledge(self, topic: str) -> None:
        """Acknowledge every pending send to ``topic``, as the broker would."""
        for sent in self.sent:
            if sent.topic == topic and not sent.ack.done():
                base = self.offsets.get((topic, sent.partition), 0)
                self.offsets[(topic, sent.partition)] = base + sent.count
                sent.ack.set_result(type("Metadata", (), {"offset": base})())

    def fail(self, topic: str) -> None:
        for sent in self.sent:
            if sent.topic == topic and not sent.ack.done():
                sent.ack.set_exception(RuntimeError("broker refused the batch"))

    def topics(self) -> list[str]:
        return [sent.topic for sent in self.sent]


@dataclass
class Store:
    """Faust's memory store, as Batch writes it."""

    data: dict[bytes, bytes] = field(default_factory=dict)
    _key_partition: dict[bytes, int] = field(default_factory=dict)
    persisted: dict[Any, int] = field(default_factory=dict)

    def set_persisted_offset(self, tp: Any, offset: int) -> None:
        self.persisted[tp] = offset


class Topic:
    def __init__(self, name: str) -> None:
        self.name = name

    def get_topic_name(self) -> str:
        return self.name


class App:
    def __init__(self, producer: Producer) -> None:
        self.consumer_generation_id = 4
        self.producer = type("FaustProducer", (), {"_ensure_producer": lambda _: producer})()


@dataclass
class Table:
    app: App
    data: Store = field(default_factory=Store)
    changelog_topic: Topic = field(default_factory=lambda: Topic(CHANGELOG))


@dataclass
class Message:
    partition: int
    generation_id: int = 4


@dataclass
class Event:
    message: Message


@pytest.fixture
def producer(monkeypatch: pytest.MonkeyPatch) -> Producer:
    async def member(app: Any, generation: int) -> None:
        return None

    monkeypatch.setattr(batch_module, "confirm_membership", member)
    return Producer()


def new_batch(producer: Producer) -> tuple[Batch, Table]:
    table = Table(App(producer))
    batch = Batch(table, encode=lambda value: value, decode=lambda data: data)  # type: ignore[arg-type]
    for partition, key in ((1, b"ord-1"), (2, b"ord-2")):
        event = Event(Message(partition))
        batch.send(Topic(OUTPUT), key, b"event of " + key)  # type: ignore[arg-type]
        batch.put(event, key, b"entry of " + key)  # type: ignore[arg-type]
    return batch, table


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_changelog_records_are_sent_only_after_the_outputs_are_acknowledged(
    producer: Producer,
) -> None:
    batch, table = new_batch(producer)
    flushing = asyncio.ensure_future(batch.flush())
    await settle()
    assert set(producer.topics()) == {OUTPUT}  # outputs only, while their acks are pending
    producer.acknowledge(OUTPUT)
    await settle()
    assert CHANGELOG in producer.topics()  # now the changelog
    assert table.data.data == {}  # and nothing in the store before its acks
    producer.acknowledge(CHANGELOG)
    await asyncio.wait_for(flushing, 1)
    assert table.data.data == {b"ord-1": b"entry of ord-1", b"ord-2": b"entry of ord-2"}
    assert sorted(tp.partition for tp in table.data.persisted) == [1, 2]


async def test_a_failed_output_sends_no_changelog_and_writes_nothing(producer: Producer) -> None:
    batch, table = new_batch(producer)
    flushing = asyncio.ensure_future(batch.flush())
    await settle()
    producer.fail(OUTPUT)
    with pytest.raises(RuntimeError):
        await asyncio.wait_for(flushing, 1)
    assert CHANGELOG not in producer.topics()
    assert table.data.data == {}


async def test_a_failed_changelog_send_writes_nothing_to_the_store(producer: Producer) -> None:
    batch, table = new_batch(producer)
    flushing = asyncio.ensure_future(batch.flush())
    await settle()
    producer.acknowledge(OUTPUT)
    await settle()
    producer.fail(CHANGELOG)
    with pytest.raises(RuntimeError):
        await asyncio.wait_for(flushing, 1)
    assert table.data.data == {}
