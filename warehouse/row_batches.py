"""A table's rows as one Arrow table: the layout decoded rows travel and are checked in.

What it is for: the sink's decoder processes (:mod:`warehouse.decoder`) hand
their rows back as Arrow record batches, and :mod:`warehouse.commit` keeps
a batch in Arrow from then on: one key per row in the batch
(:func:`latest`), the duplicate and version checks, the append. Rows that
arrive as :data:`rows.Row` tuples (records of an older writer schema, the
sink without decoder processes, tests) join them through :func:`from_rows`.

The layout (:func:`layout`) is the table definition's columns
(``rows.columns``) in that order, with the Arrow types its Iceberg table gets
(``tables.iceberg_schema``); ``tables.arrow_table`` puts it into the table's
own, possibly evolved, schema at commit.

Invariant: :func:`from_rows` holds the rows' values (a timestamp's
microseconds since the epoch as ``timestamp[us, UTC]``), and :func:`latest`
keeps the rows ``rows.latest_rows`` keeps, in the same order
(docs/warehouse.md, "Decoding").
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache
from typing import Any

import pyarrow as pa
from hookline.warehouse import rows, tables
from hookline.warehouse.rows import TableDef

__all__ = ["concat", "from_rows", "latest", "layout"]


@cache
def layout(table: TableDef) -> pa.Schema:
    """The Arrow schema of ``table``'s rows (no Iceberg field ids: those are the table's)."""
    schema = tables.iceberg_schema(table).as_arrow()
    return pa.schema([pa.field(f.name, f.type, f.nullable) for f in schema])


def from_rows(table: TableDef, values: Sequence[rows.Row]) -> pa.Table:
    """:data:`rows.Row` tuples as an Arrow table in :func:`layout`, a column at a time."""
    schema = layout(table)
    columns = list(zip(*values, strict=True)) if values else [() for _ in schema]
    arrays = []
    for field, column in zip(schema, columns, strict=True):
        if pa.types.is_timestamp(field.type):
            arrays.append(pa.array(column, pa.int64()).cast(field.type))
        else:
            arrays.append(pa.array(column, field.type))
    return pa.Table.from_arrays(arrays, schema=schema)


def concat(table: TableDef, parts: Sequence[pa.Table | pa.RecordBatch]) -> pa.Table:
    """Tables and record batches in :func:`layout` as one table."""
    tables_ = [p if isinstance(p, pa.Table) else pa.Table.from_batches([p]) for p in parts]
    if not tables_:
        return from_rows(table, [])
    return pa.concat_tables(tables_)


def latest(table: TableDef, batch: pa.Table) -> pa.Table:
    """One row per key: for versioned tables the highest version (the first of equal ones),
    else the first seen; the kept rows in the order their keys first appear."""
    key = list(table.key)
    if batch.num_rows < 2 or batch.select(key).group_by(key).aggregate([]).num_rows == (
        batch.num_rows
    ):
        return batch  # every key once: the common case, decided without Python per row
    keys: Any
    if len(key) == 1:
        keys = batch.column(key[0]).to_pylist()
    else:
        keys = zip(*(batch.column(k).to_pylist() for k in key), strict=True)
    chosen: dict[Any, int] = {}
    if table.version_column is not None:
        versions = batch.column(table.version_column).to_pylist()
        for i, k in enumerate(keys):
            current = chosen.get(k)
            if current is None or versions[i] > versions[current]:
                chosen[k] = i
    else:
        for i, k in enumerate(keys):
            chosen.setdefault(k, i)
    return batch.take(pa.array(list(chosen.values()), pa.int64()))
