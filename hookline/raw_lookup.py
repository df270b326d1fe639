"""The raw records a set of dead letters name, read back by their position.

A dead letter keeps a redacted body (docs/security.md, "Personal data") and
the position of its delivery's raw record (``RAW_POSITION_HEADER``); ``hookline
redrive`` re-sends that record, byte for byte as the gateway wrote it. The raw
topic is the system of record (retention unlimited by default): a record gone
from it can no longer be redriven, and the caller says so.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

from hookline.schemas import codec
from hookline.streams.normalize import RAW_POSITION_HEADER

#: How long one record may take to arrive after its seek.
FETCH_TIMEOUT_S = 10.0


def raw_position(letter: Mapping[str, Any]) -> tuple[int, int] | None:
    """(partition, offset) of the letter's raw record, None when it names none."""
    text = letter["envelope"]["headers"].get(RAW_POSITION_HEADER)
    if not text:
        return None
    partition, _, offset = text.partition("@")
    if not (partition.isascii() and partition.isdigit() and offset.isascii() and offset.isdigit()):
        return None
    return int(partition), int(offset)


async def raw_envelopes(
    bootstrap: str, raw_topic: str, wanted: Mapping[str, tuple[int, int]]
) -> dict[str, dict[str, Any]]:
    """{delivery id: its raw envelope} for each (partition, offset) still in ``raw_topic``
    that holds that delivery; a delivery missing from the answer is gone."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    found: dict[str, dict[str, Any]] = {}
    if not wanted:
        return found
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=None,
        enable_auto_commit=False,
        isolation_level="read_committed",
        client_id="hookline-operator",
    )
    await consumer.start()
    try:
        tps = {TopicPartition(raw_topic, partition) for partition, _ in wanted.values()}
        consumer.assign(sorted(tps))
        for delivery_id, (partition, offset) in sorted(wanted.items(), key=lambda i: i[1]):
            tp = TopicPartition(raw_topic, partition)
            consumer.seek(tp, offset)
            try:
                message = await asyncio.wait_for(consumer.getone(tp), FETCH_TIMEOUT_S)
            except TimeoutError:
                continue
            if message.offset != offset or message.key != delivery_id.encode():
                continue  # deleted by retention: the log starts later
            try:
                found[delivery_id] = codec.decode_as(codec.WEBHOOK_ENVELOPE, message.value)
            except codec.CodecError:
                continue
    finally:
        await consumer.stop()
    return found
