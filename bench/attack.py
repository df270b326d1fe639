"""The gateway under attack: do unauthenticated clients slow authentic deliveries down?

What runs: an embedded broker (Tansu) and the real ``hookline gateway`` with
the dev sources file, both child processes on 127.0.0.1. An authentic client
sends one signed payments notification every ``--interval`` seconds, first
alone for ``--quiet-seconds`` (the baseline), then for ``--seconds`` while
``--clients`` unauthenticated clients flood the same JWT source
(``/webhooks/payments``) with ``--size``-byte bodies on fresh connections, as
fast as the gateway answers them. Attack shapes rotate between clients: a
declared 1 MB body, the same body chunked (no length), and a body at the JWT
source's limit built to be costly to parse (``--shapes``).

The question is the authentic client's latency under attack against its own
baseline, and whether every one of its deliveries was accepted (200). The
attackers run in this process and share the machine's cores with the gateway,
so they also compete with it for CPU, as a co-located attacker would.

    .venv/bin/python bench/attack.py [--clients 16] [--seconds 20] [--size 1048576]

Exit status 1 when an authentic delivery was not answered 200 or the p99
under attack exceeded ``--max-p99-ms``.
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run as `python bench/attack.py`, sys.path[0] is bench/, where bench/gateway.py
# would shadow the `gateway` package: put the repository first.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse
import asyncio
import os
import tempfile
import time

from _common import REPO, hookline_command, hookline_env, percentile, say, table
from hookline.infra.broker import EmbeddedBroker, free_port
from hookline.infra.processes import ServiceProcess

from tests.support.attackers import SHAPES, Answer, attack, authentic

PAGE = os.sysconf("SC_PAGE_SIZE")
TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (/proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def rss_mb(pid: int) -> float:
    return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE / 2**20


def row(phase: str, answers: list[Answer], cpu: float, seconds: float, rss: float) -> list[str]:
    latencies = [a.seconds * 1000 for a in answers]
    ok = sum(1 for a in answers if a.status == 200)
    return [
        phase,
        f"{ok}/{len(answers)}",
        f"{percentile(latencies, 0.50):.1f}",
        f"{percentile(latencies, 0.99):.1f}",
        f"{max(latencies):.1f}",
        f"{cpu / seconds:.2f}",
        f"{rss:.0f}",
    ]


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--clients", type=int, default=16, help="unauthenticated clients")
    parser.add_argument("--seconds", type=float, default=20.0, help="attack duration")
    parser.add_argument("--quiet-seconds", type=float, default=5.0, help="baseline duration")
    parser.add_argument("--size", type=int, default=1024 * 1024, help="attack body bytes")
    parser.add_argument("--interval", type=float, default=0.1, help="authentic delivery period")
    parser.add_argument(
        "--shapes",
        default=",".join(SHAPES),
        help=f"attack shapes, comma-separated, rotated between clients ({', '.join(SHAPES)})",
    )
    parser.add_argument("--max-p99-ms", type=float, default=500.0, help="fail above this p99")
    args = parser.parse_args()
    shapes = tuple(s for s in args.shapes.split(",") if s)
    if not shapes or set(shapes) - set(SHAPES):
        parser.error(f"--shapes must be among {SHAPES}")
    # Bounded: this is a benchmark against loopback, not a load generator.
    if not (1 <= args.clients <= 256 and 0 < args.seconds <= 300):
        parser.error("--clients must be 1..256 and --seconds at most 300")

    with tempfile.TemporaryDirectory(prefix="hookline-attack-") as tmp:
        logs = Path(tmp)
        say(f"attack benchmark; logs in {logs}")
        with EmbeddedBroker(log_path=logs / "broker.log") as broker:
            port = free_port()
            url = f"http://127.0.0.1:{port}"
            gateway = ServiceProcess(
                "hookline gateway",
                hookline_command("gateway", "--port", str(port)),
                hookline_env(broker.bootstrap_servers),
                logs / "hookline.gateway.log",
                cwd=REPO,
            )
            with gateway:
                took = gateway.wait_ready(60, url=f"{url}/readyz")
                assert gateway.process is not None
                pid = gateway.process.pid
                say(f"gateway ready in {took:.1f}s on port {port}")

                say(f"  quiet: one authentic delivery every {args.interval}s")
                cpu0, t0 = cpu_seconds(pid), time.monotonic()
                quiet = asyncio.run(
                    authentic(url, time.monotonic() + args.quiet_seconds, args.interval)
                )
                quiet_row = row(
                    "quiet",
                    quiet,
                    cpu_seconds(pid) - cpu0,
                    time.monotonic() - t0,
                    rss_mb(pid),
                )

                say(
                    f"  attack: {args.clients} clients x {args.size} bytes to /webhooks/payments "
                    f"({','.join(shapes)}) for {args.seconds:g}s"
                )
                cpu0, t0 = cpu_seconds(pid), time.monotonic()
                answers, stats = asyncio.run(
                    attack(
                        url,
                        "/webhooks/payments",
                        clients=args.clients,
                        seconds=args.seconds,
                        size=args.size,
                        shapes=shapes,
                        interval_s=args.interval,
                    )
                )
                attack_row = row(
                    "under attack",
                    answers,
                    cpu_seconds(pid) - cpu0,
                    time.monotonic() - t0,
                    rss_mb(pid),
                )
                alive = gateway.process.poll() is None

    print()
    print(
        f"gateway under attack: {args.clients} unauthenticated clients, {args.size}-byte bodies "
        f"to a jwt-hs256 source ({','.join(shapes)}), {args.seconds:g}s; one authentic "
        f"payments delivery every {args.interval * 1000:.0f} ms"
    )
    print(
        table(
            ["phase", "authentic 200", "p50 ms", "p99 ms", "max ms", "gateway CPU", "RSS MB"],
            [quiet_row, attack_row],
        )
    )
    refused = ", ".join(f"{code}x{n}" for code, n in sorted(stats.statuses.items()))
    print(
        f"attack requests: {stats.requests} ({refused}; cut before an answer: {stats.cut}), "
        f"{stats.requests / args.seconds:.0f}/s"
    )
    p99 = percentile([a.seconds * 1000 for a in answers], 0.99)
    failed = not alive or any(a.status != 200 for a in quiet + answers) or p99 > args.max_p99_ms
    if failed:
        print(f"FAILED: an authentic delivery was not accepted, or p99 > {args.max_p99_ms:g} ms")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
