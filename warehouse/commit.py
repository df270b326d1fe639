"""One batch of one topic into its table, exactly once.

Why it cannot double or lose a row:

- The batch's rows and the offsets after them go into one Iceberg commit
  (the offsets in the snapshot summary), which the catalog applies
  atomically or not at all.
- A partition's rows are only written when the table's stored offset for
  that partition is still the one the batch started from. Another sink that
  took the partition over (a rebalance), or this sink's own earlier commit
  whose answer was lost, moved it on: then the partition is *fenced*, its
  rows dropped, and the caller re-reads from the table's offset.
- pyiceberg's automatic retry is switched off for these tables
  (``commit.retry.num-retries = 0``): on a concurrent commit the whole check
  runs again against the new table state.
- Rows whose key is already in the table are left out (the worker re-emits
  records after its own crashes), and ``orders_state`` only replaces an
  order's row with a higher version, so a late or replayed older state never
  goes back.

Synchronous on purpose: pyiceberg is, and the sink runs this in a thread.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
from hookline.schemas import codec
from hookline.schemas.avro_codegen import UnsupportedSchema
from hookline.warehouse import avro_rows, row_batches, rows, tables
from hookline.warehouse.rows import TableDef
from hookline.warehouse.tables import WarehouseError
from hookline.warehouse.version_index import VersionIndex, from_micros
from pyiceberg.catalog import Catalog
from pyiceberg.exceptions import CommitFailedException
from pyiceberg.expressions import (
    And,
    BooleanExpression,
    GreaterThanOrEqual,
    In,
    LessThanOrEqual,
)
from pyiceberg.table import Table

log = logging.getLogger(__name__)

MAX_CONFLICTS = 20
_CREATING = threading.Lock()


@dataclass
class PartitionBatch:
    """The records of one partition since the table's offset ``base``."""

    base: int | None  # the table's offset this batch continues from (None: it had none)
    next_offset: int  # the offset after the last record consumed
    # rows.Row tuples (the sink's), or rows.to_row dicts
    rows: list[Any] = field(default_factory=list)
    #: rows decoded off the sink's process, in row_batches.layout (warehouse.decoder)
    batches: list[pa.RecordBatch | pa.Table] = field(default_factory=list)
    #: the sink's decoder jobs not yet turned into ``rows`` and ``batches`` (never committed)
    decoding: list[Any] = field(default_factory=list)


@dataclass
class CommitResult:
    committed: dict[int, int] = field(default_factory=dict)  # partition -> table's new offset
    fenced: dict[int, int | None] = field(default_factory=dict)  # partition -> table's offset
    rows_written: int = 0
    duplicates: int = 0  # already in the table, or twice in the batch
    stale: int = 0  # orders_state: an equal or higher version was already there
    conflicts: int = 0  # concurrent commits that made us re-check
    seconds: float = 0.0


def _at(value: datetime) -> str:
    return value.isoformat()


def index_path(catalog: Catalog, identifier: str) -> Path:
    """Where a table's version index lives: next to a local warehouse's catalog, else
    under ``$HOOKLINE_DATA_DIR/sink-index/<catalog>/`` on the sink's machine."""
    warehouse = str(catalog.properties.get("warehouse", ""))
    if warehouse.startswith("file://"):
        folder = Path(warehouse.removeprefix("file://")) / "index"
    else:
        folder = Path(os.environ.get("HOOKLINE_DATA_DIR") or ".hookline") / "sink-index"
        folder = folder / catalog.name
    return folder / f"{identifier}.sqlite"


