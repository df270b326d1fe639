"""The orders_state version index against a real local Iceberg catalog: it answers what
the table holds after crashes, other writers, maintenance and a lost index file."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hookline.warehouse import maintenance, rows, tables
from hookline.warehouse.commit import PartitionBatch, TableWriter, index_path
from hookline.warehouse.rows import ORDERS_STATE
from hookline.warehouse.version_index import VersionIndex
from pyiceberg.catalog import Catalog

T0 = 1_772_406_000_000  # 2026-03-01T23:00:00Z
HOUR = 3_600_000


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


def table_rows(writer: TableWriter) -> list[tuple[str, int]]:
    """(order, version) of every row, sorted: one per order is the table's promise."""
    found = writer._load().scan(selected_fields=("order_id", "version")).to_arrow()  # noqa: SLF001 (the table as written)
    return sorted(zip(found["order_id"].to_pylist(), found["version"].to_pylist(), strict=True))


def test_index_lives_next_to_a_local_catalog(catalog: Catalog, tmp_path: Path) -> None:
    writer = TableWriter(catalog, ORDERS_STATE, "production")
    writer.commit({0: PartitionBatch(None, 1, [state("o1", 1)])})
    path = index_path(catalog, "production.orders_state")
    assert path == (tmp_path / "wh" / "index" / "production.orders_state.sqlite").resolve()
    assert writer.index.path == path
    assert path.exists()
    assert writer.index.lookup(["o1", "o2"]).keys() == {"o1"}


def test_rows_of_a_commit_whose_index_update_was_lost_are_read_back(
    catalog: Catalog, monkeypatch: pytest.MonkeyPatch
) -> None:
    writer = TableWriter(catalog, ORDERS_STATE, "production")
    writer.commit({0: PartitionBatch(None, 1, [state("o1", 1)])})
    # Killed between the catalog commit and the index's: the index misses o2 v1.
    with monkeypatch.context() as patch:
        patch.setattr(VersionIndex, "record", lambda *_: (_ for _ in ()).throw(OSError("disk")))
        writer.commit({0: PartitionBatch(1, 2, [state("o2", 1)])})
    assert writer.index.lookup(["o2"]) == {}
    result = writer.commit({0: PartitionBatch(2, 4, [state("o2", 2), state("o1", 1)])})
    assert (result.rows_written, result.stale) == (1, 1)
    assert table_rows(writer) == [("o1", 1), ("o2", 2)]
    assert writer.index.rebuilds == 1  # only the first, empty, one: o2 came from its file
    assert writer.index.files_read == 1


def test_another_writers_commits_are_caught_up_from_their_files(
    catalog: Catalog, tmp_path: Path
) -> None:
    mine = TableWriter(catalog, ORDERS_STATE, "production", tmp_path / "mine.sqlite")
    theirs = TableWriter(catalog, ORDERS_STATE, "production", tmp_path / "theirs.sqlite")
    mine.commit({0: PartitionBatch(None, 2, [state("o1", 1), state("o2", 1)])})
    theirs.commit({1: PartitionBatch(None, 2, [state("o1", 3, T0 + HOUR), state("o3", 1)])})
    # mine never saw o1 v3 or o3: a v2 of o1 is stale, o3 v2 replaces v1.
    result = mine.commit({0: PartitionBatch(2, 4, [state("o1", 2), state("o3", 2)])})
    assert (result.rows_written, result.stale) == (1, 1)
    assert table_rows(mine) == [("o1", 3), ("o2", 1), ("o3", 2)]
    assert mine.index.rebuilds == 1
    assert mine.index.files_read >= 1


def test_a_lost_index_file_is_rebuilt_from_the_table(catalog: Catalog, tmp_path: Path) -> None:
    path = tmp_path / "index.sqlite"
    writer = TableWriter(catalog, ORDERS_STATE, "production", path)
    writer.commit({0: PartitionBatch(None, 2, [state("o1", 1), state("o2", 4)])})
    writer.index.close()
    for leftover in tmp_path.glob("index.sqlite*"):
        leftover.unlink()
    again = TableWriter(catalog, ORDERS_STATE, "production", path)
    result = again.commit({0: PartitionBatch(2, 4, [state("o1", 2), state("o2", 3)])})
    assert (result.rows_written, result.stale) == (1, 1)
    assert table_rows(again) == [("o1", 2), ("o2", 4)]
    assert again.index.rebuilds == 1
    assert again.index.size() == 2


def test_compaction_and_expiry_keep_the_index_exact(catalog: Catalog, tmp_path: Path) -> None:
    writer = TableWriter(catalog, ORDERS_STATE, "production", tmp_path / "index.sqlite")
    for i in range(3):
        writer.commit({0: PartitionBatch(i or None, i + 1, [state(f"o{i}", 1)])})
    maintenance.maintain(catalog, ("production",), timedelta(microseconds=1), 2)
    # The index's snapshot was expired: it cannot catch up file by file.
    result = writer.commit({0: PartitionBatch(3, 5, [state("o0", 2), state("o1", 1)])})
    assert (result.rows_written, result.stale) == (1, 1)
    assert table_rows(writer) == [("o0", 2), ("o1", 1), ("o2", 1)]
    assert writer.index.rebuilds == 2


def test_two_writers_sharing_one_index_file_keep_one_row_per_order(catalog: Catalog) -> None:
    # Two sinks of one warehouse on one machine: the default path, one file.
    first = TableWriter(catalog, ORDERS_STATE, "production")
    second = TableWriter(catalog, ORDERS_STATE, "production")
    first.commit({0: PartitionBatch(None, 2, [state("o1", 1), state("o2", 1)])})
    second.commit({1: PartitionBatch(None, 1, [state("o1", 2, T0 + HOUR)])})
    result = first.commit({0: PartitionBatch(2, 4, [state("o2", 2), state("o1", 2)])})
    assert (result.rows_written, result.stale) == (1, 1)
    second.commit({1: PartitionBatch(1, 2, [state("o3", 1)])})
    assert table_rows(first) == [("o1", 2), ("o2", 2), ("o3", 1)]
    assert first.index.path == second.index.path
    assert first.index.lookup(["o1", "o2", "o3"]).keys() == {"o1", "o2", "o3"}


def test_a_lookup_searches_the_index_by_key_instead_of_scanning_it(tmp_path: Path) -> None:
    """The cost of a lookup follows the batch, not the index (it scanned a million orders)."""
    from hookline.warehouse.version_index import LOOKUP

    index = VersionIndex(tmp_path / "i.sqlite", "order_id", "version", "updated_at")
    index._db.execute("CREATE TEMP TABLE IF NOT EXISTS wanted (k TEXT PRIMARY KEY)")  # noqa: SLF001 (the query's own connection)
    plan = " | ".join(row[-1] for row in index._db.execute(f"EXPLAIN QUERY PLAN {LOOKUP}"))  # noqa: SLF001
    assert "SEARCH latest USING PRIMARY KEY" in plan, plan
    assert "SCAN latest" not in plan, plan
    index.close()
