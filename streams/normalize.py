"""Where a raw webhook becomes canonical events (stage 1, stateless).

Input: one ``<env>.webhooks.raw`` record. Output: either a ``Delivery`` (the
canonical events plus the deduplication key, re-keyed by the ordering key so
every copy of a delivery meets in one partition of the dedup stage) or a
``DeadLetter`` saying at which stage and why it could not be mapped. Nothing
is dropped silently.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from hookline.json_object import DEFAULT_MAX_DEPTH, NotAJsonObject, loads_object
from hookline.sources import DEFAULT_DEDUP_WINDOW_MS, Source
from schemas import codec
from streams.adapters import Unmappable, adapter_for
from streams.events import DeliveryContext

MAX_REASON = 1000


@dataclass(frozen=True)
class Normalized:
    key: bytes
    value: bytes
    dead_letter: bool
    detail: dict[str, Any]  # the record before encoding (for metrics and logs)


def _dead_letter(envelope: dict[str, Any], stage: str, reason: str, key: bytes) -> Normalized:
    record = {
        "delivery_id": envelope["delivery_id"],
        "envelope": envelope,
        "stage": stage,
        "reason": reason[:MAX_REASON],
        "dead_lettered_at": int(time.time() * 1000),
    }
    return Normalized(key, codec.encode(codec.DEAD_LETTER, record), True, record)


def normalize(
    raw_key: bytes | None,
    raw_value: bytes | None,
    environment: str,
    sources: Mapping[str, Source],
    max_json_depth: int = DEFAULT_MAX_DEPTH,
) -> Normalized:
    key = raw_key or b""
    try:
        if raw_value is None:
            raise codec.CodecError("empty record")
        envelope = codec.decode_as(codec.WEBHOOK_ENVELOPE, raw_value)
    except codec.CodecError as exc:
        # Not a gateway record: keep the bytes so someone can look at them.
        placeholder = {
            "delivery_id": key.decode("utf-8", "replace")[:256] or "unknown",
            "source": "unknown",
            "kind": "unknown",
            "environment": environment,
            "received_at": 0,
            "body": raw_value or b"",
            "headers": {},
            "client_ip": None,
            "verification": "unknown",
        }
        return _dead_letter(placeholder, "decode", str(exc), key)

    if envelope["environment"] != environment:
        reason = f"envelope for {envelope['environment']!r} on the {environment!r} topic"
        return _dead_letter(envelope, "decode", reason, key)
    try:
        adapter = adapter_for(envelope["kind"])
        try:
            document = loads_object(envelope["body"], max_json_depth)
        except NotAJsonObject as exc:
            raise Unmappable(str(exc)) from None
        ctx = DeliveryContext(
            delivery_id=envelope["delivery_id"],
            source=envelope["source"],
            kind=envelope["kind"],
            environment=environment,
            received_at=envelope["received_at"],
        )
        dedup_key = f"{envelope['source']}|{adapter.dedup_key(document, envelope['body'])}"
        order_key = adapter.ordering_key(document)[:256]
        events = adapter.to_events(document, ctx)
    except Unmappable as exc:
        return _dead_letter(envelope, "normalize", str(exc) or type(exc).__name__, key)

    source = sources.get(envelope["source"])
    delivery = {
        "delivery_id": envelope["delivery_id"],
        "source": envelope["source"],
        "received_at": envelope["received_at"],
        "ordering_key": order_key,
        "dedup_key": dedup_key,
        "dedup_window_ms": source.dedup_window_ms if source else DEFAULT_DEDUP_WINDOW_MS,
        "events": events,
    }
    # Keyed by the ordering key: a delivery's retries share it (same body,
    # same claims, same id), so they meet in one partition of the dedup stage,
    # and deliveries about one entity stay in arrival order.
    return Normalized(order_key.encode(), codec.encode(codec.DELIVERY, delivery), False, delivery)
