"""Deleting expired table keys, so state stays bounded.

Every table value carries ``expires_at`` (event time: the dedup window, the
join retention, the order retention). Reads already treat an expired value as
absent, so outputs never depend on when a key is physically deleted; this
module does the deleting, and the delete's changelog tombstone lets Kafka
compaction drop the key too.

A delete must be written in the context of an event from the key's own
partition (see streams/batch.py), so sweeping happens inside batches: for each
partition a batch touched, the keys whose expiry is before that partition's
stream time (the newest event time seen there) are deleted. One index entry
per live key (partition, expires_at) is kept in memory, rebuilt from the local
store after every recovery.
"""

from __future__ import annotations

import heapq
from collections import defaultdict
from collections.abc import Callable, Iterator
from typing import Any

from faust.types import EventT, TableT
from hookline.streams.batch import Batch

#: Deletes per partition per batch: sweeping must not stall processing.
SWEEP_LIMIT = 200


class ExpiryIndex:
    """Per partition: a min-heap of (expires_at, key), one entry per live key."""

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


class StreamTime:
    """The newest event time per partition within a batch, with an event to write under."""

    def __init__(self) -> None:
        self.latest: dict[int, tuple[EventT, int]] = {}

    def saw(self, event: EventT, event_time: int) -> None:
        partition = event.message.partition
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
        self.deleted = 0
        table.on_recover(self.rebuild)

    def noted(self, event: EventT, key: bytes, value: dict[str, Any]) -> None:
        if value["expires_at"] > 0:
            self.index.note(event.message.partition, key, value["expires_at"])

    def sweep(self, batch: Batch, stream_time: StreamTime) -> int:
        """Delete the due keys of every partition the batch touched."""
        deleted = 0
        for partition, (event, now) in stream_time.latest.items():
            for key in self.index.due(partition, now):
                value = batch.get(event, key)
                if value is None:
                    continue
                if 0 < value["expires_at"] <= now:
                    if self.on_expired is None:
                        batch.delete(event, key)
                    else:
                        batch.put(event, key, self.on_expired(value))
                    deleted += 1
                else:  # extended since it was indexed: look again then
                    self.index.note(partition, key, value["expires_at"])
        self.deleted += deleted
        return deleted

    async def rebuild(self) -> None:
        """After a recovery: index every local key of the partitions now owned."""
        active = active_partitions(self.table)
        self.index.keep_only(active)
        for partition, key, raw in local_items(self.table, active):
            expires_at = self.decode(raw)["expires_at"]
            if expires_at > 0:
                self.index.note(partition, key, expires_at)


def active_partitions(table: TableT) -> set[int]:
    topic = table.changelog_topic.get_topic_name()
    return {tp.partition for tp in table.app.assignor.assigned_actives() if tp.topic == topic}


def local_items(table: TableT, partitions: set[int]) -> Iterator[tuple[int, bytes, bytes]]:
    """(partition, key, value) of the local store (Faust keeps no public per-partition view)."""
    store: Any = table.data
    if hasattr(store, "_dbs"):  # RocksDB: one database per partition
        for partition, db in list(store._dbs.items()):
            if partition in partitions:
                for key, value in store._visible_items(db):
                    yield partition, key, value
    else:  # memory: partitions are known for keys restored from the changelog
        for key, partition in list(store._key_partition.items()):
            value = store.data.get(key)
            if partition in partitions and value is not None:
                yield partition, key, value
