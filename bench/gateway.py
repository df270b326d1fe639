"""Gateway throughput: the real ``hookline gateway`` against a do-nothing FastAPI baseline.

Why a baseline: absolute requests/s on a 2-core laptop or CI box say little
and drift with the machine. Both servers run here, under the same uvicorn
settings and the same load generator, so ``hookline / baseline`` is the share
of the raw HTTP stack's capacity that is left once hookline verifies, parses,
encodes and waits for Kafka's acknowledgement (acks=all) on every request.

What runs: an embedded broker (Tansu), ``hookline gateway`` with the dev
sources file and dev secrets, and ``bench/_baseline_app.py``; all three are
child processes. Two request kinds are measured on both servers: partner
(token in the query string, partner-order-status.json) and vignette-sales
(HMAC-SHA256 ``X-Signature``, vignette-sales-success.json).

The load generator runs in this process: ``--concurrency`` keep-alive
connections, each its own loop, ``--requests`` requests per run after an
unmeasured warm-up. It competes for the same 2 cores as the server it drives,
so the baseline's numbers are partly the client's limit and the ratio is an
upper bound of hookline's relative speed. The default client is
httpx.AsyncClient (about 1 ms of CPU per request here); ``--client raw`` is a
bare HTTP/1.1 client that costs a tenth of that and shows the servers' own
gap more truthfully.

    .venv/bin/python bench/gateway.py [--requests 5000] [--concurrency 32] [--client raw]
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run as `python bench/gateway.py`, sys.path[0] is bench/, where this very file
# would shadow the `gateway` package: put the repository first.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse
import asyncio
import contextlib
import hashlib
import hmac
import re
import tempfile
import time
from collections import Counter
from dataclasses import dataclass

import httpx
from _common import (
    BENCH,
    PAYLOADS,
    REPO,
    hookline_command,
    hookline_env,
    percentile,
    say,
    table,
)

from hookline.supervisor import dev_secrets
from infra.broker import EmbeddedBroker, free_port
from infra.processes import ServiceProcess


@dataclass(frozen=True)
class Variant:
    """One kind of request: a source, its verification, and a real example body."""

    name: str
    path: str
    body: bytes
    headers: dict[str, str]


@dataclass(frozen=True)
class RunResult:
    server: str
    variant: str
    requests: int
    seconds: float
    p50_ms: float
    p99_ms: float
    statuses: dict[int, int]

    @property
    def rps(self) -> float:
        return self.requests / self.seconds


def variants() -> list[Variant]:
    """partner (token in the query string) and vignette-sales (HMAC-SHA256 header)."""
    secrets = dev_secrets()
    partner = (PAYLOADS / "partner-order-status.json").read_bytes()
    sales = (PAYLOADS / "vignette-sales-success.json").read_bytes()
    signature = hmac.new(
        secrets["VIGNETTE_SALES_SECRET"].encode(), sales, hashlib.sha256
    ).hexdigest()
    return [
        Variant(
            "partner/token",
            f"/webhooks/partner?token={secrets['PARTNER_SECRET']}",
            partner,
            {"content-type": "application/json"},
        ),
        Variant(
            "vignette-sales/hmac-sha256",
            "/webhooks/vignette-sales",
            sales,
            {"content-type": "application/json", "x-signature": signature},
        ),
    ]


class HttpxConnection:
    """One keep-alive connection through its own ``httpx.AsyncClient``.

    One client per connection rather than one pool of ``--concurrency``
    connections: httpcore's pool rescans every connection for every queued
    request (encode/httpcore#1035, encode/httpx#3215), which on this machine
    capped a shared 32-connection pool at ~250 req/s, far below either server.
    """

    def __init__(self, url: str, variant: Variant) -> None:
        self.url = url
        self.variant = variant
        self.client = httpx.AsyncClient(
            limits=httpx.Limits(max_connections=1, max_keepalive_connections=1), timeout=30.0
        )

    async def post(self) -> int:
        response = await self.client.post(
            self.url, content=self.variant.body, headers=self.variant.headers
        )
        return response.status_code

    async def close(self) -> None:
        await self.client.aclose()


class RawConnection:
    """A bare HTTP/1.1 keep-alive connection on asyncio streams (``--client raw``).

    httpx spends about a millisecond of CPU per request in this process, on
    the same two cores as the server; this client spends a tenth of that, so
    its numbers are closer to what the servers can do. Only for loopback and
    for answers with a Content-Length (both servers send one).
    """

    def __init__(self, url: str, variant: Variant) -> None:
        parsed = httpx.URL(url)
        self.host = parsed.host
        self.port = parsed.port or 80
        target = parsed.raw_path.decode()
        head = [f"POST {target} HTTP/1.1", f"host: {self.host}:{self.port}"]
        head += [f"{k}: {v}" for k, v in variant.headers.items()]
        head.append(f"content-length: {len(variant.body)}")
        self.request = ("\r\n".join(head) + "\r\n\r\n").encode() + variant.body
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post(self) -> int:
        if self.reader is None or self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        self.writer.write(self.request)
        await self.writer.drain()
        head = await self.reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        length = 0
        close = False
        for line in lines[1:]:
            name, _, value = line.partition(":")
            if name.strip().lower() == "content-length":
                length = int(value)
            elif name.strip().lower() == "connection" and value.strip().lower() == "close":
                close = True
        await self.reader.readexactly(length)
        if close:
            await self.close()
        return status

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            with contextlib.suppress(OSError):
                await self.writer.wait_closed()
        self.reader = self.writer = None


Connection = HttpxConnection | RawConnection
CLIENTS: dict[str, type[HttpxConnection] | type[RawConnection]] = {
    "httpx": HttpxConnection,
    "raw": RawConnection,
}


async def drive(
    connections: list[Connection], requests: int, quiet: bool = False
) -> tuple[float, list[float], Counter[int]]:
    """Send ``requests`` POSTs, one loop per connection; time each request."""
    latencies: list[float] = []
    statuses: Counter[int] = Counter()
    issued = 0

    async def loop(connection: Connection) -> None:
        nonlocal issued
        while issued < requests:
            issued += 1
            started = time.perf_counter()
            status = await connection.post()
            latencies.append(time.perf_counter() - started)
            statuses[status] += 1

    async def report(started: float) -> None:
        while True:
            await asyncio.sleep(2.0)
            done = len(latencies)
            rate = done / (time.perf_counter() - started)
            say(f"    {done}/{requests} requests, {rate:.0f} req/s so far")

    started = time.perf_counter()
    reporter = None if quiet else asyncio.create_task(report(started))
    try:
        await asyncio.gather(*(loop(c) for c in connections))
    finally:
        if reporter is not None:
            reporter.cancel()
    return time.perf_counter() - started, latencies, statuses


async def run_one(
    server: str,
    base_url: str,
    variant: Variant,
    args: argparse.Namespace,
) -> RunResult:
    url = base_url + variant.path
    connections = [CLIENTS[args.client](url, variant) for _ in range(args.concurrency)]
    try:
        # Warm-up: connections open, both servers' code paths and caches warm.
        await drive(connections, args.warmup, quiet=True)
        say(
            f"  {server:<9} {variant.name}: {args.requests} requests, "
            f"{args.concurrency} connections ({args.client} client)"
        )
        seconds, latencies, statuses = await drive(connections, args.requests)
    finally:
        for connection in connections:
            await connection.close()
    result = RunResult(
        server,
        variant.name,
        args.requests,
        seconds,
        percentile(latencies, 0.50) * 1000,
        percentile(latencies, 0.99) * 1000,
        dict(statuses),
    )
    say(
        f"  {server:<9} {variant.name}: {result.rps:.0f} req/s, "
        f"p50 {result.p50_ms:.1f} ms, p99 {result.p99_ms:.1f} ms, statuses {result.statuses}"
    )
    return result


def accepted_by_gateway(metrics_url: str) -> int:
    """Deliveries the gateway counted as accepted: proof every 200 was really published."""
    text = httpx.get(metrics_url, timeout=5.0).text
    pattern = r'^hookline_gateway_deliveries_total\{[^}]*outcome="accepted"[^}]*\} (\S+)$'
    return int(sum(float(m) for m in re.findall(pattern, text, re.MULTILINE)))


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=5000, help="measured requests per run")
    parser.add_argument("--concurrency", type=int, default=32, help="concurrent connections")
    parser.add_argument("--warmup", type=int, default=300, help="unmeasured requests per run")
    parser.add_argument(
        "--client",
        choices=sorted(CLIENTS),
        default="httpx",
        help="load generator: httpx.AsyncClient (default) or a bare HTTP/1.1 client",
    )
    args = parser.parse_args()

    results: list[RunResult] = []
    with tempfile.TemporaryDirectory(prefix="hookline-bench-") as tmp:
        logs = Path(tmp)
        say(f"gateway benchmark; logs in {logs}")
        with EmbeddedBroker(log_path=logs / "broker.log") as broker:
            say(f"broker up at {broker.bootstrap_servers}")
            gw_port, base_port = free_port(), free_port()
            gateway = ServiceProcess(
                "hookline gateway",
                hookline_command("gateway", "--port", str(gw_port)),
                hookline_env(broker.bootstrap_servers),
                logs / "gateway.log",
                cwd=REPO,
            )
            baseline = ServiceProcess(
                "baseline",
                [sys.executable, str(BENCH / "_baseline_app.py"), "--port", str(base_port)],
                hookline_env(broker.bootstrap_servers),
                logs / "baseline.log",
                cwd=REPO,
            )
            with gateway, baseline:
                # /readyz: the gateway answers 200 only once its Kafka producer is up.
                took = gateway.wait_ready(60, url=f"http://127.0.0.1:{gw_port}/readyz")
                say(f"hookline gateway ready in {took:.1f}s on port {gw_port}")
                baseline.wait_ready(60, url=f"http://127.0.0.1:{base_port}/healthz")
                say(f"baseline ready on port {base_port}")
                servers = {
                    "baseline": f"http://127.0.0.1:{base_port}",
                    "hookline": f"http://127.0.0.1:{gw_port}",
                }
                for variant in variants():
                    for server, base_url in servers.items():
                        results.append(asyncio.run(run_one(server, base_url, variant, args)))
                accepted = accepted_by_gateway(f"http://127.0.0.1:{gw_port}/metrics")
                expected = len(variants()) * (args.requests + args.warmup)
                say(f"gateway counted {accepted} accepted deliveries (sent {expected})")

    rows = []
    failed = accepted != expected
    for variant in variants():
        base = next(r for r in results if r.server == "baseline" and r.variant == variant.name)
        hook = next(r for r in results if r.server == "hookline" and r.variant == variant.name)
        for r in (base, hook):
            failed |= set(r.statuses) != {200}
            rows.append(
                [
                    r.variant,
                    r.server,
                    f"{r.rps:.0f}",
                    f"{r.p50_ms:.1f}",
                    f"{r.p99_ms:.1f}",
                    f"{r.rps / base.rps:.2f}",
                    ",".join(f"{k}x{v}" for k, v in sorted(r.statuses.items())),
                ]
            )
    print()
    print(
        f"gateway: {args.requests} requests per run, {args.concurrency} connections, "
        f"{args.client} client (ratio = requests/s relative to the baseline)"
    )
    print(
        table(
            ["variant", "server", "req/s", "p50 ms", "p99 ms", "ratio", "statuses"],
            rows,
        )
    )
    if failed:
        print(
            "some requests were not answered 200 or not counted as accepted: "
            "the numbers above are not comparable"
        )
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
