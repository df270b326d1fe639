"""Avro records to warehouse rows: which columns each table has and how a record fills them.

The columns are derived from the ``.avsc`` files in ``schemas/`` rather than
written out by hand, so a field the worker adds (with a default, as every
schema change must) becomes a column on the sink's next start without a code
change here. Nested records are flattened into ``<field>_<subfield>`` columns
(``cause_delivery_id``, ``error_code``, ``before_order_status``): every SQL
engine reads flat columns the same way, structs less so. Enums become
strings, ``timestamp-millis`` becomes a UTC timestamp, Avro decimals stay
exact decimals.

Pure Python (no pyarrow, no pyiceberg), so it is unit tested on its own and
importable without the ``warehouse`` extra.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from functools import cache
from pathlib import Path
from typing import Any

from hookline.schemas import codec

#: Column kinds; :mod:`warehouse.tables` maps each to an Iceberg type.
STRING, LONG, INT, DOUBLE, BOOLEAN, TIMESTAMP, DECIMAL, STRINGS = (
    "string",
    "long",
    "int",
    "double",
    "boolean",
    "timestamp",
    "decimal",
    "strings",
)


class MappingError(ValueError):
    """An Avro type the warehouse has no column type for (caught by the unit tests)."""


@dataclass(frozen=True)
class Column:
    name: str
    kind: str
    path: tuple[str, ...]  # field names from the record's root to the value
    required: bool = False
    precision: int = 0
    scale: int = 0
    doc: str | None = None


@dataclass(frozen=True)
class TableDef:
    """One warehouse table fed by one topic (per environment)."""

    name: str  # table name inside the environment's namespace
    record: str  # Avro full name of the topic's values
    topic_suffix: str  # the topic is f"{env}.{topic_suffix}"
    key: tuple[str, ...]  # columns that identify a row
    time_column: str  # partitioned by day of this column
    version_column: str | None = None  # set: one row per key, the highest version wins
    omit: frozenset[tuple[str, ...]] = field(default_factory=frozenset)
    rename: tuple[tuple[tuple[str, ...], str], ...] = ()  # (path, column name) pairs

    def topic(self, environment: str) -> str:
        return f"{environment}.{self.topic_suffix}"

    def identifier(self, environment: str) -> str:
        return f"{environment}.{self.name}"


ORDERS_STATE = TableDef(
    name="orders_state",
    record=codec.ORDER_STATE,
    topic_suffix="orders.state",
    key=("order_id",),
    time_column="updated_at",
    version_column="version",
)

# A change keeps the state it produced (after_*) and the one it replaced
# (before_*); the order's identity and the version are not repeated inside
# them, and the change's time (after.updated_at) is the top-level updated_at.
_REPEATED = ("order_id", "environment", "version")
ORDER_CHANGES = TableDef(
    name="order_changes",
    record=codec.ORDER_CHANGE,
    topic_suffix="orders.changes",
    key=("order_id", "version"),
    time_column="updated_at",
    omit=frozenset((side, name) for side in ("before", "after") for name in _REPEATED),
    rename=((("after", "updated_at"), "updated_at"),),
)

WEBHOOK_EVENTS = TableDef(
    name="webhook_events",
    record=codec.CANONICAL_EVENT,
    topic_suffix="webhooks.events",
    key=("event_id",),
    time_column="received_at",
)

TABLES = (ORDERS_STATE, ORDER_CHANGES, WEBHOOK_EVENTS)


@cache
def _avsc(name: str) -> dict[str, Any]:
    path = Path(codec.SCHEMA_DIR) / f"{name}.avsc"
    if not path.exists():
        raise MappingError(f"no schema file for {name} in {codec.SCHEMA_DIR}")
    return json.loads(path.read_text())  # type: ignore[no-any-return]


def _resolve(avro_type: Any, namespace: str) -> Any:
    """A named reference ("hookline.OrderState") replaced by its definition."""
    if isinstance(avro_type, str) and avro_type not in _PRIMITIVES:
        full = avro_type if "." in avro_type else f"{namespace}.{avro_type}"
        return _avsc(full)
    return avro_type


_PRIMITIVES = {"null", "boolean", "int", "long", "float", "double", "bytes", "string"}


def _flatten(
    avro_type: Any,
    path: tuple[str, ...],
    required: bool,
    namespace: str,
    table: TableDef,
    doc: str | None,
) -> list[Column]:
    if path in table.omit:
        return []
    avro_type = _resolve(avro_type, namespace)
    if isinstance(avro_type, list):
        branches = [b for b in avro_type if b != "null"]
        if len(branches) != 1:
            raise MappingError(f"{'.'.join(path)}: only [null, T] unions map to a column")
        return _flatten(branches[0], path, False, namespace, table, doc)
    name = dict(table.rename).get(path, "_".join(path))
    if isinstance(avro_type, str):
        kind = {
            "string": STRING,
            "long": LONG,
            "int": INT,
            "double": DOUBLE,
            "float": DOUBLE,
            "boolean": BOOLEAN,
        }.get(avro_type)
        if kind is None:
            raise MappingError(f"{'.'.join(path)}: Avro {avro_type} has no column type")
        return [Column(name, kind, path, required, doc=doc)]
    kind_of = avro_type.get("type")
    logical = avro_type.get("logicalType")
    if kind_of == "record":
        inner_ns = avro_type.get("namespace", namespace)
        columns: list[Column] = []
        for f in avro_type["fields"]:
            columns += _flatten(
                f["type"], (*path, f["name"]), required, inner_ns, table, f.get("doc")
            )
        return columns
    if kind_of == "enum":
        return [Column(name, STRING, path, required, doc=doc)]
    if kind_of == "long" and logical in ("timestamp-millis", "timestamp-micros"):
        return [Column(name, TIMESTAMP, path, required, doc=doc)]
    if kind_of in ("bytes", "fixed") and logical == "decimal":
        precision, scale = int(avro_type["precision"]), int(avro_type.get("scale", 0))
        return [Column(name, DECIMAL, path, required, precision, scale, doc=doc)]
    if kind_of == "array" and _resolve(avro_type["items"], namespace) == "string":
        return [Column(name, STRINGS, path, required, doc=doc)]
    if isinstance(kind_of, str) and kind_of in _PRIMITIVES:
        return _flatten(kind_of, path, required, namespace, table, doc)
    raise MappingError(f"{'.'.join(path)}: Avro type {avro_type!r} has no column type")


@cache
def columns(table: TableDef) -> tuple[Column, ...]:
    """The table's columns in the Avro field order.

    Only the key, the version and the partition time are required: a column added later
    by schema evolution can only be optional, so every other column is
    optional from the start and old and new columns behave alike.
    """
    schema = _avsc(table.record)
    found = _flatten(schema, (), True, schema.get("namespace", ""), table, None)
    names = [c.name for c in found]
    duplicates = {n for n in names if names.count(n) > 1}
    if duplicates:
        raise MappingError(f"{table.name}: flattened column names collide: {sorted(duplicates)}")
    must = {*table.key, table.time_column}
    if table.version_column:
        must.add(table.version_column)
    missing = must - set(names)
    if missing:
        raise MappingError(f"{table.name}: key/time column(s) {sorted(missing)} not in the record")
    return tuple(
        Column(c.name, c.kind, c.path, c.name in must, c.precision, c.scale, c.doc) for c in found
    )


def _value(record: Mapping[str, Any], path: tuple[str, ...]) -> Any:
    value: Any = record
    for name in path:
        if value is None:
            return None
        value = value.get(name)
    return value


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _timestamp(millis: int | None) -> datetime | None:
    if millis is None:
        return None
    try:
        return _EPOCH + timedelta(milliseconds=millis)  # exact, unlike a float of seconds
    except OverflowError:
        raise MappingError(f"timestamp {millis} ms is beyond what a datetime holds") from None


def to_row(table: TableDef, record: Mapping[str, Any]) -> dict[str, Any]:
    """One decoded Avro record as {column: value}; fields without a column are ignored."""
    row: dict[str, Any] = {}
    for column in columns(table):
        value = _value(record, column.path)
        if column.kind == TIMESTAMP:
            value = _timestamp(value)
        elif column.kind == DECIMAL and value is not None and not isinstance(value, Decimal):
            raise MappingError(f"{column.name}: expected a Decimal, got {type(value).__name__}")
        elif column.kind == STRINGS and value is not None:
            value = list(value)
        if value is None and column.required:
            raise MappingError(f"{table.name}.{column.name} is required but the record has none")
        row[column.name] = value
    return row


def key_of(table: TableDef, row: Mapping[str, Any]) -> tuple[Any, ...]:
    return tuple(row[k] for k in table.key)


def unique_rows(table: TableDef, rows: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per key: for versioned tables the highest version, else the first seen.

    Why the first: a repeated key on an append-only topic is the worker
    re-emitting the same record after a crash (event ids and (order, version)
    pairs are stable across reprocessing), so the copies are equal.
    """
    chosen: dict[tuple[Any, ...], dict[str, Any]] = {}
    version = table.version_column
    for row in rows:
        key = key_of(table, row)
        current = chosen.get(key)
        if current is None or (version is not None and row[version] > current[version]):
            chosen[key] = row
    return list(chosen.values())


