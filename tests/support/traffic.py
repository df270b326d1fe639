"""Provider bodies shaped like the spec's examples (tests/fixtures/payloads), for any ids.

Bodies are built from the example files so a change there shows up here.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

from hookline.core.sources import Source
from hookline.gateway.envelope import new_delivery_id, raw_envelope
from hookline.schemas import codec

from tests.support.signing import payload


def _example(name: str) -> dict[str, Any]:
    return json.loads(payload(name))


def unique(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:10]}"


def dumps(document: dict[str, Any]) -> bytes:
    return json.dumps(document, separators=(",", ":")).encode()


def order_status(order_id: str, status: str, transaction_id: str | None = None) -> bytes:
    doc = _example("partner-order-status.json")
    doc.update(order_id=order_id, status=status)
    if transaction_id is None:
        doc.pop("transaction_id")
    else:
        doc["transaction_id"] = transaction_id
    return dumps(doc)


def checkout(transaction_id: str, order_ids: list[str], status: str) -> bytes:
    doc = _example("partner-checkout-multi.json")
    template = doc["orders"][0]
    doc.update(
        transaction_id=transaction_id,
        status=status,
        orders=[dict(template, order_id=order_id) for order_id in order_ids],
    )
    return dumps(doc)


def confirmation(order_id: str, transaction_id: str | None = None) -> bytes:
    doc = _example("partner-order-confirmation.json")
    doc.update(order_id=order_id, pdf_url=pdf_url(order_id))
    if transaction_id is None:
        doc.pop("transaction_id")
    else:
        doc["transaction_id"] = transaction_id
    return dumps(doc)


def pdf_url(order_id: str) -> str:
    return f"https://files.example.com/confirmations/{order_id}.pdf"


def sale_success(sale_id: str, rows: list[tuple[str, bool, str | None]], vignette_id: str) -> bytes:
    """rows: (row id, active, kapsch id or None)."""
    doc = _example("vignette-sales-success.json")
    template = doc["vignetteSale"]["data"]["saleRows"][0]
    sale_rows = []
    for row_id, active, kapsch_id in rows:
        row = json.loads(json.dumps(template))
        row.update(id=row_id, active=active)
        if kapsch_id is None:
            row.pop("kapschProperties")
        else:
            row["kapschProperties"]["id"] = kapsch_id
        sale_rows.append(row)
    doc.update(saleId=sale_id, vignetteId=vignette_id)
    doc["vignetteSale"]["data"].update(id=sale_id, saleRows=sale_rows)
    return dumps(doc)


def sale_failure(sale_id: str) -> bytes:
    doc = _example("vignette-sales-failure.json")
    doc["saleId"] = sale_id
    return dumps(doc)


def payment_claims(transaction_id: str, status: str) -> dict[str, Any]:
    claims = _example("payments-claims.json")
    claims.update(
        orderReference=transaction_id,
        paymentStatus=status,
        event=f"payment.{status}",
        paymentOrderId=str(uuid.uuid5(uuid.NAMESPACE_URL, transaction_id)),
    )
    return claims


def envelope_event(envelope_id: str, type_: str, data: dict[str, Any]) -> bytes:
    doc = _example("envelope-refund.json")
    doc.update(id=envelope_id, type=type_, data=data)
    return dumps(doc)


def raw_record(
    source: Source, body: bytes, received_at_ms: int | None = None
) -> tuple[bytes, bytes]:
    """(key, value) of a ``<env>.webhooks.raw`` record, as the gateway would write it."""
    at = int(time.time() * 1000) if received_at_ms is None else received_at_ms
    delivery_id = new_delivery_id(at)
    envelope = raw_envelope(
        source, body, {"content-type": "application/json"}, "127.0.0.1", at, delivery_id
    )
    return delivery_id.encode(), codec.encode(codec.WEBHOOK_ENVELOPE, envelope)
