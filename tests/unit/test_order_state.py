"""streams/order_state.py with the join: the order state rules of PRODUCT.md v2 section 4."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from hookline.streams.order_state import STATE_FIELDS, apply_event, retire

from tests.unit.flow import (
    DAY,
    ENV,
    YEAR_ISH,
    Flow,
    checkout,
    order_status,
    payment,
    refund,
)
from tests.unit.helpers import T0


def money(text: str) -> Decimal:
    return Decimal(text).quantize(Decimal("0.0001"))


def fields(state: dict[str, Any]) -> dict[str, Any]:
    return {name: state[name] for name in STATE_FIELDS}


def assert_versions_exact(flow: Flow) -> None:
    """Versions 1..n per order, one change each, updated_at never going back."""
    for order_id, changes in flow.changes.items():
        assert [c["version"] for c in changes] == list(range(1, len(changes) + 1)), order_id
        assert flow.state(order_id)["version"] == len(changes)
        stamps = [c["after"]["updated_at"] for c in changes]
        assert stamps == sorted(stamps)
        for change in changes:
            before = change["before"] or dict.fromkeys(STATE_FIELDS)
            assert change["changed_fields"] == [
                name for name in STATE_FIELDS if before[name] != change["after"][name]
            ]


# -- the first state -------------------------------------------------------------------------


def test_first_event_creates_version_1() -> None:
    flow = Flow().run([order_status("o1", "CREATED", T0)])
    (change,) = flow.changes["o1"]
    assert change["version"] == 1
    assert change["before"] is None
    assert change["changed_fields"] == ["order_status"]
    assert change["after"] == {
        "order_id": "o1",
        "environment": ENV,
        "transaction_id": None,
        "order_status": "CREATED",
        "payment_status": None,
        "confirmation_pdf_url": None,
        "vignette_id": None,
        "version": 1,
        "updated_at": T0,
        "amount": None,
        "currency": None,
        "refunded_amount": None,
    }
    assert change["cause"]["provider_event_type"] == "ORDER_STATUS_CHANGED"


# -- several transactions per order -------------------------------------------------------------

RECHECKOUT = [
    checkout("tr_1", "PENDING", T0, {"o1": "15.70", "o2": "15.70"}),
    payment("tr_1", "FAILED", T0 + 10),
    checkout("tr_2", "PENDING", T0 + 20, {"o1": "15.70", "o2": "15.70"}),
    payment("tr_2", "SUCCEEDED", T0 + 30, delivery_id="pay-ok"),
    order_status("o1", "ACTIVE", T0 + 40, transaction_id="tr_2"),
]


def test_recheckout_after_failed_payment_ends_succeeded() -> None:
    flow = Flow().run(RECHECKOUT)
    for order_id in ("o1", "o2"):
        state = flow.state(order_id)
        assert state["payment_status"] == "SUCCEEDED"
        assert state["transaction_id"] == "tr_2"
        assert state["amount"] == money("15.70")
        assert state["currency"] == "EUR"
    # The story as o2 saw it: pending on tr_1, failed, pending on tr_2, paid.
    payments = [
        (c["after"]["transaction_id"], c["after"]["payment_status"])
        for c in flow.changes["o2"]
        if {"transaction_id", "payment_status"} & set(c["changed_fields"])
    ]
    assert payments == [
        ("tr_1", "PENDING"),
        ("tr_1", "FAILED"),
        ("tr_2", "PENDING"),
        ("tr_2", "SUCCEEDED"),
    ]
    assert flow.changes["o2"][-1]["cause"]["delivery_id"] == "pay-ok"
    assert not flow.conflicts
    assert_versions_exact(flow)


@pytest.mark.parametrize("seed", range(60))
def test_recheckout_converges_in_any_interleaving(seed: int) -> None:
    expected = {oid: fields(Flow().run(RECHECKOUT).state(oid)) for oid in ("o1", "o2")}
    flow = Flow().run_shuffled(RECHECKOUT, seed)
    assert {oid: fields(flow.state(oid)) for oid in ("o1", "o2")} == expected
    assert expected["o1"]["order_status"] == "ACTIVE"
    assert_versions_exact(flow)


def test_failed_transaction_never_overwrites_a_succeeded_one() -> None:
    flow = Flow().run(
        [
            checkout("tr_1", "SUCCEEDED", T0, {"o1": "9.00"}),
            checkout("tr_2", "PENDING", T0 + 10, {"o1": "9.00"}),
            payment("tr_2", "FAILED", T0 + 20),
        ]
    )
    state = flow.state("o1")
    assert (state["transaction_id"], state["payment_status"]) == ("tr_1", "SUCCEEDED")
    assert [c["changed_fields"] for c in flow.changes["o1"]] == [
        ["transaction_id", "payment_status"],
        ["amount", "currency"],
    ]


def test_without_success_the_latest_claim_decides() -> None:
    flow = Flow().run(
        [
            checkout("tr_1", "PENDING", T0, {"o1": None}),
            payment("tr_1", "FAILED", T0 + 5),
            checkout("tr_2", "PENDING", T0 + 10, {"o1": None}),
            payment("tr_2", "CANCELED", T0 + 15),
            payment("tr_1", "EXPIRED", T0 + 20),  # the older transaction moves, o1 follows tr_2
        ]
    )
    state = flow.state("o1")
    assert (state["transaction_id"], state["payment_status"]) == ("tr_2", "CANCELED")


def test_double_payment_keeps_the_first_and_reports_both_ids() -> None:
    stories = [
        [
            checkout("tr_1", "SUCCEEDED", T0, {"o1": "5.00"}),
            checkout("tr_2", "SUCCEEDED", T0 + 10, {"o1": "5.00"}),
        ],
        [
            checkout("tr_2", "SUCCEEDED", T0 + 10, {"o1": "5.00"}),
            checkout("tr_1", "SUCCEEDED", T0, {"o1": "5.00"}),
        ],
    ]
    for story in stories:
        flow = Flow().run(story)
        assert flow.state("o1")["transaction_id"] == "tr_1"
        assert flow.state("o1")["payment_status"] == "SUCCEEDED"
        assert len(flow.conflicts) == 1
        assert "tr_1" in flow.conflicts[0]
        assert "tr_2" in flow.conflicts[0]


# -- money and refunds ---------------------------------------------------------------------------

PAID = checkout("tr_1", "SUCCEEDED", T0, {"o1": "15.70"})


def test_partial_refund_leaves_the_status_and_shows_the_amount() -> None:
    flow = Flow().run([PAID, order_status("o1", "ACTIVE", T0 + 1), refund("o1", "5.00", T0 + 2)])
    state = flow.state("o1")
    assert state["order_status"] == "ACTIVE"
    assert state["refunded_amount"] == money("5.00")
    assert flow.changes["o1"][-1]["changed_fields"] == ["refunded_amount"]
    assert flow.changes["o1"][-1]["cause"]["provider_event_type"] == "subscription_event_refund"


def test_partial_refunds_that_reach_the_amount_refund_the_order() -> None:
    flow = Flow().run(
        [
            PAID,
            order_status("o1", "ACTIVE", T0 + 1),
            refund("o1", "5.00", T0 + 2),
            refund("o1", "10.70", T0 + 3),
        ]
    )
    state = flow.state("o1")
    assert state["order_status"] == "REFUNDED"
    assert state["refunded_amount"] == money("15.70")
    assert flow.changes["o1"][-1]["changed_fields"] == ["order_status", "refunded_amount"]


def test_refund_without_amount_is_a_full_refund() -> None:
    flow = Flow().run([PAID, order_status("o1", "ACTIVE", T0 + 1), refund("o1", None, T0 + 2)])
    state = flow.state("o1")
    assert state["order_status"] == "REFUNDED"
    assert state["refunded_amount"] == money("15.70")


def test_refund_before_the_amount_is_kept_and_applied_when_it_arrives() -> None:
    flow = Flow().run(
        [
            order_status("o1", "ACTIVE", T0),
            refund("o1", "15.70", T0 + 1),
        ]
    )
    assert flow.state("o1")["order_status"] == "ACTIVE"
    assert flow.state("o1")["refunded_amount"] is None  # null until the currency is known
    flow.run([PAID])
    state = flow.state("o1")
    assert state["amount"] == money("15.70")
    assert state["order_status"] == "REFUNDED"


def test_refund_in_another_currency_is_not_counted() -> None:
    flow = Flow().run([PAID, refund("o1", "15.70", T0 + 1, currency="HUF")])
    assert flow.state("o1")["refunded_amount"] is None
    assert flow.state("o1")["order_status"] is None


@pytest.mark.parametrize("seed", range(40))
def test_refunds_converge_in_any_order(seed: int) -> None:
    story = [
        PAID,
        order_status("o1", "ACTIVE", T0 + 1),
        refund("o1", "5.00", T0 + 2),
        refund("o1", "3.00", T0 + 3),
        refund("o1", "7.70", T0 + 4),
    ]
    flow = Flow().run_shuffled(story, seed)
    state = flow.state("o1")
    assert state["order_status"] == "REFUNDED"
    assert state["refunded_amount"] == money("15.70")
    assert state["payment_status"] == "SUCCEEDED"
    assert_versions_exact(flow)


# -- cause ------------------------------------------------------------------------------------


def test_cause_names_the_payment_delivery_when_the_order_joins_late() -> None:
    flow = Flow().run(
        [
            payment("tr_1", "SUCCEEDED", T0, delivery_id="pay-1"),
            order_status("o1", "PENDING", T0 + 100, transaction_id="tr_1", delivery_id="ord-1"),
        ]
    )
    paid = [c for c in flow.changes["o1"] if "payment_status" in c["changed_fields"]]
    assert len(paid) == 1
    assert paid[0]["cause"]["delivery_id"] == "pay-1"
    assert paid[0]["cause"]["kind"] == "payments"
    assert paid[0]["cause"]["provider_event_type"] == "payment.completed"
    # The order's own status change names the order delivery.
    status = [c for c in flow.changes["o1"] if "order_status" in c["changed_fields"]]
    assert status[0]["cause"]["delivery_id"] == "ord-1"


# -- versions never restart ---------------------------------------------------------------------


def test_payment_on_day_31_reaches_an_order_pending_since_day_0() -> None:
    flow = Flow().run(
        [
            checkout("tr_1", "PENDING", T0, {"o1": "20.00"}),
            payment("tr_1", "SUCCEEDED", T0 + 31 * DAY, delivery_id="late-pay"),
        ]
    )
    assert flow.state("o1")["payment_status"] == "SUCCEEDED"
    assert flow.changes["o1"][-1]["cause"]["delivery_id"] == "late-pay"


def test_a_transaction_record_that_expired_is_never_a_reason_to_ignore_its_status() -> None:
    """With a short join retention the record expires; its next status still applies."""
    flow = Flow(join_retention=30 * DAY).run(
        [
            checkout("tr_1", "PENDING", T0, {"o1": None}),
            payment("tr_1", "FAILED", T0 + 1),
            checkout("tr_1", "SUCCEEDED", T0 + 31 * DAY, {"o1": None}),
        ]
    )
    assert flow.transactions["tr_1"]["version"] == 1  # recreated after expiry
    assert flow.state("o1")["payment_status"] == "SUCCEEDED"
    assert_versions_exact(flow)


def test_order_idle_longer_than_the_retention_keeps_its_versions_and_fields() -> None:
    story = [
        checkout("tr_1", "SUCCEEDED", T0, {"o1": "9.99"}),
        order_status("o1", "ACTIVE", T0 + 1, transaction_id="tr_1", pdf="https://x/o1.pdf"),
    ]
    flow = Flow().run(story)
    version = flow.state("o1")["version"]
    flow.run([refund("o1", "1.00", T0 + 401 * DAY)])
    state = flow.state("o1")
    assert state["version"] == version + 1
    assert state["transaction_id"] == "tr_1"
    assert state["confirmation_pdf_url"] == "https://x/o1.pdf"
    assert state["payment_status"] == "SUCCEEDED"
    assert state["amount"] == money("9.99")
    assert state["refunded_amount"] == money("1.00")
    assert_versions_exact(flow)


def test_retiring_a_record_changes_no_later_outcome() -> None:
    """The sweeper's retire() and the read path agree: the result is the same either way."""
    story = [
        checkout("tr_1", "SUCCEEDED", T0, {"o1": "9.99"}),
        order_status("o1", "ACTIVE", T0 + 1, pdf="https://x/o1.pdf"),
        refund("o1", "2.00", T0 + 2),
    ]
    flow = Flow().run(story)
    record = flow.orders["o1"]
    late = refund("o1", "7.99", T0 + 500 * DAY)[0]
    swept = apply_event(retire(record), late, ENV, YEAR_ISH)
    unswept = apply_event(record, late, ENV, YEAR_ISH)
    assert swept.change == unswept.change
    assert swept.record["state"] == unswept.record["state"]
    assert swept.record["state"]["order_status"] == "REFUNDED"
    assert swept.record["state"]["refunded_amount"] == money("9.99")
    retired = retire(record)
    assert retired["retired"]
    assert len(retired["claims"]) <= 1
    assert retired["refunds"] == record["refunds"]  # kept with their ids: never counted twice


