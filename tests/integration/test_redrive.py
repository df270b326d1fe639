"""``hookline redrive`` on the real broker: dead letters re-driven after an adapter change.

A stock worker dead-letters an authentic partner delivery of an event type it
does not know (and another one, and a dedup conflict). Then the "fix": the
worker is restarted with an adapter that knows one of the types
(tests/support/patched_worker.py). The redrive maps that delivery (the order
state appears), reports the other two as dead-lettered again, and a second
redrive changes nothing.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hookline.core.adapters import payments
from hookline.core.settings import DEV_SOURCES
from hookline.infra.broker import free_port

from hookline.tail import iso_ms
from tests.conftest import hookline_env
from tests.support import processes, traffic
from tests.support.broker import running_broker
from tests.support.kafka import Record, read_topics
from tests.support.operator import hookline, patched_worker, produce_raw
from tests.support.patched_worker import APPROVED
from tests.support.signing import DEV, payments_body

RAW = "production.webhooks.raw"
DEADLETTER = "production.webhooks.deadletter"


@pytest.fixture(scope="module")
def own_broker(broker_kind: str, log_dir: Path) -> Iterator[str]:
    """A broker of this module's own: its workers join group ``hookline``, which on the
    session broker would re-process (and re-dead-letter) other modules' deliveries."""
    with running_broker(broker_kind, log_dir, "redrive") as broker:
        yield broker.bootstrap_servers


