"""streams/join.py: the transaction side of the join (apply_to_transaction)."""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from schemas import codec
from streams.events import CanonicalEvent, cause_of
from streams.join import TransactionResult, apply_to_transaction
from tests.unit.helpers import RETENTION, T0, order_event, tx_event

ORDERS4 = ("ord_1", "ord_2", "ord_3", "ord_4")


def apply(record: dict[str, Any] | None, event: CanonicalEvent) -> TransactionResult:
    result = apply_to_transaction(record, event, RETENTION)
    # Whatever it returns must fit table ``transactions`` and topic order-inputs.
    encoded = codec.encode(codec.TRANSACTION_RECORD, result.record)
    assert codec.decode_as(codec.TRANSACTION_RECORD, encoded) == result.record
    for update in result.updates:
        codec.encode(codec.TRANSACTION_UPDATE, update)
    return result


def run(events: list[CanonicalEvent]) -> dict[str, Any] | None:
    record = None
    for event in events:
        record = apply(record, event).record
    return record


def test_first_status() -> None:
    event = tx_event("tr_1", "PENDING", T0)
    result = apply(None, event)
    assert result.changed
    assert result.updates == []
    assert result.rejected is None
    assert result.record == {
        "transaction_id": "tr_1",
        "payment_status": "PENDING",
        "status_received_at": T0,
        "status_event_id": event["event_id"],
        "version": 1,
        "order_ids": [],
        "status_cause": cause_of(event),
        "expires_at": T0 + RETENTION,
    }


def test_checkout_with_four_orders_fans_out() -> None:
    checkout = tx_event("tr_1", "PENDING", T0, ORDERS4)
    result = apply(None, checkout)
    assert result.record["order_ids"] == list(ORDERS4)
    assert result.updates == [
        {
            "order_id": order_id,
            "transaction_id": "tr_1",
            "payment_status": "PENDING",
            "transaction_version": 1,
            "cause": cause_of(checkout),
        }
        for order_id in ORDERS4
    ]

    paid = tx_event("tr_1", "SUCCEEDED", T0 + 1000)  # a payment notification names no orders
    later = apply(result.record, paid)
    assert [u["order_id"] for u in later.updates] == list(ORDERS4)
    assert {u["payment_status"] for u in later.updates} == {"SUCCEEDED"}
    assert {u["transaction_version"] for u in later.updates} == {2}
    assert all(u["cause"] == cause_of(paid) for u in later.updates)
    assert later.record["version"] == 2


def test_version_grows_by_one_per_status_change_only() -> None:
    record = run(
        [
            tx_event("tr_1", "PENDING", T0),
            tx_event("tr_1", "PENDING", T0 + 1),  # same status: no change
            tx_event("tr_1", "FAILED", T0 + 2),
            tx_event("tr_1", "PENDING", T0 + 3),  # rejected
            tx_event("tr_1", "CANCELED", T0 + 4),
            tx_event("tr_1", "SUCCEEDED", T0 + 5),
            tx_event("tr_1", "EXPIRED", T0 + 6),  # rejected
        ]
    )
    assert record is not None
    assert record["payment_status"] == "SUCCEEDED"
    assert record["version"] == 4


def test_order_event_first_then_status() -> None:
    membership = order_event("ord_1", T0, status="ACTIVE", transaction_id="tr_1")
    first = apply(None, membership)
    assert first.record["order_ids"] == ["ord_1"]
    assert first.record["payment_status"] is None
    assert first.updates == []  # nothing to tell the order yet

    status = tx_event("tr_1", "SUCCEEDED", T0 + 10)
    second = apply(first.record, status)
    assert [
        (u["order_id"], u["payment_status"], u["transaction_version"]) for u in second.updates
    ] == [("ord_1", "SUCCEEDED", 1)]


def test_newly_joined_order_gets_current_status() -> None:
    record = run([tx_event("tr_1", "PENDING", T0, ("ord_1",)), tx_event("tr_1", "FAILED", T0 + 1)])
    late = order_event("ord_2", T0 + 2, transaction_id="tr_1")
    result = apply(record, late)
    assert result.record["order_ids"] == ["ord_1", "ord_2"]
    assert result.record["version"] == 2  # joining is not a status change
    assert result.updates == [
        {
            "order_id": "ord_2",
            "transaction_id": "tr_1",
            "payment_status": "FAILED",
            "transaction_version": 2,
            "cause": cause_of(late),
        }
    ]


def test_known_member_again_sends_nothing() -> None:
    record = run([tx_event("tr_1", "PENDING", T0, ("ord_1",))])
    result = apply(record, order_event("ord_1", T0 + 5, status="ACTIVE", transaction_id="tr_1"))
    assert result.updates == []
    assert result.record["order_ids"] == ["ord_1"]


def test_rejected_status_still_lets_new_orders_join() -> None:
    record = run([tx_event("tr_1", "SUCCEEDED", T0, ("ord_1",))])
    result = apply(record, tx_event("tr_1", "PENDING", T0 + 1, ("ord_1", "ord_2")))
    assert result.rejected == ("SUCCEEDED", "PENDING")
    assert result.record["payment_status"] == "SUCCEEDED"
    assert result.record["version"] == 1
    assert [(u["order_id"], u["payment_status"]) for u in result.updates] == [
        ("ord_2", "SUCCEEDED")
    ]


