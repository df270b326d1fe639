"""Where an order's state changes (the orders stage), as pure functions.

Table ``orders`` holds, per order, the published ``OrderState`` plus the
facts behind it, kept so that every input is idempotent and the result does
not depend on the order inputs arrive in:

- ``order_status`` only moves forward (a lower one is rejected and counted);
  refunds that reach the amount, or a refund without an amount, move it to
  REFUNDED;
- ``claims``: every transaction that claimed the order, with its status;
  ``transaction_id`` and ``payment_status`` are resolved from them
  (:func:`streams.state_rules.resolve_payment`), so a re-checkout after a
  failed payment ends SUCCEEDED and a late failure never undoes a success;
- ``refunds``: the refund facts; ``refunded_amount`` is their sum
  (streams/refunds.py), recomputed when the amount arrives;
- ``amount``/``currency``, ``confirmation_pdf_url`` and ``vignette_id`` are
  last-writer-wins by arrival stamp.

A record is never deleted: after the order retention it is *retired*, its
lists folded into the published state, so ``version`` never restarts and
nothing published is forgotten (the ``orders.state`` topic keeps every order
anyway). Every field of a change, ``updated_at`` included, comes from the
inputs, never from the clock, so reprocessing re-emits byte-identical records.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hookline.core.events import CanonicalEvent, cause_of
from hookline.streams.refunds import total
from hookline.streams.state_rules import (
    Verdict,
    newer,
    order_status_verdict,
    payment_status_verdict,
    resolve_payment,
    stamp_of,
)

STATE_FIELDS = (
    "transaction_id",
    "order_status",
    "payment_status",
    "confirmation_pdf_url",
    "vignette_id",
    "amount",
    "currency",
    "refunded_amount",
)
#: Bounds on what one order accumulates; facts past them are rejected and counted.
MAX_CLAIMS = 64
MAX_REFUNDS = 100


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
            "amount": None,
            "currency": None,
            "refunded_amount": None,
        },
        "transaction_version": 0,
        "pdf_received_at": 0,
        "pdf_event_id": "",
        "vignette_received_at": 0,
        "vignette_event_id": "",
        "claims": [],
        "refunds": [],
        "amount_received_at": 0,
        "amount_event_id": "",
        "retired": False,
        "expires_at": 0,
        "outbox": [],
        "written_by": "",
        "input_topic": "",
        "input_offset": -1,
    }


def retire(record: dict[str, Any]) -> dict[str, Any]:
    """Fold an idle order's lists into its published state (after the retention).

    What stays: the published state (so versions go on from it) and one
    claim and one refund summarising it, so a fact arriving years later is
    applied against what consumers last saw.
    """
    state = record["state"]
    stamp = state["updated_at"]
    claims = []
    if state["transaction_id"] is not None:
        claims.append(
            {
                "transaction_id": state["transaction_id"],
                "payment_status": state["payment_status"],
                "status_received_at": stamp,
                "status_event_id": "",
                "status_cause": None,
                "claimed_received_at": stamp,
                "claimed_event_id": "",
            }
        )
    refunds = []
    if state["refunded_amount"] is not None:
        refunds.append(
            {
                "event_id": "retired",
                "amount": state["refunded_amount"],
                "currency": state["currency"],
            }
        )
    return dict(
        record,
        state=dict(state),
        claims=claims,
        refunds=refunds,
        transaction_version=0,
        retired=True,
        expires_at=0,
    )


def _working_copy(
    record: dict[str, Any] | None, order_id: str, environment: str, now: int
) -> dict[str, Any]:
    if record is None:
        return new_order(order_id, environment)
    if not record["retired"] and record["expires_at"] <= now:
        # Expired but not swept yet: read it exactly as the sweep would leave it.
        record = retire(record)
    work = dict(
        record,
        state=dict(record["state"]),
        claims=[dict(claim) for claim in record["claims"]],
        refunds=list(record["refunds"]),
        retired=False,
    )
    if not work["claims"] and work["state"]["transaction_id"] is not None:
        # A release-1 record: its one transaction becomes its one claim.
        work["claims"] = retire(work)["claims"]
    return work


def _claim(
    work: dict[str, Any], transaction_id: str, stamp: tuple[int, str]
) -> dict[str, Any] | None:
    """The order's claim by ``transaction_id``, created or moved to an earlier stamp."""
    for claim in work["claims"]:
        if claim["transaction_id"] == transaction_id:
            if stamp < stamp_of(claim, "claimed"):
                claim["claimed_received_at"], claim["claimed_event_id"] = stamp
            return claim
    if len(work["claims"]) >= MAX_CLAIMS:
        return None
    claim = {
        "transaction_id": transaction_id,
        "payment_status": None,
        "status_received_at": 0,
        "status_event_id": "",
        "status_cause": None,
        "claimed_received_at": stamp[0],
        "claimed_event_id": stamp[1],
    }
    work["claims"].append(claim)
    return claim


