"""Helpers shared by the benchmarks: paths, the hookline environment, child processes.

The benchmarks start real processes (the embedded broker, ``hookline gateway``,
``hookline worker``, baseline servers) so they measure what a deployment runs,
not an in-process shortcut. Everything here exists to start those processes
the same way for hookline and for its baseline, and to stop them reliably even
when a run fails halfway.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

import httpx

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


class Service:
    """A child process whose output goes to a log file, stopped by its own pid.

    Started in its own session so a Ctrl-C on the benchmark reaches only the
    benchmark, which then stops its children in order instead of orphaning them.
    """

    def __init__(self, name: str, command: list[str], env: dict[str, str], log_path: Path) -> None:
        self.name = name
        self.command = command
        self.env = env
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> Service:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                self.command,
                cwd=REPO,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return self

    def wait_http(self, url: str, timeout: float) -> float:
        """Poll ``url`` until it answers 200; return the seconds it took."""
        started = time.monotonic()
        deadline = started + timeout
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(
                    f"{self.name} exited with {self.process.returncode}; "
                    f"last output:\n{self.tail()}"
                )
            try:
                if httpx.get(url, timeout=1.0).status_code == 200:
                    return time.monotonic() - started
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"{self.name}: {url} not ready after {timeout:g}s:\n{self.tail()}")

    def tail(self, chars: int = 3000) -> str:
        if not self.log_path.exists():
            return ""
        return self.log_path.read_text(errors="replace")[-chars:]

    def stop(self, timeout: float = 20.0) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def __enter__(self) -> Service:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
