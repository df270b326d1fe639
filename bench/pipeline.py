"""Worker throughput: raw records in, order changes and states out, against a passthrough.

Why a baseline: a Kafka-to-Kafka hop on a shared two-core machine has a
cost of its own that hookline cannot beat. The baseline is that cost: a
plain aiokafka loop that consumes one topic and produces every record to
another over the same records, with the worker's client settings (fetch
wait, prefetch backoff, records per poll, acks=all, linger; see
:func:`forward`), waiting for each poll's acknowledgements and committing
every second as a Faust agent does. The ratio ``hookline / baseline`` is
the share of bare Kafka throughput left after hookline's stages, tables and
extra output topics.

What runs: a broker (the embedded Tansu, or with ``--broker kafka`` a
one-node Apache Kafka), one ``hookline worker`` (memory store, 4
partitions) and, for the baseline, this script again as a ``--forward``
child process, so both movers are separate processes and the producer and
consumer measuring them is this process in both cases.

How both are timed (:func:`move`): the mover is paused (SIGSTOP), the
records are written to its input, and the clock starts when it resumes
(SIGCONT), so neither is limited by this script's sender.

The input, encoded and partitioned exactly as the gateway writes it:

- ``--input partner`` (default): N partner ``ORDER_STATUS_CHANGED``
  deliveries for N distinct orders, each yielding one
  ``production.orders.changes`` record; the clock stops at the N-th;
- ``--input mixed``: the realistic mix of bench/mix.py, its proportions
  printed; the clock stops when every order's latest ``orders.state`` is the
  state its deliveries lead to, checked again a second later (exit code 1
  when an order is not exact).

    .venv/bin/python bench/pipeline.py [--records 10000] [--input partner|mixed]
        [--broker embedded|kafka] [--guarantee exactly_once|at_least_once|both]
        [--rounds 3] [--json] [--profile FILE]

``--guarantee`` sets the worker's ``HOOKLINE_PROCESSING_GUARANTEE`` (unset:
the worker's default, exactly once where the broker has transactions; the
embedded broker has none). ``--guarantee both`` (Apache Kafka) runs one
worker per guarantee, alternating, ``--rounds`` times each (ABBA order:
exactly once first in odd rounds, at least once first in even ones), every
run over fresh records on the same broker after one baseline, so their
ratio is taken within one run of the machine.

``--json`` prints one JSON document on stdout instead of the table (fields in
bench/README.md); ``--profile FILE`` attaches py-spy (raw/collapsed stacks) to
the worker for ``--profile-seconds`` from the start of the measured run.
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run as `python bench/pipeline.py`, sys.path[0] is bench/, where bench/gateway.py
# would shadow the `gateway` package: put the repository first.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse
import asyncio
import contextlib
import json
import os
import re
import select
import signal
import statistics
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any

import httpx
import mix
import uvloop
from _common import (
    BENCH,
    DEV_SOURCES,
    PAYLOADS,
    REPO,
    cpu_seconds,
    cpu_times,
    hookline_command,
    hookline_env,
    load_average,
    print_json,
    say,
    steal_share,
    table,
    thread_cpu_seconds,
)
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.partitioner import DefaultPartitioner
from aiokafka.structs import TopicPartition
from hookline.core import topics
from hookline.core.adapters import ordering_key
from hookline.core.settings import DEFAULT_FETCH_MAX_WAIT_MS
from hookline.core.sources import load_sources
from hookline.gateway.envelope import new_delivery_id, raw_envelope
from hookline.infra.broker import EmbeddedBroker, free_port
from hookline.infra.processes import ServiceProcess
from hookline.schemas import codec
from hookline.streams.app import MAX_POLL_RECORDS
from hookline.streams.end_offsets import fetched_end_offsets
from hookline.streams.internals import set_prefetch_backoff
from hookline.streams.transport import PREFETCH_BACKOFF_S

from hookline.supervisor import dev_secrets

ENVIRONMENT = "production"
PARTITIONS = 4
BASELINE_IN = "bench.forward.in"
BASELINE_OUT = "bench.forward.out"
FORWARDER_GROUP = "bench-forwarder"
READY_LINE = "forwarder ready"
#: The worker's producer linger (streams/app.py, ``producer_linger``), for its baseline.
WORKER_LINGER_MS = 4
#: Seconds a mixed run keeps reading after every order was exact, to see nothing undo it.
SETTLE_SECONDS = 1.0
PARTITIONER = DefaultPartitioner()
#: HOOKLINE_PROCESSING_GUARANTEE's values (core/settings.py), in `--guarantee both`'s order.
GUARANTEES = ("exactly_once", "at_least_once")
#: The worker's table changelogs (core/topics.py ``changelog``), every environment.
CHANGELOG = r"[\w-]+\.hookline\.[\w-]+-changelog"


@dataclass(frozen=True)
class RunResult:
    name: str
    records: int
    seconds: float
    #: From the first input sent to the first output the reader saw.
    first_seconds: float
    #: Seconds between the 10% and the 90% output marks: the rate once a burst flows.
    middle_seconds: float
    #: From the first input's record timestamp to the earliest output's: when the
    #: mover wrote its first output, whatever the reader (which shares its event
    #: loop with the sender) was doing then.
    first_written_seconds: float = float("nan")
    mover_cpu_seconds: float = float("nan")
    #: Share of the machine's CPU time the hypervisor took meanwhile (bench/_common.py).
    steal_share: float = float("nan")

    @property
    def rate(self) -> float:
        return self.records / self.seconds

    @property
    def steady(self) -> float | None:
        """Records/s between the 10% and 90% marks; None when that took under 0.1 s,
        since the reader then sees both marks in one or two fetches."""
        if self.middle_seconds < 0.1:
            return None
        return 0.8 * self.records / self.middle_seconds

    @property
    def steady_rate(self) -> str:
        steady = self.steady
        return "-" if steady is None else f"{steady:.0f}"

    @property
    def cpu_ms_per_record(self) -> float:
        return 1000 * self.mover_cpu_seconds / self.records

    def as_json(self, baseline: RunResult) -> dict[str, Any]:
        return {
            "mover": self.name,
            "records": self.records,
            "seconds": round(self.seconds, 3),
            "records_per_s": round(self.rate, 1),
            "ratio": round(self.rate / baseline.rate, 4),
            "steady_records_per_s": None if self.steady is None else round(self.steady, 1),
            "first_out_ms": round(1000 * self.first_written_seconds, 1),
            "first_seen_ms": round(1000 * self.first_seconds, 1),
            "cpu_ms_per_record": round(self.cpu_ms_per_record, 4),
            "steal_share": round(self.steal_share, 4),
        }


@dataclass(frozen=True)
class RawRecord:
    """A ``<env>.webhooks.raw`` record as the gateway sends it."""

    key: bytes  # the delivery id
    value: bytes  # the Avro WebhookEnvelope
    ordering_key: bytes  # chooses the partition (gateway/publish.py), here the order id
    topic: str | None = None  # the gateway's topic for its source (None: the mover's input)


def raw_records(count: int, tag: str, start: int = 0) -> list[RawRecord]:
    """``count`` raw records as the gateway writes them, one order id each.

    Distinct orders (and bodies) so deduplication lets every one through and
    each becomes exactly one state change; encoded up front so the clock
    measures the pipeline, not this script's encoding. Order ids are
    ``{tag}-{index:07d}`` for ``index`` from ``start`` (bench/state.py makes
    its million orders chunk by chunk).
    """
    source = load_sources(DEV_SOURCES, dev_secrets())["partner"]
    template = json.loads((PAYLOADS / "partner-order-status.json").read_bytes())
    headers = {"content-type": "application/json", "user-agent": "hookline-bench"}
    records = []
    for index in range(start, start + count):
        document = dict(
            template,
            order_id=f"{tag}-{index:07d}",
            transaction_id=f"tr-{tag}-{index:07d}",
        )
        body = json.dumps(document).encode()
        received_at = int(time.time() * 1000)
        delivery_id = new_delivery_id(received_at)
        envelope = raw_envelope(source, body, headers, "127.0.0.1", received_at, delivery_id)
        records.append(
            RawRecord(
                delivery_id.encode(),
                codec.encode(codec.WEBHOOK_ENVELOPE, envelope),
                ordering_key(source.kind, document).encode(),
                topics.raw(ENVIRONMENT),
            )
        )
    return records


class CountKeys:
    """Done when ``want`` outputs whose key starts with ``prefix`` were read (a passthrough,
    or one ``orders.changes`` record per partner delivery)."""

    def __init__(self, topics_: list[str], want: int, prefix: bytes) -> None:
        self.topics, self.want, self.prefix = topics_, want, prefix
        self.count = 0

    def take(self, messages: list[Any]) -> list[int]:
        ours = [m for m in messages if m.key and m.key.startswith(self.prefix)]
        self.count += len(ours)
        return [m.timestamp for m in ours]

    def progress(self) -> int:
        return self.count

    def wrong(self) -> list[Any]:
        return [] if self.count == self.want else [f"{self.count}/{self.want} outputs"]


class FinalStates:
    """Done when every order's latest ``<env>.orders.state`` record is the one its
    deliveries lead to (bench/mix.py): the run is timed to exact results, never to
    a count that wrong results could reach too."""

    def __init__(self, expected: dict[tuple[str, str], dict[str, Any]], deliveries: int) -> None:
        self.expected = expected
        self.want = deliveries
        self.topics = sorted({topics.orders_state(env) for env, _ in expected})
        self.latest: dict[tuple[str, str], bytes] = {}
        self.matched: set[tuple[str, str]] = set()
        self._dirty: set[tuple[str, str]] = set()

    def take(self, messages: list[Any]) -> list[int]:
        stamps = []
        for m in messages:
            if m.key is None or m.value is None:
                continue
            order = (m.topic.split(".", 1)[0], m.key.decode())
            if order in self.expected:
                self.latest[order] = m.value
                self._dirty.add(order)
                stamps.append(m.timestamp)
        return stamps

    def progress(self) -> int:
        """Deliveries' worth done: the share of orders exact, scaled to the deliveries."""
        for order in self._dirty:
            _, state = codec.decode(self.latest[order])
            want = self.expected[order]
            if all(state.get(k) == v for k, v in want.items()):
                self.matched.add(order)
            else:
                self.matched.discard(order)
        self._dirty.clear()
        if len(self.matched) == len(self.expected):
            return self.want
        return self.want * len(self.matched) // len(self.expected)

    def wrong(self) -> list[Any]:
        latest = {o: codec.decode(v)[1] for o, v in self.latest.items()}
        return mix.mismatches(latest, self.expected)


