"""The changelog fence: a fenced-out writer's records never win a recovery."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from hookline.streams.fencing import (
    GENERATION_HEADER,
    FenceFile,
    GenerationFence,
    generation_header,
    generation_of,
)


@dataclass(frozen=True)
class Rec:
    partition: int
    offset: int
    headers: object


def rec(partition: int, offset: int, generation: int | None) -> Rec:
    return Rec(partition, offset, None if generation is None else generation_header(generation))


def admitted(fence: GenerationFence, records: list[Rec]) -> list[int]:
    return [r.offset for r in fence.filter(records)]


def test_header_round_trip_and_foreign_headers() -> None:
    assert generation_of(generation_header(17)) == 17
    assert generation_of([("other", b"1"), (GENERATION_HEADER, b"9")]) == 9
    assert generation_of({GENERATION_HEADER: b"4"}) == 4
    assert generation_of(None) is None
    assert generation_of([]) is None
    assert generation_of([(GENERATION_HEADER, b"not a number")]) is None


def test_a_stale_writer_after_a_newer_one_is_skipped() -> None:
    # Owner in generation 3 writes, then the new owner (5) recovers and writes,
    # then the paused old owner wakes and finishes its batch (3 again).
    records = [rec(0, 0, 3), rec(0, 1, 3), rec(0, 2, 5), rec(0, 3, 3), rec(0, 4, 5)]
    fence = GenerationFence()
    assert admitted(fence, records) == [0, 1, 2, 4]
    assert fence.skipped == 1


def test_stale_records_before_the_newer_generation_are_kept() -> None:
    # Landed before the new owner's first write: the new owner recovered them
    # (or will), so they are part of the history it continued from.
    records = [rec(0, 0, 3), rec(0, 1, 3), rec(0, 2, 6)]
    assert admitted(GenerationFence(), records) == [0, 1, 2]


def test_partitions_are_fenced_separately() -> None:
    records = [rec(0, 0, 8), rec(1, 0, 2), rec(1, 1, 2), rec(0, 1, 7)]
    assert admitted(GenerationFence(), records) == [0, 0, 1]


def test_unstamped_records_are_applied() -> None:
    # Written before fencing existed: nothing to judge them by.
    records = [rec(0, 0, None), rec(0, 1, 4), rec(0, 2, None)]
    assert admitted(GenerationFence(), records) == [0, 1, 2]


def test_reading_a_partition_again_from_the_start_forgets_it() -> None:
    fence = GenerationFence()
    assert admitted(fence, [rec(0, 0, 3), rec(0, 1, 9)]) == [0, 1]
    # A later recovery from scratch (memory store) sees the same history again.
    assert admitted(fence, [rec(0, 0, 3), rec(0, 1, 9), rec(0, 2, 4)]) == [0, 1]


def test_a_tail_recovery_remembers_the_newest_generation() -> None:
    # RocksDB restores only the tail after its persisted offset: the newest
    # generation already in the store comes from the fence file.
    fence = GenerationFence({0: 9})
    assert admitted(fence, [rec(0, 50, 4), rec(0, 51, 9), rec(0, 52, 10)]) == [51, 52]


def test_live_writes_raise_the_fence_once_per_generation() -> None:
    fence = GenerationFence()
    assert fence.wrote(0, 4, offset=7) is True
    assert fence.wrote(0, 4, offset=8) is False
    assert fence.wrote(0, 5, offset=9) is True
    assert fence.newest == {0: 5}
    # A late record past the live writes (a persistent store's tail).
    assert admitted(fence, [rec(0, 10, 4)]) == []


def test_reading_from_before_the_live_writes_starts_over() -> None:
    # A memory store re-reads its changelog: older generations come first and
    # belong to the history, the live writes (generation 5) come after them.
    fence = GenerationFence()
    fence.wrote(0, 5, offset=40)
    records = [rec(0, 0, 2), rec(0, 39, 3), rec(0, 40, 5), rec(0, 41, 3)]
    assert admitted(fence, records) == [0, 39, 40]


def test_fence_file_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "fences" / "production.orders.json"
    file = FenceFile(path)
    assert file.load() == {}
    file.save({0: 3, 2: 11})
    assert FenceFile(path).load() == {0: 3, 2: 11}
    path.write_text("{broken")
    assert file.load() == {}


def test_stamps_are_the_group_generation_in_normal_operation() -> None:
    fence = GenerationFence()
    admitted(fence, [rec(0, 0, 3), rec(0, 1, 4)])
    fence.recovered()
    assert fence.stamp(0, 5) == 5
    assert fence.stamp(1, 5) == 5


def test_stamps_stay_above_history_after_the_group_count_restarts() -> None:
    # The consumer group was deleted: generations start again at 1, but the
    # changelog holds generation 40. New writes must not be fenced out.
    fence = GenerationFence()
    admitted(fence, [rec(0, 0, 39), rec(0, 1, 40)])
    fence.recovered()
    assert fence.stamp(0, 1) == 41
    fence.wrote(0, fence.stamp(0, 1), offset=2)
    later = GenerationFence()
    assert admitted(later, [rec(0, 0, 39), rec(0, 1, 40), rec(0, 2, 41)]) == [0, 1, 2]
