"""streams/dedup.py: has this delivery been seen within its source's window?"""

from __future__ import annotations

from typing import Any

from schemas import codec
from streams.dedup import Seen, classify, new_entry
from tests.unit.helpers import T0

HOUR = 3_600_000


def delivery(delivery_id: str, received_at: int, window: int = 72 * HOUR) -> dict[str, Any]:
    return {
        "delivery_id": delivery_id,
        "source": "payments",
        "received_at": received_at,
        "dedup_key": "payments|claims:abc",
        "dedup_window_ms": window,
        "events": [],
    }


def test_first_delivery_is_new() -> None:
    assert classify(None, delivery("d1", T0)) is Seen.NEW


def test_entry_records_first_delivery_and_window() -> None:
    entry = new_entry(delivery("d1", T0, window=72 * HOUR))
    assert entry == {"delivery_id": "d1", "received_at": T0, "expires_at": T0 + 72 * HOUR}
    assert codec.decode_as(codec.DEDUP_ENTRY, codec.encode(codec.DEDUP_ENTRY, entry)) == entry


def test_retry_within_window_is_duplicate() -> None:
    entry = new_entry(delivery("d1", T0))
    assert classify(entry, delivery("d2", T0 + 1)) is Seen.DUPLICATE
    assert classify(entry, delivery("d2", T0 + 72 * HOUR - 1)) is Seen.DUPLICATE


def test_retry_received_before_the_first_is_still_duplicate() -> None:
    entry = new_entry(delivery("d2", T0))
    assert classify(entry, delivery("d1", T0 - 5)) is Seen.DUPLICATE


def test_same_delivery_again_is_replay() -> None:
    entry = new_entry(delivery("d1", T0))
    assert classify(entry, delivery("d1", T0)) is Seen.REPLAY


def test_window_end_is_exclusive() -> None:
    entry = new_entry(delivery("d1", T0, window=HOUR))
    assert classify(entry, delivery("d2", T0 + HOUR - 1)) is Seen.DUPLICATE
    assert classify(entry, delivery("d2", T0 + HOUR)) is Seen.NEW
    assert classify(entry, delivery("d2", T0 + 10 * HOUR)) is Seen.NEW


def test_window_is_the_first_deliverys() -> None:
    # The entry carries its own expiry: a later delivery with a longer window does not extend it.
    entry = new_entry(delivery("d1", T0, window=HOUR))
    assert classify(entry, delivery("d2", T0 + 2 * HOUR, window=72 * HOUR)) is Seen.NEW


def run(deliveries: list[dict[str, Any]]) -> list[Seen]:
    """The dedup stage's loop on one key: an entry is written for every emitted delivery."""
    entry: dict[str, Any] | None = None
    verdicts = []
    for item in deliveries:
        seen = classify(entry, item)
        verdicts.append(seen)
        if seen is Seen.NEW:
            entry = new_entry(item)
    return verdicts


def test_sequence_of_retries_and_replays() -> None:
    window = 7 * 24 * HOUR
    verdicts = run(
        [
            delivery("d1", T0, window),
            delivery("d2", T0 + 60_000, window),  # partner retry after 1 min
            delivery("d1", T0, window),  # reprocessing after a crash
            delivery("d3", T0 + 15 * 60_000, window),  # retry after 15 min
            delivery("d4", T0 + window, window),  # a new notification after the window
            delivery("d5", T0 + window + 1, window),
            delivery("d4", T0 + window, window),
        ]
    )
    assert verdicts == [
        Seen.NEW,
        Seen.DUPLICATE,
        Seen.REPLAY,
        Seen.DUPLICATE,
        Seen.NEW,
        Seen.DUPLICATE,
        Seen.REPLAY,
    ]


def test_classify_is_pure() -> None:
    entry = new_entry(delivery("d1", T0))
    snapshot = dict(entry)
    item = delivery("d2", T0 + 1)
    assert classify(entry, item) is classify(entry, item) is Seen.DUPLICATE
    assert entry == snapshot
