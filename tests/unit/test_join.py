"""streams/join.py: the transaction side of the join."""

from __future__ import annotations

from typing import Any

from hookline.core.events import CanonicalEvent
from hookline.schemas import codec
from hookline.streams.join import MAX_MEMBERS, TransactionResult, apply_to_transaction

from tests.unit.flow import DAY, YEAR_ISH, checkout, order_status, payment
from tests.unit.helpers import T0


def apply(record: dict[str, Any] | None, event: CanonicalEvent) -> TransactionResult:
    result = apply_to_transaction(record, event, YEAR_ISH)
    written = result.record
    assert (
        codec.decode_as(codec.TRANSACTION_RECORD, codec.encode(codec.TRANSACTION_RECORD, written))
        == written
    )
    for update in result.updates:
        assert (
            codec.decode_as(
                codec.TRANSACTION_UPDATE, codec.encode(codec.TRANSACTION_UPDATE, update)
            )
            == update
        )
    return result


def run(events: list[CanonicalEvent]) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
    record, updates = None, []
    for event in events:
        result = apply(record, event)
        record = result.record if result.changed else record
        updates += result.updates
    return record, updates


def test_checkout_fans_out_its_status_to_every_order() -> None:
    (event, *_priced) = checkout(
        "tr_1", "PENDING", T0, {f"o{i}": None for i in range(4)}, delivery_id="co"
    )
    result = apply(None, event)
    assert [u["order_id"] for u in result.updates] == ["o0", "o1", "o2", "o3"]
    for update in result.updates:
        assert update["payment_status"] == "PENDING"
        assert (update["status_received_at"], update["status_event_id"]) == (T0, "co:0")
        assert (update["claimed_received_at"], update["claimed_event_id"]) == (T0, "co:0")
        assert update["cause"]["delivery_id"] == "co"
        assert update["cause"]["provider_event_type"] == "CHECKOUT_STATUS_CHANGED"


def test_a_status_change_reaches_every_member() -> None:
    _, updates = run(
        [
            checkout("tr_1", "PENDING", T0, {"a": None, "b": None})[0],
            payment("tr_1", "SUCCEEDED", T0 + 5, "pay")[0],
        ]
    )
    paid = [u for u in updates if u["payment_status"] == "SUCCEEDED"]
    assert [u["order_id"] for u in paid] == ["a", "b"]
    assert {u["cause"]["delivery_id"] for u in paid} == {"pay"}


def test_an_order_joining_later_gets_the_status_and_the_payment_delivery_as_cause() -> None:
    """PRODUCT v2 section 3: the change names the transaction's delivery, not the order's."""
    record, _ = run([payment("tr_1", "SUCCEEDED", T0, "pay")[0]])
    joined = apply(record, order_status("o9", "PENDING", T0 + 50, "tr_1", delivery_id="late")[0])
    (update,) = joined.updates
    assert update["order_id"] == "o9"
    assert update["payment_status"] == "SUCCEEDED"
    assert update["cause"]["delivery_id"] == "pay"
    assert (update["claimed_received_at"], update["claimed_event_id"]) == (T0 + 50, "late:0")


def test_membership_before_any_status_sends_nothing() -> None:
    record, updates = run([order_status("o1", "CREATED", T0, "tr_1")[0]])
    assert updates == []
    assert record is not None
    assert [m["order_id"] for m in record["members"]] == ["o1"]


def test_known_member_again_sends_nothing_but_an_earlier_claim_moves_the_stamp() -> None:
    record, _ = run([checkout("tr_1", "PENDING", T0 + 10, {"o1": None})[0]])
    again = apply(record, order_status("o1", "PENDING", T0 + 20, "tr_1")[0])
    assert again.updates == []
    earlier = apply(record, order_status("o1", "PENDING", T0 + 1, "tr_1", delivery_id="early")[0])
    (update,) = earlier.updates
    assert (update["claimed_received_at"], update["claimed_event_id"]) == (T0 + 1, "early:0")


def test_lower_status_is_rejected() -> None:
    record, _ = run([payment("tr_1", "FAILED", T0)[0]])
    result = apply(record, payment("tr_1", "PENDING", T0 + 1)[0])
    assert result.rejected == ("FAILED", "PENDING")
    assert result.updates == []


def test_expired_record_starts_again_and_its_status_still_counts() -> None:
    first = apply_to_transaction(None, checkout("tr_1", "SUCCEEDED", T0, {"o1": None})[0], 30 * DAY)
    later = apply_to_transaction(
        first.record, checkout("tr_1", "SUCCEEDED", T0 + 31 * DAY, {"o1": None})[0], 30 * DAY
    )
    (update,) = later.updates
    assert later.record["version"] == 1
    # Orders order statuses by stamp, never by this counter.
    assert update["status_received_at"] == T0 + 31 * DAY


def test_a_release_1_record_reads_its_order_ids_as_members() -> None:
    v1 = {
        "transaction_id": "tr_1",
        "payment_status": "PENDING",
        "status_received_at": T0,
        "status_event_id": "x:0",
        "version": 1,
        "order_ids": ["o1", "o2"],
        "members": [],
        "status_cause": None,
        "expires_at": T0 + YEAR_ISH,
    }
    result = apply(v1, payment("tr_1", "SUCCEEDED", T0 + 1)[0])
    assert [u["order_id"] for u in result.updates] == ["o1", "o2"]
    assert result.record["order_ids"] == []


def test_members_are_bounded() -> None:
    record, _ = run(
        [checkout("tr_1", "PENDING", T0, {f"o{i}": None for i in range(MAX_MEMBERS)})[0]]
    )
    result = apply(record, order_status("one-too-many", None, T0 + 1, "tr_1")[0])
    assert len(result.record["members"]) == MAX_MEMBERS
    assert result.updates == []
    # Not silent: the stage dead-letters the order it could not join.
    assert result.unjoined == ["one-too-many"]
    known = apply(record, order_status("o7", None, T0 + 1, "tr_1")[0])
    assert known.unjoined == []


def test_input_record_is_not_mutated() -> None:
    record, _ = run([checkout("tr_1", "PENDING", T0, {"o1": None})[0]])
    frozen = repr(record)
    apply(record, payment("tr_1", "SUCCEEDED", T0 + 1)[0])
    apply(record, order_status("o2", None, T0 + 2, "tr_1")[0])
    assert repr(record) == frozen
