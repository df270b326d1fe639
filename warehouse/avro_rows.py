"""Single-object-encoded Avro bytes straight into a table's row, for the sink's hot path.

Why: decoding a record into nested dicts (``schemas.codec``) and then
picking its columns out of them (``rows.row_reader``) builds a dict per
record and per nested record only to take them apart again; for the sink
that was about 40 % of its CPU per record. :func:`compile_row_reader` turns
a table's current writer schema into one function, generated once, that
reads every field into a local and returns the table's :data:`rows.Row`:
the same values, the same refusals (``rows.row_reader``'s for a missing
required value or a timestamp a datetime cannot hold, ``ValueError`` for
bytes that are not the schema's), without the dicts.

It reuses the code generator of ``schemas/avro_reader.py`` (every length,
count and branch check is its own); only records are read differently:
their fields land in locals named by their path instead of a dict. A record
inside an array or a map is still read as a dict (no table column is one).

Only the table's *current* writer schema is compiled: a record written by
another release, of another type, or corrupt, goes the general way
(``codec.decode`` then ``rows.row_reader``), which resolves or refuses it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from hookline.schemas import codec
from hookline.schemas.avro_codegen import UnsupportedSchema, load, parsed
from hookline.schemas.avro_reader import _Compiler
from hookline.warehouse import rows

__all__ = ["compile_row_reader"]

#: bytes, position after the header -> (row, position after the record)
RowReader = Callable[[bytes, int], tuple[rows.Row, int]]


class _RowCompiler(_Compiler):
    def __init__(self, named: Any) -> None:
        super().__init__(named)
        self.leaves: dict[tuple[str, ...], str] = {}
        self._path: list[str] = []
        self._collections = 0

    def emit_record(self, schema: dict[str, Any], target: str, indent: int) -> None:
        if self._collections:
            super().emit_record(schema, target, indent)
            return
        name = schema["name"]
        if name in self._inlining:
            raise UnsupportedSchema(f"recursive record {name!r} is not compiled")
        self._inlining.append(name)
        for field in schema["fields"]:
            value = self.fresh()
            self._path.append(field["name"])
            self.leaves[tuple(self._path)] = value
            self.emit(field["type"], value, indent)
            self._path.pop()
        self.line(indent, f"{target} = True")  # present (a null branch leaves its fields None)
        self._inlining.pop()

    def emit_array(self, schema: dict[str, Any], target: str, indent: int) -> None:
        self._collections += 1
        super().emit_array(schema, target, indent)
        self._collections -= 1

    def emit_map(self, schema: dict[str, Any], target: str, indent: int) -> None:
        self._collections += 1
        super().emit_map(schema, target, indent)
        self._collections -= 1


def compile_row_reader(table: rows.TableDef) -> RowReader:
    """The reader of ``table``'s record in its current writer schema (see the module)."""
    schema, named = parsed(codec.REGISTRY.schema(table.record).plain)
    compiler = _RowCompiler(named)
    compiler.line(0, "def read(data, pos):")
    compiler.line(1, "size = len(data)")
    compiler.line(1, "try:")
    compiler.emit(schema, "v0", 2)
    compiler.line(1, "except IndexError:")
    compiler.line(2, "raise _truncated() from None")
    body = compiler.lines[1:]
    compiler.lines[1:] = [f"    {local} = None" for local in compiler.leaves.values()]
    compiler.lines += body
    compiler.namespace |= {"_reject": rows.refuse, "MIN_MS": rows.MIN_MS, "MAX_MS": rows.MAX_MS}
    values = []
    for column in rows.columns(table):
        value = compiler.leaves[column.path]
        if column.required:
            missing = f"{table.name}.{column.name} is required but the record has none"
            compiler.line(1, f"if {value} is None: _reject({missing!r})")
        if column.kind == rows.TIMESTAMP:
            compiler.line(1, f"if {value} is not None:")
            compiler.line(2, f"if not MIN_MS <= {value} <= MAX_MS:")
            compiler.line(
                3, f"_reject(f'timestamp {{{value}}} ms is beyond what a datetime holds')"
            )
            compiler.line(2, f"{value} *= 1000")
        values.append(value)
    compiler.line(1, f"return ({', '.join(values)},), pos")
    read: RowReader = load(compiler, "read", "row reader", schema, table.name)
    return read