def _derive(work: dict[str, Any], result: OrderResult) -> None:
    """Recompute the fields that follow from the facts held (payment, refunds)."""
    state = work["state"]
    state["transaction_id"], state["payment_status"] = resolve_payment(work["claims"])
    refunded = total(work["refunds"], state["amount"], state["currency"])
    state["refunded_amount"] = refunded.refunded_amount
    if refunded.fully_refunded and state["order_status"] != "REFUNDED":
        _set_order_status(state, "REFUNDED", result)


def _set_order_status(state: dict[str, Any], status: str, result: OrderResult) -> None:
    verdict = order_status_verdict(state["order_status"], status)
    if verdict is Verdict.APPLY:
        state["order_status"] = status
    elif verdict is Verdict.REJECT:
        result.rejected.append(("order_status", state["order_status"], status))


def _finish(
    original: dict[str, Any] | None,
    work: dict[str, Any],
    before: dict[str, Any],
    cause: dict[str, Any],
    now: int,
    retention_ms: int,
    result: OrderResult,
) -> OrderResult:
    _derive(work, result)
    state = work["state"]
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
    work["expires_at"] = max(work["expires_at"], now + retention_ms)
    result.record = work
    result.changed = work != original
    return result


def apply_event(
    record: dict[str, Any] | None, event: CanonicalEvent, environment: str, retention_ms: int
) -> OrderResult:
    """Apply an order event (status, confirmation, price, refund, sale row)."""
    now = event["received_at"]
    work = _working_copy(record, event["order_id"], environment, now)
    state = work["state"]
    before = dict(state)
    result = OrderResult(work)
    stamp = (event["received_at"], event["event_id"])

    if event["order_status"]:
        _set_order_status(state, event["order_status"], result)

    if event["transaction_id"] and _claim(work, event["transaction_id"], stamp) is None:
        result.rejected.append(("transaction_id", state["transaction_id"], "claim over limit"))

    for name, prefix in (("confirmation_pdf_url", "pdf"), ("vignette_id", "vignette")):
        value = event[name]
        if value and newer(stamp, stamp_of(work, prefix)):
            state[name] = value
            work[f"{prefix}_received_at"], work[f"{prefix}_event_id"] = stamp

    if event["type"] == "order.refunded":
        fact = {
            "event_id": event["event_id"],
            "amount": event["amount"],
            "currency": event["currency"],
        }
        known = [
            i for i, refund in enumerate(work["refunds"]) if refund["event_id"] == fact["event_id"]
        ]
        if known:
            # The same fact again (reprocessing: no change), or replayed through
            # fixed mapping code (hookline replay): the corrected amount counts.
            work["refunds"][known[0]] = fact
        elif len(work["refunds"]) >= MAX_REFUNDS:
            result.rejected.append(("refunded_amount", None, "refund over limit"))
        else:
            work["refunds"].append(fact)
    elif event["amount"] is not None and newer(stamp, stamp_of(work, "amount")):
        state["amount"], state["currency"] = event["amount"], event["currency"]
        work["amount_received_at"], work["amount_event_id"] = stamp

    return _finish(record, work, before, cause_of(event), now, retention_ms, result)


def apply_update(
    record: dict[str, Any] | None, update: dict[str, Any], environment: str, retention_ms: int
) -> OrderResult:
    """Apply a TransactionUpdate: one transaction's status for this order."""
    cause = update["cause"]
    now = cause["received_at"]
    work = _working_copy(record, update["order_id"], environment, now)
    before = dict(work["state"])
    result = OrderResult(work)

    claimed = (update["claimed_received_at"], update["claimed_event_id"])
    claim = _claim(work, update["transaction_id"], claimed)
    if claim is None:
        result.rejected.append(("transaction_id", before["transaction_id"], "claim over limit"))
        return _finish(record, work, before, cause, now, retention_ms, result)

    status, stamp = (
        update["payment_status"],
        (update["status_received_at"], update["status_event_id"]),
    )
    if status is not None:
        held = claim["payment_status"]
        verdict = payment_status_verdict(held, stamp_of(claim, "status"), status, stamp)
        if verdict is Verdict.APPLY:
            if status == "SUCCEEDED":
                result.conflict = _double_payment(work, update["transaction_id"])
            claim["payment_status"], claim["status_cause"] = status, cause
            claim["status_received_at"], claim["status_event_id"] = stamp
        elif verdict is Verdict.SAME and stamp > stamp_of(claim, "status"):
            claim["status_received_at"], claim["status_event_id"] = stamp

    return _finish(record, work, before, cause, now, retention_ms, result)


def _double_payment(work: dict[str, Any], transaction_id: str) -> str | None:
    """A second transaction succeeding for an order already paid: someone must refund one."""
    paid = [
        claim["transaction_id"]
        for claim in work["claims"]
        if claim["payment_status"] == "SUCCEEDED" and claim["transaction_id"] != transaction_id
    ]
    if not paid:
        return None
    return (
        f"double payment for order {work['state']['order_id']}: "
        f"transactions {', '.join(sorted(paid))} and {transaction_id} both succeeded"
    )
