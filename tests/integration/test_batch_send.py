"""A stage's outputs, sent as one pre-built batch per partition (streams/batch.py).

The worker partitions its outputs itself and hands aiokafka whole batches:
every record must still land where Kafka's default partitioner puts its key
(consumers of ``orders.state`` rely on one order, one partition), in the
order it was sent, and the offsets it reports must be the records' own (the
changelog offsets a table store keeps come from them).
"""

from __future__ import annotations

import uuid
from collections import defaultdict

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.partitioner import DefaultPartitioner
from hookline.core.topics import TopicSpec, ensure_topics
from hookline.streams.batch import Output, send_acknowledged

from tests.support.broker import TestBroker

PARTITIONS = 4


async def read_all(bootstrap: str, topic: str, count: int) -> list[tuple[int, int, bytes, bytes]]:
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", group_id=None
    )
    await consumer.start()
    records: list[tuple[int, int, bytes, bytes]] = []
    try:
        while len(records) < count:
            batch = await consumer.getmany(timeout_ms=5000)
            assert batch, f"only {len(records)} of {count} records arrived"
            for tp, messages in batch.items():
                records += [(tp.partition, m.offset, m.key, m.value) for m in messages]
    finally:
        await consumer.stop()
    return records


async def test_batches_land_where_the_default_partitioner_puts_each_key(
    broker: TestBroker,
) -> None:
    bootstrap = broker.bootstrap_servers
    keyed, pinned = (f"batch-send-{uuid.uuid4().hex[:8]}-{n}" for n in range(2))
    await ensure_topics(
        bootstrap, [TopicSpec(keyed), TopicSpec(pinned)], PARTITIONS, replication_factor=1
    )
    # A small batch size, so some partitions need several batches.
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, max_batch_size=4096, acks="all")
    await producer.start()
    sends: list[Output] = []
    for i in range(300):
        key = f"ord-{i % 70:04d}".encode()  # keys repeat: several records per key
        value = b"v%04d" % i + (b"x" * 900 if i % 7 == 0 else b"")
        sends.append((keyed, key, value, None, None))
        if i % 3 == 0:  # explicit partitions (changelog records), with headers
            sends.append((pinned, key, value, i % PARTITIONS, [("h", b"%d" % i)]))
    try:
        last = await send_acknowledged(producer, sends)
    finally:
        await producer.stop()

    partitioner = DefaultPartitioner()
    every = list(range(PARTITIONS))
    for topic in (keyed, pinned):
        wanted = [s for s in sends if s[0] == topic]
        records = await read_all(bootstrap, topic, len(wanted))
        assert len(records) == len(wanted)
        by_partition: dict[int, list[bytes]] = defaultdict(list)
        for partition, _offset, key, value in sorted(records):
            by_partition[partition].append(value)
            if topic == keyed:
                assert partition == partitioner(key, every, every), key
        expected: dict[int, list[bytes]] = defaultdict(list)
        for _, key, value, partition, _ in wanted:
            if partition is None:
                partition = partitioner(key, every, every)
            expected[partition].append(value)
        assert by_partition == expected  # per partition: all, in send order
        newest = {p: max(o for q, o, _, _ in records if q == p) for p in by_partition}
        assert {p: o for (t, p), o in last.items() if t == topic} == newest
