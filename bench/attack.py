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

    .venv/bin/python bench/attack.py [--clients 16] [--seconds 20] [--size 1048576] [--json]

``--json`` prints one JSON document on stdout instead of the table (fields in
bench/README.md): the quiet phase is the baseline of the common fields, so
``ratio`` is the authentic client's accepted deliveries per second under
attack over its rate alone, and ``first_out_ms`` the latency of its first
delivery once the attackers start.

Exit status 1 when the gateway died, an authentic delivery was not answered
200 or the p99 under attack exceeded ``--max-p99-ms`` (with or without
``--json``).
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
from collections import Counter
from dataclasses import dataclass
from typing import Any

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
from hookline.infra.broker import EmbeddedBroker, free_port
from hookline.infra.processes import ServiceProcess

from tests.support.attackers import SHAPES, Answer, attack, authentic

PAGE = os.sysconf("SC_PAGE_SIZE")


def rss_mb(pid: int) -> float:
    return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE / 2**20


@dataclass(frozen=True)
class Phase:
    """A phase's measurements, kept whole so the table row and the JSON object cannot disagree."""

    name: str
    answers: list[Answer]
    #: Wall time of the phase, until the authentic client's last answer: a
    #: slowed gateway stretches it, since the client sends a fixed number of
    #: deliveries (one per --interval until the deadline) and waits for each.
    seconds: float
    #: The gateway process's CPU seconds during the phase (attack traffic included).
    cpu: float
    rss: float
    steal: float
    #: --interval: the authentic client's pace.
    interval: float

    @property
    def latencies_ms(self) -> list[float]:
        return [a.seconds * 1000 for a in self.answers]

    @property
    def accepted(self) -> int:
        return sum(1 for a in self.answers if a.status == 200)

    @property
    def span(self) -> float:
        """The time the client's deliveries took: their schedule, or longer if answers lagged.

        The wall time alone ends at the last answer, part of an interval after
        the last delivery was sent, so a short phase would look faster than a
        long one at the same pace; measured against the schedule, a gateway
        that keeps the pace gives exactly 1/--interval in both phases.
        """
        return max(self.seconds, len(self.answers) * self.interval)

    @property
    def rate(self) -> float:
        """Accepted deliveries per second: 1/--interval unless answers lag the pace or fail."""
        return self.accepted / self.span if self.span > 0 else float("nan")

    @property
    def cpu_ms_per_record(self) -> float:
        """Under attack this is mostly the attackers' cost, charged to each authentic delivery:
        what serving one accepted delivery cost the gateway while being attacked."""
        return 1000 * self.cpu / self.accepted if self.accepted else float("nan")

    def row(self) -> list[str]:
        latencies = self.latencies_ms
        return [
            self.name,
            f"{self.accepted}/{len(self.answers)}",
            f"{percentile(latencies, 0.50):.1f}",
            f"{percentile(latencies, 0.99):.1f}",
            f"{max(latencies, default=float('nan')):.1f}",
            f"{self.cpu / self.seconds:.2f}",
            f"{self.rss:.0f}",
        ]

    def as_json(self) -> dict[str, Any]:
        latencies = self.latencies_ms
        return {
            "phase": self.name,
            "deliveries": len(self.answers),
            "accepted": self.accepted,
            # 0: no HTTP answer (the client's request failed or timed out).
            "statuses": {
                str(k): v for k, v in sorted(Counter(a.status for a in self.answers).items())
            },
            "seconds": round(self.seconds, 3),
            "span_s": round(self.span, 3),
            "records_per_s": round(self.rate, 2),
            "first_out_ms": round(latencies[0], 2) if latencies else None,
            "p50_ms": round(percentile(latencies, 0.50), 2),
            "p99_ms": round(percentile(latencies, 0.99), 2),
            "max_ms": round(max(latencies, default=float("nan")), 2),
            "gateway_cpu_s": round(self.cpu, 3),
            "gateway_cpu_share": round(self.cpu / self.seconds, 3),
            "cpu_ms_per_record": round(self.cpu_ms_per_record, 4),
            "rss_mb": round(self.rss, 1),
            "steal_share": round(self.steal, 4),
        }


