"""Helpers shared by the benchmarks: paths, the hookline environment, child processes.

The benchmarks start real processes (the embedded broker, ``hookline gateway``,
``hookline worker``, baseline servers; see infra/processes.py) so they measure
what a deployment runs, not an in-process shortcut.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path

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