async def move(
    bootstrap: str,
    records: list[RawRecord],
    in_topic: str | None,
    outputs: CountKeys | FinalStates,
    name: str,
    timeout: float,
    mover_pid: int | None,
) -> RunResult:
    """Time ``mover_pid`` over ``records`` already written to its input.

    The mover is paused (SIGSTOP) while the records are written (to
    ``in_topic``, or each to its own topic when ``in_topic`` is None), and the
    clock starts when it is resumed (SIGCONT): neither mover waits for this
    script's sender, and the reader, in this process, has nothing else to do.
    The reader is positioned at the true end of the output topics before, and
    the run ends when ``outputs`` says so. The first output is timed from the
    resume to the earliest output's Kafka timestamp (set by the mover's
    producer), and as the reader saw it.
    """
    # A short fetch wait: the embedded broker answers a waiting fetch only when
    # its wait ends, not when data arrives (Kafka answers at once).
    consumer = AIOKafkaConsumer(
        isolation_level="read_committed",
        bootstrap_servers=bootstrap,
        group_id=None,
        enable_auto_commit=False,
        fetch_max_wait_ms=10,
    )
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    await consumer.start()
    await producer.start()
    paused = False
    try:
        # The producer asks the cluster for each topic's metadata (the
        # consumer's cached metadata need not list topics created after it
        # connected) and waits for it.
        assigned = [
            TopicPartition(t, p)
            for t in outputs.topics
            for p in sorted(await asyncio.wait_for(producer.partitions_for(t), 30))
        ]
        consumer.assign(assigned)
        # From the true end, resolved before the clock starts: the embedded
        # broker lists a partition's end as its newest batch's base offset
        # plus one (streams/end_offsets.py), so seek_to_end alone re-read the
        # previous run's last batches.
        listed = await consumer.end_offsets(assigned)
        ends = await fetched_end_offsets({"bootstrap_servers": bootstrap}, listed)
        for tp in assigned:
            consumer.seek(tp, ends[tp])

        if mover_pid is not None:
            os.kill(mover_pid, signal.SIGSTOP)
            paused = True
        # Partitioned like the gateway does: Kafka's default hash of the ordering key.
        partitions_of: dict[str, list[int]] = {}
        sent = []
        for r in records:
            topic = in_topic or r.topic
            assert topic is not None
            if topic not in partitions_of:
                partitions_of[topic] = sorted(await producer.partitions_for(topic))
            parts = partitions_of[topic]
            sent.append(
                await producer.send(
                    topic,
                    value=r.value,
                    key=r.key,
                    partition=PARTITIONER(r.ordering_key, parts, parts),
                )
            )
        await asyncio.gather(*sent)
        started, resumed_ms = time.perf_counter(), time.time() * 1000
        if mover_pid is not None:
            os.kill(mover_pid, signal.SIGCONT)
            paused = False

        want = outputs.want
        marks: dict[str, float] = {}
        earliest_out: int | None = None
        seen, last_report = 0, started
        while seen < want:
            batch = await consumer.getmany(timeout_ms=50, max_records=2000)
            for messages in batch.values():
                stamps = outputs.take(messages)
                if stamps and (earliest_out is None or min(stamps) < earliest_out):
                    earliest_out = min(stamps)
            seen = outputs.progress()
            now = time.perf_counter()
            if "first" not in marks and earliest_out is not None:
                marks["first"] = now
            for mark, share in (("p10", 0.1), ("p90", 0.9)):
                if mark not in marks and seen > share * want:
                    marks[mark] = now
            if now - last_report >= 2.0:
                last_report = now
                say(f"    {name}: {seen}/{want} done, {seen / (now - started):.0f}/s so far")
            if now - started > timeout:
                raise TimeoutError(
                    f"{name}: {seen}/{want} after {timeout:g}s; e.g. {outputs.wrong()[:3]}"
                )
        done_at = time.perf_counter()
        assert earliest_out is not None
        if isinstance(outputs, FinalStates):
            # Not timed: a later record must not take an exact order away again.
            settle_until = time.perf_counter() + SETTLE_SECONDS
            while time.perf_counter() < settle_until:
                for messages in (await consumer.getmany(timeout_ms=100)).values():
                    outputs.take(messages)
            outputs.progress()
        return RunResult(
            name,
            want,
            done_at - started,
            marks["first"] - started,
            marks["p90"] - marks["p10"],
            first_written_seconds=(earliest_out - resumed_ms) / 1000,
        )
    finally:
        if paused and mover_pid is not None:
            os.kill(mover_pid, signal.SIGCONT)
        await producer.stop()
        await consumer.stop()


