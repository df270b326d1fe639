"""Which input record a worker must deliver next, per partition.

An input topic's offsets may have holes: transaction markers (the worker's
own exactly-once writes to ``transaction-facts`` and ``order-inputs``, a
transactional upstream writer of ``raw``, MirrorMaker 2), records of aborted
transactions a ``read_committed`` consumer never sees, compaction. So a
record past the expected offset is a hole in the log (:attr:`Verdict.GAP`:
delivered, and the missing offsets are counted as acknowledged) *unless*
records of that partition are known to have been dropped after delivery
(:meth:`rewind`): then the partition is strict until the earliest dropped
record comes back, and a jump means records were skipped. Jumps of that
kind did happen, on the hand-over of a dead or
evicted member's partitions: records fetched while the tables were being
recovered were dropped from the stages' queues, and the position they had
moved to was kept when aiokafka's ``seek_to_committed`` left alone every
partition without a committed offset (it seeks only offsets above 0). Two
tests saw it as lost orders (docs/design.md).

So the consumer keeps the next expected offset of each input partition
(:class:`Positions`, pure, unit-tested), set when Faust seeks and advanced by
each delivery. In a strict partition a record beyond it is not delivered: the
partition is sought back to the expected offset and read again
(:attr:`Verdict.SKIPPED`); records
of the partition that were fetched before the seek took effect are dropped
meanwhile (:attr:`Verdict.RESUMING`). Records dropped last, with nothing
after them to show the jump, are found by comparing the client's fetch
position with the expected offset once a second (:meth:`Positions.overtaken`).
Between an assignment and Faust's seek of the assigned partitions (the
tables recover in between, and the seek itself waits for the committed
offsets), a partition is *held*: its records are dropped (:meth:`hold`).
Nothing is known of them yet, and delivering them was not safe: the fetcher
still reads on from where it was, past records not yet processed, and those
records, processed first and acknowledged, let the next commit pass the
older ones (Faust commits the first run of consecutive acknowledged offsets,
wherever it starts) and reordered an order's facts across the hand-over.
Faust itself drops records already delivered: its flow control clears
every stage's queue when it resumes the flow, and table recovery resumes it
a last time after the seek, when records of the sought partitions can
already be queued. Those records would never be processed nor acknowledged,
and the commit would stop before the first of them for good (a rare stall of
the crash tests: every record delivered, a partition's commit stuck, no
error). The consumer has the earliest offset dropped per partition read
again (:meth:`rewind`).
A record before it means the partition was sought back by someone else
(aiokafka resetting an out-of-range position, a seek this module did not
see): it is delivered and reading continues from there; delivering a record
twice is safe (every stage is idempotent), dropping it would stall the
partition for good.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Generic, TypeVar

#: Seek again if the expected record has not come back after this long.
RESEEK_AFTER_S = 2.0

P = TypeVar("P")  # a topic partition


class Verdict(enum.Enum):
    DELIVER = "deliver"
    GAP = "gap"  # past the expected offset, across a hole in the log: deliver
    SKIPPED = "skipped"  # records before it were never delivered: seek back
    RESUMING = "resuming"  # fetched before the seek back took effect: drop


class Positions(Generic[P]):
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._next: dict[P, int] = {}
        self._resuming: dict[P, float] = {}
        self._held: set[P] = set()
        #: Partitions whose expected record is known to exist (delivered once,
        #: then dropped): a jump past it is records skipped, not a hole.
        self._strict: set[P] = set()
        self._clock = clock

    def expect(self, positions: Mapping[P, int]) -> None:
        """Faust sought these partitions: their next records are at these offsets."""
        for tp, offset in positions.items():
            self._next[tp] = offset
            self._resuming.pop(tp, None)
            self._held.discard(tp)
            self._strict.discard(tp)

    def hold(self, partitions: Iterable[P]) -> None:
        """Partitions just assigned: drop their records until Faust seeks them (:meth:`expect`)."""
        for tp in partitions:
            self._next.pop(tp, None)
            self._resuming.pop(tp, None)
            self._strict.discard(tp)
            self._held.add(tp)

    def held(self) -> set[P]:
        return set(self._held)

    def is_held(self, tp: P) -> bool:
        return tp in self._held

    def forget(self, partitions: Iterable[P]) -> None:
        """Partitions revoked: nothing is known of them any more."""
        for tp in partitions:
            self._next.pop(tp, None)
            self._resuming.pop(tp, None)
            self._held.discard(tp)
            self._strict.discard(tp)

    def rewind(self, dropped: Iterable[tuple[P, int]]) -> dict[P, int]:
        """Records delivered but then dropped unprocessed: expect the earliest of each again.

        ``dropped`` holds (partition, offset) pairs in any order. A later
        record of the partition is then :attr:`Verdict.SKIPPED` (the
        partition is sought back at once), and if none comes the fetch
        position shows it (:meth:`overtaken`). Returns {partition: offset}
        for the partitions rewound; a held or unknown partition is left
        alone (its seek is still to come).
        """
        earliest: dict[P, int] = {}
        for tp, offset in dropped:
            if offset < earliest.get(tp, offset + 1):
                earliest[tp] = offset
        rewound = {}
        for tp, offset in earliest.items():
            expected = self._next.get(tp)
            if expected is not None and offset < expected:
                self._next[tp] = offset
                self._resuming.pop(tp, None)
                self._strict.add(tp)
                rewound[tp] = offset
        return rewound

    def expected(self, tp: P) -> int | None:
        return self._next.get(tp)

    def snapshot(self) -> dict[P, int]:
        return dict(self._next)

    def overtaken(self, fetch_positions: Mapping[P, int], due: Mapping[P, int]) -> dict[P, int]:
        """Partitions the fetcher moved past records never delivered: {partition: offset due}.

        ``fetch_positions`` is the client's next offset to fetch per partition,
        read while nothing was being delivered; ``due`` the :meth:`snapshot`
        taken just before. A partition sought back less than
        ``RESEEK_AFTER_S`` ago is left to that seek.
        """
        now = self._clock()
        overtaken = {}
        for tp, offset in due.items():
            if (
                tp in self._strict
                and fetch_positions.get(tp, offset) > offset
                and self._next.get(tp) == offset
            ):
                since = self._resuming.get(tp)
                if since is None or now - since >= RESEEK_AFTER_S:
                    self._resuming[tp] = now
                    overtaken[tp] = offset
        return overtaken

    def check(self, tp: P, offset: int) -> Verdict:
        expected = self._next.get(tp)
        if expected is None:
            return Verdict.RESUMING if tp in self._held else Verdict.DELIVER
        if offset <= expected:
            return Verdict.DELIVER
        if tp not in self._strict:
            return Verdict.GAP
        since = self._resuming.get(tp)
        if since is not None and self._clock() - since < RESEEK_AFTER_S:
            return Verdict.RESUMING
        self._resuming[tp] = self._clock()
        return Verdict.SKIPPED

    def delivered(self, tp: P, offset: int) -> None:
        self._next[tp] = offset + 1
        self._resuming.pop(tp, None)
        self._strict.discard(tp)