# -- the sink's fast path: one record to one tuple ---------------------------------
#
# ``to_row`` walks every column's path for every record and builds a dict and
# a datetime per timestamp: about 5-8 µs per record, more than decoding it.
# The sink instead keeps a row as a tuple in ``columns(table)`` order, with
# timestamps as int microseconds since the epoch (Arrow's own representation,
# converted a column at a time), made by a function generated once per table.

Row = tuple[Any, ...]

#: The milliseconds a ``datetime`` (years 1 to 9999) can hold, as ``_timestamp`` accepts.
MIN_MS = (datetime(1, 1, 1, tzinfo=UTC) - _EPOCH) // timedelta(milliseconds=1)
MAX_MS = (datetime(9999, 12, 31, 23, 59, 59, 999000, tzinfo=UTC) - _EPOCH) // timedelta(
    milliseconds=1
)


def refuse(message: str) -> None:
    """Raise :class:`MappingError` (generated readers call it)."""
    raise MappingError(message)


@cache
def row_reader(table: TableDef) -> Any:
    """A function: decoded Avro record -> :data:`Row`, raising :class:`MappingError` as
    ``to_row`` does (a required column without a value, a decimal that is not a
    ``Decimal``, a timestamp beyond a datetime's range)."""
    lines = ["def read(r):"]
    parents: dict[tuple[str, ...], str] = {(): "r"}

    def parent(path: tuple[str, ...]) -> str:
        if path not in parents:
            outer = parent(path[:-1])
            name = parents[path] = f"p{len(parents)}"
            lines.append(f"    {name} = None if {outer} is None else {outer}.get({path[-1]!r})")
        return parents[path]

    values = []
    for i, column in enumerate(columns(table)):
        holder = parent(column.path[:-1])
        lines.append(f"    v{i} = None if {holder} is None else {holder}.get({column.path[-1]!r})")
        if column.required:
            missing = f"{table.name}.{column.name} is required but the record has none"
            lines.append(f"    if v{i} is None: _reject({missing!r})")
        if column.kind == TIMESTAMP:
            lines.append(f"    if v{i} is not None:")
            lines.append(f"        if not MIN_MS <= v{i} <= MAX_MS:")
            lines.append(
                f"            _reject(f'timestamp {{v{i}}} ms is beyond what a datetime holds')"
            )
            lines.append(f"        v{i} = v{i} * 1000")
        elif column.kind == DECIMAL:
            lines.append(f"    if v{i} is not None and v{i}.__class__ is not Decimal:")
            expected = f"{column.name}: expected a Decimal, got "
            lines.append(f"        _reject({expected!r} + type(v{i}).__name__)")
        elif column.kind == STRINGS:
            lines.append(f"    if v{i} is not None: v{i} = list(v{i})")
        values.append(f"v{i}")
    lines.append(f"    return ({', '.join(values)},)")
    scope: dict[str, Any] = {
        "_reject": refuse,
        "Decimal": Decimal,
        "MIN_MS": MIN_MS,
        "MAX_MS": MAX_MS,
    }
    exec(compile("\n".join(lines), f"<row reader {table.name}>", "exec"), scope)  # noqa: S102
    return scope["read"]


