"""The warehouse sink against the real broker: exactly once through SIGKILLs, read by DuckDB.

Records are written straight to the three topics with ``codec.encode`` (no
worker): each order goes through five versions, and the stream carries what
a crashing worker emits on top, repeated changes and events and a replayed
older state. The sink runs as a real process with tiny batches, is killed
with SIGKILL twice while records flow, and restarted on the same warehouse.
The tables must end with every row once and the newest version per order.
"""

from __future__ import annotations

import asyncio
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import duckdb
import pytest
from aiokafka import AIOKafkaProducer
from hookline.infra.broker import free_port
from hookline.infra.processes import ServiceProcess
from hookline.schemas import codec
from pyiceberg.catalog.sql import SqlCatalog

from tests.conftest import hookline_env
from tests.support.broker import TestBroker

ORDERS = 40
VERSIONS = 5
#: version -> (order_status, payment_status) of the synthetic life of an order
LIFE = {
    1: ("CREATED", "PENDING"),
    2: ("CREATED", "SUCCEEDED"),
    3: ("ACTIVE", "SUCCEEDED"),
    4: ("ACTIVE", "SUCCEEDED"),  # the confirmation PDF
    5: ("REFUNDED", "SUCCEEDED"),
}
START = int(datetime(2026, 3, 1, 23, 0, tzinfo=UTC).timestamp() * 1000)
MINUTE = 60_000


def sink_process(
    env: dict[str, str], warehouse: Path, log_dir: Path, *extra: str
) -> ServiceProcess:
    """Ready when /metrics answers (the catalog and tables are open by then)."""
    port = free_port()
    return ServiceProcess(
        "sink",
        [
            sys.executable,
            "-m",
            "hookline",
            "sink",
            "--warehouse",
            str(warehouse),
            "--web-port",
            str(port),
            *extra,
        ],
        env,
        log_dir / f"sink-{port}.log",
        f"http://127.0.0.1:{port}/metrics",
    )


class Orders:
    """The synthetic orders of one test run and the records they produce."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.ids = [f"{prefix}_{i:03d}" for i in range(ORDERS)]

    @staticmethod
    def amount(i: int) -> Decimal:
        return Decimal(f"{10 + i}.2500")

    @staticmethod
    def at(i: int, version: int) -> int:
        # Versions cross midnight UTC: an order's row moves to another day partition.
        return START + (i + version * 20) * MINUTE

    def state(self, i: int, version: int) -> dict[str, Any]:
        order_status, payment_status = LIFE[version]
        return {
            "order_id": self.ids[i],
            "environment": "production",
            "transaction_id": f"tr_{self.ids[i]}",
            "order_status": order_status,
            "payment_status": payment_status,
            "confirmation_pdf_url": f"https://files.example.com/{self.ids[i]}.pdf"
            if version >= 4
            else None,
            "vignette_id": None,
            "version": version,
            "updated_at": self.at(i, version),
            "amount": self.amount(i),
            "currency": "EUR" if i % 2 else "BGN",
            "refunded_amount": self.amount(i) if version == 5 else None,
        }

    def change(self, i: int, version: int) -> dict[str, Any]:
        after = self.state(i, version)
        before = self.state(i, version - 1) if version > 1 else None
        changed = [k for k in after if before is None or before[k] != after[k]]
        return {
            "order_id": self.ids[i],
            "environment": "production",
            "version": version,
            "before": before,
            "after": after,
            "changed_fields": [k for k in changed if k not in ("version", "updated_at")],
            "cause": {
                "event_id": f"d_{self.ids[i]}_{version}:0",
                "delivery_id": f"d_{self.ids[i]}_{version}",
                "source": "partner",
                "kind": "partner",
                "type": "order.status_changed",
                "received_at": self.at(i, version),
                "provider_event_type": "ORDER_STATUS_CHANGED",
            },
        }

    def event(self, i: int, version: int) -> dict[str, Any]:
        order_status, payment_status = LIFE[version]
        return {
            "event_id": f"d_{self.ids[i]}_{version}:0",
            "delivery_id": f"d_{self.ids[i]}_{version}",
            "source": "partner",
            "kind": "partner",
            "environment": "production",
            "type": "order.status_changed",
            "provider_event_type": "ORDER_STATUS_CHANGED",
            "entity_type": "order",
            "entity_id": self.ids[i],
            "received_at": self.at(i, version),
            "order_id": self.ids[i],
            "order_status": order_status,
            "payment_status": payment_status,
            "amount": self.amount(i),
            "currency": "EUR" if i % 2 else "BGN",
        }

    def records(self, version: int) -> list[tuple[str, str, bytes]]:
        """(topic, key, value) of one version of every order."""
        out = []
        for i, order in enumerate(self.ids):
            out.append(
                (
                    "production.orders.state",
                    order,
                    codec.encode(codec.ORDER_STATE, self.state(i, version)),
                )
            )
            out.append(
                (
                    "production.orders.changes",
                    order,
                    codec.encode(codec.ORDER_CHANGE, self.change(i, version)),
                )
            )
            out.append(
                (
                    "production.webhooks.events",
                    order,
                    codec.encode(codec.CANONICAL_EVENT, self.event(i, version)),
                )
            )
        return out

    def crash_echoes(self) -> list[tuple[str, str, bytes]]:
        """What a worker's crash replays: old states, repeated changes and events."""
        out = []
        for i in range(0, ORDERS, 3):
            out.append(
                (
                    "production.orders.state",
                    self.ids[i],
                    codec.encode(codec.ORDER_STATE, self.state(i, 2)),
                )
            )
            out.append(
                (
                    "production.orders.changes",
                    self.ids[i],
                    codec.encode(codec.ORDER_CHANGE, self.change(i, 4)),
                )
            )
            out.append(
                (
                    "production.webhooks.events",
                    self.ids[i],
                    codec.encode(codec.CANONICAL_EVENT, self.event(i, 3)),
                )
            )
        return out


