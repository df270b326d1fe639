"""Subscription-platform webhooks: a common envelope {id, type, data}.

Seed: ../shared/seeds/003_d8ddfd5f4ce2da31.txt (it names the event types but
not their data). Assumed shapes: ../shared/spec/payloads/envelope-*.json.
Every assumption about this provider's payload lives in this file.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from hookline.core import content_key
from hookline.core.adapters import money
from hookline.core.adapters.fields import Unmappable, required_text, text, timestamp_ms
from hookline.core.events import ORDER_REFUNDED, CanonicalEvent, DeliveryContext, new_event

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


def dedup_identity(document: dict[str, Any], ignore: Sequence[str]) -> tuple[str, str]:
    """(dedup key, content digest): the provider's own id, stable across its retries.

    The digest tells a retry (same id, same content) from a conflict (same
    id, other content), which is dead-lettered rather than dropped.
    """
    return "id:" + required_text(document, "id"), content_key.digest(document, ignore)


def ordering_key(document: dict[str, Any]) -> str:
    """The envelope id: every copy of one id, retry or conflict, meets in one partition.

    (The refunded order's own events may be on another partition; the order
    state rules for refunds do not depend on arrival order.)
    """
    return str(document.get("id"))


def to_events(document: dict[str, Any], ctx: DeliveryContext) -> list[CanonicalEvent]:
    envelope_id = required_text(document, "id")
    event_type = required_text(document, "type", limit=100)
    data = document.get("data")
    if not isinstance(data, dict):
        raise Unmappable("'data' must be an object")
    occurred_at = timestamp_ms(document.get("created_at"))
    order_id = text(data, "order_id", required=False)
    # The envelope id names the provider's event: a refund counts once per
    # (source, id) for the order's whole life, also after the dedup window.
    common: dict[str, Any] = {
        "provider_event_type": event_type,
        "occurred_at": occurred_at,
        "provider_event_id": envelope_id,
    }
    if event_type in REFUNDING_TYPES:
        # Assumed (payloads/envelope-refund.json): data.amount and data.currency;
        # no amount means the whole order is refunded. An amount out of range
        # is refused (kept as text for its rejected fact), never a full refund.
        refunded, refused = money.priced(data.get("amount"), "'data.amount'")
        common.update(
            amount=refunded,
            refused_amount=refused,
            currency=money.currency(data.get("currency"), "'data.currency'"),
        )

    if event_type in REFUNDING_TYPES and order_id:
        return [new_event(ctx, 0, ORDER_REFUNDED, "order", order_id, order_id=order_id, **common)]
    subscription_id = text(data, "subscription_id", required=False)
    entity_type, entity_id = (
        ("subscription", subscription_id) if subscription_id else ("other", envelope_id)
    )
    # Every other type only informs: a canonical event, no state change (a
    # refund naming no order keeps its amount on the event).
    return [new_event(ctx, 0, f"envelope.{event_type}", entity_type, entity_id, **common)]
