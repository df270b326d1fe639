"""Is a schema change fully compatible? Avro's schema-resolution rules, checked statically.

PRODUCT.md section 3 asks that every change be *fully* compatible: a new reader
reads old records (backward) and an old reader reads new records (forward).
fastavro resolves a writer schema against a reader schema only while it reads
data, so a missing union branch or enum symbol fails only on the record that
uses it; this module applies the same rules (Avro specification, "Schema
Resolution") to the schemas themselves and names every place that would fail.
Logical types are compared too: reading a ``decimal(18,4)`` as ``decimal(18,2)``
resolves fine in Avro and silently changes every amount.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

PRIMITIVES = frozenset({"null", "boolean", "int", "long", "float", "double", "bytes", "string"})
#: Writer type -> reader types it may be read as (Avro specification).
PROMOTIONS = {
    "int": {"long", "float", "double"},
    "long": {"float", "double"},
    "float": {"double"},
    "string": {"bytes"},
    "bytes": {"string"},
}

Named = Mapping[str, Any]


def named_types(parsed: Any) -> dict[str, Any]:
    """The named types a fastavro-parsed schema can refer to, itself included."""
    named: dict[str, Any] = {}
    if isinstance(parsed, dict):
        named.update(parsed.get("__named_schemas") or {})
        if "name" in parsed:
            named.setdefault(parsed["name"], parsed)
    return named


def _short(name: str) -> str:
    return name.rsplit(".", 1)[-1]


def _describe(node: Any) -> str:
    if isinstance(node, list):
        return "union[" + ", ".join(_describe(b) for b in node) + "]"
    if isinstance(node, dict):
        logical = node.get("logicalType")
        base = node.get("name") or node["type"]
        return f"{base} ({logical})" if logical else str(base)
    return str(node)


class _Resolution:
    """One direction: can a reader with ``reader`` read data written with ``writer``?"""

    def __init__(self, writer_named: Named, reader_named: Named) -> None:
        self.writer_named = writer_named
        self.reader_named = reader_named
        self._in_progress: set[tuple[str, str]] = set()  # recursive types

    @staticmethod
    def _resolve(node: Any, named: Named) -> Any:
        if isinstance(node, str) and node not in PRIMITIVES:
            if node not in named:
                raise ValueError(f"unknown named type {node!r}")
            return named[node]
        if isinstance(node, dict) and isinstance(node.get("type"), (dict, list)):
            return node["type"]  # {"type": {...}} wrapper
        if isinstance(node, dict) and node.get("type") not in PRIMITIVES | {
            "record",
            "error",
            "enum",
            "array",
            "map",
            "fixed",
        }:
            return _Resolution._resolve(node["type"], named)
        return node

    @staticmethod
    def _kind(node: Any) -> str:
        if isinstance(node, list):
            return "union"
        if isinstance(node, str):
            return node
        kind = str(node["type"])
        return "record" if kind == "error" else kind

    @staticmethod
    def _names_match(writer: dict[str, Any], reader: dict[str, Any]) -> bool:
        names = {reader["name"], _short(reader["name"])}
        names.update(reader.get("aliases", ()))
        return writer["name"] in names or _short(writer["name"]) in names

    def problems(self, writer: Any, reader: Any, path: str) -> list[str]:
        writer = self._resolve(writer, self.writer_named)
        reader = self._resolve(reader, self.reader_named)
        if isinstance(writer, list):
            # Every branch the writer may have used must be readable.
            found = []
            for branch in writer:
                found += self.problems(branch, reader, path)
            return found
        if isinstance(reader, list):
            if any(not self.problems(writer, branch, path) for branch in reader):
                return []
            return [
                f"{path}: a writer {_describe(writer)} matches no branch of {_describe(reader)}"
            ]
        wk, rk = self._kind(writer), self._kind(reader)
        if wk != rk:
            if rk in PROMOTIONS.get(wk, ()):
                return self._logical(writer, reader, path)
            return [
                f"{path}: written as {_describe(writer)}, cannot be read as {_describe(reader)}"
            ]
        if wk in PRIMITIVES:
            return self._logical(writer, reader, path)
        if wk == "record":
            return self._record(writer, reader, path)
        if wk == "enum":
            if not self._names_match(writer, reader):
                return [f"{path}: enum {writer['name']} cannot be read as {reader['name']}"]
            missing = [s for s in writer["symbols"] if s not in reader["symbols"]]
            if missing and "default" not in reader:
                return [
                    f"{path}: enum {reader['name']} lacks symbol(s) {missing} and has no default"
                ]
            return []
        if wk == "array":
            return self.problems(writer["items"], reader["items"], f"{path}[]")
        if wk == "map":
            return self.problems(writer["values"], reader["values"], f"{path}{{}}")
        if wk == "fixed":
            if not self._names_match(writer, reader) or writer["size"] != reader["size"]:
                return [f"{path}: fixed {_describe(writer)} cannot be read as {_describe(reader)}"]
            return self._logical(writer, reader, path)
        return [f"{path}: unknown Avro type {wk!r}"]

    @staticmethod
    def _logical(writer: Any, reader: Any, path: str) -> list[str]:
        w = writer.get("logicalType") if isinstance(writer, dict) else None
        r = reader.get("logicalType") if isinstance(reader, dict) else None
        if w != r:
            return [f"{path}: logical type {w or 'none'} changed to {r or 'none'}"]
        if w == "decimal":
            if writer.get("scale", 0) != reader.get("scale", 0):
                return [
                    f"{path}: decimal scale {writer.get('scale', 0)} changed to "
                    f"{reader.get('scale', 0)} (every amount would change)"
                ]
            if reader.get("precision", 0) < writer.get("precision", 0):
                return [
                    f"{path}: decimal precision {writer['precision']} narrowed to "
                    f"{reader['precision']}"
                ]
        return []

    def _record(self, writer: dict[str, Any], reader: dict[str, Any], path: str) -> list[str]:
        if not self._names_match(writer, reader):
            return [f"{path}: record {writer['name']} cannot be read as {reader['name']}"]
        key = (writer["name"], reader["name"])
        if key in self._in_progress:
            return []
        self._in_progress.add(key)
        try:
            written = {f["name"]: f for f in writer["fields"]}
            found = []
            for field in reader["fields"]:
                names = [field["name"], *field.get("aliases", ())]
                source = next((written[n] for n in names if n in written), None)
                where = f"{path}.{field['name']}" if path else field["name"]
                if source is None:
                    if "default" not in field:
                        found.append(f"{where}: missing in the writer and has no default")
                    continue
                found += self.problems(source["type"], field["type"], where)
            return found
        finally:
            self._in_progress.discard(key)


def read_problems(
    writer: Any, reader: Any, writer_named: Named | None = None, reader_named: Named | None = None
) -> list[str]:
    """Why ``reader`` cannot read every record written with ``writer`` (empty: it can)."""
    resolution = _Resolution(
        writer_named if writer_named is not None else named_types(writer),
        reader_named if reader_named is not None else named_types(reader),
    )
    return resolution.problems(writer, reader, "")


def full_problems(old: Any, new: Any) -> dict[str, list[str]]:
    """Both directions for two fastavro-parsed schemas: empty lists mean fully compatible."""
    return {
        "backward (new reader, old records)": read_problems(old, new),
        "forward (old reader, new records)": read_problems(new, old),
    }
