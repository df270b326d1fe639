"""Workers under crashes and in pairs: state exact, versions 1..n, re-emits identical.

Raw records are produced straight to ``production.webhooks.raw`` (partitioned
by ordering key, as the gateway does) at a steady rate, so the worker is busy
when it is killed. Each test gets its own broker of each kind, so the killed
member's session timeout does not slow other tests down; with an external
cluster (KAFKA_BOOTSTRAP_SERVERS) that cluster is the kafka one.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import re
import signal
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.partitioner import DefaultPartitioner
from hookline.core.adapters import ordering_key, partner
from hookline.core.settings import DEV_SOURCES
from hookline.core.sources import Source, load_sources
from hookline.streams.end_offsets import fetched_end_offsets
from hookline.streams.redelivery import MAX_OUTBOX

from tests.conftest import hookline_env
from tests.support import processes, traffic
from tests.support.broker import running_broker
from tests.support.kafka import Record, latest_by_key, read_topics
from tests.support.signing import DEV, payments_body

RATE_PER_S = 400
PARTITIONER = DefaultPartitioner()


@pytest.fixture
def bootstrap(broker_kind: str, log_dir: Path) -> Iterator[str]:
    with running_broker(broker_kind, log_dir, "workers") as broker:
        yield broker.bootstrap_servers


@pytest.fixture
def env(bootstrap: str, tmp_path: Path) -> dict[str, str]:
    return hookline_env(bootstrap, tmp_path, HOOKLINE_SOURCES=str(DEV_SOURCES))


def reserialized(body: bytes) -> bytes:
    """A provider retry that re-serializes: other whitespace and key order, same content."""
    document = json.loads(body)
    return json.dumps(dict(reversed(list(document.items()))), indent=2).encode()


def scenario(orders: int) -> tuple[list[tuple[str, bytes]], dict[str, dict[str, Any]]]:
    """Per order, one of two payment stories; orders interleave at random.

    - paid at once: checkout, PENDING, ACTIVE, a byte-identical retry of ACTIVE,
      payment, confirmation;
    - re-checkout: checkout, failed payment, a second checkout, PENDING, ACTIVE,
      a re-serialized retry of ACTIVE, payment of the second transaction,
      confirmation, a partial refund and its re-serialized retry.

    Each order's deliveries stay in this order. Returns
    ([(source, body)...], {order_id: expected final state}).
    """
    rng = random.Random(7)
    sequences = []
    expected = {}
    for index in range(orders):
        order, tx = traffic.unique("ord"), traffic.unique("tr")
        active = traffic.order_status(order, "ACTIVE", tx)
        paid = (
            "payments",
            payments_body(traffic.payment_claims(tx, "completed"), DEV["PAYMENTS_SECRET"]),
        )
        want = {
            "transaction_id": tx,
            "order_status": "ACTIVE",
            "payment_status": "SUCCEEDED",
            "confirmation_pdf_url": traffic.pdf_url(order),
            "vignette_id": None,
            "amount": Decimal("15.7000"),
            "currency": "EUR",
            "refunded_amount": None,
        }
        if index % 2 == 0:
            sequences.append(
                [
                    ("partner", traffic.checkout(tx, [order], "CREATED")),
                    ("partner", traffic.order_status(order, "PENDING", tx)),
                    ("partner", active),
                    ("partner", active),  # the provider's retry
                    paid,
                    ("partner", traffic.confirmation(order, tx)),
                ]
            )
        else:
            declined = traffic.unique("tr")
            refund = traffic.envelope_event(
                traffic.unique("wh"),
                "subscription_event_refund",
                {"order_id": order, "amount": 5.0, "currency": "EUR"},
            )
            failed = payments_body(
                traffic.payment_claims(declined, "failed"), DEV["PAYMENTS_SECRET"]
            )
            sequences.append(
                [
                    ("partner", traffic.checkout(declined, [order], "CREATED")),
                    ("payments", failed),
                    ("partner", traffic.checkout(tx, [order], "CREATED")),
                    ("partner", traffic.order_status(order, "PENDING", tx)),
                    ("partner", active),
                    ("partner", reserialized(active)),
                    paid,
                    ("partner", traffic.confirmation(order, tx)),
                    ("envelope", refund),
                    ("envelope", reserialized(refund)),
                ]
            )
            want["refunded_amount"] = Decimal("5.0000")
        expected[order] = want
    deliveries = []
    while sequences:
        sequence = rng.choice(sequences)
        deliveries.append(sequence.pop(0))
        if not sequence:
            sequences.remove(sequence)
    return deliveries, expected


async def produce(
    bootstrap: str, deliveries: list[tuple[str, bytes]], rate: float, on_progress: Any = None
) -> None:
    sources: dict[str, Source] = load_sources(DEV_SOURCES, DEV)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=False)
    await producer.start()
    try:
        partitions = sorted(await producer.partitions_for("production.webhooks.raw"))
        loop = asyncio.get_running_loop()
        started = loop.time()
        for index, (name, body) in enumerate(deliveries):
            source = sources[name]
            key, value = traffic.raw_record(source, body)
            order_key = ordering_key(source.kind, json.loads(body)).encode()
            partition = PARTITIONER(order_key, partitions, partitions)
            await producer.send_and_wait(
                "production.webhooks.raw", value, key=key, partition=partition
            )
            if on_progress is not None:
                await on_progress(index + 1)
            delay = started + (index + 1) / rate - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
    finally:
        await producer.stop()


async def final_records(bootstrap: str, expected: dict[str, dict[str, Any]]) -> list[Record]:
    def mismatches(records: list[Record]) -> list[tuple[str, Any, Any]]:
        latest = latest_by_key([r for r in records if r.topic == "production.orders.state"])
        wrong = []
        for order, want in expected.items():
            got = {k: latest[order][k] for k in want} if order in latest else None
            if got != want:
                wrong.append((order, want, got))
        return wrong

    try:
        return await read_topics(
            bootstrap,
            "production.orders.state",
            "production.orders.changes",
            until=lambda records: not mismatches(records),
            timeout=150,
            idle=3.0,
        )
    except TimeoutError:
        # Say which orders are off, and how: a timeout alone tells nothing.
        records = await read_topics(
            bootstrap, "production.orders.state", "production.orders.changes", idle=3.0
        )
        wrong = mismatches(records)
        progress = await committed_against_ends(bootstrap)
        raise AssertionError(
            f"{len(wrong)} orders not exact, e.g. {wrong[:3]}; "
            f"inputs committed/end per partition (a stall leaves a gap, a loss does not): "
            f"{progress}"
        ) from None


async def committed_against_ends(bootstrap: str) -> dict[str, str]:
    """The worker group's committed offset against each input partition's end.

    Said when a scenario fails: all inputs committed means the missing facts
    were lost on the way; a partition short of its end means it stalled.
    """
    topics = ["production.webhooks.raw", "production.hookline.transaction-facts"]
    topics.append("production.hookline.order-inputs")
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id="hookline")
    await consumer.start()
    try:
        partitions = [TopicPartition(t, p) for t in topics for p in range(4)]
        listed = await consumer.end_offsets(partitions)
        ends = await fetched_end_offsets({"bootstrap_servers": bootstrap}, listed)
        return {
            f"{tp.topic.rsplit('.', 1)[1]}[{tp.partition}]": (
                f"{await consumer.committed(tp)}/{ends[tp]}"
            )
            for tp in partitions
        }
    finally:
        await consumer.stop()


def check_exact(
    records: list[Record], expected: dict[str, dict[str, Any]], once: bool = False
) -> dict[str, int]:
    """Final states exact; versions 1..n per order; every re-emit byte-identical.

    ``once`` (exactly once, Apache Kafka): read ``read_committed``, no
    (order, version) comes twice, in ``orders.changes`` or ``orders.state``.
    """
    states = latest_by_key([r for r in records if r.topic == "production.orders.state"])
    by_version: dict[tuple[str, int], set[bytes]] = defaultdict(set)
    for record in records:
        if record.topic == "production.orders.changes" and record.key in expected:
            by_version[(record.key, record.value["version"])].add(record.raw)
    stats = {"changes": 0, "orders": len(expected)}
    for order, want in expected.items():
        final = states[order]
        assert {k: final[k] for k in want} == want, order
        versions = sorted(v for (o, v) in by_version if o == order)
        assert versions == list(range(1, final["version"] + 1)), (order, versions)
        assert final["version"] >= 6, (order, final)  # every story has at least six changes
        for version in versions:
            copies = by_version[(order, version)]
            assert len(copies) == 1, f"{order} v{version} re-emitted with different bytes"
        stats["changes"] += len(versions)
    stats["change_records"] = sum(
        1 for r in records if r.topic == "production.orders.changes" and r.key in expected
    )
    if once:
        for topic in ("production.orders.changes", "production.orders.state"):
            seen: dict[tuple[str, int], int] = defaultdict(int)
            for record in records:
                if record.topic == topic and record.key in expected:
                    seen[(record.key, record.value["version"])] += 1
            twice = sorted(key for key, count in seen.items() if count > 1)
            assert not twice, f"{topic}: {len(twice)} (order, version) read twice: {twice[:5]}"
    return stats


def metric(worker: processes.ServiceProcess, name: str) -> float:
    text = httpx.get(f"{worker.url}/metrics", timeout=5).text  # type: ignore[attr-defined]
    pattern = re.compile(rf"^{name}(\{{[^}}]*\}})? (\S+)$")
    return sum(float(m.group(2)) for line in text.splitlines() if (m := pattern.match(line)))


@pytest.mark.slow
async def test_sigkill_mid_stream_loses_nothing_and_repeats_identically(
    broker_kind: str, env: dict[str, str], bootstrap: str, log_dir: Path
) -> None:
    # The production store: the replacement restarts on the same RocksDB
    # directory, as a worker restarted on its host would.
    env = {**env, "HOOKLINE_STORE": "rocksdb"}
    deliveries, expected = scenario(orders=300)  # 1,800 deliveries at 400/s
    first = processes.worker(env, log_dir).start(timeout=90)
    killed = asyncio.Event()
    replacement: list[processes.ServiceProcess] = []

    async def kill_midway(sent: int) -> None:
        if sent == len(deliveries) // 2 and not killed.is_set():
            first.kill()  # SIGKILL: no commit, no flush
            killed.set()
            replacement.append(processes.worker(env, log_dir))
            # Start it without waiting: the producer keeps going meanwhile.
            await asyncio.to_thread(replacement[0].start, 120)

    try:
        producing = asyncio.create_task(produce(bootstrap, deliveries, RATE_PER_S, kill_midway))
        await producing
        assert killed.is_set()
        records = await final_records(bootstrap, expected)
        stats = check_exact(records, expected, once=broker_kind == "kafka")
        replayed = metric(replacement[0], "hookline_worker_replayed_inputs_total")
        print(f"crash test: {stats}, inputs found already applied after restart: {replayed:g}")
    finally:
        first.kill()
        for worker in replacement:
            worker.stop()


@pytest.mark.slow
async def test_two_workers_reach_the_same_state_as_one(
    broker_kind: str, env: dict[str, str], bootstrap: str, log_dir: Path
) -> None:
    one = processes.worker(env, log_dir).start(timeout=90)
    two = processes.worker(env, log_dir)
    await asyncio.to_thread(two.start, 120)
    try:
        for worker in (one, two):  # both ready after the rebalance
            await asyncio.to_thread(worker.wait_ready, 60)
        deliveries, expected = scenario(orders=200)
        await produce(bootstrap, deliveries, RATE_PER_S)
        records = await final_records(bootstrap, expected)
        check_exact(records, expected, once=broker_kind == "kafka")
        # Both took part: each processed some canonical events.
        assert metric(one, "hookline_worker_events_total") > 0
        assert metric(two, "hookline_worker_events_total") > 0
    finally:
        one.stop()
        two.stop()


@pytest.mark.slow
async def test_two_workers_one_killed_mid_stream_end_exact(
    broker_kind: str, env: dict[str, str], bootstrap: str, log_dir: Path, tmp_path: Path
) -> None:
    """PRODUCT v2 scenario: re-checkouts, refunds, re-serialized retries; one of two killed.

    The survivor recovers the dead member's table partitions from their
    changelogs, whose newest writes were lingered into multi-record batches:
    recovery must read to the true end (streams/end_offsets.py).
    """
    one = processes.worker({**env, "HOOKLINE_DATA_DIR": str(tmp_path / "one")}, log_dir)
    two = processes.worker({**env, "HOOKLINE_DATA_DIR": str(tmp_path / "two")}, log_dir)
    one.start(timeout=90)
    await asyncio.to_thread(two.start, 120)
    deliveries, expected = scenario(orders=160)
    try:
        for worker in (one, two):
            await asyncio.to_thread(worker.wait_ready, 60)

        async def kill_midway(sent: int) -> None:
            if sent == len(deliveries) // 2:
                two.kill()  # SIGKILL: its partitions move to the survivor after the session timeout

        await produce(bootstrap, deliveries, RATE_PER_S, kill_midway)
        records = await final_records(bootstrap, expected)
        stats = check_exact(records, expected, once=broker_kind == "kafka")
        print(f"two workers, one killed: {stats}")
        assert metric(one, "hookline_worker_events_total") > 0
    finally:
        one.stop()
        two.kill()


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["intake", "orders"])
async def test_two_workers_one_killed_mid_transaction_end_exact(
    broker_kind: str,
    stage: str,
    env: dict[str, str],
    bootstrap: str,
    log_dir: Path,
    tmp_path: Path,
) -> None:
    """One of two workers dies with a batch's records sent and its offsets not committed.

    Exactly once (Kafka): its open transaction is aborted when the survivor
    takes the partition's transactional id over, and a ``read_committed``
    reader sees each (order, version) once. At least once (Tansu): the batch
    is processed again, with byte-identical records.
    """
    survivor = processes.worker({**env, "HOOKLINE_DATA_DIR": str(tmp_path / "one")}, log_dir)
    doomed = processes.worker(
        {**env, "HOOKLINE_DATA_DIR": str(tmp_path / "two"), "HOOKLINE_KILL_IN_TRANSACTION": stage},
        log_dir,
    )
    survivor.start(timeout=90)
    await asyncio.to_thread(doomed.start, 120)
    deliveries, expected = scenario(orders=120)
    try:
        for worker in (survivor, doomed):
            await asyncio.to_thread(worker.wait_ready, 60)
        await produce(bootstrap, deliveries, RATE_PER_S)
        assert doomed.process is not None
        assert await asyncio.to_thread(doomed.process.wait, 30) == -signal.SIGKILL
        records = await final_records(bootstrap, expected)
        stats = check_exact(records, expected, once=broker_kind == "kafka")
        print(f"two workers, one killed mid-transaction in {stage}: {stats}")
    finally:
        survivor.stop()
        doomed.kill()


@pytest.mark.slow
async def test_the_worker_says_which_guarantee_is_in_force(
    broker_kind: str, env: dict[str, str], log_dir: Path
) -> None:
    """Exactly once by default where the broker has transactions; said at start and in /metrics."""
    expected = "exactly_once" if broker_kind == "kafka" else "at_least_once"
    worker = processes.worker(env, log_dir).start(timeout=90)
    try:
        assert f"processing guarantee: {expected}" in worker.log()
        url = f"{worker.url}/metrics"  # type: ignore[attr-defined]
        text = (await asyncio.to_thread(httpx.get, url, timeout=5)).text
        name = "hookline_worker_processing_guarantee"
        assert f'{name}{{{name}="{expected}"}} 1.0' in text
    finally:
        worker.stop()
    forced = {**env, "HOOKLINE_PROCESSING_GUARANTEE": "exactly_once"}
    if broker_kind == "kafka":
        forced["HOOKLINE_PROCESSING_GUARANTEE"] = "at_least_once"
        worker = processes.worker(forced, log_dir).start(timeout=90)
        try:
            assert "processing guarantee: at_least_once (as configured)" in worker.log()
        finally:
            worker.stop()
        return
    # No transactions on the embedded broker: asking for them is a clear error, not a start.
    refused = processes.worker(forced, log_dir).launch()
    assert refused.process is not None
    assert await asyncio.to_thread(refused.process.wait, 60) == 1
    assert "the broker has no transactions" in refused.log()


@pytest.mark.slow
async def test_killed_worker_moved_to_an_empty_data_directory_keeps_one_content_per_version(
    broker_kind: str, env: dict[str, str], bootstrap: str, log_dir: Path, tmp_path: Path
) -> None:
    """kill -9, restart on the same RocksDB disk, kill -9 again, move to an empty disk.

    The local store is written only after its changelog records were
    acknowledged, so the restarted worker's disk never knows more than the
    changelog: the worker on the empty disk continues from the same state and
    no (order, version) gets a second content.
    """
    env = {**env, "HOOKLINE_STORE": "rocksdb"}
    disk, empty = tmp_path / "disk", tmp_path / "empty"
    deliveries, expected = scenario(orders=240)
    workers = [processes.worker({**env, "HOOKLINE_DATA_DIR": str(disk)}, log_dir)]
    workers[0].start(timeout=90)
    third = len(deliveries) // 3

    async def crash(sent: int) -> None:
        if sent in (third, 2 * third):
            workers[-1].kill()
            directory = disk if sent == third else empty
            workers.append(processes.worker({**env, "HOOKLINE_DATA_DIR": str(directory)}, log_dir))
            await asyncio.to_thread(workers[-1].start, 120)

    try:
        await produce(bootstrap, deliveries, RATE_PER_S, crash)
        assert len(workers) == 3
        records = await final_records(bootstrap, expected)
        stats = check_exact(records, expected, once=broker_kind == "kafka")
        print(f"killed, restarted on its disk, killed, moved to an empty disk: {stats}")
    finally:
        for worker in workers:
            worker.kill()


def proc_state(worker: processes.ServiceProcess) -> str:
    """The process state letter from /proc (T: stopped)."""
    assert worker.process is not None
    stat = Path(f"/proc/{worker.process.pid}/stat").read_text()
    return stat.rsplit(")", 1)[1].split()[0]


async def until_logged(worker: processes.ServiceProcess, text: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while text not in worker.log():
        assert time.monotonic() < deadline, worker.tail()
        await asyncio.sleep(0.5)


async def until_stopped(worker: processes.ServiceProcess, timeout: float) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while proc_state(worker) != "T":
        assert loop.time() < deadline, f"worker did not stop itself:\n{worker.tail()}"
        await asyncio.sleep(0.1)


@pytest.mark.slow
async def test_a_worker_paused_past_its_session_writes_nothing_stale(
    broker_kind: str, env: dict[str, str], bootstrap: str, log_dir: Path
) -> None:
    """A worker frozen mid-batch loses its partitions, wakes up, and must not write.

    Its batch was computed from state the new owner has since moved past: sent
    late, its ``orders.state`` records would land after newer versions (the
    compacted topic would show orders going back in time) and its changelog
    records after the new owner's. It confirms its membership first, finds
    itself evicted, drops the batch with nothing sent or committed, and goes
    on: it rejoins the group and processes what it is then assigned.
    """
    session = float(env["HOOKLINE_SESSION_TIMEOUT"])
    survivor = processes.worker(env, log_dir)
    survivor.start(timeout=90)
    # Stops itself (SIGSTOP) in its first orders batch with table writes,
    # after computing the batch and before sending any of it.
    paused = processes.worker({**env, "HOOKLINE_STOP_BEFORE_FLUSH": "orders"}, log_dir)
    await asyncio.to_thread(paused.start, 120)
    deliveries, expected = scenario(orders=120)
    third = len(deliveries) // 3
    try:
        for worker in (survivor, paused):
            await asyncio.to_thread(worker.wait_ready, 60)
        await produce(bootstrap, deliveries[:third], RATE_PER_S)
        await until_stopped(paused, 30)
        # Past the session timeout the survivor owns every partition and moves
        # the paused worker's orders on.
        await asyncio.sleep(session + 2)
        await asyncio.to_thread(survivor.wait_ready, 60)
        await produce(bootstrap, deliveries[third : 2 * third], RATE_PER_S)
        await asyncio.sleep(2)
        assert paused.process is not None
        os.kill(paused.process.pid, signal.SIGCONT)
        await until_logged(paused, "fenced out", 60)
        # It does not exit: it rejoins, and shares the rest of the work.
        await asyncio.to_thread(paused.wait_ready, 60)
        assert paused.process.poll() is None, paused.tail()
        await produce(bootstrap, deliveries[2 * third :], RATE_PER_S)
        # Every order exact, and no version with two contents: the state topic
        # ends on each order's newest version, not on a late stale one.
        records = await final_records(bootstrap, expected)
        stats = check_exact(records, expected, once=broker_kind == "kafka")
        print(f"paused past its session: {stats}")
        assert paused.process.poll() is None, paused.tail()
    finally:
        survivor.stop()
        paused.stop()


def same_partition_ids(prefix: str, like: str, partitions: int, count: int) -> list[str]:
    """Ids that Kafka's default partitioner puts in the same partition as ``like``."""
    all_partitions = list(range(partitions))
    target = PARTITIONER(like.encode(), all_partitions, all_partitions)
    found = []
    while len(found) < count:
        candidate = traffic.unique(prefix)
        if PARTITIONER(candidate.encode(), all_partitions, all_partitions) == target:
            found.append(candidate)
    return found


