"""Order state v3 through the pure rules (PRODUCT.md v3 sections 3-4).

Rejected facts as data, once per fact; money out of range refused per
amount; a refund once per envelope id for the order's whole life;
``refunded_amount`` null until the currency is known; the first-success
rule; retired orders keeping their refunds. Each story also runs in random
interleavings (tests/unit/flow.py), retried, and across a retire.
"""

from __future__ import annotations

import random
from collections import Counter
from decimal import Decimal
from typing import Any

import pytest
from hookline.core.adapters import partner
from hookline.core.events import CanonicalEvent
from hookline.streams.order_state import MAX_REJECTED, STATE_FIELDS

from tests.unit.flow import DAY, Flow, checkout, order_status, payment, refund
from tests.unit.helpers import T0, ctx

SEEDS = range(30)


def money(text: str) -> Decimal:
    return Decimal(text).quantize(Decimal("0.0001"))


def fields(state: dict[str, Any]) -> dict[str, Any]:
    return {name: state[name] for name in STATE_FIELDS}


def assert_each_fact_once(flow: Flow) -> None:
    keys = Counter(
        (f["order_id"], f["rule"], f["field"], f["value"], f["cause"]["delivery_id"])
        for f in flow.facts
    )
    assert all(count == 1 for count in keys.values()), keys


def assert_retries_publish_nothing(
    flow: Flow, story: list[list[CanonicalEvent]], shuffled: bool = False
) -> None:
    """Every delivery of the story again (retried, replayed): no fact, no change.

    After a shuffled run a fact applied before the state moved past it (a
    CREATED processed first) is a late, lower status when it comes again: it
    is rejected then, once. Every further retry publishes nothing.
    """
    if shuffled:
        flow.run(story)
        assert_each_fact_once(flow)
    facts, versions = len(flow.facts), {oid: len(c) for oid, c in flow.changes.items()}
    flow.run(story)
    flow.run(list(reversed(story)))
    assert len(flow.facts) == facts
    assert {oid: len(c) for oid, c in flow.changes.items()} == versions
    assert_each_fact_once(flow)


def run_with_retire(story: list[list[CanonicalEvent]], seed: int) -> Flow:
    """A random interleaving with every order retired at a random point of it."""
    cut = random.Random(seed).randrange(len(story) + 1)
    flow = Flow().run_shuffled(story[:cut], seed)
    return flow.retire_all().run_shuffled(story[cut:], seed + 1000)


def partner_checkout(
    transaction_id: str, status: str, at: int, orders: list[dict[str, Any]], delivery_id: str
) -> list[CanonicalEvent]:
    """A partner checkout through the real adapter (so a refused amount is marked as it is)."""
    document = {
        "event_type": "CHECKOUT_STATUS_CHANGED",
        "transaction_id": transaction_id,
        "status": status,
        "currency": "EUR",
        "orders": orders,
    }
    return partner.to_events(document, ctx(delivery_id, at))


# -- status_regression ------------------------------------------------------------------------

REGRESSION = [
    order_status("o1", "PENDING", T0),
    order_status("o1", "ACTIVE", T0 + 10),
    order_status("o1", "PENDING", T0 + 20, delivery_id="late-pending"),
    order_status("o1", "CREATED", T0 + 30, delivery_id="late-created"),
]


def test_a_late_lower_status_is_one_rejected_fact_naming_its_delivery() -> None:
    flow = Flow().run(REGRESSION)
    assert flow.state("o1")["order_status"] == "ACTIVE"
    assert flow.rules() == [
        ("status_regression", "order_status", "PENDING"),
        ("status_regression", "order_status", "CREATED"),
    ]
    assert [f["cause"]["delivery_id"] for f in flow.facts] == ["late-pending", "late-created"]
    assert [f["rejected_at"] for f in flow.facts] == [T0 + 20, T0 + 30]
    assert_retries_publish_nothing(flow, REGRESSION)


@pytest.mark.parametrize("seed", SEEDS)
def test_status_regressions_are_published_at_most_once_in_any_interleaving(seed: int) -> None:
    flow = Flow().run_shuffled(REGRESSION, seed)
    assert flow.state("o1")["order_status"] == "ACTIVE"
    assert_each_fact_once(flow)
    assert {rule for rule, _, _ in flow.rules()} <= {"status_regression"}
    assert_retries_publish_nothing(flow, REGRESSION, shuffled=True)


# -- payment_regression -------------------------------------------------------------------------

PAYMENT_BACK = [
    checkout("tr_7", "PENDING", T0, {"o4": "10.00", "o2": "20.00"}),
    payment("tr_7", "FAILED", T0 + 10),
    payment("tr_7", "PENDING", T0 + 20, delivery_id="processing-again"),
]