async def forward(bootstrap: str) -> None:
    """The baseline mover (``--forward``): consume, produce, wait for acks, commit.

    Fetching as the worker does (streams/app.py, streams/transport.py): the
    same fetch wait, the same prefetch backoff, at most the same records per
    poll; producing as it does (acks=all, the same linger), waiting for every
    acknowledgement of a poll's records, and committing every second like
    Faust, so the only difference left is the work hookline does per record.
    """
    consumer = AIOKafkaConsumer(
        BASELINE_IN,
        isolation_level="read_committed",
        bootstrap_servers=bootstrap,
        group_id=FORWARDER_GROUP,
        auto_offset_reset="earliest",
        enable_auto_commit=True,
        auto_commit_interval_ms=1000,
        fetch_max_wait_ms=DEFAULT_FETCH_MAX_WAIT_MS,
    )
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=WORKER_LINGER_MS)
    await consumer.start()
    set_prefetch_backoff(consumer, PREFETCH_BACKOFF_S)  # as streams/transport.py does
    await producer.start()
    announced = False
    try:
        while True:
            batch = await consumer.getmany(timeout_ms=20, max_records=MAX_POLL_RECORDS)
            if not announced and consumer.assignment():
                print(READY_LINE, flush=True)
                announced = True
            pending = [
                await producer.send(BASELINE_OUT, value=m.value, key=m.key)
                for messages in batch.values()
                for m in messages
            ]
            if pending:
                await asyncio.gather(*pending)
    finally:
        await producer.stop()
        await consumer.stop()


