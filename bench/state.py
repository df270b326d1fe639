"""State size: does a worker's memory or cost per record grow with the number of orders?

One ``hookline worker`` with the production store (``HOOKLINE_STORE=rocksdb``)
takes N partner ``ORDER_STATUS_CHANGED`` deliveries for N distinct orders,
built and partitioned exactly as bench/pipeline.py builds them (the gateway's
envelope and ordering key) and produced straight to
``production.webhooks.raw``. Every delivery creates a key in each of the
worker's three tables (dedup, transactions, orders), none expires during the
run, so the live state grows by three keys per order.

At every ``--every`` orders read back on ``production.orders.changes`` the
worker's resident memory (``VmRSS`` of /proc/<pid>/status), its CPU time and
the size of its data directory are sampled, giving per segment the
records/s and the worker's CPU ms per record: a flat CPU cost and an RSS that
stops growing mean state size costs nothing; growth per 100k orders is what
a million orders would add.

The producer keeps at most ``--lead`` records ahead of what has been read
back, building records chunk by chunk, so this process's memory stays small
and the worker always has input. It is not a ratio benchmark: there is no
baseline, the numbers are absolute and drift with the machine's load.

The run stops by itself: when N orders are read back, or after ``--timeout``
seconds (then the checkpoints so far are printed and the exit code is 1).
The worker's data directory and the broker's log are in a temporary directory
(printed at start), removed at the end unless ``--keep``.

    .venv/bin/python bench/state.py [--records 1000000] [--every 100000] [--json]
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run as `python bench/state.py`, sys.path[0] is bench/, where bench/gateway.py
# would shadow the `gateway` package: put the repository first.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse
import asyncio
import contextlib
import os
import shutil
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass
from typing import Any

from _common import (
    REPO,
    cpu_seconds,
    hookline_command,
    hookline_env,
    load_average,
    print_json,
    rss_bytes,
    say,
    table,
)
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.structs import TopicPartition
from hookline.core import topics
from hookline.infra.broker import EmbeddedBroker, free_port
from hookline.infra.processes import ServiceProcess
from pipeline import ENVIRONMENT, PARTITIONER, raw_records, worker_state_changes

MB = 1024 * 1024


@dataclass(frozen=True)
class Checkpoint:
    """The worker as seen when ``orders`` order changes had been read back."""

    orders: int
    elapsed_s: float
    rss_mb: float
    worker_cpu_s: float
    data_dir_mb: float
    load_average: float
    #: Since the previous checkpoint (or since the warm-up, for the first).
    segment_records: int = 0
    segment_records_per_s: float = float("nan")
    segment_cpu_ms_per_record: float = float("nan")


def directory_bytes(path: Path) -> int:
    """Bytes of the files under ``path`` (RocksDB files come and go: ignore the vanished)."""
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            try:
                total += os.stat(os.path.join(root, name)).st_size
            except OSError:
                continue
    return total


@dataclass
class Progress:
    produced: int = 0
    seen: int = 0
    peak_rss: int = 0


async def produce(
    bootstrap: str,
    total: int,
    tag: str,
    chunk: int,
    lead: int,
    progress: Progress,
    deadline: float,
) -> None:
    """Build and send ``total`` raw records, never more than ``lead`` ahead of the reader."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    await producer.start()
    try:
        raw_topic = topics.raw(ENVIRONMENT)
        partitions = sorted(await producer.partitions_for(raw_topic))
        while progress.produced < total:
            while progress.produced - progress.seen >= lead:
                if time.monotonic() > deadline:
                    return
                await asyncio.sleep(0.05)
            count = min(chunk, total - progress.produced)
            records = raw_records(count, tag, start=progress.produced)
            sent = [
                await producer.send(
                    raw_topic,
                    value=r.value,
                    key=r.key,
                    partition=PARTITIONER(r.ordering_key, partitions, partitions),
                )
                for r in records
            ]
            await asyncio.gather(*sent)
            progress.produced += count
    finally:
        await producer.stop()