def test_pending_after_failed_is_a_rejected_fact_for_every_order_of_the_transaction() -> None:
    flow = Flow().run(PAYMENT_BACK)
    for order_id in ("o4", "o2"):
        assert flow.state(order_id)["payment_status"] == "FAILED"
        assert flow.rules(order_id) == [("payment_regression", "payment_status", "PENDING")]
    assert {f["cause"]["delivery_id"] for f in flow.facts} == {"processing-again"}
    assert_retries_publish_nothing(flow, PAYMENT_BACK)


def test_anything_after_succeeded_is_a_payment_regression() -> None:
    story = [
        checkout("tr_1", "SUCCEEDED", T0, {"o1": "10.00"}),
        payment("tr_1", "FAILED", T0 + 10, delivery_id="late-failure"),
    ]
    flow = Flow().run(story)
    assert flow.state("o1")["payment_status"] == "SUCCEEDED"
    assert flow.rules() == [("payment_regression", "payment_status", "FAILED")]
    assert flow.facts[0]["cause"]["delivery_id"] == "late-failure"
    assert_retries_publish_nothing(flow, story)


def test_the_same_success_again_is_neither_a_change_nor_a_rejection() -> None:
    story = [checkout("tr_1", "SUCCEEDED", T0, {"o1": "10.00"})]
    flow = Flow().run(story).run([payment("tr_1", "SUCCEEDED", T0 + 10)])
    assert flow.facts == []
    assert len(flow.changes["o1"]) == 2  # the payment and the price, nothing more


# -- double_payment and the first-success rule ----------------------------------------------

FIRST_SUCCESS = [
    payment("tr_1", "SUCCEEDED", T0 + 50, delivery_id="tr1-paid-again"),
    checkout("tr_2", "SUCCEEDED", T0 + 30, {"o1": "5.00"}, delivery_id="tr2-paid"),
    checkout("tr_1", "SUCCEEDED", T0 + 10, {"o1": "5.00"}, delivery_id="tr1-paid"),
    order_status("o1", "ACTIVE", T0 + 60),
]


@pytest.mark.parametrize("seed", SEEDS)
def test_the_first_success_is_the_earliest_success_delivery_in_any_interleaving(
    seed: int,
) -> None:
    """tr_1's earliest success (T0+10) is before tr_2's (T0+30), whatever is processed first."""
    flow = Flow().run_shuffled(FIRST_SUCCESS, seed)
    state = flow.state("o1")
    assert (state["transaction_id"], state["payment_status"]) == ("tr_1", "SUCCEEDED")
    doubles = [f for f in flow.facts if f["rule"] == "double_payment"]
    assert [(f["field"], f["value"]) for f in doubles] == [("transaction_id", "tr_2 after tr_1")]
    assert doubles[0]["cause"]["delivery_id"] == "tr2-paid"  # the later payment, to refund
    assert len(flow.conflicts) == 1
    assert_retries_publish_nothing(flow, FIRST_SUCCESS, shuffled=True)


def test_an_earlier_success_learnt_later_takes_over_and_names_the_held_one() -> None:
    flow = Flow().run(
        [
            checkout("tr_2", "SUCCEEDED", T0 + 30, {"o1": "5.00"}),
            checkout("tr_1", "SUCCEEDED", T0 + 10, {"o1": "5.00"}),
        ]
    )
    paid = [c["after"]["transaction_id"] for c in flow.changes["o1"]]
    assert paid[0] == "tr_2"
    assert paid[-1] == "tr_1"
    assert flow.rules() == [("double_payment", "transaction_id", "tr_2 after tr_1")]


def test_a_third_payment_is_one_more_fact_and_the_earlier_ones_are_not_repeated() -> None:
    story = [
        checkout("tr_1", "SUCCEEDED", T0, {"o1": "5.00"}),
        checkout("tr_2", "SUCCEEDED", T0 + 10, {"o1": "5.00"}),
        checkout("tr_3", "SUCCEEDED", T0 + 20, {"o1": "5.00"}),
    ]
    flow = Flow().run(story)
    assert [v for _, _, v in flow.rules()] == ["tr_2 after tr_1", "tr_3 after tr_1"]
    assert_retries_publish_nothing(flow, story)


# -- money out of range ----------------------------------------------------------------------


