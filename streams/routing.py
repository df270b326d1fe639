"""Which topics a canonical event goes to (pure, so tests route exactly like the worker).

- ``events``: every event, keyed by its entity (the public event stream);
- ``order_inputs``: every event about an order, keyed by the order;
- ``transaction_facts``: a transaction's own events, and order events that
  name a transaction (membership), keyed by the transaction, unless a
  transaction event of the same delivery already lists that order, or the
  order's own record shows the transaction already has it (:func:`known_member`).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
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


#: A membership the transaction already has is sent again once the order's
#: claim is older than this share of the join retention, to keep renewing
#: the transaction's expiry (docs/design.md, "Memberships sent once").
REFRESH_SHARE = 64


def known_member(
    claims: Mapping[str, tuple[int, str]], event: CanonicalEvent, retention_ms: int
) -> bool:
    """Whether an order event's membership fact would tell its transaction nothing new.

    ``claims``: the order's claims as its record held them before this
    delivery, transaction id to claimed stamp (received_at, event id). True
    when the order already claimed the event's transaction with a strictly
    earlier stamp, not longer than ``retention_ms / REFRESH_SHARE`` before.
    The fact holding a claim's stamp is always sent (it is not earlier than
    itself), so whenever its delivery is processed again after a crash it
    is sent again; a later one only repeats it. A claim without an event id
    (made up when an old record retired) is never taken as known.
    """
    claimed = claims.get(event["transaction_id"] or "")
    if claimed is None or not claimed[1]:
        return False
    stamp = (event["received_at"], event["event_id"])
    return claimed < stamp and stamp[0] - claimed[0] < retention_ms // REFRESH_SHARE
