"""hookline commands as real processes in tests, their output captured to a file."""

from __future__ import annotations

import sys
from pathlib import Path

from hookline.infra.broker import free_port
from hookline.infra.processes import ServiceProcess


def _hookline(
    name: str, args: list[str], env: dict[str, str], log_path: Path, url: str, ready: str
) -> ServiceProcess:
    proc = ServiceProcess(
        name, [sys.executable, "-m", "hookline", *args], env, log_path, url + ready
    )
    proc.url = url  # type: ignore[attr-defined]
    return proc


def gateway(env: dict[str, str], log_dir: Path, port: int | None = None) -> ServiceProcess:
    port = port or free_port()
    url = f"http://127.0.0.1:{port}"
    return _hookline(
        "gateway",
        ["gateway", "--port", str(port)],
        env,
        log_dir / f"gateway-{port}.log",
        url,
        "/healthz",
    )


def worker(env: dict[str, str], log_dir: Path, web_port: int | None = None) -> ServiceProcess:
    """Ready once partitions are assigned and tables recovered (/readyz)."""
    port = web_port or free_port()
    url = f"http://127.0.0.1:{port}"
    return _hookline(
        "worker",
        ["worker", "--web-port", str(port)],
        env,
        log_dir / f"worker-{port}.log",
        url,
        "/readyz",
    )
