"""Fencing stale writers out of a table's changelog, by consumer-group generation.

Kafka's group coordinator numbers every rebalance: a member's *generation*
only grows. A worker that is paused past the session timeout (a long GC, a
frozen VM, SIGSTOP) loses its partitions to another member in a newer
generation, but when it wakes it may still finish the batch it was in: its
outputs and its changelog records reach the broker *after* the new owner's.
Without transactions nothing on the broker stops them.

Outputs of such a batch are harmless: a stage is deterministic, so the stale
member re-emits exactly what the new owner emitted for the same inputs. Its
changelog records are not: appended after the new owner's writes, they would
be the last word on those keys, and whoever recovers the table later would
resume from stale state and emit a version twice with different contents.

So every changelog record carries the generation of the batch that wrote it
(header :data:`GENERATION_HEADER`), and recovery applies a record only if no
record of a newer generation came before it in the same changelog
partition. A live writer's generations never go down within a partition
(batches of one stage run one after another), so only a stale member's
records are skipped.

The newest generation applied per partition must outlive the process when
the store does (RocksDB restores only the changelog's tail after its last
persisted offset), so it is kept next to the store: see :class:`FenceFile`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol

import faust
from faust.types import EventT

GENERATION_HEADER = "hookline-generation"


class ChangelogRecord(Protocol):
    """What the fence needs of a changelog record."""

    @property
    def partition(self) -> int: ...

    @property
    def offset(self) -> int: ...

    @property
    def headers(self) -> object: ...


def generation_of(headers: object) -> int | None:
    """The writer's generation from a record's headers (None: written before fencing)."""
    if not headers:
        return None
    items = headers.items() if isinstance(headers, dict) else headers
    for name, value in items:  # type: ignore[union-attr]
        if name == GENERATION_HEADER:
            try:
                return int(value)
            except (TypeError, ValueError):
                return None
    return None


def generation_header(generation: int) -> list[tuple[str, bytes]]:
    return [(GENERATION_HEADER, str(generation).encode())]


class GenerationFence:
    """Per partition: the newest generation applied, and the last offset seen.

    Pure bookkeeping, unit tested on its own; the table feeds it the changelog
    records a recovery reads, in offset order.
    """

    def __init__(self, newest: dict[int, int] | None = None) -> None:
        self.newest: dict[int, int] = dict(newest or {})
        self._last_offset: dict[int, int] = {}
        self._floor: dict[int, int] = {}
        self.skipped = 0

    def recovered(self) -> None:
        """A recovery completed: what was written so far is history for the next writes."""
        self._floor = {partition: newest + 1 for partition, newest in self.newest.items()}

    def stamp(self, partition: int, generation: int) -> int:
        """The generation to stamp on this partition's next writes.

        The group's generation, unless the changelog already holds a newer one:
        that happens only when the consumer group was deleted and its count
        started again, and new writes must not be fenced out by old ones.
        """
        return max(generation, self._floor.get(partition, 0))

    def restarted(self, partition: int) -> None:
        """A recovery reads this partition from its beginning: forget what it saw."""
        self.newest.pop(partition, None)
        self._last_offset.pop(partition, None)

    def admit(self, partition: int, offset: int, generation: int | None) -> bool:
        """Apply this record? False for a record older than one already applied."""
        last = self._last_offset.get(partition)
        if last is not None and offset <= last:
            # Read again from an earlier offset: a recovery from scratch.
            self.restarted(partition)
        self._last_offset[partition] = offset
        if generation is None:
            return True
        newest = self.newest.get(partition, -1)
        if generation < newest:
            self.skipped += 1
            return False
        self.newest[partition] = generation
        return True

    def wrote(self, partition: int, generation: int, offset: int) -> bool:
        """A live batch wrote up to ``offset`` under ``generation``.

        Returns True if the generation is news worth persisting. The offset
        matters too: a later recovery that reads from before it is a re-read
        (see :meth:`admit`), one that reads past it (a persistent store's tail)
        must remember the generation.
        """
        if offset > self._last_offset.get(partition, -1):
            self._last_offset[partition] = offset
        if generation > self.newest.get(partition, -1):
            self.newest[partition] = generation
            return True
        return False

    def filter(self, records: Iterable[ChangelogRecord]) -> Iterator[ChangelogRecord]:
        for record in records:
            if self.admit(record.partition, record.offset, generation_of(record.headers)):
                yield record


class FenceFile:
    """The fence's newest generations, kept beside a persistent store.

    Written only when a generation grows (once per rebalance and partition),
    atomically (write, then rename).
    """

    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> dict[int, int]:
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}
        return {int(partition): int(generation) for partition, generation in data.items()}

    def save(self, newest: dict[int, int]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        temporary = self.path.with_suffix(".tmp")
        temporary.write_text(json.dumps({str(p): g for p, g in sorted(newest.items())}))
        os.replace(temporary, self.path)


class FencedTable(faust.Table):
    """A Faust table whose recovery skips changelog records of fenced-out writers.

    ``fence_file`` (persistent stores only) keeps the newest generation per
    partition across restarts; without it each recovery reads the changelog
    from its beginning and needs no memory of earlier runs.
    """

    fence: GenerationFence
    fence_file: FenceFile | None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        #: Called with the number of records a recovery batch skipped (a metric).
        self.on_fenced: Callable[[int], None] | None = None
        self.fence_file = None
        self.fence = GenerationFence()
        self._fresh: set[int] = set()
        self.on_recover(self._recovered)

    def keep_fence_in(self, path: Path) -> None:
        self.fence_file = FenceFile(path)
        self.fence = GenerationFence(self.fence_file.load())

    def apply_changelog_batch(self, batch: Sequence[EventT]) -> None:  # type: ignore[override]
        admitted = []
        for event in batch:
            message = event.message
            partition = message.partition
            if self.fence_file is not None and partition not in self._fresh:
                # First record of this partition in this recovery: a persistent
                # store without a persisted offset is rebuilt from scratch, so
                # the remembered generation is not in it.
                self._fresh.add(partition)
                if self.data.persisted_offset(message.tp) is None:
                    self.fence.restarted(partition)
            if self.fence.admit(partition, message.offset, generation_of(message.headers)):
                admitted.append(event)
        skipped = len(batch) - len(admitted)
        if skipped and self.on_fenced is not None:
            self.on_fenced(skipped)
        super().apply_changelog_batch(admitted)

    def stamp(self, partition: int, generation: int) -> int:
        return self.fence.stamp(partition, generation)

    def written(self, writes: dict[int, tuple[int, int]]) -> None:
        """A live batch's changelog writes were acknowledged: partition -> (offset, stamp)."""
        news = False
        for partition, (offset, stamp) in writes.items():
            news = self.fence.wrote(partition, stamp, offset) or news
        if news and self.fence_file is not None:
            self.fence_file.save(self.fence.newest)

    async def _recovered(self) -> None:
        self._fresh.clear()
        self.fence.recovered()
        if self.fence_file is not None:
            self.fence_file.save(self.fence.newest)
