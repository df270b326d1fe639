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
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

from tests.support.signing import DEV, payload, payments_body

CHUNK = 64 * 1024
#: The attack shapes: a declared 1 MB body, the same without a length
#: (chunked), and a body at the JWT source's limit built to be costly to parse.
SHAPES = ("declared", "chunked", "parse")


@dataclass
class AttackStats:
    requests: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    #: Connections the gateway closed or reset before answering (refused mid-send).
    cut: int = 0


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
