"""streams/order_state.py: apply_event and apply_update (stage 4)."""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from schemas import codec
from streams.events import ORDER_REFUNDED, CanonicalEvent, cause_of
from streams.join import apply_to_transaction
from streams.order_state import OrderResult, apply_event, apply_update
from tests.unit.helpers import RETENTION, T0, order_event, tx_event

ENV = "production"
STATE_FIELDS = (
    "order_id",
    "environment",
    "transaction_id",
    "order_status",
    "payment_status",
    "confirmation_pdf_url",
    "vignette_id",
)


def cause(at: int, event_id: str = "c") -> dict[str, Any]:
    return {
        "event_id": f"{event_id}:0",
        "delivery_id": event_id,
        "source": "payments",
        "kind": "payments",
        "type": "transaction.status_changed",
        "received_at": at,
    }


def update(
    order_id: str, transaction_id: str, status: str, version: int, at: int
) -> dict[str, Any]:
    return {
        "order_id": order_id,
        "transaction_id": transaction_id,
        "payment_status": status,
        "transaction_version": version,
        "cause": cause(at, f"u-{transaction_id}-{version}"),
    }


def check(result: OrderResult) -> OrderResult:
    """Everything stage 4 writes must fit its schemas."""
    record = result.record
    assert codec.decode_as(codec.ORDER_RECORD, codec.encode(codec.ORDER_RECORD, record)) == record
    if result.change is not None:
        change = result.change
        assert (
            codec.decode_as(codec.ORDER_CHANGE, codec.encode(codec.ORDER_CHANGE, change)) == change
        )
        assert change["after"] == record["state"]
        assert change["version"] == record["state"]["version"]
    return result


def on_event(record: dict[str, Any] | None, event: CanonicalEvent) -> OrderResult:
    return check(apply_event(record, event, ENV, RETENTION))


def on_update(record: dict[str, Any] | None, item: dict[str, Any]) -> OrderResult:
    return check(apply_update(record, item, ENV, RETENTION))


def apply_any(record: dict[str, Any] | None, item: dict[str, Any]) -> OrderResult:
    return on_update(record, item) if "transaction_version" in item else on_event(record, item)


# -- apply_event ------------------------------------------------------------------------


def test_first_event_creates_version_1() -> None:
    event = order_event("ord_1", T0, status="CREATED", transaction_id="tr_1")
    result = on_event(None, event)
    state = result.record["state"]
    assert state == {
        "order_id": "ord_1",
        "environment": ENV,
        "transaction_id": "tr_1",
        "order_status": "CREATED",
        "payment_status": None,
        "confirmation_pdf_url": None,
        "vignette_id": None,
        "version": 1,
        "updated_at": T0,
    }
    assert result.changed
    assert result.change == {
        "order_id": "ord_1",
        "environment": ENV,
        "version": 1,
        "before": None,
        "after": state,
        "changed_fields": ["transaction_id", "order_status"],
        "cause": cause_of(event),
    }
    assert result.rejected == []
    assert result.conflict is None


def test_second_change_records_before_and_after() -> None:
    first = on_event(None, order_event("ord_1", T0, status="CREATED", transaction_id="tr_1"))
    event = order_event("ord_1", T0 + 100, status="ACTIVE", vignette="kp_1")
    second = on_event(first.record, event)
    assert second.change is not None
    assert second.change["version"] == 2
    assert second.change["before"] == first.record["state"]
    assert second.change["after"] == dict(
        first.record["state"],
        order_status="ACTIVE",
        vignette_id="kp_1",
        version=2,
        updated_at=T0 + 100,
    )
    assert second.change["changed_fields"] == ["order_status", "vignette_id"]
    assert second.change["cause"] == cause_of(event)


def test_refund_after_active() -> None:
    active = on_event(None, order_event("ord_1", T0, status="ACTIVE"))
    refund = order_event("ord_1", T0 + 1, status="REFUNDED", type=ORDER_REFUNDED)
    result = on_event(active.record, refund)
    assert result.record["state"]["order_status"] == "REFUNDED"
    assert result.change is not None
    assert result.change["cause"]["type"] == ORDER_REFUNDED


