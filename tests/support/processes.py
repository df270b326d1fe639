"""hookline commands as real processes in tests, their output captured to a file."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from hookline.core.settings import DEV_SOURCES
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


@contextlib.contextmanager
def run_with_sink(
    bootstrap: str, log_dir: Path, data_dir: Path, warehouse: Path
) -> Iterator[dict[str, Any]]:
    """``hookline run`` (gateway, worker, sink) on an existing broker, every part ready.

    Yields ``run`` (the process), ``gateway`` (its URL), ``warehouse`` and ``bootstrap``.
    """
    from tests.conftest import hookline_env

    env = hookline_env(
        bootstrap,
        data_dir,
        HOOKLINE_SOURCES=str(DEV_SOURCES),
        HOOKLINE_WAREHOUSE=str(warehouse),
        HOOKLINE_SINK_COMMIT_INTERVAL="0.5",
    )
    gateway, worker, sink = free_port(), free_port(), free_port()
    run = ServiceProcess(
        "run",
        [
            *(sys.executable, "-m", "hookline", "run", "--port", str(gateway)),
            *("--worker-web-port", str(worker), "--sink-web-port", str(sink)),
        ],
        env,
        log_dir / f"run-{gateway}.log",
        f"http://127.0.0.1:{worker}/readyz",
    ).start(timeout=90)
    try:
        run.wait_ready(30, f"http://127.0.0.1:{gateway}/healthz")
        run.wait_ready(30, f"http://127.0.0.1:{sink}/metrics")
        yield {
            "run": run,
            "gateway": f"http://127.0.0.1:{gateway}",
            "warehouse": warehouse,
            "bootstrap": bootstrap,
        }
    finally:
        run.stop()