async def measure(
    bootstrap: str,
    worker_pid: int | None,
    data_dir: Path,
    args: argparse.Namespace,
    tag: str,
) -> tuple[list[Checkpoint], bool, Progress]:
    """Feed the worker and sample it at every ``--every`` orders read back.

    Returns the checkpoints (the first, at 0 orders, is the warmed-up worker),
    whether all ``--records`` came back before ``--timeout``, and the counts.
    """
    changes_topic = topics.orders_changes(ENVIRONMENT)
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False
    )
    await consumer.start()
    progress = Progress()
    started = time.monotonic()
    deadline = started + args.timeout
    checkpoints: list[Checkpoint] = []

    def sample(orders: int) -> Checkpoint:
        now = time.monotonic()
        rss = rss_bytes(worker_pid) or 0
        progress.peak_rss = max(progress.peak_rss, rss)
        point = Checkpoint(
            orders=orders,
            elapsed_s=round(now - started, 2),
            rss_mb=round(rss / MB, 1),
            worker_cpu_s=cpu_seconds(worker_pid),
            data_dir_mb=round(directory_bytes(data_dir) / MB, 1),
            load_average=round(load_average(), 2),
        )
        if checkpoints:
            before = checkpoints[-1]
            records = orders - before.orders
            seconds = point.elapsed_s - before.elapsed_s
            point = Checkpoint(
                **{
                    **asdict(point),
                    "segment_records": records,
                    "segment_records_per_s": round(records / seconds, 1) if seconds else 0.0,
                    "segment_cpu_ms_per_record": round(
                        1000 * (point.worker_cpu_s - before.worker_cpu_s) / records, 3
                    )
                    if records
                    else float("nan"),
                }
            )
        checkpoints.append(point)
        say(
            f"  {orders:>8} orders: {point.elapsed_s:7.1f}s, RSS {point.rss_mb:7.1f} MB, "
            f"data {point.data_dir_mb:7.1f} MB, segment {point.segment_records_per_s} rec/s, "
            f"{point.segment_cpu_ms_per_record} CPU ms/rec, load {point.load_average}"
        )
        return point

    try:
        await consumer.topics()
        partitions = consumer.partitions_for_topic(changes_topic) or set()
        if not partitions:
            raise RuntimeError(f"topic {changes_topic} does not exist")
        assigned = [TopicPartition(changes_topic, p) for p in sorted(partitions)]
        consumer.assign(assigned)
        await consumer.seek_to_end(*assigned)
        for tp in assigned:
            await consumer.position(tp)

        sample(0)
        producer = asyncio.create_task(
            produce(
                bootstrap,
                args.records,
                tag,
                args.chunk,
                args.lead,
                progress,
                deadline,
            )
        )
        prefix = tag.encode()
        next_mark = min(args.every, args.records)
        last_report = time.monotonic()
        while progress.seen < args.records:
            if producer.done() and producer.exception() is not None:
                raise RuntimeError("producer failed") from producer.exception()
            batch = await consumer.getmany(timeout_ms=200, max_records=5000)
            for messages in batch.values():
                progress.seen += sum(1 for m in messages if m.key and m.key.startswith(prefix))
            now = time.monotonic()
            if now - last_report >= 2.0:
                last_report = now
                rss = rss_bytes(worker_pid) or 0
                progress.peak_rss = max(progress.peak_rss, rss)
                say(
                    f"    {progress.seen}/{args.records} out ({progress.produced} in), "
                    f"RSS {rss / MB:.0f} MB"
                )
            while progress.seen >= next_mark:
                sample(progress.seen)
                next_mark = min(next_mark + args.every, args.records)
                if next_mark <= checkpoints[-1].orders:
                    break
            if now > deadline:
                say(f"timeout: {progress.seen}/{args.records} orders after {args.timeout:g}s")
                if checkpoints[-1].orders != progress.seen:
                    sample(progress.seen)
                break
        producer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await producer
        return checkpoints, progress.seen >= args.records, progress
    finally:
        await consumer.stop()


