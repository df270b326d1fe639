"""Apache Kafka clusters of a test's own, and what the Kafka-only tests ask of them.

The Kafka-only tests (tests/integration/test_kafka_hazards.py) stop, kill and
restart brokers and change topic configs, so each starts its own cluster from
the pinned jars (infra/kafka_cluster.py), whatever KAFKA_BOOTSTRAP_SERVERS says.
Without Java 17+ they are skipped with the reason, except under CI=true, where
they fail (as the kafka half of every broker test does, tests/support/broker.py).

Everything here reads what consumers read: ``read_committed``, so records of
aborted transactions never count, whichever processing guarantee wrote them.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from hookline.infra.kafka_cluster import KafkaCluster, KafkaUnavailable, check_available
from hookline.schemas import codec

from tests.support.broker import TEST_KAFKA_SETTINGS, in_ci
from tests.support.kafka import TOMBSTONE
from tests.support.signing import DEV


def require_local_kafka() -> None:
    """Skip the calling test unless a local Apache Kafka can start (fail it under CI=true)."""
    try:
        check_available(fetch=True)
    except KafkaUnavailable as exc:
        if in_ci():
            pytest.fail(f"CI runs the Kafka-only tests too: {exc}", pytrace=False)
        pytest.skip(f"Apache Kafka cannot run here: {exc}")


@contextlib.contextmanager
def own_cluster(
    log_dir: Path, name: str, nodes: int = 1, **settings: str
) -> Iterator[KafkaCluster]:
    """A running cluster of ``nodes`` nodes with the tests' broker settings and ``settings``."""
    require_local_kafka()
    with KafkaCluster(
        nodes=nodes,
        log_dir=log_dir / f"kafka-{name}",
        settings={**TEST_KAFKA_SETTINGS, **settings},
    ) as cluster:
        yield cluster


@dataclass(frozen=True)
class LogRecord:
    """A committed record, decoded like tests/support/kafka.Record, with its headers."""

    topic: str
    partition: int
    offset: int
    key: str
    schema: str
    value: dict[str, Any]
    raw: bytes | None
    headers: tuple[tuple[str, bytes], ...]

    def header(self, name: str) -> bytes | None:
        for key, value in self.headers:
            if key == name:
                return value
        return None


async def admin_client(bootstrap: str) -> AIOKafkaAdminClient:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10_000)
    await admin.start()
    return admin


async def describe(bootstrap: str, topics: Iterable[str] | None = None) -> list[dict[str, Any]]:
    """Metadata of ``topics`` (every topic, internal ones included, when None)."""
    admin = await admin_client(bootstrap)
    try:
        described = await admin.describe_topics(None if topics is None else list(topics))
    finally:
        await admin.close()
    return [topic for topic in described if topic["error_code"] == 0]


async def leaders(bootstrap: str, topic: str) -> dict[int, int]:
    """{partition: leader node id} of ``topic`` (-1 for a partition without a leader)."""
    [found] = await describe(bootstrap, [topic])
    return {p["partition"]: p["leader"] for p in found["partitions"]}


async def wait_isr_full(bootstrap: str, timeout: float = 90.0) -> float:
    """Until every partition of every topic has all its replicas in sync; seconds waited."""
    started = time.monotonic()
    short: list[str] = []
    while time.monotonic() - started < timeout:
        try:
            short = [
                f"{topic['topic']}[{p['partition']}] isr={p['isr']}"
                for topic in await describe(bootstrap)
                for p in topic["partitions"]
                if sorted(p["isr"]) != sorted(p["replicas"]) or p["leader"] < 0
            ]
        except Exception as exc:  # a node just came back: ask again
            short = [repr(exc)]
        if not short:
            return time.monotonic() - started
        await asyncio.sleep(0.5)
    raise AssertionError(f"ISR not full after {timeout:g}s: {short[:5]}")


async def create_topics(
    bootstrap: str, configs: dict[str, dict[str, str]], partitions: int, replication: int = 1
) -> None:
    """Create topics with their configs, before hookline does (it never alters a topic)."""
    admin = await admin_client(bootstrap)
    try:
        response = await admin.create_topics(
            [
                NewTopic(name, partitions, replication, topic_configs=c)
                for name, c in configs.items()
            ]
        )
        failed = [(name, code, message) for name, code, message in response.topic_errors if code]
        assert not failed, failed
    finally:
        await admin.close()


