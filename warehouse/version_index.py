"""Each order's latest version in ``orders_state``, kept in a local SQLite file.

What it is for: the ``orders_state`` commit must know, for every order in a
batch, the version (and time) of the row the table already holds. Asking the
table means scanning it: order ids are random, so no partition or file
statistic prunes an ``In`` filter on them, and the scan grows with every
order ever landed. This index answers from a B-tree instead, so a commit's
cost follows its batch, not the table's history (docs/warehouse.md,
"Commit cost").

Invariant: the file holds, for every order of every snapshot up to the one
it names (``synced``), the highest version any of those snapshots added, and
no row that the table never held. It is a cache of the table, never a
source of truth:

- before every commit :meth:`VersionIndex.sync` brings it to the table's
  current snapshot: from its own snapshot on, it reads only the data files
  that later snapshots added (another sink's commits, a commit of ours whose
  answer was lost, a compaction), and rebuilds from a scan of the whole
  table when its snapshot is no longer in the table's history (expired, a
  recreated table) or the file is missing;
- after a commit :meth:`VersionIndex.record` adds the committed rows and
  names the new snapshot, in one SQLite transaction.

Both only ever raise a stored version (an upsert keeping the maximum), so
applying a snapshot's rows twice, or out of order, changes nothing: a crash
anywhere between the catalog commit and the index's leaves an index that the
next ``sync`` completes.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from pyiceberg.manifest import DataFileContent, ManifestContent, ManifestEntryStatus
from pyiceberg.table import Table
from pyiceberg.table.snapshots import Snapshot, ancestors_of

log = logging.getLogger(__name__)

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICRO = timedelta(microseconds=1)
CACHE_MB = 256  # about 6 million orders' entries
_NO_SNAPSHOT = 0  # ``synced`` of an index made from a table without snapshots

Latest = tuple[int, datetime]  # (version, time of the row that holds it)

#: CROSS JOIN fixes the order: SQLite walks the batch's keys (``wanted``) and
#: searches ``latest`` by key. With a plain JOIN and no statistics it chose the
#: other order, a scan of the whole index per batch (0.25 s at a million orders).
LOOKUP = "SELECT k, version, at FROM wanted CROSS JOIN latest USING (k)"


def micros(value: datetime) -> int:
    return (value - EPOCH) // _MICRO


def from_micros(value: int) -> datetime:
    return EPOCH + value * _MICRO


class VersionIndex:
    """key -> (highest version, its row's time), for one versioned table."""

    def __init__(self, path: Path, key: str, version: str, time_column: str) -> None:
        self.path = path
        self.key, self.version, self.time_column = key, version, time_column
        path.parent.mkdir(parents=True, exist_ok=True)
        # Two sinks of one warehouse on one machine share the file: a writer
        # takes the lock up front (BEGIN IMMEDIATE) and the other waits for it.
        self._db = sqlite3.connect(
            path, isolation_level=None, check_same_thread=False, timeout=30.0
        )
        # WAL and NORMAL sync: a power cut may lose the last transaction, which
        # the next sync re-reads from the table (the index is only a cache).
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        # A batch's keys are random: with SQLite's 2 MB default cache every
        # lookup and insert would read its B-tree pages from the file again,
        # a cost that grows with the index. Up to CACHE_MB stay in memory.
        self._db.execute(f"PRAGMA cache_size=-{CACHE_MB * 1024}")
        self._db.execute(f"PRAGMA mmap_size={CACHE_MB * 1024 * 1024}")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS latest "
            "(k TEXT PRIMARY KEY, version INTEGER NOT NULL, at INTEGER NOT NULL) WITHOUT ROWID"
        )
        self._db.execute("CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT)")
        self.rebuilds = 0  # full scans of the table (tests and the bench read it)
        self.files_read = 0  # data files read to catch up

    def close(self) -> None:
        self._db.close()

    # -- reading -------------------------------------------------------------------

    def lookup(self, keys: Iterable[str]) -> dict[str, Latest]:
        """The stored (version, time) of each key the index has."""
        self._db.execute("BEGIN")
        try:
            self._db.execute("CREATE TEMP TABLE IF NOT EXISTS wanted (k TEXT PRIMARY KEY)")
            self._db.execute("DELETE FROM wanted")
            self._db.executemany(
                "INSERT OR IGNORE INTO wanted (k) VALUES (?)", ((k,) for k in sorted(keys))
            )
            found = {k: (version, from_micros(at)) for k, version, at in self._db.execute(LOOKUP)}
        finally:
            self._db.execute("ROLLBACK")
        return found

    def size(self) -> int:
        return int(self._db.execute("SELECT count(*) FROM latest").fetchone()[0])

    def synced(self) -> tuple[str | None, int | None]:
        """(table uuid, snapshot id) the index is complete up to; (None, None) when new."""
        meta = dict(self._db.execute("SELECT name, value FROM meta"))
        snapshot = meta.get("snapshot")
        return meta.get("table"), None if snapshot is None else int(snapshot)

    # -- writing -------------------------------------------------------------------

    def record(self, table: Table, values: Iterable[tuple[str, int, int]]) -> None:
        """Add rows the table's current snapshot committed (key, version, time in
        microseconds since the epoch), and name that snapshot."""
        # In key order: neighbouring keys share B-tree pages, so a sorted batch
        # touches each page once.
        self._apply(sorted(values), table)

    def sync(self, table: Table) -> None:
        """Bring the index to ``table``'s current snapshot (see the module's invariant)."""
        uuid, synced = self.synced()
        current = table.current_snapshot()
        current_id = _NO_SNAPSHOT if current is None else current.snapshot_id
        if uuid == str(table.metadata.table_uuid) and synced == current_id:
            return
        newer = _since(table, synced) if uuid == str(table.metadata.table_uuid) else None
        if newer is None:
            self._rebuild(table)
            return
        for snapshot in newer:
            paths = list(_added_files(table, snapshot))
            self.files_read += len(paths)
            self._apply(self._read(table, paths), table, snapshot.snapshot_id)

    def _rebuild(self, table: Table) -> None:
        self.rebuilds += 1
        log.info("rebuilding %s from the whole table", self.path.name)
        self._db.execute("BEGIN IMMEDIATE")
        self._db.execute("DELETE FROM latest")
        self._db.execute("DELETE FROM meta")
        self._db.execute("COMMIT")
        values: Iterable[tuple[str, int, int]] = ()
        if table.current_snapshot() is not None:
            found = table.scan(selected_fields=(self.key, self.version, self.time_column))
            values = self._triples(found.to_arrow())
        self._apply(values, table)

    def _apply(
        self, values: Iterable[tuple[str, int, int]], table: Table, snapshot: int | None = None
    ) -> None:
        if snapshot is None:
            current = table.current_snapshot()
            snapshot = _NO_SNAPSHOT if current is None else current.snapshot_id
        self._db.execute("BEGIN IMMEDIATE")
        try:
            self._db.executemany(
                "INSERT INTO latest (k, version, at) VALUES (?, ?, ?) "
                "ON CONFLICT (k) DO UPDATE SET version = excluded.version, at = excluded.at "
                "WHERE excluded.version > latest.version",
                values,
            )
            self._db.executemany(
                "INSERT OR REPLACE INTO meta (name, value) VALUES (?, ?)",
                [("table", str(table.metadata.table_uuid)), ("snapshot", str(snapshot))],
            )
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def _read(self, table: Table, paths: list[str]) -> Iterator[tuple[str, int, int]]:
        columns = [self.key, self.version, self.time_column]
        for path in paths:
            with table.io.new_input(path).open() as stream:
                yield from self._triples(pq.read_table(stream, columns=columns))

    def _triples(self, found: pa.Table) -> Iterator[tuple[str, int, int]]:
        times = found.column(self.time_column).cast(pa.int64())
        return zip(
            found.column(self.key).to_pylist(),
            found.column(self.version).to_pylist(),
            times.to_pylist(),
            strict=True,
        )


