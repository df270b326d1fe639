"""``hookline sink --maintain``: compact small files, expire old snapshots, delete orphans.

Why it is needed: a sink commits every ``commit_interval`` seconds, so each
day partition gains a file per table per commit, and every commit adds a
snapshot (two for an ``orders_state`` upsert). Readers plan slower with every
file and every snapshot. Run it once a day (cron, a Kubernetes CronJob) next
to running sinks: each step is an ordinary Iceberg commit, and a conflict
with a sink's commit is retried from a fresh read, never forced.

Compaction copies the sink's offsets property into its snapshots, so the
newest snapshot still says where the sink resumes.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlparse

from hookline.warehouse import tables
from hookline.warehouse.rows import TABLES, TableDef
from pyiceberg.catalog import Catalog
from pyiceberg.exceptions import CommitFailedException
from pyiceberg.expressions import And, GreaterThanOrEqual, LessThan
from pyiceberg.table import Table

log = logging.getLogger("hookline.sink.maintenance")

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
ATTEMPTS = 10


@dataclass
class Report:
    table: str
    files_before: int = 0
    files_after: int = 0
    partitions_compacted: int = 0
    snapshots_expired: int = 0
    orphans_deleted: int = 0

    def line(self) -> str:
        return (
            f"{self.table}: data files {self.files_before} -> {self.files_after} "
            f"({self.partitions_compacted} day partition(s) compacted), "
            f"{self.snapshots_expired} snapshot(s) expired, "
            f"{self.orphans_deleted} unreferenced file(s) deleted"
        )


def _data_files_by_day(table: Table) -> dict[int, int]:
    counts: dict[int, int] = defaultdict(int)
    for task in table.scan().plan_files():
        counts[int(task.file.partition[0])] += 1
    return counts


def compact(table: Table, table_def: TableDef, min_files: int) -> tuple[Table, int]:
    """Rewrite each day partition holding at least ``min_files`` files as one sorted file."""
    compacted = 0
    for day, count in sorted(_data_files_by_day(table).items()):
        if count < min_files:
            continue
        start = EPOCH + timedelta(days=day)
        column = table_def.time_column
        # Day boundaries match the partition exactly: whole files are
        # replaced, none is rewritten row by row.
        same_day = And(
            GreaterThanOrEqual(column, start.isoformat()),
            LessThan(column, (start + timedelta(days=1)).isoformat()),
        )
        for attempt in range(1, ATTEMPTS + 1):
            table = table.refresh()
            data = table.scan(row_filter=same_day).to_arrow()
            data = data.sort_by([(k, "ascending") for k in table_def.key])
            offsets = tables.all_offsets(table)
            props = tables.offsets_property(offsets) if offsets else {}
            try:
                transaction = table.transaction()
                transaction.overwrite(data, overwrite_filter=same_day, snapshot_properties=props)
                transaction.commit_transaction()
            except CommitFailedException:
                log.info("%s day %s: a sink committed meanwhile; again", table_def.name, start)
                time.sleep(0.2 * attempt)
                continue
            compacted += 1
            log.info(
                "%s: day %s, %d files -> 1 (%d rows)",
                table_def.name,
                start.date(),
                count,
                data.num_rows,
            )
            break
    return table.refresh(), compacted


def expire(table: Table, older_than: timedelta) -> tuple[Table, int]:
    """Expire snapshots older than ``older_than`` (the current one is always kept)."""
    cutoff = datetime.now(tz=UTC) - older_than
    current = table.current_snapshot()
    old = [
        s.snapshot_id
        for s in table.metadata.snapshots
        if s.timestamp_ms < cutoff.timestamp() * 1000
        and (current is None or s.snapshot_id != current.snapshot_id)
    ]
    if not old:
        return table, 0
    for attempt in range(1, ATTEMPTS + 1):
        try:
            table.maintenance.expire_snapshots().by_ids(old).commit()
            break
        except CommitFailedException:
            time.sleep(0.2 * attempt)
            table = table.refresh()
            present = {s.snapshot_id for s in table.metadata.snapshots}
            old = [s for s in old if s in present]
    return table.refresh(), len(old)


def delete_orphans(table: Table, older_than: timedelta) -> int:
    """Delete data and manifest files no snapshot references (local warehouses only).

    Only files older than ``older_than`` go: a younger one may belong to a
    commit in flight. Object stores: use the engine's orphan-file removal
    (Spark ``remove_orphan_files``), see docs/warehouse.md.
    """
    location = urlparse(table.metadata.location)
    if location.scheme not in ("", "file"):
        return 0
    referenced: set[str] = set()
    for snapshot in table.metadata.snapshots:
        referenced.add(urlparse(snapshot.manifest_list).path)
        for manifest in snapshot.manifests(table.io):
            referenced.add(urlparse(manifest.manifest_path).path)
            for entry in manifest.fetch_manifest_entry(table.io, discard_deleted=True):
                referenced.add(urlparse(entry.data_file.file_path).path)
    cutoff = time.time() - older_than.total_seconds()
    root = Path(location.path)
    deleted = 0
    candidates = [*root.glob("data/**/*.parquet"), *root.glob("metadata/*.avro")]
    for path in candidates:
        if str(path) not in referenced and path.stat().st_mtime < cutoff:
            path.unlink()
            deleted += 1
    return deleted


def maintain(
    catalog: Catalog,
    environments: tuple[str, ...],
    expire_after: timedelta,
    min_files: int,
) -> list[Report]:
    reports = []
    for environment in environments:
        for table_def in TABLES:
            table = tables.ensure_table(catalog, table_def, environment)
            report = Report(table_def.identifier(environment))
            report.files_before = sum(_data_files_by_day(table).values())
            table, report.partitions_compacted = compact(table, table_def, min_files)
            table, report.snapshots_expired = expire(table, expire_after)
            report.orphans_deleted = delete_orphans(table, expire_after)
            report.files_after = sum(_data_files_by_day(table).values())
            log.info("%s", report.line())
            reports.append(report)
    return reports