# -- idempotence -------------------------------------------------------------------------------


def test_replaying_every_input_changes_nothing() -> None:
    story = [*RECHECKOUT, refund("o1", "1.00", T0 + 50)]
    flow = Flow().run(story)
    snapshot = {oid: dict(record) for oid, record in flow.orders.items()}
    counts = {oid: len(changes) for oid, changes in flow.changes.items()}
    flow.run(story)
    assert {oid: len(changes) for oid, changes in flow.changes.items()} == counts
    assert {oid: record["state"] for oid, record in flow.orders.items()} == {
        oid: record["state"] for oid, record in snapshot.items()
    }


def test_lower_order_status_is_rejected_and_counted() -> None:
    flow = Flow().run([order_status("o1", "ACTIVE", T0), order_status("o1", "PENDING", T0 + 1)])
    assert flow.state("o1")["order_status"] == "ACTIVE"
    assert flow.rejected == [("order_status", "ACTIVE", "PENDING")]
    assert flow.rules() == [("status_regression", "order_status", "PENDING")]
    assert flow.facts[0]["cause"]["delivery_id"] == "os-o1-PENDING-1795255200001"
    assert flow.facts[0]["rejected_at"] == T0 + 1


def test_input_record_is_not_mutated() -> None:
    flow = Flow().run([PAID])
    record = flow.orders["o1"]
    frozen = repr(record)
    apply_event(record, refund("o1", "1.00", T0 + 5)[0], ENV, YEAR_ISH)
    apply_event(record, order_status("o1", "ACTIVE", T0 + 6, transaction_id="tr_9")[0], ENV, 1)
    assert repr(record) == frozen


