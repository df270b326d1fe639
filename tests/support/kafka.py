"""Reading hookline's topics in tests: decode every record with the codec."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from hookline.schemas import codec

TOMBSTONE = "tombstone"


@dataclass(frozen=True)
class Record:
    topic: str
    partition: int
    offset: int
    key: str
    schema: str
    value: dict[str, Any]
    raw: bytes | None


async def topic_partitions(
    bootstrap: str, topics: Iterable[str] | None = None
) -> list[TopicPartition]:
    """Every partition of ``topics`` (of every topic when None) that exists now, sorted.

    A consumer's ``partitions_for_topic`` knows only the topics it tracks: Tansu's
    metadata answers list every topic regardless, Kafka's do not, so ask directly.
    """
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        described = await admin.describe_topics(None if topics is None else list(topics))
    finally:
        await admin.close()
    return sorted(
        TopicPartition(topic["topic"], partition["partition"])
        for topic in described
        if topic["error_code"] == 0
        for partition in topic["partitions"]
    )


async def read_topics(
    bootstrap: str,
    *topics: str,
    until: Callable[[list[Record]], bool] | None = None,
    timeout: float = 30.0,
    idle: float = 1.0,
) -> list[Record]:
    """Everything in the topics from the beginning.

    Stops when ``until(records)`` holds (then waits ``idle`` more seconds to
    catch extra, unwanted records), or when nothing new came for ``idle``
    seconds and there is no ``until``. Fails after ``timeout``.
    """
    consumer = AIOKafkaConsumer(
        *topics,
        isolation_level="read_committed",
        bootstrap_servers=bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        group_id=None,
    )
    await consumer.start()
    records: list[Record] = []
    deadline = time.monotonic() + timeout
    satisfied_at: float | None = None
    last_new = time.monotonic()
    try:
        while True:
            batch = await consumer.getmany(timeout_ms=200)
            for tp, messages in batch.items():
                for m in messages:
                    if m.value is None:  # a tombstone (a table key deleted)
                        name, value = TOMBSTONE, {}
                    else:
                        name, value = codec.decode(m.value)
                    records.append(
                        Record(
                            tp.topic, tp.partition, m.offset, m.key.decode(), name, value, m.value
                        )
                    )
                    last_new = time.monotonic()
            now = time.monotonic()
            if until is not None:
                if satisfied_at is None and until(records):
                    satisfied_at = now
                if satisfied_at is not None and now - satisfied_at >= idle:
                    return records
            elif now - last_new >= idle:
                return records
            if now > deadline:
                if until is None:
                    return records
                raise TimeoutError(
                    f"condition not met within {timeout}s; {len(records)} records read"
                )
            await asyncio.sleep(0)
    finally:
        await consumer.stop()


def latest_by_key(records: list[Record]) -> dict[str, dict[str, Any]]:
    """What a compacted topic converges to: the last value per key."""
    latest: dict[str, dict[str, Any]] = {}
    for record in sorted(records, key=lambda r: (r.partition, r.offset)):
        latest[record.key] = record.value
    return latest
