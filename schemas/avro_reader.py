"""Avro binary decoding, compiled once per schema into a plain Python function.

Why: ``fastavro.schemaless_reader`` walks the schema for every record, 10 to
30 µs for ours, and decoding was about 14 % of a stream worker's CPU. The
schemas never change while a process runs, so :func:`compile_reader` turns one
schema into Python source with every field, length and branch read written
out, and ``exec``s it once: the counterpart of :mod:`.avro_writer`. A reader
takes the bytes and the position the value starts at and returns the value
and the position after it, so ``codec.py`` skips the single-object header
without copying and still sees trailing bytes.

Valid data decodes to exactly what ``fastavro.schemaless_reader`` returns for
the same schema (the tests compare the two on real and random records, types
included): dict keys in field order, ``str``, ``bytes``, ``int``, ``bool``,
``None``, ``float``, enum symbols as ``str``, and for a decimal the same
``Decimal``, exponent included: ``-scale``, or for a value with more digits
than its precision (fastavro's writer let some through) that value rounded to
the precision, as fastavro rounds it.

Invalid data raises :class:`ValueError`: :class:`UnicodeDecodeError` for a
string that is not UTF-8 (as fastavro), :class:`InvalidData` for the rest,
including where fastavro returns something: data that ends early (a slice
past the end is merely short, so every length is checked), a negative length,
a varint longer than 10 bytes or beyond 64 bits, an int beyond 32 bits, a
boolean byte other than 0 or 1, an enum or union index out of range (fastavro
takes -1 as the last one). The work is bounded by the input: a block count is
refused when its items, at their smallest encoding, could not fit in the bytes
left (arrays of items that can take no bytes are not compiled), and a decimal
beyond :data:`DECIMAL_BITS` is refused, so hostile bytes can neither loop for
long nor allocate much more than their own size. Negative block counts (the
count, then the block's size in bytes) are read as fastavro reads them, the
size skipped.

Schema features it does not compile (recursive records, logical types other
than a decimal on bytes or fixed, arrays of items that can take no bytes)
raise :class:`UnsupportedSchema`, so the caller can keep using fastavro for
that schema.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Mapping
from decimal import Context, Decimal
from itertools import count
from typing import Any

from hookline.schemas.avro_codegen import (
    PRIMITIVES,
    SourceBuilder,
    UnsupportedSchema,
    load,
    parsed,
)

__all__ = ["InvalidData", "Reader", "UnsupportedSchema", "compile_reader"]

#: A compiled schema: the data and the position its value starts at in, the
#: value and the position after it out.
Reader = Callable[[bytes, int], tuple[Any, int]]

INT_MIN, INT_MAX = -(2**31), 2**31 - 1


class InvalidData(ValueError):
    """Bytes that are not an Avro encoding of a value of the schema."""


def _varint_slowly(data: bytes, pos: int) -> tuple[int, int]:
    """A varint of any length: refused beyond 10 bytes or 64 bits (fastavro takes 11 bytes)."""
    b = data[pos]
    z = b & 0x7F
    shift = 7
    pos += 1
    while b & 0x80:
        if shift > 63:
            raise InvalidData("an Avro varint longer than 10 bytes")
        b = data[pos]
        pos += 1
        z |= (b & 0x7F) << shift
        shift += 7
    if z >> 64:
        raise InvalidData("an Avro varint beyond 64 bits")
    return z, pos


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    """The raw (zig-zag) varint at ``pos`` and the position after it.

    The compiled code reads the common forms itself (one-byte varints, lengths
    up to two bytes, six-byte timestamps) and calls this for the rest, such as
    ``dedup_window_ms``; unrolled up to six bytes, a third quicker than the loop.
    """
    b = data[pos]
    z = b & 0x7F
    if b < 0x80:
        return z, pos + 1
    b = data[pos + 1]
    z |= (b & 0x7F) << 7
    if b < 0x80:
        return z, pos + 2
    b = data[pos + 2]
    z |= (b & 0x7F) << 14
    if b < 0x80:
        return z, pos + 3
    b = data[pos + 3]
    z |= (b & 0x7F) << 21
    if b < 0x80:
        return z, pos + 4
    b = data[pos + 4]
    z |= (b & 0x7F) << 28
    if b < 0x80:
        return z, pos + 5
    b = data[pos + 5]
    z |= (b & 0x7F) << 35
    if b < 0x80:
        return z, pos + 6
    return _varint_slowly(data, pos)


def _long(data: bytes, pos: int) -> tuple[int, int]:
    """An Avro long (any number of bytes) and the position after it."""
    z, pos = _varint(data, pos)
    return (z >> 1) ^ -(z & 1), pos


def _int(data: bytes, pos: int) -> tuple[int, int]:
    """An Avro int: a long in the 32-bit range (fastavro does not check the range)."""
    value, pos = _long(data, pos)
    if not INT_MIN <= value <= INT_MAX:
        raise InvalidData(f"{value} is outside the Avro int range")
    return value, pos


def _span(data: bytes, pos: int) -> tuple[int, int]:
    """Where the contents of a string or bytes value start and end, for any length prefix."""
    z, pos = _varint(data, pos)
    if z & 1:
        raise InvalidData(f"negative length {(z >> 1) ^ -1}")
    return pos, pos + (z >> 1)


def _count(data: bytes, pos: int) -> tuple[int, int]:
    """A block's item count; a negative count is followed by the block's size, skipped."""
    z, pos = _varint(data, pos)
    if z & 1:  # negative: -count, then the block size in bytes, which fastavro ignores too
        _, pos = _varint(data, pos)
        return (z >> 1) + 1, pos
    return z >> 1, pos


def _index(data: bytes, pos: int, size: int, what: str) -> tuple[int, int]:
    """An enum or union index checked against ``size`` choices (fastavro wraps -1 around)."""
    index, pos = _long(data, pos)
    if not 0 <= index < size:
        raise InvalidData(f"{what} index {index} is not below {size}")
    return index, pos


def _truncated() -> InvalidData:
    return InvalidData("the Avro data ends before the value does")


def _too_many(items: int, left: int) -> InvalidData:
    return InvalidData(f"a block of {items} items cannot fit in the {left} bytes left")


def _not_boolean(byte: int) -> InvalidData:
    return InvalidData(f"an Avro boolean is 0 or 1, not {byte}")


def _no_branch(raw: int, branches: int) -> InvalidData:
    index = (raw >> 1) ^ -(raw & 1)
    return InvalidData(f"union branch {index} is not below {branches}")


#: The largest unscaled decimal read, in bits (about 1230 digits): converting a
#: huge integer to a Decimal takes time quadratic in its size, a second for
#: 100 kB. fastavro's writer counts the digits of a Decimal's coefficient only,
#: so it wrote ``Decimal("1E+100")`` at scale 4 as 105 digits: far below this.
DECIMAL_BITS = 4096


def _rounded_decimal(precision: int, scale: int) -> Callable[[int], Decimal]:
    """An unscaled decimal with more digits than its precision, rounded as fastavro rounds it.

    fastavro's ``read_decimal`` converts the unscaled integer in a context of
    the schema's precision, rounding half even, then scales it by ``-scale``:
    the exponent comes out larger than ``-scale``. Its writer let such values
    through, so records from before the compiled writer may hold some.
    """
    context = Context(prec=precision)

    def decode(unscaled: int) -> Decimal:
        if unscaled.bit_length() > DECIMAL_BITS:
            raise InvalidData(f"a decimal of {unscaled.bit_length()} bits")
        return context.create_decimal(unscaled).scaleb(-scale, context)

    return decode


#: A byte to a boolean: None for what is neither 0 nor 1.
_BOOLEAN: tuple[bool | None, ...] = (False, True) + (None,) * 254


class _Compiler(SourceBuilder):
    """Emits the Python source of one reader; each ``emit*`` method reads one value.

    Emitted code reads the bytes ``data`` from the local position ``pos`` and
    leaves ``pos`` after the value; ``size`` is ``len(data)``. Each value
    lands in a fresh local (``v1``, ``v2``...), and a record is built from its
    fields' locals at its end, so nothing a nested value reads overwrites
    anything its parent still needs; ``b``, ``c``, ``u``, ``n`` and ``end``
    are scratch, used and finished within one length, count or branch.
    """

    def __init__(self, named: Mapping[str, Any]) -> None:
        namespace: dict[str, Any] = {
            "_BOOLEAN": _BOOLEAN,
            "_Decimal": Decimal,
            "_from_bytes": int.from_bytes,
            "_varint": _varint,
            "_long": _long,
            "_int": _int,
            "_span": _span,
            "_count": _count,
            "_index": _index,
            "_truncated": _truncated,
            "_too_many": _too_many,
            "_not_boolean": _not_boolean,
            "_no_branch": _no_branch,
            "_unpack_float": struct.Struct("<f").unpack_from,
            "_unpack_double": struct.Struct("<d").unpack_from,
        }
        super().__init__(named, namespace)
        self._values = count(1)
        self._inlining: list[str] = []

    def fresh(self) -> str:
        """A local name no other value of the reader uses."""
        return f"v{next(self._values)}"

    def kind(self, schema: Any) -> str:
        """``schema``'s type for code generation: a primitive, a complex type, or "decimal".

        A logical type fastavro converts (timestamps, uuid...) would need the
        same conversion here; only the decimal is compiled, the rest refused.
        """
        schema = self.resolve(schema)
        if isinstance(schema, str):
            return schema
        if isinstance(schema, list):
            return "union"
        if not isinstance(schema, dict):
            raise UnsupportedSchema(f"not an Avro schema: {schema!r}")
        kind = schema["type"]
        logical = schema.get("logicalType")
        if logical is None:
            if isinstance(kind, str) and kind in PRIMITIVES:
                return kind
            if kind in ("record", "enum", "array", "map", "fixed"):
                return kind
            raise UnsupportedSchema(f"type {kind!r} is not compiled")
        if kind in ("bytes", "fixed") and logical == "decimal":
            return "decimal"
        raise UnsupportedSchema(f"logical type {logical!r} on {kind!r} is not compiled")

    def min_size(self, schema: Any) -> int:
        """The fewest bytes a value of ``schema`` takes: what bounds a block's item count."""
        kind = self.kind(schema)
        schema = self.resolve(schema)
        if kind == "null":
            return 0
        if kind == "float":
            return 4
        if kind == "double":
            return 8
        if kind == "fixed" or (kind == "decimal" and schema["type"] == "fixed"):
            return int(schema["size"])
        if kind == "record":
            if schema["name"] in self._inlining:
                raise UnsupportedSchema(f"recursive record {schema['name']!r} is not compiled")
            self._inlining.append(schema["name"])
            try:
                return sum(self.min_size(field["type"]) for field in schema["fields"])
            finally:
                self._inlining.pop()
        if kind == "union":
            if not schema:
                raise UnsupportedSchema("an empty union")
            return 1 + min(self.min_size(branch) for branch in schema)
        return 1  # a varint, a length or a block count: at least one byte

    def emit(self, schema: Any, target: str, indent: int) -> None:
        """Code reading one value of ``schema`` into the local ``target``."""
        kind = self.kind(schema)
        schema = self.resolve(schema)
        if kind == "string":
            self.emit_span(indent)
            self.line(indent, f"{target} = data[pos:end].decode()")
            self.line(indent, "pos = end")
        elif kind == "bytes":
            self.emit_span(indent)
            self.line(indent, f"{target} = data[pos:end]")
            self.line(indent, "pos = end")
        elif kind == "long":
            self.emit_long(target, indent)
        elif kind == "int":
            self.line(indent, "b = data[pos]")
            self.line(indent, "if b < 128:")
            self.line(indent + 1, "pos += 1")
            self.line(indent + 1, f"{target} = (b >> 1) ^ -(b & 1)")
            self.line(indent, "else:")
            self.line(indent + 1, f"{target}, pos = _int(data, pos)")
        elif kind == "boolean":
            self.line(indent, f"{target} = _BOOLEAN[data[pos]]")
            self.line(indent, "pos += 1")
            self.line(indent, f"if {target} is None:")
            self.line(indent + 1, "raise _not_boolean(data[pos - 1])")
        elif kind == "null":
            self.line(indent, f"{target} = None")
        elif kind in ("float", "double"):
            width = 4 if kind == "float" else 8
            self.line(indent, f"if pos + {width} > size:")
            self.line(indent + 1, "raise _truncated()")
            self.line(indent, f"{target} = _unpack_{kind}(data, pos)[0]")
            self.line(indent, f"pos += {width}")
        elif kind == "fixed":
            self.emit_fixed(int(schema["size"]), indent)
            self.line(indent, f"{target} = data[pos:end]")
            self.line(indent, "pos = end")
        elif kind == "decimal":
            self.emit_decimal(schema, target, indent)
        elif kind == "enum":
            self.emit_enum(schema, target, indent)
        elif kind == "record":
            self.emit_record(schema, target, indent)
        elif kind == "array":
            self.emit_array(schema, target, indent)
        elif kind == "map":
            self.emit_map(schema, target, indent)
        elif kind == "union":
            self.emit_union(schema, target, indent)
        else:
            raise UnsupportedSchema(f"type {kind!r} is not compiled")

    def emit_span(self, indent: int) -> None:
        """Code reading a length prefix: the contents are then ``data[pos:end]``.

        Lengths below 64 take one byte and below 8192 two, read here; the rest
        (and a negative length, which raises) go through ``_span``. ``end`` is
        checked against ``size`` because a slice past the end is merely short.
        """
        self.line(indent, "b = data[pos]")
        self.line(indent, "if not b & 129:")  # one byte, even: 0 <= length < 64
        self.line(indent + 1, "pos += 1")
        self.line(indent + 1, "end = pos + (b >> 1)")
        self.line(indent, "elif not b & 1 and (c := data[pos + 1]) < 128:")  # two bytes
        self.line(indent + 1, "pos += 2")
        self.line(indent + 1, "end = pos + ((b & 127) >> 1 | c << 6)")
        self.line(indent, "else:")
        self.line(indent + 1, "pos, end = _span(data, pos)")
        self.line(indent, "if end > size:")
        self.line(indent + 1, "raise _truncated()")

    def emit_long(self, target: str, indent: int) -> None:
        """A long: one byte and six (a timestamp in milliseconds) read here, the rest by a call.

        The six-byte form is 2**34 to 2**41 - 1 in magnitude: milliseconds from
        mid-1970 to 2039, most of the longs in our records. Each byte is read
        only after the one before it said more follows, so running off the end
        is truncation, never a misread shorter varint. The 28 low bits are
        gathered first, in small ints; then one shift and one ``|``.
        """
        self.line(indent, "b = data[pos]")
        self.line(indent, "if b < 128:")
        self.line(indent + 1, "pos += 1")
        self.line(indent + 1, f"{target} = (b >> 1) ^ -(b & 1)")
        self.line(
            indent,
            "elif (b1 := data[pos + 1]) > 127 and (b2 := data[pos + 2]) > 127"
            " and (b3 := data[pos + 3]) > 127 and (b4 := data[pos + 4]) > 127"
            " and (b5 := data[pos + 5]) < 128:",
        )
        # Less the four continuation bits: 2**7 + 2**14 + 2**21 + 2**28.
        self.line(indent + 1, "z = b + (b1 << 7) + (b2 << 14) + (b3 << 21) - 270549120")
        self.line(indent + 1, f"{target} = z >> 1 | (b4 - 128 + (b5 << 7)) << 27")
        self.line(indent + 1, "if z & 1:")
        self.line(indent + 2, f"{target} = -{target} - 1")
        self.line(indent + 1, "pos += 6")
        self.line(indent, "else:")
        self.line(indent + 1, "z, pos = _varint(data, pos)")
        self.line(indent + 1, f"{target} = (z >> 1) ^ -(z & 1)")

    def emit_fixed(self, width: int, indent: int) -> None:
        self.line(indent, f"end = pos + {width}")
        self.line(indent, "if end > size:")
        self.line(indent + 1, "raise _truncated()")

    def emit_decimal(self, schema: dict[str, Any], target: str, indent: int) -> None:
        """The unscaled integer, then the Decimal fastavro makes of it.

        Within the precision that is ``Decimal(unscaled).scaleb(-scale)``
        (exact, so the exponent is ``-scale``: ``Decimal("0.0000")`` for zero);
        beyond it, see :func:`_rounded_decimal`. Both in a context of the
        schema's precision, as fastavro's, not the thread's.
        """
        precision, scale = schema.get("precision"), schema.get("scale", 0)
        valid = type(precision) is int and type(scale) is int and 0 <= scale <= precision
        if not (valid and precision > 0):
            raise UnsupportedSchema(f"decimal precision {precision!r} and scale {scale!r}")
        if schema["type"] == "fixed":
            self.emit_fixed(int(schema["size"]), indent)
        else:
            self.emit_span(indent)
        context = self.constant(Context(prec=precision), "context")
        rounded = self.constant(_rounded_decimal(precision, scale), "rounded")
        self.line(indent, "n = _from_bytes(data[pos:end], 'big', signed=True)")
        self.line(indent, f"if {-(10**precision)} < n < {10**precision}:")
        self.line(indent + 1, f"{target} = _Decimal(n).scaleb({-scale}, {context})")
        self.line(indent, "else:")
        self.line(indent + 1, f"{target} = {rounded}(n)")
        self.line(indent, "pos = end")

    def emit_enum(self, schema: dict[str, Any], target: str, indent: int) -> None:
        """One lookup by the index byte (indexes below 64); the rest through ``_index``."""
        symbols = tuple(schema["symbols"])
        by_byte = [None] * 256
        for index, symbol in enumerate(symbols[:64]):
            by_byte[2 * index] = symbol
        table = self.constant(tuple(by_byte), "enum")
        self.line(indent, f"{target} = {table}[data[pos]]")
        self.line(indent, f"if {target} is None:")
        self.line(indent + 1, f"u, pos = _index(data, pos, {len(symbols)}, 'enum')")
        self.line(indent + 1, f"{target} = {self.constant(symbols, 'symbols')}[u]")
        self.line(indent, "else:")
        self.line(indent + 1, "pos += 1")

    def emit_record(self, schema: dict[str, Any], target: str, indent: int) -> None:
        name = schema["name"]
        if name in self._inlining:
            raise UnsupportedSchema(f"recursive record {name!r} is not compiled")
        self._inlining.append(name)
        fields = []
        for field in schema["fields"]:
            value = self.fresh()
            self.emit(field["type"], value, indent)
            fields.append(f"{field['name']!r}: {value}")
        self.line(indent, f"{target} = {{{', '.join(fields)}}}")
        self._inlining.pop()

    def emit_blocks(self, least: int, body: Callable[[int], None], indent: int) -> None:
        """The blocks of an array or map: ``body`` emits the code for one item at an indent.

        A block's count is refused when its items, at ``least`` bytes each,
        cannot fit in the bytes left: the work and the memory stay bounded by
        the input, whatever count it claims. Most arrays are one block of
        fewer than 64 items, or none: one count byte, then the ``0`` that ends
        them.
        """
        self.line(indent, "c = data[pos]")
        self.line(indent, "pos += 1")
        self.line(indent, "while c:")
        self.line(indent + 1, "if c & 129:")  # not one byte, or negative: the general case
        self.line(indent + 2, "n, pos = _count(data, pos - 1)")
        self.line(indent + 2, "if not n:")
        self.line(indent + 3, "break")
        self.line(indent + 1, "else:")
        self.line(indent + 2, "n = c >> 1")
        fits = "n > size - pos" if least == 1 else f"n * {least} > size - pos"
        self.line(indent + 1, f"if {fits}:")
        self.line(indent + 2, "raise _too_many(n, size - pos)")
        self.line(indent + 1, "for _ in range(n):")
        body(indent + 2)
        self.line(indent + 1, "c = data[pos]")
        self.line(indent + 1, "pos += 1")

    def emit_array(self, schema: dict[str, Any], target: str, indent: int) -> None:
        items = schema["items"]
        least = self.min_size(items)
        if least == 0:  # a count could claim any number of them
            raise UnsupportedSchema("an array of items that take no bytes is not compiled")
        item = self.fresh()

        def body(indent: int) -> None:
            self.emit(items, item, indent)
            self.line(indent, f"{target}.append({item})")

        self.line(indent, f"{target} = []")
        self.emit_blocks(least, body, indent)

    def emit_map(self, schema: dict[str, Any], target: str, indent: int) -> None:
        """Entries in the order written; a repeated key keeps its first place, its last value."""
        values = schema["values"]
        key, item = self.fresh(), self.fresh()

        def body(indent: int) -> None:
            self.emit("string", key, indent)
            self.emit(values, item, indent)
            self.line(indent, f"{target}[{key}] = {item}")

        self.line(indent, f"{target} = {{}}")
        self.emit_blocks(1 + self.min_size(values), body, indent)  # a key takes a byte

    def emit_union(self, schema: list[Any], target: str, indent: int) -> None:
        """Branch ``i`` is the varint ``2 * i``: one byte below 64 branches, compared as read."""
        if not schema:
            raise UnsupportedSchema("an empty union")
        self.line(indent, "u = data[pos]")
        self.line(indent, "if u < 128:")
        self.line(indent + 1, "pos += 1")
        self.line(indent, "else:")
        self.line(indent + 1, "u, pos = _varint(data, pos)")
        for index, branch in enumerate(schema):
            if self.kind(branch) == "union":
                raise UnsupportedSchema("a union directly inside a union is not valid Avro")
            self.line(indent, f"{'if' if index == 0 else 'elif'} u == {2 * index}:")
            self.emit(branch, target, indent + 1)
        self.line(indent, "else:")
        self.line(indent + 1, f"raise _no_branch(u, {len(schema)})")


def compile_reader(schema: Any, name: str | None = None) -> Reader:
    """A function reading a value of ``schema`` from ``data`` at ``pos``: ``(value, end)``.

    ``schema`` is a schema parsed by ``fastavro.parse_schema`` (named types are
    looked up in its ``__named_schemas``); an unparsed one is parsed first.
    ``data`` is ``bytes`` (a ``bytearray`` works but yields bytearrays for
    bytes values). ``name`` labels the generated source in tracebacks. Raises
    :class:`UnsupportedSchema` for what is not compiled; the function raises
    :class:`ValueError` for data that is not a value of the schema.
    """
    schema, named = parsed(schema)
    compiler = _Compiler(named)
    compiler.line(0, "def read(data, pos):")
    compiler.line(1, "size = len(data)")
    compiler.line(1, "try:")
    compiler.emit(schema, "v0", 2)
    # data[pos] past the end: no check of its own on the hot path.
    compiler.line(1, "except IndexError:")
    compiler.line(2, "raise _truncated() from None")
    compiler.line(1, "return v0, pos")
    read: Reader = load(compiler, "read", "reader", schema, name)
    return read