async def test_expired_keys_are_deleted_from_tables(
    bootstrap: str, log_dir: Path, tmp_path: Path
) -> None:
    sources = tmp_path / "sources.toml"
    sources.write_text(
        '[sources.partner]\nkind = "partner"\nenvironment = "production"\n'
        'verify = "token"\nsecret_env = "PARTNER_SECRET"\ndedup_window = "1m"\n'
    )
    env = hookline_env(
        bootstrap, tmp_path, HOOKLINE_SOURCES=str(sources), HOOKLINE_JOIN_RETENTION_DAYS="0.001"
    )  # 86.4 s of event time
    worker = processes.worker(env, log_dir).start(timeout=90)
    try:
        source = load_sources(sources, DEV)["partner"]
        now = 1_800_000_000_000  # event time is the records' received_at
        order, tx = traffic.unique("ord"), traffic.unique("tr")
        [later_tx] = same_partition_ids("tr", tx, 4, 1)
        first = [
            (traffic.order_status(order, "PENDING"), now),
            (traffic.checkout(tx, [], "CREATED"), now),
        ]
        # Two minutes of event time later, in the same partitions: the first
        # dedup entry and the first transaction are past their windows.
        second = [
            (traffic.order_status(order, "ACTIVE"), now + 120_000),
            (traffic.checkout(later_tx, [], "CREATED"), now + 120_000),
        ]
        producer = AIOKafkaProducer(
            bootstrap_servers=bootstrap, acks="all", enable_idempotence=False
        )
        await producer.start()
        try:
            partitions = sorted(await producer.partitions_for("production.webhooks.raw"))
            for batch in (first, second):
                for body, at in batch:
                    key, value = traffic.raw_record(source, body, received_at_ms=at)
                    order_key = ordering_key("partner", json.loads(body)).encode()
                    await producer.send_and_wait(
                        "production.webhooks.raw",
                        value,
                        key=key,
                        partition=PARTITIONER(order_key, partitions, partitions),
                    )
                await asyncio.sleep(2)  # let the first batch land in its own batch
        finally:
            await producer.stop()

        def tombstoned(records: list[Record]) -> bool:
            deleted = {r.key for r in records if r.schema == "tombstone"}
            return tx in deleted and any(k.startswith("partner|") for k in deleted)

        records = await read_topics(
            bootstrap,
            "production.hookline.dedup-changelog",
            "production.hookline.transactions-changelog",
            until=tombstoned,
            timeout=60,
            idle=0.5,
        )

        def dedup_key(body: bytes) -> str:
            return "partner|" + partner.dedup_identity(json.loads(body), ())[0]

        dedup = [r for r in records if r.topic.endswith("dedup-changelog")]
        deleted = {r.key for r in dedup if r.schema == "tombstone"}
        # Past the 1-minute window when the later deliveries arrived: deleted.
        assert deleted == {dedup_key(body) for body, _ in first}
        # The later ones are within their window: still there.
        assert {r.key for r in dedup} - deleted == {dedup_key(body) for body, _ in second}
        transactions = [r for r in records if r.topic.endswith("transactions-changelog")]
        assert {r.key for r in transactions if r.schema == "tombstone"} == {tx}
        assert metric(worker, "hookline_worker_expired_keys_total") >= 2
    finally:
        worker.stop()


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["intake", "transactions", "orders"])
async def test_a_failed_send_is_never_committed(
    broker_kind: str, stage: str, env: dict[str, str], bootstrap: str, log_dir: Path, tmp_path: Path
) -> None:
    """A batch whose sends fail ends the worker before its offsets can be committed.

    Faust would otherwise restart the agent and ack the abandoned batch; here
    the worker exits (status 70) and a restarted worker, without the fault,
    processes the same inputs: every order ends exact, nothing is lost.
    """
    faulty = processes.worker({**env, "HOOKLINE_FAIL_SENDS": stage}, log_dir)
    faulty.start(timeout=90)
    deliveries, expected = scenario(orders=20)
    try:
        await produce(bootstrap, deliveries, RATE_PER_S)
        assert faulty.process is not None
        code = await asyncio.to_thread(faulty.process.wait, 60)
        assert code == 70, faulty.tail()
        assert f"stage {stage}: a batch failed" in faulty.tail()
    finally:
        faulty.kill()
    async with restarted(env, log_dir):
        check_exact(await final_records(bootstrap, expected), expected, once=broker_kind == "kafka")


