"""``hookline tail`` against the real broker: two schema versions on one topic, filters, errors."""

from __future__ import annotations

import asyncio
import io
import json
import subprocess
import sys
import time
import uuid
from decimal import Decimal
from pathlib import Path
from typing import Any

import fastavro
import pytest
from aiokafka import AIOKafkaProducer
from fastavro.schema import load_schema, to_parsing_canonical_form
from hookline.core import topics
from hookline.infra.broker import free_port
from hookline.schemas import codec

from tests.conftest import hookline_env
from tests.support.broker import TestBroker
from tests.unit.helpers import SCHEMAS, T0

V1 = SCHEMAS / "released" / "v1"


def _v1_state(order_id: str, transaction_id: str) -> bytes:
    """An OrderState as a release-1 worker wrote it (plain fastavro, the v1 .avsc)."""
    schema = load_schema(str(V1 / f"{codec.ORDER_STATE}.avsc"), named_schemas={})
    record = {
        "order_id": order_id,
        "environment": "production",
        "transaction_id": transaction_id,
        "order_status": "PENDING",
        "payment_status": "PENDING",
        "confirmation_pdf_url": None,
        "vignette_id": None,
        "version": 1,
        "updated_at": T0,
    }
    out = io.BytesIO()
    fastavro.schemaless_writer(out, schema, record)
    fp = codec.crc64_avro_fingerprint(to_parsing_canonical_form(schema))
    return codec.MAGIC + fp + out.getvalue()


def _v2_state(order_id: str, transaction_id: str) -> bytes:
    return codec.encode(
        codec.ORDER_STATE,
        {
            "order_id": order_id,
            "environment": "production",
            "transaction_id": transaction_id,
            "order_status": "ACTIVE",
            "payment_status": "SUCCEEDED",
            "version": 2,
            "updated_at": T0 + 1000,
            "amount": Decimal("12.5000"),
            "currency": "EUR",
        },
    )


async def _topic_with(bootstrap: str, records: list[tuple[str, bytes | None, int]]) -> str:
    name = f"tail{uuid.uuid4().hex[:8]}.orders.state"
    await topics.ensure_topics(bootstrap, [topics.TopicSpec(name, compacted=True)], 2, 1)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        for key, value, timestamp_ms in records:
            await producer.send_and_wait(name, value, key=key.encode(), timestamp_ms=timestamp_ms)
    finally:
        await producer.stop()
    return name


#: Product defect, not a test one (docs/brokers.md).
def _tail(broker: TestBroker, tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = hookline_env(broker.bootstrap_servers, tmp_path)
    return subprocess.run(
        [sys.executable, "-m", "hookline", "tail", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def _lines(stdout: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stdout.splitlines()]


@pytest.fixture
async def two_versions(broker: TestBroker) -> tuple[str, str, str]:
    """A state topic holding a v1 and a v2 record for order A, one v1 for order B."""
    a, b, tr = f"ord_{uuid.uuid4().hex[:6]}", f"ord_{uuid.uuid4().hex[:6]}", "tr_1"
    old = int(time.time() * 1000) - 3_600_000
    name = await _topic_with(
        broker.bootstrap_servers,
        [
            (a, _v1_state(a, tr), old),
            (b, _v1_state(b, "tr_other"), old),
            (a, _v2_state(a, tr), int(time.time() * 1000)),
        ],
    )
    return name, a, b


async def test_tail_order_filter_on_a_topic_with_two_schema_versions(
    broker: TestBroker, tmp_path: Path, two_versions: tuple[str, str, str]
) -> None:
    topic, a, b = two_versions
    done = _tail(broker, tmp_path, topic, "--order", a)
    assert done.returncode == 0, done.stderr
    lines = _lines(done.stdout)
    assert [line["key"] for line in lines] == [a, a]
    assert {line["schema"] for line in lines} == {codec.ORDER_STATE}
    v1, v2 = sorted(lines, key=lambda line: line["value"]["version"])
    fields = set(codec.REGISTRY.schema(codec.ORDER_STATE).fields)
    assert set(v1["value"]) == fields == set(v2["value"])  # today's fields for both versions
    assert v1["value"]["amount"] is None
    assert v1["value"]["order_status"] == "PENDING"
    assert v2["value"]["amount"] == "12.5000"  # exact, as a string
    assert v2["value"]["currency"] == "EUR"
    assert v2["timestamp"].endswith("+00:00")
    assert isinstance(v2["timestamp_ms"], int)
    assert "3 records scanned, 2 printed" in done.stderr

    everything = _lines(_tail(broker, tmp_path, topic).stdout)
    assert sorted(line["key"] for line in everything) == sorted([a, a, b])


async def test_tail_transaction_and_since_filters(
    broker: TestBroker, tmp_path: Path, two_versions: tuple[str, str, str]
) -> None:
    topic, a, b = two_versions
    by_transaction = _lines(_tail(broker, tmp_path, topic, "--transaction", "tr_other").stdout)
    assert [line["key"] for line in by_transaction] == [b]
    recent = _lines(_tail(broker, tmp_path, topic, "--since", "10m").stdout)
    assert [(line["key"], line["value"]["version"]) for line in recent] == [(a, 2)]
    assert _lines(_tail(broker, tmp_path, topic, "--order", a, "--since", "2h").stdout)


async def test_tail_follow_prints_records_produced_later(
    broker: TestBroker, tmp_path: Path, two_versions: tuple[str, str, str]
) -> None:
    topic, a, _ = two_versions
    env = hookline_env(broker.bootstrap_servers, tmp_path)
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        *("-m", "hookline", "tail", topic, "--order", a, "--follow"),
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    assert process.stdout is not None

    async def next_line() -> dict[str, Any]:
        assert process.stdout is not None
        return json.loads(await asyncio.wait_for(process.stdout.readline(), 30))

    try:
        seen = [await next_line(), await next_line()]
        assert {line["value"]["version"] for line in seen} == {1, 2}
        producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap_servers)
        await producer.start()
        try:
            await producer.send_and_wait(topic, _v2_state(a, "tr_9"), key=a.encode())
        finally:
            await producer.stop()
        assert (await next_line())["value"]["transaction_id"] == "tr_9"
    finally:
        process.terminate()
        await asyncio.wait_for(process.wait(), 10)


def test_tail_unknown_topic_is_a_clear_error(broker: TestBroker, tmp_path: Path) -> None:
    done = _tail(broker, tmp_path, "production.no-such-topic")
    assert done.returncode == 1
    assert "no topic 'production.no-such-topic'" in done.stderr
    assert "Traceback" not in done.stderr


def test_tail_unreachable_broker_is_a_clear_error(tmp_path: Path) -> None:
    env = hookline_env(f"127.0.0.1:{free_port()}", tmp_path)
    done = subprocess.run(
        [sys.executable, "-m", "hookline", "tail", "production.orders.state"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert "cannot reach Kafka" in done.stderr
    assert "Traceback" not in done.stderr


def test_tail_bad_since_is_a_usage_error(tmp_path: Path) -> None:
    env = hookline_env("127.0.0.1:1", tmp_path)
    done = subprocess.run(
        [sys.executable, "-m", "hookline", "tail", "t", "--since", "yesterday"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "expected an ISO-8601 time" in done.stderr
    assert "Traceback" not in done.stderr
