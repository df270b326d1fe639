"""Refunds and chargebacks against an order's amount (PRODUCT.md section 4, money).

Pure arithmetic on the set of refund facts an order has seen, so the result
does not depend on their arrival order, and a refund that arrived before the
order's amount was known is simply counted again when the amount arrives.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any


@dataclass(frozen=True)
class RefundTotal:
    refunded_amount: Decimal | None  # None: no refund (or only full ones, amount unknown)
    fully_refunded: bool  # the order becomes REFUNDED
    foreign: int  # refunds in another currency than the order's (not counted)


NO_REFUND = RefundTotal(None, False, 0)


def total(
    refunds: Iterable[dict[str, Any]], amount: Decimal | None, currency: str | None
) -> RefundTotal:
    """Sum the refunds in the order's currency; decide whether they refund it fully.

    A refund without an amount is a full refund: the order is REFUNDED at
    once and its refunded amount is the order's amount once that is known.
    Partial refunds make it REFUNDED when their sum reaches the amount.
    """
    if not refunds:  # nearly every order: no refund
        return NO_REFUND
    full = False
    counted: list[Decimal] = []
    foreign = 0
    for refund in refunds:
        if refund["amount"] is None:
            full = True
        elif currency is None or refund["currency"] in (None, currency):
            counted.append(refund["amount"])
        else:
            foreign += 1
    summed = sum(counted, Decimal(0)) if counted else None
    if full:
        return RefundTotal(amount if amount is not None else summed, True, foreign)
    reached = amount is not None and summed is not None and summed >= amount
    return RefundTotal(summed, reached, foreign)
