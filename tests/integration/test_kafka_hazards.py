"""What only Apache Kafka does to hookline (issue 25): each test on a Kafka cluster of its own.

- transaction control records in ``raw`` (a transactional writer upstream):
  every committed record processed, no aborted one, no partition stalled;
- a three-node cluster restarted one broker after another under load: no
  worker exits, and the end is exact;
- the leader of ``raw`` partitions killed -9 under load: no acknowledged
  delivery lost, 503 only while a partition had no leader;
- compaction on the changelogs and ``orders.state`` with a stale writer: no
  (order, version) with two contents, and the compacted ``orders.state`` holds
  every order's newest version.

Kafka only: Tansu has no transactions, replication or compaction. They start
their own cluster (infra/kafka_cluster.py), so they need Java 17+ and are
skipped without it, except under CI=true, where they fail
(tests/support/local_kafka.py). Everything is read ``read_committed``, as a
consumer of a transactional writer reads.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError
from hookline.core.adapters import ordering_key
from hookline.core.settings import DEV_SOURCES
from hookline.core.sources import Source, load_sources

from tests.conftest import hookline_env
from tests.integration.test_workers import PARTITIONER, check_exact, scenario
from tests.support import processes, traffic
from tests.support.local_kafka import (
    Answer,
    LogRecord,
    committed_offsets,
    describe,
    leaders,
    own_cluster,
    post_delivery,
    read_log,
    wait_isr_full,
)
from tests.support.signing import DEV

pytestmark = pytest.mark.slow

RAW = "production.webhooks.raw"
STATE = "production.orders.state"
CHANGES = "production.orders.changes"
PARTITIONS = 4


def mismatches(
    records: list[LogRecord], expected: dict[str, dict[str, Any]]
) -> list[tuple[str, str, Any]]:
    """Orders whose latest ``orders.state`` record is not (yet) the expected final state."""
    latest: dict[str, dict[str, Any]] = {}
    for record in sorted(records, key=lambda r: (r.partition, r.offset)):
        if record.topic == STATE:
            latest[record.key] = record.value
    wrong = []
    for order, want in expected.items():
        if order not in latest:
            wrong.append((order, "no state", None))
            continue
        got = {k: latest[order].get(k) for k in want}
        if got != want:
            differ = {k: (want[k], got[k]) for k in want if want[k] != got[k]}
            wrong.append((order, "(expected, got):", differ))
    return wrong


async def until_exact(
    bootstrap: str, expected: dict[str, dict[str, Any]], timeout: float
) -> list[LogRecord]:
    """``orders.state`` and ``orders.changes`` once every order reached its final state.

    Fails after ``timeout`` saying which orders are off and how far the worker
    group committed each input partition (a stall leaves a partition behind).
    """
    try:
        return await read_log(
            bootstrap,
            STATE,
            CHANGES,
            until=lambda records: not mismatches(records, expected),
            timeout=timeout,
            idle=2.0,
        )
    except TimeoutError:
        records = await read_log(bootstrap, STATE, CHANGES, idle=2.0)
        wrong = mismatches(records, expected)
        raw = [TopicPartition(RAW, p) for p in range(PARTITIONS)]
        committed = await committed_offsets(bootstrap, raw)
        raise AssertionError(
            f"{len(wrong)} of {len(expected)} orders not at their final state after "
            f"{timeout:g}s, e.g. {wrong[:3]}; group committed in raw: "
            f"{ {tp.partition: offset for tp, offset in committed.items()} }"
        ) from None


async def committed_short(
    bootstrap: str, last_data: dict[int, int], within: float
) -> dict[int, tuple[int | None, int]]:
    """Raw partitions the group has not committed past ``last_data`` (their last data
    record's offset) within ``within`` seconds: {partition: (committed, wanted)}."""
    raw = [TopicPartition(RAW, p) for p in sorted(last_data)]
    deadline = asyncio.get_running_loop().time() + within
    while True:
        committed = await committed_offsets(bootstrap, raw)
        behind = {
            tp.partition: (committed[tp], last_data[tp.partition] + 1)
            for tp in raw
            if (committed[tp] or 0) <= last_data[tp.partition]
        }
        if not behind or asyncio.get_running_loop().time() > deadline:
            return behind
        await asyncio.sleep(1)


def raw_record(sources: dict[str, Source], name: str, body: bytes) -> tuple[bytes, bytes, int]:
    """(key, value, partition) of a raw record, as the gateway writes it."""
    source = sources[name]
    key, value = traffic.raw_record(source, body)
    order_key = ordering_key(source.kind, json.loads(body)).encode()
    partitions = list(range(PARTITIONS))
    return key, value, PARTITIONER(order_key, partitions, partitions)


async def test_transaction_markers_in_raw_stall_no_partition(log_dir: Path, tmp_path: Path) -> None:
    """``raw`` written partly in Kafka transactions, committed and aborted, among plain records.

    Every committed transaction leaves a control record (an offset no consumer
    ever receives), every aborted one its records and a control record. The
    worker must take such a jump as a gap in the log, not as records it
    skipped (streams/positions.py), and process every committed record: all
    orders at their exact final state, and the group's committed offset past
    the last data record of every partition, within a bound. Records of
    aborted transactions were never written, as far as any reader of
    committed data knows: ghost orders only they mention must not appear, and
    refunds only they carry must not change an order.
    """
    with own_cluster(log_dir, "markers") as cluster:
        bootstrap = cluster.bootstrap_servers
        env = hookline_env(bootstrap, tmp_path, HOOKLINE_SOURCES=str(DEV_SOURCES))
        worker = processes.worker(env, log_dir).start(timeout=90)
        sources = load_sources(DEV_SOURCES, DEV)
        deliveries, expected = scenario(orders=40)  # 320 deliveries
        rng = random.Random(25)
        plain = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
        transactional = AIOKafkaProducer(
            bootstrap_servers=bootstrap, transactional_id="upstream-mirror", acks="all"
        )
        await plain.start()
        await transactional.start()
        ghosts: list[str] = []
        last_data: dict[int, int] = {}
        modes: dict[str, int] = defaultdict(int)
        try:

            async def send(producer: AIOKafkaProducer, name: str, body: bytes) -> None:
                key, value, partition = raw_record(sources, name, body)
                sent = await producer.send_and_wait(RAW, value, key=key, partition=partition)
                if producer is plain or committing:
                    last_data[partition] = max(last_data.get(partition, -1), sent.offset)

            chunk = 8
            for start in range(0, len(deliveries), chunk):
                part = deliveries[start : start + chunk]
                mode = ("plain", "committed", "committed", "plain", "committed")[
                    (start // chunk) % 5
                ]
                modes[mode] += len(part)
                committing = mode == "committed"
                if committing:
                    async with transactional.transaction():
                        for name, body in part:
                            await send(transactional, name, body)
                else:
                    for name, body in part:
                        await send(plain, name, body)
                # An aborted transaction after every other chunk: a ghost order in
                # every partition's reach, and a refund of an order already under way.
                if (start // chunk) % 2 == 0:
                    committing = False
                    await transactional.begin_transaction()
                    ghost = traffic.unique("ghost")
                    ghosts.append(ghost)
                    await send(transactional, "partner", traffic.order_status(ghost, "ACTIVE"))
                    victim = rng.choice(sorted(expected))
                    refund = traffic.envelope_event(
                        traffic.unique("wh"),
                        "subscription_event_refund",
                        {"order_id": victim, "amount": 3.0, "currency": "EUR"},
                    )
                    await send(transactional, "envelope", refund)
                    await transactional.abort_transaction()
                    modes["aborted"] += 2
        finally:
            await plain.stop()
            await transactional.stop()

        try:
            records = await until_exact(bootstrap, expected, timeout=60)
            stats = check_exact(records, expected)
            states = {r.key for r in records if r.topic == STATE}
            assert not states & set(ghosts), "orders of aborted transactions were processed"
            behind = await committed_short(bootstrap, last_data, within=10)
            assert not behind, f"raw partitions committed short of their last record: {behind}"
            print(f"transaction markers in raw: {stats}, records sent {dict(modes)}")
            assert worker.process is not None
            assert worker.process.poll() is None, worker.tail()
        finally:
            worker.stop()


#: Kafka answers a fetch as soon as a record arrives: the wait Kafka deployments use
#: (README, "The embedded broker"), and less CPU for the three JVMs on 2 cores.
ON_KAFKA = {"HOOKLINE_FETCH_MAX_WAIT_MS": "500"}
#: A killed node is fenced (out of every ISR, its leaderships moved) after this long
#: without a heartbeat; Kafka's default is 9 s.
FAST_FENCING = {"broker.session.timeout.ms": "3000", "broker.heartbeat.interval.ms": "500"}


async def deliver(
    url: str, deliveries: list[tuple[str, bytes]], rate: float, answers: list[Answer]
) -> None:
    """POST every delivery in order at ``rate`` a second; a refused one is sent again, as a
    provider retries, until it is accepted, before the next (so each order's stay in order)."""
    loop = asyncio.get_running_loop()
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        started = loop.time()
        for index, (name, body) in enumerate(deliveries):
            while True:
                answer = await post_delivery(client, name, body)
                answers.append(answer)
                if answer.status == 200:
                    break
                assert answer.status in (0, 503), answer
                assert loop.time() - started < 300, "never accepted again"
                await asyncio.sleep(0.2)
            delay = started + (index + 1) / rate - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)


def alive(*services: processes.ServiceProcess) -> None:
    for service in services:
        assert service.process is not None
        assert service.process.poll() is None, f"{service.name} exited:\n{service.tail()}"


async def test_rolling_restart_of_three_brokers_under_load_stops_no_worker(
    log_dir: Path, tmp_path: Path
) -> None:
    """Each broker of three stopped and started again in turn, the gateway and two workers busy.

    Group and transaction coordinators and partition leaders move three times;
    a worker flushing meanwhile must wait for them, not exit. In the end every
    accepted delivery's order is at its exact final state, versions 1..n, each
    version with one content.
    """
    with own_cluster(log_dir, "rolling", nodes=3, **FAST_FENCING) as cluster:
        bootstrap = cluster.bootstrap_servers
        env = hookline_env(
            bootstrap,
            tmp_path,
            HOOKLINE_SOURCES=str(DEV_SOURCES),
            HOOKLINE_REPLICATION_FACTOR="3",
            **ON_KAFKA,
        )
        gateway = processes.gateway(env, log_dir).start(timeout=60)
        workers = [processes.worker(env, log_dir).start(timeout=90)]
        workers.append(processes.worker(env, log_dir))
        try:
            await asyncio.to_thread(workers[1].start, 120)
            for worker in workers:
                await asyncio.to_thread(worker.wait_ready, 60)
            # 240 deliveries at 8/s: 30 s, longer than the three restarts (~20 s)
            deliveries, expected = scenario(orders=30)
            answers: list[Answer] = []
            sending = asyncio.create_task(
                deliver(gateway.url, deliveries, 8, answers)  # type: ignore[attr-defined]
            )
            await asyncio.sleep(4)
            restarts = []
            for node in (1, 2, 3):
                began = time.monotonic()
                await asyncio.to_thread(cluster.stop_node, node)
                await asyncio.to_thread(cluster.start_node, node)
                await wait_isr_full(bootstrap)
                restarts.append(round(time.monotonic() - began, 1))
                alive(gateway, *workers)
            await sending
            records = await until_exact(bootstrap, expected, timeout=90)
            stats = check_exact(records, expected)
            refused = sum(1 for a in answers if a.status != 200)
            print(
                f"rolling restart: {stats}; seconds per node {restarts}; "
                f"{len(answers)} POSTs, {refused} refused (sent again)"
            )
            alive(gateway, *workers)
        finally:
            for worker in workers:
                worker.stop()
            gateway.stop()


async def test_raw_leader_killed_loses_no_acknowledged_delivery(
    log_dir: Path, tmp_path: Path
) -> None:
    """kill -9 of the node leading ``raw`` partitions while three clients post to the gateway.

    A 200 means ``acks=all`` with two in-sync replicas of three: the record
    survives its leader. Every delivery id answered 200 must be in ``raw``.
    The gateway may refuse (503) only while some ``raw`` partition had no
    leader able to take writes with its in-sync replicas, from the kill until
    the controller fenced the dead node (it left every ISR and its leaderships
    moved), plus the publish timeout a request started then may take.
    """
    publish_timeout = 2.0
    with own_cluster(log_dir, "leader", nodes=3, **FAST_FENCING) as cluster:
        bootstrap = cluster.bootstrap_servers
        env = hookline_env(
            bootstrap,
            tmp_path,
            HOOKLINE_SOURCES=str(DEV_SOURCES),
            HOOKLINE_REPLICATION_FACTOR="3",
            HOOKLINE_PUBLISH_TIMEOUT=str(publish_timeout),
        )
        gateway = processes.gateway(env, log_dir).start(timeout=60)
        url: str = gateway.url  # type: ignore[attr-defined]
        answers: list[Answer] = []
        stop = asyncio.Event()

        async def client() -> None:
            async with httpx.AsyncClient(base_url=url, timeout=30) as http:
                while not stop.is_set():
                    body = traffic.order_status(traffic.unique("ord"), "ACTIVE")
                    answers.append(await post_delivery(http, "partner", body))
                    await asyncio.sleep(0.1)

        try:
            # The gateway creates raw when it connects; every partition led and in sync.
            await wait_isr_full(bootstrap)
            clients = [asyncio.create_task(client()) for _ in range(3)]
            await asyncio.sleep(4)
            led = await leaders(bootstrap, RAW)
            victim = max(set(led.values()), key=lambda node: list(led.values()).count(node))
            killed_at = time.monotonic()
            cluster.kill_node(victim)
            fenced_at = await until_fenced(bootstrap, victim, timeout=60)
            await asyncio.sleep(6)
            stop.set()
            await asyncio.gather(*clients)
            alive(gateway)
        finally:
            gateway.stop()

        accepted = {a.delivery_id for a in answers if a.status == 200}
        refused = [a for a in answers if a.status != 200]
        late = [
            a
            for a in refused
            if a.status != 503
            or a.ended < killed_at
            or a.started > fenced_at + publish_timeout + 1.0
        ]
        print(
            f"raw leader (node {victim}, {list(led.values()).count(victim)} of {PARTITIONS} "
            f"partitions) killed: fenced after {fenced_at - killed_at:.1f}s; "
            f"{len(answers)} POSTs, {len(accepted)} accepted, {len(refused)} refused, "
            f"of which {len(refused) - len(late)} within the window"
        )
        assert not late, [
            (a.status, round(a.started - killed_at, 1), round(a.ended - killed_at, 1))
            for a in late[:10]
        ]
        assert any(a.started > fenced_at for a in answers if a.status == 200), "never recovered"
        records = await read_log(
            bootstrap, RAW, until=lambda rs: accepted <= {r.key for r in rs}, timeout=30, idle=0
        )
        missing = accepted - {r.key for r in records}
        assert not missing, f"{len(missing)} acknowledged deliveries lost"


async def until_fenced(bootstrap: str, node: int, timeout: float) -> float:
    """When no ``raw`` partition has ``node`` as leader or in its ISR any more (monotonic)."""
    deadline = time.monotonic() + timeout
    partitions: list[dict[str, Any]] = []
    while True:
        try:
            [found] = await describe(bootstrap, [RAW])
            partitions = found["partitions"]
            if all(p["leader"] not in (node, -1) and node not in p["isr"] for p in partitions):
                return time.monotonic()
        except (ValueError, KafkaError, OSError):
            pass
        assert time.monotonic() < deadline, f"node {node} never fenced: {partitions}"
        await asyncio.sleep(0.1)
