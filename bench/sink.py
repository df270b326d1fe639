"""Warehouse sink throughput: records landed in Iceberg per second, against a bare consumer.

Why a baseline: reading a topic from an embedded broker on two shared cores
has a cost of its own that the sink cannot beat. The baseline is that cost:
a plain aiokafka consumer (in this script's process) reading the same
records from the beginning and doing nothing with them. The ratio
``sink / baseline`` is the share of bare read throughput left after
decoding, mapping to Arrow, writing Parquet and committing Iceberg snapshots
(with the duplicate checks and the ``orders_state`` upsert).

The input is N records on each of ``production.orders.changes``,
``production.orders.state`` and ``production.webhooks.events`` (N orders,
one version each), written before either reader starts. The sink's clock
runs from its "sink ready" log line to the moment the three tables'
committed offsets cover every record; the baseline's from its first fetch
request to its last record. After each run (outside the clock) the bench
checks ``orders_state`` as the warehouse bar does: one row per order, every
measured order at its latest version, the preloaded ones and nothing else
(``exact``).

    .venv/bin/python bench/sink.py [--records 20000] [--batch-rows 50000 5000]
        [--preload 0 1000000] [--json]

``--preload N`` (one or more values) first lands N older orders in each of
the three tables straight through pyiceberg (50,000 rows a commit, keys as
random as the measured ones, times before theirs), builds the sink's version
index from them (timed apart: a running sink keeps its index), and only then
starts the sink: the rate at N against the rate at 0 is how a commit's cost
grows with the table. Every (batch rows, preload) pair runs on a fresh copy,
alternating.

``--json`` prints one JSON document on stdout instead of the table (fields in
bench/README.md): the common fields at the top level are the first
``--batch-rows`` value's run (the sink's default, 50000, unless told
otherwise), and every value's run is in ``results``. Its ``cpu_ms_per_record``
counts the sink's CPU from the clock's start only, as the other benches count
their process's CPU during the measured run (docs/performance.md quotes
it); the table's ``CPU ms/rec`` keeps start-up included.
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run as `python bench/sink.py`: put the repository first (bench/gateway.py
# would shadow the `gateway` package).
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse
import asyncio
import os
import random
import re
import shutil
import tempfile
import time
import uuid
from decimal import Decimal
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
from _common import (
    cpu_seconds,
    cpu_times,
    hookline_command,
    hookline_env,
    load_average,
    print_json,
    say,
    steal_share,
    table,
)
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


async def bare_read(bootstrap: str, expected: int) -> dict[str, float]:
    """Seconds for a plain consumer to read every record once (the baseline).

    Also this process's CPU seconds and the hypervisor's share meanwhile: the
    consumer runs here, and nothing else does while it reads.
    """
    consumer = AIOKafkaConsumer(
        *TOPICS,
        bootstrap_servers=bootstrap,
        group_id=None,
        auto_offset_reset="earliest",
        isolation_level="read_committed",
    )
    await consumer.start()
    try:
        seen, started = 0, time.perf_counter()  # from the first fetch request on
        cpu, machine = cpu_seconds(os.getpid()), cpu_times()
        while seen < expected:
            batch = await consumer.getmany(timeout_ms=500)
            seen += sum(len(messages) for messages in batch.values())
        return {
            "seconds": time.perf_counter() - started,
            "cpu": cpu_seconds(os.getpid()) - cpu,
            "steal": steal_share(machine, cpu_times()),
        }
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


def first_commit_at(warehouse: Path) -> float | None:
    """Epoch seconds of the earliest snapshot of the three tables, None before any.

    The sink's first output is its first Iceberg commit: rows are invisible
    to readers until then. pyiceberg stamps a snapshot after writing its data
    files and manifests, just before the catalog commit, on this machine's
    clock, so this is when the sink landed its first rows, whenever the
    bench's 0.25 s poll noticed. Tables hold no snapshot before the sink's
    first commit (creating one adds none; --preload's carry no offsets).
    """
    from hookline.warehouse import tables

    catalog = tables.open_catalog(tables.WarehouseConfig(directory=warehouse))
    stamps = [
        snapshot.timestamp_ms
        for name in ("order_changes", "orders_state", "webhook_events")
        for snapshot in catalog.load_table(f"{ENVIRONMENT}.{name}").metadata.snapshots
        # The sink's appends carry offsets; --preload's snapshots do not.
        if snapshot.summary is not None and snapshot.summary.get(tables.OFFSETS_PROPERTY)
    ]
    return min(stamps) / 1000 if stamps else None


def exact_state(warehouse: Path, preloaded: int, orders: dict[str, int]) -> dict[str, Any]:
    """The warehouse bar's check: ``orders_state`` holds one row per order, each measured
    order at its latest version, and nothing else than the preloaded orders besides."""
    from hookline.warehouse import tables

    catalog = tables.open_catalog(tables.WarehouseConfig(directory=warehouse))
    found = (
        catalog.load_table(f"{ENVIRONMENT}.orders_state")
        .scan(selected_fields=("order_id", "version"))
        .to_arrow()
    )
    ids = found.column("order_id")
    versions = dict(zip(ids.to_pylist(), found.column("version").to_pylist(), strict=True))
    duplicates = found.num_rows - len(versions)
    wrong = sum(1 for order, version in orders.items() if versions.get(order) != version)
    return {
        "exact": duplicates == 0 and wrong == 0 and found.num_rows == preloaded + len(orders),
        "orders_state_rows": found.num_rows,
        "duplicate_orders": duplicates,
        "orders_not_at_latest": wrong,
    }


PRELOAD_COMMIT = 50_000
PRELOAD_SPAN_MS = 30 * 86_400_000  # preloaded orders: the 30 days before the measured ones


def _columns(table: Any, n: int, given: dict[str, pa.Array]) -> pa.Table:
    """An Arrow table in ``table``'s schema: the given columns, nulls elsewhere."""
    schema = table.schema().as_arrow()
    arrays = [given.get(f.name, pa.nulls(n, f.type)) for f in schema]
    return pa.Table.from_arrays(
        [a.cast(f.type) for a, f in zip(arrays, schema, strict=True)], schema=schema
    )


def preload(warehouse: Path, orders: int) -> dict[str, float]:
    """Land ``orders`` older orders in each table (no Kafka offsets) and build the index.

    Keys carry a random tag so that, as with real order ids, no file's
    min/max statistics rule a batch's keys out.
    """
    from hookline.warehouse import rows as table_rows
    from hookline.warehouse import tables
    from hookline.warehouse.commit import TableWriter

    catalog = tables.open_catalog(tables.WarehouseConfig(directory=warehouse))
    step = PRELOAD_SPAN_MS // max(orders, 1)
    rng = random.Random(7)
    started = time.perf_counter()
    handles = {d.name: tables.ensure_table(catalog, d, ENVIRONMENT) for d in table_rows.TABLES}
    for start in range(0, orders, PRELOAD_COMMIT):
        n = min(PRELOAD_COMMIT, orders - start)
        ids = pa.array(
            [f"bench_{rng.getrandbits(24):06x}_{i:07d}" for i in range(start, start + n)]
        )
        at = pa.array(
            [(START_MS - PRELOAD_SPAN_MS + i * step) * 1000 for i in range(start, start + n)],
            pa.timestamp("us", tz="UTC"),
        )
        one, env = pa.array([1] * n, pa.int64()), pa.array([ENVIRONMENT] * n)
        active = pa.array(["ACTIVE"] * n)
        given = {
            "orders_state": {
                "order_id": ids,
                "environment": env,
                "order_status": active,
                "payment_status": pa.array(["SUCCEEDED"] * n),
                "version": one,
                "updated_at": at,
                "currency": pa.array(["EUR"] * n),
            },
            "order_changes": {
                "order_id": ids,
                "environment": env,
                "version": one,
                "updated_at": at,
                "after_order_status": active,
            },
            "webhook_events": {
                "event_id": pc.binary_join_element_wise(ids, pa.array([":0"] * n), ""),
                "delivery_id": ids,
                "source": pa.array(["partner"] * n),
                "environment": env,
                "received_at": at,
                "order_id": ids,
                "order_status": active,
            },
        }
        for name, handle in handles.items():
            handle.append(_columns(handle, n, given[name]))
        say(f"  preload: {start + n}/{orders} orders in each table")
    loaded = time.perf_counter() - started
    started = time.perf_counter()
    state = next(d for d in table_rows.TABLES if d.version_column is not None)
    TableWriter(catalog, state, ENVIRONMENT).index.sync(
        catalog.load_table(state.identifier(ENVIRONMENT))
    )
    return {"preload_s": loaded, "index_build_s": time.perf_counter() - started}


def sink_cpu_seconds(pid: int | None) -> float:
    """CPU seconds of the sink and of its child processes (its ``--decoders``) so far."""
    if pid is None:
        return float("nan")
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            children.append(int(stat.parent.name))
    return cpu_seconds(pid) + sum(cpu_seconds(child) for child in children)


def run_sink(
    bootstrap: str,
    batch_rows: int,
    expected: int,
    timeout: float,
    warehouse: Path,
    check: tuple[int, dict[str, int]],
) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-sink-") as tmp:
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
            started, started_at = time.perf_counter(), time.time()
            pid = sink.process.pid if sink.process else None
            startup_cpu, machine = sink_cpu_seconds(pid), cpu_times()
            done = 0
            while done < expected:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"sink landed {done}/{expected}:\n{sink.tail()}")
                time.sleep(0.25)
                done = landed(warehouse)
                say(f"  sink (batch {batch_rows}): {done}/{expected} landed")
            seconds = time.perf_counter() - started
            cpu = sink_cpu_seconds(pid)
            steal = steal_share(machine, cpu_times())
            commits = sink.log().count(" row(s)")
            first = first_commit_at(warehouse)
            commit_s = [
                float(x) for x in re.findall(r"orders_state: \+\d+ row.* in ([0-9.]+)s", sink.log())
            ]
        finally:
            sink.stop()
    return exact_state(warehouse, *check) | {
        "seconds": seconds,
        "commits": commits,
        "cpu": cpu,  # the whole process's, start-up included (the table's CPU ms/rec)
        "startup_cpu": startup_cpu,
        "landed": done,
        "first_out": float("nan") if first is None else first - started_at,
        "steal": steal,
        "orders_state_commit_s": commit_s,
    }


