"""``hookline run``: the whole service on one machine, stopped cleanly by Ctrl-C.

Children run in their own process groups so a terminal Ctrl-C reaches only
this supervisor, which then stops them in dependency order: the gateway (no
new webhooks), the worker (commits what it processed), the broker last.
Invariant: whatever ends the supervisor short of SIGKILL (Ctrl-C, SIGTERM,
SIGHUP from a closed terminal, its output pipe closing as under ``| head``,
a child dying) stops every child it started; nothing starts while one of its
ports is taken.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from hookline import logs
from hookline.core.settings import DEV_SOURCES

DEV_ENV = DEV_SOURCES.parent / "dev.env"


def dev_secrets(path: Path = DEV_ENV, data_dir: Path | None = None) -> dict[str, str]:
    """The development-only secrets for the dev sources file (KEY=VALUE lines).

    A checkout has them in infra/dev.env (the README's examples use them). An
    installed wheel never ships that file: then fresh random secrets are made
    for this machine, kept in ``<data dir>/dev-secrets.env`` (mode 0600).
    """
    if not path.exists():
        path = _generated_dev_secrets((data_dir or Path(".hookline")) / "dev-secrets.env")
    values = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            key, value = line.split("=", 1)
            values[key.strip()] = value.strip()
    return values


def _generated_dev_secrets(path: Path) -> Path:
    if path.exists():
        return path
    import base64
    import secrets

    from hookline.core.sources import load_sources

    values: dict[str, str] = {}
    for source in load_sources(DEV_SOURCES, with_secrets=False).values():
        for name in source.secret_env:
            # Standard Webhooks secrets are whsec_ + base64; the others any string.
            values.setdefault(
                name,
                "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()
                if source.verify == "standard-webhooks"
                else secrets.token_urlsafe(32),
            )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch(mode=0o600)
    path.write_text("".join(f"{name}={value}\n" for name, value in sorted(values.items())))
    logs.say(f"development secrets generated for this machine: {path}")
    return path


#: Set when the terminal or pipe our output goes to is gone: everything stops.
OUTPUT_GONE = threading.Event()


def _output_gone() -> None:
    """Our stderr/stdout went away (closed terminal, ``| head`` exited): write to /dev/null."""
    if not OUTPUT_GONE.is_set():
        OUTPUT_GONE.set()
        devnull = os.open(os.devnull, os.O_WRONLY)
        for fd in (1, 2):
            with contextlib.suppress(OSError):
                os.dup2(devnull, fd)
        os.close(devnull)


def _say(message: str) -> None:
    try:
        logs.say(message)
    except OSError:  # EPIPE, or EIO from a hung-up terminal
        _output_gone()


def _pump(name: str, stream: object) -> None:
    """Copy a child's lines to our stderr; keep draining (never block the child) if it broke."""
    for line in iter(stream.readline, b""):  # type: ignore[attr-defined]
        try:
            sys.stderr.write(logs.child_line(name, line))  # JSON stays JSON (HOOKLINE_LOG_FORMAT)
            sys.stderr.flush()
        except OSError:
            _output_gone()


def _port_taken(port: int, host: str = "127.0.0.1") -> bool:
    """True when a server could not listen on host:port (as uvicorn and Tansu would)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            return exc.errno in (errno.EADDRINUSE, errno.EACCES)
    return False


def check_ports(ports: list[tuple[int, str, str]]) -> str | None:
    """The first (port, what, flag) that is taken or given twice, as one line; None if all free."""
    seen: dict[int, str] = {}
    for port, what, flag in ports:
        if port in seen:
            return (
                f"hookline run: port {port} is given to both the {seen[port]} and the {what}; "
                f"move the {what} with {flag} PORT"
            )
        seen[port] = what
        if _port_taken(port):
            return (
                f"hookline run: port {port} ({what}) is in use, by another hookline run "
                f"or another program; choose another with {flag} PORT"
            )
    return None


def _spawn(name: str, args: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    process = subprocess.Popen(
        [sys.executable, "-m", "hookline", *args],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    threading.Thread(target=_pump, args=(name, process.stdout), daemon=True).start()
    return process


def dev_warehouse(env: dict[str, str], embedded_broker: bool) -> Path:
    """The warehouse folder of this run; never one whose offsets belong to another broker.

    A warehouse stores, with its rows, the Kafka offsets it has landed. An
    embedded broker starts empty, so an earlier run's warehouse holds offsets
    above this broker's topics and its sink would skip their first records.
    With the embedded broker, the default warehouse is therefore a new folder
    per run under ``$HOOKLINE_DATA_DIR/warehouse/`` (earlier runs' tables stay
    readable where they are), and an explicit ``HOOKLINE_WAREHOUSE`` that
    already holds tables is refused.
    """
    from hookline.warehouse.command import default_warehouse

    base = default_warehouse(env).resolve()
    if not embedded_broker:
        return base
    if env.get("HOOKLINE_WAREHOUSE"):
        if (base / "catalog.db").exists():
            raise SystemExit(
                f"hookline run: the warehouse {base} holds tables landed from another broker; "
                "this run's embedded broker starts empty, below their stored offsets, so its "
                "sink would skip records. Set HOOKLINE_WAREHOUSE to a new folder, or unset it "
                "(each run then lands in its own folder)"
            )
        return base
    stamp = time.strftime("%Y-%m-%dT%H-%M-%SZ", time.gmtime())
    folder, n = base / stamp, 1
    while folder.exists():
        n += 1
        folder = base / f"{stamp}-{n}"
    return folder


def _start_sink(
    env: dict[str, str], web_port: int, folder: Path
) -> tuple[subprocess.Popen[bytes] | None, str]:
    """The warehouse sink when its extra is installed, and the line describing it."""
    from hookline.warehouse.command import warehouse_available

    if not warehouse_available():
        return None, "off: pip install -e '.[warehouse]' to land Iceberg tables (hookline sink)"
    env.setdefault("HOOKLINE_SINK_COMMIT_INTERVAL", "5")  # development: tables fill quickly
    args = ["sink", "--warehouse", str(folder), "--web-port", str(web_port)]
    return _spawn("sink", args, env), (
        f"{folder}  (Iceberg; SQLite catalog 'hookline' at catalog.db; "
        f"sink metrics http://127.0.0.1:{web_port}/metrics)"
    )


def _shown(path: Path) -> str:
    """``path`` relative to the current folder when it is under it, else absolute."""
    relative = os.path.relpath(path)
    return path.as_posix() if relative.startswith("..") else relative


def _try_line(gateway_port: int) -> str:
    """A first webhook to send, as a command that works from this folder."""
    url = f"http://127.0.0.1:{gateway_port}"
    example = (
        DEV_SOURCES.parents[1] / "tests" / "fixtures" / "payloads" / "partner-order-status.json"
    )
    if example.exists():
        script = Path(sys.executable).parent / "hookline"
        command = _shown(script) if script.exists() else "hookline"
        return f"  try:  {command} send partner {_shown(example)} --url {url}\n"
    return f"  try:  hookline send partner YOUR-FILE.json --url {url}\n"


def run_all(
    gateway_port: int, worker_web_port: int, broker_port: int | None, sink_web_port: int = 6067
) -> int:
    from hookline.infra.broker import EmbeddedBroker
    from hookline.infra.processes import stop_process

    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    if not env.get("HOOKLINE_SOURCES"):
        env["HOOKLINE_SOURCES"] = str(DEV_SOURCES)
        data_dir = Path(env.get("HOOKLINE_DATA_DIR") or ".hookline")
        for key, value in dev_secrets(data_dir=data_dir).items():
            env.setdefault(key, value)
    env.setdefault("HOOKLINE_STORE", "memory")  # the embedded broker forgets too

    from hookline.warehouse.command import warehouse_available

    embedded = not env.get("KAFKA_BOOTSTRAP_SERVERS")
    ports = [(gateway_port, "gateway", "--port"), (worker_web_port, "worker", "--worker-web-port")]
    if warehouse_available():
        ports.append((sink_web_port, "warehouse sink", "--sink-web-port"))
    if embedded and broker_port is not None:
        ports.append((broker_port, "embedded broker", "--broker-port"))
    taken = check_ports(ports)
    if taken:
        raise SystemExit(taken)
    warehouse = dev_warehouse(env, embedded)

    stopping = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        stopping.set()

    # SIGHUP: the terminal closed. The children are in their own sessions and
    # would never hear of it.
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, on_signal)

    broker = gateway = worker = sink = None
    code = 0
    try:
        if embedded:
            broker = EmbeddedBroker(port=broker_port).start()
            env["KAFKA_BOOTSTRAP_SERVERS"] = broker.bootstrap_servers
            env["HOOKLINE_PARTITIONS"] = env.get("HOOKLINE_PARTITIONS", "4")
        gateway = _spawn("gateway", ["gateway", "--port", str(gateway_port)], env)
        worker = _spawn("worker", ["worker", "--web-port", str(worker_web_port)], env)
        sink, sink_line = _start_sink(env, sink_web_port, warehouse)
        _say(
            "\nhookline is starting:\n"
            f"  Kafka              {env['KAFKA_BOOTSTRAP_SERVERS']}"
            f"{' (embedded, in memory)' if broker else ''}\n"
            f"  gateway            http://127.0.0.1:{gateway_port}/webhooks/<source>  "
            f"(/healthz /readyz /metrics)\n"
            f"  worker metrics     http://127.0.0.1:{worker_web_port}/metrics\n"
            f"  sources            {env['HOOKLINE_SOURCES']}\n"
            f"  warehouse          {sink_line}\n"
            f"{_try_line(gateway_port)}"
            "  Ctrl-C stops everything.\n",
        )
        while not stopping.is_set() and not OUTPUT_GONE.is_set():
            children = [("gateway", gateway), ("worker", worker)]
            for name, process in children + ([("sink", sink)] if sink else []):
                if process.poll() is not None:
                    _say(f"hookline: {name} exited with {process.returncode}")
                    code = process.returncode or 1
                    stopping.set()
            if broker is not None and not broker.alive():
                _say("hookline: embedded broker exited")
                code = 1
                stopping.set()
            time.sleep(0.2)
        if OUTPUT_GONE.is_set():
            code = code or 1
    finally:
        _say("hookline: stopping gateway, worker, sink, broker...")
        stop_process(gateway, timeout=15)
        stop_process(worker, timeout=30)
        stop_process(sink, timeout=30)  # after the worker: it lands the worker's last output
        if broker is not None:
            broker.stop()
        _say("hookline: stopped")
    return code