def as_row(table: TableDef, row: Mapping[str, Any] | Row) -> Row:
    """A ``to_row`` dict as a :data:`Row` (a Row is returned as it is)."""
    if isinstance(row, tuple):
        return row
    out = []
    for column in columns(table):
        value = row.get(column.name)
        if column.kind == TIMESTAMP and isinstance(value, datetime):
            value = (value - _EPOCH) // timedelta(microseconds=1)
        out.append(value)
    return tuple(out)


def position(table: TableDef, name: str) -> int:
    """Where column ``name`` sits in a :data:`Row`."""
    return [c.name for c in columns(table)].index(name)


def latest_rows(table: TableDef, batch: Iterable[Row]) -> list[Row]:
    """:func:`unique_rows` for :data:`Row` tuples: one per key, for versioned tables the
    highest version (the first of equal ones), else the first seen."""
    keys = [position(table, k) for k in table.key]
    chosen: dict[Any, Row] = {}
    if table.version_column is not None:
        (k,), v = keys, position(table, table.version_column)
        for row in batch:
            current = chosen.get(row[k])
            if current is None or row[v] > current[v]:
                chosen[row[k]] = row
    elif len(keys) == 1:
        (k,) = keys
        for row in batch:
            chosen.setdefault(row[k], row)
    else:
        for row in batch:
            chosen.setdefault(tuple(row[i] for i in keys), row)
    return list(chosen.values())
