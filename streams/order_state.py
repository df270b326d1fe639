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
- ``refunds``: the refund facts, one per provider refund for the order's
  whole life; ``refunded_amount`` is their sum (streams/refunds.py),
  recomputed when the amount arrives;
- ``amount``/``currency``, ``confirmation_pdf_url`` and ``vignette_id`` are
  last-writer-wins by arrival stamp; an amount out of range is refused.

A fact the rules refuse is returned as data, a ``RejectedFact``
(PRODUCT.md section 3; docs/consumers.md, "Rejected facts"), once: its key
goes into ``rejected_facts`` (bounded), and a key already there is not
rejected again, however often the delivery comes back.

A record is never deleted: after the order retention it is *retired*, its
claims folded into the published state (refunds and rejected-fact keys are
kept), so ``version`` never restarts and nothing published is forgotten or
counted twice. Every field of a change or a rejected fact, ``updated_at`` and
``rejected_at`` included, comes from the inputs, never from the clock, so
reprocessing re-emits byte-identical records.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hookline.core.events import ORDER_REFUNDED, CanonicalEvent, cause_of
from hookline.streams.refunds import overflows, refund_id, same_refund, total
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
#: Keys of published rejected facts one order remembers (the oldest go first).
MAX_REJECTED = 64

#: ``RejectedFact.rule`` (PRODUCT.md section 3).
STATUS_REGRESSION = "status_regression"
PAYMENT_REGRESSION = "payment_regression"
DOUBLE_PAYMENT = "double_payment"
REFUND_OTHER_CURRENCY = "refund_other_currency"
MONEY_OUT_OF_RANGE = "money_out_of_range"


@dataclass(frozen=True)
class Rejection:
    """A fact the rules refused: ``fact`` is the RejectedFact to publish.

    ``fact`` is None for a bound reached (too many claims or refunds): counted
    and logged, not one of the contract's rules. ``held`` is what the state
    holds instead (for the metric's labels); ``counted`` is False when
    another stage already counted it (a payment status its transaction refused).
    """

    field: str
    held: str | None
    value: str
    fact: dict[str, Any] | None
    counted: bool = True


@dataclass
class OrderResult:
    record: dict[str, Any]
    change: dict[str, Any] | None = None
    rejected: list[Rejection] = field(default_factory=list)
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
        "rejected_facts": [],
        "retired": False,
        "expires_at": 0,
        "outbox": [],
        "written_by": "",
        "input_topic": "",
        "input_offset": -1,
    }


def retire(record: dict[str, Any]) -> dict[str, Any]:
    """Fold an idle order's claims into its published state (after the retention).

    What stays: the published state (so versions go on from it), the claim
    that names its transaction, every refund fact (bounded by MAX_REFUNDS:
    with their ids, amounts and currencies, so a refund sent or replayed
    again never counts twice and a price arriving later is checked against
    each) and the keys of rejected facts already published.
    """
    state = record["state"]
    claims = []
    if state["transaction_id"] is not None:
        held = [c for c in record["claims"] if c["transaction_id"] == state["transaction_id"]]
        if held:
            claims.append(dict(held[0]))
        else:  # a release-1 record: no claims, only the published transaction
            stamp = state["updated_at"]
            claims.append(
                {
                    "transaction_id": state["transaction_id"],
                    "payment_status": state["payment_status"],
                    "status_received_at": stamp,
                    "status_event_id": "",
                    "status_cause": None,
                    "claimed_received_at": stamp,
                    "claimed_event_id": "",
                    "rejected": False,
                }
            )
    return dict(
        record,
        state=dict(state),
        claims=claims,
        refunds=[dict(refund) for refund in record["refunds"]],
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
        refunds=[dict(refund) for refund in record["refunds"]],
        rejected_facts=list(record["rejected_facts"]),
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
        "rejected": False,
    }
    work["claims"].append(claim)
    return claim


def _reject(
    work: dict[str, Any],
    result: OrderResult,
    rule: str,
    field_name: str,
    held: str | None,
    value: str,
    cause: dict[str, Any],
    now: int,
    key: str,
    counted: bool = True,
    item: dict[str, Any] | None = None,
) -> None:
    """Refuse a fact: a RejectedFact for ``result``, unless it was published already.

    The key (rule and what identifies the fact) goes into ``rejected_facts``,
    which keeps the newest MAX_REJECTED: a fact that comes again (a retried
    or replayed delivery) is refused silently. A fact derived from what the
    order holds (a claim's double payment, a refund in another currency) is
    recomputed on every input, so it is also marked on that ``item`` (a
    claim or refund, as bounded as those lists), which no key eviction undoes.
    """
    key = f"{rule}|{key}"
    if key in work["rejected_facts"] or (item is not None and item["rejected"]):
        return
    if item is not None:
        item["rejected"] = True
    work["rejected_facts"] = [*work["rejected_facts"], key][-MAX_REJECTED:]
    fact = {
        "order_id": work["state"]["order_id"],
        "field": field_name,
        "value": value,
        "rule": rule,
        "cause": cause,
        "rejected_at": now,
    }
    result.rejected.append(Rejection(field_name, held, value, fact, counted))


