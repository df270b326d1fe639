"""Where a webhook enters: ``POST /webhooks/{source}``, plus health and metrics.

The gateway faces the open internet, so whatever an unauthenticated client
sends must cost little and be bounded, and must never slow authentic
deliveries down. The handler therefore refuses as early as it can, cheapest
check first: find the source (404), refuse a verification input given twice
(400), check the client address and what the URL and headers alone can prove
(a query token, a signature header's shape, a Standard Webhooks timestamp:
401, before a byte of the body is read), refuse a declared length over the
source's limit (413), read the body within the limit, the body timeout (408)
and the budget for unverified bodies (503), verify it (401), check it is
strict JSON with its kind's envelope (400), publish it raw and wait for
Kafka's acknowledgement (503 on failure), answer 200. Everything else happens
in the workers.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from typing import Any, TypeVar

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from hookline.core import topics
from hookline.core.adapters import envelope_problem, ordering_key
from hookline.core.settings import Settings
from hookline.core.sources import Source, load_sources
from hookline.gateway.body import (
    BadBody,
    BodyBudget,
    BodyTimeout,
    BodyTooLarge,
    Busy,
    ClientGone,
    LingeringJSONResponse,
    declared_length,
    parse_object,
    read_limited,
)
from hookline.gateway.envelope import new_delivery_id, raw_envelope
from hookline.gateway.metrics import GatewayMetrics
from hookline.gateway.publish import Publisher, Unavailable
from hookline.gateway.throttled_log import ThrottledLog
from hookline.gateway.verify import (
    JWT_BODY_LIMIT,
    Incoming,
    VerificationFailed,
    Verifier,
    repeated_input,
    verifier_for,
)
from hookline.schemas import codec
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

log = logging.getLogger("hookline.gateway")

RETRY_AFTER_S = 5
#: Bodies larger than this are hashed and parsed off the event loop, so one
#: large body cannot hold up every other request (and Kafka's acks) meanwhile.
OFF_LOOP_BYTES = 64 * 1024
#: How long a refused request's unread body is drained before closing.
DRAIN_SECONDS = 2.0
#: How much of it, for a sender not proven authentic: enough for any honest
#: small webhook to be read whole (so its client sees the answer rather than a
#: reset), not enough to make refusing a flood cost more than a few reads.
DRAIN_UNVERIFIED_BYTES = 64 * 1024

T = TypeVar("T")


def _answer(status: int, detail: str, **headers: str) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=status, headers=headers or None)


def body_limit(source: Source, settings: Settings) -> int:
    """The source's body limit: its own, else its method's default, never over the global."""
    if source.max_body_bytes is not None:
        return min(source.max_body_bytes, settings.max_body_bytes)
    if source.verify == "jwt-hs256":
        return min(JWT_BODY_LIMIT, settings.max_body_bytes)
    return settings.max_body_bytes


async def _sized(size: int, work: Callable[..., T], *args: Any) -> T:
    """Run CPU work on the loop when small, in a thread when large."""
    if size > OFF_LOOP_BYTES:
        return await asyncio.to_thread(work, *args)
    return work(*args)


def create_app(
    settings: Settings | None = None,
    sources: Mapping[str, Source] | None = None,
    publisher: Publisher | None = None,
    metrics: GatewayMetrics | None = None,
) -> FastAPI:
    settings = settings or Settings.from_env()
    sources = dict(sources if sources is not None else load_sources(settings.require_sources()))
    verifiers: dict[str, Verifier] = {name: verifier_for(src) for name, src in sources.items()}
    limits = {name: body_limit(src, settings) for name, src in sources.items()}
    metrics = metrics or GatewayMetrics()
    budget = BodyBudget(settings.unverified_body_bytes, metrics.unverified_body_bytes.set)
    refusals = ThrottledLog(log)
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
    app = FastAPI(
        title="hookline gateway",
        summary="Verifies provider webhooks and publishes them, raw and Avro-encoded, to Kafka.",
        lifespan=lifespan,
        # A redirect would be built from the client's Host header and repeat
        # the query string (a token): unknown paths are plain 404s instead.
        redirect_slashes=False,
        **docs,
    )
    app.state.publisher = publisher
    app.state.metrics = metrics

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> JSONResponse:
        """The app's JSON shape even for a bug (logged, with its traceback, by the server)."""
        return _answer(500, "internal error")

    def refuse(source: str, status: int, outcome: str, detail: str, **headers: str) -> JSONResponse:
        metrics.deliveries.labels(source, outcome).inc()
        refusals.warning("refused source=%s status=%d reason=%s", source, status, detail)
        return _answer(status, detail, **headers)

    def unverified(
        source: Source, failure: VerificationFailed, drain_bytes: int = 0
    ) -> JSONResponse:
        metrics.verification_failures.labels(source.name, failure.reason).inc()
        detail = f"verification failed: {failure.reason}"
        headers = {"WWW-Authenticate": verifiers[source.name].challenge}
        refuse(source.name, 401, "unauthorized", detail)
        if not drain_bytes:
            return _answer(401, detail, **headers)
        # Refused before its body was read: answer, drop what is already on
        # the way (bounded), close. Nothing of it is kept.
        return LingeringJSONResponse(
            {"detail": detail},
            status_code=401,
            headers={**headers, "Connection": "close"},
            drain_bytes=drain_bytes,
            drain_seconds=DRAIN_SECONDS,
        )

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
        with metrics.in_flight.track_inprogress():
            return await _receive(source_name, request)

    async def _receive(source_name: str, request: Request) -> Response:
        source = sources.get(source_name)
        if source is None:
            metrics.deliveries.labels("unknown", "not_found").inc()
            refusals.warning("refused unknown source %r", source_name[:64])
            return _answer(404, "unknown source")
        verifier = verifiers[source.name]
        limit = limits[source.name]
        repeated = repeated_input(request.query_params, request.headers)
        if repeated:
            return refuse(source.name, 400, "bad_request", f"{repeated} given more than once")
        try:
            declared = declared_length(request.headers.get("content-length"))
        except BadBody as exc:
            return refuse(source.name, 400, "bad_request", str(exc))
        drain = min(declared if declared is not None else limit, DRAIN_UNVERIFIED_BYTES)
        client_ip = request.client.host if request.client else None
        head = Incoming(body=b"", headers=request.headers, query=request.query_params)
        try:
            if not source.ip_allowed(client_ip):
                raise VerificationFailed("ip_not_allowed")
            verifier.precheck(head)
        except VerificationFailed as failure:
            return unverified(source, failure, drain_bytes=drain)
        if declared is not None and declared > limit:
            return too_large(source, limit, verifier.complete_before_body)

        with budget.hold() as hold:
            try:
                body = await read_limited(
                    request.stream(),
                    None,
                    limit,
                    timeout_s=settings.body_timeout_s,
                    # A sender proven by its query token is not charged.
                    hold=None if verifier.complete_before_body else hold,
                )
            except BodyTooLarge:
                return too_large(source, limit, verifier.complete_before_body)
            except BodyTimeout:
                return refuse(
                    source.name,
                    408,
                    "body_timeout",
                    f"body not received within {settings.body_timeout_s:g}s",
                    Connection="close",
                )
            except Busy:
                return refuse(
                    source.name,
                    503,
                    "busy",
                    "too many unverified bodies in flight",
                    **{"Retry-After": str(RETRY_AFTER_S), "Connection": "close"},
                )
            except ClientGone:
                # Nobody is left to answer: counted, and at most a debug line.
                metrics.deliveries.labels(source.name, "client_gone").inc()
                log.debug("client left mid-body source=%s", source.name)
                return Response(status_code=400)
            received_at = int(time.time() * 1000)

            incoming = Incoming(body=body, headers=request.headers, query=request.query_params)
            if not verifier.needs_document and not verifier.complete_before_body:
                try:
                    await _sized(len(body), verifier, incoming)
                except VerificationFailed as failure:
                    return unverified(source, failure)
            try:
                document = await _sized(len(body), parse_object, body, settings.max_json_depth)
            except BadBody as exc:
                return refuse(source.name, 400, "bad_request", str(exc))
            problem = envelope_problem(source.kind, document)
            if problem:
                return refuse(source.name, 400, "bad_request", problem)
            if verifier.needs_document:
                try:
                    verifier(Incoming(body, request.headers, request.query_params, document))
                except VerificationFailed as failure:
                    return unverified(source, failure)

        delivery_id = new_delivery_id(received_at)
        record = codec.encode(
            codec.WEBHOOK_ENVELOPE,
            raw_envelope(source, body, request.headers, client_ip, received_at, delivery_id),
        )
        started = time.perf_counter()
        try:
            await publisher.publish(
                topics.raw(source.environment),
                delivery_id.encode(),
                record,
                ordering_key(source.kind, document).encode(),
            )
        except Unavailable as exc:
            return refuse(
                source.name,
                503,
                "unavailable",
                f"Kafka unavailable: {exc}",
                **{"Retry-After": str(RETRY_AFTER_S)},
            )
        metrics.publish_seconds.labels(source.environment).observe(time.perf_counter() - started)
        metrics.body_bytes.observe(len(body))
        metrics.deliveries.labels(source.name, "accepted").inc()
        # Counted above; a line per delivery would cost more than the delivery.
        log.debug("accepted source=%s delivery_id=%s bytes=%d", source.name, delivery_id, len(body))
        return JSONResponse({"accepted": True, "id": delivery_id})

    def too_large(source: Source, limit: int, verified: bool) -> JSONResponse:
        detail = f"body larger than {limit} bytes"
        refuse(source.name, 413, "too_large", detail)
        return LingeringJSONResponse(
            {"detail": detail},
            status_code=413,
            headers={"Connection": "close"},
            # An authentic provider over the limit should see the 413 (it will
            # not retry a 413 forever); a stranger gets a few reads at most.
            drain_bytes=4 * limit if verified else DRAIN_UNVERIFIED_BYTES,
            drain_seconds=DRAIN_SECONDS,
        )

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