async def produce(bootstrap: str, records: list[tuple[str, str, bytes]], pause: float) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        for start in range(0, len(records), 30):
            for topic, key, value in records[start : start + 30]:
                await producer.send(topic, value, key=key.encode())
            await producer.flush()
            await asyncio.sleep(pause)
    finally:
        await producer.stop()


def catalog(warehouse: Path) -> SqlCatalog:
    return SqlCatalog(
        "hookline", uri=f"sqlite:///{warehouse / 'catalog.db'}", warehouse=warehouse.as_uri()
    )


def table_rows(warehouse: Path, name: str, prefix: str) -> list[dict[str, Any]]:
    column = "order_id" if name != "webhook_events" else "entity_id"
    rows = catalog(warehouse).load_table(f"production.{name}").scan().to_arrow().to_pylist()
    return [r for r in rows if str(r[column]).startswith(prefix)]


def wait_for(condition: Any, timeout: float, what: str, poll: float = 0.3) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout}s: {what}")
        time.sleep(poll)


def commits_in(process: ServiceProcess) -> int:
    return process.log().count(" row(s)")


def when(ms: int) -> datetime:
    return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(milliseconds=ms)


@pytest.fixture(scope="module")
def landed(
    broker: TestBroker, log_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Any]]:
    """Two SIGKILLs while records flow, then a clean run to the end."""
    warehouse = tmp_path_factory.mktemp("warehouse")
    # A killed sink holds its partitions for the session timeout: keep restarts quick.
    env = hookline_env(
        broker.bootstrap_servers,
        tmp_path_factory.mktemp("sink-data"),
        HOOKLINE_SESSION_TIMEOUT="3",
    )
    orders = Orders(f"sink{uuid.uuid4().hex[:8]}")
    stream = [r for v in range(1, VERSIONS + 1) for r in orders.records(v)]
    stream[len(stream) // 2 : len(stream) // 2] = orders.crash_echoes()
    stream += orders.crash_echoes()
    args = ("--batch-rows", "40", "--commit-interval", "0.2")
    cut = (len(stream) * 3 // 10, len(stream) * 8 // 10)
    phases = [stream[: cut[0]], stream[cut[0] : cut[1]], stream[cut[1] :]]
    produced = 0
    kills = []
    for phase in phases[:2]:
        sink = sink_process(env, warehouse, log_dir, *args).start(timeout=60)
        wait_for(lambda s=sink: "sink ready" in s.log(), 40, "partitions assigned", poll=0.02)
        # Produced while the sink lands it: a sink that has landed a phase
        # written ahead of it can be quicker than any poll for its first commit.
        producing = threading.Thread(
            target=asyncio.run, args=(produce(broker.bootstrap_servers, phase, 0.05),)
        )
        producing.start()
        try:
            wait_for(lambda s=sink: commits_in(s) >= 1, 40, "a commit", poll=0.02)
            sink.kill()  # SIGKILL: no flush, no goodbye to the group
        finally:
            producing.join()
        produced += len(phase)
        # Mid-stream: records it had not landed yet were waiting when it died.
        landed_changes = len(table_rows(warehouse, "order_changes", orders.prefix))
        changes = {v for t, _, v in stream[:produced] if t == "production.orders.changes"}
        kills.append({"commits": commits_in(sink), "backlog": len(changes) - landed_changes})
    asyncio.run(produce(broker.bootstrap_servers, phases[2], 0.01))
    final = sink_process(env, warehouse, log_dir, *args).start(timeout=60)
    try:
        # Each table is landed from its own topic: the events' topic holds the
        # whole session's events before these, so it can finish last.
        wait_for(
            lambda: (
                len(table_rows(warehouse, "order_changes", orders.prefix)) >= ORDERS * VERSIONS
                and {r["version"] for r in table_rows(warehouse, "orders_state", orders.prefix)}
                == {VERSIONS}
                and len(table_rows(warehouse, "webhook_events", orders.prefix)) >= ORDERS * VERSIONS
            ),
            40,
            "every change, event and last version of every order landed",
        )
        time.sleep(1.0)  # a late double would land now
        yield {"warehouse": warehouse, "orders": orders, "kills": kills, "sink": final}
    finally:
        final.stop()


def test_killed_sink_loses_and_doubles_nothing(landed: dict[str, Any]) -> None:
    warehouse, orders = landed["warehouse"], landed["orders"]
    prefix = orders.prefix
    # Each sink died with batches committed and records still waiting for it.
    assert all(k["commits"] >= 1 and k["backlog"] > 0 for k in landed["kills"]), landed["kills"]

    changes = table_rows(warehouse, "order_changes", prefix)
    pairs = [(r["order_id"], r["version"]) for r in changes]
    assert len(pairs) == len(set(pairs)), "a change landed twice"
    assert set(pairs) == {(o, v) for o in orders.ids for v in range(1, VERSIONS + 1)}

    events = table_rows(warehouse, "webhook_events", prefix)
    ids = [r["event_id"] for r in events]
    assert len(ids) == len(set(ids)), "an event landed twice"
    assert len(ids) == ORDERS * VERSIONS

    states = table_rows(warehouse, "orders_state", prefix)
    assert sorted(r["order_id"] for r in states) == orders.ids  # one row per order
    for row in states:
        i = orders.ids.index(row["order_id"])
        # The replayed version-2 states came after version 5 for some orders: ignored.
        assert row["version"] == VERSIONS
        assert row["order_status"] == "REFUNDED"
        assert row["refunded_amount"] == row["amount"] == Orders.amount(i)
        assert row["updated_at"] == when(Orders.at(i, VERSIONS))
        assert row["confirmation_pdf_url"].endswith(f"{row['order_id']}.pdf")


def test_change_columns_are_flat_and_exact(landed: dict[str, Any]) -> None:
    warehouse, orders = landed["warehouse"], landed["orders"]
    rows = table_rows(warehouse, "order_changes", orders.prefix)
    row = next(r for r in rows if r["order_id"] == orders.ids[7] and r["version"] == 3)
    assert row["before_order_status"] == "CREATED"
    assert row["after_order_status"] == "ACTIVE"
    assert row["updated_at"] == when(Orders.at(7, 3))
    assert row["before_updated_at"] == when(Orders.at(7, 2))
    assert row["after_amount"] == Decimal("17.2500")
    assert row["changed_fields"] == ["order_status"]
    assert row["cause_delivery_id"] == f"d_{orders.ids[7]}_3"
    first = next(r for r in rows if r["order_id"] == orders.ids[7] and r["version"] == 1)
    assert first["before_order_status"] is None


def duckdb_connection() -> duckdb.DuckDBPyConnection:
    """DuckDB with its iceberg extension from the duckdb-ext-iceberg wheel (no download)."""
    import duckdb_ext

    connection = duckdb.connect()
    extensions = Path(next(iter(duckdb_ext.__path__))) / "extensions"
    connection.execute(f"SET extension_directory = '{extensions}'")
    connection.execute("LOAD avro")
    connection.execute("LOAD iceberg")
    connection.execute("SET TimeZone = 'UTC'")
    return connection


def metadata(warehouse: Path, name: str) -> str:
    return str(catalog(warehouse).load_table(f"production.{name}").metadata_location).removeprefix(
        "file://"
    )


def test_duckdb_reads_the_tables(landed: dict[str, Any]) -> None:
    warehouse, orders = landed["warehouse"], landed["orders"]
    prefix = orders.prefix + "%"
    db = duckdb_connection()
    state = metadata(warehouse, "orders_state")
    changes = metadata(warehouse, "order_changes")

    # docs/warehouse.md, query 1: orders by status per day (of their last change)
    per_day = db.execute(
        "SELECT CAST(updated_at AS DATE) AS day, order_status, count(*) "
        "FROM iceberg_scan(?) WHERE order_id LIKE ? GROUP BY ALL ORDER BY ALL",
        [state, prefix],
    ).fetchall()
    days: dict[date, int] = {}
    for i in range(ORDERS):
        day = when(Orders.at(i, VERSIONS)).date()
        days[day] = days.get(day, 0) + 1
    assert per_day == [(day, "REFUNDED", n) for day, n in sorted(days.items())]

    # query 2: refunded money per currency, exact decimals
    refunded = db.execute(
        "SELECT currency, sum(refunded_amount) FROM iceberg_scan(?) "
        "WHERE order_id LIKE ? GROUP BY currency ORDER BY currency",
        [state, prefix],
    ).fetchall()
    assert refunded == [
        ("BGN", sum(Orders.amount(i) for i in range(0, ORDERS, 2))),
        ("EUR", sum(Orders.amount(i) for i in range(1, ORDERS, 2))),
    ]

    # query 3: time from payment to ACTIVE, from the changes
    waits = db.execute(
        """
        WITH paid AS (
          SELECT order_id, min(updated_at) AS at FROM iceberg_scan(?)
          WHERE after_payment_status = 'SUCCEEDED'
            AND before_payment_status IS DISTINCT FROM 'SUCCEEDED' GROUP BY order_id),
        active AS (
          SELECT order_id, min(updated_at) AS at FROM iceberg_scan(?)
          WHERE after_order_status = 'ACTIVE' GROUP BY order_id)
        SELECT count(*), min(active.at - paid.at), max(active.at - paid.at)
        FROM paid JOIN active USING (order_id) WHERE order_id LIKE ?
        """,
        [changes, changes, prefix],
    ).fetchone()
    assert waits == (ORDERS, timedelta(minutes=20), timedelta(minutes=20))


def test_sink_metrics_count_rows(landed: dict[str, Any]) -> None:
    import urllib.request

    sink: ServiceProcess = landed["sink"]
    assert sink.ready_url is not None
    with urllib.request.urlopen(sink.ready_url, timeout=5) as response:  # noqa: S310 (loopback)
        text = response.read().decode()
    for name in (
        "hookline_sink_rows_written_total",
        "hookline_sink_commit_seconds_bucket",
        "hookline_sink_lag_records",
        "hookline_sink_rows_skipped_total",
    ):
        assert name in text, name
    assert 'hookline_sink_lag_records{topic="production.orders.changes"} 0.0' in text


def test_unreachable_warehouse_is_one_clear_line(
    tmp_path: Path, broker: TestBroker, log_dir: Path
) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the warehouse folder should be")
    env = hookline_env(broker.bootstrap_servers, tmp_path)
    sink = sink_process(env, blocker / "warehouse", log_dir).launch()
    assert sink.process is not None
    assert sink.process.wait(30) == 1
    out = sink.log()
    assert "hookline sink: cannot reach the warehouse" in out
    assert "Traceback" not in out
