"""The transaction side of the join (stage 3), as pure functions.

Design after Kafka Streams' foreign-key join (KIP-213): table ``transactions``
is keyed by transaction id and co-partitioned with its input topic. It holds
the transaction's payment status and the ids of every order known to belong
to it ("subscriptions": from a checkout's order list, a sale's rows, or an
order event naming its transaction). Whichever side arrives first waits here
or in table ``orders``:

- a status change fans out one ``TransactionUpdate`` to every member order;
- a newly joined order gets the current status at once.

Updates carry the transaction's version, so an order applies each at most
once and never goes back to an older status, whatever the delivery order.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from streams.events import CanonicalEvent, cause_of
from streams.state_rules import Verdict, payment_status_verdict


@dataclass
class TransactionResult:
    record: dict[str, Any]
    updates: list[dict[str, Any]] = field(default_factory=list)
    rejected: tuple[str | None, str] | None = None
    changed: bool = False


def new_transaction(transaction_id: str) -> dict[str, Any]:
    return {
        "transaction_id": transaction_id,
        "payment_status": None,
        "status_received_at": 0,
        "status_event_id": "",
        "version": 0,
        "order_ids": [],
        "status_cause": None,
        "expires_at": 0,
    }


def apply_to_transaction(
    record: dict[str, Any] | None, event: CanonicalEvent, retention_ms: int
) -> TransactionResult:
    """Apply one canonical event (a status, a membership, or both)."""
    transaction_id = event["transaction_id"]
    original = record
    if record is None or record["expires_at"] <= event["received_at"]:
        record = new_transaction(transaction_id)
    else:
        record = dict(record, order_ids=list(record["order_ids"]))
    result = TransactionResult(record)

    status_changed = False
    if event["entity_type"] == "transaction" and event["payment_status"]:
        stamp = (event["received_at"], event["event_id"])
        current = record["payment_status"]
        current_stamp = (record["status_received_at"], record["status_event_id"])
        verdict = payment_status_verdict(current, current_stamp, event["payment_status"], stamp)
        if verdict is Verdict.APPLY:
            record["payment_status"] = event["payment_status"]
            record["version"] += 1
            record["status_cause"] = cause_of(event)
            status_changed = True
        elif verdict is Verdict.REJECT:
            result.rejected = (current, event["payment_status"])
        # The stamp is the arrival of the status now held: taken on every
        # change, and moved on by a later repeat of the same status.
        if verdict is Verdict.APPLY or (verdict is Verdict.SAME and stamp > current_stamp):
            record["status_received_at"], record["status_event_id"] = stamp

    members = event["order_ids"] if event["entity_type"] == "transaction" else [event["order_id"]]
    joined = [order_id for order_id in members if order_id and order_id not in record["order_ids"]]
    record["order_ids"].extend(joined)

    if status_changed:
        targets = record["order_ids"]
    elif joined and record["payment_status"] is not None:
        targets = joined
    else:
        targets = []
    cause = cause_of(event)
    result.updates = [
        {
            "order_id": order_id,
            "transaction_id": transaction_id,
            "payment_status": record["payment_status"],
            "transaction_version": record["version"],
            "cause": cause,
        }
        for order_id in targets
    ]

    record["expires_at"] = max(record["expires_at"], event["received_at"] + retention_ms)
    result.changed = record != original
    return result
