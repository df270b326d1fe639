"""streams/state_rules.py: the transition tables of PRODUCT.md section 4."""

from __future__ import annotations

import pytest
from hookline.streams.state_rules import (
    Verdict,
    newer,
    order_status_verdict,
    payment_status_verdict,
)

A, S, R = Verdict.APPLY, Verdict.SAME, Verdict.REJECT

ORDER = ["CREATED", "PENDING", "DEFERRED", "ACTIVE", "REFUNDED"]
# Rows: current status; columns: new status in ORDER. Forward only; equal is SAME.
ORDER_TABLE: dict[str | None, list[Verdict]] = {
    None: [A, A, A, A, A],
    "CREATED": [S, A, A, A, A],
    "PENDING": [R, S, A, A, A],
    "DEFERRED": [R, R, S, A, A],
    "ACTIVE": [R, R, R, S, A],
    "REFUNDED": [R, R, R, R, S],
}


@pytest.mark.parametrize("current", list(ORDER_TABLE))
@pytest.mark.parametrize("index", range(len(ORDER)))
def test_order_status_table(current: str | None, index: int) -> None:
    assert order_status_verdict(current, ORDER[index]) is ORDER_TABLE[current][index]


PAYMENT = ["PENDING", "SUCCEEDED", "FAILED", "CANCELED", "EXPIRED"]
# The new fact arrived later than the current one (its stamp is greater).
PAYMENT_LATER: dict[str | None, list[Verdict]] = {
    None: [A, A, A, A, A],
    "PENDING": [S, A, A, A, A],
    "SUCCEEDED": [R, S, R, R, R],
    "FAILED": [R, A, S, A, A],
    "CANCELED": [R, A, A, S, A],
    "EXPIRED": [R, A, A, A, S],
}
# The new fact is an older one arriving late (its stamp is smaller).
PAYMENT_EARLIER: dict[str | None, list[Verdict]] = {
    None: [A, A, A, A, A],
    "PENDING": [S, A, A, A, A],
    "SUCCEEDED": [R, S, R, R, R],
    "FAILED": [R, A, S, R, R],
    "CANCELED": [R, A, R, S, R],
    "EXPIRED": [R, A, R, R, S],
}
OLD = (1_000, "d-old:0")
NEW = (2_000, "d-new:0")


@pytest.mark.parametrize("current", list(PAYMENT_LATER))
@pytest.mark.parametrize("index", range(len(PAYMENT)))
def test_payment_status_table_later_arrival(current: str | None, index: int) -> None:
    verdict = payment_status_verdict(current, OLD, PAYMENT[index], NEW)
    assert verdict is PAYMENT_LATER[current][index]


@pytest.mark.parametrize("current", list(PAYMENT_EARLIER))
@pytest.mark.parametrize("index", range(len(PAYMENT)))
def test_payment_status_table_older_stamp_resent(current: str | None, index: int) -> None:
    verdict = payment_status_verdict(current, NEW, PAYMENT[index], OLD)
    assert verdict is PAYMENT_EARLIER[current][index]


def test_payment_status_same_stamp_same_status_is_same() -> None:
    for status in PAYMENT:
        assert payment_status_verdict(status, NEW, status, NEW) is S


def test_payment_stamp_tie_broken_by_event_id() -> None:
    assert payment_status_verdict("FAILED", (5, "a:0"), "CANCELED", (5, "b:0")) is A
    assert payment_status_verdict("FAILED", (5, "b:0"), "CANCELED", (5, "a:0")) is R


def test_newer_orders_by_time_then_id_and_lets_the_same_fact_write_again() -> None:
    assert newer((2, "a"), (1, "z"))
    assert newer((1, "b"), (1, "a"))
    assert newer((1, "a"), (1, "a"))  # a replayed fact (same value: no change; fixed: corrected)
    assert not newer((1, "z"), (2, "a"))
    assert newer((1, ""), (0, ""))