def test_a_checkout_with_one_bad_price_applies_the_rest() -> None:
    story = [
        partner_checkout(
            "tr_1",
            "SUCCESS",
            T0,
            [{"order_id": "o1", "amount": 15.7}, {"order_id": "o2", "amount": 15.70001}],
            "co-1",
        )
    ]
    flow = Flow().run(story)
    assert (flow.state("o1")["payment_status"], flow.state("o1")["amount"]) == (
        "SUCCEEDED",
        money("15.70"),
    )
    o2 = flow.state("o2")
    assert (o2["payment_status"], o2["amount"], o2["currency"]) == ("SUCCEEDED", None, None)
    assert flow.rules() == [("money_out_of_range", "amount", "15.70001")]
    assert flow.facts[0]["order_id"] == "o2"
    assert flow.facts[0]["cause"]["delivery_id"] == "co-1"
    assert_retries_publish_nothing(flow, story)


def test_a_refused_price_leaves_the_price_the_order_had() -> None:
    story = [
        checkout("tr_1", "SUCCEEDED", T0, {"o1": "9.00"}),
        partner_checkout("tr_1", "SUCCESS", T0 + 5, [{"order_id": "o1", "amount": -9}], "co-2"),
    ]
    flow = Flow().run(story)
    assert (flow.state("o1")["amount"], flow.state("o1")["currency"]) == (money("9.00"), "EUR")
    assert flow.rules() == [("money_out_of_range", "amount", "-9")]


def test_a_refused_refund_is_a_rejected_fact_never_a_full_refund() -> None:
    story = [PAID, refund("o1", None, T0 + 1, refused="-5", envelope_id="wh_bad")]
    flow = Flow().run(story)
    assert flow.state("o1")["order_status"] is None
    assert flow.state("o1")["refunded_amount"] is None
    assert flow.rules() == [("money_out_of_range", "refunded_amount", "-5")]
    assert_retries_publish_nothing(flow, story)


HUGE = "99999999999999.0000"  # the largest whole amount decimal(18,4) holds

OVERFLOW = [
    checkout("tr_1", "SUCCEEDED", T0, {"o1": HUGE}),
    refund("o1", HUGE, T0 + 1, envelope_id="wh_a"),
    refund("o1", "5.00", T0 + 2, envelope_id="wh_b"),
]


@pytest.mark.parametrize("seed", SEEDS)
def test_refunds_whose_sum_overflows_are_refused_and_the_state_still_encodes(seed: int) -> None:
    """Each refund fits decimal(18,4), their sum does not: the second to arrive is refused.

    Flow encodes every change, so a sum out of range would fail here as the
    worker's encoder did.
    """
    flow = Flow().run_shuffled(OVERFLOW, seed)
    refunded = flow.state("o1")["refunded_amount"]
    assert refunded in (money(HUGE), money("5.00"))
    assert [(r, f) for r, f, _ in flow.rules()] == [("money_out_of_range", "refunded_amount")]
    assert flow.rules()[0][2] == ("5.0000" if refunded == money(HUGE) else HUGE)
    assert_retries_publish_nothing(flow, OVERFLOW, shuffled=True)


# -- refunds: once per envelope id, currency, retire ---------------------------------------------

PAID = checkout("tr_1", "SUCCEEDED", T0, {"o1": "15.70"})


def test_a_refund_sent_again_after_the_dedup_window_counts_once() -> None:
    first = refund("o1", "5.00", T0 + 1, delivery_id="d-1", envelope_id="wh_1")
    again = refund("o1", "5.00", T0 + 8 * DAY, delivery_id="d-2", envelope_id="wh_1")
    flow = Flow().run([PAID, first, again])
    assert flow.state("o1")["refunded_amount"] == money("5.00")
    flow.retire_all().run([refund("o1", "5.00", T0 + 500 * DAY, "EUR", "d-3", "wh_1")])
    assert flow.state("o1")["refunded_amount"] == money("5.00")
    assert flow.facts == []


def test_the_same_envelope_id_from_another_source_is_another_refund() -> None:
    other = refund("o1", "5.00", T0 + 2, delivery_id="d-2", envelope_id="wh_1")
    other[0]["source"] = "envelope-eu"
    flow = Flow().run([PAID, refund("o1", "5.00", T0 + 1, "EUR", "d-1", "wh_1"), other])
    assert flow.state("o1")["refunded_amount"] == money("10.00")


CURRENCIES = [
    refund("o1", "10.00", T0 + 1, currency="BGN", envelope_id="wh_bgn", delivery_id="rf-bgn"),
    refund("o1", "5.00", T0 + 2, currency="EUR", envelope_id="wh_eur"),
    checkout("tr_1", "SUCCEEDED", T0 + 3, {"o1": "15.70"}),
]


@pytest.mark.parametrize("seed", SEEDS)
def test_refunded_amount_is_null_until_the_currency_is_known(seed: int) -> None:
    flow = Flow().run_shuffled(CURRENCIES, seed)
    for change in flow.changes["o1"]:
        if change["after"]["currency"] is None:
            assert change["after"]["refunded_amount"] is None
    state = flow.state("o1")
    assert (state["refunded_amount"], state["order_status"]) == (money("5.00"), None)
    assert flow.rules() == [("refund_other_currency", "refunded_amount", "10.0000 BGN")]
    assert flow.facts[0]["cause"]["delivery_id"] == "rf-bgn"  # the refund, not the price
    assert_retries_publish_nothing(flow, CURRENCIES, shuffled=True)


