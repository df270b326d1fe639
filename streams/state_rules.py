"""The two state machines of PRODUCT.md section 4, as pure functions.

Both are written so that applying the same fact twice, or an older fact after
a newer one, changes nothing: that is what makes reprocessing after a crash,
and duplicates an upstream stage re-sends, harmless.
"""

from __future__ import annotations

from enum import Enum

from hookline.core.events import ORDER_STATUSES

ORDER_RANK = {status: rank for rank, status in enumerate(ORDER_STATUSES)}
FAILED_LIKE = frozenset({"FAILED", "CANCELED", "EXPIRED"})

#: When a fact arrived: (gateway received_at ms, event id). The event id breaks
#: ties deterministically; delivery ids are time-ordered UUIDv7s.
Stamp = tuple[int, str]


class Verdict(Enum):
    APPLY = "apply"
    SAME = "same"  # nothing to do: already the state (a repeat)
    REJECT = "reject"  # a transition the rules forbid (counted and logged)


def order_status_verdict(current: str | None, new: str) -> Verdict:
    """order_status only moves forward: CREATED < PENDING < DEFERRED < ACTIVE < REFUNDED."""
    if current is None or ORDER_RANK[new] > ORDER_RANK[current]:
        return Verdict.APPLY
    if new == current:
        return Verdict.SAME
    return Verdict.REJECT


def payment_status_verdict(
    current: str | None, current_stamp: Stamp, new: str, new_stamp: Stamp
) -> Verdict:
    """Rules for a transaction's payment status.

    - SUCCEEDED is final and may follow any status (seed 002).
    - PENDING never replaces FAILED, CANCELED or EXPIRED.
    - Among FAILED, CANCELED and EXPIRED the later arrival wins; "later" is the
      stamp, so an older one re-sent after a newer one changes nothing.
    """
    if current is None:
        return Verdict.APPLY
    if current == "SUCCEEDED":
        return Verdict.SAME if new == "SUCCEEDED" else Verdict.REJECT
    if new == "SUCCEEDED":
        return Verdict.APPLY
    if new == "PENDING":
        return Verdict.SAME if current == "PENDING" else Verdict.REJECT
    # new is FAILED, CANCELED or EXPIRED; current is PENDING or one of those.
    if current == "PENDING":
        return Verdict.APPLY
    if new_stamp > current_stamp:
        return Verdict.SAME if new == current else Verdict.APPLY
    return Verdict.SAME if new == current else Verdict.REJECT


def newer(stamp: Stamp, than: Stamp) -> bool:
    """Last-writer-wins for plain fields (confirmation URL, vignette id, price).

    The same stamp counts as newer: the same fact again writes the same
    value (no change), and a replayed fact mapped by fixed code corrects it.
    """
    return stamp >= than


def stamp_of(record: dict, prefix: str) -> Stamp:
    """The (received_at, event_id) stamp stored under ``<prefix>_received_at``/``_event_id``."""
    return (record[f"{prefix}_received_at"], record[f"{prefix}_event_id"])


def resolve_payment(claims: list[dict]) -> tuple[str | None, str | None]:
    """(transaction_id, payment_status) of an order claimed by several transactions.

    PRODUCT.md section 4, "Several transactions per order": if any claim
    SUCCEEDED, the first that succeeded (by the stamp of its success) names
    the order's payment; otherwise the most recently claimed transaction
    whose status is known does (a re-checkout after a failed payment), and
    before any status is known the most recent claim names the transaction.
    Depends only on the set of claims, never on the order they arrived in.
    """
    if len(claims) == 1:  # nearly every order: the rules below give its one claim
        only = claims[0]
        return only["transaction_id"], only["payment_status"]
    succeeded = [c for c in claims if c["payment_status"] == "SUCCEEDED"]
    if succeeded:
        first = min(succeeded, key=lambda c: (stamp_of(c, "status"), c["transaction_id"]))
        return first["transaction_id"], "SUCCEEDED"
    pool = [c for c in claims if c["payment_status"] is not None] or claims
    if not pool:
        return None, None
    latest = max(pool, key=lambda c: (stamp_of(c, "claimed"), c["transaction_id"]))
    return latest["transaction_id"], latest["payment_status"]