class PhaseClock:
    """Started just before a phase; ``phase()`` just after it reads the deltas.

    The clock, the gateway's CPU and the hypervisor's steal are taken around
    the same span, so a phase's rate and its CPU share describe the same time.
    """

    def __init__(self, pid: int, interval: float) -> None:
        self.pid, self.interval = pid, interval
        self.cpu0, self.steal0, self.t0 = cpu_seconds(pid), cpu_times(), time.monotonic()

    def phase(self, name: str, answers: list[Answer]) -> Phase:
        seconds = time.monotonic() - self.t0
        cpu = cpu_seconds(self.pid) - self.cpu0
        steal = steal_share(self.steal0, cpu_times())
        return Phase(name, answers, seconds, cpu, rss_mb(self.pid), steal, self.interval)


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
    parser.add_argument(
        "--json", action="store_true", help="print one JSON document instead of the table"
    )
    args = parser.parse_args()
    shapes = tuple(s for s in args.shapes.split(",") if s)
    if not shapes or set(shapes) - set(SHAPES):
        parser.error(f"--shapes must be among {SHAPES}")
    # Bounded: this is a benchmark against loopback, not a load generator.
    if not (1 <= args.clients <= 256 and 0 < args.seconds <= 300):
        parser.error("--clients must be 1..256 and --seconds at most 300")

    load_before = load_average()
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
                clock = PhaseClock(pid, args.interval)
                quiet = clock.phase(
                    "quiet",
                    asyncio.run(
                        authentic(url, time.monotonic() + args.quiet_seconds, args.interval)
                    ),
                )

                say(
                    f"  attack: {args.clients} clients x {args.size} bytes to /webhooks/payments "
                    f"({','.join(shapes)}) for {args.seconds:g}s"
                )
                clock = PhaseClock(pid, args.interval)
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
                attacked = clock.phase("under attack", answers)
                alive = gateway.process.poll() is None
    load_after = load_average()
    say(f"load average (1 min): {load_before:.2f} before, {load_after:.2f} after")

    p99 = percentile(attacked.latencies_ms, 0.99)
    failures: list[str] = []
    if not alive:
        failures.append("the gateway exited during the run")
    refused = sum(1 for a in quiet.answers + attacked.answers if a.status != 200)
    if refused:
        failures.append(f"{refused} authentic deliveries not answered 200")
    if p99 > args.max_p99_ms:  # NaN (no answer) compares False, as before
        failures.append(f"p99 under attack {p99:.1f} ms > --max-p99-ms {args.max_p99_ms:g}")
    failed = bool(failures)

    if args.json:
        quiet_json, attacked_json = quiet.as_json(), attacked.as_json()
        # Every request the gateway answered or cut during the attack phase: what its
        # CPU was spent on, attack traffic being nearly all of it.
        handled = len(attacked.answers) + stats.requests
        print_json(
            {
                "bench": "attack",
                "records": attacked.accepted,
                "records_per_s": round(attacked.rate, 2),
                "baseline_records_per_s": round(quiet.rate, 2),
                "ratio": round(attacked.rate / quiet.rate, 4) if quiet.rate else None,
                "cpu_ms_per_record": attacked_json["cpu_ms_per_record"],
                "baseline_cpu_ms_per_record": quiet_json["cpu_ms_per_record"],
                "cpu_ms_per_request": round(1000 * attacked.cpu / handled, 4) if handled else None,
                "first_out_ms": attacked_json["first_out_ms"],
                "baseline_first_out_ms": quiet_json["first_out_ms"],
                "p50_ms": attacked_json["p50_ms"],
                "p99_ms": attacked_json["p99_ms"],
                "baseline_p50_ms": quiet_json["p50_ms"],
                "baseline_p99_ms": quiet_json["p99_ms"],
                "interval_ms": round(1000 * args.interval, 1),
                "phases": [quiet_json, attacked_json],
                "attack": {
                    "path": "/webhooks/payments",
                    "clients": args.clients,
                    "seconds": args.seconds,
                    "size": args.size,
                    "shapes": list(shapes),
                    "requests": stats.requests,
                    "requests_per_s": round(stats.requests / args.seconds, 1),
                    "statuses": {str(k): v for k, v in sorted(stats.statuses.items())},
                    "cut": stats.cut,
                },
                "ok": not failed,
                "failures": failures,
                "max_p99_ms": args.max_p99_ms,
                "gateway_alive": alive,
                "load_average": [round(load_before, 2), round(load_after, 2)],
            }
        )
        for failure in failures:
            say(f"FAILED: {failure}")
        return 1 if failed else 0

    print()
    print(
        f"gateway under attack: {args.clients} unauthenticated clients, {args.size}-byte bodies "
        f"to a jwt-hs256 source ({','.join(shapes)}), {args.seconds:g}s; one authentic "
        f"payments delivery every {args.interval * 1000:.0f} ms"
    )
    print(
        table(
            ["phase", "authentic 200", "p50 ms", "p99 ms", "max ms", "gateway CPU", "RSS MB"],
            [quiet.row(), attacked.row()],
        )
    )
    refused_by_code = ", ".join(f"{code}x{n}" for code, n in sorted(stats.statuses.items()))
    print(
        f"attack requests: {stats.requests} ({refused_by_code}; cut before an answer: "
        f"{stats.cut}), {stats.requests / args.seconds:.0f}/s"
    )
    if failed:
        print(f"FAILED: an authentic delivery was not accepted, or p99 > {args.max_p99_ms:g} ms")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