@pytest.mark.parametrize(
    "events",
    [
        [tx_event("tr_1", "PENDING", T0, ORDERS4)],
        [tx_event("tr_1", "PENDING", T0), tx_event("tr_1", "FAILED", T0 + 1, ("ord_1",))],
        [tx_event("tr_1", "SUCCEEDED", T0), order_event("ord_9", T0 + 1, transaction_id="tr_1")],
    ],
)
def test_same_event_twice_changes_nothing(events: list[CanonicalEvent]) -> None:
    record = run(events)
    again = apply(record, events[-1])
    assert not again.changed
    assert again.updates == []
    assert again.rejected is None
    assert again.record == record


def test_lower_status_is_reported_rejected() -> None:
    record = run([tx_event("tr_1", "CANCELED", T0)])
    result = apply(record, tx_event("tr_1", "PENDING", T0 + 1))
    assert result.rejected == ("CANCELED", "PENDING")
    assert result.updates == []
    assert result.record["payment_status"] == "CANCELED"
    assert result.record["version"] == 1


def test_expired_record_is_treated_as_absent() -> None:
    record = run([tx_event("tr_1", "SUCCEEDED", T0, ("ord_old",))])
    assert record is not None
    at_expiry = record["expires_at"]
    result = apply(record, tx_event("tr_1", "PENDING", at_expiry, ("ord_new",)))
    assert result.rejected is None
    assert result.record["payment_status"] == "PENDING"
    assert result.record["version"] == 1
    assert result.record["order_ids"] == ["ord_new"]

    still_alive = apply(record, tx_event("tr_1", "PENDING", at_expiry - 1))
    assert still_alive.rejected == ("SUCCEEDED", "PENDING")


def test_expiry_moves_forward_only() -> None:
    record = run([tx_event("tr_1", "PENDING", T0 + 1000)])
    assert record is not None
    assert record["expires_at"] == T0 + 1000 + RETENTION
    older = apply(record, tx_event("tr_1", "PENDING", T0))
    assert older.record["expires_at"] == T0 + 1000 + RETENTION
    newer = apply(record, tx_event("tr_1", "PENDING", T0 + 5000))
    assert newer.record["expires_at"] == T0 + 5000 + RETENTION


def test_input_record_is_not_mutated() -> None:
    record = run([tx_event("tr_1", "PENDING", T0, ("ord_1",))])
    assert record is not None
    snapshot = {**record, "order_ids": list(record["order_ids"])}
    apply(record, tx_event("tr_1", "SUCCEEDED", T0 + 1, ("ord_2",)))
    assert record == snapshot


# -- convergence: any arrival order gives the same transaction and order statuses ----------


def order_view(events: tuple[CanonicalEvent, ...]) -> tuple[Any, ...]:
    """Final transaction status and members, and what each order ends up believing."""
    record = None
    believed: dict[str, tuple[int, str | None]] = {}
    for event in events:
        result = apply(record, event)
        record = result.record
        for update in result.updates:
            # An order keeps the update with the highest transaction version.
            version = update["transaction_version"]
            if version > believed.get(update["order_id"], (0, None))[0]:
                believed[update["order_id"]] = (version, update["payment_status"])
    assert record is not None
    statuses = {order_id: status for order_id, (_, status) in believed.items()}
    for order_id in record["order_ids"]:
        assert statuses.get(order_id) == record["payment_status"], "an order missed the status"
    return record["payment_status"], frozenset(record["order_ids"]), tuple(sorted(statuses.items()))


CONVERGING_SETS = {
    "checkout-then-payment": [
        tx_event("tr_1", "PENDING", T0, ("ord_1", "ord_2")),
        tx_event("tr_1", "SUCCEEDED", T0 + 10),
        order_event("ord_3", T0 + 20, status="ACTIVE", transaction_id="tr_1"),
        tx_event("tr_1", "PENDING", T0 + 30, ("ord_1", "ord_4")),
    ],
    "failures-later-than-pending": [
        tx_event("tr_1", "PENDING", T0, ("ord_1",)),
        tx_event("tr_1", "FAILED", T0 + 10),
        tx_event("tr_1", "CANCELED", T0 + 20),
        order_event("ord_2", T0 + 5, transaction_id="tr_1"),
        tx_event("tr_1", "EXPIRED", T0 + 15),
    ],
    "success-wins": [
        tx_event("tr_1", "FAILED", T0 + 30, ("ord_1",)),
        tx_event("tr_1", "SUCCEEDED", T0 + 10),
        tx_event("tr_1", "PENDING", T0),
        order_event("ord_2", T0 + 40, transaction_id="tr_1"),
    ],
}


@pytest.mark.parametrize("name", list(CONVERGING_SETS))
def test_every_arrival_order_converges(name: str) -> None:
    events = CONVERGING_SETS[name]
    views = {order_view(permutation) for permutation in itertools.permutations(events)}
    assert len(views) == 1, views


def test_failures_later_than_pending_end_on_the_latest_failure() -> None:
    status, members, _ = order_view(tuple(CONVERGING_SETS["failures-later-than-pending"]))
    assert status == "CANCELED"
    assert members == {"ord_1", "ord_2"}


def test_latest_failure_wins_even_when_pending_is_stamped_later() -> None:
    # PRODUCT.md 4: PENDING never replaces FAILED/CANCELED/EXPIRED; among those three
    # the later arrival wins. CANCELED (T0+4) is the latest of the three here.
    events = [
        tx_event("tr_1", "PENDING", T0 + 5, ("ord_1",)),
        tx_event("tr_1", "FAILED", T0 + 3),
        tx_event("tr_1", "CANCELED", T0 + 4),
    ]
    finals = {order_view(permutation)[0] for permutation in itertools.permutations(events)}
    assert finals == {"CANCELED"}
