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
import os
import random
import signal
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError
from hookline.core.adapters import ordering_key
from hookline.core.settings import DEV_SOURCES
from hookline.core.sources import Source, load_sources
from hookline.infra.broker import free_port
from hookline.infra.processes import ServiceProcess

from tests.conftest import hookline_env
from tests.integration.test_workers import (
    PARTITIONER,
    RATE_PER_S,
    check_exact,
    final_records,
    produce,
    scenario,
    until_stopped,
)
from tests.support import processes, traffic
from tests.support.local_kafka import (
    Answer,
    LogRecord,
    after_last_records,
    committed_offsets,
    create_topics,
    describe,
    end_offsets,
    latest,
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
REPO = Path(__file__).resolve().parents[2]


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
            # The gateway creates raw when it connects; every partition led and in sync,
            # and the gateway's producer started (its idempotent producer id granted).
            await wait_isr_full(bootstrap)
            await asyncio.to_thread(gateway.wait_ready, 60, f"{url}/readyz")
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


ORDERS_CHANGELOG = "production.hookline.orders-changelog"
#: Compaction that runs within seconds: a segment rolls every half second of writes, is
#: cleanable once 1 % of the log is dirty, and tombstones go 100 ms after cleaning.
FAST_COMPACTION = {
    "cleanup.policy": "compact",
    "segment.ms": "500",
    "min.cleanable.dirty.ratio": "0.01",
    "min.compaction.lag.ms": "0",
    "delete.retention.ms": "100",
}
COMPACTED = [
    STATE,
    *(f"production.hookline.{t}-changelog" for t in ("dedup", "transactions", "orders")),
]


def frozen_worker(env: dict[str, str], log_dir: Path, suffix: str) -> processes.ServiceProcess:
    """A worker that stops itself at its first send to a topic ending with ``suffix``."""
    port = free_port()
    worker = ServiceProcess(
        "worker-frozen",
        [
            *(sys.executable, "-m", "tests.support.frozen_send_worker", suffix),
            *("worker", "--web-port", str(port)),
        ],
        env,
        log_dir / f"worker-frozen-{port}.log",
        f"http://127.0.0.1:{port}/readyz",
        cwd=REPO,
    )
    worker.url = f"http://127.0.0.1:{port}"  # type: ignore[attr-defined]
    return worker


async def produce_raw(bootstrap: str, deliveries: list[tuple[str, bytes]]) -> None:
    sources = load_sources(DEV_SOURCES, DEV)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        for name, body in deliveries:
            key, value, partition = raw_record(sources, name, body)
            await producer.send_and_wait(RAW, value, key=key, partition=partition)
    finally:
        await producer.stop()


async def until_caught_up(bootstrap: str, timeout: float = 60) -> None:
    """Until the group committed every input partition to its end."""
    inputs = [RAW, "production.hookline.transaction-facts", "production.hookline.order-inputs"]
    partitions = [TopicPartition(t, p) for t in inputs for p in range(PARTITIONS)]
    deadline = time.monotonic() + timeout
    while True:
        # Past a partition's last committed record there are only transaction
        # markers and aborted records (a fenced writer's): nothing to commit.
        ends = await after_last_records(bootstrap, partitions)
        committed = await committed_offsets(bootstrap, partitions)
        behind = {
            tp: (committed[tp], ends[tp]) for tp in partitions if (committed[tp] or 0) < ends[tp]
        }
        if not behind:
            return
        assert time.monotonic() < deadline, f"inputs not committed to their ends: {behind}"
        await asyncio.sleep(1)


def generation(record: LogRecord) -> int | None:
    value = record.header("hookline-generation")
    return int(value) if value else None


def stale_records(records: list[LogRecord]) -> list[LogRecord]:
    """Changelog records written with an older generation than one before them in their
    partition: a stale writer's, landed after the new owner's."""
    newest: dict[int, int] = {}
    stale = []
    for record in sorted(records, key=lambda r: (r.partition, r.offset)):
        stamp = generation(record)
        if stamp is None:
            continue
        if stamp < newest.get(record.partition, -1):
            stale.append(record)
        newest[record.partition] = max(stamp, newest.get(record.partition, -1))
    return stale


def not_compacted(records: list[LogRecord], ends: dict[tuple[str, int], int]) -> list[str]:
    """What shows compaction has not run over each (topic, partition) of ``ends`` up to its
    end offset: a key held twice below the end, or no record removed there. Empty once done.

    Every order is written several times before the end, so keys unique below it
    means records were removed, whether or not transaction markers fill offsets."""
    keys: dict[tuple[str, int], dict[str, list[int]]] = defaultdict(lambda: defaultdict(list))
    for record in records:
        at = (record.topic, record.partition)
        if at in ends and record.offset < ends[at]:
            keys[at][record.key].append(record.offset)
    found = []
    for at, end in sorted(ends.items()):
        twice = {key: offsets for key, offsets in keys[at].items() if len(offsets) > 1}
        held = sum(len(offsets) for offsets in keys[at].values())
        if twice:
            found.append(
                f"{at}: {len(twice)} keys twice below {end}, e.g. {list(twice.items())[:2]}"
            )
        elif end > 0 and held >= end:
            found.append(f"{at}: all {end} records still there")
    return found


def newest_versions(records: list[LogRecord]) -> list[tuple[str, int, int]]:
    """Orders whose latest ``orders.state`` record is older than their newest change:
    (order, state version, newest version)."""
    newest: dict[str, int] = {}
    for record in records:
        if record.topic == CHANGES:
            newest[record.key] = max(newest.get(record.key, 0), record.value["version"])
    return [
        (order, record.value["version"], newest[order])
        for order, record in latest(records, STATE).items()
        if record.value and order in newest and record.value["version"] < newest[order]
    ]


def forks(records: list[LogRecord]) -> dict[tuple[str, str, int], int]:
    """(topic, order, version) published with more than one content in orders.changes or
    orders.state: {(topic, order, version): contents}."""
    contents: dict[tuple[str, str, int], set[bytes]] = defaultdict(set)
    for record in records:
        if record.topic in (CHANGES, STATE) and record.raw is not None:
            contents[(record.topic, record.key, record.value["version"])].add(record.raw)
    return {key: len(found) for key, found in contents.items() if len(found) > 1}


def scenario_stories(
    orders: int,
) -> tuple[dict[str, list[tuple[str, bytes]]], dict[str, dict[str, Any]]]:
    """test_workers.scenario's deliveries as each order's story, in order: {order: [...]}."""
    deliveries, expected = scenario(orders)
    order_of_tx: dict[str, str] = {}
    stories: dict[str, list[tuple[str, bytes]]] = defaultdict(list)
    for name, body in deliveries:
        document = json.loads(body)
        if name == "payments":
            claims = jwt.decode(document["token"], options={"verify_signature": False})
            order = order_of_tx[claims["orderReference"]]
        elif name == "envelope":
            order = document["data"]["order_id"]
        elif "orders" in document:  # a checkout
            [order] = [line["order_id"] for line in document["orders"]]
            order_of_tx[document["transaction_id"]] = order
        else:
            order = document["order_id"]
        stories[order].append((name, body))
    assert set(stories) == set(expected)
    return dict(stories), expected


def steps(
    stories: dict[str, list[tuple[str, bytes]]], first: Callable[[str], int], stop: int | None
) -> list[tuple[str, bytes]]:
    """Each order's steps ``first(order)`` to ``stop`` (exclusive; None: to its end), step by
    step across orders: step k of every order before step k + 1 of any."""
    longest = max(len(story) for story in stories.values())
    return [
        story[k]
        for k in range(longest)
        for order, story in stories.items()
        if first(order) <= k < min(len(story), longest if stop is None else stop)
    ]


async def test_compaction_with_a_stale_writer_keeps_no_fork_and_the_newest_versions(
    log_dir: Path, tmp_path: Path
) -> None:
    """A worker frozen mid-send past its session; compaction then runs on what it wrote late.

    Two workers; one stops itself at its first send to the orders changelog,
    after every check it makes. The other takes its partitions over and moves
    those orders on; then the frozen one is resumed. Without transactions its
    stale records land after the new owner's: its ``orders.state`` records
    behind newer versions, its changelog records behind newer generations,
    which recovery fences out (streams/fencing.py) as long as a newer record
    precedes them in their partition. Every other order of those partitions is
    then moved on once more and the cleaner compacts the changelogs and
    ``orders.state`` (tiny segments), which removes exactly those newer records. A fresh
    worker recovers from the compacted changelogs and takes the rest.

    Expected: no (order, version) with two contents, every order exact, and the
    compacted ``orders.state`` holding every order's newest version, both before the
    fresh worker and at the end.
    """
    with own_cluster(log_dir, "compaction") as cluster:
        bootstrap = cluster.bootstrap_servers
        await create_topics(bootstrap, dict.fromkeys(COMPACTED, FAST_COMPACTION), PARTITIONS)
        env = hookline_env(bootstrap, tmp_path, HOOKLINE_SOURCES=str(DEV_SOURCES), **ON_KAFKA)
        session = float(env["HOOKLINE_SESSION_TIMEOUT"])
        stories, expected = scenario_stories(orders=32)  # 256 deliveries
        survivor = processes.worker(env, log_dir).start(timeout=90)
        frozen = frozen_worker(env, log_dir, "orders-changelog")
        fresh: processes.ServiceProcess | None = None
        problems: list[str] = []
        try:
            await asyncio.to_thread(frozen.start, 120)
            for worker in (survivor, frozen):
                await asyncio.to_thread(worker.wait_ready, 60)
            # Steps 1-2 of every order: the frozen one stops at its first orders write.
            await produce_raw(bootstrap, steps(stories, lambda _: 0, 2))
            await until_stopped(frozen, 30)
            await asyncio.sleep(session + 2)  # evicted; the survivor owns every partition
            await asyncio.to_thread(survivor.wait_ready, 60)
            await produce_raw(bootstrap, steps(stories, lambda _: 2, 4))
            await until_caught_up(bootstrap)
            assert frozen.process is not None
            os.kill(frozen.process.pid, signal.SIGCONT)
            await asyncio.sleep(3)  # its late records land (or are refused)
            changelog = await read_log(bootstrap, ORDERS_CHANGELOG, idle=1.0)
            stale = stale_records(changelog)
            stale_orders = {r.key for r in stale}
            # Every other order moves on once more, so the newer records before the
            # stale ones are all superseded and compaction removes them.
            await produce_raw(
                bootstrap, steps(stories, lambda o: 99 if o in stale_orders else 4, 5)
            )
            await until_caught_up(bootstrap)
            topics = [ORDERS_CHANGELOG, STATE]
            ends = await end_offsets(
                bootstrap, [TopicPartition(t, p) for t in topics for p in range(PARTITIONS)]
            )
            upto = {(tp.topic, tp.partition): end for tp, end in ends.items()}
            # Filler orders keep segments rolling until the cleaner is past those ends.
            fillers: list[str] = []
            deadline = time.monotonic() + 60
            while True:
                filler = [traffic.unique("fill") for _ in range(PARTITIONS * 2)]
                fillers += filler
                await produce_raw(
                    bootstrap, [("partner", traffic.order_status(o, "PENDING")) for o in filler]
                )
                await asyncio.sleep(1)
                records = await read_log(bootstrap, *topics, idle=0.5)
                uncompacted = not_compacted(records, upto)
                if not uncompacted:
                    break
                assert time.monotonic() < deadline, f"the log cleaner did not run: {uncompacted}"
            behind = newest_versions(records + await read_log(bootstrap, CHANGES, idle=0.5))
            if behind:
                problems.append(
                    f"compacted orders.state behind the newest version for {len(behind)} "
                    f"orders, e.g. (order, state version, newest): {behind[:3]}"
                )
            survivor.stop()
            frozen.stop()
            # A worker with nothing but the compacted changelogs takes the rest.
            fresh = processes.worker(env, log_dir).start(timeout=90)
            await produce_raw(
                bootstrap, steps(stories, lambda o: 4 if o in stale_orders else 5, None)
            )
            try:
                records = await until_exact(bootstrap, expected, timeout=45)
            except AssertionError as exc:
                problems.append(str(exc)[:1500])
                records = await read_log(bootstrap, STATE, CHANGES, idle=1.0)
            forked = forks(records)
            if forked:
                problems.append(
                    f"{len(forked)} (order, version) with two contents, e.g. {list(forked)[:5]}"
                )
            behind = newest_versions(records)
            if behind:
                problems.append(f"orders.state behind the newest version at the end: {behind[:3]}")
            print(
                f"compaction with a stale writer: {len(stale)} stale changelog records "
                f"({len(stale_orders)} orders), {len(fillers)} filler orders, "
                f"compacted below {upto}"
            )
            assert not problems, "\n".join(problems)
            check_exact(records, expected)
        finally:
            if frozen.process is not None and frozen.process.poll() is None:
                os.kill(frozen.process.pid, signal.SIGCONT)
            for worker in (survivor, frozen, fresh):
                if worker is not None:
                    worker.stop()


async def test_a_switch_between_guarantees_keeps_every_order_exact(
    log_dir: Path, tmp_path: Path
) -> None:
    """Exactly once, then at least once, then exactly once again, on the same state.

    Changelogs written in transactions end in commit markers; a worker of
    either guarantee recovers its tables up to the last committed record
    (streams/exactly_once.py, ``committed_end_offsets``), or its recovery
    would wait for the marker for ever and the worker would never be ready.
    The RocksDB store is kept across the three workers, as on a host.
    """
    with own_cluster(log_dir, "switch") as cluster:
        bootstrap = cluster.bootstrap_servers
        env = hookline_env(
            bootstrap, tmp_path, HOOKLINE_SOURCES=str(DEV_SOURCES), HOOKLINE_STORE="rocksdb"
        )
        deliveries, expected = scenario(orders=60)
        third = len(deliveries) // 3
        thirds = [deliveries[:third], deliveries[third : 2 * third], deliveries[2 * third :]]
        for guarantee, part in zip(
            ("exactly_once", "at_least_once", "exactly_once"), thirds, strict=True
        ):
            worker = processes.worker(
                {**env, "HOOKLINE_PROCESSING_GUARANTEE": guarantee}, log_dir
            ).start(timeout=90)
            try:
                assert f"processing guarantee: {guarantee}" in worker.log()
                await produce(bootstrap, part, RATE_PER_S)
                await asyncio.sleep(3)  # some of it processed: its changelog records written
            finally:
                worker.stop()
        worker = processes.worker(env, log_dir).start(timeout=90)
        try:
            stats = check_exact(await final_records(bootstrap, expected), expected)
            print(f"exactly once, at least once, exactly once: {stats}")
        finally:
            worker.stop()
