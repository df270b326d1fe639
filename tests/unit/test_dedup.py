"""streams/dedup.py: has this delivery been seen within its window, and with what content?"""

from __future__ import annotations

import io
from typing import Any, NamedTuple

import fastavro
from hookline.schemas import codec
from hookline.streams.dedup import Seen, classify, conflict_reason, new_entry

from tests.unit.helpers import T0

HOUR = 3_600_000
DIGEST = "a" * 64
OTHER = "b" * 64


class Copy(NamedTuple):
    """What the intake stage knows of one delivery when it classifies it."""

    delivery_id: str
    received_at: int
    digest: str = DIGEST
    window: int = 72 * HOUR


def check(entry: dict[str, Any] | None, item: Copy) -> Seen:
    return classify(entry, item.delivery_id, item.received_at, item.digest)


def entry_of(item: Copy) -> dict[str, Any]:
    return new_entry(item.delivery_id, item.received_at, item.window, item.digest)


def test_first_delivery_is_new() -> None:
    assert check(None, Copy("d1", T0)) is Seen.NEW
    assert check(None, Copy("d1", T0, digest="")) is Seen.NEW


def test_entry_records_first_delivery_window_and_digest() -> None:
    entry = entry_of(Copy("d1", T0, window=72 * HOUR))
    assert entry == {
        "delivery_id": "d1",
        "received_at": T0,
        "expires_at": T0 + 72 * HOUR,
        "content_digest": DIGEST,
    }
    assert codec.decode_as(codec.DEDUP_ENTRY, codec.encode(codec.DEDUP_ENTRY, entry)) == entry


def test_retry_within_window_is_duplicate() -> None:
    entry = entry_of(Copy("d1", T0))
    assert check(entry, Copy("d2", T0 + 1)) is Seen.DUPLICATE
    assert check(entry, Copy("d2", T0 + 72 * HOUR - 1)) is Seen.DUPLICATE


def test_retry_received_before_the_first_is_still_duplicate() -> None:
    entry = entry_of(Copy("d2", T0))
    assert check(entry, Copy("d1", T0 - 5)) is Seen.DUPLICATE


def test_same_delivery_again_is_replay() -> None:
    entry = entry_of(Copy("d1", T0))
    assert check(entry, Copy("d1", T0)) is Seen.REPLAY


def test_window_end_is_exclusive() -> None:
    entry = entry_of(Copy("d1", T0, window=HOUR))
    assert check(entry, Copy("d2", T0 + HOUR - 1)) is Seen.DUPLICATE
    assert check(entry, Copy("d2", T0 + HOUR)) is Seen.NEW
    assert check(entry, Copy("d2", T0 + 10 * HOUR)) is Seen.NEW


def test_window_is_the_first_deliverys() -> None:
    # The entry carries its own expiry: a later delivery with a longer window does not extend it.
    entry = entry_of(Copy("d1", T0, window=HOUR))
    assert check(entry, Copy("d2", T0 + 2 * HOUR, window=72 * HOUR)) is Seen.NEW


# -- content: retry or conflict ------------------------------------------------------------


def test_same_key_other_content_is_conflict() -> None:
    entry = entry_of(Copy("d1", T0, digest=DIGEST))
    assert check(entry, Copy("d2", T0 + 1, digest=OTHER)) is Seen.CONFLICT
    assert check(entry, Copy("d2", T0 + 72 * HOUR - 1, digest=OTHER)) is Seen.CONFLICT
    assert check(entry, Copy("d0", T0 - 1, digest=OTHER)) is Seen.CONFLICT
    assert check(entry, Copy("d2", T0 + 1, digest=DIGEST)) is Seen.DUPLICATE


def test_conflict_after_the_window_is_new() -> None:
    entry = entry_of(Copy("d1", T0, digest=DIGEST, window=HOUR))
    assert check(entry, Copy("d2", T0 + HOUR - 1, digest=OTHER)) is Seen.CONFLICT
    assert check(entry, Copy("d2", T0 + HOUR, digest=OTHER)) is Seen.NEW