@asynccontextmanager
async def restarted(env: dict[str, str], log_dir: Path) -> AsyncIterator[processes.ServiceProcess]:
    """A healthy worker after a failed one, started as a supervisor would restart it."""
    # The dead member leaves the group first (its session times out).
    await asyncio.sleep(float(env["HOOKLINE_SESSION_TIMEOUT"]) + 2)
    healthy = processes.worker(env, log_dir)
    await asyncio.to_thread(healthy.start, 120)
    try:
        yield healthy
    finally:
        healthy.stop()


async def backlog(bootstrap: str, env: dict[str, str], log_dir: Path, deliveries: Any) -> None:
    """Produce ``deliveries`` while no worker runs, so the next one reads them in full batches."""
    # A worker creates the topics (and its group); it is stopped before any record arrives.
    processes.worker(env, log_dir).start(timeout=90).stop()
    await produce(bootstrap, deliveries, rate=10_000)


@pytest.mark.slow
async def test_orders_written_but_not_sent_are_sent_by_the_next_worker(
    broker_kind: str, env: dict[str, str], bootstrap: str, log_dir: Path
) -> None:
    """The orders table is written state first; a worker that dies before sending owes it.

    The faulty worker's first intake batch (a backlog: several changes per
    order) writes its orders records, then fails to send every output and
    exits. The next worker must send each of those versions, every one of
    them, before any newer version of the same order (streams/redelivery.py).
    The outbox exists in at-least-once mode only (with transactions nothing
    is written without its outputs), so that is the mode tested, on both brokers.
    """
    env = {**env, "HOOKLINE_PROCESSING_GUARANTEE": "at_least_once"}
    deliveries, expected = scenario(orders=4)
    await backlog(bootstrap, env, log_dir, deliveries)
    # Launched, not started: it exits as soon as it is ready and reads its first batch.
    faulty = processes.worker({**env, "HOOKLINE_FAIL_SENDS": "intake"}, log_dir).launch()
    try:
        assert faulty.process is not None
        code = await asyncio.to_thread(faulty.process.wait, 90)
        assert code == 70, faulty.tail()
    finally:
        faulty.kill()
    written = [
        r
        for r in await read_topics(bootstrap, "production.hookline.orders-changelog", idle=2.0)
        if r.value.get("outbox")
    ]
    assert any(len(r.value["outbox"]) > 1 for r in written), "no order had two changes in a batch"
    async with restarted(env, log_dir) as healthy:
        check_exact(await final_records(bootstrap, expected), expected, once=broker_kind == "kafka")
        owed = sum(len(r.value["outbox"]) for r in written)
        assert metric(healthy, "hookline_worker_republished_changes_total") >= owed


