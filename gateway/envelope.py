"""Turn an accepted request into the raw envelope record (schema WebhookEnvelope).

Only allow-listed headers are kept: signatures, tokens, cookies and
authorization never reach a topic, and the query string (which carries the
token for token-verified sources) is not recorded at all.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from typing import Any

from hookline.core.sources import Source
from hookline.schemas import codec
from hookline.schemas.avro_writer import avro_long

KEPT_HEADERS = (
    "content-type",
    "user-agent",
    "webhook-id",
    "webhook-timestamp",
    "x-request-id",
    "traceparent",
)
MAX_HEADER_CHARS = 512

#: WebhookEnvelope's fields in schema order: EnvelopeEncoder writes them in this order.
ENVELOPE_FIELDS = (
    "delivery_id",
    "source",
    "kind",
    "environment",
    "received_at",
    "body",
    "headers",
    "client_ip",
    "verification",
)


def new_delivery_id(now_ms: int | None = None) -> str:
    """A UUIDv7 (RFC 9562): time-ordered, so raw records sort by arrival."""
    ms = int(time.time() * 1000) if now_ms is None else now_ms
    raw = bytearray((ms & 0xFFFF_FFFF_FFFF).to_bytes(6, "big") + os.urandom(10))
    raw[6] = 0x70 | raw[6] & 0x0F  # version 7
    raw[8] = 0x80 | raw[8] & 0x3F  # variant 10 (RFC 9562)
    text = raw.hex()
    return f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}"


def kept_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """The allow-listed headers, each cut to MAX_HEADER_CHARS."""
    return {name: headers[name][:MAX_HEADER_CHARS] for name in KEPT_HEADERS if name in headers}


def raw_envelope(
    source: Source,
    body: bytes,
    headers: Mapping[str, str],
    client_ip: str | None,
    received_at_ms: int,
    delivery_id: str,
) -> dict[str, Any]:
    return {
        "delivery_id": delivery_id,
        "source": source.name,
        "kind": source.kind,
        "environment": source.environment,
        "received_at": received_at_ms,
        "body": body,
        "headers": kept_headers(headers),
        "client_ip": client_ip,
        "verification": source.verify,
    }


def _string(text: str) -> bytes:
    data = text.encode()
    return avro_long(len(data)) + data


_HEADER_KEYS = {name: _string(name) for name in KEPT_HEADERS}
_NULL_BRANCH = b"\x00"
_STRING_BRANCH = b"\x02"
_END_OF_MAP = b"\x00"


class EnvelopeEncoder:
    """One source's WebhookEnvelope records, single-object encoded, as ``codec.encode`` writes them.

    Written here rather than by fastavro because four of the nine fields
    (source, kind, environment, verification) and the 10-byte header are the
    same for every delivery of a source: they are encoded once, at start, and
    a delivery only adds its id, time, body, headers and address. That is a
    few byte joins instead of fastavro's generic walk of the schema, which
    was the largest single cost of an accepted request after the HTTP stack.
    The result is checked byte for byte against ``codec.encode`` when the
    encoder is built, so a schema change this encoder does not follow stops
    the gateway at start instead of writing records a worker cannot read.
    """

    def __init__(self, source: Source) -> None:
        schema = codec.REGISTRY.schema(codec.WEBHOOK_ENVELOPE)
        fields = tuple(field["name"] for field in schema.plain["fields"])
        if fields != ENVELOPE_FIELDS:
            raise RuntimeError(f"WebhookEnvelope's fields are now {fields}: update EnvelopeEncoder")
        self.source = source
        self._header = schema.header
        self._constant = _string(source.name) + _string(source.kind) + _string(source.environment)
        self._verification = _string(source.verify)
        self._check()

    def encode(
        self,
        delivery_id: str,
        received_at_ms: int,
        body: bytes,
        headers: Mapping[str, str],
        client_ip: str | None,
    ) -> bytes:
        parts = [
            self._header,
            _string(delivery_id),
            self._constant,
            avro_long(received_at_ms),
            avro_long(len(body)),
            body,
        ]
        kept = [name for name in KEPT_HEADERS if name in headers]
        if kept:
            parts.append(avro_long(len(kept)))
            for name in kept:
                parts.append(_HEADER_KEYS[name])
                parts.append(_string(headers[name][:MAX_HEADER_CHARS]))
        parts.append(_END_OF_MAP)
        if client_ip is None:
            parts.append(_NULL_BRANCH)
        else:
            parts.append(_STRING_BRANCH)
            parts.append(_string(client_ip))
        parts.append(self._verification)
        return b"".join(parts)

    def _check(self) -> None:
        """Fail now if this encoder and ``codec.encode`` disagree on any sample."""
        every_header = {name: f"{name}-é-" + "x" * MAX_HEADER_CHARS for name in KEPT_HEADERS}
        samples: list[tuple[bytes, dict[str, str], str | None, int]] = [
            (b"", {}, None, 0),
            (b'{"a":1}', {"content-type": "application/json", "other": "x"}, "127.0.0.1", 1),
            (b"\x00\xff" * 300, every_header, "2001:db8::1", 1_795_255_200_000),
        ]
        for body, headers, client_ip, received_at in samples:
            delivery_id = new_delivery_id(received_at)
            ours = self.encode(delivery_id, received_at, body, headers, client_ip)
            reference = codec.encode(
                codec.WEBHOOK_ENVELOPE,
                raw_envelope(self.source, body, headers, client_ip, received_at, delivery_id),
            )
            if ours != reference:
                raise RuntimeError("EnvelopeEncoder disagrees with codec.encode(WebhookEnvelope)")
