"""The gateway's ASGI app: ``POST /webhooks/{source}``, plus health, metrics and API docs.

The webhook route is gateway/webhooks.py. It runs ahead of FastAPI (see
:class:`GatewayAPI`) because FastAPI's per-request machinery is most of the
CPU a bare FastAPI endpoint costs and that route needs none of it; FastAPI
still documents it (the OpenAPI schema is unchanged) and serves everything
else: ``/healthz``, ``/readyz``, ``/metrics``, the docs, and the 404s and
405s of every other path.

Those other routes take no body. So that a body sent to them costs nothing,
it is never read: such a request is answered from its head, and the
connection is closed after any answer to a request that carries a body and
after every 404 and 405 (uvicorn would otherwise read, and drop, a body of
any size to reach the next request on the connection).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from hookline.core import topics
from hookline.core.settings import Settings
from hookline.core.sources import Source, load_sources
from hookline.gateway.metrics import GatewayMetrics
from hookline.gateway.publish import Publisher
from hookline.gateway.webhooks import WebhookEndpoint, answer, body_limit
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["GatewayAPI", "body_limit", "create_app"]

WEBHOOK_PREFIX = "/webhooks/"
_CLOSE = (b"connection", b"close")
_NO_BODY: dict[str, Any] = {"type": "http.request", "body": b"", "more_body": False}


def _has_body(scope: Scope) -> bool:
    for name, value in scope["headers"]:
        if name == b"transfer-encoding" or (name == b"content-length" and value != b"0"):
            return True
    return False


async def _closing(scope: Scope, receive: Receive, send: Send, app: ASGIApp) -> None:
    """``app`` with the request's body unread and, when needed, the connection closed after."""
    close_always = _has_body(scope)

    async def no_body() -> Message:
        return dict(_NO_BODY)

    async def send_closing(message: Message) -> None:
        if message["type"] == "http.response.start" and (
            close_always or message["status"] in (404, 405)
        ):
            message = {**message, "headers": [*message.get("headers", []), _CLOSE]}
        await send(message)

    await app(scope, no_body, send_closing)


def _delegated_to_webhooks(scope: Scope) -> bool:
    """Under a root path FastAPI routes deliveries (see :class:`_Delegated`): left untouched."""
    return (
        bool(scope.get("root_path"))
        and scope["method"] == "POST"
        and WEBHOOK_PREFIX in scope["path"]
    )


def metrics_app(registry: CollectorRegistry) -> ASGIApp:
    """The metrics listener: ``GET /metrics`` (Prometheus text); anything else 404, closed."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        if scope["path"] == "/metrics" and scope["method"] in ("GET", "HEAD"):
            response: Response = Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
        else:
            response = JSONResponse({"detail": "Not Found"}, status_code=404)
        await _closing(scope, receive, send, response)

    return app


class GatewayAPI(FastAPI):
    """FastAPI, except that webhook deliveries go straight to their endpoint.

    Only what Starlette's route ``/webhooks/{source_name}`` would match (a
    POST, one non-empty path segment, no root path) is taken here; every
    other request, including a GET to a webhook URL (405), goes through
    FastAPI as before.
    """

    webhooks: WebhookEndpoint
    #: False when /metrics is served on a listener of its own: here it is then a 404.
    public_metrics: bool = True

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await super().__call__(scope, receive, send)
            return
        path: str = scope["path"]
        post = scope["method"] == "POST" and not scope.get("root_path")
        if post and path.startswith(WEBHOOK_PREFIX):
            name = path[len(WEBHOOK_PREFIX) :]
            if name and "/" not in name:
                await self.webhooks(scope, receive, send, name)
                return
        if path == "/metrics" and not self.public_metrics:
            await _closing(scope, receive, send, JSONResponse({"detail": "Not Found"}, 404))
            return
        if _delegated_to_webhooks(scope):
            await super().__call__(scope, receive, send)
            return
        await _closing(scope, receive, send, super().__call__)


class _Delegated(Response):
    """Hands a request FastAPI routed to the webhook route over to its endpoint.

    Only reached when the app is mounted under a root path; the endpoint then
    answers exactly as it does when called directly.
    """

    def __init__(self, endpoint: WebhookEndpoint, source_name: str) -> None:
        super().__init__()
        self._endpoint = endpoint
        self._source_name = source_name

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._endpoint(scope, receive, send, self._source_name)


def create_app(
    settings: Settings | None = None,
    sources: Mapping[str, Source] | None = None,
    publisher: Publisher | None = None,
    metrics: GatewayMetrics | None = None,
) -> GatewayAPI:
    settings = settings or Settings.from_env()
    sources = dict(sources if sources is not None else load_sources(settings.require_sources()))
    metrics = metrics or GatewayMetrics()
    environments = sorted({s.environment for s in sources.values()})
    max_record = settings.max_record_bytes
    if publisher is None:
        publisher = Publisher(
            settings.require_bootstrap(),
            timeout_s=settings.publish_timeout_s,
            max_record_bytes=max_record,
            topics=[
                spec
                for env in environments
                for spec in topics.gateway_topics(env, settings.raw_retention_days, max_record)
            ],
            partitions=settings.partitions,
            replication_factor=settings.replication_factor,
        )
    webhooks = WebhookEndpoint(settings, sources, publisher, metrics)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await publisher.start()
        try:
            yield
        finally:
            await publisher.stop()

    docs: dict[str, Any] = (
        {} if settings.api_docs else {"docs_url": None, "redoc_url": None, "openapi_url": None}
    )
    app = GatewayAPI(
        title="hookline gateway",
        summary="Verifies provider webhooks and publishes them, raw and Avro-encoded, to Kafka.",
        lifespan=lifespan,
        # A redirect would be built from the client's Host header and repeat
        # the query string (a token): unknown paths are plain 404s instead.
        redirect_slashes=False,
        **docs,
    )
    app.webhooks = webhooks
    app.state.publisher = publisher
    app.state.metrics = metrics

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> JSONResponse:
        """The app's JSON shape even for a bug (logged, with its traceback, by the server)."""
        return answer(500, "internal error")

    @app.post(
        "/webhooks/{source_name}",
        responses={
            200: {"description": "Published; Kafka acknowledged the raw record."},
            400: {"description": "Not strict JSON, the kind's envelope missing, or ambiguous."},
            401: {"description": "Verification failed (with WWW-Authenticate)."},
            404: {"description": "No such source."},
            408: {"description": "The body did not arrive within the body timeout."},
            413: {"description": "Body over the source's limit."},
            503: {"description": "Kafka unavailable, or too many unverified bodies in flight."},
        },
    )
    async def receive_webhook(source_name: str, request: Request) -> Response:
        """Verify one provider delivery and publish it to ``<env>.webhooks.raw``."""
        return _Delegated(webhooks, source_name)

    @app.get("/healthz")
    async def healthz() -> dict[str, Any]:
        """Liveness: the process answers."""
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz() -> JSONResponse:
        """Readiness: Kafka answered a metadata request within the last second."""
        if await publisher.ready():
            return JSONResponse({"ready": True})
        return JSONResponse({"ready": False, "detail": "Kafka unreachable"}, status_code=503)

    @app.get("/metrics")
    async def prometheus_metrics() -> Response:
        """Prometheus text exposition of the hookline_gateway_* metrics."""
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app