@pytest.mark.parametrize("seed", range(40))
def test_a_busy_story_converges_in_any_interleaving(seed: int) -> None:
    story = [
        checkout("tr_1", "PENDING", T0, {"o1": "10.00", "o2": "20.00", "o3": "30.00"}),
        payment("tr_1", "FAILED", T0 + 10),
        checkout("tr_2", "PENDING", T0 + 20, {"o1": "10.00", "o2": "20.00"}),
        payment("tr_2", "SUCCEEDED", T0 + 30),
        checkout("tr_3", "SUCCEEDED", T0 + 40, {"o3": "30.00"}),
        checkout("tr_4", "SUCCEEDED", T0 + 50, {"o3": "30.00"}),  # a double payment
        order_status("o1", "ACTIVE", T0 + 60, transaction_id="tr_2", pdf="https://x/1.pdf"),
        order_status("o2", "ACTIVE", T0 + 61),
        order_status("o2", "PENDING", T0 + 5),
        refund("o2", "20.00", T0 + 70),
        refund("o3", "4.00", T0 + 71),
    ]
    flow = Flow().run_shuffled(story, seed)
    assert fields(flow.state("o1")) == {
        "transaction_id": "tr_2",
        "order_status": "ACTIVE",
        "payment_status": "SUCCEEDED",
        "confirmation_pdf_url": "https://x/1.pdf",
        "vignette_id": None,
        "amount": money("10.00"),
        "currency": "EUR",
        "refunded_amount": None,
    }
    assert fields(flow.state("o2"))["order_status"] == "REFUNDED"
    assert fields(flow.state("o2"))["transaction_id"] == "tr_2"
    o3 = fields(flow.state("o3"))
    assert (o3["transaction_id"], o3["payment_status"]) == ("tr_3", "SUCCEEDED")
    assert o3["refunded_amount"] == money("4.00")
    assert len(flow.conflicts) == 1
    assert_versions_exact(flow)