def start_profiler(pid: int | None, output: Path, seconds: float) -> subprocess.Popen[bytes]:
    """py-spy (from the venv) sampling ``pid`` at 100 Hz (``HOOKLINE_BENCH_PROFILE_HZ``
    sets another rate), raw collapsed stacks to ``output``.

    ``--nonblocking`` does not pause the worker to sample it, so the profile
    costs the worker almost nothing (stacks may be slightly inconsistent).
    """
    if pid is None:
        raise RuntimeError("no worker process to profile")
    py_spy = Path(sys.executable).parent / "py-spy"
    command = [
        str(py_spy),
        "record",
        "-p",
        str(pid),
        "-d",
        f"{seconds:g}",
        "-r",
        os.environ.get("HOOKLINE_BENCH_PROFILE_HZ", "100"),
    ]
    command += ["-f", "raw", "-o", str(output), "--nonblocking"]
    say(f"  py-spy attached to worker pid {pid} for {seconds:g}s -> {output}")
    return subprocess.Popen(
        command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )


def start_forwarder(bootstrap: str, log_path: Path) -> subprocess.Popen[str]:
    """This script as ``--forward`` child; returns once its consumer has partitions."""
    process = subprocess.Popen(
        [sys.executable, str(BENCH / "pipeline.py"), "--forward", "--bootstrap", bootstrap],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=open(log_path, "ab"),  # noqa: SIM115 - the child owns it until it exits
        text=True,
        start_new_session=True,
        env=dict(os.environ, PYTHONUNBUFFERED="1"),
    )
    assert process.stdout is not None
    ready, _, _ = select.select([process.stdout], [], [], 60.0)
    line = process.stdout.readline() if ready else ""  # "" also when it exited
    if line.strip() != READY_LINE:
        process.kill()
        raise RuntimeError(f"forwarder did not start: {log_path.read_text()[-3000:]}")
    return process


def stop_process(process: subprocess.Popen[str]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def worker_state_changes(metrics_url: str) -> int:
    """The worker's own count of order changes (a cross-check of what was read back)."""
    text = httpx.get(metrics_url, timeout=5.0).text
    pattern = r'^hookline_worker_state_changes_total\{environment="production"\} (\S+)$'
    return int(sum(float(m) for m in re.findall(pattern, text, re.MULTILINE)))


def worker_guarantee(metrics_url: str) -> str | None:
    """The processing guarantee the worker says is in force (its /metrics)."""
    text = httpx.get(metrics_url, timeout=5.0).text
    pattern = r'^hookline_worker_processing_guarantee\{[^}]*="(\w+)"\} 1\.0$'
    found = re.findall(pattern, text, re.MULTILINE)
    return found[0] if found else None


def worker_stage_events(metrics_url: str) -> dict[str, int]:
    """Events each stage took in all, warm-up included: how a delivery fans out over the hops."""
    text = httpx.get(metrics_url, timeout=5.0).text
    sums = re.findall(r'^hookline_worker_batch_size_sum\{stage="(\w+)"\} (\S+)$', text, re.M)
    return {stage: round(float(total)) for stage, total in sorted(sums)}


def worker_batch_sizes(metrics_url: str) -> dict[str, float]:
    """Mean events per batch by stage, warm-up included: small batches cost more per record."""
    text = httpx.get(metrics_url, timeout=5.0).text
    sums = dict(re.findall(r'^hookline_worker_batch_size_sum\{stage="(\w+)"\} (\S+)$', text, re.M))
    counts = dict(
        re.findall(r'^hookline_worker_batch_size_count\{stage="(\w+)"\} (\S+)$', text, re.M)
    )
    return {
        stage: round(float(sums[stage]) / float(count), 1)
        for stage, count in sorted(counts.items())
        if float(count) and stage in sums
    }


async def drop_changelogs(bootstrap: str, timeout_s: float = 60.0) -> list[str]:
    """Delete the worker's table changelogs, so the next worker starts with empty tables.

    Between two runs of a ``--guarantee both`` invocation: an at-least-once
    worker's table recovery waits to be handed the record before a
    changelog's end offset, which after an exactly-once worker is a
    transaction marker no consumer is handed, so it never became ready
    (exactly once reads to the last committed record instead:
    streams/transport.py ``_highwaters``). Every run's orders are its own, so
    no run needs an earlier run's state; every run then also starts from
    empty tables. The next worker creates the topics again.
    """
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=30_000)
    await admin.start()
    try:
        doomed = [t for t in await admin.list_topics() if re.fullmatch(CHANGELOG, t)]
        if doomed:
            await admin.delete_topics(doomed, timeout_ms=30_000)
        deadline = time.monotonic() + timeout_s
        while set(doomed) & set(await admin.list_topics()):
            if time.monotonic() > deadline:
                raise TimeoutError(f"changelogs not deleted after {timeout_s:g}s: {doomed}")
            await asyncio.sleep(0.2)
        return doomed
    finally:
        await admin.close()


