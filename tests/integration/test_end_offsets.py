"""Where a table recovery stops: the end offset a fetch reports.

On the embedded broker ListOffsets answers short after a multi-record batch;
a recovery that trusted it dropped the newest table writes (see
streams/end_offsets.py). On Kafka both agree; the test holds on either.
"""

from __future__ import annotations

import asyncio
import uuid

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from hookline.streams.end_offsets import fetched_end_offsets

from tests.support.broker import TestBroker


async def test_end_offsets_cover_every_record_of_a_lingered_batch(broker: TestBroker) -> None:
    bootstrap = broker.bootstrap_servers
    batched, single = (f"end-offsets-{uuid.uuid4().hex[:8]}-{n}" for n in range(2))
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=50)
    await producer.start()
    try:
        # Ten records lingered into one batch, as a worker's changelog writes are.
        sent = [await producer.send(batched, b"v%d" % i, key=b"k", partition=0) for i in range(10)]
        await asyncio.gather(*sent)
        await producer.send_and_wait(single, b"only", partition=0)
    finally:
        await producer.stop()
    tps = [TopicPartition(batched, 0), TopicPartition(single, 0)]
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await consumer.start()
    try:
        listed = await consumer.end_offsets(tps)
    finally:
        await consumer.stop()

    ends = await fetched_end_offsets({"bootstrap_servers": bootstrap}, listed)

    assert ends == {tps[0]: 10, tps[1]: 1}
    # Never below what ListOffsets said.
    assert all(ends[tp] >= listed[tp] for tp in tps)
