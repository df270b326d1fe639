"""A worker never exits for what a record holds, nor for a coordinator that is away.

- A raw record of a newer release's schema (an unknown fingerprint): the worker
  holds that partition at the record (nothing past it processed or committed),
  says so in its metrics and log, and goes on with the other partitions; a
  worker of the newer release then processes it and what follows, exactly.
- The broker frozen (SIGSTOP) for 20 s mid-stream, which takes the group
  coordinator away: no worker exits, and every order ends exact.

Each test has a broker of its own (it freezes the broker, or leaves a partition
held), of each kind.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from hookline.core.partitioner import partition_for
from hookline.core.settings import DEV_SOURCES
from hookline.core.sources import load_sources
from hookline.gateway.envelope import new_delivery_id, raw_envelope
from hookline.infra.broker import free_port
from hookline.infra.processes import ServiceProcess
from hookline.schemas import codec

from tests.conftest import hookline_env
from tests.integration.test_workers import (
    RATE_PER_S,
    check_exact,
    final_records,
    metric,
    produce,
    scenario,
)
from tests.support import newer_release, processes, traffic
from tests.support.broker import TestBroker, running_broker
from tests.support.kafka import latest_by_key, read_topics
from tests.support.signing import DEV

RAW = "production.webhooks.raw"
PARTITIONS = 4
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def own_broker(broker_kind: str, log_dir: Path) -> Iterator[TestBroker]:
    with running_broker(broker_kind, log_dir, "goes-on") as broker:
        yield broker


def broker_pids(broker: TestBroker) -> list[int]:
    if broker.embedded is not None and broker.embedded.pid is not None:
        return [broker.embedded.pid]
    cluster = getattr(broker, "cluster", None)
    if cluster is not None:
        return [node.process.pid for node in cluster.nodes if node.process is not None]
    pytest.fail("an external broker cannot be frozen by this test")


def orders_in(partition: int, count: int, prefix: str) -> list[str]:
    found: list[str] = []
    while len(found) < count:
        candidate = traffic.unique(prefix)
        if partition_for(candidate.encode(), range(PARTITIONS)) == partition:
            found.append(candidate)
    return found


async def committed(bootstrap: str, tp: TopicPartition) -> int | None:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id="hookline")
    await consumer.start()
    try:
        return await consumer.committed(tp)
    finally:
        await consumer.stop()


async def states(bootstrap: str, wanted: set[str], timeout: float = 60) -> dict[str, dict]:
    records = await read_topics(
        bootstrap,
        "production.orders.state",
        until=lambda rs: wanted <= {r.key for r in rs},
        timeout=timeout,
        idle=1.0,
    )
    return latest_by_key(records)


async def test_a_newer_release_record_holds_its_partition_until_a_newer_worker_reads_it(
    own_broker: TestBroker, log_dir: Path, tmp_path: Path
) -> None:
    bootstrap = own_broker.bootstrap_servers
    env = hookline_env(bootstrap, tmp_path / "data", HOOKLINE_SOURCES=str(DEV_SOURCES))
    partner = load_sources(DEV_SOURCES, DEV)["partner"]
    held = 1  # the partition the newer record lands in
    before, after = orders_in(held, 3, "ord-before"), orders_in(held, 3, "ord-after")
    elsewhere = [o for p in range(PARTITIONS) if p != held for o in orders_in(p, 2, "ord-other")]
    newer_order = orders_in(held, 1, "ord-newer")[0]

    newer_schemas = newer_release.write_schemas(tmp_path / "newer")
    newer = newer_release.registry(newer_schemas)
    at = int(time.time() * 1000)
    body = traffic.order_status(newer_order, "ACTIVE")
    delivery_id = new_delivery_id(at)
    envelope = raw_envelope(
        partner, body, {"content-type": "application/json"}, None, at, delivery_id
    )
    newer_value = newer.encode(codec.WEBHOOK_ENVELOPE, {**envelope, "trace_id": "t-1"})
    fingerprint = newer_value[2:10].hex()
    with pytest.raises(codec.UnknownSchema):
        codec.decode(newer_value)

    stock = processes.worker(env, log_dir).start(timeout=90)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:

        async def send(order_ids: list[str]) -> None:
            for order_id in order_ids:
                key, value = traffic.raw_record(partner, traffic.order_status(order_id, "ACTIVE"))
                partition = partition_for(order_id.encode(), range(PARTITIONS))
                await producer.send_and_wait(RAW, value, key=key, partition=partition)

        await send(before)
        sent = await producer.send_and_wait(
            RAW, newer_value, key=delivery_id.encode(), partition=held
        )
        await send(after + elsewhere)

        # Every partition goes on but the held one, which stops at the record.
        landed = await states(bootstrap, set(before) | set(elsewhere))
        await asyncio.sleep(3)
        landed = await states(bootstrap, set(before) | set(elsewhere))
        assert not (set(after) | {newer_order}) & set(landed), "processed past the held record"
        assert await committed(bootstrap, TopicPartition(RAW, held)) == sent.offset
        assert metric(stock, "hookline_worker_held_partitions") == 1
        assert metric(stock, "hookline_worker_unreadable_records_total") >= 1
        assert fingerprint in stock.log(), stock.tail()
        assert stock.process is not None
        assert stock.process.poll() is None, stock.tail()
    finally:
        await producer.stop()
        stock.stop()

    # The upgrade: a worker of the newer release reads the record and what follows.
    port = free_port()
    upgraded = ServiceProcess(
        "worker-newer",
        [
            *(sys.executable, "-m", "tests.support.newer_release", str(newer_schemas)),
            *("worker", "--web-port", str(port)),
        ],
        env,
        log_dir / f"worker-newer-{port}.log",
        f"http://127.0.0.1:{port}/readyz",
        cwd=REPO,
    ).start(timeout=90)
    upgraded.url = f"http://127.0.0.1:{port}"  # type: ignore[attr-defined]
    try:
        everything = set(before) | set(after) | set(elsewhere) | {newer_order}
        records = await read_topics(
            bootstrap,
            "production.orders.state",
            "production.orders.changes",
            until=lambda rs: everything <= {r.key for r in rs if r.topic.endswith("state")},
            timeout=90,
            idle=2.0,
        )
        latest = latest_by_key([r for r in records if r.topic == "production.orders.state"])
        assert {order: latest[order]["order_status"] for order in everything} == dict.fromkeys(
            everything, "ACTIVE"
        )
        # Exactly once each: the held partition was neither skipped nor applied twice.
        changes = [r for r in records if r.topic == "production.orders.changes"]
        assert sorted(r.key for r in changes if r.key in everything) == sorted(everything)
        assert metric(upgraded, "hookline_worker_held_partitions") == 0
    finally:
        upgraded.stop()


async def test_the_coordinator_away_for_20_s_stops_no_worker(
    own_broker: TestBroker, log_dir: Path, tmp_path: Path
) -> None:
    bootstrap = own_broker.bootstrap_servers
    env = hookline_env(bootstrap, tmp_path / "data", HOOKLINE_SOURCES=str(DEV_SOURCES))
    workers = [processes.worker(env, log_dir).start(timeout=90) for _ in range(2)]
    deliveries, expected = scenario(orders=150)
    half = len(deliveries) // 2
    pids = broker_pids(own_broker)
    try:
        for worker in workers:
            await asyncio.to_thread(worker.wait_ready, 60)

        sending = asyncio.create_task(produce(bootstrap, deliveries[:half], RATE_PER_S))
        await asyncio.sleep(half / RATE_PER_S / 2)  # mid-stream
        for pid in pids:
            os.kill(pid, signal.SIGSTOP)
        await asyncio.sleep(20)
        for pid in pids:
            os.kill(pid, signal.SIGCONT)
        await sending
        await produce(bootstrap, deliveries[half:], RATE_PER_S)
        records = await final_records(bootstrap, expected)
        stats = check_exact(records, expected)
        print(f"coordinator away for 20 s: {stats}")
        for worker in workers:
            assert worker.process is not None
            assert worker.process.poll() is None, worker.tail()
    finally:
        for pid in pids:
            os.kill(pid, signal.SIGCONT)
        for worker in workers:
            worker.stop()