def _over_limit(result: OrderResult, field_name: str, held: str | None, what: str) -> None:
    result.rejected.append(Rejection(field_name, held, what, None))


def _derive(work: dict[str, Any], result: OrderResult, cause: dict[str, Any], now: int) -> None:
    """Recompute the fields that follow from the facts held (payment, refunds)."""
    state = work["state"]
    claims = work["claims"]
    state["transaction_id"], state["payment_status"] = resolve_payment(claims)
    if len(claims) > 1:
        _double_payments(work, result, cause, now)
    if not work["refunds"]:  # nearly every order
        state["refunded_amount"] = None
        return
    refunded = total(work["refunds"], state["amount"], state["currency"])
    state["refunded_amount"] = refunded.refunded_amount
    if refunded.fully_refunded and state["order_status"] != "REFUNDED":
        _set_order_status(work, "REFUNDED", result, cause, now)
    for refund in refunded.foreign:
        _reject(
            work,
            result,
            REFUND_OTHER_CURRENCY,
            "refunded_amount",
            state["currency"],
            f"{refund['amount']} {refund['currency']}",
            refund["cause"] or cause,
            now,
            refund["refund_id"] or refund["event_id"],
            item=refund,
        )


def _double_payments(
    work: dict[str, Any], result: OrderResult, cause: dict[str, Any], now: int
) -> None:
    """Every success after the first (by its earliest arrival) is a double payment.

    PRODUCT.md section 4, "Several transactions per order": the order keeps
    the first; each later one is rejected once, named with the first, so
    someone can refund it. A function of the set of claims: an earlier
    success learnt later makes the one held so far the double payment.
    """
    succeeded = sorted(
        (c for c in work["claims"] if c["payment_status"] == "SUCCEEDED"),
        key=lambda c: (stamp_of(c, "status"), c["transaction_id"]),
    )
    if len(succeeded) < 2:
        return
    first = succeeded[0]["transaction_id"]
    for claim in succeeded[1:]:
        later = claim["transaction_id"]
        before = len(result.rejected)
        _reject(
            work,
            result,
            DOUBLE_PAYMENT,
            "transaction_id",
            first,
            f"{later} after {first}",
            claim["status_cause"] or cause,
            now,
            later,
            item=claim,
        )
        if len(result.rejected) > before:
            result.conflict = (
                f"double payment for order {work['state']['order_id']}: transaction "
                f"{later} succeeded after {first}, which paid it"
            )


def _set_order_status(
    work: dict[str, Any], status: str, result: OrderResult, cause: dict[str, Any], now: int
) -> None:
    state = work["state"]
    verdict = order_status_verdict(state["order_status"], status)
    if verdict is Verdict.APPLY:
        state["order_status"] = status
    elif verdict is Verdict.REJECT:
        _reject(
            work,
            result,
            STATUS_REGRESSION,
            "order_status",
            state["order_status"],
            status,
            cause,
            now,
            f"order_status|{status}",
        )


def _finish(
    original: dict[str, Any] | None,
    work: dict[str, Any],
    before: dict[str, Any],
    cause: dict[str, Any],
    now: int,
    retention_ms: int,
    result: OrderResult,
) -> OrderResult:
    _derive(work, result, cause, now)
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
    cause = cause_of(event)

    if event["order_status"]:
        _set_order_status(work, event["order_status"], result, cause, now)

    if event["transaction_id"] and _claim(work, event["transaction_id"], stamp) is None:
        _over_limit(result, "transaction_id", state["transaction_id"], "claim over limit")

    for name, prefix in (("confirmation_pdf_url", "pdf"), ("vignette_id", "vignette")):
        value = event[name]
        if value and newer(stamp, stamp_of(work, prefix)):
            state[name] = value
            work[f"{prefix}_received_at"], work[f"{prefix}_event_id"] = stamp

    refused = event.get("refused_amount")
    if event["type"] == ORDER_REFUNDED:
        _refund(work, event, result, cause, now)
    elif refused is not None:
        # PRODUCT.md section 4, money out of range: the order keeps its price.
        _reject(
            work,
            result,
            MONEY_OUT_OF_RANGE,
            "amount",
            None,
            refused,
            cause,
            now,
            f"amount|{refused}",
        )
    elif event["amount"] is not None and newer(stamp, stamp_of(work, "amount")):
        state["amount"], state["currency"] = event["amount"], event["currency"]
        work["amount_received_at"], work["amount_event_id"] = stamp

    return _finish(record, work, before, cause, now, retention_ms, result)


