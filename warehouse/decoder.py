"""Records' bytes into Arrow rows in processes of their own, off the sink's GIL.

What it is for: reading single-object-encoded Avro into rows and rows into
Arrow arrays is most of the sink's CPU per record, all of it Python under one
GIL. :class:`DecoderPool` runs it in ``--decoders`` processes of its own: the
sink hands a partition's fetched values to :func:`decode` and gets back one
Arrow table in ``row_batches.layout`` per fetch, the same rows
``avro_rows.compile_row_reader`` reads, plus the positions of the records
it did not turn into rows.

Invariant: every value handed in comes back exactly once, as a row, a
tombstone, an unlandable record (with the reason the sink's process would
give) or a record for the general way (a header other than the table's
current writer schema: another release's record, another type, or corrupt),
which the sink decodes itself and which can stop it (``sink.SinkError``).
The rows keep the values' order. Nothing here commits or decides what
lands: the sink resolves a batch's jobs before its table commit
(docs/warehouse.md, "Decoding").
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import gc
import multiprocessing
import os
import threading
import time
from dataclasses import dataclass, field
from functools import cache

import pyarrow as pa
from hookline.schemas import codec
from hookline.schemas.avro_codegen import UnsupportedSchema
from hookline.warehouse import avro_rows, row_batches, rows
from hookline.warehouse.rows import MappingError

__all__ = ["Decoded", "DecoderPool", "decode"]


@dataclass
class Decoded:
    """One job's answer: the rows, and which of the values are not among them."""

    rows: pa.Table  # in row_batches.layout, the values' order
    tombstones: list[int] = field(default_factory=list)  # positions of None values
    general: list[int] = field(default_factory=list)  # for the sink's general way
    #: (position, reason, True for a value no column holds / False for corrupt bytes)
    unlandable: list[tuple[int, str, bool]] = field(default_factory=list)

    def skipped(self) -> list[int]:
        """The positions of the values that are not rows, in order."""
        return sorted([*self.tombstones, *self.general, *(u[0] for u in self.unlandable)])


_TABLES = {table.name: table for table in rows.TABLES}


@cache
def _reader(name: str) -> tuple[bytes, avro_rows.RowReader | None]:
    table = _TABLES[name]
    header = codec.REGISTRY.schema(table.record).header
    try:
        return header, avro_rows.compile_row_reader(table)
    except UnsupportedSchema:  # every record then goes the general way
        return header, None


def decode(name: str, values: list[bytes | None]) -> Decoded:
    """Table ``name``'s records (``TableDef.name``) as rows (see the module)."""
    table = _TABLES[name]
    header, read = _reader(name)
    size = codec.HEADER_SIZE
    found: list[rows.Row] = []
    add = found.append
    out = Decoded(pa.table({}))
    for i, data in enumerate(values):
        if data is None:
            out.tombstones.append(i)
            continue
        if read is None or data[:size] != header:
            out.general.append(i)
            continue
        try:
            row, end = read(data, size)
        except MappingError as exc:
            out.unlandable.append((i, str(exc), True))
            continue
        except Exception as exc:  # ValueError: truncated, not UTF-8, out of range...
            out.unlandable.append((i, f"corrupt {table.record} record: {exc}", False))
            continue
        if end != len(data):
            trailing = len(data) - end
            out.unlandable.append((i, f"{trailing} trailing bytes after a {table.record}", False))
            continue
        add(row)
    out.rows = row_batches.from_rows(table, found)
    return out


#: How often a decoder process checks that the sink that started it still runs.
PARENT_CHECK_S = 0.5


def _exit_with(parent: int) -> None:
    """End this process once ``parent`` is gone (it was killed -9, say).

    A process pool's workers wait on a queue they hold both ends of, so
    they never see the sink go: without this they would live on, each
    holding its memory, after every sink that was killed.
    """

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(PARENT_CHECK_S)
        os._exit(1)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def _start_worker(parent: int) -> None:
    _exit_with(parent)
    # As in the sink's process (warehouse.command): a job's tuples hold no
    # reference cycle, and the default thresholds walk them again and again.
    gc.freeze()
    gc.set_threshold(100_000, 50, 100)
    for name in _TABLES:
        _reader(name)


def _ready() -> int:
    return 0


class DecoderPool:
    """``processes`` decoder processes (started with ``spawn``: the sink has threads)."""

    def __init__(self, processes: int) -> None:
        self.processes = processes
        self._pool = concurrent.futures.ProcessPoolExecutor(
            max_workers=processes,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_start_worker,
            initargs=(os.getpid(),),
        )

    async def start(self) -> None:
        """Wait until every process has started and compiled its readers."""
        loop = asyncio.get_running_loop()
        await asyncio.gather(
            *(loop.run_in_executor(self._pool, _ready) for _ in range(self.processes))
        )

    def submit(self, table: rows.TableDef, values: list[bytes | None]) -> asyncio.Future[Decoded]:
        """A job for :func:`decode`, answered on the running loop."""
        future = self._pool.submit(decode, table.name, values)
        return asyncio.wrap_future(future)

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