def test_reprocessing_the_first_delivery_is_replay_whatever_its_digest() -> None:
    # The entry is the delivery's own: reprocessing it is never a conflict with itself.
    entry = entry_of(Copy("d1", T0, digest=DIGEST))
    assert check(entry, Copy("d1", T0, digest=OTHER)) is Seen.REPLAY


def test_release_1_entry_without_digest_is_a_duplicate() -> None:
    # Entries written before content digests existed cannot tell a conflict: a retry.
    entry = {"delivery_id": "d1", "received_at": T0, "expires_at": T0 + HOUR, "content_digest": ""}
    assert check(entry, Copy("d2", T0 + 1, digest=OTHER)) is Seen.DUPLICATE
    assert check(entry, Copy("d2", T0 + 1, digest=DIGEST)) is Seen.DUPLICATE
    assert check(entry, Copy("d1", T0, digest=OTHER)) is Seen.REPLAY
    assert check(entry, Copy("d2", T0 + HOUR, digest=OTHER)) is Seen.NEW


def test_release_1_entry_bytes_decode_without_digest_and_classify() -> None:
    [v1] = [s for s in codec.REGISTRY.versions(codec.DEDUP_ENTRY) if 1 in s.releases]
    assert "content_digest" not in v1.fields
    out = io.BytesIO()
    out.write(v1.header)
    fastavro.schemaless_writer(
        out, v1.plain, {"delivery_id": "d1", "received_at": T0, "expires_at": T0 + HOUR}
    )
    entry = codec.decode_as(codec.DEDUP_ENTRY, out.getvalue())
    assert entry["content_digest"] == ""
    assert check(entry, Copy("d2", T0 + 1, digest=OTHER)) is Seen.DUPLICATE


def test_conflict_reason_names_the_first_delivery() -> None:
    entry = entry_of(Copy("first-delivery-0001", T0))
    reason = conflict_reason("envelope|id:wh_1", entry)
    assert "conflict" in reason
    assert "first-delivery-0001" in reason
    assert "envelope|id:wh_1" in reason
    long = conflict_reason("envelope|id:" + "x" * 5000, entry)
    assert "first-delivery-0001" in long
    assert len(long) <= 1000


# -- one key over time ----------------------------------------------------------------------


def run(deliveries: list[Copy]) -> list[Seen]:
    """The intake loop on one key: an entry is written for every emitted delivery."""
    entry: dict[str, Any] | None = None
    verdicts = []
    for item in deliveries:
        seen = check(entry, item)
        verdicts.append(seen)
        if seen is Seen.NEW:
            entry = entry_of(item)
    return verdicts


def test_sequence_of_retries_replays_and_conflicts() -> None:
    window = 7 * 24 * HOUR
    verdicts = run(
        [
            Copy("d1", T0, window=window),
            Copy("d2", T0 + 60_000, window=window),  # partner retry after 1 min
            Copy("d1", T0, window=window),  # reprocessing after a crash
            Copy("d3", T0 + 15 * 60_000, window=window),  # retry after 15 min
            Copy("dx", T0 + 20 * 60_000, OTHER, window),  # same id, other content
            Copy("d6", T0 + 30 * 60_000, window=window),  # the conflict changed nothing
            Copy("d4", T0 + window, OTHER, window),  # a new notification after the window
            Copy("d5", T0 + window + 1, OTHER, window),
            Copy("d7", T0 + window + 2, DIGEST, window),  # the old content is now the conflict
            Copy("d4", T0 + window, OTHER, window),
        ]
    )
    assert verdicts == [
        Seen.NEW,
        Seen.DUPLICATE,
        Seen.REPLAY,
        Seen.DUPLICATE,
        Seen.CONFLICT,
        Seen.DUPLICATE,
        Seen.NEW,
        Seen.DUPLICATE,
        Seen.CONFLICT,
        Seen.REPLAY,
    ]


def test_classify_is_pure() -> None:
    entry = entry_of(Copy("d1", T0))
    snapshot = dict(entry)
    item = Copy("d2", T0 + 1)
    assert check(entry, item) is check(entry, item) is Seen.DUPLICATE
    conflicting = Copy("d2", T0 + 1, digest=OTHER)
    assert check(entry, conflicting) is check(entry, conflicting) is Seen.CONFLICT
    assert entry == snapshot
