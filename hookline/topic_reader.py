"""Read one hookline topic from its beginning to its end, then keep reading.

Used by ``hookline redrive`` (the dead-letter topic) and ``hookline replay``
(the raw topic, then the dead-letter topic). Tansu, the embedded broker, has
no offsets-for-times, so a time range is always found by scanning from the
beginning, as ``hookline tail`` does; one code path is easier to trust than
two. The reader stays open after the scan so a command can go on reading
what the worker writes *after* it (a dead letter produced by a redrive):
everything read after :meth:`TopicReader.scan` returned is new.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from types import TracebackType
from typing import Any

from hookline.core.topics import partitions_of
from hookline.progress import Progress

FETCH_MS = 500
MAX_RECORDS = 1000


class ReadError(Exception):
    """Kafka unreachable or a topic missing: one line for the operator, never a traceback."""


class TopicReader:
    """An unassigned-group consumer over every partition of ``topic``."""

    def __init__(
        self,
        bootstrap: str,
        topic: str,
        also_required: Iterable[str] = (),
        client_id: str = "hookline-operator",
        connect_timeout_s: float = 15.0,
        isolation_level: str = "read_committed",
    ) -> None:
        """``isolation_level="read_committed"``: only what committed transactions wrote
        (with Kafka transactions, PRODUCT.md section 5; the same as uncommitted on Tansu)."""
        self.isolation_level = isolation_level
        self.bootstrap = bootstrap
        self.topic = topic
        self.also_required = tuple(also_required)
        self.client_id = client_id
        self.connect_timeout_s = connect_timeout_s
        self._consumer: Any = None
        self._tps: list[Any] = []
        self._partitions: dict[str, list[int]] = {}

    async def __aenter__(self) -> TopicReader:
        from aiokafka import AIOKafkaConsumer, TopicPartition
        from aiokafka.errors import KafkaError

        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap,
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            request_timeout_ms=int(self.connect_timeout_s * 1000),
            client_id=self.client_id,
            isolation_level=self.isolation_level,
        )
        try:
            await asyncio.wait_for(consumer.start(), self.connect_timeout_s)
            existing = await consumer.topics()
        except (KafkaError, OSError, TimeoutError) as exc:
            await consumer.stop()
            raise ReadError(
                f"cannot reach Kafka at {self.bootstrap}: {exc or type(exc).__name__}"
            ) from None
        missing = [t for t in (self.topic, *self.also_required) if t not in existing]
        if missing:
            await consumer.stop()
            known = sorted(t for t in existing if not t.startswith("__"))
            raise ReadError(
                f"no topic {missing[0]!r} on {self.bootstrap} (has a worker or gateway run "
                f"there?); topics there: {', '.join(known) or 'none'}"
            )
        self._consumer = consumer
        # Now, while the metadata is the whole cluster's: after assign() the
        # client keeps only the assigned topic's.
        try:
            self._partitions = await partitions_of(
                consumer, self.bootstrap, (self.topic, *self.also_required), self.connect_timeout_s
            )
        except (KafkaError, OSError, TimeoutError) as exc:
            await self.__aexit__(None, None, None)
            raise ReadError(f"cannot describe {self.topic}: {exc}") from None
        self._tps = [TopicPartition(self.topic, p) for p in self._partitions[self.topic]]
        consumer.assign(self._tps)
        await consumer.seek_to_beginning(*self._tps)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._consumer is not None:
            await self._consumer.stop()
            self._consumer = None

    async def positions(self) -> dict[int, int]:
        """The next offset this reader would read, per partition: how far it has scanned."""
        return {tp.partition: await self._consumer.position(tp) for tp in self._tps}

    def partitions_of(self, topic: str) -> list[int]:
        """The partition ids of this reader's topic or of one it required (e.g. raw)."""
        return self._partitions[topic]

    async def read(self, on_message: Callable[[Any], None], timeout_ms: int = FETCH_MS) -> int:
        """One fetch; each message to ``on_message``; return how many came."""
        batch = await self._consumer.getmany(timeout_ms=timeout_ms, max_records=MAX_RECORDS)
        count = 0
        for tp in sorted(batch):
            for message in batch[tp]:
                on_message(message)
                count += 1
        return count

    async def scan(
        self, on_message: Callable[[Any], None], progress: Progress | None = None
    ) -> int:
        """Read to the end of the topic as it is now; return the number of records read."""
        from aiokafka.errors import KafkaError

        try:
            ends = await self._consumer.end_offsets(self._tps)
            scanned = 0
            while True:
                got = await self.read(on_message)
                scanned += got
                positions = {tp: await self._consumer.position(tp) for tp in self._tps}
                # Tansu reports end offsets too low after multi-record batches
                # (README), so the end counts only once a fetch also comes back empty.
                if not got and all(positions[tp] >= ends[tp] for tp in self._tps):
                    return scanned
                if progress is not None and progress.due():
                    behind = sum(max(ends[tp] - positions[tp], 0) for tp in self._tps)
                    progress.say(f"{scanned} records of {self.topic} scanned, about {behind} to go")
        except (KafkaError, OSError) as exc:
            raise ReadError(
                f"lost Kafka at {self.bootstrap} while reading {self.topic}: "
                f"{exc or type(exc).__name__}"
            ) from None
