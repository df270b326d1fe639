"""The gateway probed as an attacker would, with only its URL (the gateway-hardening issue).

A real ``hookline gateway`` process against a real broker, with a short body
timeout and a small budget for unverified bodies so the bounds show quickly.
Timing and memory are measured from outside: the gateway's answers, its
connections closing, its resident memory (/proc), its log and its metrics.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import TEST_SOURCES, hookline_env
from tests.support import processes
from tests.support.attackers import attack, costly_json
from tests.support.broker import TestBroker
from tests.support.signing import DEV, hmac_signature, payload, payments_body

pytestmark = pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning")

PARTNER = DEV["PARTNER_SECRET"]
PAYMENTS = DEV["PAYMENTS_SECRET"]
VIGNETTE = DEV["VIGNETTE_SALES_SECRET"]
MB = 1024 * 1024
BODY_TIMEOUT_S = 2.0
BUDGET = 256 * 1024
CLAIMS: dict[str, Any] = json.loads(payload("payments-claims.json"))


@pytest.fixture(scope="module")
def hardened(
    broker: TestBroker, log_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[processes.ServiceProcess]:
    env = hookline_env(
        broker.bootstrap_servers,
        tmp_path_factory.mktemp("hardened-gateway"),
        HOOKLINE_SOURCES=str(TEST_SOURCES),
        HOOKLINE_BODY_TIMEOUT=str(BODY_TIMEOUT_S),
        HOOKLINE_UNVERIFIED_BODY_BYTES=str(BUDGET),
        HOOKLINE_API_DOCS="false",
    )
    process = processes.gateway(env, log_dir).start()
    try:
        deadline = time.monotonic() + 30
        while httpx.get(f"{process.url}/readyz", timeout=3).status_code != 200:  # type: ignore[attr-defined]
            assert time.monotonic() < deadline, f"gateway never ready:\n{process.log()[-3000:]}"
            time.sleep(0.2)
        yield process
    finally:
        process.stop()


@pytest.fixture(scope="module")
async def client(hardened: processes.ServiceProcess) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=hardened.url, timeout=15) as http:  # type: ignore[attr-defined]
        yield http


def address(process: processes.ServiceProcess) -> tuple[str, int]:
    url = httpx.URL(process.url)  # type: ignore[attr-defined]
    return url.host, url.port or 80


def head(path: str, *lines: str) -> bytes:
    return ("\r\n".join([f"POST {path} HTTP/1.1", "Host: 127.0.0.1", *lines]) + "\r\n\r\n").encode()


async def answer_of(
    reader: asyncio.StreamReader, within: float
) -> tuple[int, dict[str, str], bytes]:
    """Status, headers and body of one HTTP/1.1 answer with a Content-Length."""
    async with asyncio.timeout(within):
        raw = await reader.readuntil(b"\r\n\r\n")
        lines = raw.decode("latin-1").split("\r\n")
        headers = {}
        for line in lines[1:]:
            if ":" in line:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
        body = await reader.readexactly(int(headers.get("content-length", "0")))
    return int(lines[0].split()[1]), headers, body


async def closed_by_server(reader: asyncio.StreamReader, within: float) -> bool:
    try:
        async with asyncio.timeout(within):
            while await reader.read(65536):
                pass
    except TimeoutError:
        return False
    except ConnectionError:
        pass
    return True


def rss_bytes(process: processes.ServiceProcess) -> int:
    assert process.process is not None
    for line in Path(f"/proc/{process.process.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


async def scrape(client: httpx.AsyncClient) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    text = (await client.get("/metrics")).text
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def deliveries(samples: dict[Any, float], source: str, outcome: str) -> float:
    key = (
        "hookline_gateway_deliveries_total",
        frozenset({"source": source, "outcome": outcome}.items()),
    )
    return samples.get(key, 0.0)


def partner_body(**extra: Any) -> bytes:
    document = json.loads(payload("partner-order-status.json"))
    document.update(order_id=f"ord_{uuid.uuid4().hex}", **extra)
    return json.dumps(document).encode()


def fresh_payments(**claims: Any) -> bytes:
    return payments_body(
        {**CLAIMS, "orderReference": f"hard-{uuid.uuid4().hex}"}, PAYMENTS, **claims
    )


# -- 2. bodies behind a wrong token, stalled bodies, the budget -------------------------------


async def test_wrong_token_is_refused_before_any_body_byte_is_sent(
    hardened: processes.ServiceProcess,
) -> None:
    reader, writer = await asyncio.open_connection(*address(hardened))
    try:
        started = time.monotonic()
        writer.write(head("/webhooks/partner?token=WRONG", f"Content-Length: {MB}"))
        await writer.drain()
        status, headers, body = await answer_of(reader, within=3)
        assert time.monotonic() - started < 1.5
    finally:
        writer.close()
    assert status == 401
    assert headers["www-authenticate"].startswith("Token ")
    assert headers["connection"] == "close"
    assert json.loads(body) == {"detail": "verification failed: bad_token"}


async def test_stalled_bodies_behind_a_wrong_token_cost_little_memory_and_are_closed(
    hardened: processes.ServiceProcess,
) -> None:
    """200 connections each declare 1 MB, send all but its last byte, and stall."""
    connections, declared = 200, MB
    before = rss_bytes(hardened)
    peak = before
    done = asyncio.Event()

    async def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, rss_bytes(hardened))
            await asyncio.sleep(0.05)

    async def stall() -> float:
        reader, writer = await asyncio.open_connection(*address(hardened))
        try:
            writer.write(head("/webhooks/partner?token=WRONG", f"Content-Length: {declared}"))
            sent, piece = 0, b"a" * 65536
            with_room = declared - 1
            try:
                while sent < with_room:
                    writer.write(piece[: min(len(piece), with_room - sent)])
                    sent += min(len(piece), with_room - sent)
                    await writer.drain()
            except ConnectionError:
                pass  # the server answered and closed while we were still sending
            assert await closed_by_server(reader, within=30)
            return time.monotonic()
        finally:
            writer.close()

    sampler = asyncio.create_task(sample())
    started = time.monotonic()
    closed_at = await asyncio.gather(*(stall() for _ in range(connections)))
    done.set()
    await sampler
    growth = peak - before
    slowest = max(closed_at) - started
    print(
        f"\n200 stalled 1 MB bodies: RSS growth {growth / MB:.1f} MB, all closed in {slowest:.1f}s"
    )
    assert growth <= 100 * MB
    assert slowest <= 30


async def test_a_body_that_stops_arriving_is_answered_408_and_closed(
    hardened: processes.ServiceProcess, client: httpx.AsyncClient
) -> None:
    before = deliveries(await scrape(client), "partner", "body_timeout")
    reader, writer = await asyncio.open_connection(*address(hardened))
    try:
        started = time.monotonic()
        writer.write(head(f"/webhooks/partner?token={PARTNER}", "Content-Length: 1000") + b'{"a":')
        await writer.drain()
        status, _, body = await answer_of(reader, within=BODY_TIMEOUT_S + 5)
        took = time.monotonic() - started
        assert await closed_by_server(reader, within=5)
    finally:
        writer.close()
    assert status == 408
    assert BODY_TIMEOUT_S - 0.2 <= took <= BODY_TIMEOUT_S + 3
    assert json.loads(body)["detail"].startswith("body not received within")
    assert deliveries(await scrape(client), "partner", "body_timeout") == before + 1


async def test_a_stalled_unverified_body_is_evicted_to_make_room_and_tokens_are_not_charged(
    hardened: processes.ServiceProcess, client: httpx.AsyncClient
) -> None:
    gauge = ("hookline_gateway_unverified_body_bytes", frozenset())
    held = BUDGET // 4 - 16 * 1024  # most of one client address's share
    reader, holder = await asyncio.open_connection(*address(hardened))
    try:
        # An unverified sender (HMAC needs the body) holds most of its share, then stalls...
        holder.write(
            head("/webhooks/vignette-sales", "X-Signature: " + "0" * 64, f"Content-Length: {MB}")
        )
        holder.write(b"{" * held)
        await holder.drain()
        deadline = time.monotonic() + 10
        while (await scrape(client)).get(gauge, 0) < held:
            assert time.monotonic() < deadline, "the held bytes were never charged"
            await asyncio.sleep(0.05)
        # ...a sender proven by its query token is not charged at all...
        accepted = await client.post(
            "/webhooks/partner", params={"token": PARTNER}, content=partner_body(pad="x" * BUDGET)
        )
        assert accepted.status_code == 200, accepted.text
        await asyncio.sleep(1.2)  # stalled for longer than the gateway's 1 s
        # ...and the next unverified body that needs its room evicts the stalled one
        # (408, closed) instead of being refused.
        padded = json.dumps(
            {**json.loads(payload("vignette-sales-success.json")), "pad": "x" * 32 * 1024}
        ).encode()
        authentic = await client.post(
            "/webhooks/vignette-sales",
            content=padded,
            headers={"X-Signature": hmac_signature(padded, VIGNETTE)},
        )
        assert authentic.status_code == 200, authentic.text
        status, headers, body = await answer_of(reader, within=3)
        assert status == 408
        assert headers["connection"] == "close"
        assert json.loads(body)["detail"].startswith("body too slow")
        assert await closed_by_server(reader, within=3)
    finally:
        holder.close()
    deadline = time.monotonic() + 10
    while (await scrape(client)).get(gauge, 0) != 0:
        assert time.monotonic() < deadline, "the budget was not given back"
        await asyncio.sleep(0.05)
    assert deliveries(await scrape(client), "vignette-sales", "too_slow") >= 1


async def test_stalled_signed_bodies_do_not_starve_authentic_hmac_and_jwt_senders(
    hardened: processes.ServiceProcess, client: httpx.AsyncClient
) -> None:
    """32 connections stall HMAC and JWT bodies past the budget; every authentic delivery passes."""
    host, port = address(hardened)
    stalled: list[asyncio.StreamWriter] = []
    try:
        for i in range(32):
            _, writer = await asyncio.open_connection(host, port)
            if i % 2:
                writer.write(head("/webhooks/payments", "Content-Length: 16384") + b"{" * 16383)
            else:
                writer.write(
                    head(
                        "/webhooks/vignette-sales",
                        "X-Signature: " + "0" * 64,
                        f"Content-Length: {MB}",
                    )
                    + b"{" * (64 * 1024)
                )
            await writer.drain()
            stalled.append(writer)
        await asyncio.sleep(1.2)
        sale = payload("vignette-sales-success.json")
        statuses = []
        for _ in range(10):
            hmac_answer = await client.post(
                "/webhooks/vignette-sales",
                content=sale,
                headers={"X-Signature": hmac_signature(sale, VIGNETTE)},
            )
            jwt_answer = await client.post("/webhooks/payments", content=fresh_payments())
            statuses += [hmac_answer.status_code, jwt_answer.status_code]
        assert statuses == [200] * 20
    finally:
        for writer in stalled:
            writer.close()


# -- 1. CPU before authentication --------------------------------------------------------------


async def test_a_large_body_to_a_jwt_source_is_refused_without_being_read(
    hardened: processes.ServiceProcess,
) -> None:
    reader, writer = await asyncio.open_connection(*address(hardened))
    try:
        started = time.monotonic()
        writer.write(head("/webhooks/payments", f"Content-Length: {MB}") + b'{"token":"')
        await writer.drain()
        status, _, body = await answer_of(reader, within=3)
        assert time.monotonic() - started < 1.0
    finally:
        writer.close()
    assert status == 413
    assert json.loads(body)["detail"] == "body larger than 16384 bytes"


async def test_a_costly_body_at_the_jwt_limit_is_refused_quickly(client: httpx.AsyncClient) -> None:
    body = costly_json(16 * 1024)
    started = time.perf_counter()
    for _ in range(20):
        response = await client.post("/webhooks/payments", content=body)
        assert response.status_code == 401
    assert (time.perf_counter() - started) / 20 < 0.1


async def test_unauthenticated_flood_does_not_hurt_authentic_deliveries(
    hardened: processes.ServiceProcess, client: httpx.AsyncClient
) -> None:
    """8 clients flood the JWT source with 1 MB bodies for 5 s; every authentic delivery passes."""
    answers, stats = await attack(hardened.url, "/webhooks/payments", clients=8, seconds=5, size=MB)  # type: ignore[attr-defined]
    latencies = sorted(a.seconds for a in answers)
    print(
        f"\nflood: {stats.requests} attack requests {dict(stats.statuses)} cut {stats.cut}; "
        f"{len(answers)} authentic, max {latencies[-1] * 1000:.0f} ms"
    )
    assert stats.requests > 50  # the flood really ran
    assert len(answers) >= 40
    assert {a.status for a in answers} == {200}
    assert latencies[-1] < 2.0  # far from the 5 s publish timeout and a false 503
    assert (await client.get("/readyz")).status_code == 200
    assert not set(stats.statuses) - {401, 413}


# -- 3, 4, 6: what the body says --------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "body"),
    [
        ("payments", b'{"token":"\\ud800"}'),
        ("partner", partner_body()[:-1] + b', "note": "\\ud800"}'),
        ("partner", partner_body()[:-1] + b', "amount": 1e999}'),
        ("partner", partner_body()[:-1] + b', "status": "ACTIVE"}'),
    ],
    ids=["surrogate-token", "surrogate-partner-field", "infinity", "duplicate-partner-key"],
)
async def test_bodies_a_strict_reader_refuses_are_400_json(
    hardened: processes.ServiceProcess, client: httpx.AsyncClient, source: str, body: bytes
) -> None:
    params = {"token": PARTNER} if source == "partner" else {}
    response = await client.post(f"/webhooks/{source}", params=params, content=body)
    assert response.status_code == 400, response.text
    assert set(response.json()) == {"detail"}
    assert "Traceback" not in hardened.log()


async def test_a_forged_token_before_a_valid_one_is_refused(client: httpx.AsyncClient) -> None:
    valid = json.loads(fresh_payments())["token"]
    forged = jwt.encode(
        {**CLAIMS, "paymentStatus": "completed"}, "forged-key-0123456789abcdef01234", "HS256"
    )
    for body in (
        f'{{"token":"{forged}","token":"{valid}"}}',
        f'{{"token":"{valid}","token":"{forged}"}}',
    ):
        response = await client.post("/webhooks/payments", content=body.encode())
        assert response.status_code == 400
        assert "duplicate" in response.json()["detail"]


async def test_a_retry_past_exp_is_accepted_inside_the_retry_horizon(
    client: httpx.AsyncClient,
) -> None:
    now = int(time.time())
    retried = fresh_payments(iat=now - 73 * 3600, exp=now - 72 * 3600)
    assert (await client.post("/webhooks/payments", content=retried)).status_code == 200
    stale = fresh_payments(iat=now - 9 * 86400, exp=now - 8 * 86400)
    response = await client.post("/webhooks/payments", content=stale)
    assert response.status_code == 401
    assert response.json()["detail"] == "verification failed: jwt_expired"


# -- 5, 6: the HTTP surface -------------------------------------------------------------------


async def test_a_trailing_slash_is_a_404_never_a_redirect(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/webhooks/partner/",
        params={"token": PARTNER},
        content=partner_body(),
        headers={"Host": "evil.example"},
    )
    assert response.status_code == 404
    assert "location" not in response.headers
    assert response.json() == {"detail": "Not Found"}
    assert PARTNER not in response.text


@pytest.mark.parametrize(
    ("source", "params", "headers", "challenge"),
    [
        ("partner", {"token": "wrong"}, {}, "Token "),
        ("partner", {}, {}, "Token "),
        ("vignette-sales", {}, {"X-Signature": "0" * 64}, "HMAC-SHA256 "),
        ("payments", {}, {}, "JWT "),
        ("partner-stdhooks", {}, {}, "Standard-Webhooks "),
        ("partner-office", {"token": PARTNER}, {}, "Token "),
    ],
)
async def test_every_401_carries_a_challenge(
    client: httpx.AsyncClient,
    source: str,
    params: dict[str, str],
    headers: dict[str, str],
    challenge: str,
) -> None:
    body = fresh_payments(exp=1) if source == "payments" else partner_body()
    response = await client.post(
        f"/webhooks/{source}", params=params, content=body, headers=headers
    )
    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith(challenge)
    assert 'realm="hookline"' in response.headers["www-authenticate"]


async def test_a_verification_input_given_twice_is_refused(client: httpx.AsyncClient) -> None:
    body = partner_body()
    both_tokens = await client.post(
        "/webhooks/partner", params=[("token", "forged"), ("token", PARTNER)], content=body
    )
    assert both_tokens.status_code == 400
    assert "'token' given more than once" in both_tokens.json()["detail"]
    sale = payload("vignette-sales-success.json")
    good = hmac_signature(sale, VIGNETTE)
    two_signatures = await client.post(
        "/webhooks/vignette-sales",
        content=sale,
        headers=[("X-Signature", "0" * 64), ("X-Signature", good)],
    )
    assert two_signatures.status_code == 400
    assert "'x-signature' given more than once" in two_signatures.json()["detail"]


@pytest.mark.parametrize("path", ["/docs", "/redoc", "/openapi.json"])
async def test_api_docs_are_off_when_configured(client: httpx.AsyncClient, path: str) -> None:
    assert (await client.get(path)).status_code == 404


@pytest.mark.parametrize(
    "content_length", ["abc", "-1", "1, 2", "99999999999999999999999999"], ids=str
)
async def test_a_malformed_request_is_answered_in_json(
    hardened: processes.ServiceProcess, content_length: str
) -> None:
    reader, writer = await asyncio.open_connection(*address(hardened))
    try:
        writer.write(
            head(f"/webhooks/partner?token={PARTNER}", f"Content-Length: {content_length}") + b"{}"
        )
        await writer.drain()
        status, headers, body = await answer_of(reader, within=3)
    finally:
        writer.close()
    assert status in (400, 413)
    assert headers["content-type"] == "application/json"
    assert "detail" in json.loads(body)


async def test_a_client_leaving_mid_body_is_counted_without_a_traceback(
    hardened: processes.ServiceProcess, client: httpx.AsyncClient
) -> None:
    before = deliveries(await scrape(client), "partner", "client_gone")
    log_before = len(hardened.log())
    for _ in range(20):
        _, writer = await asyncio.open_connection(*address(hardened))
        writer.write(head(f"/webhooks/partner?token={PARTNER}", "Content-Length: 5000") + b'{"a":')
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.transport.abort()
    deadline = time.monotonic() + 10
    while deliveries(await scrape(client), "partner", "client_gone") < before + 20:
        assert time.monotonic() < deadline, "client_gone was not counted"
        await asyncio.sleep(0.05)
    added = hardened.log()[log_before:]
    assert "Traceback" not in added
    assert len(added) < 200


async def test_accepted_deliveries_write_no_log_line_and_refusals_are_rate_limited(
    hardened: processes.ServiceProcess, client: httpx.AsyncClient
) -> None:
    await asyncio.sleep(12)  # let the refusal log's bucket refill after the tests above
    log_before = len(hardened.log().splitlines())
    for _ in range(30):
        response = await client.post(
            "/webhooks/partner", params={"token": PARTNER}, content=partner_body()
        )
        assert response.status_code == 200
    await asyncio.sleep(0.3)
    assert len(hardened.log().splitlines()) == log_before
    for _ in range(300):
        response = await client.post("/webhooks/partner", params={"token": "wrong"}, content=b"{}")
        assert response.status_code == 401
    await asyncio.sleep(0.3)
    added = hardened.log().splitlines()[log_before:]
    assert 1 <= len(added) <= 40
    assert "refused source=partner status=401" in "\n".join(added)
