"""A worker whose partner adapter is changed, to test ``redrive`` and ``replay`` after a "fix".

    python -m tests.support.patched_worker MODE worker --web-port N

MODE:
- ``knows-approved``: the fixed adapter. It also maps the (invented) partner
  event type ``ORDER_APPROVED`` to an ``order.status_changed`` with status
  ACTIVE; the stock adapter dead-letters it as an unknown event_type.
- ``wrong-pdf``: a buggy adapter. ``ORDER_CONFIRMATION_RECEIVED`` maps to a
  wrong ``confirmation_pdf_url`` (``WRONG_PDF_PREFIX`` + the order id).

The patch wraps ``hookline.core.adapters.partner.to_events``; the worker finds the
adapter module through ``hookline.core.adapters.ADAPTERS`` and calls the attribute
at each delivery, so the rest of the pipeline runs unchanged.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

from hookline.core.adapters import partner
from hookline.core.adapters.fields import required_text
from hookline.core.events import ORDER_STATUS_CHANGED, CanonicalEvent, DeliveryContext, new_event

APPROVED = "ORDER_APPROVED"
WRONG_PDF_PREFIX = "https://wrong.example.com/"

ToEvents = Callable[[dict[str, Any], DeliveryContext], list[CanonicalEvent]]


def knows_approved(original: ToEvents) -> ToEvents:
    def to_events(document: dict[str, Any], ctx: DeliveryContext) -> list[CanonicalEvent]:
        if document.get("event_type") != APPROVED:
            return original(document, ctx)
        order_id = required_text(document, "order_id")
        return [
            new_event(
                ctx,
                0,
                ORDER_STATUS_CHANGED,
                "order",
                order_id,
                order_id=order_id,
                order_status="ACTIVE",
                provider_event_type=APPROVED,
            )
        ]

    return to_events


def wrong_pdf(original: ToEvents) -> ToEvents:
    def to_events(document: dict[str, Any], ctx: DeliveryContext) -> list[CanonicalEvent]:
        events = original(document, ctx)
        for event in events:
            if event["confirmation_pdf_url"]:
                event["confirmation_pdf_url"] = WRONG_PDF_PREFIX + str(event["order_id"])
        return events

    return to_events


MODES: dict[str, Callable[[ToEvents], ToEvents]] = {
    "knows-approved": knows_approved,
    "wrong-pdf": wrong_pdf,
}


def main(argv: list[str]) -> int:
    mode, *rest = argv
    partner.to_events = MODES[mode](partner.to_events)  # type: ignore[assignment]
    from hookline.cli import main as hookline_main

    return hookline_main(rest)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