def _refund(
    work: dict[str, Any],
    event: CanonicalEvent,
    result: OrderResult,
    cause: dict[str, Any],
    now: int,
) -> None:
    """Keep a refund fact: once per provider refund, and only if every sum stays in range."""
    identity = refund_id(event)
    refused = event.get("refused_amount")
    if refused is not None:
        _reject(
            work, result, MONEY_OUT_OF_RANGE, "refunded_amount", None, refused, cause, now, identity
        )
        return
    fact = {
        "event_id": event["event_id"],
        "amount": event["amount"],
        "currency": event["currency"],
        "refund_id": identity,
        "cause": cause,
        "rejected": False,
    }
    refunds = work["refunds"]
    known = [i for i, held in enumerate(refunds) if same_refund(held, fact["event_id"], identity)]
    if known and refunds[known[0]]["event_id"] != fact["event_id"]:
        return  # the same provider refund in another delivery (after the dedup window): counted
    if known:
        fact["rejected"] = refunds[known[0]]["rejected"]
    others = [held for i, held in enumerate(refunds) if not known or i != known[0]]
    if fact["amount"] is not None and overflows(others, fact["amount"], fact["currency"]):
        # Each amount fits decimal(18,4); their sum would not (PRODUCT.md section 4).
        value = str(fact["amount"])
        _reject(
            work, result, MONEY_OUT_OF_RANGE, "refunded_amount", None, value, cause, now, identity
        )
    elif known:
        # The same fact again (reprocessing: no change), or replayed through
        # fixed mapping code (hookline replay): the corrected amount counts.
        refunds[known[0]] = fact
    elif len(refunds) >= MAX_REFUNDS:
        _over_limit(result, "refunded_amount", None, "refund over limit")
    else:
        refunds.append(fact)


def apply_update(
    record: dict[str, Any] | None, update: dict[str, Any], environment: str, retention_ms: int
) -> OrderResult:
    """Apply a TransactionUpdate: one transaction's status for this order.

    An update marked ``rejected`` carries a status its transaction refused
    (streams/join.py): nothing applies, the order publishes the rejected fact.
    """
    cause = update["cause"]
    now = cause["received_at"]
    work = _working_copy(record, update["order_id"], environment, now)
    before = dict(work["state"])
    result = OrderResult(work)
    transaction_id = update["transaction_id"]
    status = update["payment_status"]

    if update.get("rejected"):
        held = [
            c["payment_status"] for c in work["claims"] if c["transaction_id"] == transaction_id
        ]
        if status is not None:
            _payment_regression(
                work,
                result,
                transaction_id,
                held[0] if held else None,
                status,
                cause,
                now,
                counted=False,
            )
        return _finish(record, work, before, cause, now, retention_ms, result)

    claimed = (update["claimed_received_at"], update["claimed_event_id"])
    claim = _claim(work, transaction_id, claimed)
    if claim is None:
        _over_limit(result, "transaction_id", before["transaction_id"], "claim over limit")
        return _finish(record, work, before, cause, now, retention_ms, result)

    stamp = (update["status_received_at"], update["status_event_id"])
    if status is not None:
        held_stamp = stamp_of(claim, "status")
        verdict = payment_status_verdict(claim["payment_status"], held_stamp, status, stamp)
        if verdict is Verdict.APPLY:
            claim["payment_status"], claim["status_cause"] = status, cause
            claim["status_received_at"], claim["status_event_id"] = stamp
        elif verdict is Verdict.SAME and status == "SUCCEEDED":
            # The first success is the earliest success delivery (PRODUCT.md
            # section 4): an earlier copy learnt later moves the stamp back.
            if stamp < held_stamp:
                claim["status_cause"] = cause
                claim["status_received_at"], claim["status_event_id"] = stamp
        elif verdict is Verdict.SAME and stamp > held_stamp:
            claim["status_received_at"], claim["status_event_id"] = stamp
        elif verdict is Verdict.REJECT:
            _payment_regression(
                work, result, transaction_id, claim["payment_status"], status, cause, now
            )

    return _finish(record, work, before, cause, now, retention_ms, result)


def _payment_regression(
    work: dict[str, Any],
    result: OrderResult,
    transaction_id: str,
    held: str | None,
    status: str,
    cause: dict[str, Any],
    now: int,
    counted: bool = True,
) -> None:
    key = f"{transaction_id}|{status}"
    _reject(
        work, result, PAYMENT_REGRESSION, "payment_status", held, status, cause, now, key, counted
    )
