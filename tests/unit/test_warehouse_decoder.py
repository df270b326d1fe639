"""warehouse.decoder: every value comes back once, as a row (the compiled reader's), a
tombstone, an unlandable record or one for the general way; rows.latest_rows in Arrow."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from typing import Any

import pyarrow as pa
from hookline.schemas import codec
from hookline.warehouse import decoder, row_batches, rows
from hookline.warehouse.decoder import DecoderPool
from hookline.warehouse.rows import ORDER_CHANGES, ORDERS_STATE

from tests.unit.test_warehouse_rows import state


def encoded(version: int = 1, **fields: Any) -> bytes:
    return codec.encode(codec.ORDER_STATE, state(version, **fields))


def test_values_come_back_as_the_compiled_readers_rows_in_order() -> None:
    values: list[bytes | None] = [encoded(1, order_id=f"o{i}") for i in range(5)]
    out = decoder.decode(ORDERS_STATE.name, values)
    read = rows.row_reader(ORDERS_STATE)
    expected = [read(codec.decode_as(codec.ORDER_STATE, v)) for v in values if v is not None]
    assert out.rows.equals(row_batches.from_rows(ORDERS_STATE, expected))
    assert out.rows.column("order_id").to_pylist() == [f"o{i}" for i in range(5)]
    assert (out.tombstones, out.general, out.unlandable) == ([], [], [])


def test_every_value_that_is_not_a_row_is_named_once() -> None:
    good = encoded()
    other = codec.REGISTRY.schema(codec.CANONICAL_EVENT).header + good[codec.HEADER_SIZE :]
    values = [good, None, good[:-3], good + b"\x00", encoded(updated_at=2**62), other, good]
    out = decoder.decode(ORDERS_STATE.name, values)
    assert out.rows.num_rows == 2
    assert out.tombstones == [1]
    assert out.general == [5]  # another record type's header: the sink's general way
    assert [(i, mapping) for i, _, mapping in out.unlandable] == [(2, False), (3, False), (4, True)]
    assert "1 trailing bytes" in out.unlandable[1][1]
    assert out.skipped() == [1, 2, 3, 4, 5]


def test_latest_keeps_what_latest_rows_keeps() -> None:
    read = rows.row_reader(ORDERS_STATE)
    s1, s3, s2 = (read(codec.decode_as(codec.ORDER_STATE, encoded(v))) for v in (1, 3, 2))
    other = read(codec.decode_as(codec.ORDER_STATE, encoded(1, order_id="o2")))
    batch = [s1, s3, s2, other, s3]
    kept = row_batches.latest(ORDERS_STATE, row_batches.from_rows(ORDERS_STATE, batch))
    assert kept.equals(row_batches.from_rows(ORDERS_STATE, rows.latest_rows(ORDERS_STATE, batch)))
    assert kept.column("version").to_pylist() == [3, 1]


def test_latest_keeps_the_first_copy_of_a_composite_key() -> None:
    table = row_batches.from_rows(ORDERS_STATE, [])
    assert row_batches.latest(ORDERS_STATE, table).num_rows == 0
    names = [c.name for c in rows.columns(ORDER_CHANGES)]
    base = dict.fromkeys(names)
    base |= {"order_id": "o1", "version": 1, "updated_at": 1_772_406_000_000_000}
    first = tuple(base[n] for n in names)
    again = tuple((base | {"environment": "copy"})[n] for n in names)
    later = tuple((base | {"version": 2})[n] for n in names)
    kept = row_batches.latest(
        ORDER_CHANGES, row_batches.from_rows(ORDER_CHANGES, [first, again, later])
    )
    assert kept.column("environment").to_pylist() == [None, None]
    assert kept.column("version").to_pylist() == [1, 2]


async def test_a_pool_decodes_in_another_process() -> None:
    pool = DecoderPool(1)
    try:
        await pool.start()
        out = await pool.submit(ORDERS_STATE, [encoded(2), None])
    finally:
        pool.close()
    assert out.rows.column("version").to_pylist() == [2]
    assert out.tombstones == [1]
    assert isinstance(out.rows, pa.Table)


OWNER = """
import asyncio, multiprocessing, sys
from hookline.warehouse.decoder import DecoderPool

async def main() -> None:
    pool = DecoderPool(2)
    await pool.start()
    print(" ".join(str(p.pid) for p in multiprocessing.active_children()), flush=True)
    await asyncio.sleep(120)

asyncio.run(main())
"""


def test_decoder_processes_end_when_the_sink_is_killed() -> None:
    """A sink killed -9 leaves no decoder behind (each held its memory for ever)."""
    owner = subprocess.Popen([sys.executable, "-c", OWNER], stdout=subprocess.PIPE, text=True)
    try:
        assert owner.stdout is not None
        pids = [int(pid) for pid in owner.stdout.readline().split()]
        assert len(pids) == 2
        owner.send_signal(signal.SIGKILL)
        owner.wait(10)
        deadline = time.monotonic() + 10
        alive = pids
        while alive and time.monotonic() < deadline:
            time.sleep(0.1)
            alive = [pid for pid in alive if _running(pid)]
        assert alive == [], f"decoder processes {alive} outlived their sink"
    finally:
        owner.kill()


def _running(pid: int) -> bool:
    """Alive, not a zombie waiting for its (new) parent to reap it."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