@pytest.fixture(scope="module")
def env(own_broker: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return hookline_env(
        own_broker,
        tmp_path_factory.mktemp("redrive-data"),
        HOOKLINE_SOURCES=str(DEV_SOURCES),
    )


@pytest.fixture
def stock_worker(env: dict[str, str], log_dir: Path) -> Iterator[Any]:
    worker = processes.worker(env, log_dir).start(timeout=90)
    try:
        yield worker
    finally:
        worker.stop()


def partner_event(event_type: str, order_id: str) -> bytes:
    document = json.loads(traffic.order_status(order_id, "ACTIVE"))
    document["event_type"] = event_type
    return traffic.dumps(document)


def letters_for(records: list[Record], delivery_ids: set[str]) -> list[dict[str, Any]]:
    return [r.value for r in records if r.topic == DEADLETTER and r.key in delivery_ids]


async def test_redrive_after_adapter_change(
    env: dict[str, str], log_dir: Path, stock_worker: Any
) -> None:
    bootstrap = env["KAFKA_BOOTSTRAP_SERVERS"]
    since = iso_ms(int(time.time() * 1000) - 1000)
    fixed_order, broken_order = traffic.unique("ord"), traffic.unique("ord")
    envelope_id = traffic.unique("wh")
    now = int(time.time() * 1000)
    produced = await produce_raw(
        bootstrap,
        [
            ("partner", partner_event(APPROVED, fixed_order), now),
            ("partner", partner_event("ORDER_ARCHIVED", broken_order), now + 1),
            ("envelope", traffic.envelope_event(envelope_id, "subscription_created", {}), now + 2),
            # Same envelope id, other content: a conflict, dead-lettered at stage dedup.
            (
                "envelope",
                traffic.envelope_event(envelope_id, "subscription_created", {"a": 1}),
                now + 3,
            ),
        ],
    )
    approved, archived, _, conflicting = (p.delivery_id for p in produced)
    lettered = {approved, archived, conflicting}
    records = await read_topics(
        bootstrap,
        DEADLETTER,
        until=lambda rs: {r.key for r in rs} >= lettered,
        timeout=45,
        idle=0.2,
    )
    stages = {letter["delivery_id"]: letter["stage"] for letter in letters_for(records, lettered)}
    assert stages == {approved: "normalize", archived: "normalize", conflicting: "dedup"}

    # The fix is deployed: a worker whose partner adapter knows ORDER_APPROVED.
    stock_worker.stop()
    fixed = patched_worker(env, log_dir, "knows-approved").start(timeout=90)
    try:
        # Selection without sending: filters, one JSON line per delivery, nothing on raw.
        dry = hookline(env, "redrive", "--env", "production", "--since", since, "--dry-run")
        assert dry.returncode == 0, dry.stderr
        lines = [json.loads(line) for line in dry.stdout.splitlines()]
        assert {line["delivery_id"] for line in lines} == lettered
        assert {line["action"] for line in lines} == {"send"}, dry.stdout
        by_id = {line["delivery_id"]: line for line in lines}
        assert by_id[approved]["partition"] == produced[0].partition  # as the gateway put it
        assert by_id[conflicting]["partition"] == produced[3].partition
        narrow = hookline(
            env, "redrive", "--env", "production", "--since", since, "--dry-run",
            "--stage", "normalize", "--reason", "(?i)archived",
        )  # fmt: skip
        assert [json.loads(line)["delivery_id"] for line in narrow.stdout.splitlines()] == [
            archived
        ]
        only_envelope = hookline(
            env, "redrive", "--env", "production", "--since", since, "--dry-run",
            "--source", "envelope",
        )  # fmt: skip
        assert [json.loads(line)["delivery_id"] for line in only_envelope.stdout.splitlines()] == [
            conflicting
        ]
        raw = await read_topics(bootstrap, RAW, idle=0.5)
        assert sorted(r.key for r in raw if r.key in lettered) == sorted(lettered)

        first = hookline(env, "redrive", "--env", "production", "--since", since)
        assert first.returncode == 0, first.stderr
        assert "3 deliveries selected, re-publishing 3" in first.stderr
        assert "processed all 3: 1 accepted" in first.stderr, first.stderr
        assert "2 dead-lettered again" in first.stderr
        assert "ORDER_ARCHIVED" in first.stderr
        assert "conflict" in first.stderr
        assert f"dead-lettered again: {approved}" not in first.stderr

        def settled(rs: list[Record]) -> bool:
            return any(r.topic == "production.orders.state" and r.key == fixed_order for r in rs)

        after_first = await read_topics(
            bootstrap,
            "production.orders.state",
            "production.orders.changes",
            "production.webhooks.events",
            until=settled,
            timeout=30,
            idle=1.5,
        )
        changes = [
            r.value
            for r in after_first
            if r.topic == "production.orders.changes" and r.key == fixed_order
        ]
        assert [c["version"] for c in changes] == [1]
        assert changes[0]["after"]["order_status"] == "ACTIVE"
        assert changes[0]["cause"]["delivery_id"] == approved
        assert changes[0]["cause"]["provider_event_type"] == APPROVED
        events = [
            r.value["event_id"]
            for r in after_first
            if r.topic == "production.webhooks.events" and r.value["delivery_id"] in lettered
        ]
        assert events == [f"{approved}:0"]
        raw = await read_topics(bootstrap, RAW, idle=0.5)
        copies = [r for r in raw if r.key == approved]
        assert len(copies) == 2
        assert {r.partition for r in copies} == {produced[0].partition}
        assert copies[0].value == copies[1].value  # the envelope unchanged

        # Idempotent: the second redrive finds the delivery's own dedup entry.
        second = hookline(env, "redrive", "--env", "production", "--since", since)
        assert second.returncode == 0, second.stderr
        assert "processed all 3: 1 accepted" in second.stderr, second.stderr
        assert "2 dead-lettered again" in second.stderr
        after_second = await read_topics(
            bootstrap,
            "production.orders.changes",
            "production.webhooks.events",
            DEADLETTER,
            idle=1.5,
        )
        changes = [
            r.value
            for r in after_second
            if r.topic == "production.orders.changes" and r.key == fixed_order
        ]
        assert [c["version"] for c in changes] == [1]
        events = [
            r.value["event_id"]
            for r in after_second
            if r.topic == "production.webhooks.events" and r.value["delivery_id"] in lettered
        ]
        assert events == [f"{approved}:0"]
        # Three letters each for the two that still fail (first, and one per redrive).
        counts = {d: 0 for d in lettered}
        for letter in letters_for(after_second, lettered):
            counts[letter["delivery_id"]] += 1
        assert counts == {approved: 1, archived: 3, conflicting: 3}
    finally:
        fixed.stop()


def test_errors_are_one_line(env: dict[str, str]) -> None:
    unreachable = dict(env, KAFKA_BOOTSTRAP_SERVERS=f"127.0.0.1:{free_port()}")
    result = hookline(unreachable, "redrive", "--env", "production", timeout=60)
    assert result.returncode == 1
    assert result.stderr.startswith("hookline: cannot reach Kafka at 127.0.0.1:")
    assert "Traceback" not in result.stderr

    for args, message in [
        (["--env", "staging"], "invalid choice: 'staging'"),
        (["--env", "production", "--since", "last week"], "expected an ISO-8601 time"),
        (["--env", "production", "--reason", "(unclosed"], "not a regular expression"),
        (["--env", "production", "--timeout", "0"], "seconds > 0"),
        (["--env", "production", "--source", "nope"], "--source 'nope' is not in the sources"),
        (["--env", "production", "--source", "partner-sandbox"], "is a sandbox source"),
        (["--env", "production", "--since", "1h", "--until", "2h"], "is not before --until"),
    ]:
        result = hookline(env, "redrive", *args, "--dry-run", timeout=60)
        assert result.returncode == 2, (args, result.stderr)
        assert message in result.stderr, (args, result.stderr)
        assert "Traceback" not in result.stderr


async def test_a_payments_letter_keeps_no_replayable_token_and_redrive_resends_the_raw_record(
    env: dict[str, str], stock_worker: Any
) -> None:
    """docs/security.md, personal data: the letter's token has no signature and the
    payer's IBAN masked; redrive re-sends the raw record, byte for byte."""
    bootstrap = env["KAFKA_BOOTSTRAP_SERVERS"]
    since = iso_ms(int(time.time() * 1000) - 1000)
    claims = traffic.payment_claims(traffic.unique("tr"), "refunded")  # a status nobody maps
    iban = claims["paymentDetails"]["debtorIban"]
    body = payments_body(claims, DEV["PAYMENTS_SECRET"])
    (produced,) = await produce_raw(bootstrap, [("payments", body, int(time.time() * 1000))])
    records = await read_topics(
        bootstrap,
        RAW,
        DEADLETTER,
        until=lambda rs: any(r.topic == DEADLETTER and r.key == produced.delivery_id for r in rs),
        timeout=45,
        idle=0.2,
    )
    (original,) = [r for r in records if r.topic == RAW and r.key == produced.delivery_id]
    (letter,) = letters_for(records, {produced.delivery_id})
    token = json.loads(letter["envelope"]["body"])["token"]
    assert token.endswith(".")  # no signature: no gateway accepts it again
    kept = payments.claims({"token": token})
    assert kept["orderReference"] == claims["orderReference"]
    masked = kept["paymentDetails"]["debtorIban"]
    assert masked != iban
    assert (masked[:4], masked[-4:]) == (iban[:4], iban[-4:])  # still recognisable
    assert letter["envelope"]["headers"]["x-hookline-raw-position"] == (
        f"{original.partition}@{original.offset}"
    )

    redriven = hookline(env, "redrive", "--env", "production", "--since", since)
    assert redriven.returncode == 0, redriven.stderr
    assert "1 deliveries selected, re-publishing 1" in redriven.stderr, redriven.stderr
    assert "1 dead-lettered again" in redriven.stderr, redriven.stderr
    raw = await read_topics(bootstrap, RAW, idle=0.5)
    copies = [r.value for r in raw if r.key == produced.delivery_id]
    assert copies == [original.value, original.value]  # the raw record itself, not the letter's
