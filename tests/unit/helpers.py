"""Small builders shared by the unit tests (no Kafka, no network)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from hookline.core.events import (
    ORDER_STATUS_CHANGED,
    TRANSACTION_STATUS_CHANGED,
    CanonicalEvent,
    DeliveryContext,
    new_event,
)
from hookline.core.sources import Source

MAIN = Path(__file__).resolve().parents[2]
PAYLOADS = MAIN / "tests" / "fixtures" / "payloads"
SCHEMAS = MAIN / "schemas"
INFRA = MAIN / "infra"

#: 2026-11-21T10:00:00Z, a plausible gateway clock for the example payloads.
T0 = 1_795_255_200_000
#: Long enough that nothing expires unless a test wants it to.
RETENTION = 30 * 24 * 3600 * 1000


def payload_bytes(name: str) -> bytes:
    """An example body (tests/fixtures/payloads, a copy of the spec's), byte for byte."""
    return (PAYLOADS / name).read_bytes()


def payload(name: str) -> dict[str, Any]:
    return json.loads(payload_bytes(name))


def iso_ms(text: str) -> int:
    """Milliseconds of an ISO-8601 UTC timestamp written with a trailing Z."""
    return int(datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC).timestamp()) * 1000


def source(
    name: str = "src",
    kind: str = "partner",
    verify: str = "token",
    secrets: tuple[bytes, ...] = (),
    environment: str = "production",
    **extra: Any,
) -> Source:
    return Source(
        name=name,
        kind=kind,  # type: ignore[arg-type]
        environment=environment,  # type: ignore[arg-type]
        verify=verify,  # type: ignore[arg-type]
        secrets=secrets,
        **extra,
    )


def ctx(
    delivery_id: str = "d-1",
    received_at: int = T0,
    kind: str = "partner",
    source_name: str = "src",
    environment: str = "production",
) -> DeliveryContext:
    return DeliveryContext(
        delivery_id=delivery_id,
        source=source_name,
        kind=kind,
        environment=environment,
        received_at=received_at,
    )


def tx_event(
    transaction_id: str,
    status: str | None,
    received_at: int,
    orders: tuple[str, ...] = (),
    delivery_id: str | None = None,
) -> CanonicalEvent:
    """A transaction.status_changed event (a checkout, sale or payment notification)."""
    return new_event(
        ctx(delivery_id or f"tx-{transaction_id}-{status}-{received_at}", received_at),
        0,
        TRANSACTION_STATUS_CHANGED,
        "transaction",
        transaction_id,
        transaction_id=transaction_id,
        order_ids=list(orders),
        payment_status=status,
    )


def order_event(
    order_id: str,
    received_at: int,
    *,
    status: str | None = None,
    transaction_id: str | None = None,
    pdf: str | None = None,
    vignette: str | None = None,
    delivery_id: str | None = None,
    type: str = ORDER_STATUS_CHANGED,
) -> CanonicalEvent:
    """An order event; every field it does not set is None."""
    return new_event(
        ctx(delivery_id or f"ord-{order_id}-{received_at}", received_at),
        0,
        type,
        "order",
        order_id,
        order_id=order_id,
        transaction_id=transaction_id,
        order_status=status,
        confirmation_pdf_url=pdf,
        vignette_id=vignette,
    )
