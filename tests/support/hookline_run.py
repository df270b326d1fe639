"""``hookline run`` as a real process in tests: own embedded broker, free ports, output in files."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from hookline.infra.broker import free_port
from hookline.infra.processes import stop_process

from tests.support.signing import payload


@dataclass
class RunningHookline:
    gateway_url: str
    worker_url: str
    stdout_path: Path
    stderr_path: Path
    process: subprocess.Popen[bytes]
    bootstrap_servers: str = ""
    sink_url: str = ""

    def warehouse(self) -> Path:
        """The warehouse folder the supervisor printed on its ``warehouse`` line."""
        for line in self.lines():
            if line.startswith("  warehouse "):
                return Path(line.split()[1])
        raise AssertionError("hookline run printed no warehouse line")

    def lines(self) -> list[str]:
        """Every non-empty line the supervisor wrote, stdout then stderr."""
        out = []
        for path in (self.stdout_path, self.stderr_path):
            out += [line for line in path.read_text(errors="replace").splitlines() if line]
        return out

    def post_partner_webhook(self) -> str:
        """POST the spec's partner example with the dev token; return the delivery id."""
        request = urllib.request.Request(  # noqa: S310 (loopback)
            f"{self.gateway_url}/webhooks/partner?token=dev-partner-token",
            data=payload("partner-order-status.json"),
            headers={"content-type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
            return str(json.loads(response.read())["id"])

    def metrics(self, base_url: str) -> str:
        with urllib.request.urlopen(f"{base_url}/metrics", timeout=5) as response:  # noqa: S310
            return str(response.read().decode())


def _wait_ready(process: subprocess.Popen[bytes], url: str, timeout: float, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"hookline run exited with {process.returncode}:\n{log.read_text()}")
        with (
            contextlib.suppress(OSError, ValueError),
            urllib.request.urlopen(url, timeout=1) as response,  # noqa: S310
        ):
            if response.status == 200:
                return
        time.sleep(0.2)
    raise RuntimeError(f"{url} not ready after {timeout}s:\n{log.read_text()[-3000:]}")


@contextlib.contextmanager
def hookline_run(tmp_path: Path, **env_overrides: str) -> Iterator[RunningHookline]:
    """Start ``hookline run`` with its embedded broker; stop it (SIGTERM) afterwards."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KAFKA_", "HOOKLINE_"))}
    env.update(HOOKLINE_DATA_DIR=str(tmp_path / "data"), PYTHONUNBUFFERED="1", **env_overrides)
    gateway_port, worker_port, sink_port, broker_port = (free_port() for _ in range(4))
    stdout_path, stderr_path = tmp_path / "run.stdout", tmp_path / "run.stderr"
    with open(stdout_path, "wb") as out, open(stderr_path, "wb") as err:
        process = subprocess.Popen(
            [
                *(sys.executable, "-m", "hookline", "run", "--port", str(gateway_port)),
                *("--worker-web-port", str(worker_port), "--broker-port", str(broker_port)),
                *("--sink-web-port", str(sink_port)),
            ],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            start_new_session=True,
        )
    running = RunningHookline(
        f"http://127.0.0.1:{gateway_port}",
        f"http://127.0.0.1:{worker_port}",
        stdout_path,
        stderr_path,
        process,
        f"127.0.0.1:{broker_port}",
        f"http://127.0.0.1:{sink_port}",
    )
    try:
        _wait_ready(process, f"{running.gateway_url}/readyz", 60, stderr_path)
        _wait_ready(process, f"{running.worker_url}/readyz", 60, stderr_path)
        yield running
    finally:
        stop_process(process, timeout=45)
