"""Has this delivery been seen before? (PRODUCT.md section 4, deduplication)

Decided per deduplication key (built by the kind's adapter: the body's hash,
the payment claims without signing claims, the envelope id), against table
``dedup``. An entry is written only after the delivery's outputs were
acknowledged, so an entry proves the outputs exist; a delivery replayed after
a crash finds either its own entry (nothing to redo) or none (redo it all).
"""

from __future__ import annotations

from enum import Enum
from typing import Any


class Seen(Enum):
    NEW = "new"  # first time (or the previous one left the window): emit
    REPLAY = "replay"  # this very delivery again (reprocessing): already emitted
    DUPLICATE = "duplicate"  # a provider retry of an earlier delivery: drop


def classify(entry: dict[str, Any] | None, delivery: dict[str, Any]) -> Seen:
    if entry is None or delivery["received_at"] >= entry["expires_at"]:
        return Seen.NEW
    if entry["delivery_id"] == delivery["delivery_id"]:
        return Seen.REPLAY
    return Seen.DUPLICATE


def new_entry(delivery: dict[str, Any]) -> dict[str, Any]:
    return {
        "delivery_id": delivery["delivery_id"],
        "received_at": delivery["received_at"],
        "expires_at": delivery["received_at"] + delivery["dedup_window_ms"],
    }
