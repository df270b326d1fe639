"""Connections bounded before a request reaches the app: its head, idle time, how many.

uvicorn's httptools protocol bounds none of what arrives before the app sees
a request: header bytes (httptools joins a header's pieces by concatenation,
so a long header costs time quadratic in its length), header count, how long
a request head may take, how long a fresh connection may stay silent, or how
many connections are open (at the descriptor limit, accept fails and nobody
is served). :class:`GuardedProtocol` adds those bounds for every route:

- a request head (request line and headers) over ``max_header_bytes``, or
  with more than ``max_headers`` headers, is answered 431 and the connection
  closed; bytes past the limit are never given to the parser;
- a connection waiting for a request head (fresh, or idle between
  keep-alive requests) gets ``header_timeout_s`` for all of it; then it is
  closed (408 if part of a head had arrived);
- past ``max_connections`` open connections, the one that has been waiting
  for a head the longest is closed to make room, so an idle flood cannot
  take the descriptors an authentic request needs;
- an ``Upgrade`` request (never honoured: the gateway speaks HTTP/1.1 only)
  keeps its body instead of losing it to the parser's upgrade mode, and its
  connection is closed after the answer.

Every refusal is the app's JSON shape; its log line goes through the
gateway's rate-limited refusal log. Invariant: the parser is never given
more than ``max_header_bytes`` of one request head, plus, for a head that
begins in the same read as the previous request's end, that read's tail.
"""

from __future__ import annotations

import asyncio
import logging
import os
import resource
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import httptools
from hookline.gateway.metrics import GatewayMetrics
from hookline.gateway.throttled_log import ThrottledLog
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

log = logging.getLogger("hookline.gateway")

#: Descriptors kept free below the process's limit whatever ``max_connections``
#: says: for Kafka, the metrics listener, files, and the connection being accepted.
DESCRIPTOR_RESERVE = 512
#: After a refusal, what is still read (and dropped) before reading stops, and
#: how long until the connection is closed: the client reads the answer
#: instead of a reset.
LINGER_BYTES = 64 * 1024
LINGER_S = 1.0


class SettingError(ValueError):
    """A gateway setting with a value it cannot use (the message names it)."""


def _number(env: Mapping[str, str], name: str, default: float, kind: type = int) -> Any:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = kind(raw)
    except ValueError:
        raise SettingError(f"{name}={raw!r}: expected a number") from None
    if value <= 0:
        raise SettingError(f"{name}={raw!r}: must be positive")
    return value


@dataclass(frozen=True)
class ConnectionLimits:
    """What one connection may cost before (and between) its requests."""

    max_header_bytes: int = 16 * 1024
    max_headers: int = 100
    header_timeout_s: float = 10.0
    keep_alive_s: float = 5.0
    max_connections: int = 10_000

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> ConnectionLimits:
        env = os.environ if env is None else env
        return cls(
            max_header_bytes=_number(env, "HOOKLINE_MAX_HEADER_BYTES", cls.max_header_bytes),
            max_headers=_number(env, "HOOKLINE_MAX_HEADERS", cls.max_headers),
            header_timeout_s=_number(env, "HOOKLINE_HEADER_TIMEOUT", cls.header_timeout_s, float),
            keep_alive_s=_number(env, "HOOKLINE_KEEP_ALIVE_TIMEOUT", cls.keep_alive_s, float),
            max_connections=_number(env, "HOOKLINE_MAX_CONNECTIONS", cls.max_connections),
        )


