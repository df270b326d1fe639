"""Deleting expired table keys, so state stays bounded.

Every table value carries ``expires_at`` (event time: the dedup window, the
join retention, the order retention). Reads already treat an expired value as
absent, so outputs never depend on when a key is physically deleted; this
module does the deleting, and the delete's changelog tombstone lets Kafka
compaction drop the key too.

A delete must be written in the context of an event from the key's own
partition (see streams/batch.py), so sweeping happens inside batches: for each
partition a batch touched, keys whose expiry is before that partition's stream
time (the newest event time seen there) are deleted.

How the due keys are found depends on the store, because the worker's memory
must not grow with the number of keys it holds:

- RocksDB (production): an incremental scan of the partition's database. A
  cursor per partition remembers the last key examined; each batch examines
  the next :data:`SCAN_PER_EVENT` keys per input event of that partition,
  wrapping around at the end. Nothing per key is kept in memory, nothing needs
  rebuilding after a recovery, and a key is deleted at most one full pass
  after it expired (see :data:`SCAN_PER_EVENT` for what that costs on disk).
- Memory (``hookline run``, tests): a heap of (expires_at, key) per partition,
  rebuilt from the store after every recovery. The data is in memory anyway,
  and a dict cannot be scanned from a cursor.
"""

from __future__ import annotations

import heapq
from collections import defaultdict
from collections.abc import Callable, Iterator
from typing import Any

import rocksdict
from faust.types import EventT, TableT
from hookline.schemas.codec import CodecError
from hookline.streams.batch import Batch
from hookline.streams.internals import key_partitions, partition_dbs

#: Deletes per partition per batch: sweeping must not stall processing.
SWEEP_LIMIT = 200

#: RocksDB: keys examined per input event of the partition, per table. Each
#: event adds at most one key to a table, so a pass over S keys takes S/2
#: events, during which at most S/2 keys were added: expired keys not yet
#: deleted are at most as many as the live ones, in the worst case where every
#: key expires. Each examined key costs one value decode (8-30 us here).
SCAN_PER_EVENT = 2


class ExpiryIndex:
    """Memory store: per partition, a min-heap of (expires_at, key), one entry per live key."""

    def __init__(self) -> None:
        self._heaps: dict[int, list[tuple[int, bytes]]] = defaultdict(list)
        self._indexed: dict[int, set[bytes]] = defaultdict(set)

    def __len__(self) -> int:
        return sum(len(keys) for keys in self._indexed.values())

    def note(self, partition: int, key: bytes, expires_at: int) -> None:
        """Index a key (no-op when indexed: a later expiry is found when due)."""
        if key not in self._indexed[partition]:
            self._indexed[partition].add(key)
            heapq.heappush(self._heaps[partition], (expires_at, key))

    def due(self, partition: int, now: int, limit: int = SWEEP_LIMIT) -> list[bytes]:
        """Keys whose indexed expiry is at or before ``now`` (removed from the index)."""
        heap = self._heaps.get(partition)
        found: list[bytes] = []
        while heap and heap[0][0] <= now and len(found) < limit:
            _, key = heapq.heappop(heap)
            self._indexed[partition].discard(key)
            found.append(key)
        return found

    def keep_only(self, partitions: set[int]) -> None:
        for partition in list(self._heaps):
            if partition not in partitions:
                del self._heaps[partition]
                self._indexed.pop(partition, None)


def _scan_options() -> rocksdict.ReadOptions:
    # A sweep reads each key once per pass: caching those blocks would only
    # evict the ones that lookups reuse.
    options = rocksdict.ReadOptions()
    options.fill_cache(False)
    return options


_SCAN_READS = _scan_options()


def scan(db: rocksdict.Rdict, after: bytes | None = None) -> Iterator[tuple[bytes, bytes]]:
    """(key, value) of a RocksDB database in key order, from just after ``after``."""
    cursor = db.iter(_SCAN_READS)
    if after is None:
        cursor.seek_to_first()
    else:
        cursor.seek(after)
        if cursor.valid() and cursor.key() == after:
            cursor.next()
    while cursor.valid():
        yield cursor.key(), cursor.value()
        cursor.next()


class StoreScan:
    """RocksDB store: per partition, the last key a sweep examined."""

    def __init__(self, expires_at: Callable[[bytes], int]) -> None:
        self._expires_at = expires_at
        self.cursors: dict[int, bytes] = {}

    def due(
        self,
        db: rocksdict.Rdict,
        partition: int,
        now: int,
        budget: int,
        limit: int = SWEEP_LIMIT,
        skip: bytes | None = None,
    ) -> list[bytes]:
        """Expired keys among the next ``budget`` keys after the partition's cursor.

        ``skip`` is a key that holds no table value (Faust's persisted offset).
        """
        found: list[bytes] = []
        for examined, (key, raw) in enumerate(scan(db, self.cursors.get(partition)), 1):
            if key != skip and 0 < self._expires_at(raw) <= now:
                found.append(key)
            if examined >= budget or len(found) >= limit:
                self.cursors[partition] = key
                return found
        self.cursors.pop(partition, None)  # the end: the next sweep starts over
        return found

    def keep_only(self, partitions: set[int]) -> None:
        for partition in list(self.cursors):
            if partition not in partitions:
                del self.cursors[partition]


