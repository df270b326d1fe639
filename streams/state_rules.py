"""The two state machines of PRODUCT.md section 4, as pure functions.

Both are written so that applying the same fact twice, or an older fact after
a newer one, changes nothing: that is what makes reprocessing after a crash,
and duplicates an upstream stage re-sends, harmless.
"""

from __future__ import annotations

from enum import Enum

from streams.events import ORDER_STATUSES

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
    """Last-writer-wins for plain fields (confirmation URL, vignette id)."""
    return stamp > than
