"""Where an order's state changes (stage 4), as pure functions.

Table ``orders`` holds, per order, the published ``OrderState`` plus the
bookkeeping that makes every input idempotent and order-insensitive:

- ``order_status`` only moves forward (a lower one is rejected and counted);
- ``payment_status`` is the transaction's, applied only from a higher
  transaction version;
- ``confirmation_pdf_url`` and ``vignette_id`` are last-writer-wins by arrival
  stamp, so an older fact re-sent after a newer one changes nothing;
- ``transaction_id`` is set once; a different one later is a conflict (logged,
  counted, not applied).

Every field of a change, ``updated_at`` included, is derived from the inputs,
never from the clock, so reprocessing the same inputs re-emits byte-identical
records.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from streams.events import CanonicalEvent, cause_of
from streams.state_rules import Verdict, newer, order_status_verdict

STATE_FIELDS = (
    "transaction_id",
    "order_status",
    "payment_status",
    "confirmation_pdf_url",
    "vignette_id",
)


@dataclass
class OrderResult:
    record: dict[str, Any]
    change: dict[str, Any] | None = None
    rejected: list[tuple[str, str | None, str]] = field(default_factory=list)
    conflict: str | None = None
    changed: bool = False  # the record must be written (even without a state change)


def new_order(order_id: str, environment: str) -> dict[str, Any]:
    return {
        "state": {
            "order_id": order_id,
            "environment": environment,
            "transaction_id": None,
            "order_status": None,
            "payment_status": None,
            "confirmation_pdf_url": None,
            "vignette_id": None,
            "version": 0,
            "updated_at": 0,
        },
        "transaction_version": 0,
        "pdf_received_at": 0,
        "pdf_event_id": "",
        "vignette_received_at": 0,
        "vignette_event_id": "",
        "expires_at": 0,
    }


def _working_copy(
    record: dict[str, Any] | None, order_id: str, environment: str, now: int
) -> dict[str, Any]:
    if record is None or record["expires_at"] <= now:
        return new_order(order_id, environment)
    return dict(record, state=dict(record["state"]))


def _finish(
    original: dict[str, Any] | None,
    record: dict[str, Any],
    before: dict[str, Any],
    cause: dict[str, Any],
    now: int,
    retention_ms: int,
    result: OrderResult,
) -> OrderResult:
    state = record["state"]
    changed_fields = [name for name in STATE_FIELDS if state[name] != before[name]]
    if changed_fields:
        state["version"] = before["version"] + 1
        state["updated_at"] = max(before["updated_at"], cause["received_at"])
        result.change = {
            "order_id": state["order_id"],
            "environment": state["environment"],
            "version": state["version"],
            "before": before if before["version"] > 0 else None,
            "after": dict(state),
            "changed_fields": changed_fields,
            "cause": cause,
        }
    record["expires_at"] = max(record["expires_at"], now + retention_ms)
    result.record = record
    result.changed = record != original
    return result


def apply_event(
    record: dict[str, Any] | None, event: CanonicalEvent, environment: str, retention_ms: int
) -> OrderResult:
    """Apply an order event (status, confirmation, refund, sale row)."""
    now = event["received_at"]
    work = _working_copy(record, event["order_id"], environment, now)
    state = work["state"]
    before = dict(state)
    result = OrderResult(work)
    stamp = (event["received_at"], event["event_id"])

    if event["order_status"]:
        verdict = order_status_verdict(state["order_status"], event["order_status"])
        if verdict is Verdict.APPLY:
            state["order_status"] = event["order_status"]
        elif verdict is Verdict.REJECT:
            result.rejected.append(("order_status", state["order_status"], event["order_status"]))

    if event["transaction_id"]:
        if state["transaction_id"] is None:
            state["transaction_id"] = event["transaction_id"]
        elif state["transaction_id"] != event["transaction_id"]:
            result.conflict = (
                f"order {state['order_id']} belongs to {state['transaction_id']}, "
                f"event {event['event_id']} says {event['transaction_id']}"
            )

    for name, prefix in (("confirmation_pdf_url", "pdf"), ("vignette_id", "vignette")):
        value = event[name]
        if value and newer(stamp, (work[f"{prefix}_received_at"], work[f"{prefix}_event_id"])):
            state[name] = value
            work[f"{prefix}_received_at"], work[f"{prefix}_event_id"] = stamp

    return _finish(record, work, before, cause_of(event), now, retention_ms, result)


def apply_update(
    record: dict[str, Any] | None, update: dict[str, Any], environment: str, retention_ms: int
) -> OrderResult:
    """Apply a TransactionUpdate from the transaction side of the join."""
    now = update["cause"]["received_at"]
    work = _working_copy(record, update["order_id"], environment, now)
    state = work["state"]
    before = dict(state)
    result = OrderResult(work)

    linked = state["transaction_id"]
    if linked is not None and linked != update["transaction_id"]:
        result.conflict = (
            f"order {state['order_id']} belongs to {linked}, "
            f"transaction {update['transaction_id']} claims it"
        )
    elif update["transaction_version"] > work["transaction_version"]:
        work["transaction_version"] = update["transaction_version"]
        state["transaction_id"] = update["transaction_id"]
        state["payment_status"] = update["payment_status"]

    return _finish(record, work, before, update["cause"], now, retention_ms, result)
