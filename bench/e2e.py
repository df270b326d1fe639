"""End to end: the realistic mix posted through the gateway, timed to each order's state.

What it measures: the time from the gateway's 200 for a delivery to the
``<env>.orders.state`` record that delivery produced (the worker's producer
timestamp), p50 and p99 over every state change the measured deliveries
caused, while the mix (bench/mix.py) is posted at half of the gateway's
measured maximum. Retries and duplicates cause no state and are not counted.

How: an embedded broker, one ``hookline gateway`` and one ``hookline
worker`` (memory store, 4 partitions), all child processes. First the
gateway's maximum: ``--max-requests`` deliveries of another mix, closed loop
on ``--concurrency`` keep-alive connections (a bare HTTP/1.1 client that
costs little CPU in this process). Then, once the worker is idle again, the
measured mix open loop at half that rate: delivery i is due at i / rate, and
waits only for the 200 of the previous delivery of its own story (a provider
sends an order's next event after the last one was answered). A delivery's
state record is found through ``orders.changes``: the change of
(order, version) names its ``cause.delivery_id``. The run ends when every
order's latest state is the one its deliveries lead to, which is checked.

    .venv/bin/python bench/e2e.py [--records 10000] [--max-requests 3000] [--rate-share 0.5]
        [--json]

``--rate-share`` posts at another share of the maximum, to see how the
latency grows with the rate.

``--json``: the common fields (bench/README.md; ``records_per_s`` is the
posted rate, ``baseline_records_per_s`` the closed-loop maximum, ``ratio``
their quotient) plus ``p50_ms``, ``p99_ms``, ``max_ms``, ``states``,
``exact``, and ``cores``: each process's cores over the posting (worker,
gateway, broker, this bench), since on two shared cores a latency
percentile is first a question of who had the CPU.
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run as `python bench/e2e.py`: put the repository first (bench/gateway.py
# would shadow the `gateway` package).
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse
import asyncio
import json
import math
import os
import tempfile
import time
import uuid
from typing import Any
from urllib.parse import quote

import mix
from _common import (
    REPO,
    cpu_seconds,
    cpu_times,
    hookline_command,
    hookline_env,
    load_average,
    percentile,
    print_json,
    say,
    steal_share,
    table,
)
from aiokafka import AIOKafkaConsumer
from aiokafka.structs import TopicPartition
from hookline.core import topics
from hookline.infra.broker import EmbeddedBroker, free_port
from hookline.infra.processes import ServiceProcess
from hookline.schemas import codec
from hookline.streams.end_offsets import fetched_end_offsets

from hookline.supervisor import dev_secrets
from tests.support.signing import hmac_signature

PARTITIONS = 4
TOKEN_SECRETS = {
    "partner": "PARTNER_SECRET",
    "partner-sandbox": "PARTNER_SANDBOX_SECRET",
    "envelope": "ENVELOPE_SECRET",
}


def request_bytes(delivery: mix.Delivery, port: int, secrets: dict[str, str]) -> bytes:
    """The HTTP/1.1 request a provider sends, signed the way its source verifies."""
    target = f"/webhooks/{delivery.source}"
    headers = {"host": f"127.0.0.1:{port}", "content-type": "application/json"}
    if delivery.source in TOKEN_SECRETS:
        target += f"?token={quote(secrets[TOKEN_SECRETS[delivery.source]])}"
    elif delivery.source == "vignette-sales":
        headers["x-signature"] = hmac_signature(delivery.body, secrets["VIGNETTE_SALES_SECRET"])
    headers["content-length"] = str(len(delivery.body))
    head = [f"POST {target} HTTP/1.1", *(f"{k}: {v}" for k, v in headers.items())]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + delivery.body


class Connection:
    """A bare keep-alive HTTP/1.1 connection (loopback, answers with Content-Length)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post(self, request: bytes) -> tuple[int, bytes]:
        if self.reader is None or self.writer is None:
            self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        self.writer.write(request)
        await self.writer.drain()
        head = (await self.reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
        status = int(head[0].split(" ", 2)[1])
        length = next(
            (
                int(v)
                for n, _, v in (h.partition(":") for h in head[1:])
                if n.lower() == "content-length"
            ),
            0,
        )
        body = await self.reader.readexactly(length)
        if any(h.lower().replace(" ", "") == "connection:close" for h in head[1:]):
            await self.close()
        return status, body

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


async def closed_loop(port: int, requests: list[bytes], concurrency: int) -> float:
    """Requests/s with ``concurrency`` connections each posting back to back."""
    queue = iter(requests)
    bad = 0

    async def loop() -> None:
        nonlocal bad
        connection = Connection(port)
        for request in queue:
            status, _ = await connection.post(request)
            bad += status != 200
        await connection.close()

    started = time.perf_counter()
    await asyncio.gather(*(loop() for _ in range(concurrency)))
    seconds = time.perf_counter() - started
    if bad:
        raise RuntimeError(f"{bad} of {len(requests)} posts were not answered 200")
    return len(requests) / seconds


async def open_loop(
    port: int, deliveries: list[mix.Delivery], requests: list[bytes], rate: float, connections: int
) -> tuple[dict[str, float], int, float]:
    """Post at ``rate``, each delivery after its story's previous one was answered.

    Returns delivery id -> epoch ms of its 200, how many started over 5 ms
    late, and the wall seconds.
    """
    idle: asyncio.Queue[Connection] = asyncio.Queue()
    for _ in range(connections):
        idle.put_nowait(Connection(port))
    answered: dict[str, float] = {}
    previous: dict[int, asyncio.Task[None]] = {}
    late = 0

    async def one(request: bytes, before: asyncio.Task[None] | None) -> None:
        if before is not None:
            await before
        connection = await idle.get()
        try:
            status, body = await connection.post(request)
            at = time.time() * 1000
        finally:
            idle.put_nowait(connection)
        if status != 200:
            raise RuntimeError(f"gateway answered {status}: {body[:200]!r}")
        answered[json.loads(body)["id"]] = at

    tasks = []
    started = time.perf_counter()
    for index, (delivery, request) in enumerate(zip(deliveries, requests, strict=True)):
        due = started + index / rate
        wait = due - time.perf_counter()
        if wait > 0:
            await asyncio.sleep(wait)
        elif wait < -0.005:
            late += 1
        task = asyncio.create_task(one(request, previous.get(delivery.story)))
        previous[delivery.story] = task
        tasks.append(task)
    await asyncio.gather(*tasks)
    return answered, late, time.perf_counter() - started


class Reader:
    """Every ``orders.changes`` and ``orders.state`` record from the true end on."""

    def __init__(self, bootstrap: str, environments: list[str]) -> None:
        self.bootstrap = bootstrap
        self.topics = [topics.orders_changes(e) for e in environments]
        self.topics += [topics.orders_state(e) for e in environments]
        self.consumer = AIOKafkaConsumer(
            isolation_level="read_committed",
            bootstrap_servers=bootstrap,
            group_id=None,
            enable_auto_commit=False,
            fetch_max_wait_ms=10,
        )
        self.records: list[Any] = []

    async def start(self) -> None:
        await self.consumer.start()
        await self.consumer.topics()
        assigned = [
            TopicPartition(t, p)
            for t in self.topics
            for p in sorted(self.consumer.partitions_for_topic(t) or ())
        ]
        self.consumer.assign(assigned)
        listed = await self.consumer.end_offsets(assigned)
        ends = await fetched_end_offsets({"bootstrap_servers": self.bootstrap}, listed)
        for tp in assigned:
            self.consumer.seek(tp, ends[tp])

    async def read(self, seconds: float) -> int:
        """Read for ``seconds``; the number of records read."""
        until, count = time.perf_counter() + seconds, 0
        while time.perf_counter() < until:
            for messages in (await self.consumer.getmany(timeout_ms=50)).values():
                self.records.extend(messages)
                count += len(messages)
        return count

    async def stop(self) -> None:
        await self.consumer.stop()


def latencies(
    records: list[Any], answered: dict[str, float], expected: dict[tuple[str, str], Any]
) -> tuple[list[float], list[Any]]:
    """(ms from 200 to state, per state change of a measured delivery), and the orders not exact."""
    cause: dict[tuple[str, str, int], str] = {}
    states: list[tuple[str, str, int, int]] = []
    latest: dict[tuple[str, str], dict[str, Any]] = {}
    for r in records:
        if r.value is None:
            continue
        env = r.topic.split(".", 1)[0]
        _, value = codec.decode(r.value)
        if r.topic.endswith(".orders.changes"):
            cause[(env, value["order_id"], value["version"])] = value["cause"]["delivery_id"]
        else:
            states.append((env, value["order_id"], value["version"], r.timestamp))
            latest[(env, value["order_id"])] = value
    out = []
    for env, order, version, stamp in states:
        delivery = cause.get((env, order, version))
        if delivery in answered:
            out.append(stamp - answered[delivery])
    return out, mix.mismatches(latest, expected)


async def measure(
    args: argparse.Namespace, bootstrap: str, port: int, pids: dict[str, int | None]
) -> dict[str, Any]:
    secrets = dev_secrets()
    tag = uuid.uuid4().hex[:8]
    probe, _, _ = mix.deliveries(args.max_requests, f"max-{tag}", seed=11)
    measured, expected, stories = mix.deliveries(args.records, f"e2e-{tag}")
    say(f"gateway maximum: {len(probe)} deliveries, closed loop, {args.concurrency} connections")
    maximum = await closed_loop(
        port, [request_bytes(d, port, secrets) for d in probe], args.concurrency
    )
    rate = maximum * args.rate_share
    say(f"  {maximum:.0f} deliveries/s; posting {len(measured)} at {rate:.0f}/s")
    reader = Reader(bootstrap, ["production", "sandbox"])
    await reader.start()
    while await reader.read(2.0):  # the worker catching up on the probe
        reader.records.clear()
    reader.records.clear()
    requests = [request_bytes(d, port, secrets) for d in measured]
    worker_pid = pids["worker"]
    machine, cpu = cpu_times(), cpu_seconds(worker_pid)
    busy = {name: cpu_seconds(pid) for name, pid in pids.items()}
    load_start = load_average()
    posting = asyncio.create_task(open_loop(port, measured, requests, rate, args.concurrency))
    while not posting.done():
        await reader.read(0.5)
    answered, late, seconds = await posting
    cores = {name: (cpu_seconds(pid) - busy[name]) / seconds for name, pid in pids.items()}
    deadline = time.perf_counter() + args.timeout
    while True:
        await reader.read(1.0)
        found, wrong = latencies(reader.records, answered, expected)
        if not wrong or time.perf_counter() > deadline:
            break
    await reader.stop()
    return {
        "maximum": maximum,
        "rate": rate,
        "posted": len(measured),
        "seconds": seconds,
        "late": late,
        "latencies": found,
        "wrong": wrong,
        "orders": len(expected),
        "stories": dict(stories),
        "worker_cpu": cpu_seconds(worker_pid) - cpu,
        "cores": cores,
        "steal": steal_share(machine, cpu_times()),
        "load_start": load_start,
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--records", type=int, default=10000, help="deliveries posted (measured)")
    parser.add_argument("--max-requests", type=int, default=3000, help="deliveries to find the max")
    parser.add_argument("--concurrency", type=int, default=32, help="keep-alive connections")
    parser.add_argument(
        "--rate-share",
        type=float,
        default=0.5,
        help="post at this share of the gateway's measured maximum (default 0.5)",
    )
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for states")
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    args = parser.parse_args()
    load_before = load_average()
    with tempfile.TemporaryDirectory(prefix="hookline-e2e-") as tmp:
        logs = Path(tmp)
        with EmbeddedBroker(log_path=logs / "broker.log") as broker:
            bootstrap = broker.bootstrap_servers
            port, worker_port = free_port(), free_port()
            env = hookline_env(
                bootstrap,
                HOOKLINE_STORE="memory",
                HOOKLINE_PARTITIONS=str(PARTITIONS),
                HOOKLINE_DATA_DIR=str(logs / "data"),
            )
            worker = ServiceProcess(
                "hookline worker",
                hookline_command("worker", "--web-port", str(worker_port)),
                env,
                logs / "worker.log",
                cwd=REPO,
            )
            gateway = ServiceProcess(
                "hookline gateway",
                hookline_command("gateway", "--port", str(port)),
                env,
                logs / "gateway.log",
                cwd=REPO,
            )
            with worker, gateway:
                worker.wait_ready(120, url=f"http://127.0.0.1:{worker_port}/readyz")
                gateway.wait_ready(60, url=f"http://127.0.0.1:{port}/readyz")
                say("worker and gateway ready")
                pids = {
                    "worker": worker.process.pid if worker.process else None,
                    "gateway": gateway.process.pid if gateway.process else None,
                    "broker": broker.pid,
                    "bench": os.getpid(),
                }
                result = asyncio.run(measure(args, bootstrap, port, pids))
    load_after = load_average()
    found = result["latencies"]
    p50, p99 = percentile(found, 0.5), percentile(found, 0.99)
    say(f"load average (1 min): {load_before:.2f} before, {load_after:.2f} after")
    if result["wrong"]:
        say(f"{len(result['wrong'])} order(s) not exact, e.g. {result['wrong'][:3]}")
    document = {
        "bench": "e2e",
        "records": result["posted"],
        "records_per_s": round(result["posted"] / result["seconds"], 1),
        "baseline_records_per_s": round(result["maximum"], 1),
        "ratio": round(result["posted"] / result["seconds"] / result["maximum"], 4),
        "cpu_ms_per_record": round(1000 * result["worker_cpu"] / result["posted"], 4),
        "first_out_ms": None,
        "p50_ms": round(p50, 1),
        "p99_ms": round(p99, 1),
        "max_ms": round(max(found), 1) if found else None,
        "states": len(found),
        "orders": result["orders"],
        "stories": result["stories"],
        "rate_share": args.rate_share,
        "late_starts": result["late"],
        "exact": not result["wrong"],
        "not_exact": len(result["wrong"]),
        "steal_share": round(result["steal"], 4),
        "cores": {
            name: None if math.isnan(used) else round(used, 2)
            for name, used in result["cores"].items()
        },
        "load_average": [round(load_before, 2), round(load_after, 2)],
    }
    if args.json:
        print_json(document)
    else:
        print(
            table(
                ["gateway max/s", "posted/s", "states", "p50 ms", "p99 ms", "max ms", "exact"],
                [
                    [
                        f"{result['maximum']:.0f}",
                        f"{document['records_per_s']:.0f}",
                        str(len(found)),
                        f"{p50:.1f}",
                        f"{p99:.1f}",
                        str(document["max_ms"]),
                        str(document["exact"]),
                    ]
                ],
            )
        )
    return 0 if not result["wrong"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