async def end_offsets(bootstrap: str, partitions: list[TopicPartition]) -> dict[Any, int]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, isolation_level="read_committed")
    await consumer.start()
    try:
        return dict(await consumer.end_offsets(partitions))
    finally:
        await consumer.stop()


async def after_last_records(bootstrap: str, partitions: list[TopicPartition]) -> dict[Any, int]:
    """Per partition, the offset after its last record a ``read_committed`` reader gets.

    What a consumer group can commit up to: past it there are only transaction
    markers and records of aborted transactions (0 for a partition with none).
    """
    ends = await end_offsets(bootstrap, partitions)
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, isolation_level="read_committed", fetch_max_wait_ms=10
    )
    await consumer.start()
    try:
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        after = dict.fromkeys(partitions, 0)
        deadline = time.monotonic() + 30
        while any([await consumer.position(tp) < ends[tp] for tp in partitions]):
            assert time.monotonic() < deadline, "the partitions could not be read to their ends"
            for tp, records in (await consumer.getmany(timeout_ms=200)).items():
                after[tp] = max(after[tp], *(record.offset + 1 for record in records))
        return after
    finally:
        await consumer.stop()


async def committed_offsets(
    bootstrap: str, partitions: list[TopicPartition], group: str = "hookline"
) -> dict[TopicPartition, int | None]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group)
    await consumer.start()
    try:
        return {tp: await consumer.committed(tp) for tp in partitions}
    finally:
        await consumer.stop()


async def read_log(
    bootstrap: str,
    *topics: str,
    until: Callable[[list[LogRecord]], bool] | None = None,
    timeout: float = 30.0,
    idle: float = 1.0,
) -> list[LogRecord]:
    """Every committed record of ``topics`` from the beginning, as tests/support/kafka.read_topics.

    Stops when ``until(records)`` holds (then reads ``idle`` seconds more), or
    when nothing new came for ``idle`` seconds and there is no ``until``;
    raises TimeoutError after ``timeout`` when ``until`` never held.
    """
    consumer = AIOKafkaConsumer(
        *topics,
        bootstrap_servers=bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        group_id=None,
        isolation_level="read_committed",
    )
    await consumer.start()
    records: list[LogRecord] = []
    deadline = time.monotonic() + timeout
    satisfied_at: float | None = None
    last_new = time.monotonic()
    try:
        while True:
            batch = await consumer.getmany(timeout_ms=200)
            for tp, messages in batch.items():
                for m in messages:
                    if m.value is None:
                        name, value = TOMBSTONE, {}
                    else:
                        name, value = codec.decode(m.value)
                    records.append(
                        LogRecord(
                            tp.topic,
                            tp.partition,
                            m.offset,
                            m.key.decode() if m.key is not None else "",
                            name,
                            value,
                            m.value,
                            tuple(m.headers or ()),
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


def latest(records: Iterable[LogRecord], topic: str) -> dict[str, LogRecord]:
    """What a compacted topic converges to: the last record per key."""
    found: dict[str, LogRecord] = {}
    for record in sorted(records, key=lambda r: (r.partition, r.offset)):
        if record.topic == topic:
            found[record.key] = record
    return found


#: The query-string token of each dev source that takes one; payments bodies carry
#: their own signed token (tests/support/signing.payments_body).
_TOKENS = {"partner": DEV["PARTNER_SECRET"], "envelope": DEV["ENVELOPE_SECRET"]}


@dataclass
class Answer:
    """One POST to the gateway: when it started and ended (monotonic), its status and id."""

    started: float
    ended: float
    status: int  # 0: no HTTP answer (the connection failed)
    delivery_id: str | None = None


async def post_delivery(client: httpx.AsyncClient, source: str, body: bytes) -> Answer:
    """POST a delivery to the dev source ``source`` of the gateway at ``client``'s base URL."""
    params = {"token": _TOKENS[source]} if source in _TOKENS else {}
    started = time.monotonic()
    try:
        response = await client.post(
            f"/webhooks/{source}",
            params=params,
            content=body,
            headers={"content-type": "application/json"},
        )
    except httpx.HTTPError:
        return Answer(started, time.monotonic(), 0)
    ended = time.monotonic()
    delivery_id = response.json().get("id") if response.status_code == 200 else None
    return Answer(started, ended, response.status_code, delivery_id)
