"""Publish raw envelopes again, partitioned exactly as the gateway partitions them.

The worker's dedup table lives in raw's partitions, keyed by content, and a
delivery's own dedup entry is what makes a redrive idempotent and a replay
re-emit with the same event ids. So a re-published envelope must land where
the gateway put (or would have put) the original: key = delivery id,
partition = Kafka's default (murmur2) partitioner over the adapter's ordering
key. This module repeats the gateway's rule instead of importing it
(gateway/ is not a library); ``hookline.core.adapters.ordering_key`` is the one
definition both use.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from hookline.core.adapters import ADAPTERS, Unmappable, ordering_key
from hookline.core.json_object import NotAJsonObject, loads_object
from hookline.progress import Progress
from hookline.schemas import codec

#: Sends in flight before waiting for their acknowledgements.
BATCH = 500


class NotRepublishable(ValueError):
    """This envelope cannot go back to raw (the message says why); it is skipped."""


class PublishError(Exception):
    """Kafka refused or is unreachable: one line for the operator."""


@dataclass(frozen=True)
class Outgoing:
    delivery_id: str
    source: str
    kind: str
    received_at: int
    partition: int
    key: bytes
    value: bytes


def plan(
    envelope: dict[str, Any],
    partitions: Sequence[int],
    max_json_depth: int,
    extra_headers: dict[str, str] | None = None,
) -> Outgoing:
    """The raw record for ``envelope`` and its partition among ``partitions`` (sorted ids)."""
    from aiokafka.partitioner import DefaultPartitioner

    if envelope["kind"] not in ADAPTERS:
        raise NotRepublishable(f"kind {envelope['kind']!r} has no adapter (not a gateway record)")
    try:
        document = loads_object(envelope["body"], max_json_depth)
    except NotAJsonObject as exc:
        raise NotRepublishable(f"body is not a JSON object the gateway accepts: {exc}") from None
    try:
        order_key = ordering_key(envelope["kind"], document)
    except (Unmappable, KeyError, TypeError) as exc:
        raise NotRepublishable(f"no ordering key: {exc}") from None
    if not partitions:
        raise NotRepublishable("the raw topic has no partitions")
    ids = sorted(partitions)
    partition = DefaultPartitioner()(order_key.encode(), ids, ids)
    record = dict(envelope)
    if extra_headers:
        record["headers"] = {**envelope["headers"], **extra_headers}
    return Outgoing(
        delivery_id=envelope["delivery_id"],
        source=envelope["source"],
        kind=envelope["kind"],
        received_at=envelope["received_at"],
        partition=partition,
        key=envelope["delivery_id"].encode(),
        value=codec.encode(codec.WEBHOOK_ENVELOPE, record),
    )


async def publish(
    bootstrap: str,
    topic: str,
    records: Iterable[Outgoing],
    max_request_bytes: int,
    progress: Progress | None = None,
    connect_timeout_s: float = 15.0,
) -> dict[int, int]:
    """Send every record (acks=all), in the given order; return partition -> highest offset.

    Records of one partition keep their order: aiokafka sends one batch per
    partition at a time. The returned offsets let the caller wait until the
    worker has committed past them.
    """
    from aiokafka import AIOKafkaProducer
    from aiokafka.errors import KafkaError

    records = list(records)
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        acks="all",
        enable_idempotence=False,  # Tansu does not support it; dedup absorbs repeats
        linger_ms=5,
        max_request_size=max_request_bytes,
        request_timeout_ms=int(connect_timeout_s * 1000),
        client_id="hookline-operator",
    )
    try:
        await asyncio.wait_for(producer.start(), connect_timeout_s)
    except (KafkaError, OSError, TimeoutError) as exc:
        await producer.stop()
        raise PublishError(
            f"cannot reach Kafka at {bootstrap}: {exc or type(exc).__name__}"
        ) from None
    highest: dict[int, int] = {}
    sent = 0
    try:
        for start in range(0, len(records), BATCH):
            futures = [
                await producer.send(topic, r.value, key=r.key, partition=r.partition)
                for r in records[start : start + BATCH]
            ]
            for metadata in await asyncio.gather(*futures):
                highest[metadata.partition] = max(
                    highest.get(metadata.partition, -1), metadata.offset
                )
            sent += len(futures)
            if progress is not None:
                progress.maybe(f"{sent} of {len(records)} re-published to {topic}")
        await producer.flush()
    except (KafkaError, OSError, TimeoutError) as exc:
        raise PublishError(
            f"Kafka at {bootstrap} failed after {sent} of {len(records)} records were "
            f"acknowledged ({exc or type(exc).__name__}); running the same command again "
            "is safe"
        ) from None
    finally:
        await producer.stop()
    return highest
