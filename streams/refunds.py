"""Refunds and chargebacks against an order's amount (PRODUCT.md section 4, money).

Pure arithmetic on the set of refund facts an order has seen, so the result
does not depend on their arrival order, and a refund that arrived before the
order's amount was known is simply counted again when the amount arrives.

Invariants (docs/consumers.md, "Refunds and chargebacks" and "Money"):

- a refund is one fact per provider refund (:func:`refund_id`: the source and
  the envelope id), kept for the order's whole life, retired or not, so a
  refund sent again after the dedup window never counts twice;
- ``refunded_amount`` is null until the order's currency is known, and only
  refunds in that currency count (the others are ``foreign``);
- a refund is accepted only if every sum it can take part in still fits
  decimal(18,4) (:func:`overflows`), so ``refunded_amount`` always encodes.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from hookline.core.adapters.money import fits
from hookline.core.events import CanonicalEvent


@dataclass(frozen=True)
class RefundTotal:
    refunded_amount: Decimal | None  # None: nothing counted yet, or the currency is unknown
    fully_refunded: bool  # the order becomes REFUNDED
    #: Refunds in another currency than the order's (not counted).
    foreign: list[dict[str, Any]] = field(default_factory=list)


NO_REFUND = RefundTotal(None, False)


def refund_id(event: CanonicalEvent) -> str:
    """The identity of the provider refund an ``order.refunded`` event carries.

    ``<source>|<provider_event_id>`` (the envelope id, the same on every copy
    the provider sends), else the event id (events written before the field).
    """
    provider_id = event.get("provider_event_id")
    if provider_id:
        return f"{event['source']}|{provider_id}"
    return event["event_id"]


def same_refund(held: dict[str, Any], event_id: str, identity: str) -> bool:
    """Is ``held`` the refund of this event: the same provider refund, or the same event?"""
    return held["event_id"] == event_id or (
        bool(held["refund_id"]) and held["refund_id"] == identity
    )


def overflows(refunds: Iterable[dict[str, Any]], amount: Decimal, currency: str | None) -> bool:
    """Would adding ``amount`` in ``currency`` let a sum of refunds leave decimal(18,4)?

    Every refund that may be counted together with it (same currency, or one
    of the two without a currency) is summed, whatever the order's currency
    turns out to be: an overestimate that keeps every possible total in range.
    """
    together = [
        refund["amount"]
        for refund in refunds
        if refund["amount"] is not None
        and (currency is None or refund["currency"] is None or refund["currency"] == currency)
    ]
    return not fits(sum(together, amount))


def total(
    refunds: Iterable[dict[str, Any]], amount: Decimal | None, currency: str | None
) -> RefundTotal:
    """Sum the refunds in the order's currency; decide whether they refund it fully.

    A refund without an amount is a full refund: the order is REFUNDED at
    once and its refunded amount is the order's amount once that is known.
    Partial refunds make it REFUNDED when their sum reaches the amount.
    Until the currency is known nothing is summed (``refunded_amount`` None).
    """
    refunds = list(refunds)
    if not refunds:  # nearly every order: no refund
        return NO_REFUND
    full = any(refund["amount"] is None for refund in refunds)
    if currency is None:
        return RefundTotal(None, full)
    counted: list[Decimal] = []
    foreign: list[dict[str, Any]] = []
    for refund in refunds:
        if refund["amount"] is None:
            continue
        if refund["currency"] in (None, currency):
            counted.append(refund["amount"])
        else:
            foreign.append(refund)
    summed = sum(counted, Decimal(0)) if counted else None
    if full:
        return RefundTotal(amount if amount is not None else summed, True, foreign)
    reached = amount is not None and summed is not None and summed >= amount
    return RefundTotal(summed, reached, foreign)
