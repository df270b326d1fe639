"""Publishing raw records: success means the broker acknowledged (acks=all).

The gateway must answer a provider before its deadline (10 s for payments),
so every publish is bounded by the publish timeout; past it, or while Kafka is
unreachable, :class:`Unavailable` becomes a 503 and the provider retries.
A record that timed out may still be written later: that is a duplicate the
workers' deduplication absorbs, never a loss.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterable

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError, UnknownError, UnsupportedVersionError
from hookline.core.partitioner import partition_for
from hookline.core.topics import TopicSpec, ensure_topics
from hookline.gateway.time_limit import TimeLimit

log = logging.getLogger(__name__)

RECONNECT_DELAY_S = 1.0
READY_CACHE_S = 1.0
#: Sends per publish (all within the publish timeout).
PUBLISH_ATTEMPTS = 2


class Unavailable(Exception):
    """Kafka did not acknowledge in time (answered 503 with Retry-After)."""


class Publisher:
    def __init__(
        self,
        bootstrap_servers: str,
        timeout_s: float,
        max_record_bytes: int,
        topics: Iterable[TopicSpec] = (),
        partitions: int = 1,
        replication_factor: int = 1,
    ) -> None:
        self._bootstrap = bootstrap_servers
        self.timeout_s = timeout_s
        self._max_record_bytes = max_record_bytes
        self._topics = list(topics)
        self._partitions = partitions
        self._replication_factor = replication_factor
        self._producer: AIOKafkaProducer | None = None
        self._connector: asyncio.Task[None] | None = None
        self._ready_at = 0.0
        self._topics_checked = False
        self._topics_lock = asyncio.Lock()
        self._time_limit = TimeLimit(timeout_s)
        #: Each topic's partition ids, sorted: what aiokafka's metadata says,
        #: kept until the metadata changes (emptied by a cluster listener).
        self._partition_ids: dict[str, list[int]] = {}

    async def start(self) -> None:
        """Connect in the background: the gateway serves (503) while Kafka is away."""
        self._connector = asyncio.create_task(self._connect(), name="kafka-connect")

    async def _connect(self) -> None:
        attempt = 0
        idempotent = True
        while True:
            attempt += 1
            producer = AIOKafkaProducer(
                bootstrap_servers=self._bootstrap,
                acks="all",
                # A send retried after a lost acknowledgement is written once
                # (Kafka); the embedded broker has no idempotent producer, and
                # the worker's deduplication absorbs such a repeat there.
                enable_idempotence=idempotent,
                linger_ms=0,
                # One produce request per broker is in flight at a time, and it
                # carries one batch per partition: with the default 16 KiB,
                # deliveries to a busy partition waited for several round trips
                # (8 vignette-sales records of 2 KiB per request). A batch may
                # now take everything that arrived meanwhile, up to what the
                # raw topic accepts (its max.message.bytes is max_record_bytes).
                max_batch_size=self._max_record_bytes,
                request_timeout_ms=int(max(self.timeout_s, 1.0) * 1000),
                retry_backoff_ms=100,
                max_request_size=self._max_record_bytes,
                client_id="hookline-gateway",
            )
            try:
                await self._ensure_topics(timeout_s=10.0)
                await producer.start()
            except (TimeoutError, KafkaError, OSError) as exc:
                if idempotent and isinstance(exc, (UnknownError, UnsupportedVersionError)):
                    # The cluster answered and refused a producer id: no idempotence.
                    with contextlib.suppress(Exception):
                        await producer.stop()
                    log.info("the broker has no idempotent producer (%r): sending without", exc)
                    idempotent = False
                    continue
                with contextlib.suppress(Exception):
                    await producer.stop()
                if attempt == 1 or attempt % 30 == 0:
                    log.warning(
                        "Kafka at %s not reachable yet (%s); retrying", self._bootstrap, exc
                    )
                await asyncio.sleep(RECONNECT_DELAY_S)
                continue
            producer.client.cluster.add_listener(lambda cluster: self._partition_ids.clear())
            self._producer = producer
            self._topics_checked = True
            log.info(
                "connected to Kafka at %s (%s producer)",
                self._bootstrap,
                "idempotent" if idempotent else "non-idempotent",
            )
            return

    async def _ensure_topics(self, timeout_s: float) -> None:
        await ensure_topics(
            self._bootstrap,
            self._topics,
            self._partitions,
            self._replication_factor,
            timeout_s=timeout_s,
        )

    async def _recheck_topics(self, producer: AIOKafkaProducer) -> None:
        """After a failure, make sure the topics exist before trusting an ack again.

        A cluster that lost its topics (the in-memory dev broker after a
        restart) may otherwise acknowledge writes to topics it no longer has.
        One check at a time; the others wait for it.
        """
        async with self._topics_lock:
            if self._topics_checked:
                return
            await self._ensure_topics(timeout_s=self.timeout_s)
            await producer.client.force_metadata_update()
            self._topics_checked = True

    async def stop(self) -> None:
        if self._connector and not self._connector.done():
            self._connector.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._connector
        if self._producer is not None:
            producer, self._producer = self._producer, None
            # Flushes what is in flight so an acknowledged 200 is never undone.
            await producer.stop()

    async def publish(self, topic: str, key: bytes, value: bytes, ordering_key: bytes) -> None:
        """Send and wait for the acknowledgement, within the publish timeout.

        The partition comes from ``ordering_key`` (the order or transaction the
        webhook is about), not from the record key (the delivery id): webhooks
        about one entity then share a partition and keep their arrival order
        through every worker stage.
        """
        producer = self._producer
        if producer is None:
            raise Unavailable("not connected to Kafka")
        try:
            with self._time_limit.use():
                for attempt in range(PUBLISH_ATTEMPTS):
                    if not self._topics_checked:
                        await self._recheck_topics(producer)
                    partitions = self._partition_ids.get(topic)
                    if partitions is None:
                        partitions = sorted(await producer.partitions_for(topic))
                        self._partition_ids[topic] = partitions
                    partition = partition_for(ordering_key, partitions)
                    try:
                        await producer.send_and_wait(topic, value, key=key, partition=partition)
                        return
                    except KafkaError:
                        # Stale metadata (a topic re-created with other
                        # partitions, a moved leader): look again, then retry.
                        self._topics_checked = False
                        self._partition_ids.clear()
                        if attempt + 1 == PUBLISH_ATTEMPTS:
                            raise
        except TimeoutError:
            self._topics_checked = False
            raise Unavailable(f"no acknowledgement within {self.timeout_s:g}s") from None
        except (KafkaError, OSError) as exc:
            self._topics_checked = False
            raise Unavailable(type(exc).__name__) from None

    async def ready(self) -> bool:
        """Kafka answered a metadata request within the last second."""
        producer = self._producer
        if producer is None:
            return False
        if time.monotonic() - self._ready_at < READY_CACHE_S:
            return True
        try:
            await asyncio.wait_for(producer.client.fetch_all_metadata(), min(self.timeout_s, 2.0))
        except (KafkaError, OSError, TimeoutError):
            self._topics_checked = False
            return False
        self._ready_at = time.monotonic()
        return True
