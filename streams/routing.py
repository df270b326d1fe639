"""Which topics a canonical event goes to (pure, so tests route exactly like the worker).

- ``events``: every event, keyed by its entity (the public event stream);
- ``order_inputs``: every event about an order, keyed by the order;
- ``transaction_facts``: a transaction's own events, and order events that
  name a transaction (membership), keyed by the transaction, unless a
  transaction event of the same delivery already lists that order.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Literal

from hookline.core.events import CanonicalEvent

Destination = Literal["events", "order_inputs", "transaction_facts"]


def routes(events: list[CanonicalEvent]) -> Iterator[tuple[Destination, str, CanonicalEvent]]:
    """(destination, key, event) for every record one delivery's events produce."""
    covered = {
        (event["transaction_id"], order_id)
        for event in events
        if event["entity_type"] == "transaction"
        for order_id in event["order_ids"]
    }
    for event in events:
        yield "events", event["entity_id"], event
        if event["order_id"]:
            yield "order_inputs", event["order_id"], event
        transaction_id = event["transaction_id"]
        if transaction_id and (transaction_id, event["order_id"]) not in covered:
            yield "transaction_facts", transaction_id, event
