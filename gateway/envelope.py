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

KEPT_HEADERS = (
    "content-type",
    "user-agent",
    "webhook-id",
    "webhook-timestamp",
    "x-request-id",
    "traceparent",
)
MAX_HEADER_CHARS = 512


def new_delivery_id(now_ms: int | None = None) -> str:
    """A UUIDv7 (RFC 9562): time-ordered, so raw records sort by arrival."""
    ms = int(time.time() * 1000) if now_ms is None else now_ms
    rand = int.from_bytes(os.urandom(10), "big")
    value = (ms & (2**48 - 1)) << 80 | 0x7 << 76 | (rand >> 62 & 0xFFF) << 64
    value |= 0b10 << 62 | rand & (2**62 - 1)
    text = f"{value:032x}"
    return f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}"


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
        "headers": {
            name: headers[name][:MAX_HEADER_CHARS] for name in KEPT_HEADERS if name in headers
        },
        "client_ip": client_ip,
        "verification": source.verify,
    }
