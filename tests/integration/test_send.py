"""``hookline send``: a delivery signed as each verification method expects, body byte-exact.

A real gateway (tests/sources.test.toml, every method) on the session broker;
the raw record on ``production.webhooks.raw`` shows what the gateway accepted.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import jwt
import pytest
from hookline.infra.processes import ServiceProcess

from tests.conftest import hookline_env
from tests.support import processes
from tests.support.broker import TestBroker
from tests.support.kafka import read_topics
from tests.support.signing import DEV, PAYLOADS

TEST_SOURCES = Path(__file__).resolve().parents[1] / "sources.test.toml"


@pytest.fixture(scope="module")
def gateway(
    broker: TestBroker, log_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServiceProcess]:
    env = hookline_env(
        broker.bootstrap_servers,
        tmp_path_factory.mktemp("send-data"),
        HOOKLINE_SOURCES=str(TEST_SOURCES),
    )
    process = processes.gateway(env, log_dir).start()
    try:
        deadline = time.monotonic() + 30
        while httpx.get(f"{process.url}/readyz", timeout=3).status_code != 200:  # type: ignore[attr-defined]
            assert time.monotonic() < deadline, process.log()[-3000:]
            time.sleep(0.2)
        yield process
    finally:
        process.stop()


def send(gateway: ServiceProcess, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "hookline", "send", *args, "--url", gateway.url],  # type: ignore[attr-defined]
        env=gateway.env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def raw_body(bootstrap: str, delivery_id: str) -> bytes:
    def found(records: list) -> bool:  # type: ignore[type-arg]
        return any(r.value.get("delivery_id") == delivery_id for r in records)

    records = asyncio.run(
        read_topics(bootstrap, "production.webhooks.raw", until=found, timeout=30, idle=0.2)
    )
    (record,) = [r for r in records if r.value.get("delivery_id") == delivery_id]
    body = record.value["body"]
    return body if isinstance(body, bytes) else body.encode()


@pytest.mark.parametrize(
    ("source", "fixture"),
    [
        ("partner", "partner-order-status.json"),  # token
        ("vignette-sales", "vignette-sales-success.json"),  # hmac-sha256
        ("partner-stdhooks", "partner-order-status.json"),  # standard-webhooks
    ],
)
def test_send_signs_and_sends_the_file_byte_for_byte(
    gateway: ServiceProcess, broker: TestBroker, tmp_path: Path, source: str, fixture: str
) -> None:
    # A trailing newline and indentation: exactly what curl --data @file strips.
    path = tmp_path / fixture
    path.write_bytes((PAYLOADS / fixture).read_bytes().rstrip(b"\n") + b"\n\n")
    result = send(gateway, source, str(path))
    assert result.returncode == 0, result.stderr
    status, answer = result.stdout.strip().split(" ", 1)
    assert status == "200"
    delivery_id = json.loads(answer)["id"]
    assert raw_body(broker.bootstrap_servers, delivery_id) == path.read_bytes()


def test_send_makes_a_jwt_of_the_claims_for_a_jwt_source(
    gateway: ServiceProcess, broker: TestBroker
) -> None:
    claims_file = PAYLOADS / "payments-claims.json"
    result = send(gateway, "payments", str(claims_file))
    assert result.returncode == 0, result.stderr
    status, answer = result.stdout.strip().split(" ", 1)
    assert status == "200"
    body = json.loads(raw_body(broker.bootstrap_servers, json.loads(answer)["id"]))
    claims = jwt.decode(body["token"], DEV["PAYMENTS_SECRET"], algorithms=["HS256"])
    assert claims.items() >= json.loads(claims_file.read_bytes()).items()


def test_send_prints_a_refusal_and_exits_1(gateway: ServiceProcess, tmp_path: Path) -> None:
    wrong = dict(gateway.env, VIGNETTE_SALES_SECRET="not-the-gateway's-secret")
    result = subprocess.run(
        [
            *(sys.executable, "-m", "hookline", "send", "vignette-sales"),
            *(str(PAYLOADS / "vignette-sales-success.json"), "--url", gateway.url),  # type: ignore[attr-defined]
        ],
        env=wrong,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 1
    assert result.stdout.startswith("401 ")
    unknown = send(gateway, "no-such-source", str(PAYLOADS / "partner-order-status.json"))
    assert unknown.returncode == 1
    assert unknown.stderr.startswith("hookline send: no source 'no-such-source'")
