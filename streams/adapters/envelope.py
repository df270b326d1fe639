"""Subscription-platform webhooks: a common envelope {id, type, data}.

Seed: ../shared/seeds/003_d8ddfd5f4ce2da31.txt (it names the event types but
not their data). Assumed shapes: ../shared/spec/payloads/envelope-*.json.
Every assumption about this provider's payload lives in this file.
"""

from __future__ import annotations

from typing import Any

from streams.adapters.fields import Unmappable, required_text, text, timestamp_ms
from streams.events import ORDER_REFUNDED, CanonicalEvent, DeliveryContext, new_event

KIND = "envelope"

#: Types that refund an order when their data names one (PRODUCT.md section 4).
REFUNDING_TYPES = frozenset({"subscription_event_refund", "subscription_manual_chargeback"})


def envelope_problem(document: dict[str, Any]) -> str | None:
    if (
        not isinstance(document.get("id"), str)
        or not isinstance(document.get("type"), str)
        or not isinstance(document.get("data"), dict)
    ):
        return "envelope webhooks carry string 'id' and 'type' and a 'data' object"
    return None


def dedup_key(document: dict[str, Any], body: bytes) -> str:
    # The provider's own id is stable across its retries.
    return "id:" + required_text(document, "id")


def ordering_key(document: dict[str, Any]) -> str:
    """The refunded order when there is one (so it follows that order's other events)."""
    data = document.get("data")
    order_id = data.get("order_id") if isinstance(data, dict) else None
    return order_id if isinstance(order_id, str) and order_id else str(document.get("id"))


def to_events(document: dict[str, Any], ctx: DeliveryContext) -> list[CanonicalEvent]:
    envelope_id = required_text(document, "id")
    event_type = required_text(document, "type", limit=100)
    data = document.get("data")
    if not isinstance(data, dict):
        raise Unmappable("'data' must be an object")
    occurred_at = timestamp_ms(document.get("created_at"))
    order_id = text(data, "order_id", required=False)
    common = {"provider_event_type": event_type, "occurred_at": occurred_at}

    if event_type in REFUNDING_TYPES and order_id:
        return [
            new_event(
                ctx,
                0,
                ORDER_REFUNDED,
                "order",
                order_id,
                order_id=order_id,
                order_status="REFUNDED",
                **common,
            )
        ]
    subscription_id = text(data, "subscription_id", required=False)
    entity_type, entity_id = (
        ("subscription", subscription_id) if subscription_id else ("other", envelope_id)
    )
    # Every other type only informs: a canonical event, no state change.
    return [new_event(ctx, 0, f"envelope.{event_type}", entity_type, entity_id, **common)]
