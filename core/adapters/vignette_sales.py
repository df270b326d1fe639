"""Vignette-sales reports (one sale, several vignette rows).

Seed: ../shared/seeds/001_ff8018f59e0cfafd.txt. Example bodies:
../shared/spec/payloads/vignette-sales-*.json.
Every assumption about this provider's payload lives in this file.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from hookline.core import content_key
from hookline.core.adapters import money
from hookline.core.adapters.fields import (
    MAX_TEXT,
    Unmappable,
    items,
    obj,
    required_text,
    text,
    timestamp_ms,
)
from hookline.core.events import (
    ORDER_STATUS_CHANGED,
    TRANSACTION_STATUS_CHANGED,
    CanonicalEvent,
    DeliveryContext,
    new_event,
)

KIND = "vignette-sales"


def envelope_problem(document: dict[str, Any]) -> str | None:
    if not isinstance(document.get("saleId"), str) or not isinstance(
        document.get("vignetteSale"), dict
    ):
        return "vignette-sales webhooks carry 'saleId' and a 'vignetteSale' object"
    return None


def dedup_identity(document: dict[str, Any], ignore: Sequence[str]) -> tuple[str, str]:
    """(dedup key, content digest): a retried report has the same JSON content."""
    content = content_key.digest(document, ignore)
    return "json:" + content, content


def ordering_key(document: dict[str, Any]) -> str:
    return str(document.get("saleId"))


def to_events(document: dict[str, Any], ctx: DeliveryContext) -> list[CanonicalEvent]:
    sale_id = required_text(document, "saleId")
    sale = obj(document, "vignetteSale")
    success = sale.get("success")
    if success is False:
        error = sale.get("error") if isinstance(sale.get("error"), dict) else {}
        return [
            new_event(
                ctx,
                0,
                TRANSACTION_STATUS_CHANGED,
                "transaction",
                sale_id,
                provider_event_type="sale.failed",
                transaction_id=sale_id,
                payment_status="FAILED",
                error={
                    "code": text(error, "code", required=False),
                    "message": text(error, "message", limit=MAX_TEXT, required=False),
                },
            )
        ]
    if success is not True:
        raise Unmappable("'vignetteSale.success' must be true or false")

    data = obj(sale, "data")
    occurred_at = timestamp_ms(data.get("createdOn"))
    sale_vignette = text(document, "vignetteId", required=False)
    rows = []
    for row in items(data, "saleRows"):
        if not isinstance(row, dict):
            raise Unmappable("'saleRows' entries must be objects")
        kapsch = row.get("kapschProperties")
        kapsch = kapsch if isinstance(kapsch, dict) else {}
        vignette_id = text(kapsch, "id", required=False)
        row_id = required_text(row, "id")
        # The row's price: kapschProperties.price {currency, amount} (seed 001's example).
        price = kapsch.get("price") if isinstance(kapsch.get("price"), dict) else {}
        rows.append(
            (
                row_id,
                "ACTIVE" if row.get("active") is True else "PENDING",
                vignette_id or sale_vignette,
                # Out of range: refused for this row alone (money.priced).
                *money.priced(price.get("amount"), f"price of row {row_id[:64]!r}"),
                money.currency(price.get("currency"), f"currency of row {row_id[:64]!r}"),
            )
        )
    order_ids = list(dict.fromkeys(row[0] for row in rows))
    events = [
        new_event(
            ctx,
            0,
            TRANSACTION_STATUS_CHANGED,
            "transaction",
            sale_id,
            provider_event_type="sale.succeeded",
            occurred_at=occurred_at,
            transaction_id=sale_id,
            order_ids=order_ids,
            payment_status="SUCCEEDED",
        )
    ]
    for index, (order_id, status, vignette_id, price, refused, currency) in enumerate(
        rows, start=1
    ):
        events.append(
            new_event(
                ctx,
                index,
                ORDER_STATUS_CHANGED,
                "order",
                order_id,
                provider_event_type="sale.row",
                occurred_at=occurred_at,
                order_id=order_id,
                transaction_id=sale_id,
                order_status=status,
                vignette_id=vignette_id,
                amount=price,
                currency=currency if price is not None or refused is not None else None,
                refused_amount=refused,
            )
        )
    return events
