"""Where a webhook enters: ``POST /webhooks/{source}``, plus health and metrics.

The handler does the minimum that must happen before answering the provider,
in this order: find the source (404), check the client address (401), read
the body within the limit (413), verify it (401), check it is JSON with its
kind's envelope (400), publish it raw and wait for Kafka's acknowledgement
(503 on failure), answer 200. Everything else happens in the workers.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from gateway.body import (
    BadBody,
    BodyTooLarge,
    LingeringJSONResponse,
    parse_object,
    read_limited,
)
from gateway.envelope import new_delivery_id, raw_envelope
from gateway.metrics import GatewayMetrics
from gateway.publish import Publisher, Unavailable
from gateway.verify import Incoming, VerificationFailed, Verifier, verifier_for
from hookline import topics
from hookline.settings import Settings
from hookline.sources import Source, load_sources
from schemas import codec
from streams.adapters import envelope_problem, ordering_key

log = logging.getLogger("hookline.gateway")

RETRY_AFTER_S = 5


def _answer(status: int, detail: str, **headers: str) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=status, headers=headers or None)


def create_app(
    settings: Settings | None = None,
    sources: Mapping[str, Source] | None = None,
    publisher: Publisher | None = None,
    metrics: GatewayMetrics | None = None,
) -> FastAPI:
    settings = settings or Settings.from_env()
    sources = dict(sources if sources is not None else load_sources(settings.sources_path))
    verifiers: dict[str, Verifier] = {name: verifier_for(src) for name, src in sources.items()}
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

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await publisher.start()
        try:
            yield
        finally:
            await publisher.stop()

    app = FastAPI(
        title="hookline gateway",
        summary="Verifies provider webhooks and publishes them, raw and Avro-encoded, to Kafka.",
        lifespan=lifespan,
    )
    app.state.publisher = publisher
    app.state.metrics = metrics

    def refuse(source: str, status: int, outcome: str, detail: str, **headers: str) -> JSONResponse:
        metrics.deliveries.labels(source, outcome).inc()
        log.warning("refused source=%s status=%d reason=%s", source, status, detail)
        return _answer(status, detail, **headers)

    def unverified(source: Source, failure: VerificationFailed) -> JSONResponse:
        metrics.verification_failures.labels(source.name, failure.reason).inc()
        return refuse(source.name, 401, "unauthorized", f"verification failed: {failure.reason}")

    @app.post(
        "/webhooks/{source_name}",
        responses={
            200: {"description": "Published; Kafka acknowledged the raw record."},
            400: {"description": "Not JSON, or the kind's envelope is missing."},
            401: {"description": "Verification failed."},
            404: {"description": "No such source."},
            413: {"description": "Body over the limit."},
            503: {"description": "Kafka unavailable; retry after Retry-After seconds."},
        },
    )
    async def receive_webhook(source_name: str, request: Request) -> JSONResponse:
        """Verify one provider delivery and publish it to ``<env>.webhooks.raw``."""
        with metrics.in_flight.track_inprogress():
            return await _receive(source_name, request)

    async def _receive(source_name: str, request: Request) -> JSONResponse:
        source = sources.get(source_name)
        if source is None:
            metrics.deliveries.labels("unknown", "not_found").inc()
            log.warning("refused unknown source %r", source_name[:64])
            return _answer(404, "unknown source")
        client_ip = request.client.host if request.client else None
        if not source.ip_allowed(client_ip):
            return unverified(source, VerificationFailed("ip_not_allowed"))
        stream = request.stream()
        try:
            body = await read_limited(
                stream, request.headers.get("content-length"), settings.max_body_bytes
            )
        except BodyTooLarge:
            detail = f"body larger than {settings.max_body_bytes} bytes"
            refuse(source.name, 413, "too_large", detail)
            return LingeringJSONResponse(
                {"detail": detail},
                status_code=413,
                headers={"Connection": "close"},
                drain_bytes=4 * settings.max_body_bytes,
            )
        except BadBody as exc:
            return refuse(source.name, 400, "bad_request", str(exc))
        received_at = int(time.time() * 1000)

        verifier = verifiers[source.name]
        incoming = Incoming(body=body, headers=request.headers, query=request.query_params)
        if not verifier.needs_document:
            try:
                verifier(incoming)
            except VerificationFailed as failure:
                return unverified(source, failure)
        try:
            document = parse_object(body, settings.max_json_depth)
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
        log.info("accepted source=%s delivery_id=%s bytes=%d", source.name, delivery_id, len(body))
        return JSONResponse({"accepted": True, "id": delivery_id})

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
