"""``POST /webhooks/{source}``: verify one provider delivery, publish it, answer.

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

This is a bare ASGI endpoint, called by app.py's ``GatewayAPI`` before
FastAPI sees the request: FastAPI's middleware, routing and parameter
handling cost about three times what uvicorn itself spends on a request
(0.14-0.2 ms against 0.04 ms of CPU on the benchmark machine) and this route
uses none of it. Whatever does not change between requests (a source's
verifier, limit, topic, metric series, the constant part of its records) is
prepared once, at start, in a :class:`_Route`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, NamedTuple, TypeVar
from urllib.parse import parse_qsl

from hookline.core import topics
from hookline.core.adapters import envelope_problem, ordering_key
from hookline.core.settings import Settings
from hookline.core.sources import Source
from hookline.gateway.body import (
    BadBody,
    BodyBudget,
    BodyTimeout,
    BodyTooLarge,
    Busy,
    ClientGone,
    Evicted,
    LingeringJSONResponse,
    declared_length,
    parse_object,
    read_body,
)
from hookline.gateway.envelope import EnvelopeEncoder, new_delivery_id
from hookline.gateway.metrics import GatewayMetrics
from hookline.gateway.publish import Publisher, Unavailable
from hookline.gateway.throttled_log import ThrottledLog
from hookline.gateway.time_limit import TimeLimit
from hookline.gateway.verify import (
    JWT_BODY_LIMIT,
    Incoming,
    VerificationFailed,
    Verifier,
    repeated_input,
    verifier_for,
)
from prometheus_client import Counter, Histogram
from starlette.responses import JSONResponse, Response
from starlette.types import Receive, Scope, Send

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
#: Shares of the unverified-body budget one source, and one client address,
#: may hold; and the reserve a body's final chunk may use beyond the total.
SOURCE_SHARE = 2
CLIENT_SHARE = 4
RESERVE_SHARE = 8
#: A body that made no progress for this long may be evicted when the budget
#: is needed: a provider sends its body in one go, an attacker stalls.
STALL_S = 1.0

#: The 200 as Starlette's JSONResponse wrote it: ``{"accepted":true,"id":"..."}``.
_ACCEPTED_PREFIX = b'{"accepted":true,"id":"'
_JSON = (b"content-type", b"application/json")
_NO_QUERY: Mapping[str, str] = MappingProxyType({})

T = TypeVar("T")


def answer(status: int, detail: str, **headers: str) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=status, headers=headers or None)


def body_limit(source: Source, settings: Settings) -> int:
    """The source's body limit: its own, else its method's default, never over the global."""
    if source.max_body_bytes is not None:
        return min(source.max_body_bytes, settings.max_body_bytes)
    if source.verify == "jwt-hs256":
        return min(JWT_BODY_LIMIT, settings.max_body_bytes)
    return settings.max_body_bytes


class RequestHead(NamedTuple):
    """What the request line and headers say, read in one pass over the ASGI scope."""

    #: First value of each header (names lower-case, as ASGI gives them).
    headers: dict[str, str]
    query: Mapping[str, str]
    #: A verification input given more than once (its description), or None.
    repeated: str | None


def read_head(scope: Scope) -> RequestHead:
    """Headers and query parameters as Starlette would decode them (latin-1, parse_qsl)."""
    headers: dict[str, str] = {}
    repeated_headers: set[str] = set()
    for raw_name, raw_value in scope["headers"]:
        name = raw_name.decode("latin-1")
        if name in headers:
            repeated_headers.add(name)
        else:
            headers[name] = raw_value.decode("latin-1")
    query_string: bytes = scope.get("query_string", b"")
    query: Mapping[str, str] = _NO_QUERY
    repeated_query: set[str] = set()
    if query_string:
        parsed: dict[str, str] = {}
        for name, value in parse_qsl(query_string.decode("latin-1"), keep_blank_values=True):
            if name in parsed:
                repeated_query.add(name)
            else:
                parsed[name] = value
        query = parsed
    repeated = None
    if repeated_headers or repeated_query:
        repeated = repeated_input(repeated_query, repeated_headers)
    return RequestHead(headers, query, repeated)


@dataclass(frozen=True)
class _Route:
    """One source, with everything its requests need that never changes."""

    source: Source
    verifier: Verifier
    limit: int
    topic: str
    envelope: EnvelopeEncoder
    accepted: Counter
    publish_seconds: Histogram
    #: Verified from the raw body once it is read (HMAC, Standard Webhooks):
    #: neither proven before the body (a token) nor after parsing (a JWT).
    verifies_body: bool


async def _off_loop(work: Callable[..., T], *args: Any) -> T:
    """Work on a large body, in a thread: the loop keeps serving (and Kafka's acks) meanwhile."""
    return await asyncio.to_thread(work, *args)


class WebhookEndpoint:
    """The webhook route's ASGI handler; ``in_flight`` backs the in-flight gauge."""

    def __init__(
        self,
        settings: Settings,
        sources: Mapping[str, Source],
        publisher: Publisher,
        metrics: GatewayMetrics,
    ) -> None:
        self.settings = settings
        self.publisher = publisher
        self.metrics = metrics
        self.in_flight = 0
        total = settings.unverified_body_bytes
        self.budget = BodyBudget(
            total,
            per_source=total // SOURCE_SHARE,
            per_client=total // CLIENT_SHARE,
            reserve=total // RESERVE_SHARE,
            stall_s=STALL_S,
        )
        self.body_time_limit = TimeLimit(settings.body_timeout_s)
        self.refusals = ThrottledLog(log)
        # Read when scraped, not set per request: the value is always current.
        metrics.in_flight.set_function(lambda: self.in_flight)
        metrics.unverified_body_bytes.set_function(lambda: self.budget.used)
        self.routes: dict[str, _Route] = {}
        for name, source in sources.items():
            verifier = verifier_for(source)
            self.routes[name] = _Route(
                source=source,
                verifier=verifier,
                limit=body_limit(source, settings),
                topic=topics.raw(source.environment),
                envelope=EnvelopeEncoder(source),
                accepted=metrics.deliveries.labels(name, "accepted"),
                publish_seconds=metrics.publish_seconds.labels(source.environment),
                verifies_body=not verifier.needs_document and not verifier.complete_before_body,
            )

    async def __call__(self, scope: Scope, receive: Receive, send: Send, source_name: str) -> None:
        self.in_flight += 1
        try:
            try:
                result = await self._receive(scope, receive, source_name)
            except Exception:
                # The app's JSON shape even for a bug; re-raised so the server
                # logs it with its traceback (as Starlette's error middleware does).
                await answer(500, "internal error")(scope, receive, send)
                raise
        finally:
            self.in_flight -= 1
        if isinstance(result, Response):
            await result(scope, receive, send)
            return
        headers = ((b"content-length", b"%d" % len(result)), _JSON)
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": result})

    def refuse(
        self, source: str, status: int, outcome: str, detail: str, **headers: str
    ) -> JSONResponse:
        self.metrics.deliveries.labels(source, outcome).inc()
        self.refusals.warning(
            "refused source=%s status=%d reason=%s", source, status, detail, source=source
        )
        return answer(status, detail, **headers)

    def unverified(
        self, route: _Route, failure: VerificationFailed, drain_bytes: int = 0
    ) -> JSONResponse:
        name = route.source.name
        self.metrics.verification_failures.labels(name, failure.reason).inc()
        detail = f"verification failed: {failure.reason}"
        headers = {"WWW-Authenticate": route.verifier.challenge}
        self.refuse(name, 401, "unauthorized", detail)
        if not drain_bytes:
            return answer(401, detail, **headers)
        # Refused before its body was read: answer, drop what is already on
        # the way (bounded), close. Nothing of it is kept.
        return LingeringJSONResponse(
            {"detail": detail},
            status_code=401,
            headers={**headers, "Connection": "close"},
            drain_bytes=drain_bytes,
            drain_seconds=DRAIN_SECONDS,
        )

    def too_large(self, route: _Route, verified: bool) -> JSONResponse:
        detail = f"body larger than {route.limit} bytes"
        self.refuse(route.source.name, 413, "too_large", detail)
        return LingeringJSONResponse(
            {"detail": detail},
            status_code=413,
            headers={"Connection": "close"},
            # An authentic provider over the limit should see the 413 (it will
            # not retry a 413 forever); a stranger gets a few reads at most.
            drain_bytes=4 * route.limit if verified else DRAIN_UNVERIFIED_BYTES,
            drain_seconds=DRAIN_SECONDS,
        )

    async def _receive(self, scope: Scope, receive: Receive, source_name: str) -> Response | bytes:
        """A refusal to send, or the accepted answer's body once Kafka acknowledged."""
        route = self.routes.get(source_name)
        if route is None:
            self.metrics.deliveries.labels("unknown", "not_found").inc()
            self.refusals.warning("refused unknown source %r", source_name[:64])
            # Closed, so that whatever body follows is never read.
            return answer(404, "unknown source", Connection="close")
        source = route.source
        verifier = route.verifier
        limit = route.limit
        head = read_head(scope)
        if head.repeated:
            detail = f"{head.repeated} given more than once"
            return self.refuse(source.name, 400, "bad_request", detail, Connection="close")
        headers = head.headers
        try:
            declared = declared_length(headers.get("content-length"))
        except BadBody as exc:
            return self.refuse(source.name, 400, "bad_request", str(exc), Connection="close")
        drain = min(declared if declared is not None else limit, DRAIN_UNVERIFIED_BYTES)
        client = scope.get("client")
        client_ip: str | None = client[0] if client else None
        try:
            if not source.ip_allowed(client_ip):
                raise VerificationFailed("ip_not_allowed")
            verifier.precheck(Incoming(b"", headers, head.query))
        except VerificationFailed as failure:
            return self.unverified(route, failure, drain_bytes=drain)
        if declared is not None and declared > limit:
            return self.too_large(route, verifier.complete_before_body)

        with self.budget.hold(source.name, client_ip) as hold:
            try:
                body = await read_body(
                    receive,
                    limit,
                    time_limit=self.body_time_limit,
                    # A sender proven by its query token is not charged.
                    hold=None if verifier.complete_before_body else hold,
                )
            except BodyTooLarge:
                return self.too_large(route, verifier.complete_before_body)
            except BodyTimeout:
                return self.refuse(
                    source.name,
                    408,
                    "body_timeout",
                    f"body not received within {self.settings.body_timeout_s:g}s",
                    Connection="close",
                )
            except Evicted:
                return self.refuse(
                    source.name,
                    408,
                    "too_slow",
                    "body too slow: evicted to make room for others",
                    Connection="close",
                )
            except Busy:
                return self.refuse(
                    source.name,
                    503,
                    "busy",
                    "too many unverified bodies in flight",
                    **{"Retry-After": str(RETRY_AFTER_S), "Connection": "close"},
                )
            except ClientGone:
                # Nobody is left to answer: counted, and at most a debug line.
                self.metrics.deliveries.labels(source.name, "client_gone").inc()
                log.debug("client left mid-body source=%s", source.name)
                return Response(status_code=400)
            received_at = int(time.time() * 1000)
            size = len(body)

            large = size > OFF_LOOP_BYTES
            if route.verifies_body:
                incoming = Incoming(body, headers, head.query)
                try:
                    if large:
                        await _off_loop(verifier, incoming)
                    else:
                        verifier(incoming)
                except VerificationFailed as failure:
                    return self.unverified(route, failure)
            depth = self.settings.max_json_depth
            try:
                if large:
                    document = await _off_loop(parse_object, body, depth)
                else:
                    document = parse_object(body, depth)
            except BadBody as exc:
                return self.refuse(source.name, 400, "bad_request", str(exc))
            problem = envelope_problem(source.kind, document)
            if problem:
                return self.refuse(source.name, 400, "bad_request", problem)
            if verifier.needs_document:
                try:
                    verifier(Incoming(body, headers, head.query, document))
                except VerificationFailed as failure:
                    return self.unverified(route, failure)

        delivery_id = new_delivery_id(received_at)
        record = route.envelope.encode(delivery_id, received_at, body, headers, client_ip)
        started = time.perf_counter()
        try:
            await self.publisher.publish(
                route.topic,
                delivery_id.encode(),
                record,
                ordering_key(source.kind, document).encode(),
            )
        except Unavailable as exc:
            return self.refuse(
                source.name,
                503,
                "unavailable",
                f"Kafka unavailable: {exc}",
                **{"Retry-After": str(RETRY_AFTER_S)},
            )
        route.publish_seconds.observe(time.perf_counter() - started)
        self.metrics.body_bytes.observe(size)
        route.accepted.inc()
        # Counted above; a line per delivery would cost more than the delivery.
        log.debug("accepted source=%s delivery_id=%s bytes=%d", source.name, delivery_id, size)
        return _ACCEPTED_PREFIX + delivery_id.encode() + b'"}'
