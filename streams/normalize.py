"""Where a raw webhook becomes canonical events (pure: no Kafka, no tables).

Input: one ``<env>.webhooks.raw`` record. Output: either a :class:`Delivery`
(the canonical events, already encoded, plus what deduplication needs: the
key, the content digest and the window) or a :class:`DeadLetter` saying at
which stage and why it could not be mapped. Nothing is dropped silently, and
nothing a record holds raises out of here: whatever the adapters, the content
key or the encoder refuse is that record's dead letter (docs/design.md, "No
delivery stops the pipeline"). The one exception is a raw record of a schema
this release does not know (:class:`codec.UnknownSchema`): it is not bad data
but a newer release's record, and the stage waits for a worker that can read
it instead of dead-lettering it.

Two steps, so that a provider's retry costs only the first: :func:`identify`
(the envelope decoded, the body parsed, the dedup key and content digest)
and, for a delivery deduplication found new, :func:`map_events` (the
canonical events built and encoded). :func:`normalize` runs both.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

from hookline.core.adapters import Unmappable, adapter_for
from hookline.core.events import CanonicalEvent, DeliveryContext
from hookline.core.json_object import DEFAULT_MAX_DEPTH, NotAJsonObject, loads_object
from hookline.core.sources import DEFAULT_DEDUP_WINDOW_MS, Source
from hookline.schemas import codec

MAX_REASON = 1000
#: Marks a dead letter whose envelope carries an internal record (a stage after
#: intake could not apply it), not a delivery: redrive cannot re-send it.
INTERNAL_RECORD_HEADER = "x-hookline-internal-record"
#: Where the delivery's raw record is, "PARTITION@OFFSET" of ``<env>.webhooks.raw``:
#: ``hookline redrive`` re-sends that record, so a letter need not keep a
#: replayable body (docs/security.md, "Personal data").
RAW_POSITION_HEADER = "x-hookline-raw-position"


class Delivery(NamedTuple):
    """A delivery mapped. A NamedTuple: immutable, and built in half the time
    of a frozen dataclass (one per delivery)."""

    envelope: dict[str, Any]
    dedup_key: str  # "<source>|<the kind's key>"
    content_digest: str
    window_ms: int
    events: list[CanonicalEvent]
    #: Each event's Avro encoding, by event id: encoded here so that a value
    #: the schema refuses dead-letters the delivery before any of it is routed.
    encoded: dict[str, bytes]


@dataclass(frozen=True)
class DeadLetter:
    key: bytes
    value: bytes
    record: dict[str, Any]  # before encoding (for metrics and logs)


def dead_letter(
    envelope: dict[str, Any],
    stage: str,
    reason: str,
    key: bytes,
    raw_position: tuple[int, int] | None = None,
) -> DeadLetter:
    """The letter of a delivery (or of an internal record) a stage could not handle.

    ``raw_position`` (partition, offset) of the delivery's raw record: the letter
    then names it and keeps the body as the kind's adapter redacts it (a
    payments token loses its signature and the payer's IBAN), since redrive
    re-sends the raw record itself.
    """
    if raw_position is not None:
        envelope = _kept_in_letter(envelope, raw_position)
    record = {
        "delivery_id": envelope["delivery_id"],
        "envelope": envelope,
        "stage": stage,
        # The reason may quote the record: keep it writable (lone surrogates escaped).
        "reason": reason[:MAX_REASON].encode("utf-8", "backslashreplace").decode("utf-8"),
        "dead_lettered_at": int(time.time() * 1000),
    }
    return DeadLetter(key, codec.encode(codec.DEAD_LETTER, record), record)


def _kept_in_letter(envelope: dict[str, Any], raw_position: tuple[int, int]) -> dict[str, Any]:
    partition, offset = raw_position
    headers = {**envelope["headers"], RAW_POSITION_HEADER: f"{partition}@{offset}"}
    kept = {**envelope, "headers": headers}
    try:
        redact = adapter_for(envelope["kind"]).__dict__.get("redacted_body")
    except Unmappable:
        redact = None
    if redact is not None:
        kept["body"] = redact(envelope["body"])
    return kept


class Identified(NamedTuple):
    """A delivery read and identified, not yet mapped: what deduplication needs.

    A provider's retry is dropped at its dedup entry, so its events are never
    built or encoded: :func:`map_events` runs only for a delivery that is new.
    """

    envelope: dict[str, Any]
    dedup_key: str  # "<source>|<the kind's key>"
    content_digest: str
    window_ms: int
    document: dict[str, Any]
    key: bytes
    raw_position: tuple[int, int] | None


def normalize(
    raw_key: bytes | None,
    raw_value: bytes | None,
    environment: str,
    sources: Mapping[str, Source],
    max_json_depth: int = DEFAULT_MAX_DEPTH,
    raw_position: tuple[int, int] | None = None,
) -> Delivery | DeadLetter:
    """:func:`identify`, then :func:`map_events`: a raw record's events, or its dead letter.

    ``raw_position``: the record's (partition, offset), named in its dead letter.
    """
    identified = identify(raw_key, raw_value, environment, sources, max_json_depth, raw_position)
    if isinstance(identified, DeadLetter):
        return identified
    return map_events(identified)


def identify(
    raw_key: bytes | None,
    raw_value: bytes | None,
    environment: str,
    sources: Mapping[str, Source],
    max_json_depth: int = DEFAULT_MAX_DEPTH,
    raw_position: tuple[int, int] | None = None,
) -> Identified | DeadLetter:
    """Decode the envelope, parse the body and compute its dedup identity."""
    key = raw_key or b""
    try:
        if raw_value is None:
            raise codec.CodecError("empty record")
        envelope = codec.decode_as(codec.WEBHOOK_ENVELOPE, raw_value)
    except codec.UnknownSchema:
        raise
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
        return dead_letter(placeholder, "decode", str(exc), key)

    if envelope["environment"] != environment:
        reason = f"envelope for {envelope['environment']!r} on the {environment!r} topic"
        return dead_letter(envelope, "decode", reason, key, raw_position)
    source = sources.get(envelope["source"])
    try:
        adapter = adapter_for(envelope["kind"])
        try:
            document = loads_object(envelope["body"], max_json_depth)
        except NotAJsonObject as exc:
            raise Unmappable(str(exc)) from None
        kind_key, digest = adapter.dedup_identity(document, source.dedup_ignore if source else ())
    except Unmappable as exc:
        reason = str(exc) or type(exc).__name__
        return dead_letter(envelope, "normalize", reason, key, raw_position)
    except Exception as exc:  # a record never stops the stage
        return dead_letter(envelope, "normalize", unexpected(exc), key, raw_position)
    return Identified(
        envelope=envelope,
        dedup_key=f"{envelope['source']}|{kind_key}",
        content_digest=digest,
        window_ms=source.dedup_window_ms if source else DEFAULT_DEDUP_WINDOW_MS,
        document=document,
        key=key,
        raw_position=raw_position,
    )


def map_events(identified: Identified) -> Delivery | DeadLetter:
    """The identified delivery's canonical events, each encoded, or its dead letter."""
    envelope, key, raw_position = identified.envelope, identified.key, identified.raw_position
    try:
        ctx = DeliveryContext(
            delivery_id=envelope["delivery_id"],
            source=envelope["source"],
            kind=envelope["kind"],
            environment=envelope["environment"],
            received_at=envelope["received_at"],
        )
        events = adapter_for(envelope["kind"]).to_events(identified.document, ctx)
        encoded = {
            event["event_id"]: codec.encode(codec.CANONICAL_EVENT, event) for event in events
        }
    except Unmappable as exc:
        reason = str(exc) or type(exc).__name__
        return dead_letter(envelope, "normalize", reason, key, raw_position)
    except codec.CodecError as exc:
        reason = f"a canonical event cannot be encoded: {exc}"
        return dead_letter(envelope, "normalize", reason, key, raw_position)
    except Exception as exc:  # a record never stops the stage
        return dead_letter(envelope, "normalize", unexpected(exc), key, raw_position)

    return Delivery(
        envelope=envelope,
        dedup_key=identified.dedup_key,
        content_digest=identified.content_digest,
        window_ms=identified.window_ms,
        events=events,
        encoded=encoded,
    )


def unexpected(exc: BaseException) -> str:
    """A dead letter's reason for an exception no rule anticipated (a bug the
    record exposed): its type and message, so the letter can be redriven once
    the fix is out. Counted and logged at ERROR by the stage."""
    return f"unexpected {type(exc).__name__}: {exc}"
