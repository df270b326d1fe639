"""The Iceberg side: catalog, table schemas and partitioning, the offsets kept in snapshots.

The consumed Kafka offsets live in the summary of the snapshot that holds
their rows (property ``hookline.kafka-offsets``), as the Iceberg Kafka Connect
sink does: the rows and the position that produced them are committed in one
atomic catalog operation, so after any crash the table itself says where to
resume. Kafka's group offsets are only a copy for lag dashboards.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
from hookline.warehouse import rows
from hookline.warehouse.rows import Column, TableDef
from pyiceberg.catalog import Catalog, load_catalog
from pyiceberg.catalog.sql import SqlCatalog
from pyiceberg.exceptions import NoSuchTableError
from pyiceberg.partitioning import PartitionField, PartitionSpec
from pyiceberg.schema import Schema
from pyiceberg.table import Table
from pyiceberg.table.snapshots import ancestors_of
from pyiceberg.transforms import DayTransform
from pyiceberg.types import (
    BooleanType,
    DecimalType,
    DoubleType,
    IcebergType,
    IntegerType,
    ListType,
    LongType,
    NestedField,
    StringType,
    TimestamptzType,
)

log = logging.getLogger(__name__)

#: Snapshot summary property: {"<topic>": {"<partition>": next offset}}.
OFFSETS_PROPERTY = "hookline.kafka-offsets"
#: The catalog name of the embedded default (PRODUCT.md section 5).
EMBEDDED_CATALOG = "hookline"

TABLE_PROPERTIES = {
    # A conflicting commit must come back to the sink, which re-checks its
    # offsets against the winner's; pyiceberg's own retry would re-apply the
    # same rows on top of it and could land them twice.
    "commit.retry.num-retries": "0",
    # One manifest per commit would make every scan plan slower with age.
    "commit.manifest-merge.enabled": "true",
    "write.metadata.delete-after-commit.enabled": "true",
    "write.metadata.previous-versions-max": "50",
    "write.parquet.compression-codec": "zstd",
    "hookline.written-by": "hookline sink",
}


class WarehouseError(RuntimeError):
    """The catalog or its storage could not be reached or refused an operation."""


@dataclass(frozen=True)
class WarehouseConfig:
    """Where the tables live: a local folder (embedded SQLite catalog) or a named catalog."""

    directory: Path | None = None
    catalog_name: str | None = None

    def describe(self) -> str:
        if self.catalog_name:
            return f"catalog {self.catalog_name!r} (pyiceberg configuration)"
        return f"{self.directory} (SQLite catalog {EMBEDDED_CATALOG!r} at catalog.db)"


def open_catalog(config: WarehouseConfig) -> Catalog:
    """The configured catalog, checked to answer (a listing), or :class:`WarehouseError`."""
    try:
        if config.catalog_name:
            # ~/.pyiceberg.yaml or PYICEBERG_CATALOG__<NAME>__URI and friends.
            catalog = load_catalog(config.catalog_name)
        else:
            assert config.directory is not None
            directory = config.directory.resolve()
            directory.mkdir(parents=True, exist_ok=True)
            catalog = SqlCatalog(
                EMBEDDED_CATALOG,
                uri=f"sqlite:///{directory / 'catalog.db'}",
                warehouse=directory.as_uri(),
            )
        catalog.list_namespaces()
    except Exception as exc:  # SQLAlchemy, HTTP, permission errors: all mean "not usable"
        raise WarehouseError(
            f"cannot reach the warehouse {config.describe()}: {type(exc).__name__}: {exc}"
        ) from exc
    return catalog


def _iceberg_type(column: Column) -> IcebergType:
    simple: dict[str, IcebergType] = {
        rows.STRING: StringType(),
        rows.LONG: LongType(),
        rows.INT: IntegerType(),
        rows.DOUBLE: DoubleType(),
        rows.BOOLEAN: BooleanType(),
        rows.TIMESTAMP: TimestamptzType(),
    }
    if column.kind in simple:
        return simple[column.kind]
    if column.kind == rows.DECIMAL:
        return DecimalType(column.precision, column.scale)
    if column.kind == rows.STRINGS:
        return ListType(element_id=0, element_type=StringType(), element_required=True)
    raise WarehouseError(f"no Iceberg type for column kind {column.kind!r}")


def iceberg_schema(table: TableDef) -> Schema:
    """Field ids here are placeholders: the catalog assigns fresh ones at creation."""
    fields = []
    next_id = 1
    for column in rows.columns(table):
        kind = _iceberg_type(column)
        if isinstance(kind, ListType):
            kind = ListType(next_id + 1, StringType(), element_required=True)
        fields.append(NestedField(next_id, column.name, kind, column.required, column.doc))
        next_id += 2 if isinstance(kind, ListType) else 1
    return Schema(*fields)


def partition_spec(schema: Schema, table: TableDef) -> PartitionSpec:
    source = schema.find_field(table.time_column)
    return PartitionSpec(
        PartitionField(source.field_id, 1000, DayTransform(), f"{table.time_column}_day")
    )


def ensure_table(catalog: Catalog, table: TableDef, environment: str) -> Table:
    """Create the namespace and table when missing; add columns the Avro schema gained."""
    identifier = table.identifier(environment)
    schema = iceberg_schema(table)
    try:
        catalog.create_namespace_if_not_exists(environment)
        try:
            found = catalog.load_table(identifier)
        except NoSuchTableError:
            found = catalog.create_table_if_not_exists(
                identifier,
                schema,
                partition_spec=partition_spec(schema, table),
                properties=TABLE_PROPERTIES,
            )
            log.info("created table %s", identifier)
        have = {f.name for f in found.schema().fields}
        missing = [f.name for f in schema.fields if f.name not in have]
        if missing:
            with found.update_schema() as update:
                update.union_by_name(schema)
            log.info("table %s: added column(s) %s", identifier, ", ".join(missing))
            found = catalog.load_table(identifier)
    except WarehouseError:
        raise
    except Exception as exc:
        raise WarehouseError(
            f"cannot create or open table {identifier}: {type(exc).__name__}: {exc}"
        ) from exc
    return found


def all_offsets(table: Table) -> dict[str, dict[int, int]]:
    """The offsets of the newest snapshot that carries them (walking back past others'
    snapshots, e.g. a compaction that did not copy them)."""
    for snapshot in ancestors_of(table.current_snapshot(), table.metadata):
        summary = snapshot.summary
        raw = summary.get(OFFSETS_PROPERTY) if summary is not None else None
        if raw:
            return {
                topic: {int(p): int(o) for p, o in parts.items()}
                for topic, parts in json.loads(raw).items()
            }
    return {}


def offsets_property(offsets: dict[str, dict[int, int]]) -> dict[str, str]:
    encoded = {
        topic: {str(p): o for p, o in sorted(parts.items())}
        for topic, parts in sorted(offsets.items())
    }
    return {OFFSETS_PROPERTY: json.dumps(encoded, separators=(",", ":"))}


def arrow_rows(table: Table, values: list[dict[str, Any]]) -> pa.Table:
    """Rows in the table's own Arrow schema (so extra or evolved columns line up)."""
    schema = table.schema().as_arrow()
    names = set(schema.names)
    return pa.Table.from_pylist(
        [{k: v for k, v in row.items() if k in names} for row in values], schema=schema
    )


def arrow_table(table: Table, batch: pa.Table) -> pa.Table:
    """Rows in ``row_batches.layout`` as the table's own Arrow schema (columns the table
    has and the record has not are null; a column the table widened is cast)."""
    schema = table.schema().as_arrow()
    arrays = []
    for field in schema:
        if field.name not in batch.column_names:
            arrays.append(pa.nulls(batch.num_rows, field.type))
            continue
        column = batch.column(field.name)
        arrays.append(column if column.type == field.type else column.cast(field.type))
    return pa.Table.from_arrays(arrays, schema=schema)