def _since(table: Table, synced: int | None) -> list[Snapshot] | None:
    """The snapshots after ``synced``, oldest first; None when it is not an ancestor."""
    if synced is None:
        return None
    newer: list[Snapshot] = []
    for snapshot in ancestors_of(table.current_snapshot(), table.metadata):
        if snapshot.snapshot_id == synced:
            return newer[::-1]
        newer.append(snapshot)
    # Walked back to the oldest kept snapshot: complete only if the index began
    # empty and no snapshot before that one was expired.
    whole = not newer or newer[-1].parent_snapshot_id is None
    return newer[::-1] if synced == _NO_SNAPSHOT and whole else None


def _added_files(table: Table, snapshot: Snapshot) -> Iterator[str]:
    """The data files ``snapshot`` itself added (a merged manifest keeps older ones as EXISTING)."""
    for manifest in snapshot.manifests(table.io):
        if manifest.content != ManifestContent.DATA:
            continue
        if manifest.added_snapshot_id != snapshot.snapshot_id:
            continue
        for entry in manifest.fetch_manifest_entry(table.io, discard_deleted=True):
            if (
                entry.status == ManifestEntryStatus.ADDED
                and entry.snapshot_id == snapshot.snapshot_id
                and entry.data_file.content == DataFileContent.DATA
            ):
                yield entry.data_file.file_path
