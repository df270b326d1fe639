"""streams/positions.py: an input record is delivered only in offset order, none skipped."""

from __future__ import annotations

from hookline.streams.positions import RESEEK_AFTER_S, Positions, Verdict

TP = ("production.hookline.transaction-facts", 0)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_records_are_delivered_in_order_from_where_faust_sought() -> None:
    positions: Positions[tuple[str, int]] = Positions()
    positions.expect({TP: 149})
    for offset in range(149, 152):
        assert positions.check(TP, offset) is Verdict.DELIVER
        positions.delivered(TP, offset)
    assert positions.expected(TP) == 152


def test_a_jump_is_a_hole_in_the_log_unless_records_were_dropped() -> None:
    """Transaction markers, aborted and compacted records leave holes: delivered across."""
    positions: Positions[tuple[str, int]] = Positions()
    positions.expect({TP: 149})
    assert positions.check(TP, 151) is Verdict.GAP  # 149 a commit marker, 150 aborted
    positions.delivered(TP, 151)
    assert positions.check(TP, 152) is Verdict.DELIVER
    assert positions.overtaken({TP: 160}, positions.snapshot()) == {}


def test_a_jump_past_dropped_records_is_read_again_from_the_earliest() -> None:
    """Records delivered, then dropped unprocessed: a jump past them is never delivered."""
    clock = Clock()
    positions: Positions[tuple[str, int]] = Positions(clock)
    positions.expect({TP: 140})
    for offset in range(140, 160):
        positions.delivered(TP, offset)
    positions.rewind([(TP, 149)])
    assert positions.check(TP, 229) is Verdict.SKIPPED
    # Records fetched before the seek back took effect are dropped, not delivered.
    assert positions.check(TP, 230) is Verdict.RESUMING
    # The seek took effect: 149 comes back and delivery resumes in order.
    assert positions.check(TP, 149) is Verdict.DELIVER
    positions.delivered(TP, 149)
    assert positions.check(TP, 150) is Verdict.DELIVER
    # Past the dropped records, holes are holes again.
    positions.delivered(TP, 150)
    assert positions.check(TP, 153) is Verdict.GAP


def _strict_at(positions: Positions[tuple[str, int]], offset: int) -> None:
    positions.expect({TP: offset})
    positions.delivered(TP, offset)
    positions.rewind([(TP, offset)])


def test_a_partition_sought_back_by_someone_else_is_read_again_from_there() -> None:
    """Dropping records below the expected offset would stall the partition for good."""
    positions: Positions[tuple[str, int]] = Positions()
    positions.expect({TP: 50})
    assert positions.check(TP, 40) is Verdict.DELIVER
    positions.delivered(TP, 40)
    assert positions.expected(TP) == 41
    assert positions.check(TP, 41) is Verdict.DELIVER


def test_an_unknown_partition_delivers_until_faust_seeks_it() -> None:
    positions: Positions[tuple[str, int]] = Positions()
    assert positions.check(TP, 7) is Verdict.DELIVER  # assigned, not sought yet
    positions.delivered(TP, 7)
    positions.forget([TP])  # revoked
    assert positions.expected(TP) is None
    assert positions.check(TP, 300) is Verdict.DELIVER
    positions.delivered(TP, 300)
    positions.expect({TP: 8})  # Faust seeks to the committed offset
    assert positions.check(TP, 8) is Verdict.DELIVER


def test_records_dropped_last_are_found_from_the_fetch_position() -> None:
    """Nothing after them shows the jump: the client's fetch position does."""
    clock = Clock()
    positions: Positions[tuple[str, int]] = Positions(clock)
    other = ("production.webhooks.raw", 1)
    positions.expect({TP: 154, other: 10})
    positions.delivered(TP, 154)
    positions.rewind([(TP, 154)])
    positions.delivered(other, 10)
    due = positions.snapshot()
    # The client fetched TP up to 308 but nothing from 154 on was delivered again;
    # ``other`` is where it should be (and not strict: a hole would be a hole).
    assert positions.overtaken({TP: 308, other: 11}, due) == {TP: 154}
    # Being read again already: left to that seek, unless it did not take effect.
    assert positions.overtaken({TP: 308}, positions.snapshot()) == {}
    clock.now += RESEEK_AFTER_S
    assert positions.overtaken({TP: 308}, positions.snapshot()) == {TP: 154}
    # Delivered meanwhile (the snapshot is stale): not overtaken.
    positions.rewind([(TP, 154)])
    due = positions.snapshot()
    positions.delivered(TP, 154)
    assert positions.overtaken({TP: 308}, due) == {}


def test_a_newly_assigned_partition_delivers_nothing_until_faust_seeks_it() -> None:
    """The fetcher reads on past unprocessed records while the tables recover: not delivered.

    Delivered, they were processed before the older records the seek brings
    back (an order's PENDING after its ACTIVE), and their acks let a commit
    pass the older ones.
    """
    positions: Positions[tuple[str, int]] = Positions()
    positions.expect({TP: 150})
    positions.delivered(TP, 150)
    positions.hold([TP])  # a rebalance assigned it (again)
    for offset in (151, 163, 170):
        assert positions.check(TP, offset) is Verdict.RESUMING
    assert positions.expected(TP) is None
    assert positions.snapshot() == {}  # nothing to compare the fetch position with yet
    assert positions.held() == {TP}
    positions.expect({TP: 151})  # Faust sought it to its committed offset
    assert positions.held() == set()
    assert positions.check(TP, 151) is Verdict.DELIVER


def test_a_revoked_partition_is_no_longer_held() -> None:
    positions: Positions[tuple[str, int]] = Positions()
    positions.hold([TP])
    positions.forget([TP])
    assert positions.held() == set()
    assert positions.check(TP, 7) is Verdict.DELIVER  # unknown again, as before any assignment


def test_records_dropped_after_delivery_are_expected_again_from_the_earliest() -> None:
    """Faust's flow control clears queued records it had already been handed."""
    positions: Positions[tuple[str, int]] = Positions()
    other = ("production.webhooks.raw", 1)
    held = ("production.webhooks.raw", 2)
    positions.expect({TP: 154, other: 10})
    for offset in range(154, 160):
        positions.delivered(TP, offset)
    positions.delivered(other, 10)
    positions.hold([held])
    dropped = [(TP, 157), (TP, 155), (TP, 159), (other, 11), (held, 3)]
    # ``other`` 11 was never delivered (expected is 11): nothing to read again.
    assert positions.rewind(dropped) == {TP: 155}
    assert positions.expected(TP) == 155
    assert positions.expected(other) == 11
    assert positions.held() == {held}  # its seek is still to come
    # The fetcher is past them: the next record shows the jump and is read again from 155.
    assert positions.check(TP, 160) is Verdict.SKIPPED
    assert positions.check(TP, 155) is Verdict.DELIVER


def test_dropped_records_found_last_by_the_fetch_position() -> None:
    clock = Clock()
    positions: Positions[tuple[str, int]] = Positions(clock)
    positions.expect({TP: 0})
    for offset in range(0, 40):
        positions.delivered(TP, offset)
    positions.rewind([(TP, 30)])
    assert positions.overtaken({TP: 40}, positions.snapshot()) == {TP: 30}