class StreamTime:
    """Per partition within a batch: the newest event time, with an event to write under,
    and how many events were seen (what the sweep may spend on that partition)."""

    def __init__(self) -> None:
        self.latest: dict[int, tuple[EventT, int]] = {}
        self.events: dict[int, int] = {}

    def saw(self, event: EventT, event_time: int) -> None:
        partition = event.message.partition
        self.events[partition] = self.events.get(partition, 0) + 1
        seen = self.latest.get(partition)
        if seen is None or event_time >= seen[1]:
            self.latest[partition] = (event, event_time)


class Expiry:
    """Sweeps one table; hook it to the table's batches and recoveries."""

    def __init__(
        self,
        table: TableT,
        decode: Callable[[bytes], dict[str, Any]],
        on_expired: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
    ) -> None:
        self.table = table
        self.decode = decode
        #: What an expired value becomes (None: it is deleted). A replacement
        #: with ``expires_at`` 0 never expires again.
        self.on_expired = on_expired
        self.index = ExpiryIndex()
        self.scan = StoreScan(self._expires_at)
        self.deleted = 0
        table.on_recover(self.rebuild)

    def _expires_at(self, raw: bytes) -> int:
        """When a stored value expires; 0 (never, by this release) when it cannot be read.

        A value this release cannot decode (a newer release's schema, after a
        rollback) is left alone: neither expired nor a reason to stop
        (docs/design.md, "No delivery stops the pipeline").
        """
        try:
            return int(self.decode(raw)["expires_at"])
        except CodecError:
            return 0

    def _on_disk(self) -> bool:
        """RocksDB (one database per partition) rather than the memory store."""
        return partition_dbs(self.table.data) is not None

    def noted(self, event: EventT, key: bytes, value: dict[str, Any]) -> None:
        if value["expires_at"] > 0 and not self._on_disk():
            self.index.note(event.message.partition, key, value["expires_at"])

    def _due(self, partition: int, now: int, events: int) -> list[bytes]:
        store: Any = self.table.data
        dbs = partition_dbs(store)
        if dbs is None:
            return self.index.due(partition, now)
        db = dbs.get(partition)
        if db is None:  # not open here (any more)
            return []
        budget = SCAN_PER_EVENT * max(events, 1)
        return self.scan.due(db, partition, now, budget, skip=store.offset_key)

    def sweep(self, batch: Batch, stream_time: StreamTime) -> int:
        """Delete the due keys of every partition the batch touched."""
        deleted = 0
        for partition, (event, now) in stream_time.latest.items():
            for key in self._due(partition, now, stream_time.events.get(partition, 1)):
                try:
                    value = batch.get(event, key)  # this batch may have rewritten it
                except CodecError:
                    continue  # unreadable by this release: not expired by it either
                if value is None:
                    continue
                if 0 < value["expires_at"] <= now:
                    if self.on_expired is None:
                        batch.delete(event, key)
                    else:
                        batch.put(event, key, self.on_expired(value))
                    deleted += 1
                elif value["expires_at"] > 0 and not self._on_disk():
                    # Extended since it was indexed: look again then.
                    self.index.note(partition, key, value["expires_at"])
        self.deleted += deleted
        return deleted

    async def rebuild(self) -> None:
        """After a recovery: forget partitions no longer owned; index the memory store."""
        active = active_partitions(self.table)
        self.scan.keep_only(active)
        self.index.keep_only(active)
        if self._on_disk():
            return  # the scan finds whatever the recovery wrote
        for partition, key, raw in local_items(self.table, active):
            expires_at = self._expires_at(raw)
            if expires_at > 0:
                self.index.note(partition, key, expires_at)


def active_partitions(table: TableT) -> set[int]:
    topic = table.changelog_topic.get_topic_name()
    return {tp.partition for tp in table.app.assignor.assigned_actives() if tp.topic == topic}


def local_items(table: TableT, partitions: set[int]) -> Iterator[tuple[int, bytes, bytes]]:
    """(partition, key, value) of the local store (Faust keeps no public per-partition view)."""
    store: Any = table.data
    dbs = partition_dbs(store)
    if dbs is not None:  # RocksDB: one database per partition
        for partition, db in list(dbs.items()):
            if partition in partitions:
                for key, value in scan(db):
                    if key != store.offset_key:
                        yield partition, key, value
    else:  # memory: partitions are known for keys restored from the changelog
        for key, partition in list(key_partitions(store).items()):
            value = store.data.get(key)
            if partition in partitions and value is not None:
                yield partition, key, value
