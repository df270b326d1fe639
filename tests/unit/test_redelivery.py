"""Which orders records owe their outputs (streams/redelivery.py)."""

from __future__ import annotations

from typing import Any

from hookline.schemas import codec
from hookline.streams.order_state import apply_event, new_order
from hookline.streams.redelivery import incarnation, renew, stamped, unpublished

from tests.unit.flow import ENV, order_status
from tests.unit.helpers import T0

RAW = "production.webhooks.raw"


def written(outbox: list[bytes], by: str, offset: int = 41) -> dict[str, Any]:
    record = new_order("ord_1", "production")
    record.update(outbox=outbox, written_by=by, input_topic=RAW, input_offset=offset)
    return record


def test_a_dead_writers_record_owes_its_whole_outbox_until_committed_past() -> None:
    owed = [b"change v3", b"change v4"]
    record = written(owed, "dead-worker", offset=41)
    assert unpublished(record, committed=None) == owed  # nothing committed yet
    assert unpublished(record, committed=30) == owed  # committed before it
    assert unpublished(record, committed=41) == owed  # 41 is the next to read: not done


def test_a_commit_past_the_input_proves_the_outbox_was_sent() -> None:
    # A batch's inputs are acknowledged after its outputs: the previous owner
    # stopped cleanly, or handed the partition over in a rebalance.
    assert unpublished(written([b"change v3"], "previous-owner", offset=41), committed=42) == []


def test_a_record_this_process_wrote_owes_nothing() -> None:
    assert unpublished(written([b"change v3"], incarnation()), committed=None) == []


def test_an_empty_outbox_owes_nothing_whoever_wrote_it() -> None:
    assert unpublished(written([], "dead-worker"), committed=None) == []


def test_a_record_from_before_outboxes_owes_nothing() -> None:
    # Written by the outputs-first worker: its outputs were sent before it.
    record = new_order("ord_1", "production")
    for name in ("outbox", "written_by", "input_topic", "input_offset"):
        del record[name]
    assert unpublished(record, committed=None) == []


def test_stamping_makes_the_record_this_processs_and_names_its_input() -> None:
    record = stamped(written([b"change v3"], "dead-worker"), RAW, 77)
    assert (record["written_by"], record["input_topic"], record["input_offset"]) == (
        incarnation(),
        RAW,
        77,
    )
    assert unpublished(record, committed=None) == []


def test_after_a_renewal_this_processs_earlier_records_owe_their_outbox() -> None:
    record = stamped(written([b"change v3"], "dead-worker"), RAW, 77)
    renew()
    assert unpublished(record, committed=None) == [b"change v3"]
    assert unpublished(record, committed=78) == []
    assert unpublished(stamped(record, RAW, 78), committed=None) == []


def test_an_outbox_round_trips_through_the_table_schema() -> None:
    (active,) = order_status("ord_1", "ACTIVE", T0)
    result = apply_event(None, active, ENV, 86_400_000)
    assert result.change is not None
    change = codec.encode(codec.ORDER_CHANGE, result.change)
    record = stamped({**result.record, "outbox": [change]}, RAW, 5)
    decoded = codec.decode_as(codec.ORDER_RECORD, codec.encode(codec.ORDER_RECORD, record))
    assert decoded["outbox"] == [change]
    assert (decoded["written_by"], decoded["input_topic"], decoded["input_offset"]) == (
        incarnation(),
        RAW,
        5,
    )
    assert codec.decode_as(codec.ORDER_CHANGE, decoded["outbox"][0])["version"] == 1