def result_json(
    batch_rows: int, preloaded: int, expected: int, result: dict[str, Any], baseline_rate: float
) -> dict[str, Any]:
    """One sink run with the common fields: CPU from the clock's start only (see the docstring)."""
    rate = expected / result["seconds"]
    return {
        "batch_rows": batch_rows,
        "preload": preloaded,
        "orders_state_commit_s": result["orders_state_commit_s"],
        "records": expected,
        "landed": result["landed"],
        "seconds": round(result["seconds"], 3),
        "records_per_s": round(rate, 1),
        "ratio": round(rate / baseline_rate, 4),
        "cpu_ms_per_record": round(1000 * (result["cpu"] - result["startup_cpu"]) / expected, 4),
        "startup_cpu_s": round(result["startup_cpu"], 2),
        "first_out_ms": round(1000 * result["first_out"], 1),
        "commits": result["commits"],
        "steal_share": round(result["steal"], 4),
        "exact": result["exact"],
        "orders_state_rows": result["orders_state_rows"],
        "duplicate_orders": result["duplicate_orders"],
        "orders_not_at_latest": result["orders_not_at_latest"],
    }


def slowdowns(results: list[dict[str, Any]]) -> dict[str, float]:
    """Per batch rows and preload: the rate on an empty table over the rate at that preload."""
    empty = {r["batch_rows"]: r["records_per_s"] for r in results if r["preload"] == 0}
    return {
        f"{r['batch_rows']}@{r['preload']}": round(empty[r["batch_rows"]] / r["records_per_s"], 3)
        for r in results
        if r["preload"] and r["batch_rows"] in empty
    }


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
    parser.add_argument(
        "--preload",
        type=int,
        nargs="+",
        default=[0],
        help="orders already in each table before the sink starts (default: 0)",
    )
    parser.add_argument("--baseline-runs", type=int, default=3, help="median of this many")
    parser.add_argument("--timeout", type=float, default=300, help="seconds per sink run")
    parser.add_argument(
        "--json", action="store_true", help="print one JSON document instead of the table"
    )
    args = parser.parse_args()
    expected = args.records * 3
    load_before = load_average()
    results: list[dict[str, Any]] = []
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
        produced = records(args.records)
        latest = {key.decode(): 1 for topic, key, _ in produced if topic == TOPICS[1]}
        asyncio.run(produce(bootstrap, produced))
        baseline_runs = []
        for run in range(args.baseline_runs):
            baseline_runs.append(asyncio.run(bare_read(bootstrap, expected)))
            say(f"  baseline run {run + 1}: {baseline_runs[-1]['seconds']:.2f}s")
        median = sorted(baseline_runs, key=lambda r: r["seconds"])[len(baseline_runs) // 2]
        baseline = median["seconds"]
        rows = [["bare consumer (baseline)", "-", f"{baseline:.2f}", f"{expected / baseline:.0f}"]]
        rows[0] += ["1.000", "-", "-", "-"]
        scratch = Path(tempfile.mkdtemp(prefix="bench-sink-preload-"))
        preloads: dict[int, dict[str, float]] = {}
        for orders in sorted(set(args.preload) - {0}):
            say(f"preloading {orders} orders")
            preloads[orders] = preload(scratch / str(orders) / "warehouse", orders)
            shutil.copytree(scratch / str(orders) / "warehouse", scratch / str(orders) / "pristine")
        for batch_rows in args.batch_rows:
            for orders in args.preload:
                warehouse = scratch / str(orders) / "warehouse"
                if orders and not warehouse.exists():
                    # The SQLite catalog holds absolute paths: restore at the same path.
                    shutil.copytree(scratch / str(orders) / "pristine", warehouse)
                result = run_sink(
                    bootstrap, batch_rows, expected, args.timeout, warehouse, (orders, latest)
                )
                shutil.rmtree(warehouse, ignore_errors=True)
                results.append(
                    result_json(batch_rows, orders, expected, result, expected / baseline)
                )
                rate = expected / result["seconds"]
                rows.append(
                    [
                        f"hookline sink, {orders} preloaded",
                        str(batch_rows),
                        f"{result['seconds']:.2f}",
                        f"{rate:.0f}",
                        f"{rate / (expected / baseline):.3f}",
                        str(int(result["commits"])),
                        f"{1000 * result['cpu'] / expected:.3f}",
                        "yes" if result["exact"] else "NO",
                    ]
                )
        shutil.rmtree(scratch, ignore_errors=True)
    load_after = load_average()
    say(f"load average (1 min): {load_before:.2f} before, {load_after:.2f} after")
    if args.json:
        first = results[0]
        print_json(
            {
                "bench": "sink",
                "records": first["records"],
                "records_per_s": first["records_per_s"],
                "baseline_records_per_s": round(expected / baseline, 1),
                "ratio": first["ratio"],
                "cpu_ms_per_record": first["cpu_ms_per_record"],
                "first_out_ms": first["first_out_ms"],
                "batch_rows": first["batch_rows"],
                "baseline_cpu_ms_per_record": round(1000 * median["cpu"] / expected, 4),
                "baseline_steal_share": round(median["steal"], 4),
                "baseline_runs": [round(r["seconds"], 3) for r in baseline_runs],
                "orders": args.records,
                "partitions": PARTITIONS,
                "preload": args.preload[0],
                "preloads": {
                    str(n): {k: round(v, 2) for k, v in p.items()} for n, p in preloads.items()
                },
                "slowdown_at_preload": slowdowns(results),
                "exact": all(r["exact"] for r in results),
                "results": results,
                "load_average": [round(load_before, 2), round(load_after, 2)],
            }
        )
        return 0 if all(r["exact"] for r in results) else 1
    print(
        table(
            ["reader", "batch", "seconds", "records/s", "ratio", "commits", "CPU ms/rec", "exact"],
            rows,
        )
    )
    return 0 if all(r["exact"] for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