@pytest.mark.parametrize(
    "event",
    [
        order_event("ord_1", T0, status="ACTIVE", transaction_id="tr_1"),
        order_event("ord_1", T0, pdf="https://x/1.pdf"),
        order_event("ord_1", T0, vignette="kp_1"),
    ],
)
def test_same_event_twice_changes_nothing(event: CanonicalEvent) -> None:
    first = on_event(None, event)
    again = on_event(first.record, event)
    assert again.change is None
    assert not again.changed
    assert again.record == first.record
    assert again.record["state"]["version"] == 1


def test_lower_order_status_is_rejected() -> None:
    active = on_event(None, order_event("ord_1", T0, status="ACTIVE"))
    late = on_event(active.record, order_event("ord_1", T0 + 5, status="PENDING"))
    assert late.rejected == [("order_status", "ACTIVE", "PENDING")]
    assert late.change is None
    assert late.record["state"]["order_status"] == "ACTIVE"
    assert late.record["state"]["version"] == 1


def test_equal_order_status_is_neither_change_nor_rejection() -> None:
    active = on_event(None, order_event("ord_1", T0, status="ACTIVE"))
    repeat = on_event(active.record, order_event("ord_1", T0 + 5, status="ACTIVE"))
    assert repeat.rejected == []
    assert repeat.change is None


def test_conflicting_transaction_link_is_reported_not_applied() -> None:
    linked = on_event(None, order_event("ord_1", T0, transaction_id="tr_A"))
    other = on_event(
        linked.record, order_event("ord_1", T0 + 1, status="ACTIVE", transaction_id="tr_B")
    )
    assert other.conflict is not None
    assert "tr_A" in other.conflict
    assert "tr_B" in other.conflict
    assert other.record["state"]["transaction_id"] == "tr_A"
    # The rest of the event still applies.
    assert other.record["state"]["order_status"] == "ACTIVE"


def test_last_writer_wins_for_pdf_and_vignette() -> None:
    newer = order_event("ord_1", T0 + 200, pdf="https://x/new.pdf", vignette="kp_new")
    older = order_event("ord_1", T0 + 100, pdf="https://x/old.pdf", vignette="kp_old")
    forward = on_event(on_event(None, older).record, newer)
    backward = on_event(on_event(None, newer).record, older)
    for result in (forward, backward):
        state = result.record["state"]
        assert (state["confirmation_pdf_url"], state["vignette_id"]) == (
            "https://x/new.pdf",
            "kp_new",
        )
    assert backward.change is None
    assert forward.change is not None
    assert forward.change["changed_fields"] == ["confirmation_pdf_url", "vignette_id"]


def test_updated_at_never_decreases() -> None:
    first = on_event(None, order_event("ord_1", T0 + 100, status="CREATED"))
    assert first.record["state"]["updated_at"] == T0 + 100
    late = on_event(first.record, order_event("ord_1", T0 + 50, pdf="https://x/1.pdf"))
    assert late.change is not None
    assert late.record["state"]["version"] == 2
    assert late.record["state"]["updated_at"] == T0 + 100
    later = on_event(late.record, order_event("ord_1", T0 + 300, status="ACTIVE"))
    assert later.record["state"]["updated_at"] == T0 + 300
    older_update = on_update(later.record, update("ord_1", "tr_1", "PENDING", 1, T0 + 10))
    assert older_update.record["state"]["updated_at"] == T0 + 300
    assert older_update.record["state"]["version"] == 4


def test_expired_record_is_treated_as_absent() -> None:
    first = on_event(None, order_event("ord_1", T0, status="ACTIVE", transaction_id="tr_1"))
    expires_at = first.record["expires_at"]
    assert expires_at == T0 + RETENTION
    reborn = on_event(first.record, order_event("ord_1", expires_at, status="PENDING"))
    assert reborn.rejected == []
    assert reborn.record["state"]["order_status"] == "PENDING"
    assert reborn.record["state"]["transaction_id"] is None
    assert reborn.record["state"]["version"] == 1
    assert reborn.change is not None
    assert reborn.change["before"] is None

    alive = on_event(first.record, order_event("ord_1", expires_at - 1, status="PENDING"))
    assert alive.rejected == [("order_status", "ACTIVE", "PENDING")]

    by_update = on_update(first.record, update("ord_1", "tr_2", "FAILED", 1, expires_at))
    assert by_update.conflict is None
    assert by_update.record["state"]["transaction_id"] == "tr_2"


