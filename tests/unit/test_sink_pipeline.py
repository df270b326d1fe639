"""The sink lands one batch while it reads the next: what it reads meanwhile continues
from the landed offset, or goes back behind the batch when the warehouse failed."""

from __future__ import annotations

import asyncio
import dataclasses
import threading
from decimal import Decimal
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from aiokafka.structs import ConsumerRecord, TopicPartition
from hookline.core import topics
from hookline.schemas import codec
from hookline.warehouse import tables
from hookline.warehouse.commit import CommitResult, PartitionBatch
from hookline.warehouse.decoder import DecoderPool
from hookline.warehouse.sink import Sink, SinkConfig, SinkError
from hookline.warehouse.tables import WarehouseError

TP = TopicPartition(topics.orders_state("production"), 0)


class Consumer:
    def __init__(self) -> None:
        self.committed: list[dict[TopicPartition, int]] = []

    def assignment(self) -> set[TopicPartition]:
        return {TP}

    def highwater(self, tp: TopicPartition) -> None:
        return None

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        self.committed.append(offsets)


def records(first: int, count: int) -> list[ConsumerRecord[bytes, bytes]]:
    out = []
    for offset in range(first, first + count):
        value = codec.encode(
            codec.ORDER_STATE,
            {
                "order_id": f"o{offset}",
                "environment": "production",
                "order_status": "ACTIVE",
                "version": 1,
                "updated_at": 1_772_406_000_000,
                "amount": Decimal("1.0000"),
            },
        )
        out.append(ConsumerRecord(TP.topic, 0, offset, 0, 0, b"k", value, None, 1, len(value), ()))
    return out


def sink(tmp_path: Path, commit: Any) -> Sink:
    catalog = tables.open_catalog(tables.WarehouseConfig(directory=tmp_path / "wh"))
    landing = Sink(SinkConfig("unused:9092", ("production",)), catalog)
    landing.consumer = Consumer()  # type: ignore[assignment]
    landing._base[TP] = 10  # noqa: SLF001 (positioned at the table's offset 10)
    landing._next[TP] = 10  # noqa: SLF001
    landing.writers[TP.topic].commit = commit  # type: ignore[method-assign]
    return landing


async def test_records_read_during_a_failed_commit_queue_behind_its_batch(tmp_path: Path) -> None:
    release, seen = threading.Event(), []

    def failing(parts: dict[int, PartitionBatch]) -> CommitResult:
        seen.append({p: (b.base, b.next_offset, len(b.rows)) for p, b in parts.items()})
        release.wait(10)
        raise WarehouseError("catalog down")

    landing = sink(tmp_path, failing)
    landing.take(TP, records(10, 3))
    flushing = asyncio.ensure_future(landing.flush())
    await asyncio.sleep(0.05)
    landing.take(TP, records(13, 2))  # read while the batch is being committed
    release.set()
    assert not await flushing
    part = landing._buffer[TP]  # noqa: SLF001
    assert (part.base, part.next_offset, len(part.rows)) == (10, 15, 5)
    assert [r[0] for r in part.rows] == ["o10", "o11", "o12", "o13", "o14"]
    assert landing._buffered == 5  # noqa: SLF001
    assert seen == [{0: (10, 13, 3)}]


async def test_records_read_during_a_commit_continue_from_its_offset(tmp_path: Path) -> None:
    release, seen = threading.Event(), []

    def landing_commit(parts: dict[int, PartitionBatch]) -> CommitResult:
        seen.append({p: (b.base, b.next_offset, len(b.rows)) for p, b in parts.items()})
        release.wait(10)
        return CommitResult(committed={p: b.next_offset for p, b in parts.items()})

    landing = sink(tmp_path, landing_commit)
    landing.take(TP, records(10, 3))
    flushing = asyncio.ensure_future(landing.flush())
    await asyncio.sleep(0.05)
    landing.take(TP, records(13, 2))
    release.set()
    assert await flushing
    assert landing.consumer.committed == [{TP: 13}]  # type: ignore[union-attr]
    assert await landing.flush()
    assert seen == [{0: (10, 13, 3)}, {0: (13, 15, 2)}]
    assert landing._base[TP] == 15  # noqa: SLF001


def test_a_corrupt_record_of_todays_schema_is_skipped_not_landed(tmp_path: Path) -> None:
    landing = sink(tmp_path, None)
    good, cut, longer = records(10, 3)
    cut = dataclasses.replace(cut, value=cut.value[:-4])
    longer = dataclasses.replace(longer, value=longer.value + b"\x00")
    landing.take(TP, [good, cut, longer])
    part = landing._buffer[TP]  # noqa: SLF001
    assert [r[0] for r in part.rows] == ["o10"]
    assert (part.next_offset, landing._buffered) == (13, 3)  # noqa: SLF001 (read past, not landed)


# -- with a decoder process (warehouse.decoder), as `hookline sink` runs by default ---------


async def test_decoded_records_read_during_a_failed_commit_queue_behind_its_batch(
    tmp_path: Path,
) -> None:
    release, seen = threading.Event(), []

    def failing(parts: dict[int, PartitionBatch]) -> CommitResult:
        seen.append(
            {
                p: (b.base, b.next_offset, sum(x.num_rows for x in b.batches))
                for p, b in parts.items()
            }
        )
        release.wait(10)
        raise WarehouseError("catalog down")

    landing = sink(tmp_path, failing)
    landing.decoders = DecoderPool(1)
    try:
        await landing.decoders.start()
        landing.take(TP, records(10, 3))
        flushing = asyncio.ensure_future(landing.flush())
        await asyncio.sleep(0.5)
        landing.take(TP, records(13, 2))  # read while the batch is being committed
        release.set()
        assert not await flushing
        part = landing._buffer[TP]  # noqa: SLF001
        assert (part.base, part.next_offset, landing._buffered) == (10, 15, 5)  # noqa: SLF001
        await landing._resolve(TP, part)  # noqa: SLF001
        landed = pa.concat_tables(
            [
                pa.Table.from_batches([b]) if isinstance(b, pa.RecordBatch) else b
                for b in part.batches
            ]
        )
        assert landed.column("order_id").to_pylist() == ["o10", "o11", "o12", "o13", "o14"]
        assert seen == [{0: (10, 13, 3)}]
    finally:
        landing.decoders.close()


async def test_a_record_of_an_unknown_schema_stops_the_sink_after_what_precedes_it(
    tmp_path: Path,
) -> None:
    seen = []

    def landing_commit(parts: dict[int, PartitionBatch]) -> CommitResult:
        seen.append(
            {p: (b.next_offset, sum(x.num_rows for x in b.batches)) for p, b in parts.items()}
        )
        return CommitResult(committed={p: b.next_offset for p, b in parts.items()})

    landing = sink(tmp_path, landing_commit)
    landing.decoders = DecoderPool(1)
    try:
        await landing.decoders.start()
        before, after = records(10, 3), records(14, 1)
        unknown = b"\xc3\x01" + b"\x00" * 8 + b"\x02"  # a fingerprint no schema here has
        stranger = dataclasses.replace(after[0], offset=13, value=unknown)
        landing.take(TP, [*before, stranger, *after])
        with pytest.raises(SinkError, match="offset 13 cannot be landed"):
            await landing.flush()
        assert seen == [{0: (13, 3)}]  # o10-o12 land, the stop is in front of offset 13
        assert landing.consumer.committed == [{TP: 13}]  # type: ignore[union-attr]
    finally:
        landing.decoders.close()
