"""The gateway under attack: do unauthenticated clients hurt authentic deliveries?

What runs: an embedded broker (Tansu) and, for each attack shape, a fresh
``hookline gateway`` with the dev sources file, both child processes on
127.0.0.1. An authentic client delivers ``--rate`` signed deliveries a second
in turn to a token source (partner), an HMAC source (vignette-sales) and a
JWT source (payments), first alone for ``--quiet-seconds`` (the baseline),
then for ``--seconds`` while the shape's unauthenticated clients attack:

- ``stalled-signed``: 64 clients send all but the last byte of a signed
  source's body (1 MiB to the HMAC source with a zero X-Signature, 16 KiB to
  the JWT source), stall, and reconnect once answered;
- ``huge-headers``: 4 clients send one header value that never ends (128 MB);
- ``idle``: 18,500 connections that send nothing, reopened when closed (at
  most the bench's descriptor limit less 1,000);
- ``slow-headers``: 2,000 connections sending a header one byte a second;
- ``404-body``: 16 clients POST a 200 MiB body to a path that does not exist
  (half as fast as they can, half one byte a second);
- ``log-flood``: 16 clients send malformed requests and Upgrade requests;
- ``body-flood``: the first round's flood, 1 MB and costly bodies to the JWT
  source (``declared``, ``chunked``, ``parse``: one of its three kinds alone).

Under each shape the authentic client must keep >= ``--min-accepted`` of its
deliveries answered 200, with a p99 at most ``--max-p99-ms``, no 503, and
the gateway's resident memory may grow by at most ``--max-rss-growth-mb``.
The attackers run in this process and share the machine's cores with the
gateway, as a co-located attacker would.

    .venv/bin/python bench/attack.py [--shapes stalled-signed,idle] [--seconds 15] [--json]

``--json`` prints one JSON document on stdout instead of the table (fields in
bench/README.md; ``shapes`` has one object per shape): the quiet phases are
the baseline of the common fields. Exit status 1 when a shape failed (with
or without ``--json``).
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
import resource
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

from tests.support.attackers import (
    ATTACKS,
    CONVERSATIONS,
    DEFAULT_CLIENTS,
    Answer,
    AttackStats,
    authentic,
    authentic_rotation,
    shaped_attack,
)

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


@dataclass
class ShapeResult:
    """One attack shape: its baseline, the phase under attack, and what the gateway went through."""

    shape: str
    clients: int
    quiet: Phase
    attacked: Phase
    stats: AttackStats
    rss_before: float
    rss_peak: float
    log_lines: int
    log_bytes: int
    alive: bool

    @property
    def accepted_share(self) -> float:
        answers = self.attacked.answers
        return self.attacked.accepted / len(answers) if answers else float("nan")

    @property
    def false_503(self) -> int:
        return sum(1 for a in self.quiet.answers + self.attacked.answers if a.status == 503)

    @property
    def rss_growth(self) -> float:
        return self.rss_peak - self.rss_before

    def failures(self, args: argparse.Namespace) -> list[str]:
        found = []
        if not self.alive:
            found.append(f"{self.shape}: the gateway exited")
        if not self.accepted_share >= args.min_accepted:
            found.append(f"{self.shape}: {self.accepted_share:.1%} accepted")
        p99 = percentile(self.attacked.latencies_ms, 0.99)
        if not p99 <= args.max_p99_ms:
            found.append(f"{self.shape}: p99 {p99:.1f} ms")
        if self.false_503:
            found.append(f"{self.shape}: {self.false_503} authentic deliveries answered 503")
        if self.rss_growth > args.max_rss_growth_mb:
            found.append(f"{self.shape}: RSS grew {self.rss_growth:.0f} MB")
        return found

    def row(self) -> list[str]:
        latencies = self.attacked.latencies_ms
        return [
            self.shape,
            str(self.clients),
            f"{self.attacked.accepted}/{len(self.attacked.answers)}",
            f"{percentile(self.quiet.latencies_ms, 0.99):.1f}",
            f"{percentile(latencies, 0.50):.1f}",
            f"{percentile(latencies, 0.99):.1f}",
            str(self.false_503),
            f"{self.attacked.cpu / self.attacked.seconds:.2f}",
            f"{self.rss_before:.0f}->{self.rss_peak:.0f}",
            str(self.log_lines),
            str(self.stats.connections),
        ]

    def as_json(self) -> dict[str, Any]:
        return {
            "shape": self.shape,
            "clients": self.clients,
            "accepted_share": round(self.accepted_share, 4),
            "false_503": self.false_503,
            "rss_before_mb": round(self.rss_before, 1),
            "rss_peak_mb": round(self.rss_peak, 1),
            "rss_growth_mb": round(self.rss_growth, 1),
            "gateway_log_lines": self.log_lines,
            "gateway_log_bytes": self.log_bytes,
            "gateway_alive": self.alive,
            "phases": [self.quiet.as_json(), self.attacked.as_json()],
            "attack": {
                "connections": self.stats.connections,
                "requests": self.stats.requests,
                "statuses": {str(k): v for k, v in sorted(self.stats.statuses.items())},
                "cut": self.stats.cut,
            },
        }


async def _with_peak_rss(pid: int, work: Any) -> tuple[Any, float]:
    """``work``'s result and the gateway's peak resident memory (MB) while it ran."""
    peak = rss_mb(pid)
    done = asyncio.Event()

    async def sample() -> None:
        nonlocal peak
        while not done.is_set():
            try:
                peak = max(peak, rss_mb(pid))
            except OSError:
                return
            await asyncio.sleep(0.2)

    sampler = asyncio.create_task(sample())
    try:
        result = await work
    finally:
        done.set()
        await sampler
    return result, peak


def _raise_descriptor_limit() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        soft = hard
    return soft


def run_shape(
    shape: str, clients: int, broker: EmbeddedBroker, logs: Path, args: argparse.Namespace
) -> ShapeResult:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log_path = logs / f"gateway-{shape}.log"
    gateway = ServiceProcess(
        "hookline gateway",
        hookline_command("gateway", "--port", str(port)),
        hookline_env(broker.bootstrap_servers),
        log_path,
        cwd=REPO,
    )
    interval = 1.0 / args.rate
    with gateway:
        took = gateway.wait_ready(60, url=f"{url}/readyz")
        assert gateway.process is not None
        pid = gateway.process.pid
        say(f"{shape}: gateway ready in {took:.1f}s on port {port}; quiet {args.quiet_seconds:g}s")
        clock = PhaseClock(pid, interval)
        until = time.monotonic() + args.quiet_seconds
        quiet = clock.phase(
            "quiet", asyncio.run(authentic(url, until, interval, authentic_rotation()))
        )
        rss_before = rss_mb(pid)
        log_before = log_path.read_bytes()
        say(f"{shape}: {clients} clients for {args.seconds:g}s")
        clock = PhaseClock(pid, interval)
        (answers, stats), peak = asyncio.run(
            _with_peak_rss(pid, shaped_attack(url, shape, clients, args.seconds, interval))
        )
        attacked = clock.phase("under attack", answers)
        added = log_path.read_bytes()[len(log_before) :]
        alive = gateway.process.poll() is None
    return ShapeResult(
        shape,
        clients,
        quiet,
        attacked,
        stats,
        rss_before,
        peak,
        added.count(b"\n"),
        len(added),
        alive,
    )


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--shapes",
        default=",".join(ATTACKS),
        help="attack shapes, comma-separated, run one after another (default: "
        f"{', '.join(ATTACKS)}; also declared, chunked, parse: one kind of body-flood)",
    )
    parser.add_argument(
        "--clients", type=int, default=0, help="clients per shape (default: the shape's own)"
    )
    parser.add_argument("--seconds", type=float, default=15.0, help="attack duration per shape")
    parser.add_argument("--quiet-seconds", type=float, default=3.0, help="baseline duration")
    parser.add_argument("--rate", type=float, default=20.0, help="authentic deliveries a second")
    parser.add_argument("--max-p99-ms", type=float, default=500.0, help="fail above this p99")
    parser.add_argument(
        "--min-accepted", type=float, default=0.99, help="fail below this share accepted"
    )
    parser.add_argument(
        "--max-rss-growth-mb", type=float, default=100.0, help="fail above this RSS growth"
    )
    parser.add_argument(
        "--json", action="store_true", help="print one JSON document instead of the table"
    )
    args = parser.parse_args()
    shapes = tuple(s for s in args.shapes.split(",") if s)
    if not shapes or set(shapes) - set(CONVERSATIONS):
        parser.error(f"--shapes must be among {tuple(CONVERSATIONS)}")
    # Bounded: this is a benchmark against loopback, not a load generator.
    if not (0 <= args.clients <= 20_000 and 0 < args.seconds <= 120 and 0 < args.rate <= 200):
        parser.error("--clients must be 0..20000, --seconds at most 120, --rate 0..200")
    descriptors = _raise_descriptor_limit()

    load_before = load_average()
    results: list[ShapeResult] = []
    with tempfile.TemporaryDirectory(prefix="hookline-attack-") as tmp:
        logs = Path(tmp)
        say(f"attack benchmark; logs in {logs}")
        with EmbeddedBroker(log_path=logs / "broker.log") as broker:
            for shape in shapes:
                clients = args.clients or DEFAULT_CLIENTS.get(shape, 16)
                clients = min(clients, descriptors - 1000)  # room for the authentic client
                results.append(run_shape(shape, clients, broker, logs, args))
    load_after = load_average()
    say(f"load average (1 min): {load_before:.2f} before, {load_after:.2f} after")

    failures = [failure for result in results for failure in result.failures(args)]
    failed = bool(failures)
    if args.json:
        quiet_answers = [a for r in results for a in r.quiet.answers]
        attacked_answers = [a for r in results for a in r.attacked.answers]
        quiet_ms = [a.seconds * 1000 for a in quiet_answers]
        attacked_ms = [a.seconds * 1000 for a in attacked_answers]
        quiet_span = sum(r.quiet.span for r in results)
        attacked_span = sum(r.attacked.span for r in results)
        accepted = sum(r.attacked.accepted for r in results)
        quiet_accepted = sum(r.quiet.accepted for r in results)
        rate = accepted / attacked_span if attacked_span else None
        baseline = quiet_accepted / quiet_span if quiet_span else None
        attacked_cpu = sum(r.attacked.cpu for r in results)
        quiet_cpu = sum(r.quiet.cpu for r in results)
        handled = len(attacked_answers) + sum(r.stats.requests for r in results)
        first_out = [r.attacked.as_json()["first_out_ms"] for r in results]
        baseline_first_out = [r.quiet.as_json()["first_out_ms"] for r in results]
        print_json(
            {
                "bench": "attack",
                "records": accepted,
                "records_per_s": round(rate, 2) if rate else None,
                "baseline_records_per_s": round(baseline, 2) if baseline else None,
                "ratio": round(rate / baseline, 4) if rate and baseline else None,
                "cpu_ms_per_record": round(1000 * attacked_cpu / accepted, 4) if accepted else None,
                "baseline_cpu_ms_per_record": (
                    round(1000 * quiet_cpu / quiet_accepted, 4) if quiet_accepted else None
                ),
                "cpu_ms_per_request": round(1000 * attacked_cpu / handled, 4) if handled else None,
                # The slowest shape's first authentic delivery as its attack starts.
                "first_out_ms": max((v for v in first_out if v is not None), default=None),
                "baseline_first_out_ms": max(
                    (v for v in baseline_first_out if v is not None), default=None
                ),
                "p50_ms": round(percentile(attacked_ms, 0.50), 2),
                "p99_ms": round(percentile(attacked_ms, 0.99), 2),
                "baseline_p50_ms": round(percentile(quiet_ms, 0.50), 2),
                "baseline_p99_ms": round(percentile(quiet_ms, 0.99), 2),
                "interval_ms": round(1000 / args.rate, 1),
                "shapes": [r.as_json() for r in results],
                "ok": not failed,
                "failures": failures,
                "max_p99_ms": args.max_p99_ms,
                "min_accepted": args.min_accepted,
                "max_rss_growth_mb": args.max_rss_growth_mb,
                "load_average": [round(load_before, 2), round(load_after, 2)],
            }
        )
        for failure in failures:
            say(f"FAILED: {failure}")
        return 1 if failed else 0

    print()
    print(
        f"gateway under attack, {args.seconds:g}s per shape; an authentic client sends "
        f"{args.rate:g} deliveries/s to a token, an HMAC and a JWT source in turn"
    )
    print(
        table(
            [
                "shape",
                "clients",
                "authentic 200",
                "quiet p99 ms",
                "p50 ms",
                "p99 ms",
                "503",
                "gateway CPU",
                "RSS MB",
                "log lines",
                "attack conns",
            ],
            [r.row() for r in results],
        )
    )
    for failure in failures:
        print(f"FAILED: {failure}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