def test_expiry_moves_forward_only() -> None:
    first = on_event(None, order_event("ord_1", T0 + 1000, status="CREATED"))
    older = on_event(first.record, order_event("ord_1", T0, status="ACTIVE"))
    assert older.record["expires_at"] == T0 + 1000 + RETENTION


def test_input_record_is_not_mutated() -> None:
    first = on_event(None, order_event("ord_1", T0, status="CREATED"))
    snapshot = {**first.record, "state": dict(first.record["state"])}
    on_event(first.record, order_event("ord_1", T0 + 1, status="ACTIVE", pdf="https://x"))
    on_update(first.record, update("ord_1", "tr_1", "SUCCEEDED", 3, T0 + 2))
    assert first.record == snapshot


# -- apply_update -----------------------------------------------------------------------


def test_update_sets_payment_status_and_link() -> None:
    item = update("ord_1", "tr_1", "PENDING", 1, T0)
    result = on_update(None, item)
    assert result.record["state"]["payment_status"] == "PENDING"
    assert result.record["state"]["transaction_id"] == "tr_1"
    assert result.record["transaction_version"] == 1
    assert result.change is not None
    assert result.change["version"] == 1
    assert result.change["changed_fields"] == ["transaction_id", "payment_status"]
    assert result.change["cause"] == item["cause"]


def test_same_update_twice_changes_nothing() -> None:
    item = update("ord_1", "tr_1", "SUCCEEDED", 2, T0)
    first = on_update(None, item)
    again = on_update(first.record, item)
    assert again.change is None
    assert not again.changed
    assert again.record == first.record


def test_older_update_after_newer_changes_nothing() -> None:
    newer = on_update(None, update("ord_1", "tr_1", "SUCCEEDED", 2, T0 + 10))
    older = on_update(newer.record, update("ord_1", "tr_1", "PENDING", 1, T0 + 20))
    assert older.change is None
    assert older.record["state"]["payment_status"] == "SUCCEEDED"
    assert older.record["transaction_version"] == 2


def test_update_with_same_status_but_higher_version_is_not_a_change() -> None:
    first = on_update(None, update("ord_1", "tr_1", "FAILED", 1, T0))
    second = on_update(first.record, update("ord_1", "tr_1", "FAILED", 2, T0 + 1))
    assert second.change is None
    assert second.record["transaction_version"] == 2
    assert second.record["state"]["version"] == 1


def test_update_from_another_transaction_is_a_conflict() -> None:
    linked = on_event(None, order_event("ord_1", T0, transaction_id="tr_A"))
    result = on_update(linked.record, update("ord_1", "tr_B", "SUCCEEDED", 5, T0 + 1))
    assert result.conflict is not None
    assert "tr_A" in result.conflict
    assert "tr_B" in result.conflict
    assert result.change is None
    assert result.record["state"]["payment_status"] is None
    assert result.record["transaction_version"] == 0


def test_version_counts_changes_exactly() -> None:
    items: list[dict[str, Any]] = [
        order_event("ord_1", T0, status="CREATED", transaction_id="tr_1"),
        update("ord_1", "tr_1", "PENDING", 1, T0 + 1),
        order_event("ord_1", T0 + 2, status="CREATED"),  # same: no change
        order_event("ord_1", T0 + 3, status="PENDING"),
        update("ord_1", "tr_1", "PENDING", 1, T0 + 1),  # repeat: no change
        update("ord_1", "tr_1", "SUCCEEDED", 2, T0 + 4),
        order_event("ord_1", T0 + 5, status="CREATED"),  # rejected
        order_event("ord_1", T0 + 6, pdf="https://x/1.pdf"),
    ]
    record = None
    versions = []
    for item in items:
        result = apply_any(record, item)
        record = result.record
        if result.change is not None:
            versions.append(result.change["version"])
    assert versions == [1, 2, 3, 4, 5]
    assert record is not None
    assert record["state"]["version"] == 5


# -- convergence -----------------------------------------------------------------------------