async def warm_up(bootstrap: str, tag: str, count: int) -> None:
    """A few deliveries through, so the first checkpoint is a running, not a starting, worker."""
    progress = Progress()
    changes_topic = topics.orders_changes(ENVIRONMENT)
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False
    )
    await consumer.start()
    try:
        await consumer.topics()
        assigned = [
            TopicPartition(changes_topic, p)
            for p in sorted(consumer.partitions_for_topic(changes_topic) or set())
        ]
        consumer.assign(assigned)
        await consumer.seek_to_beginning(*assigned)
        await produce(bootstrap, count, tag, count, count, progress, time.monotonic() + 120)
        deadline = time.monotonic() + 120
        prefix = tag.encode()
        while progress.seen < count:
            if time.monotonic() > deadline:
                raise TimeoutError(f"warm-up: {progress.seen}/{count} after 120s")
            batch = await consumer.getmany(timeout_ms=200, max_records=5000)
            for messages in batch.values():
                progress.seen += sum(1 for m in messages if m.key and m.key.startswith(prefix))
    finally:
        await consumer.stop()


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--records", type=int, default=1_000_000, help="distinct orders")
    parser.add_argument(
        "--every", type=int, default=100_000, help="orders between checkpoints (default 100000)"
    )
    parser.add_argument("--partitions", type=int, default=4, help="HOOKLINE_PARTITIONS")
    parser.add_argument("--warmup", type=int, default=200, help="orders before the first sample")
    parser.add_argument("--chunk", type=int, default=5000, help="records built and sent at once")
    parser.add_argument(
        "--lead", type=int, default=20000, help="most records produced ahead of those read back"
    )
    parser.add_argument(
        "--timeout", type=float, default=3600.0, help="seconds before giving up (default 3600)"
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="parent of the temporary directory (default: the system's temp dir)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the data directory")
    parser.add_argument(
        "--json", action="store_true", help="print one JSON document instead of the table"
    )
    args = parser.parse_args()
    if args.records <= 0 or args.every <= 0:
        parser.error("--records and --every must be positive")

    tag = f"state-{uuid.uuid4().hex[:8]}"
    load_before = load_average()
    root = Path(tempfile.mkdtemp(prefix="hookline-state-", dir=args.data_dir))
    data_dir = root / "data"
    say(f"state benchmark: {args.records} orders; worker data dir {data_dir} (logs in {root})")
    worker_log = root / "worker.log"
    try:
        with EmbeddedBroker(log_path=root / "broker.log") as broker:
            bootstrap = broker.bootstrap_servers
            say(f"broker up at {bootstrap}")
            web_port = free_port()
            worker = ServiceProcess(
                "hookline worker",
                hookline_command("worker", "--web-port", str(web_port)),
                hookline_env(
                    bootstrap,
                    HOOKLINE_STORE="rocksdb",
                    HOOKLINE_PARTITIONS=str(args.partitions),
                    HOOKLINE_DATA_DIR=str(data_dir),
                ),
                worker_log,
                cwd=REPO,
            )
            with worker:
                took = worker.wait_ready(120, url=f"http://127.0.0.1:{web_port}/readyz")
                pid = worker.process.pid if worker.process else None
                say(f"hookline worker (pid {pid}, rocksdb) ready in {took:.1f}s; warming up")
                asyncio.run(warm_up(bootstrap, f"warm-{tag}", args.warmup))
                checkpoints, complete, progress = asyncio.run(
                    measure(bootstrap, pid, data_dir, args, tag)
                )
                changes = worker_state_changes(f"http://127.0.0.1:{web_port}/metrics")
                say(
                    f"worker counted {changes} state changes "
                    f"(sent {args.warmup + progress.produced})"
                )
    finally:
        if args.keep:
            say(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
            say(f"removed {root}")
    load_after = load_average()

    first_mark = next((c for c in checkpoints if c.orders >= min(args.every, args.records)), None)
    last = checkpoints[-1]
    growth_per_100k = None
    if first_mark is not None and last.orders > first_mark.orders:
        growth_per_100k = (
            (last.rss_mb - first_mark.rss_mb) / (last.orders - first_mark.orders) * 100_000
        )
    summary: dict[str, Any] = {
        "bench": "state",
        "store": "rocksdb",
        "partitions": args.partitions,
        "records": args.records,
        "orders_read_back": progress.seen,
        "complete": complete,
        "records_per_s": round(last.orders / last.elapsed_s, 1) if last.elapsed_s else None,
        "cpu_ms_per_record": round(
            1000 * (last.worker_cpu_s - checkpoints[0].worker_cpu_s) / last.orders, 3
        )
        if last.orders
        else None,
        "rss_start_mb": checkpoints[0].rss_mb,
        "rss_end_mb": last.rss_mb,
        "rss_peak_mb": round(progress.peak_rss / MB, 1),
        "rss_growth_mb_per_100k": None if growth_per_100k is None else round(growth_per_100k, 1),
        # The criterion: RSS after 1M within 150 MB of RSS after 100k.
        "rss_first_checkpoint_mb": None if first_mark is None else first_mark.rss_mb,
        "rss_growth_after_first_checkpoint_mb": None
        if first_mark is None
        else round(last.rss_mb - first_mark.rss_mb, 1),
        "checkpoints": [asdict(c) for c in checkpoints],
        "load_average": [round(load_before, 2), round(load_after, 2)],
        "data_dir": str(data_dir),
        "data_dir_kept": args.keep,
    }
    if args.json:
        print_json(summary)
        return 0 if complete else 1

    print()
    print(
        f"state: {progress.seen} of {args.records} distinct orders through one worker "
        f"(rocksdb, {args.partitions} partitions){'' if complete else ', TIMED OUT'}; "
        "segment = since the previous row"
    )
    rows = [
        [
            str(c.orders),
            f"{c.elapsed_s:.1f}",
            f"{c.rss_mb:.1f}",
            f"{c.rss_mb - checkpoints[0].rss_mb:+.1f}",
            f"{c.data_dir_mb:.1f}",
            "-" if not c.segment_records else f"{c.segment_records_per_s:.0f}",
            "-" if not c.segment_records else f"{c.segment_cpu_ms_per_record:.3f}",
            f"{c.load_average:.2f}",
        ]
        for c in checkpoints
    ]
    headers = [
        "orders",
        "elapsed s",
        "RSS MB",
        "RSS vs start",
        "data dir MB",
        "segment rec/s",
        "segment CPU ms/rec",
        "load",
    ]
    print(table(headers, rows))
    if growth_per_100k is not None and first_mark is not None:
        print(
            f"RSS after {first_mark.orders} orders {first_mark.rss_mb:.1f} MB, after "
            f"{last.orders} {last.rss_mb:.1f} MB: {last.rss_mb - first_mark.rss_mb:+.1f} MB "
            f"(the issue allows 150 MB from 100k to 1M); {growth_per_100k:.1f} MB per 100k "
            f"orders (linear extrapolation to 1M from 100k: {9 * growth_per_100k:.0f} MB)"
        )
    print(
        f"peak RSS {progress.peak_rss / MB:.1f} MB; load average {load_before:.2f} -> "
        f"{load_after:.2f}"
    )
    return 0 if complete else 1


if __name__ == "__main__":
    raise SystemExit(main())
