"""``hookline replay`` on the real broker: a time range re-run, and a bug corrected by it.

Deliveries are produced straight to raw at two received_at times, an hour
apart, and processed by a worker with a bug (tests/support/patched_worker.py,
``wrong-pdf``: confirmations get a wrong PDF URL). Then the fixed worker runs
and only the first range is replayed: its deliveries' events come again with
the same event ids, the provider retry among them stays dropped, the order
with the wrong URL gets it corrected as version n+1, and no other order gets
a version.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path

from hookline.core.settings import DEV_SOURCES
from hookline.infra.broker import free_port
from hookline.streams.dedup import REPLAY_HEADER

from hookline.tail import iso_ms
from tests.conftest import hookline_env
from tests.support import processes, traffic
from tests.support.broker import TestBroker
from tests.support.kafka import Record, latest_by_key, read_topics
from tests.support.operator import hookline, patched_worker, produce_raw
from tests.support.patched_worker import WRONG_PDF_PREFIX

RAW = "production.webhooks.raw"
EVENTS = "production.webhooks.events"
STATE = "production.orders.state"
CHANGES = "production.orders.changes"
HOUR_MS = 3_600_000
#: The replayed copy's headers: the original's, plus the replay id.
REPLAYED = {"content-type": "application/json", REPLAY_HEADER: "test-sales"}


def event_counts(records: list[Record], delivery_ids: set[str]) -> Counter[str]:
    return Counter(
        r.value["event_id"]
        for r in records
        if r.topic == EVENTS and r.value["delivery_id"] in delivery_ids
    )


def versions(records: list[Record], orders: set[str]) -> dict[str, list[int]]:
    found: dict[str, list[int]] = {order: [] for order in orders}
    for r in records:
        if r.topic == CHANGES and r.key in orders:
            found[r.key].append(r.value["version"])
    return found


def reached(records: list[Record], wanted: dict[str, dict[str, object]]) -> bool:
    states = latest_by_key([r for r in records if r.topic == STATE])
    return all(
        order in states and all(states[order][k] == v for k, v in fields.items())
        for order, fields in wanted.items()
    )


async def test_replay_of_a_time_range(broker: TestBroker, log_dir: Path, tmp_path: Path) -> None:
    env = hookline_env(broker.bootstrap_servers, tmp_path, HOOKLINE_SOURCES=str(DEV_SOURCES))
    bootstrap = broker.bootstrap_servers
    # Odd milliseconds, so no other test's records fall in these ranges.
    first = int(time.time() * 1000) - 2 * HOUR_MS - 7_777
    second = first + HOUR_MS
    confirmed, active, later = (traffic.unique("ord") for _ in range(3))
    sale, later_sale, row, later_row = (traffic.unique(p) for p in ("sale", "sale", "row", "row"))
    status = traffic.order_status(active, "ACTIVE")

    buggy = patched_worker(env, log_dir, "wrong-pdf").start(timeout=90)
    try:
        produced = await produce_raw(
            bootstrap,
            [
                ("partner", traffic.order_status(confirmed, "PENDING"), first),
                ("partner", traffic.confirmation(confirmed), first + 1),
                ("partner", status, first + 2),
                ("partner", status, first + 3),  # the provider's retry: dropped
                (
                    "vignette-sales",
                    traffic.sale_success(sale, [(row, True, "k1")], "v1"),
                    first + 4,
                ),
                ("partner", traffic.order_status(later, "ACTIVE"), second),
                (
                    "vignette-sales",
                    traffic.sale_success(later_sale, [(later_row, True, "k2")], "v2"),
                    second + 1,
                ),
            ],
        )
        orders = {confirmed, active, later, row, later_row}
        settled = {
            confirmed: {"version": 2},  # PENDING, then the (wrong) PDF
            active: {"order_status": "ACTIVE"},
            later: {"order_status": "ACTIVE"},
            row: {"payment_status": "SUCCEEDED"},  # the sale's order, then its join
            later_row: {"payment_status": "SUCCEEDED"},
        }
        before = await read_topics(
            bootstrap,
            STATE,
            CHANGES,
            EVENTS,
            until=lambda rs: reached(rs, settled),
            timeout=45,
            idle=1.0,
        )
    finally:
        buggy.stop()
    states = latest_by_key([r for r in before if r.topic == STATE])
    assert states[confirmed]["confirmation_pdf_url"] == WRONG_PDF_PREFIX + confirmed  # the bug
    first_range = {p.delivery_id for p in produced[:5]}
    retry = produced[3].delivery_id
    by_source = {"partner": set(), "vignette-sales": set()}
    for p in produced[:5]:
        by_source[p.source].add(p.delivery_id)
    all_ids = {p.delivery_id for p in produced}
    events_before = event_counts(before, all_ids)
    assert events_before
    assert all(count == 1 for count in events_before.values())
    assert not any(event.startswith(retry) for event in events_before)
    versions_before = versions(before, orders)

    fixed = processes.worker(env, log_dir).start(timeout=90)
    try:
        since, until = iso_ms(first - 1), iso_ms(first + 1000)
        dry = hookline(
            env, "replay", "--env", "production", "--since", since, "--until", until, "--dry-run"
        )
        assert dry.returncode == 0, dry.stderr
        lines = [json.loads(line) for line in dry.stdout.splitlines()]
        assert {line["delivery_id"] for line in lines} == first_range
        # Where the gateway put them (a replay must meet its own dedup entry).
        assert {line["delivery_id"]: line["partition"] for line in lines} == {
            p.delivery_id: p.partition for p in produced[:5]
        }
        raw = await read_topics(bootstrap, RAW, idle=0.5)
        assert Counter(r.key for r in raw if r.key in all_ids) == dict.fromkeys(all_ids, 1)

        # --source: only the sale is re-emitted.
        sales = hookline(
            env, "replay", "--env", "production", "--since", since, "--until", until,
            "--source", "vignette-sales", "--replay-id", "test-sales",
        )  # fmt: skip
        assert sales.returncode == 0, sales.stderr
        assert "processed all 1: 1 mapped again" in sales.stderr, sales.stderr
        after_sales = await read_topics(bootstrap, EVENTS, RAW, idle=0.5)
        counts = event_counts(after_sales, all_ids)
        assert {e for e, n in counts.items() if n == 2} == {
            e for e in events_before if e.split(":")[0] in by_source["vignette-sales"]
        }
        assert all(n <= 2 for n in counts.values())
        copies = [r for r in after_sales if r.topic == RAW and r.value["headers"] == REPLAYED]
        assert len(copies) == 1
        copy = copies[0]
        assert copy.key == produced[4].delivery_id
        assert copy.partition == produced[4].partition

        # The whole first range, after the fix.
        result = hookline(env, "replay", "--env", "production", "--since", since, "--until", until)
        assert result.returncode == 0, result.stderr
        assert "processed all 5: 5 mapped again" in result.stderr, result.stderr
        after = await read_topics(
            bootstrap,
            STATE,
            CHANGES,
            EVENTS,
            until=lambda rs: reached(rs, {confirmed: {"version": 3}}),
            timeout=30,
            idle=2.0,
        )
    finally:
        fixed.stop()

    counts = event_counts(after, all_ids)
    for event in events_before:
        delivery = event.split(":")[0]
        expected = 2 if delivery in first_range else 1
        if delivery in by_source["vignette-sales"]:
            expected += 1  # replayed twice
        assert counts[event] == expected, (event, counts[event])
    assert set(counts) == set(events_before)  # same event ids, the retry still dropped

    # The correction is a new version; nothing else changed.
    states = latest_by_key([r for r in after if r.topic == STATE])
    assert states[confirmed]["confirmation_pdf_url"] == traffic.pdf_url(confirmed)
    assert states[confirmed]["order_status"] == "PENDING"
    changes = {
        r.value["version"]: r.value for r in after if r.topic == CHANGES and r.key == confirmed
    }
    assert sorted(changes) == [1, 2, 3]
    assert changes[3]["changed_fields"] == ["confirmation_pdf_url"]
    assert changes[3]["before"] == changes[2]["after"]
    assert changes[3]["cause"]["delivery_id"] == produced[1].delivery_id
    now = versions(after, orders)
    assert now[confirmed] == [*versions_before[confirmed], 3]
    for order in orders - {confirmed}:
        assert now[order] == versions_before[order], order


def test_replay_errors_are_one_line(broker: TestBroker, tmp_path: Path) -> None:
    env = hookline_env(broker.bootstrap_servers, tmp_path, HOOKLINE_SOURCES=str(DEV_SOURCES))
    unreachable = dict(env, KAFKA_BOOTSTRAP_SERVERS=f"127.0.0.1:{free_port()}")
    result = hookline(unreachable, "replay", "--env", "production", "--since", "1h", timeout=60)
    assert result.returncode == 1
    assert result.stderr.startswith("hookline: cannot reach Kafka at 127.0.0.1:")
    for args, message in [
        (["--env", "production"], "the following arguments are required: --since"),
        (["--since", "1h"], "the following arguments are required: --env"),
        (["--env", "production", "--since", "2026-13-01"], "expected an ISO-8601 time"),
        (["--env", "sandbox", "--since", "1h", "--source", "partner"], "is a production source"),
    ]:
        result = hookline(env, "replay", *args, "--dry-run", timeout=60)
        assert result.returncode == 2, (args, result.stderr)
        assert message in result.stderr, (args, result.stderr)
        assert "Traceback" not in result.stderr