def final_state(items: tuple[dict[str, Any], ...]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    record = None
    changes = []
    for item in items:
        result = apply_any(record, item)
        record = result.record
        if result.change is not None:
            changes.append(result.change)
    assert record is not None
    return record["state"], changes


ORDER_INPUTS = [
    order_event("ord_1", T0 + 1, status="CREATED", transaction_id="tr_1"),
    order_event("ord_1", T0 + 40, status="ACTIVE", transaction_id="tr_1", vignette="kp_1"),
    order_event("ord_1", T0 + 30, pdf="https://x/first.pdf"),
    order_event("ord_1", T0 + 60, pdf="https://x/second.pdf"),
    update("ord_1", "tr_1", "PENDING", 1, T0 + 20),
    update("ord_1", "tr_1", "SUCCEEDED", 2, T0 + 50),
    order_event("ord_1", T0 + 10, status="PENDING", vignette="kp_0"),
]


def test_every_arrival_order_converges() -> None:
    expected = {
        "order_id": "ord_1",
        "environment": ENV,
        "transaction_id": "tr_1",
        "order_status": "ACTIVE",
        "payment_status": "SUCCEEDED",
        "confirmation_pdf_url": "https://x/second.pdf",
        "vignette_id": "kp_1",
    }
    latest = max(
        i["received_at"] if "received_at" in i else i["cause"]["received_at"] for i in ORDER_INPUTS
    )
    count = 0
    for permutation in itertools.permutations(ORDER_INPUTS):
        state, changes = final_state(permutation)
        assert {k: state[k] for k in STATE_FIELDS} == expected, permutation
        # One change per version, without gaps; updated_at never goes back.
        assert [c["version"] for c in changes] == list(range(1, len(changes) + 1))
        assert state["version"] == len(changes)
        stamps = [c["after"]["updated_at"] for c in changes]
        assert stamps == sorted(stamps)
        assert state["updated_at"] == max(c["cause"]["received_at"] for c in changes) <= latest
        for change in changes:
            before = change["before"] or dict.fromkeys(STATE_FIELDS)
            assert change["changed_fields"] == [
                k for k in STATE_FIELDS[2:] if before[k] != change["after"][k]
            ]
        count += 1
    assert count == 5040


def test_replaying_every_input_again_changes_nothing() -> None:
    state, _changes = final_state(tuple(ORDER_INPUTS))
    record = None
    for item in ORDER_INPUTS:
        record = apply_any(record, item).record
    for item in ORDER_INPUTS:
        result = apply_any(record, item)
        assert result.change is None
        assert not result.changed
        record = result.record
    assert record is not None
    assert record["state"] == state


def test_join_and_order_state_together_converge() -> None:
    """Route like the pipeline: order facts to both sides, transaction facts to the join."""
    inputs = [
        tx_event("tr_1", "PENDING", T0, ("ord_1", "ord_2", "ord_3", "ord_4")),
        tx_event("tr_1", "SUCCEEDED", T0 + 30),
        order_event("ord_1", T0 + 10, status="ACTIVE", transaction_id="tr_1"),
        order_event("ord_5", T0 + 20, status="PENDING", transaction_id="tr_1"),
        order_event("ord_2", T0 + 40, pdf="https://x/2.pdf"),
    ]

    def run(events: tuple[CanonicalEvent, ...]) -> dict[str, tuple[Any, ...]]:
        transaction = None
        orders: dict[str, dict[str, Any]] = {}
        for event in events:
            if event["order_id"]:
                orders[event["order_id"]] = on_event(orders.get(event["order_id"]), event).record
            if event["transaction_id"]:
                joined = apply_to_transaction(transaction, event, RETENTION)
                transaction = joined.record
                for item in joined.updates:
                    oid = item["order_id"]
                    orders[oid] = on_update(orders.get(oid), item).record
        return {
            oid: tuple(record["state"][k] for k in STATE_FIELDS) for oid, record in orders.items()
        }

    results = [run(p) for p in itertools.permutations(inputs)]
    assert all(r == results[0] for r in results)
    final = results[0]
    assert set(final) == {"ord_1", "ord_2", "ord_3", "ord_4", "ord_5"}
    assert {oid: state[4] for oid, state in final.items()} == dict.fromkeys(final, "SUCCEEDED")
    assert {oid: state[2] for oid, state in final.items()} == dict.fromkeys(final, "tr_1")
    assert final["ord_1"][3] == "ACTIVE"
    assert final["ord_5"][3] == "PENDING"
    assert final["ord_2"][5] == "https://x/2.pdf"
