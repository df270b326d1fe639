"""Outputs first, state second: the rule that makes crash recovery exact.

A stateful stage handles its input in batches. For each batch it computes
every output record and every table write, sends the outputs, waits until
Kafka acknowledged all of them, and only then writes the table. So:

- a table entry (and its changelog record) proves its outputs exist: an input
  replayed after a crash that finds its effect in the table re-emits nothing,
  because there is nothing missing;
- an input whose table write was lost is simply processed again: the stage is
  deterministic, so it re-emits byte-identical records.

Faust commits offsets only after flushing the producer, so neither the
outputs nor the state of a committed input can be lost.

Outputs go straight to the producer (``app.producer.send``), not through
Faust's per-record topic machinery: a batch is one burst of sends and one
wait for all acknowledgements. A batch that fails must never be committed,
and Faust acks a ``take_events`` batch when its generator is closed, even
after an exception; so a failure ends the process at once (see
:func:`streams.pipeline.fatal`), before anything can be acked.

Faust stores a table key, and writes its changelog, in the partition of the
*current event*. A batch spans several partitions, so each write is made in
the context of the input event that caused it: every input touching a table
key arrives on that key's partition (tables transactions and orders are keyed
like their input topic; a dedup entry lives in the partition of its
delivery's ordering key, which all retries of the delivery share).
"""

from __future__ import annotations

import asyncio
import os
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from aiokafka.errors import KafkaError
from faust.streams import _current_event
from faust.types import EventT, ProducerT, TableT, TopicT

Output = tuple[str, bytes, bytes]

#: Test-only fault injection: ``HOOKLINE_FAIL_SENDS=<stage>`` makes that stage's
#: first batch with outputs fail its sends, as a broker refusing them would.
_FAIL_SENDS = set(filter(None, os.environ.get("HOOKLINE_FAIL_SENDS", "").split(",")))

#: Marks a key to delete in :class:`Batch` writes.
DELETE = object()


@contextmanager
def in_partition_of(event: EventT) -> Iterator[None]:
    """Make ``event`` Faust's current event, so table I/O targets its partition."""
    token = _current_event.set(weakref.ref(event))
    try:
        yield
    finally:
        _current_event.reset(token)


async def send_acknowledged(producer: ProducerT, sends: list[Output], stage: str = "") -> None:
    """Send all, then wait until Kafka acknowledged every one.

    Raises if any send failed: the batch is then not acknowledged, the worker
    crashes and the inputs are processed again.
    """
    if not sends:
        return
    if stage in _FAIL_SENDS:
        _FAIL_SENDS.discard(stage)
        raise KafkaError(f"injected send failure in stage {stage} (HOOKLINE_FAIL_SENDS)")
    send = producer.send
    pending = [await send(topic, key, value, None, None, None) for topic, key, value in sends]
    await asyncio.gather(*pending)


class Batch:
    """Reads through, buffers outputs and writes, then applies them in order.

    Table values are stored encoded (``encode``/``decode``); within a batch
    they stay decoded, so a key touched many times is decoded once.
    """

    def __init__(
        self,
        table: TableT,
        encode: Callable[[Any], bytes],
        decode: Callable[[bytes], Any],
        on_put: Callable[[EventT, bytes, Any], None] | None = None,
        stage: str = "",
    ) -> None:
        self.table = table
        self.stage = stage
        self._encode = encode
        self._decode = decode
        self._on_put = on_put
        self._sends: list[Output] = []
        self._writes: dict[bytes, tuple[EventT, Any]] = {}

    def get(self, event: EventT, key: bytes) -> Any:
        """The value as this batch left it so far, else the table's (decoded)."""
        pending = self._writes.get(key)
        if pending is not None:
            value = pending[1]
            return None if value is DELETE else value
        with in_partition_of(event):
            stored = self.table.get(key)
        return None if stored is None else self._decode(stored)

    def put(self, event: EventT, key: bytes, value: Any) -> None:
        self._writes[key] = (event, value)
        if self._on_put is not None:
            self._on_put(event, key, value)

    def delete(self, event: EventT, key: bytes) -> None:
        self._writes[key] = (event, DELETE)

    def send(self, topic: TopicT, key: bytes, value: bytes) -> None:
        self._sends.append((_name(topic), key, value))

    @property
    def sends(self) -> int:
        return len(self._sends)

    async def flush(self) -> None:
        """Send every output, wait for all acknowledgements, then write the table."""
        await send_acknowledged(self.table.app.producer, self._sends, self.stage)
        for key, (event, value) in self._writes.items():
            with in_partition_of(event):
                if value is DELETE:
                    self.table.pop(key, None)
                else:
                    self.table[key] = self._encode(value)
        self._sends.clear()
        self._writes.clear()


def _name(topic: TopicT, _names: dict[int, str] = {}) -> str:  # noqa: B006 (a cache)
    name = _names.get(id(topic))
    if name is None:
        name = _names[id(topic)] = topic.get_topic_name()
    return name
