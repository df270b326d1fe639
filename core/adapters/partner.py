"""Partner panel webhooks (order and checkout status, PDF confirmations).

Seed: ../shared/seeds/000_d463298df1c27cb1.txt (the document shows "Code" where
its example payloads were). Assumed shapes: ../shared/spec/payloads/partner-*.json.
Every assumption about this provider's payload lives in this file.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from hookline.core import content_key
from hookline.core.adapters import money
from hookline.core.adapters.fields import (
    MAX_URL,
    Unmappable,
    choice,
    items,
    required_text,
    text,
    timestamp_ms,
)
from hookline.core.events import (
    ORDER_CONFIRMATION_RECEIVED,
    ORDER_PRICED,
    ORDER_STATUS_CHANGED,
    ORDER_STATUSES,
    TRANSACTION_STATUS_CHANGED,
    CanonicalEvent,
    DeliveryContext,
    new_event,
)

KIND = "partner"

ORDER_STATUS = {status: status for status in ORDER_STATUSES}
# Seed 000, "Transactions": CREATED (payment URL made), SUCCESS, FAILED.
CHECKOUT_STATUS = {"CREATED": "PENDING", "SUCCESS": "SUCCEEDED", "FAILED": "FAILED"}


def envelope_problem(document: dict[str, Any]) -> str | None:
    if not isinstance(document.get("event_type"), str):
        return "partner webhooks carry a string 'event_type'"
    return None


def dedup_identity(document: dict[str, Any], ignore: Sequence[str]) -> tuple[str, str]:
    """(dedup key, content digest): the partner retries the same webhook (1, 5, 15 min).

    The seed promises the same event, not the same bytes, so the key is the
    JSON content (core/content_key.py), minus the source's ``dedup_ignore``.
    """
    content = content_key.digest(document, ignore)
    return "json:" + content, content


def ordering_key(document: dict[str, Any]) -> str:
    """The entity whose webhooks must stay in arrival order: the order, else the checkout."""
    for key in ("order_id", "transaction_id"):
        value = document.get(key)
        if isinstance(value, str) and value:
            return value
    return str(document.get("event_type"))


def to_events(document: dict[str, Any], ctx: DeliveryContext) -> list[CanonicalEvent]:
    event_type = document.get("event_type")
    occurred_at = timestamp_ms(document.get("created_at"))
    common = {"provider_event_type": event_type, "occurred_at": occurred_at}

    if event_type == "ORDER_STATUS_CHANGED":
        order_id = required_text(document, "order_id")
        status = choice(document.get("status"), ORDER_STATUS, "order status")
        return [
            new_event(
                ctx,
                0,
                ORDER_STATUS_CHANGED,
                "order",
                order_id,
                order_id=order_id,
                transaction_id=text(document, "transaction_id", required=False),
                order_status=status,
                **common,
            )
        ]

    if event_type == "ORDER_CONFIRMATION_RECEIVED":
        order_id = required_text(document, "order_id")
        return [
            new_event(
                ctx,
                0,
                ORDER_CONFIRMATION_RECEIVED,
                "order",
                order_id,
                order_id=order_id,
                transaction_id=text(document, "transaction_id", required=False),
                confirmation_pdf_url=required_text(document, "pdf_url", limit=MAX_URL),
                **common,
            )
        ]

    if event_type == "CHECKOUT_STATUS_CHANGED":
        transaction_id = required_text(document, "transaction_id")
        status = choice(document.get("status"), CHECKOUT_STATUS, "checkout status")
        # Assumed (payloads/partner-checkout-multi.json): one currency for the
        # checkout, each entry of "orders" its own "amount". An amount out of
        # range is refused for its order alone (money.priced): the checkout's
        # status and the other orders' prices still apply.
        currency = money.currency(document.get("currency"), "'currency'")
        priced: dict[str, tuple[Any, str | None]] = {}
        for entry in items(document, "orders") if "orders" in document else []:
            if not isinstance(entry, dict):
                raise Unmappable("'orders' entries must be objects")
            order_id = required_text(entry, "order_id")
            price = money.priced(entry.get("amount"), f"amount of order {order_id[:64]!r}")
            priced.setdefault(order_id, price)
        events = [
            new_event(
                ctx,
                0,
                TRANSACTION_STATUS_CHANGED,
                "transaction",
                transaction_id,
                transaction_id=transaction_id,
                order_ids=list(priced),
                payment_status=status,
                **common,
            )
        ]
        # Each order's price is an order fact: one order.priced event per order
        # with an amount (a refused one carries its text instead).
        for order_id, (price, refused) in priced.items():
            if price is not None or refused is not None:
                events.append(
                    new_event(
                        ctx,
                        len(events),
                        ORDER_PRICED,
                        "order",
                        order_id,
                        order_id=order_id,
                        transaction_id=transaction_id,
                        amount=price,
                        currency=currency,
                        refused_amount=refused,
                        **common,
                    )
                )
        return events

    raise Unmappable(f"unknown partner event_type {str(event_type)[:100]!r}")
