"""End offsets read from a fetch, not from ListOffsets: what table recovery stops at.

Faust recovers a table by reading its changelog up to the partition's end
offset, taken from ListOffsets (``consumer.end_offsets``). The embedded Tansu
broker answers ListOffsets with the base offset of the newest record batch
plus one, so after a multi-record batch (a worker's changelog writes are
lingered into one) the reported end is short by up to the batch size minus
one. A recovery that stops there silently drops the newest table writes: a
worker taking over a dead member's partitions resumed from stale state and,
for the orders table, emitted a version twice with different contents.

A fetch response carries the partition's high watermark, which Tansu reports
correctly. So the reported end is checked with one short fetch per partition
(starting just before it) and the larger of the two wins. On Kafka both
agree and the fetch costs one round trip per recovery.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Any, TypeVar

from aiokafka import AIOKafkaConsumer

log = logging.getLogger("hookline.worker")

TP = TypeVar("TP")

#: Time allowed for every partition to answer one fetch.
PROBE_TIMEOUT_S = 10.0


async def fetched_end_offsets(
    client_settings: Mapping[str, Any], reported: Mapping[TP, int]
) -> dict[TP, int]:
    """``reported`` raised to each partition's high watermark as a fetch reports it."""
    result = dict(reported)
    if not reported:
        return result
    probe = AIOKafkaConsumer(
        **client_settings,
        group_id=None,
        enable_auto_commit=False,
        fetch_max_wait_ms=10,
        max_partition_fetch_bytes=1024,  # the records are not wanted, only the watermark
    )
    await probe.start()
    try:
        partitions = list(reported)
        probe.assign(partitions)  # type: ignore[arg-type]
        for tp, end in reported.items():
            probe.seek(tp, max(end - 1, 0))  # type: ignore[arg-type]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + PROBE_TIMEOUT_S
        waiting = set(partitions)
        while waiting and loop.time() < deadline:
            await probe.getmany(timeout_ms=50, max_records=1)
            for tp in list(waiting):
                highwater = probe.highwater(tp)  # type: ignore[arg-type]
                if highwater is not None:
                    result[tp] = max(result[tp], highwater)
                    waiting.discard(tp)
            # Records returned move the position; go back so the next fetch
            # is for the same offset and answers again if the first was lost.
            for tp in waiting:
                probe.seek(tp, max(reported[tp] - 1, 0))  # type: ignore[arg-type]
        if waiting:
            log.warning(
                "no fetch answer within %ss for %d partitions; using their listed end offsets",
                PROBE_TIMEOUT_S,
                len(waiting),
            )
    finally:
        await probe.stop()
    raised = {tp: (reported[tp], end) for tp, end in result.items() if end != reported[tp]}
    if raised:
        log.info("end offsets corrected by fetch for %d partitions", len(raised))
    return result
