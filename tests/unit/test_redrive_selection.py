"""The pure parts of ``hookline redrive`` and ``hookline replay``.

Selection, partitioning like the gateway, and reading the worker's verdict.
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from aiokafka.partitioner import DefaultPartitioner
from hookline.core.adapters import ordering_key
from hookline.core.settings import DEV_SOURCES
from hookline.core.sources import load_sources
from hookline.gateway.envelope import raw_envelope
from hookline.schemas import codec
from hookline.streams.dedup import REPLAY_HEADER
from hookline.streams.normalize import INTERNAL_RECORD_HEADER

from hookline import redrive, replay
from hookline.operator_args import SelectionError, TimeRange, check_sources
from hookline.raw_publisher import NotRepublishable, plan
from hookline.worker_wait import WORKER_GROUP, dead_lettered_again, pending, reason_summary
from tests.support import traffic
from tests.support.signing import DEV

SOURCES = load_sources(DEV_SOURCES, DEV)
T0 = 1_795_000_000_000


def envelope(
    source: str = "partner", body: bytes | None = None, at: int = T0, delivery: str = "d1"
) -> dict[str, Any]:
    body = body if body is not None else traffic.order_status("ord_1", "ACTIVE")
    return raw_envelope(SOURCES[source], body, {"content-type": "x"}, None, at, delivery)


def letter(
    delivery: str = "d1",
    stage: str = "normalize",
    reason: str = "unknown partner event_type 'X'",
    at: int = T0 + 1000,
    **envelope_args: Any,
) -> dict[str, Any]:
    return {
        "delivery_id": delivery,
        "envelope": envelope(delivery=delivery, **envelope_args),
        "stage": stage,
        "reason": reason,
        "dead_lettered_at": at,
    }


# -- time range and sources ------------------------------------------------------------


def test_time_range_is_half_open() -> None:
    window = TimeRange(T0, T0 + 10)
    assert T0 in window
    assert T0 + 9 in window
    assert T0 + 10 not in window
    assert T0 - 1 not in window
    assert T0 in TimeRange()
    assert "until now" in TimeRange(T0).describe()


def test_an_inverted_time_range_is_refused() -> None:
    with pytest.raises(SelectionError, match=r"--since .* is not before --until"):
        TimeRange(T0, T0)


def test_sources_must_exist_and_match_the_environment() -> None:
    assert check_sources(None, "production", SOURCES) is None
    assert check_sources(["partner", "payments"], "production", SOURCES) == {"partner", "payments"}
    with pytest.raises(SelectionError, match="not in the sources file"):
        check_sources(["partnr"], "production", SOURCES)
    with pytest.raises(SelectionError, match="is a sandbox source, not production"):
        check_sources(["partner-sandbox"], "production", SOURCES)


# -- redrive selection -------------------------------------------------------------------


def test_letter_filter_combines_every_flag() -> None:
    keep = redrive.LetterFilter(
        stages=frozenset({"normalize"}),
        reason=re.compile("event_type"),
        window=TimeRange(T0, T0 + 5000),
        sources=frozenset({"partner"}),
    )
    assert keep.matches(letter())
    assert not keep.matches(letter(stage="dedup"))
    assert not keep.matches(letter(reason="amount out of range"))
    assert not keep.matches(letter(at=T0 + 5000))  # on dead_lettered_at, not received_at
    assert not keep.matches(letter(source="payments"))
    assert redrive.LetterFilter().matches(letter(stage="decode"))


def test_select_redrives_each_delivery_once_oldest_received_first() -> None:
    letters = [
        letter("late", at=T0 + 10),
        letter("d1", at=T0 + 1),
        letter("d1", at=T0 + 20, reason="redriven, failed again"),
    ]
    letters[0]["envelope"]["received_at"] = T0 + 500
    chosen = redrive.select(letters, redrive.LetterFilter())
    assert [c["delivery_id"] for c in chosen] == ["d1", "late"]
    assert chosen[0]["reason"] == "redriven, failed again"  # the newest letter
    # Selected when any of its letters matches.
    only_old = redrive.LetterFilter(reason=re.compile("unknown"))
    assert [c["delivery_id"] for c in redrive.select(letters, only_old)] == ["d1", "late"]


def test_decode_letters_and_foreign_environments_are_not_redriven() -> None:
    assert redrive.not_redrivable(letter(), "production") is None
    assert "not a hookline envelope" in str(
        redrive.not_redrivable(letter(stage="decode"), "production")
    )
    sandbox = letter(source="partner-sandbox")
    assert "for 'sandbox', not 'production'" in str(redrive.not_redrivable(sandbox, "production"))


def test_a_letter_of_an_internal_record_points_to_replay() -> None:
    """A fact the orders stage could not apply: its envelope carries the record, not the body."""
    internal = letter(stage="orders")
    internal["envelope"]["headers"] = {INTERNAL_RECORD_HEADER: "production.order-inputs[1]@7"}
    reason = str(redrive.not_redrivable(internal, "production"))
    assert "hookline replay" in reason
    assert "d1" in reason
    # The same stage's letter of a delivery intake applied itself carries the delivery.
    assert redrive.not_redrivable(letter(stage="orders"), "production") is None


# -- replay selection --------------------------------------------------------------------


def test_replay_selects_by_source_and_received_at_once_per_delivery() -> None:
    keep = replay.RawFilter("production", TimeRange(T0, T0 + 100), frozenset({"partner"}))
    records = [
        envelope(delivery="a", at=T0),
        envelope(delivery="b", at=T0 + 100),  # outside
        envelope("envelope", traffic.envelope_event("wh_1", "x", {}), T0, "c"),  # other source
        envelope(delivery="a", at=T0),  # a redriven copy
        envelope("partner-sandbox", delivery="s", at=T0),  # other environment
    ]
    earlier = envelope(delivery="e", at=T0 + 1)
    earlier["headers"] = {"content-type": "x", REPLAY_HEADER: "replay-1"}
    records.append(earlier)
    chosen = replay.select(records, keep)
    assert [e["delivery_id"] for e in chosen] == ["a", "e"]
    assert chosen[1]["headers"] == {"content-type": "x"}  # an earlier replay's header dropped


def test_replay_ids_sort_by_time() -> None:
    assert re.fullmatch(r"replay-\d{8}T\d{6}Z-[0-9a-f]{6}", replay.new_replay_id())


# -- partitioning ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "body"),
    [
        ("partner", traffic.order_status("ord_7", "ACTIVE", "tr_7")),
        ("partner", traffic.checkout("tr_8", ["ord_8", "ord_9"], "CREATED")),
        ("vignette-sales", traffic.sale_success("sale_1", [("row_1", True, "k")], "v")),
        ("envelope", traffic.envelope_event("wh_9", "subscription_created", {})),
    ],
)
def test_plan_partitions_like_the_gateway(source: str, body: bytes) -> None:
    partitions = [0, 1, 2, 3, 4, 5, 6, 7]
    original = envelope(source, body, delivery="01a2")
    outgoing = plan(original, partitions, 32)
    key = ordering_key(SOURCES[source].kind, json.loads(body)).encode()
    assert outgoing.partition == DefaultPartitioner()(key, partitions, partitions)
    assert outgoing.key == b"01a2"
    assert codec.decode_as(codec.WEBHOOK_ENVELOPE, outgoing.value) == original  # unchanged


def test_plan_adds_the_replay_header_and_nothing_else() -> None:
    original = envelope()
    outgoing = plan(original, [0, 1], 32, extra_headers={REPLAY_HEADER: "r1"})
    copy = codec.decode_as(codec.WEBHOOK_ENVELOPE, outgoing.value)
    assert copy == dict(original, headers={"content-type": "x", REPLAY_HEADER: "r1"})
    assert original["headers"] == {"content-type": "x"}  # the input is not modified


def test_plan_refuses_what_the_gateway_never_wrote() -> None:
    with pytest.raises(NotRepublishable, match="not a JSON object"):
        plan(envelope(body=b"[1, 2]"), [0], 32)
    unknown = dict(envelope(), kind="unknown")
    with pytest.raises(NotRepublishable, match="no adapter"):
        plan(unknown, [0], 32)


# -- the worker's verdict ----------------------------------------------------------------


def test_pending_counts_records_past_the_committed_offset() -> None:
    assert pending({0: 9, 1: 4}, {0: 10, 1: 5}) == {}
    assert pending({0: 9, 1: 4}, {0: 7, 1: 5}) == {0: 3}
    assert pending({2: 0}, {}) == {2: 1}  # nothing committed yet


def test_dead_lettered_again_counts_only_newer_letters_of_sent_deliveries() -> None:
    later = [
        letter("d1", at=T0 + 50, reason="still unknown"),
        letter("d1", at=T0 + 60, reason="still unknown, later"),
        letter("d2", at=T0 + 5),  # older than d2's newest letter before: a stray copy
        letter("other", at=T0 + 70),  # not ours
    ]
    found = dead_lettered_again(later, {"d1", "d2"}, {"d1": T0 + 10, "d2": T0 + 30})
    assert set(found) == {"d1"}
    assert found["d1"]["reason"] == "still unknown, later"
    assert reason_summary(found.values()) == [("normalize: still unknown, later", 1)]


def test_the_worker_group_is_the_worker_app_id() -> None:
    from hookline.streams.app import APP_ID

    assert WORKER_GROUP == APP_ID