def connection_cap(wanted: int, reserve: int = DESCRIPTOR_RESERVE) -> int:
    """``wanted``, lowered to leave ``reserve`` descriptors free (the soft limit raised first)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 65536)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    return max(16, min(wanted, soft - reserve))


class Connections:
    """The open connections of one listener, and those waiting for a request head.

    ``waiting`` is ordered by when each started waiting, so the oldest is
    first: it is the one evicted past the cap, and one timer, armed for the
    first deadline, closes heads that took too long.
    """

    def __init__(self, limits: ConnectionLimits, cap: int | None = None) -> None:
        self.limits = limits
        self.cap = cap if cap is not None else limits.max_connections
        self.open: set[GuardedProtocol] = set()
        self.waiting: dict[GuardedProtocol, float] = {}
        self._timer: asyncio.TimerHandle | None = None

    def opened(self, protocol: GuardedProtocol) -> bool:
        """Count a new connection; False when it cannot be given room (close it)."""
        self.open.add(protocol)
        while len(self.open) > self.cap:
            oldest = next(iter(self.waiting), None)
            if oldest is None:
                self.open.discard(protocol)
                return False
            self._forget(oldest)
            oldest.evict("too_many_connections")
        return True

    def wait_for_head(self, protocol: GuardedProtocol) -> None:
        if protocol not in self.open:
            return
        self.waiting.pop(protocol, None)
        loop = protocol.loop
        due = loop.time() + self.limits.header_timeout_s
        self.waiting[protocol] = due
        if self._timer is None:
            self._timer = loop.call_at(due, self._expire, loop)

    def head_arrived(self, protocol: GuardedProtocol) -> None:
        self.waiting.pop(protocol, None)

    def closed(self, protocol: GuardedProtocol) -> None:
        self._forget(protocol)

    def _forget(self, protocol: GuardedProtocol) -> None:
        self.open.discard(protocol)
        self.waiting.pop(protocol, None)

    def _expire(self, loop: asyncio.AbstractEventLoop) -> None:
        self._timer = None
        now = loop.time() + 0.001  # a timer may fire a little early (uvloop counts ms)
        overdue = []
        for protocol, due in self.waiting.items():
            if due > now:
                self._timer = loop.call_at(due, self._expire, loop)
                break
            overdue.append(protocol)
        for protocol in overdue:
            self._forget(protocol)
            protocol.head_timed_out()


def _json_error(status: int, reason: bytes, detail: bytes) -> bytes:
    body = b'{"detail":"' + detail + b'"}'
    return b"".join(
        [
            b"HTTP/1.1 %d %s\r\n" % (status, reason),
            b"content-type: application/json\r\n",
            b"content-length: %d\r\n" % len(body),
            b"connection: close\r\n\r\n",
            body,
        ]
    )


INVALID_REQUEST = _json_error(400, b"Bad Request", b"invalid HTTP request")
HEAD_TOO_LARGE = _json_error(431, b"Request Header Fields Too Large", b"request headers too large")
HEAD_TIMEOUT = _json_error(408, b"Request Timeout", b"request headers not received in time")


class _TooManyHeaders(Exception):
    pass


class GuardedProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with the bounds above; see :func:`guarded_protocol`."""

    guard: ClassVar[Connections]
    refusals: ClassVar[ThrottledLog]
    metrics: ClassVar[GatewayMetrics | None]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head_open = True
        self._head_bytes = 0
        self._header_count = 0
        self._too_many_headers = False
        #: Request heads parsed on this connection.
        self._heads_done = 0
        #: Set while an Upgrade request's body is passed on by hand: bytes still due.
        self._upgrade_body_left: int | None = None
        self._upgrade_declared: int | None = None
        #: Set once refused: bytes still dropped before closing.
        self._lingering: int | None = None

    # -- connection ------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if not self.guard.opened(self):
            self._count("too_many_connections")
            transport.abort()
            return
        self.guard.wait_for_head(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.guard.closed(self)
        super().connection_lost(exc)

    def evict(self, reason: str) -> None:
        """Closed to make room for a new connection (it was idle the longest)."""
        self._count(reason)
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    def head_timed_out(self) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        if self._head_bytes:
            self._count("header_timeout")
            self.refusals.warning("closed a connection: request headers not received in time")
            self.transport.write(HEAD_TIMEOUT)
        else:
            self._count("idle")
        self.transport.close()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self.guard.wait_for_head(self)

    # -- input -----------------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self._lingering is not None:
            self._lingering -= len(data)
            if self._lingering <= 0:
                # Closing with their bytes unread would reset the connection and
                # could lose our answer: stop reading until the linger ends.
                self.transport.pause_reading()
            return
        if self._upgrade_body_left is not None:
            self._pass_upgrade_body(data)
            return
        if not self._head_open:
            self._feed(data)
            return
        room = self.guard.limits.max_header_bytes - self._head_bytes
        if len(data) <= room:
            self._head_bytes += len(data)
            self._feed(data)
            return
        self._head_bytes += room
        heads = self._heads_done
        self._feed(data[:room])
        if self.transport.is_closing():
            return
        if self._heads_done == heads:  # the head that began before is still not complete
            self._refuse(HEAD_TOO_LARGE, "headers_too_large", "request headers too large")
            return
        # The head completed within the limit (and a next one may have begun,
        # its first bytes uncounted: at most one read's worth).
        self.data_received(data[room:])

    def _feed(self, data: bytes) -> None:
        self._unset_keepalive_if_required()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as upgrade:
            self._upgrade_body_left = self._upgrade_declared or 0
            self._pass_upgrade_body(data[upgrade.args[0] :])
        except httptools.HttpParserError:
            if self._too_many_headers:
                self._refuse(HEAD_TOO_LARGE, "headers_too_large", "too many request headers")
            else:
                self._refuse(INVALID_REQUEST, "bad_request", "invalid HTTP request")

    def _refuse(self, answer: bytes, reason: str, detail: str) -> None:
        self._count(reason)
        self.refusals.warning("closed a connection: %s", detail)
        self.guard.closed(self)
        self.transport.write(answer)
        if not self.transport.can_write_eof():
            self.transport.close()
            return
        # Answer, end our side, drop a little more of theirs, then close.
        self.transport.write_eof()
        self._lingering = LINGER_BYTES
        self.loop.call_later(LINGER_S, self.transport.close)

    def send_400_response(self, msg: str) -> None:
        self._refuse(INVALID_REQUEST, "bad_request", "invalid HTTP request")

    def _count(self, reason: str) -> None:
        if self.metrics is not None:
            self.metrics.connections_closed.labels(reason).inc()

    # -- parser callbacks ------------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._header_count = 0
        super().on_message_begin()

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_count += 1
        if self._header_count > self.guard.limits.max_headers:
            self._too_many_headers = True
            raise _TooManyHeaders
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._heads_done += 1
        self._head_open = False
        self.guard.head_arrived(self)
        super().on_headers_complete()
        if self.parser.should_upgrade():
            # The parser ends the message at its head and hands the rest over
            # as another protocol's bytes: the body is passed on by hand
            # (by Content-Length), and the connection closed after the answer.
            self._upgrade_declared = self._declared_length()
            self.cycle.keep_alive = False

    def on_message_complete(self) -> None:
        if self._upgrade_declared is not None:
            return  # the body has not been read yet: _pass_upgrade_body completes it
        super().on_message_complete()
        self._head_open = True
        self._head_bytes = 0

    def _declared_length(self) -> int:
        for name, value in self.headers:
            if name == b"content-length" and value.isdigit():
                return int(value)
        return 0

    def _pass_upgrade_body(self, data: bytes) -> None:
        left = self._upgrade_body_left or 0
        piece = data[:left]
        left -= len(piece)
        self._upgrade_body_left = left
        cycle = self.cycle
        if cycle is None or cycle.response_complete:
            return
        if piece:
            cycle.body += piece
            cycle.message_event.set()
        if left == 0 and cycle.more_body:
            cycle.more_body = False
            cycle.message_event.set()

    def _should_upgrade(self) -> bool:
        return False  # no WebSocket, no h2c: every request is plain HTTP/1.1

    def _unsupported_upgrade_warning(self) -> None:
        pass  # an Upgrade header is not an error: the request is served without it


def guarded_protocol(
    limits: ConnectionLimits,
    metrics: GatewayMetrics | None = None,
    refusals: ThrottledLog | None = None,
    cap: int | None = None,
) -> type[GuardedProtocol]:
    """A protocol class for one listener: its own connection registry and cap."""
    return type(
        "GatewayProtocol",
        (GuardedProtocol,),
        {
            "guard": Connections(limits, cap),
            "refusals": refusals or ThrottledLog(log),
            "metrics": metrics,
        },
    )
