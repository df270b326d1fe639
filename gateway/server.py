"""How the gateway is served: uvicorn on uvloop and httptools, bounded connections, JSON errors.

uvloop and httptools take a good share of the per-request CPU off the event
loop compared with asyncio and h11; the loop is also where publishing waits
for Kafka, so what it saves is headroom that keeps acknowledgements timely
under load. Connections are bounded before the app sees a request (header
size, count and time, idle time, how many: gateway/connections.py), and a
request so malformed that it never reaches the app gets the same
``{"detail": ...}`` body as every other refusal.

``/metrics`` lists every source name with its counts and failure reasons,
so it can be served on a listener of its own (``--metrics-port``, bound to
``--metrics-host``, loopback by default) instead of the public one, which
then answers it 404.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
from collections.abc import Mapping

import uvicorn
from hookline.gateway.app import GatewayAPI, metrics_app
from hookline.gateway.connections import (
    ConnectionLimits,
    SettingError,
    connection_cap,
    guarded_protocol,
)
from hookline.gateway.throttled_log import ThrottledLog, ThrottleFilter

METRICS_PORT_ENV = "HOOKLINE_GATEWAY_METRICS_PORT"
log = logging.getLogger("hookline.gateway")


def metrics_port_from_env(env: Mapping[str, str] | None = None) -> int | None:
    """``HOOKLINE_GATEWAY_METRICS_PORT`` as a port number, or None when unset."""
    raw = (os.environ if env is None else env).get(METRICS_PORT_ENV, "").strip()
    if not raw:
        return None
    if not (raw.isascii() and raw.isdigit()) or not 0 < int(raw) < 65536:
        raise SettingError(f"{METRICS_PORT_ENV}={raw!r}: expected a port number")
    return int(raw)


def serve(
    app: GatewayAPI,
    host: str,
    port: int,
    forwarded_allow_ips: str | None,
    metrics_port: int | None = None,
    metrics_host: str = "127.0.0.1",
) -> None:
    limits = ConnectionLimits.from_env()
    if metrics_port is None:
        metrics_port = metrics_port_from_env()
    # uvicorn's own warnings (a malformed request, an ASGI error) are as
    # floodable as the gateway's refusals: rate-limited the same way.
    logging.getLogger("uvicorn.error").addFilter(ThrottleFilter())
    refusals = ThrottledLog(log)
    metrics = app.state.metrics
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        loop="uvloop",
        http=guarded_protocol(limits, metrics, refusals, connection_cap(limits.max_connections)),
        log_config=None,  # keep our logging setup
        access_log=False,  # access logs would print query strings, i.e. tokens
        proxy_headers=bool(forwarded_allow_ips),
        forwarded_allow_ips=forwarded_allow_ips or None,
        timeout_keep_alive=limits.keep_alive_s,
        timeout_graceful_shutdown=10,
        # A burst of connections waits in the kernel's accept queue; a longer
        # one (the kernel caps it at net.core.somaxconn) drops fewer SYNs.
        backlog=8192,
    )
    side: uvicorn.Server | None = None
    if metrics_port is not None:
        app.public_metrics = False
        side = uvicorn.Server(
            uvicorn.Config(
                metrics_app(metrics.registry),
                host=metrics_host,
                port=metrics_port,
                loop="uvloop",
                http=guarded_protocol(limits, None, refusals, 64),
                lifespan="off",
                log_config=None,
                access_log=False,
            )
        )
    # Everything imported and built so far (FastAPI, pydantic, aiokafka, the
    # schemas: ~70 000 objects) lives as long as the process. Frozen, the
    # cyclic GC no longer walks it in each full collection, which otherwise
    # stalled every request in flight for tens of milliseconds under load.
    gc.collect()
    gc.freeze()
    server = uvicorn.Server(config)
    with asyncio.Runner(loop_factory=config.get_loop_factory()) as runner:
        runner.run(_serve_both(server, side))


async def _serve_both(server: uvicorn.Server, side: uvicorn.Server | None) -> None:
    """The public server (which owns the signals), and the metrics one beside it."""
    if side is None:
        await server.serve()
        return
    side.config.load()
    side.lifespan = side.config.lifespan_class(side.config)
    await side.startup()
    try:
        await server.serve()
    finally:
        side.should_exit = True
        await side.shutdown()
