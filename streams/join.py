"""The transaction side of the join (the transactions stage), as pure functions.

Design after Kafka Streams' foreign-key join (KIP-213): table ``transactions``
is keyed by transaction id and co-partitioned with its input topic. It holds
the transaction's payment status and its member orders ("subscriptions":
from a checkout's order list, a sale's rows, or an order event naming its
transaction), each with the stamp of the first fact that linked it.
Whichever side arrives first waits here or in table ``orders``:

- a status change fans out one ``TransactionUpdate`` to every member order;
- a newly joined order gets the current status at once.

An update carries the status with the stamp (arrival time, event id) of the
fact that set it, and the cause naming that fact's delivery. Orders apply the
payment rules to the stamps themselves, so they never depend on this
record's history: when the record expires (after the join retention) and a
status comes back later, it is applied like any other. A SUCCEEDED keeps
the stamp of its earliest delivery (the first-success rule, PRODUCT.md
section 4): an earlier copy learnt later moves it back and fans out again.

A status the rules refuse (``payment_regression``) fans out too, as updates
marked ``rejected``: each member order publishes it as its own rejected fact,
once, and applies nothing (docs/consumers.md, "Rejected facts").
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hookline.core.events import CanonicalEvent, cause_of
from hookline.streams.state_rules import Verdict, payment_status_verdict

#: Members one transaction keeps (a checkout lists at most 1000 orders).
MAX_MEMBERS = 1000


@dataclass
class TransactionResult:
    record: dict[str, Any]
    updates: list[dict[str, Any]] = field(default_factory=list)
    rejected: tuple[str | None, str] | None = None
    changed: bool = False
    #: Orders this event named that the transaction could not take: it already
    #: has ``MAX_MEMBERS``. The stage dead-letters the fact (docs/design.md,
    #: "No delivery stops the pipeline").
    unjoined: list[str] = field(default_factory=list)


def new_transaction(transaction_id: str) -> dict[str, Any]:
    return {
        "transaction_id": transaction_id,
        "payment_status": None,
        "status_received_at": 0,
        "status_event_id": "",
        "version": 0,
        "order_ids": [],
        "members": [],
        "status_cause": None,
        "expires_at": 0,
    }


def _working_copy(record: dict[str, Any] | None, transaction_id: str, now: int) -> dict[str, Any]:
    if record is None or record["expires_at"] <= now:
        return new_transaction(transaction_id)
    members = [dict(member) for member in record["members"]]
    if record["order_ids"]:  # release 1: members without stamps
        known = {member["order_id"] for member in members}
        members += [
            {"order_id": order_id, "claimed_received_at": 0, "claimed_event_id": ""}
            for order_id in record["order_ids"]
            if order_id not in known
        ]
    return dict(record, members=members, order_ids=[])


def apply_to_transaction(
    record: dict[str, Any] | None, event: CanonicalEvent, retention_ms: int
) -> TransactionResult:
    """Apply one canonical event (a status, a membership, or both)."""
    transaction_id = event["transaction_id"]
    work = _working_copy(record, transaction_id, event["received_at"])
    result = TransactionResult(work)
    stamp = (event["received_at"], event["event_id"])

    status_changed = False
    refused: list[dict[str, Any]] = []
    if event["entity_type"] == "transaction" and event["payment_status"]:
        current = work["payment_status"]
        current_stamp = (work["status_received_at"], work["status_event_id"])
        verdict = payment_status_verdict(current, current_stamp, event["payment_status"], stamp)
        earlier_success = (
            verdict is Verdict.SAME and current == "SUCCEEDED" and stamp < current_stamp
        )
        if verdict is Verdict.APPLY or earlier_success:
            work["payment_status"] = event["payment_status"]
            work["version"] += 1
            work["status_cause"] = cause_of(event)
            status_changed = True
        elif verdict is Verdict.REJECT:
            result.rejected = (current, event["payment_status"])
            refused = [_refused(work, member, event) for member in work["members"]]
        # The stamp is the arrival of the status now held: taken on every
        # change, moved on by a later repeat of the same status, and moved
        # back by an earlier success.
        later_repeat = verdict is Verdict.SAME and current != "SUCCEEDED" and stamp > current_stamp
        if verdict is Verdict.APPLY or earlier_success or later_repeat:
            work["status_received_at"], work["status_event_id"] = stamp

    named = event["order_ids"] if event["entity_type"] == "transaction" else [event["order_id"]]
    restamped = _join(work, [order_id for order_id in named if order_id], stamp, result.unjoined)

    if status_changed:
        targets = work["members"]
    elif work["payment_status"] is not None:
        targets = restamped
    else:
        targets = []
    result.updates = [_update(work, member) for member in targets] + refused
    work["expires_at"] = max(work["expires_at"], event["received_at"] + retention_ms)
    result.changed = work != record
    return result


def _join(
    work: dict[str, Any], order_ids: list[str], stamp: tuple[int, str], unjoined: list[str]
) -> list[dict]:
    """Add members (or move their claim to an earlier stamp); return those that changed.

    Past ``MAX_MEMBERS`` an order is not added: it goes to ``unjoined``.
    """
    by_id = {member["order_id"]: member for member in work["members"]}
    changed = []
    for order_id in order_ids:
        member = by_id.get(order_id)
        if member is None:
            if len(work["members"]) >= MAX_MEMBERS:
                unjoined.append(order_id)
                continue
            member = {
                "order_id": order_id,
                "claimed_received_at": stamp[0],
                "claimed_event_id": stamp[1],
            }
            work["members"].append(member)
            by_id[order_id] = member
        elif stamp < (member["claimed_received_at"], member["claimed_event_id"]):
            member["claimed_received_at"], member["claimed_event_id"] = stamp
        else:
            continue
        changed.append(member)
    return changed


def _update(work: dict[str, Any], member: dict[str, Any]) -> dict[str, Any]:
    return {
        "order_id": member["order_id"],
        "transaction_id": work["transaction_id"],
        "payment_status": work["payment_status"],
        "transaction_version": work["version"],
        "status_received_at": work["status_received_at"],
        "status_event_id": work["status_event_id"],
        "claimed_received_at": member["claimed_received_at"],
        "claimed_event_id": member["claimed_event_id"],
        # The delivery that carried the payment fact, also when the order joins later.
        "cause": work["status_cause"],
        "rejected": False,
    }


def _refused(work: dict[str, Any], member: dict[str, Any], event: CanonicalEvent) -> dict[str, Any]:
    """The update telling a member order that its transaction refused this status."""
    return {
        "order_id": member["order_id"],
        "transaction_id": work["transaction_id"],
        "payment_status": event["payment_status"],
        "transaction_version": work["version"],
        "status_received_at": event["received_at"],
        "status_event_id": event["event_id"],
        "claimed_received_at": member["claimed_received_at"],
        "claimed_event_id": member["claimed_event_id"],
        "cause": cause_of(event),
        "rejected": True,
    }