async def create_baseline_topics(bootstrap: str) -> None:
    specs = [topics.TopicSpec(BASELINE_IN), topics.TopicSpec(BASELINE_OUT)]
    await topics.ensure_topics(bootstrap, specs, PARTITIONS, 1)


def run_baseline(
    bootstrap: str,
    warmup: list[RawRecord],
    records: list[RawRecord],
    runs: int,
    timeout: float,
    logs: Path,
) -> RunResult:
    """The forwarder's median run: it takes under a second, so one run is noise."""
    asyncio.run(create_baseline_topics(bootstrap))
    forwarder = start_forwarder(bootstrap, logs / "forwarder.log")
    measured: list[RunResult] = []
    try:
        say("baseline forwarder ready; warming up")
        warm = CountKeys([BASELINE_OUT], len(warmup), b"")
        asyncio.run(move(bootstrap, warmup, BASELINE_IN, warm, "warm-up", 60, forwarder.pid))
        for run in range(1, runs + 1):
            say(f"  baseline run {run}/{runs}: {len(records)} records, {BASELINE_IN} -> out")
            cpu_before, machine_before = cpu_seconds(forwarder.pid), cpu_times()
            outputs = CountKeys([BASELINE_OUT], len(records), b"")
            result = asyncio.run(
                move(bootstrap, records, BASELINE_IN, outputs, "baseline", timeout, forwarder.pid)
            )
            result = replace(
                result,
                mover_cpu_seconds=cpu_seconds(forwarder.pid) - cpu_before,
                steal_share=steal_share(machine_before, cpu_times()),
            )
            say(f"  baseline run {run}/{runs}: {result.rate:.0f} records/s ({result.seconds:.2f}s)")
            measured.append(result)
    finally:
        stop_process(forwarder)
    middle = statistics.median_low(r.seconds for r in measured)
    return next(r for r in measured if r.seconds == middle)


@dataclass(frozen=True)
class HooklineRun:
    result: RunResult
    #: Orders whose final state was not the expected one.
    wrong: list[Any]
    #: The guarantee the worker reported in force (hookline_worker_processing_guarantee).
    guarantee: str | None
    #: Mean events per batch by stage, warm-up included.
    batch_sizes: dict[str, float]
    load_before: float
    load_after: float
    #: The broker's CPU seconds (every node) over the measured run.
    broker_cpu_seconds: float = float("nan")

    def as_json(self, baseline: RunResult) -> dict[str, Any]:
        return {
            **self.result.as_json(baseline),
            "guarantee": self.guarantee,
            "exact": not self.wrong,
            "not_exact": len(self.wrong),
            "batch_sizes": self.batch_sizes,
            "broker_cpu_ms_per_record": round(
                1000 * self.broker_cpu_seconds / self.result.records, 4
            ),
            "load_average": [round(self.load_before, 2), round(self.load_after, 2)],
        }


