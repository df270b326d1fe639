"""Has this delivery been seen before? (PRODUCT.md section 4, deduplication)

Decided per deduplication key (built by the kind's adapter: the JSON content,
the payment claims without signing claims, the envelope id), against table
``dedup``. An entry is written only after the delivery's outputs were
acknowledged, so an entry proves the outputs exist; a delivery replayed after
a crash finds either its own entry (nothing to redo) or none (redo it all).

The entry also keeps the content digest: an envelope id that comes back
with other content is not a retry but a conflict, dead-lettered by the
caller, and it changes neither the entry nor any state.
"""

from __future__ import annotations

from enum import Enum
from typing import Any


class Seen(Enum):
    NEW = "new"  # first time (or the previous one left the window): emit
    REPLAY = "replay"  # this very delivery again (reprocessing): already emitted
    DUPLICATE = "duplicate"  # a provider retry of an earlier delivery: drop
    CONFLICT = "conflict"  # the key again with other content: dead-letter, change nothing


#: Envelope header ``hookline replay`` sets on a raw delivery it re-publishes:
#: its own earlier entry does not stop it (the gateway never copies it from a client).
REPLAY_HEADER = "x-hookline-replay"


def classify(
    entry: dict[str, Any] | None,
    delivery_id: str,
    received_at: int,
    digest: str,
    replaying: bool = False,
) -> Seen:
    if entry is None or received_at >= entry["expires_at"]:
        return Seen.NEW
    if entry["delivery_id"] == delivery_id:
        # Reprocessing after a crash: already emitted. An operator's replay
        # (after a fix) emits again: downstream rules make same facts no-ops.
        return Seen.NEW if replaying else Seen.REPLAY
    if entry["content_digest"] and entry["content_digest"] != digest:
        return Seen.CONFLICT
    return Seen.DUPLICATE


def new_entry(delivery_id: str, received_at: int, window_ms: int, digest: str) -> dict[str, Any]:
    return {
        "delivery_id": delivery_id,
        "received_at": received_at,
        "expires_at": received_at + window_ms,
        "content_digest": digest,
    }


def conflict_reason(key: str, entry: dict[str, Any]) -> str:
    """The dead letter's reason: says ``conflict`` and names the first delivery."""
    return (
        f"conflict: {key[:300]} was first delivered as {entry['delivery_id']} "
        "with different content; not a retry, nothing changed"
    )
