"""Helpers shared by the benchmarks: paths, the hookline environment, child processes.

The benchmarks start real processes (the embedded broker, ``hookline gateway``,
``hookline worker``, baseline servers; see infra/processes.py) so they measure
what a deployment runs, not an in-process shortcut.
"""

from __future__ import annotations

import json
import math
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hookline.supervisor import dev_secrets

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
#: The provider example bodies (PRODUCT.md's payloads/), byte for byte.
PAYLOADS = REPO / "tests" / "fixtures" / "payloads"
DEV_SOURCES = REPO / "infra" / "sources.dev.toml"


def say(message: str) -> None:
    """Progress on stderr, flushed at once: a benchmark that looks stuck gets killed."""
    print(message, file=sys.stderr, flush=True)


def hookline_command(*args: str) -> list[str]:
    """The ``hookline`` console script of the running venv (``-m hookline`` without one)."""
    script = Path(sys.executable).parent / "hookline"
    if script.exists():
        return [str(script), *args]
    return [sys.executable, "-m", "hookline", *args]


def hookline_env(bootstrap: str, **extra: str) -> dict[str, str]:
    """What a hookline process needs: the broker, the dev sources and their dev secrets."""
    env = dict(os.environ)
    env.update(dev_secrets())
    env.update(
        KAFKA_BOOTSTRAP_SERVERS=bootstrap,
        HOOKLINE_SOURCES=str(DEV_SOURCES),
        PYTHONUNBUFFERED="1",
    )
    env.update(extra)
    return env


def percentile(values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile; enough for thousands of samples and no numpy needed."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(fraction * len(ordered)) - 1))
    return ordered[index]


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A plain fixed-width table (also pasteable into the README as-is)."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    lines += [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows
    ]
    return "\n".join(lines)


@dataclass(frozen=True)
class CpuTimes:
    """The machine's CPU time so far, in clock ticks: all of it, and what the hypervisor took."""

    total: int
    steal: int


def parse_cpu_times(proc_stat: str) -> CpuTimes:
    """The aggregate ``cpu`` line of /proc/stat: user nice system idle iowait irq softirq steal ...

    guest and guest_nice (fields 9 and 10) are already counted in user and
    nice, so only the first eight fields make up the total.
    """
    for line in proc_stat.splitlines():
        fields = line.split()
        if fields and fields[0] == "cpu":
            ticks = [int(value) for value in fields[1:9]]
            ticks += [0] * (8 - len(ticks))  # kernels before 2.6.11 have no steal field
            return CpuTimes(total=sum(ticks), steal=ticks[7])
    raise ValueError("no aggregate 'cpu' line in /proc/stat")


def cpu_times() -> CpuTimes | None:
    """This machine's CPU times now (None where there is no /proc/stat)."""
    try:
        return parse_cpu_times(Path("/proc/stat").read_text())
    except (OSError, ValueError):
        return None


def steal_share(before: CpuTimes | None, after: CpuTimes | None) -> float:
    """The share of the machine's CPU time the hypervisor gave to other guests in between.

    Why it is measured: on a shared VM the host sometimes takes a quarter or
    more of the vCPUs' time for seconds at a stretch; every process here then
    runs slower at once, the load generator included, and a latency
    percentile measured meanwhile describes the host, not the server under
    test. NaN when unknown (no /proc/stat, or no time passed).
    """
    if before is None or after is None or after.total <= before.total:
        return float("nan")
    return (after.steal - before.steal) / (after.total - before.total)


def load_average() -> float:
    """The 1-minute load average (NaN where the OS has none): how shared the cores were."""
    try:
        return os.getloadavg()[0]
    except OSError:
        return float("nan")


def _finite(value: Any) -> Any:
    """NaN/inf become null (JSON has no NaN); containers are walked."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def print_json(document: dict[str, Any]) -> None:
    """The ``--json`` output: exactly one JSON document on stdout (strict: no NaN)."""
    print(json.dumps(_finite(document), indent=2, allow_nan=False), flush=True)


def rss_bytes(pid: int | None) -> int | None:
    """Resident set size of a process (``VmRSS`` in /proc/<pid>/status), None if unknown."""
    if pid is None:
        return None
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024  # kB
    except (OSError, ValueError, IndexError):
        return None
    return None


def cpu_seconds(pid: int | None) -> float:
    """User+system CPU time of a process so far (Linux /proc; NaN elsewhere).

    Tells whether a process was CPU-bound (CPU seconds close to wall seconds:
    one Python process uses one core) or waiting on the broker.
    """
    if pid is None:
        return float("nan")
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def thread_cpu_seconds(pid: int | None) -> dict[str, float]:
    """User+system CPU time so far of each thread of a process, by name and id.

    Splits a mover's CPU between its event loop and the threads beside it
    (Faust runs its Kafka consumer in a thread of its own); empty off Linux.
    """
    if pid is None:
        return {}
    tick = os.sysconf("SC_CLK_TCK")
    threads: dict[str, float] = {}
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            name, rest = task.joinpath("stat").read_text().split(" (", 1)[1].rsplit(")", 1)
        except (OSError, ValueError):
            continue
        fields = rest.split()
        threads[f"{name}:{task.name}"] = (int(fields[11]) + int(fields[12])) / tick
    return threads