def run_hookline(
    bootstrap: str,
    warmup: list[RawRecord],
    records: list[RawRecord],
    tag: str,
    timeout: float,
    logs: Path,
    profile: Path | None = None,
    profile_seconds: float = 15.0,
    expected: tuple[dict[tuple[str, str], dict[str, Any]], dict[tuple[str, str], dict[str, Any]]]
    | None = None,
    guarantee: str | None = None,
    name: str = "hookline",
    broker_pids: list[int] | None = None,
) -> HooklineRun:
    """One run: the same deliveries again would be (rightly) dropped as duplicates.

    ``expected`` (the warm-up's and the run's final states, for a mix) times
    the run to exact final states; else to one ``orders.changes`` record per
    delivery. ``guarantee`` is the worker's ``HOOKLINE_PROCESSING_GUARANTEE``
    (None: unset, the worker's default). Returns the result, the orders that
    did not end exact, the guarantee the worker reported and its batch sizes.
    """
    raw_topic, changes_topic = topics.raw(ENVIRONMENT), topics.orders_changes(ENVIRONMENT)
    load_at_start = load_average()
    web_port = free_port()
    data_dir = logs / f"data-{tag}"
    env = hookline_env(
        bootstrap,
        HOOKLINE_STORE="memory",
        HOOKLINE_PARTITIONS=str(PARTITIONS),
        HOOKLINE_DATA_DIR=str(data_dir),
    )
    env.pop("HOOKLINE_PROCESSING_GUARANTEE", None)  # never this shell's
    if guarantee is not None:
        env["HOOKLINE_PROCESSING_GUARANTEE"] = guarantee
    worker = ServiceProcess(
        "hookline worker",
        hookline_command("worker", "--web-port", str(web_port)),
        env,
        logs / f"worker-{tag}.log",
        cwd=REPO,
    )
    with worker:
        took = worker.wait_ready(120, url=f"http://127.0.0.1:{web_port}/readyz")
        say(f"hookline worker ready in {took:.1f}s; warming up")
        worker_pid = worker.process.pid if worker.process else None
        warm: CountKeys | FinalStates
        outputs: CountKeys | FinalStates
        if expected is None:
            warm = CountKeys([changes_topic], len(warmup), f"warm-{tag}".encode())
            outputs = CountKeys([changes_topic], len(records), f"bench-{tag}".encode())
        else:
            warm = FinalStates(expected[0], len(warmup))
            outputs = FinalStates(expected[1], len(records))
        asyncio.run(move(bootstrap, warmup, None, warm, "warm-up", 60, worker_pid))
        metrics_url = f"http://127.0.0.1:{web_port}/metrics"
        in_force = worker_guarantee(metrics_url)
        into = ", ".join(outputs.topics)
        say(f"  {name} ({in_force}): {len(records)} records {raw_topic} -> {into}")
        cpu_before, machine_before = cpu_seconds(worker_pid), cpu_times()
        threads_before = thread_cpu_seconds(worker_pid)
        broker_before = sum(cpu_seconds(pid) for pid in broker_pids or [])
        profiler = None if profile is None else start_profiler(worker_pid, profile, profile_seconds)
        result = asyncio.run(move(bootstrap, records, None, outputs, name, timeout, worker_pid))
        result = replace(
            result,
            mover_cpu_seconds=cpu_seconds(worker_pid) - cpu_before,
            steal_share=steal_share(machine_before, cpu_times()),
        )
        threads = {
            name: round(seconds - threads_before.get(name, 0.0), 2)
            for name, seconds in thread_cpu_seconds(worker_pid).items()
        }
        say(f"  worker CPU seconds by thread: {threads}")
        broker_cpu = sum(cpu_seconds(pid) for pid in broker_pids or []) - broker_before
        if not broker_pids:
            broker_cpu = float("nan")
        say(f"  {name} ({in_force}): {result.rate:.0f} records/s ({result.seconds:.1f}s)")
        if profiler is not None:
            _, errors = profiler.communicate(timeout=profile_seconds + 60)
            say(f"  py-spy exited with {profiler.returncode}: {errors.decode()[-500:].strip()}")
        changes = worker_state_changes(metrics_url)
        say(f"worker counted {changes} state changes (sent {len(warmup) + len(records)})")
        sizes = worker_batch_sizes(metrics_url)
        say(f"mean events per batch: {sizes}")
        say(f"events per stage, warm-up included: {worker_stage_events(metrics_url)}")
    wrong = outputs.wrong()
    if wrong:
        say(f"  {len(wrong)} order(s) not exact, e.g. {wrong[:3]}")
    return HooklineRun(result, wrong, in_force, sizes, load_at_start, load_average(), broker_cpu)


def mixed_records(count: int, tag: str) -> tuple[list[RawRecord], mix.Mix]:
    generated = mix.mix(count, tag, DEV_SOURCES)
    records = [RawRecord(r.key, r.value, r.ordering_key, r.topic) for r in generated.records]
    return records, generated


@dataclass(frozen=True)
class Inputs:
    """One hookline run's deliveries: a warm-up and the measured records, a tag of their own."""

    tag: str
    warmup: list[RawRecord]
    records: list[RawRecord]
    generated: mix.Mix | None  # the mix (None: partner)
    #: The warm-up's and the run's expected final states (a mix), else None.
    expected: (
        tuple[dict[tuple[str, str], dict[str, Any]], dict[tuple[str, str], dict[str, Any]]] | None
    )


def make_inputs(kind: str, warmup_count: int, count: int) -> Inputs:
    tag = uuid.uuid4().hex[:8]
    say(f"encoding {warmup_count} + {count} raw envelopes ({kind}, tag {tag})...")
    if kind == "partner":
        warmup = raw_records(warmup_count, f"warm-{tag}")
        return Inputs(tag, warmup, raw_records(count, f"bench-{tag}"), None, None)
    warmup, warm_mix = mixed_records(warmup_count, f"warm-{tag}")
    records, generated = mixed_records(count, f"bench-{tag}")
    say(
        f"mix: {len(records)} deliveries, {len(generated.expected)} orders; stories "
        f"{dict(generated.stories)}; deliveries by kind {generated.proportions()}"
    )
    return Inputs(tag, warmup, records, generated, (warm_mix.expected, generated.expected))


