"""hookline commands as real processes, with their output captured to a file."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from infra.broker import free_port


class ServiceProcess:
    def __init__(
        self, name: str, args: list[str], env: dict[str, str], log_path: Path, ready_url: str
    ) -> None:
        self.name = name
        self.args = args
        self.env = env
        self.log_path = log_path
        self.ready_url = ready_url
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60.0) -> ServiceProcess:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "hookline", *self.args],
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return self.wait_ready(timeout)

    def wait_ready(self, timeout: float = 60.0) -> ServiceProcess:
        """Until the ready URL answers 200 (a worker: partitions assigned, tables recovered)."""
        assert self.process is not None, "not started"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"{self.name} exited with {self.process.returncode}:\n{self.log()[-3000:]}"
                )
            try:
                if httpx.get(self.ready_url, timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.kill()
        raise RuntimeError(f"{self.name} not ready after {timeout}s:\n{self.log()[-3000:]}")

    def stop(self, timeout: float = 30.0) -> int | None:
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else None
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            return None

    def kill(self) -> None:
        """SIGKILL: no shutdown, no commit, no flush."""
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def gateway(env: dict[str, str], log_dir: Path, port: int | None = None) -> ServiceProcess:
    port = port or free_port()
    proc = ServiceProcess(
        "gateway",
        ["gateway", "--port", str(port)],
        env,
        log_dir / f"gateway-{port}.log",
        f"http://127.0.0.1:{port}/healthz",
    )
    proc.url = f"http://127.0.0.1:{port}"  # type: ignore[attr-defined]
    return proc


def worker(env: dict[str, str], log_dir: Path, web_port: int | None = None) -> ServiceProcess:
    port = web_port or free_port()
    proc = ServiceProcess(
        "worker",
        ["worker", "--web-port", str(port)],
        env,
        log_dir / f"worker-{port}.log",
        f"http://127.0.0.1:{port}/readyz",
    )
    proc.url = f"http://127.0.0.1:{port}"  # type: ignore[attr-defined]
    return proc