RETIRE_STORIES = {
    "full refund before the price": (
        [
            refund("o1", None, T0 + 1, envelope_id="wh_full"),
            checkout("tr_1", "SUCCEEDED", T0 + 2, {"o1": "15.70"}),
        ],
        {"order_status": "REFUNDED", "refunded_amount": money("15.70")},
        [],
    ),
    "refund in another currency": (
        [
            order_status("o1", "ACTIVE", T0),
            refund("o1", "30.00", T0 + 1, currency="BGN", envelope_id="wh_bgn"),
            checkout("tr_1", "SUCCEEDED", T0 + 2, {"o1": "15.70"}),
        ],
        {"order_status": "ACTIVE", "refunded_amount": None},
        [("refund_other_currency", "refunded_amount", "30.0000 BGN")],
    ),
    "partial refunds": (
        [
            checkout("tr_1", "SUCCEEDED", T0, {"o1": "15.70"}),
            order_status("o1", "ACTIVE", T0 + 1),
            refund("o1", "5.00", T0 + 2, envelope_id="wh_1"),
            refund("o1", "3.00", T0 + 3, envelope_id="wh_2"),
        ],
        {"order_status": "ACTIVE", "refunded_amount": money("8.00")},
        [],
    ),
}


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("name", sorted(RETIRE_STORIES))
def test_retire_then_continue_keeps_the_refunds(name: str, seed: int) -> None:
    story, expected, facts = RETIRE_STORIES[name]
    flow = run_with_retire(story, seed)
    state = flow.state("o1")
    assert {k: state[k] for k in expected} == expected
    assert state["amount"] == money("15.70")
    assert flow.rules() == facts
    # Replaying raw over the retired order: nothing doubles, nothing is published again.
    flow.retire_all()
    assert_retries_publish_nothing(flow, story, shuffled=True)
    assert {k: flow.state("o1")[k] for k in expected} == expected


def test_a_release_2_folded_refund_still_counts() -> None:
    """A record retired before refunds were kept: its one folded refund, currency unknown."""
    flow = Flow().run([PAID])
    folded = {"event_id": "retired", "amount": money("5.00"), "currency": None}
    # As the current schema reads it: the fields added since take their defaults.
    flow.orders["o1"]["refunds"] = [folded | {"refund_id": "", "cause": None, "rejected": False}]
    flow.run([refund("o1", "1.00", T0 + 1)])
    assert flow.state("o1")["refunded_amount"] == money("6.00")


# -- every rule together: once, retried, across a retire ------------------------------------------

EVERYTHING = [
    *FIRST_SUCCESS,
    order_status("o1", "PENDING", T0 + 70),
    refund("o1", "1.00", T0 + 80, currency="HUF", envelope_id="wh_huf"),
    refund("o1", "1.00", T0 + 90, envelope_id="wh_eur"),
    *PAYMENT_BACK,
    partner_checkout("tr_9", "FAILED", T0 + 95, [{"order_id": "o3", "amount": 1e15}], "co-9"),
]


@pytest.mark.parametrize("seed", SEEDS)
def test_every_rule_once_whatever_the_interleaving_retries_and_retires(seed: int) -> None:
    flow = run_with_retire(EVERYTHING, seed)
    assert_each_fact_once(flow)
    assert {rule for rule, _, _ in flow.rules()} <= {
        "double_payment",
        "status_regression",
        "refund_other_currency",
        "payment_regression",
        "money_out_of_range",
    }
    assert ("money_out_of_range", "amount", "1000000000000000.0") in flow.rules("o3")
    assert ("refund_other_currency", "refunded_amount", "1.0000 HUF") in flow.rules("o1")
    assert ("double_payment", "transaction_id", "tr_2 after tr_1") in flow.rules("o1")
    assert flow.state("o1")["refunded_amount"] == money("1.00")
    assert_retries_publish_nothing(flow, EVERYTHING, shuffled=True)
    flow.retire_all()
    assert_retries_publish_nothing(flow, EVERYTHING)


def test_the_keys_of_published_facts_stay_bounded() -> None:
    story = [PAID] + [
        refund("o1", "1.00", T0 + i, currency="HUF", envelope_id=f"wh_{i}") for i in range(1, 90)
    ]
    flow = Flow().run(story)
    assert len(flow.facts) == 89
    assert len(flow.orders["o1"]["rejected_facts"]) == MAX_REJECTED
