"""Unauthenticated clients and an authentic one, for the hardening tests and bench/attack.py.

An attacker knows only the gateway's URL: it POSTs large bodies to a source
again and again, as fast as the gateway lets it, and never has a valid
credential. The authentic client meanwhile sends one correctly signed
delivery every ``interval`` and records each answer's status and latency.
Both are bounded in time (``until``, a ``time.monotonic()`` deadline) and talk
to loopback only.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

from tests.support.signing import DEV, hmac_signature, payload, payments_body

CHUNK = 64 * 1024
MB = 1024 * 1024
#: The attack shapes: a declared 1 MB body, the same without a length
#: (chunked), and a body at the JWT source's limit built to be costly to parse.
SHAPES = ("declared", "chunked", "parse")


@dataclass
class AttackStats:
    requests: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    #: Connections the gateway closed or reset before answering (refused mid-send).
    cut: int = 0
    #: Connections opened.
    connections: int = 0


def costly_json(size: int) -> bytes:
    """A JSON object of exactly ``size`` bytes made of as many empty objects as fit."""
    head, tail = b'{"token":"x.y.z","p":[', b"]}"
    room = size - len(head) - len(tail)
    count = max(0, (room + 1) // 3)
    body = head + b",".join([b"{}"] * count) + tail
    return body + b" " * (size - len(body))


def _request(host: str, port: int, path: str, shape: str, size: int) -> tuple[bytes, list[bytes]]:
    """The request head and the body pieces to send after it."""
    lines = [f"POST {path} HTTP/1.1", f"Host: {host}:{port}", "Content-Type: application/json"]
    if shape == "chunked":
        lines.append("Transfer-Encoding: chunked")
        piece = f"{CHUNK:x}\r\n".encode() + b"{" * CHUNK + b"\r\n"
        pieces = [piece] * (size // CHUNK) + [b"0\r\n\r\n"]
    else:
        body = costly_json(size) if shape == "parse" else b"{" * size
        lines.append(f"Content-Length: {len(body)}")
        pieces = [body[i : i + CHUNK] for i in range(0, len(body), CHUNK)]
    return ("\r\n".join(lines) + "\r\n\r\n").encode(), pieces


async def attacker(
    host: str,
    port: int,
    path: str,
    shape: str,
    size: int,
    until: float,
    stats: AttackStats,
) -> None:
    """POST one body after another on fresh connections until the deadline."""
    head, pieces = _request(host, port, path, shape, size)
    while time.monotonic() < until:
        writer: asyncio.StreamWriter | None = None
        try:
            async with asyncio.timeout(max(0.1, until - time.monotonic())):
                reader, writer = await asyncio.open_connection(host, port)
                writer.write(head)
                for piece in pieces:
                    writer.write(piece)
                    await writer.drain()
                status_line = await reader.readline()
            stats.requests += 1
            if status_line.startswith(b"HTTP/1.1 "):
                stats.statuses[int(status_line.split()[1])] += 1
            else:
                stats.cut += 1
        except TimeoutError:
            break
        except (ConnectionError, OSError):
            stats.requests += 1
            stats.cut += 1
        finally:
            if writer is not None:
                writer.close()
                with contextlib.suppress(Exception):
                    await writer.wait_closed()


@dataclass
class Answer:
    status: int
    seconds: float


def payments_delivery() -> tuple[str, bytes, dict[str, str]]:
    """An authentic payments notification (a fresh payment each time)."""
    claims: dict[str, Any] = json.loads(payload("payments-claims.json"))
    claims["orderReference"] = f"attack-bench-{uuid.uuid4().hex}"
    return "/webhooks/payments", payments_body(claims, DEV["PAYMENTS_SECRET"]), {}


async def authentic(
    base_url: str,
    until: float,
    interval_s: float = 0.1,
    delivery: Callable[[], tuple[str, bytes, dict[str, str]]] = payments_delivery,
) -> list[Answer]:
    """One authentic delivery every ``interval_s`` (each waits for its answer)."""
    answers: list[Answer] = []
    async with httpx.AsyncClient(base_url=base_url, timeout=15.0) as client:
        next_at = time.monotonic()
        while next_at < until:
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
            path, body, headers = delivery()
            started = time.perf_counter()
            try:
                response = await client.post(
                    path, content=body, headers={"Content-Type": "application/json", **headers}
                )
                status = response.status_code
            except httpx.HTTPError:
                status = 0
            answers.append(Answer(status, time.perf_counter() - started))
            next_at += interval_s
    return answers


async def attack(
    base_url: str,
    path: str,
    clients: int,
    seconds: float,
    size: int,
    shapes: tuple[str, ...] = SHAPES,
    parse_size: int = 16 * 1024,
    interval_s: float = 0.1,
) -> tuple[list[Answer], AttackStats]:
    """``clients`` attackers on ``path`` while the authentic client delivers, ``seconds`` long."""
    url = httpx.URL(base_url)
    host, port = url.host, url.port or 80
    stats = AttackStats()
    until = time.monotonic() + seconds
    attackers = [
        attacker(
            host,
            port,
            path,
            shapes[i % len(shapes)],
            parse_size if shapes[i % len(shapes)] == "parse" else size,
            until,
            stats,
        )
        for i in range(clients)
    ]
    answers, *_ = await asyncio.gather(authentic(base_url, until, interval_s), *attackers)
    return answers, stats


# -- the second round's attack shapes: each one connection's conversation, repeated ---------

#: Attack shapes of bench/attack.py: what each unauthenticated client does, over and over.
ATTACKS = (
    "stalled-signed",
    "huge-headers",
    "idle",
    "slow-headers",
    "404-body",
    "log-flood",
    "body-flood",
)
#: How many clients each shape runs by default (idle: connections held at once).
DEFAULT_CLIENTS = {
    "stalled-signed": 64,
    "huge-headers": 4,
    "idle": 18_500,
    "slow-headers": 2_000,
    "404-body": 16,
    "log-flood": 16,
    "body-flood": 16,
}

Conversation = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[int]]


async def _status(reader: asyncio.StreamReader) -> int:
    """The status of the answer, 0 when the connection ends without one."""
    try:
        line = await reader.readline()
    except (ConnectionError, asyncio.IncompleteReadError):
        return 0
    return int(line.split()[1]) if line.startswith(b"HTTP/1.1 ") else 0


async def _stream_until_answered(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    piece: bytes,
    most: int,
    pause_s: float = 0.0,
) -> None:
    """Send ``piece`` again and again (at most ``most`` bytes) until the server answers."""
    sent = 0
    while sent < most and not reader._buffer and not reader.at_eof():  # type: ignore[attr-defined]  # noqa: SLF001 (answered yet?)
        writer.write(piece)
        sent += len(piece)
        await writer.drain()
        if pause_s:
            await asyncio.sleep(pause_s)


def stalled_signed(host: str, number: int) -> Conversation:
    """All of a signed source's body but its last byte, then nothing (HMAC or JWT, alternating)."""
    if number % 2:
        path, extra, size = "/webhooks/payments", "", 16 * 1024
    else:
        path, extra, size = "/webhooks/vignette-sales", "X-Signature: " + "0" * 64 + "\r\n", MB
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n{extra}"
        f"Content-Length: {size}\r\n\r\n"
    ).encode()
    body = b"0" * (size - 1)

    async def talk(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> int:
        writer.write(head)
        writer.write(body)
        await writer.drain()
        return await _status(reader)

    return talk


def huge_headers(host: str, number: int) -> Conversation:
    """One header value that never ends (up to 128 MB)."""
    head = f"POST /webhooks/vignette-sales HTTP/1.1\r\nHost: {host}\r\nX-Big: ".encode()

    async def talk(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> int:
        writer.write(head)
        with contextlib.suppress(ConnectionError):
            await _stream_until_answered(reader, writer, b"a" * CHUNK, 128 * MB)
        return await _status(reader)

    return talk


def idle(host: str, number: int) -> Conversation:
    """A connection that sends nothing and waits to be closed."""

    async def talk(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> int:
        with contextlib.suppress(ConnectionError):
            await reader.read()
        return 0

    return talk


def slow_headers(host: str, number: int) -> Conversation:
    """A request line, then one header byte a second (slowloris)."""

    async def talk(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> int:
        writer.write(f"POST /webhooks/partner HTTP/1.1\r\nHost: {host}\r\nX-Slow: ".encode())
        with contextlib.suppress(ConnectionError):
            await _stream_until_answered(reader, writer, b"a", 10_000, pause_s=1.0)
        return await _status(reader)

    return talk


def body_404(host: str, number: int) -> Conversation:
    """A 200 MiB body to a path that does not exist: streamed fast, or 1 byte a second."""
    head = (
        f"POST /no/such/path HTTP/1.1\r\nHost: {host}\r\nContent-Length: {200 * MB}\r\n\r\n"
    ).encode()
    trickle = bool(number % 2)

    async def talk(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> int:
        writer.write(head)
        with contextlib.suppress(ConnectionError):
            if trickle:
                await _stream_until_answered(reader, writer, b"x", 10_000, pause_s=1.0)
            else:
                await _stream_until_answered(reader, writer, b"x" * CHUNK, 200 * MB)
        return await _status(reader)

    return talk


def log_flood(host: str, number: int) -> Conversation:
    """Requests uvicorn itself logs: unparseable ones, and Upgrade requests."""
    request = (
        b"BROKEN \x00 REQUEST\r\n\r\n"
        if number % 2
        else f"GET /healthz HTTP/1.1\r\nHost: {host}\r\nConnection: Upgrade\r\n"
        f"Upgrade: websocket\r\n\r\n".encode()
    )

    async def talk(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> int:
        writer.write(request)
        await writer.drain()
        return await _status(reader)

    return talk


def body_flood(host: str, number: int, only: str | None = None) -> Conversation:
    """The first round's flood: 1 MB bodies (declared, chunked) or costly JSON, to payments."""
    shape = only or SHAPES[number % len(SHAPES)]
    head, pieces = _request(
        host, 0, "/webhooks/payments", shape, 16 * 1024 if shape == "parse" else MB
    )

    async def talk(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> int:
        writer.write(head)
        with contextlib.suppress(ConnectionError):
            for piece in pieces:
                writer.write(piece)
                await writer.drain()
        return await _status(reader)

    return talk


CONVERSATIONS: dict[str, Callable[[str, int], Conversation]] = {
    "stalled-signed": stalled_signed,
    "huge-headers": huge_headers,
    "idle": idle,
    "slow-headers": slow_headers,
    "404-body": body_404,
    "log-flood": log_flood,
    "body-flood": body_flood,
    **{
        kind: (lambda host, number, kind=kind: body_flood(host, number, kind))  # type: ignore[misc]
        for kind in SHAPES
    },
}


async def repeat(
    host: str, port: int, talk: Conversation, until: float, stats: AttackStats
) -> None:
    """Run ``talk`` on a fresh connection after another until the deadline."""
    while time.monotonic() < until:
        writer: asyncio.StreamWriter | None = None
        try:
            async with asyncio.timeout(max(0.05, until - time.monotonic())):
                reader, writer = await asyncio.open_connection(host, port)
                stats.connections += 1
                status = await talk(reader, writer)
            stats.requests += 1
            if status:
                stats.statuses[status] += 1
            else:
                stats.cut += 1
        except TimeoutError:
            break
        except (ConnectionError, OSError):
            stats.requests += 1
            stats.cut += 1
            await asyncio.sleep(0.05)  # refused or out of descriptors: no hot loop
        finally:
            if writer is not None:
                writer.transport.abort()


def authentic_rotation() -> Callable[[], tuple[str, bytes, dict[str, str]]]:
    """Authentic deliveries to a token, an HMAC and a JWT source, in turn."""
    sale: dict[str, Any] = json.loads(payload("vignette-sales-success.json"))
    partner: dict[str, Any] = json.loads(payload("partner-order-status.json"))
    # Read once: under the idle shape the attackers hold nearly every descriptor.
    claims: dict[str, Any] = json.loads(payload("payments-claims.json"))
    turn = 0

    def next_delivery() -> tuple[str, bytes, dict[str, str]]:
        nonlocal turn
        turn += 1
        unique = uuid.uuid4().hex
        if turn % 3 == 0:
            fresh = {**claims, "orderReference": f"attack-bench-{unique}"}
            return "/webhooks/payments", payments_body(fresh, DEV["PAYMENTS_SECRET"]), {}
        if turn % 3 == 1:
            body = json.dumps({**partner, "order_id": f"ord_{unique}"}).encode()
            return f"/webhooks/partner?token={DEV['PARTNER_SECRET']}", body, {}
        body = json.dumps({**sale, "pad": unique}).encode()
        return (
            "/webhooks/vignette-sales",
            body,
            {"X-Signature": hmac_signature(body, DEV["VIGNETTE_SALES_SECRET"])},
        )

    return next_delivery


async def shaped_attack(
    base_url: str, shape: str, clients: int, seconds: float, interval_s: float
) -> tuple[list[Answer], AttackStats]:
    """``clients`` of ``shape`` while the authentic rotation delivers, ``seconds`` long.

    The authentic client runs on an event loop of its own, in a thread: thousands
    of attacking connections on its loop would delay it by their own
    callbacks, which is the bench's cost, not the gateway's.
    """
    url = httpx.URL(base_url)
    host, port = url.host, url.port or 80
    stats = AttackStats()
    until = time.monotonic() + seconds
    make = CONVERSATIONS[shape]
    attackers = [repeat(host, port, make(host, i), until, stats) for i in range(clients)]
    client = authentic(base_url, until, interval_s, authentic_rotation())
    answers, *_ = await asyncio.gather(asyncio.to_thread(asyncio.run, client), *attackers)
    return answers, stats
