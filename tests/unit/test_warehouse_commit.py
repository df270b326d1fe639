"""The table commit against a real local Iceberg catalog (no Kafka): offsets, fencing,
the version guard, duplicates, schema evolution and maintenance."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hookline.warehouse import maintenance, rows, tables
from hookline.warehouse.commit import PartitionBatch, TableWriter
from hookline.warehouse.rows import ORDER_CHANGES, ORDERS_STATE, WEBHOOK_EVENTS
from pyiceberg.catalog import Catalog

DAY = 86_400_000
T0 = 1_772_406_000_000  # 2026-03-01T23:00:00Z


@pytest.fixture
def catalog(tmp_path: Path) -> Catalog:
    return tables.open_catalog(tables.WarehouseConfig(directory=tmp_path / "wh"))


def state(order: str, version: int, at: int = T0, status: str = "ACTIVE") -> dict[str, Any]:
    return rows.to_row(
        ORDERS_STATE,
        {
            "order_id": order,
            "environment": "production",
            "order_status": status,
            "version": version,
            "updated_at": at,
            "amount": Decimal("9.9900"),
        },
    )


def event(event_id: str, at: int = T0) -> dict[str, Any]:
    return rows.to_row(
        WEBHOOK_EVENTS,
        {
            "event_id": event_id,
            "delivery_id": event_id,
            "source": "partner",
            "kind": "partner",
            "environment": "production",
            "type": "order.status_changed",
            "entity_type": "order",
            "entity_id": "o",
            "received_at": at,
        },
    )


def scan(writer: TableWriter) -> list[dict[str, Any]]:
    return writer._load().scan().to_arrow().to_pylist()  # noqa: SLF001 (the table as written)


def test_offsets_are_committed_with_the_rows(catalog: Catalog) -> None:
    writer = TableWriter(catalog, WEBHOOK_EVENTS, "production")
    result = writer.commit({0: PartitionBatch(None, 2, [event("a"), event("b")])})
    assert result.committed == {0: 2}
    assert writer.offsets() == {0: 2}
    result = writer.commit({1: PartitionBatch(None, 5, [event("c")])})
    assert writer.offsets() == {0: 2, 1: 5}  # partitions another batch left alone stay
    assert sorted(r["event_id"] for r in scan(writer)) == ["a", "b", "c"]


def test_a_batch_from_a_stale_position_is_fenced_not_written(catalog: Catalog) -> None:
    first = TableWriter(catalog, WEBHOOK_EVENTS, "production")
    second = TableWriter(catalog, WEBHOOK_EVENTS, "production")
    first.commit({0: PartitionBatch(None, 2, [event("a"), event("b")])})
    # A sink that read offsets 0..1 before the first one committed: fenced.
    result = second.commit({0: PartitionBatch(None, 2, [event("a"), event("b")])})
    assert result.committed == {}
    assert result.fenced == {0: 2}
    assert len(scan(first)) == 2


def test_repeated_events_already_in_the_table_are_skipped(catalog: Catalog) -> None:
    writer = TableWriter(catalog, WEBHOOK_EVENTS, "production")
    writer.commit({0: PartitionBatch(None, 1, [event("a")])})
    result = writer.commit({0: PartitionBatch(1, 3, [event("a"), event("b"), event("b")])})
    assert (result.rows_written, result.duplicates) == (1, 2)
    assert sorted(r["event_id"] for r in scan(writer)) == ["a", "b"]


def test_order_state_only_moves_to_higher_versions(catalog: Catalog) -> None:
    writer = TableWriter(catalog, ORDERS_STATE, "production")
    writer.commit({0: PartitionBatch(None, 2, [state("o1", 1), state("o2", 1)])})
    # o1 moves to the next day's partition; o2 gets a replayed version 1 back.
    later = T0 + DAY
    result = writer.commit(
        {0: PartitionBatch(2, 5, [state("o1", 3, later), state("o1", 2), state("o2", 1)])}
    )
    assert result.rows_written == 1
    assert result.stale == 2
    got = {r["order_id"]: r["version"] for r in scan(writer)}
    assert got == {"o1": 3, "o2": 1}
    result = writer.commit({0: PartitionBatch(5, 6, [state("o1", 2, T0, "PENDING")])})
    assert (result.rows_written, result.stale) == (0, 1)
    assert {r["order_id"]: r["order_status"] for r in scan(writer)}["o1"] == "ACTIVE"
    assert writer.offsets() == {0: 6}


def test_change_key_is_order_and_version(catalog: Catalog) -> None:
    writer = TableWriter(catalog, ORDER_CHANGES, "production")

    def change(order: str, version: int) -> dict[str, Any]:
        after = state(order, version)
        return {
            "order_id": order,
            "environment": "production",
            "version": version,
            "updated_at": after["updated_at"],
            "changed_fields": ["order_status"],
        }

    writer.commit({0: PartitionBatch(None, 2, [change("o1", 1), change("o2", 1)])})
    result = writer.commit({0: PartitionBatch(2, 4, [change("o1", 1), change("o1", 2)])})
    assert (result.rows_written, result.duplicates) == (1, 1)
    assert sorted((r["order_id"], r["version"]) for r in scan(writer)) == [
        ("o1", 1),
        ("o1", 2),
        ("o2", 1),
    ]


def test_maintenance_compacts_and_keeps_rows_and_offsets(catalog: Catalog) -> None:
    writer = TableWriter(catalog, WEBHOOK_EVENTS, "production")
    for i in range(4):
        writer.commit({0: PartitionBatch(i or None, i + 1, [event(f"e{i}")])})
    reports = maintenance.maintain(catalog, ("production",), timedelta(microseconds=1), 2)
    report = next(r for r in reports if r.table == "production.webhook_events")
    assert (report.files_before, report.files_after) == (4, 1)
    assert report.partitions_compacted == 1
    assert report.snapshots_expired > 0
    assert report.orphans_deleted >= 4  # the small files and their manifests
    assert sorted(r["event_id"] for r in scan(writer)) == ["e0", "e1", "e2", "e3"]
    assert writer.offsets() == {0: 4}  # the sink resumes where it was


def test_rows_from_the_sinks_fast_path_land_like_to_row_dicts(catalog: Catalog) -> None:
    """The sink hands the writer rows.Row tuples; tests and tools may hand it dicts."""
    writer = TableWriter(catalog, ORDERS_STATE, "production")
    read = rows.row_reader(ORDERS_STATE)
    record = {
        "order_id": "o1",
        "environment": "production",
        "order_status": "ACTIVE",
        "version": 1,
        "updated_at": T0,
        "amount": Decimal("9.9900"),
    }
    writer.commit({0: PartitionBatch(None, 2, [read(record), state("o2", 1)])})
    result = writer.commit(
        {0: PartitionBatch(2, 4, [read(record | {"version": 2}), state("o2", 1)])}
    )
    assert result.rows_written == 1
    assert result.stale == 1
    landed = sorted(scan(writer), key=lambda r: r["order_id"])
    assert [(r["order_id"], r["version"]) for r in landed] == [("o1", 2), ("o2", 1)]
    assert landed == sorted(
        [
            state("o1", 2) | {"amount": Decimal("9.9900")},
            state("o2", 1),
        ],
        key=lambda r: r["order_id"],
    )