class TableWriter:
    """Commits batches of one topic into one table."""

    def __init__(
        self,
        catalog: Catalog,
        table_def: TableDef,
        environment: str,
        index_file: Path | None = None,
    ) -> None:
        self.catalog = catalog
        self.table_def = table_def
        self.environment = environment
        self.topic = table_def.topic(environment)
        self.identifier = table_def.identifier(environment)
        self._table: Table | None = None
        self._index: VersionIndex | None = None
        self._index_file = index_file or index_path(catalog, self.identifier)
        #: decoded Avro record -> rows.Row (rows.row_reader)
        self.read_row = rows.row_reader(table_def)
        #: the current writer schema's bytes -> rows.Row, and that schema's header
        self.read_bytes: avro_rows.RowReader | None = None
        self.header = codec.REGISTRY.schema(table_def.record).header
        try:
            self.read_bytes = avro_rows.compile_row_reader(table_def)
        except UnsupportedSchema:  # every record then goes through codec.decode
            log.warning("%s: no compiled row reader; decoding the general way", self.identifier)

    @property
    def index(self) -> VersionIndex:
        """The versioned table's index of latest versions, opened on first use."""
        if self._index is None:
            version = self.table_def.version_column
            assert version is not None
            self._index = VersionIndex(
                self._index_file,
                self.table_def.key[0],
                version,
                self.table_def.time_column,
            )
        return self._index

    def _load(self) -> Table:
        try:
            if self._table is None:
                # The tables' commits run side by side: creating the namespace
                # twice at once is a unique-constraint error in the catalog.
                with _CREATING:
                    self._table = tables.ensure_table(
                        self.catalog, self.table_def, self.environment
                    )
            else:
                self._table = self._table.refresh()
        except WarehouseError:
            raise
        except Exception as exc:
            raise WarehouseError(
                f"cannot load {self.identifier}: {type(exc).__name__}: {exc}"
            ) from exc
        return self._table

    def offsets(self) -> dict[int, int]:
        """Where the table says this topic's partitions resume."""
        return tables.all_offsets(self._load()).get(self.topic, {})

    def commit(self, parts: dict[int, PartitionBatch]) -> CommitResult:
        started = time.monotonic()
        result = CommitResult()
        for _ in range(MAX_CONFLICTS):
            table = self._load()
            offsets = tables.all_offsets(table)
            current = offsets.get(self.topic, {})
            accepted = {p: b for p, b in parts.items() if current.get(p) == b.base}
            result.fenced = {p: current.get(p) for p in parts if p not in accepted}
            if not accepted:
                break
            batch = self._batch(accepted.values())
            unique = row_batches.latest(self.table_def, batch)
            new, replace, stale, duplicates = self._against_table(table, unique)
            # Versioned: an older version in the same batch is superseded (stale).
            if self.table_def.version_column is not None:
                stale += batch.num_rows - unique.num_rows
            else:
                duplicates += batch.num_rows - unique.num_rows
            result.stale, result.duplicates = stale, duplicates
            offsets[self.topic] = {**current, **{p: b.next_offset for p, b in accepted.items()}}
            try:
                transaction = table.transaction()
                if replace is not None:
                    transaction.delete(replace)
                transaction.append(
                    tables.arrow_table(table, new),
                    snapshot_properties=tables.offsets_property(offsets),
                )
                transaction.commit_transaction()
            except CommitFailedException:
                result.conflicts += 1
                log.info("%s: concurrent commit, checking offsets again", self.identifier)
                continue
            except Exception as exc:
                raise WarehouseError(
                    f"commit to {self.identifier} failed: {type(exc).__name__}: {exc}"
                ) from exc
            result.committed = {p: b.next_offset for p, b in accepted.items()}
            result.rows_written = new.num_rows
            if self.table_def.version_column is not None:
                self._remember(table, new)
            break
        else:
            raise WarehouseError(
                f"{self.identifier}: {MAX_CONFLICTS} concurrent commits in a row; giving up"
            )
        result.seconds = time.monotonic() - started
        return result

    def _batch(self, parts: Iterable[PartitionBatch]) -> pa.Table:
        """The partitions' rows as one Arrow table in ``row_batches.layout``."""
        pieces: list[pa.RecordBatch | pa.Table] = []
        for part in parts:
            assert not part.decoding, "the sink resolves its decoder jobs before a commit"
            pieces += part.batches
            if part.rows:
                tuples = [rows.as_row(self.table_def, r) for r in part.rows]
                pieces.append(row_batches.from_rows(self.table_def, tuples))
        return row_batches.concat(self.table_def, pieces)

    def _against_table(
        self, table: Table, batch: pa.Table
    ) -> tuple[pa.Table, BooleanExpression | None, int, int]:
        """(rows to append, filter of rows they replace, stale count, duplicate count)."""
        if self.table_def.version_column is not None:
            return self._newer_versions(table, batch)
        if not batch.num_rows or table.current_snapshot() is None:
            return batch, None, 0, 0
        time_column = self.table_def.time_column
        times = batch.column(time_column).cast(pa.int64())
        # A re-emitted record has the same time, so only the batch's time
        # range can hold a copy: partition and file statistics prune the rest.
        # Only the time range goes to pyiceberg: an In filter of a batch's
        # thousands of keys costs more to bind than the rows it would skip
        # (random keys prune no file), so the keys are matched here.
        found = table.scan(
            row_filter=And(
                GreaterThanOrEqual(time_column, _at(from_micros(pc.min(times).as_py()))),
                LessThanOrEqual(time_column, _at(from_micros(pc.max(times).as_py()))),
            ),
            selected_fields=self.table_def.key,
        ).to_arrow()
        if not found.num_rows:
            return batch, None, 0, 0
        key = self.table_def.key
        if len(key) == 1:
            seen = pc.is_in(batch.column(key[0]), value_set=found.column(key[0]).combine_chunks())
        else:
            existing = set(zip(*(found.column(k).to_pylist() for k in key), strict=True))
            pairs = zip(*(batch.column(k).to_pylist() for k in key), strict=True)
            seen = pa.array([pair in existing for pair in pairs], pa.bool_())
        new = batch.filter(pc.invert(seen))
        return new, None, 0, batch.num_rows - new.num_rows

    def _newer_versions(
        self, table: Table, batch: pa.Table
    ) -> tuple[pa.Table, BooleanExpression | None, int, int]:
        key, version = self.table_def.key[0], self.table_def.version_column
        assert version is not None
        time_column = self.table_def.time_column
        try:
            self.index.sync(table)
        except Exception as exc:  # storage errors reading the table: retried like a commit
            raise WarehouseError(
                f"cannot bring the version index of {self.identifier} up to date: "
                f"{type(exc).__name__}: {exc}"
            ) from exc
        keys = batch.column(key).to_pylist()
        existing = self.index.lookup(keys)
        if not existing:
            return batch, None, 0, 0
        none = (-1, None)
        versions = batch.column(version).to_pylist()
        newer = [v > existing.get(k, none)[0] for k, v in zip(keys, versions, strict=True)]
        new = batch.filter(pa.array(newer, pa.bool_()))
        stale = batch.num_rows - new.num_rows
        replaced = [k for k, keep in zip(keys, newer, strict=True) if keep and k in existing]
        if not replaced:
            return new, None, stale, 0
        # The replaced rows' times bound the delete, so only their partitions
        # and files are read and rewritten (copy-on-write).
        oldest = min(existing[r][1] for r in replaced)
        replace: BooleanExpression = And(
            In(key, set(replaced)), GreaterThanOrEqual(time_column, _at(oldest))
        )
        return new, replace, stale, 0

    def _remember(self, table: Table, new: pa.Table) -> None:
        """Add a committed batch to the index; a failure only costs the next sync a read."""
        version = self.table_def.version_column
        assert version is not None
        times = new.column(self.table_def.time_column).cast(pa.int64())
        triples = zip(
            new.column(self.table_def.key[0]).to_pylist(),
            new.column(version).to_pylist(),
            times.to_pylist(),
            strict=True,
        )
        try:
            self.index.record(table, triples)
        except Exception as exc:
            log.warning(
                "%s: version index not updated (%s); the next commit re-reads", self.identifier, exc
            )
