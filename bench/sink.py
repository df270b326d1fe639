"""Warehouse sink throughput: records landed in Iceberg per second, against a bare consumer.

Why a baseline: reading a topic from an embedded broker on two shared cores
has a cost of its own that the sink cannot beat. The baseline is that cost:
a plain aiokafka consumer (its own process) reading the same records from
the beginning and doing nothing with them. The ratio ``sink / baseline`` is
the share of bare read throughput left after decoding, mapping to Arrow,
writing Parquet and committing Iceberg snapshots (with the duplicate checks
and the ``orders_state`` upsert).

The input is N records on each of ``production.orders.changes``,
``production.orders.state`` and ``production.webhooks.events`` (N orders,
one version each), written before either reader starts. The sink's clock
runs from its "sink ready" log line to the moment the three tables'
committed offsets cover every record; the baseline's from its first fetch
request to its last record.

    .venv/bin/python bench/sink.py [--records 20000] [--batch-rows 50000 5000]
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run as `python bench/sink.py`: put the repository first (bench/gateway.py
# would shadow the `gateway` package).
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse
import asyncio
import subprocess
import tempfile
import time
import uuid
from decimal import Decimal

from _common import hookline_command, hookline_env, say, table
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from hookline.core import topics
from hookline.infra.broker import EmbeddedBroker, free_port
from hookline.infra.processes import ServiceProcess
from hookline.schemas import codec

ENVIRONMENT = "production"
PARTITIONS = 4
TOPICS = (
    topics.orders_changes(ENVIRONMENT),
    topics.orders_state(ENVIRONMENT),
    topics.events(ENVIRONMENT),
)
START_MS = 1_772_406_000_000


def records(count: int) -> list[tuple[str, bytes, bytes]]:
    """(topic, key, value): one change, state and event per order."""
    tag = uuid.uuid4().hex[:6]
    out = []
    for i in range(count):
        order = f"bench_{tag}_{i:07d}"
        at = START_MS + i * 1000
        state = {
            "order_id": order,
            "environment": ENVIRONMENT,
            "transaction_id": f"tr_{order}",
            "order_status": "ACTIVE",
            "payment_status": "SUCCEEDED",
            "version": 1,
            "updated_at": at,
            "amount": Decimal("15.7000"),
            "currency": "EUR",
        }
        change = {
            "order_id": order,
            "environment": ENVIRONMENT,
            "version": 1,
            "before": None,
            "after": state,
            "changed_fields": ["order_status", "payment_status", "transaction_id"],
            "cause": {
                "event_id": f"d_{order}:0",
                "delivery_id": f"d_{order}",
                "source": "partner",
                "kind": "partner",
                "type": "order.status_changed",
                "received_at": at,
                "provider_event_type": "ORDER_STATUS_CHANGED",
            },
        }
        event = {
            "event_id": f"d_{order}:0",
            "delivery_id": f"d_{order}",
            "source": "partner",
            "kind": "partner",
            "environment": ENVIRONMENT,
            "type": "order.status_changed",
            "entity_type": "order",
            "entity_id": order,
            "received_at": at,
            "order_id": order,
            "order_status": "ACTIVE",
        }
        key = order.encode()
        out.append((TOPICS[0], key, codec.encode(codec.ORDER_CHANGE, change)))
        out.append((TOPICS[1], key, codec.encode(codec.ORDER_STATE, state)))
        out.append((TOPICS[2], key, codec.encode(codec.CANONICAL_EVENT, event)))
    return out


async def produce(bootstrap: str, batch: list[tuple[str, bytes, bytes]]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    await producer.start()
    try:
        for start in range(0, len(batch), 2000):
            futures = [await producer.send(t, v, key=k) for t, k, v in batch[start : start + 2000]]
            await asyncio.gather(*futures)
    finally:
        await producer.stop()


async def bare_read(bootstrap: str, expected: int) -> float:
    """Seconds for a plain consumer to read every record once (the baseline)."""
    consumer = AIOKafkaConsumer(
        *TOPICS, bootstrap_servers=bootstrap, group_id=None, auto_offset_reset="earliest"
    )
    await consumer.start()
    try:
        seen, started = 0, time.perf_counter()  # from the first fetch request on
        while seen < expected:
            batch = await consumer.getmany(timeout_ms=500)
            seen += sum(len(messages) for messages in batch.values())
        return time.perf_counter() - started
    finally:
        await consumer.stop()


def landed(warehouse: Path) -> int:
    """Records the three tables' snapshots say they hold (their committed offsets)."""
    from hookline.warehouse import tables

    catalog = tables.open_catalog(tables.WarehouseConfig(directory=warehouse))
    total = 0
    for name in ("order_changes", "orders_state", "webhook_events"):
        # The sink creates its tables before it logs "sink ready".
        offsets = tables.all_offsets(catalog.load_table(f"{ENVIRONMENT}.{name}"))
        total += sum(sum(parts.values()) for parts in offsets.values())
    return total