@pytest.mark.slow
async def test_an_order_changing_in_every_input_of_a_batch_keeps_its_outbox_bounded(
    env: dict[str, str], bootstrap: str, log_dir: Path
) -> None:
    """More changes to one order than an outbox holds, in one batch: flushed part way.

    At-least-once mode, on both brokers: with transactions there is no outbox.
    """
    env = {**env, "HOOKLINE_PROCESSING_GUARANTEE": "at_least_once"}
    order = traffic.unique("ord")
    bodies = []
    for n in range(3 * MAX_OUTBOX):
        document = json.loads(traffic.confirmation(order))
        document["pdf_url"] = f"https://files.example.com/confirmations/{order}-{n:03d}.pdf"
        bodies.append(("partner", traffic.dumps(document)))
    await backlog(bootstrap, env, log_dir, bodies)
    worker = processes.worker(env, log_dir).start(timeout=90)
    try:

        def published(records: list[Record]) -> bool:
            versions = {r.value["version"] for r in records if r.key == order}
            return len(versions) >= MAX_OUTBOX + 1

        changes = await read_topics(
            bootstrap, "production.orders.changes", until=published, timeout=60, idle=2.0
        )
        changelog = await read_topics(bootstrap, "production.hookline.orders-changelog", idle=2.0)
    finally:
        worker.stop()
    by_version: dict[int, set[bytes]] = defaultdict(set)
    for record in changes:
        if record.key == order:
            by_version[record.value["version"]].add(record.raw)
    assert sorted(by_version) == list(range(1, max(by_version) + 1))
    assert all(len(copies) == 1 for copies in by_version.values())
    outboxes = [len(r.value["outbox"]) for r in changelog if r.key == order and r.value]
    assert max(outboxes) == MAX_OUTBOX, outboxes  # full once, never beyond
