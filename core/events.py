"""The canonical event: hookline's one vocabulary for every provider.

A canonical event is a plain dict shaped like ``schemas/hookline.CanonicalEvent.avsc``
(dicts encode fastest with fastavro). Adapters build them with :func:`new_event`;
the stages downstream only ever read these fields, never provider JSON.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any, NamedTuple

CanonicalEvent = dict[str, Any]

ORDER_STATUSES = ("CREATED", "PENDING", "DEFERRED", "ACTIVE", "REFUNDED")
PAYMENT_STATUSES = ("PENDING", "SUCCEEDED", "FAILED", "CANCELED", "EXPIRED")

ORDER_STATUS_CHANGED = "order.status_changed"
ORDER_CONFIRMATION_RECEIVED = "order.confirmation_received"
ORDER_REFUNDED = "order.refunded"
#: An order's price as a checkout lists it (partner ``orders[].amount``).
ORDER_PRICED = "order.priced"
TRANSACTION_STATUS_CHANGED = "transaction.status_changed"


class DeliveryContext(NamedTuple):
    """Where an event came from: the raw envelope's metadata.

    A NamedTuple: immutable, and built in half the time of a frozen
    dataclass (one per delivery).
    """

    delivery_id: str
    source: str
    kind: str
    environment: str
    received_at: int


def new_event(
    ctx: DeliveryContext,
    index: int,
    type: str,
    entity_type: str,
    entity_id: str,
    *,
    provider_event_type: str | None = None,
    occurred_at: int | None = None,
    order_id: str | None = None,
    transaction_id: str | None = None,
    order_ids: list[str] | None = None,
    order_status: str | None = None,
    payment_status: str | None = None,
    confirmation_pdf_url: str | None = None,
    vignette_id: str | None = None,
    error: dict[str, str | None] | None = None,
    amount: Decimal | None = None,
    currency: str | None = None,
    refused_amount: str | None = None,
    provider_event_id: str | None = None,
) -> CanonicalEvent:
    return {
        # Derived from the delivery id, so reprocessing yields the same id.
        "event_id": f"{ctx.delivery_id}:{index}",
        "delivery_id": ctx.delivery_id,
        "source": ctx.source,
        "kind": ctx.kind,
        "environment": ctx.environment,
        "type": type,
        "provider_event_type": provider_event_type,
        "entity_type": entity_type,
        "entity_id": entity_id,
        "received_at": ctx.received_at,
        "occurred_at": occurred_at,
        "order_id": order_id,
        "transaction_id": transaction_id,
        "order_ids": order_ids or [],
        "order_status": order_status,
        "payment_status": payment_status,
        "confirmation_pdf_url": confirmation_pdf_url,
        "vignette_id": vignette_id,
        "error": error,
        "amount": amount,
        "currency": currency,
        "refused_amount": refused_amount,
        "provider_event_id": provider_event_id,
    }


def cause_of(event: CanonicalEvent) -> dict[str, Any]:
    """The ChangeCause record naming this event."""
    return {
        "event_id": event["event_id"],
        "delivery_id": event["delivery_id"],
        "source": event["source"],
        "kind": event["kind"],
        "type": event["type"],
        "received_at": event["received_at"],
        "provider_event_type": event["provider_event_type"],
    }