def run_sink(bootstrap: str, batch_rows: int, expected: int, timeout: float) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="bench-sink-") as tmp:
        warehouse = Path(tmp) / "warehouse"
        port = free_port()
        sink = ServiceProcess(
            "sink",
            hookline_command(
                "sink",
                "--warehouse",
                str(warehouse),
                "--environment",
                ENVIRONMENT,
                "--batch-rows",
                str(batch_rows),
                "--commit-interval",
                "1",
                "--group",
                f"bench-{uuid.uuid4().hex[:8]}",
                "--web-port",
                str(port),
            ),
            hookline_env(bootstrap, HOOKLINE_PARTITIONS=str(PARTITIONS)),
            Path(tmp) / "sink.log",
        ).launch()
        try:
            deadline = time.monotonic() + timeout
            while "sink ready" not in sink.log():
                if time.monotonic() > deadline or (sink.process and sink.process.poll()):
                    raise RuntimeError(f"sink did not start:\n{sink.tail()}")
                time.sleep(0.05)
            started = time.perf_counter()
            done = 0
            while done < expected:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"sink landed {done}/{expected}:\n{sink.tail()}")
                time.sleep(0.25)
                done = landed(warehouse)
                say(f"  sink (batch {batch_rows}): {done}/{expected} landed")
            seconds = time.perf_counter() - started
            cpu = _cpu_seconds(sink.process)
            commits = sink.log().count(" row(s)")
        finally:
            sink.stop()
    return {"seconds": seconds, "commits": commits, "cpu": cpu}


def _cpu_seconds(process: subprocess.Popen[bytes] | None) -> float:
    if process is None:
        return float("nan")
    try:
        fields = Path(f"/proc/{process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / 100  # utime + stime, clock ticks
    except (OSError, IndexError, ValueError):
        return float("nan")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=20000, help="orders (x3 records)")
    parser.add_argument(
        "--batch-rows",
        type=int,
        nargs="+",
        default=[50000, 5000],
        help="sink --batch-rows values to measure (default: 50000 5000)",
    )
    parser.add_argument("--baseline-runs", type=int, default=3, help="median of this many")
    parser.add_argument("--timeout", type=float, default=300, help="seconds per sink run")
    args = parser.parse_args()
    expected = args.records * 3
    with EmbeddedBroker(log_path=Path(tempfile.gettempdir()) / "bench-sink-tansu.log") as broker:
        bootstrap = broker.bootstrap_servers
        asyncio.run(
            topics.ensure_topics(
                bootstrap,
                [s for s in topics.worker_topics(ENVIRONMENT, 30, 2**20) if s.name in TOPICS],
                PARTITIONS,
                1,
            )
        )
        say(f"writing {expected} records to {', '.join(TOPICS)}")
        asyncio.run(produce(bootstrap, records(args.records)))
        baseline_runs = []
        for run in range(args.baseline_runs):
            baseline_runs.append(asyncio.run(bare_read(bootstrap, expected)))
            say(f"  baseline run {run + 1}: {baseline_runs[-1]:.2f}s")
        baseline = sorted(baseline_runs)[len(baseline_runs) // 2]
        rows = [["bare consumer (baseline)", "-", f"{baseline:.2f}", f"{expected / baseline:.0f}"]]
        rows[0] += ["1.000", "-", "-"]
        for batch_rows in args.batch_rows:
            result = run_sink(bootstrap, batch_rows, expected, args.timeout)
            rate = expected / result["seconds"]
            rows.append(
                [
                    "hookline sink",
                    str(batch_rows),
                    f"{result['seconds']:.2f}",
                    f"{rate:.0f}",
                    f"{rate / (expected / baseline):.3f}",
                    str(int(result["commits"])),
                    f"{1000 * result['cpu'] / expected:.3f}",
                ]
            )
    print(
        table(
            ["reader", "batch rows", "seconds", "records/s", "ratio", "commits", "CPU ms/rec"],
            rows,
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
