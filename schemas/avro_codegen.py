"""What the Avro writer and reader compilers share: source lines, constants, loading.

:mod:`.avro_writer` and :mod:`.avro_reader` each turn a schema into Python
source and ``exec`` it once. Both need the same scaffolding, kept here so the
two stay alike: a schema parsed the way fastavro parses it, named types
resolved, constants bound to fresh global names of the generated module, and
the source compiled under a file name that tracebacks can show the lines of.
"""

from __future__ import annotations

import linecache
from collections.abc import Callable, Mapping
from itertools import count
from typing import Any

import fastavro

__all__ = ["PRIMITIVES", "SourceBuilder", "UnsupportedSchema", "load", "parsed"]

PRIMITIVES = frozenset({"null", "boolean", "int", "long", "float", "double", "bytes", "string"})

_SOURCES = count()


class UnsupportedSchema(ValueError):
    """The schema uses a type or form the compiler does not compile."""


def parsed(schema: Any) -> tuple[Any, Mapping[str, Any]]:
    """``schema`` as ``fastavro.parse_schema`` gives it, and its named types.

    codec.py passes parsed schemas; anything else is parsed first.
    """
    if not (isinstance(schema, dict) and "__named_schemas" in schema):
        schema = fastavro.parse_schema(schema)
    named = schema.get("__named_schemas", {}) if isinstance(schema, dict) else {}
    return schema, named


class SourceBuilder:
    """The lines of one generated function and the globals its module sees."""

    def __init__(self, named: Mapping[str, Any], namespace: dict[str, Any]) -> None:
        self.named = named
        self.namespace = namespace
        self.lines: list[str] = []
        self._constants = count()

    def constant(self, value: Any, stem: str) -> str:
        """Bind ``value`` to a fresh global name of the generated module."""
        name = f"_{stem}{next(self._constants)}"
        self.namespace[name] = value
        return name

    def line(self, indent: int, text: str) -> None:
        self.lines.append("    " * indent + text)

    def resolve(self, schema: Any) -> Any:
        """The definition behind a named-type reference; other schemas as they are."""
        if isinstance(schema, str) and schema not in PRIMITIVES:
            try:
                return self.named[schema]
            except KeyError:
                raise UnsupportedSchema(f"unknown named type {schema!r}") from None
        return schema


def load(builder: SourceBuilder, function: str, kind: str, schema: Any, name: str | None) -> Any:
    """Compile the builder's lines and return the function ``function`` they define.

    ``kind`` ("writer", "reader") and ``name`` (else the schema's own) label
    the source, which is kept as the function's ``__source__``.
    """
    source = "\n".join(builder.lines) + "\n"
    label = name or (schema.get("name", "") if isinstance(schema, dict) else "")
    filename = f"<avro {kind} {label} #{next(_SOURCES)}>"
    # Tracebacks through generated code show its lines.
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    exec(compile(source, filename, "exec"), builder.namespace)  # noqa: S102 (our own source)
    generated: Callable[..., Any] = builder.namespace[function]
    action = "encoding" if kind == "writer" else "decoding"
    generated.__doc__ = f"Avro binary {action} of a {label or 'value'} (generated; see __source__)."
    generated.__source__ = source  # type: ignore[attr-defined]
    return generated
