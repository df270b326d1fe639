"""Child processes of the local tooling: `hookline run`, the tests, the benchmarks.

Each child runs in its own session, so a Ctrl-C in the terminal reaches only
the parent, which then stops its children in order instead of orphaning them.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
import urllib.request
from pathlib import Path
from types import TracebackType


def _answers_200(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1.0) as response:  # noqa: S310 (loopback)
            return bool(response.status == 200)
    except (OSError, ValueError):  # refused, HTTP errors (URLError/HTTPError), timeouts
        return False


def stop_process(process: subprocess.Popen[bytes] | None, timeout: float) -> int | None:
    """SIGTERM, wait up to ``timeout``, then SIGKILL. Returns the exit code."""
    if process is None:
        return None
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(process.pid, signal.SIGCONT)  # in case it was paused
            process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return process.returncode


class ServiceProcess:
    """A command whose output goes to a log file, ready when ``ready_url`` answers 200."""

    def __init__(
        self,
        name: str,
        command: list[str],
        env: dict[str, str],
        log_path: Path,
        ready_url: str | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.name = name
        self.command = command
        self.env = env
        self.log_path = log_path
        self.ready_url = ready_url
        self.cwd = cwd
        self.process: subprocess.Popen[bytes] | None = None

    def launch(self) -> ServiceProcess:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                self.command,
                cwd=self.cwd,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return self

    def start(self, timeout: float = 60.0) -> ServiceProcess:
        """Launch, then wait until ready (when there is a ready URL)."""
        self.launch()
        if self.ready_url:
            self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float = 60.0, url: str | None = None) -> float:
        """Poll the ready URL until it answers 200; return the seconds it took."""
        url = url or self.ready_url
        assert url, "no URL to poll"
        assert self.process is not None, "launch first"
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"{self.name} exited with {self.process.returncode}:\n{self.tail()}"
                )
            if _answers_200(url):
                return time.monotonic() - started
            time.sleep(0.2)
        self.kill()
        raise RuntimeError(f"{self.name}: {url} not ready after {timeout:g}s:\n{self.tail()}")

    def stop(self, timeout: float = 30.0) -> int | None:
        return stop_process(self.process, timeout)

    def kill(self) -> None:
        """SIGKILL: no shutdown, no commit, no flush."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def tail(self, chars: int = 3000) -> str:
        return self.log()[-chars:]

    def __enter__(self) -> ServiceProcess:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