def test_a_replayed_fact_mapped_by_fixed_code_corrects_a_plain_field() -> None:
    """hookline replay re-emits a delivery's events with their ids: same stamp, new value."""
    flow = Flow().run(
        [order_status("o1", "ACTIVE", T0, pdf="https://x/wrong.pdf", delivery_id="d")]
    )
    flow.run([order_status("o1", "ACTIVE", T0, pdf="https://x/right.pdf", delivery_id="d")])
    assert flow.state("o1")["confirmation_pdf_url"] == "https://x/right.pdf"
    assert flow.state("o1")["version"] == 2
    flow.run([order_status("o1", "ACTIVE", T0, pdf="https://x/right.pdf", delivery_id="d")])
    assert flow.state("o1")["version"] == 2  # the same again changes nothing


def test_awaiting_activation_counts_paid_orders_not_yet_active() -> None:
    from hookline.streams.activation import awaiting

    flow = Flow().run([checkout("tr_1", "SUCCEEDED", T0, {"o1": "1.00", "o2": "1.00"})])
    assert awaiting(flow.state("o1"))
    flow.run([order_status("o1", "ACTIVE", T0 + 1)])
    assert not awaiting(flow.state("o1"))
    assert awaiting(flow.state("o2"))
    flow.run([refund("o2", None, T0 + 2)])
    assert not awaiting(flow.state("o2"))
    assert not awaiting(None)


def test_a_replayed_refund_with_a_corrected_amount_replaces_the_old_one() -> None:
    flow = Flow().run([PAID, refund("o1", "50.00", T0 + 1, delivery_id="rf")])
    assert flow.state("o1")["order_status"] == "REFUNDED"  # the buggy amount over-refunded
    flow.run([refund("o1", "5.00", T0 + 1, delivery_id="rf")])
    assert flow.state("o1")["refunded_amount"] == money("5.00")
    assert flow.state("o1")["order_status"] == "REFUNDED"  # forward-only: not taken back