def guarantee_comparison(runs: list[HooklineRun]) -> dict[str, Any]:
    """Exactly once's deliveries/s over at least once's: of the medians, and per round
    (the two runs of a round, in plan order); None unless both guarantees ran."""
    rates: dict[str | None, list[float]] = {}
    for run in runs:
        rates.setdefault(run.guarantee, []).append(run.result.rate)
    if not all(rates.get(g) for g in GUARANTEES):
        return {
            "exactly_once_over_at_least_once": None,
            "exactly_once_over_at_least_once_by_round": None,
        }
    eos, alo = rates["exactly_once"], rates["at_least_once"]
    return {
        "exactly_once_over_at_least_once": round(
            statistics.median(eos) / statistics.median(alo), 4
        ),
        "exactly_once_over_at_least_once_by_round": [
            round(e / a, 4) for e, a in zip(eos, alo, strict=False)
        ],
    }


def broker_pids(broker: Any) -> list[int]:
    """The broker's processes: the embedded broker's, or every Kafka node's JVM."""
    if isinstance(broker, EmbeddedBroker):
        return [broker.pid] if broker.pid is not None else []
    return [n.process.pid for n in broker.nodes if n.process is not None]


@contextlib.contextmanager
def broker_for(kind: str, logs: Path) -> Iterator[Any]:
    """The embedded broker, or a one-node Apache Kafka (infra/kafka_cluster.py)."""
    if kind == "embedded":
        with EmbeddedBroker(log_path=logs / "broker.log") as broker:
            yield broker
        return
    from hookline.infra.kafka_cluster import KafkaCluster

    with KafkaCluster(log_dir=logs / "kafka") as cluster:
        yield cluster


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--records", type=int, default=10000, help="deliveries per measured run")
    parser.add_argument(
        "--input",
        choices=("partner", "mixed"),
        default="partner",
        help="partner ORDER_STATUS_CHANGED only (default), or the realistic mix (bench/mix.py)",
    )
    parser.add_argument(
        "--broker",
        choices=("embedded", "kafka"),
        default="embedded",
        help="the embedded broker (default) or a local Apache Kafka node",
    )
    parser.add_argument(
        "--guarantee",
        choices=(*GUARANTEES, "both"),
        help="the worker's HOOKLINE_PROCESSING_GUARANTEE (default: unset, the worker's own "
        "default: exactly once where the broker has transactions); 'both' alternates a "
        "worker of each on the same broker, --rounds times each (needs --broker kafka)",
    )
    parser.add_argument(
        "--rounds", type=int, default=3, help="with --guarantee both: runs of each (default 3)"
    )
    parser.add_argument("--warmup", type=int, default=200, help="unmeasured records per mover")
    parser.add_argument("--baseline-runs", type=int, default=3, help="baseline runs (median)")
    parser.add_argument("--timeout", type=float, default=90.0, help="seconds allowed per run")
    parser.add_argument(
        "--json", action="store_true", help="print one JSON document instead of the table"
    )
    parser.add_argument(
        "--profile",
        type=Path,
        help="write a py-spy profile (raw collapsed stacks) of the worker's measured run here",
    )
    parser.add_argument(
        "--profile-seconds", type=float, default=15.0, help="py-spy duration (default 15)"
    )
    parser.add_argument("--forward", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--bootstrap", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.broker == "embedded" and args.guarantee in ("exactly_once", "both"):
        parser.error(
            f"--guarantee {args.guarantee} needs --broker kafka: the embedded broker (Tansu) "
            "has no transactions, so its worker can only process at least once"
        )
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    if args.guarantee == "both" and args.profile is not None:
        parser.error(
            "--profile profiles one worker: give --guarantee exactly_once or at_least_once"
        )
    if args.forward:
        # The worker runs on uvloop (hookline/cli.py): so does its baseline.
        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
        asyncio.run(forward(args.bootstrap))
        return 0

    # One run's guarantee at a time; `both` in ABBA order, so drift favours neither.
    if args.guarantee == "both":
        plan: list[str | None] = []
        for round_ in range(args.rounds):
            plan += list(GUARANTEES) if round_ % 2 == 0 else list(reversed(GUARANTEES))
    else:
        plan = [args.guarantee]
    load_before = load_average()
    # Fresh deliveries per run: the same ones again would be dropped as duplicates.
    inputs = [make_inputs(args.input, args.warmup, args.records) for _ in plan]
    generated = inputs[0].generated

    runs: list[HooklineRun] = []
    with tempfile.TemporaryDirectory(prefix="hookline-bench-") as tmp:
        logs = Path(tmp)
        say(f"pipeline benchmark; logs in {logs}")
        with broker_for(args.broker, logs) as broker:
            say(f"broker ({args.broker}) up at {broker.bootstrap_servers}")
            baseline = run_baseline(
                broker.bootstrap_servers,
                inputs[0].warmup,
                inputs[0].records,
                args.baseline_runs,
                args.timeout,
                logs,
            )
            for number, (guarantee, run_inputs) in enumerate(zip(plan, inputs, strict=True), 1):
                name = "hookline" if len(plan) == 1 else f"hookline {guarantee} #{number}"
                if number > 1:
                    dropped = asyncio.run(drop_changelogs(broker.bootstrap_servers))
                    say(f"{len(dropped)} changelogs deleted: the next worker starts empty")
                runs.append(
                    run_hookline(
                        broker.bootstrap_servers,
                        run_inputs.warmup,
                        run_inputs.records,
                        run_inputs.tag,
                        args.timeout,
                        logs,
                        args.profile,
                        args.profile_seconds,
                        run_inputs.expected,
                        guarantee,
                        name,
                        broker_pids(broker),
                    )
                )

    # The run reported at the top level: the only one, or with `both` the
    # exactly-once run of median rate (its other runs are in `movers`).
    if len(runs) == 1:
        top = runs[0]
    else:
        eos = [r for r in runs if r.guarantee == "exactly_once"]
        middle = statistics.median_low(r.result.rate for r in eos)
        top = next(r for r in eos if r.result.rate == middle)
    hookline, wrong = top.result, [w for r in runs for w in r.wrong]
    load_after = load_average()
    say(f"load average (1 min): {load_before:.2f} before, {load_after:.2f} after")
    if args.json:
        print_json(
            {
                "bench": "pipeline",
                "input": args.input,
                "broker": args.broker,
                "records": len(inputs[0].records),
                "records_per_s": round(hookline.rate, 1),
                "baseline_records_per_s": round(baseline.rate, 1),
                "ratio": round(hookline.rate / baseline.rate, 4),
                "cpu_ms_per_record": round(hookline.cpu_ms_per_record, 4),
                "first_out_ms": round(1000 * hookline.first_written_seconds, 1),
                "first_seen_ms": round(1000 * hookline.first_seconds, 1),
                "steal_share": round(hookline.steal_share, 4),
                "baseline_steal_share": round(baseline.steal_share, 4),
                "partitions": PARTITIONS,
                "baseline_runs": args.baseline_runs,
                "guarantee": top.guarantee,
                "guarantee_asked": args.guarantee,
                "batch_sizes": top.batch_sizes,
                "broker_cpu_ms_per_record": round(
                    1000 * top.broker_cpu_seconds / top.result.records, 4
                ),
                **guarantee_comparison(runs),
                "orders": len(generated.expected) if generated else len(inputs[0].records),
                "exact": not wrong,
                "not_exact": len(wrong),
                "stories": dict(generated.stories) if generated else None,
                "proportions": generated.proportions() if generated else None,
                "movers": [baseline.as_json(baseline)] + [r.as_json(baseline) for r in runs],
                "load_average": [round(load_before, 2), round(load_after, 2)],
                "profile": None if args.profile is None else str(args.profile),
            }
        )
        return 0 if not wrong else 1

    print()
    what = (
        "partner ORDER_STATUS_CHANGED deliveries"
        if generated is None
        else f"mixed deliveries ({len(generated.expected)} orders)"
    )
    print(
        f"pipeline: {len(inputs[0].records)} {what}, {PARTITIONS} partitions, one worker, "
        f"{args.broker} broker, guarantee {'/'.join(sorted({str(r.guarantee) for r in runs}))}; "
        f"baseline = median of {args.baseline_runs} runs "
        "(ratio = deliveries/s relative to the baseline); "
        f"{'every order exact' if not wrong else f'{len(wrong)} orders NOT exact'}"
    )
    if generated is not None:
        print(f"deliveries by kind: {generated.proportions()}")
    rows = [
        [
            r.name,
            str(r.records),
            f"{r.seconds:.2f}",
            f"{r.rate:.0f}",
            f"{r.rate / baseline.rate:.3f}",
            r.steady_rate,
            f"{1000 * r.first_written_seconds:.0f}",
            f"{1000 * r.first_seconds:.0f}",
            f"{r.cpu_ms_per_record:.2f}",
            f"{100 * r.steal_share:.1f}",
        ]
        for r in (baseline, *(run.result for run in runs))
    ]
    headers = [
        "mover",
        "records",
        "seconds",
        "records/s",
        "ratio",
        "10-90% rec/s",
        "first out ms",
        "first seen ms",
        "CPU ms/rec",
        "steal %",
    ]
    print(table(headers, rows))
    comparison = guarantee_comparison(runs)
    if comparison["exactly_once_over_at_least_once"] is not None:
        print(
            "exactly once / at least once, median deliveries/s: "
            f"{comparison['exactly_once_over_at_least_once']:.3f} "
            f"(per round: {comparison['exactly_once_over_at_least_once_by_round']})"
        )
    print(f"load average (1 min): {load_before:.2f} before, {load_after:.2f} after")
    return 0 if not wrong else 1


if __name__ == "__main__":
    raise SystemExit(main())
