"""Avro binary encoding, compiled once per schema into a plain Python function.

Why: ``fastavro.schemaless_writer`` walks the schema for every record and, for
each union such as ``["null", "hookline.OrderStatus"]``, validates the value
against the candidate branches before writing it. That generic walk was about
13 % of a worker's CPU. The schemas never change while a process runs, so
:func:`compile_writer` turns one schema into Python source with every field
read, branch test and constant written out, and ``exec``s it once; encoding a
record is then one call of straight-line code.

The output is byte for byte what ``fastavro.schemaless_writer`` writes (the
tests compare the two on real and random records), including its choices
where the Avro specification leaves room: an array or map is one block of
``count`` items then ``0``; a decimal is rescaled to the schema's scale and
written in ``(bit_length + 8) // 8`` bytes, as fastavro sizes it.

It is stricter than fastavro where fastavro silently coerces a wrong type:
a ``bool``, ``float`` or ``Decimal`` for a long, anything but ``True``/``False``
for a boolean, a string or set for an array, raw ``bytes`` for a decimal, or
a decimal beyond its precision once rescaled all raise instead of writing bytes
that mean something else. Schema features it does not compile (float, double,
fixed, unions other than null plus one type, logical types other than a bytes
decimal, recursive records) raise :class:`UnsupportedSchema`, so the caller can
keep using fastavro for that schema.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Mapping
from decimal import Decimal
from functools import cache
from typing import Any

from hookline.schemas.avro_codegen import (
    PRIMITIVES,
    SourceBuilder,
    UnsupportedSchema,
    load,
    parsed,
)

__all__ = ["UnsupportedSchema", "Writer", "avro_long", "compile_writer"]

#: A compiled schema: a record (any value of the schema) in, its Avro binary encoding out.
Writer = Callable[[Any], bytes]

LONG_MIN, LONG_MAX = -(2**63), 2**63 - 1
INT_MIN, INT_MAX = -(2**31), 2**31 - 1


def _varint(value: int) -> bytes:
    """Base-128 varint of a non-negative integer (an Avro long after zig-zag)."""
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


#: Every varint below 2**14, and every 14-bit group followed by more groups:
#: a varint of up to 56 bits is at most four lookups (a timestamp in
#: milliseconds, 6 bytes, is three) instead of a loop of shifts. About 1.7 MB.
_LAST = tuple(bytes((low,)) for low in range(0x80))  # a varint's last byte
_MORE = tuple(bytes((low | 0x80,)) for low in range(0x80))  # a byte with more to follow
_VARINT: tuple[bytes, ...] = _LAST + tuple(low + high for high in _LAST[1:] for low in _MORE)
_GROUP: tuple[bytes, ...] = tuple(low + high for high in _MORE for low in _MORE)

#: ``_SMALL[n]`` is the Avro long ``n`` (zig-zag ``2n``) for ``0 <= n < _SMALL_LIMIT``:
#: string and byte lengths, array counts, versions; the compiled code inlines it.
_SMALL_LIMIT = 1 << 13
_SMALL: tuple[bytes, ...] = _VARINT[::2]


#: Strings in a union (most optional fields): the branch index and the length
#: in one lookup, for lengths below this.
_TAGGED_LIMIT = 256


@cache
def _tagged_lengths(tag: bytes) -> tuple[bytes, ...]:
    return tuple(tag + _SMALL[n] for n in range(_TAGGED_LIMIT))


def avro_long(value: Any) -> bytes:
    """An Avro long: the general case (the compiled code inlines small non-negative ints).

    Also the gateway's, for the envelope bytes it writes itself (gateway/envelope.py).

    Accepts any integral number but ``bool``, like fastavro's union validation;
    a float or Decimal is a type error here, where fastavro would truncate it.
    """
    if type(value) is not int:
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise TypeError(f"an Avro long needs an int, not {type(value).__name__}")
        value = int(value)
    if not LONG_MIN <= value <= LONG_MAX:
        raise OverflowError(f"{value} is outside the Avro long range")
    z = (value << 1) ^ (value >> 63)  # zig-zag
    if z < 1 << 14:
        return _VARINT[z]
    if z < 1 << 28:
        return _GROUP[z & 0x3FFF] + _VARINT[z >> 14]
    if z < 1 << 42:
        return _GROUP[z & 0x3FFF] + _GROUP[z >> 14 & 0x3FFF] + _VARINT[z >> 28]
    if z < 1 << 56:
        return (
            _GROUP[z & 0x3FFF]
            + _GROUP[z >> 14 & 0x3FFF]
            + _GROUP[z >> 28 & 0x3FFF]
            + _VARINT[z >> 42]
        )
    return _varint(z)


def _int(value: Any) -> bytes:
    """An Avro int: a long in the 32-bit range."""
    encoded = avro_long(value)  # the type checks
    if not INT_MIN <= value <= INT_MAX:
        raise OverflowError(f"{value} is outside the Avro int range")
    return encoded


def _length(size: int) -> bytes:
    """The length prefix of a string, bytes value or block count."""
    return _SMALL[size] if size < _SMALL_LIMIT else avro_long(size)


def _as_record(value: Any) -> Mapping[str, Any]:
    """A record value that is not a plain dict: any Mapping, read through a dict copy.

    The copy keeps a ``defaultdict`` from inventing a missing field.
    """
    if isinstance(value, Mapping):
        return dict(value)
    raise TypeError(f"an Avro record needs a mapping, not {type(value).__name__}")


def _as_array(value: Any) -> list[Any] | tuple[Any, ...]:
    """An array value that is not a plain list: a tuple (or list subclass) is fine.

    fastavro takes any iterable, so a string would become an array of its
    characters and a dict one of its keys: those are type errors here.
    """
    if isinstance(value, list | tuple):
        return value
    raise TypeError(f"an Avro array needs a list or tuple, not {type(value).__name__}")


def _as_map(value: Any) -> Mapping[str, Any]:
    if isinstance(value, Mapping):
        return value
    raise TypeError(f"an Avro map needs a mapping, not {type(value).__name__}")


def _bytes(value: Any) -> bytes:
    """An Avro bytes value: length, then the bytes."""
    if not isinstance(value, bytes | bytearray):
        raise TypeError(f"Avro bytes need bytes or bytearray, not {type(value).__name__}")
    return _length(len(value)) + value


def _not_boolean(value: Any) -> TypeError:
    # fastavro writes any truthy value as true, so None or "false" would become a flag.
    return TypeError(f"an Avro boolean needs True or False, not {value!r}")


def _not_null(value: Any) -> TypeError:
    return TypeError(f"an Avro null needs None, not {value!r}")


def _decimal_encoder(precision: int, scale: int) -> Callable[[Any], bytes]:
    """Length-prefixed two's-complement bytes of a Decimal, as fastavro's ``decimal`` writer.

    fastavro rescales a Decimal with fewer places than ``scale`` and rejects one
    with more (by exponent: ``Decimal("1.00000")`` is rejected although it equals
    1); it sizes the bytes ``(bit_length + 8) // 8``, one more than needed for
    some negative values (-128 takes two bytes), and the reader relies on none
    of it, but byte-identical output does. A value that needs more than
    ``precision`` digits once rescaled raises (fastavro checks the digits
    before rescaling only).
    """
    limit = 10**precision
    scales = tuple(10**places for places in range(scale + 1))

    def unscaled_exactly(value: Decimal) -> int:
        """The general case, from the digits: NaN, infinities, exponent notation, errors."""
        sign, digits, exponent = value.as_tuple()
        if not isinstance(exponent, int):
            raise ValueError(f"{value} is not a number an Avro decimal can hold")
        if exponent < -scale:
            raise ValueError(f"{value} has more than {scale} decimal places")
        if digits == (0,):
            return 0
        if exponent + scale >= precision:  # before computing 10 ** (a huge exponent)
            raise ValueError(f"{value} needs more than {precision} digits at scale {scale}")
        unscaled = int("".join(map(str, digits))) * 10 ** (exponent + scale)
        return -unscaled if sign else unscaled

    def encode(value: Any) -> bytes:
        if type(value) is not Decimal and not isinstance(value, Decimal):
            raise TypeError(f"an Avro decimal needs a Decimal, not {type(value).__name__}")
        # str() of a finite Decimal in plain notation shows exactly -exponent
        # places (the quick way to the exponent); for exponent notation, NaN
        # and Infinity int() fails and the general case decides.
        text = str(value)
        point = text.find(".")
        places = 0 if point < 0 else len(text) - point - 1
        unscaled = None
        if places <= scale:
            try:
                digits = text if point < 0 else text[:point] + text[point + 1 :]
                unscaled = int(digits) * scales[scale - places]
            except ValueError:
                pass
        if unscaled is None:
            unscaled = unscaled_exactly(value)
        if not -limit < unscaled < limit:
            raise ValueError(f"{value} needs more than {precision} digits at scale {scale}")
        data = unscaled.to_bytes((unscaled.bit_length() + 8) // 8, "big", signed=True)
        return _length(len(data)) + data

    return encode


class _Compiler(SourceBuilder):
    """Emits the Python source of one writer; each ``emit*`` method writes one value.

    Emitted code appends to the local ``out`` (a bytearray). Values are held in
    locals named by nesting depth (``r1``, ``a1``, ``i1``...) so a nested
    record or array never overwrites a value its parent still needs; ``v``,
    ``b`` and ``n`` are scratch, used and finished within one value.
    """

    def __init__(self, named: Mapping[str, Any]) -> None:
        namespace: dict[str, Any] = {
            "_SMALL": _SMALL,
            "_GROUP": _GROUP,
            "_VARINT": _VARINT,
            "avro_long": avro_long,
            "_int": _int,
            "_length": _length,
            "_bytes": _bytes,
            "_as_record": _as_record,
            "_as_array": _as_array,
            "_as_map": _as_map,
            "_not_boolean": _not_boolean,
            "_not_null": _not_null,
        }
        super().__init__(named, namespace)
        self._inlining: list[str] = []

    def kind(self, schema: Any) -> str:
        """``schema``'s type for code generation: a primitive, a complex type, or "decimal"."""
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
            if kind in ("record", "enum", "array", "map"):
                return kind
            raise UnsupportedSchema(f"type {kind!r} is not compiled")
        if kind == "bytes" and logical == "decimal":
            return "decimal"
        raise UnsupportedSchema(f"logical type {logical!r} on {kind!r} is not compiled")

    def emit(self, schema: Any, value: str, indent: int, depth: int) -> None:
        """Code writing the value held in the local (or expression) ``value``."""
        kind = self.kind(schema)
        schema = self.resolve(schema)
        if kind == "string":
            self.line(indent, f"b = {value}.encode()")
            self.emit_length("b", indent)
            self.line(indent, "out += b")
        elif kind == "long":
            self.line(indent, f"v = {value}")
            self.line(indent, f"if type(v) is int and 0 <= v < {_SMALL_LIMIT}:")
            self.line(indent + 1, "out += _SMALL[v]")
            # Milliseconds since 1970 until 2039 (and 36 hours from 1970): 5 or 6 bytes.
            self.line(indent, f"elif type(v) is int and {1 << 27} <= v < {1 << 41}:")
            self.line(indent + 1, "z = v << 1")
            self.line(indent + 1, "out += _GROUP[z & 16383]")
            self.line(indent + 1, "out += _GROUP[z >> 14 & 16383]")
            self.line(indent + 1, "out += _VARINT[z >> 28]")
            self.line(indent, "else:")
            self.line(indent + 1, "out += avro_long(v)")
        elif kind == "int":
            self.line(indent, f"v = {value}")
            self.line(indent, f"if type(v) is int and 0 <= v < {_SMALL_LIMIT}:")
            self.line(indent + 1, "out += _SMALL[v]")
            self.line(indent, "else:")
            self.line(indent + 1, "out += _int(v)")
        elif kind == "boolean":
            self.line(indent, f"v = {value}")
            self.line(indent, "if v is True:")
            self.line(indent + 1, "out += b'\\x01'")
            self.line(indent, "elif v is False:")
            self.line(indent + 1, "out += b'\\x00'")
            self.line(indent, "else:")
            self.line(indent + 1, "raise _not_boolean(v)")
        elif kind == "null":
            self.line(indent, f"v = {value}")
            self.line(indent, "if v is not None:")
            self.line(indent + 1, "raise _not_null(v)")
        elif kind == "bytes":
            self.line(indent, f"out += _bytes({value})")
        elif kind == "decimal":
            encoder = _decimal_encoder(int(schema["precision"]), int(schema.get("scale", 0)))
            self.line(indent, f"out += {self.constant(encoder, 'decimal')}({value})")
        elif kind == "enum":
            table = {s: _varint(2 * i) for i, s in enumerate(schema["symbols"])}
            # A symbol not in the enum is a KeyError (fastavro: ValueError).
            self.line(indent, f"out += {self.constant(table, 'enum')}[{value}]")
        elif kind == "record":
            self.emit_record(schema, value, indent, depth)
        elif kind == "array":
            self.emit_array(schema, value, indent, depth)
        elif kind == "map":
            self.emit_map(schema, value, indent, depth)
        elif kind == "union":
            self.emit_union(schema, value, indent, depth)
        else:
            raise UnsupportedSchema(f"type {kind!r} is not compiled")

    def emit_length(self, data: str, indent: int) -> None:
        self.line(indent, f"n = len({data})")
        self.line(indent, f"out += _SMALL[n] if n < {_SMALL_LIMIT} else _length(n)")

    def emit_record(self, schema: dict[str, Any], value: str, indent: int, depth: int) -> None:
        name = schema["name"]
        if name in self._inlining:
            raise UnsupportedSchema(f"recursive record {name!r} is not compiled")
        self._inlining.append(name)
        record = f"r{depth}"
        if value != record:
            self.line(indent, f"{record} = {value}")
        self.line(indent, f"if type({record}) is not dict:")
        self.line(indent + 1, f"{record} = _as_record({record})")
        for field in schema["fields"]:
            key = repr(field["name"])
            if "default" in field:
                default = field["default"]
                if default is None:
                    read = f"{record}.get({key})"
                else:
                    read = f"{record}.get({key}, {self.constant(default, 'default')})"
            elif self.nullable(field["type"]):
                read = f"{record}.get({key})"  # fastavro writes null for it
            else:
                read = f"{record}[{key}]"  # KeyError: no value and no default
            self.emit(field["type"], read, indent, depth + 1)
        self._inlining.pop()

    def nullable(self, schema: Any) -> bool:
        """A missing field without default is written as null when its type allows null."""
        return schema == "null" or (isinstance(schema, list) and "null" in schema)

    def emit_array(self, schema: dict[str, Any], value: str, indent: int, depth: int) -> None:
        items, item = f"a{depth}", f"i{depth}"
        self.line(indent, f"{items} = {value}")
        self.line(indent, f"if type({items}) is not list:")
        self.line(indent + 1, f"{items} = _as_array({items})")
        self.line(indent, f"if {items}:")
        self.emit_length(items, indent + 1)
        self.line(indent + 1, f"for {item} in {items}:")
        self.emit(schema["items"], item, indent + 2, depth + 1)
        self.line(indent, "out += b'\\x00'")

    def emit_map(self, schema: dict[str, Any], value: str, indent: int, depth: int) -> None:
        entries, key, item = f"m{depth}", f"k{depth}", f"i{depth}"
        self.line(indent, f"{entries} = {value}")
        self.line(indent, f"if type({entries}) is not dict:")
        self.line(indent + 1, f"{entries} = _as_map({entries})")
        self.line(indent, f"if {entries}:")
        self.emit_length(entries, indent + 1)
        self.line(indent + 1, f"for {key}, {item} in {entries}.items():")
        self.emit("string", key, indent + 2, depth + 1)
        self.emit(schema["values"], item, indent + 2, depth + 1)
        self.line(indent, "out += b'\\x00'")

    def emit_union(self, schema: list[Any], value: str, indent: int, depth: int) -> None:
        """Only null plus one other type: ``None`` picks null, anything else the other.

        fastavro picks the first branch that validates; with a single non-null
        branch that is the same choice, and a wrong value fails in the branch.
        """
        if len(schema) != 2 or schema.count("null") != 1:
            raise UnsupportedSchema(f"union {schema!r} is not null plus one type")
        null_at = schema.index("null")
        other = schema[1 - null_at]
        kind = self.kind(other)
        if kind == "union":
            raise UnsupportedSchema("a union directly inside a union is not valid Avro")
        null_tag, other_tag = _varint(2 * null_at), _varint(2 * (1 - null_at))
        if kind == "enum":  # one lookup: the branch and the symbol together
            symbols = self.resolve(other)["symbols"]
            table: dict[Any, bytes] = {None: null_tag}
            table.update({s: other_tag + _varint(2 * i) for i, s in enumerate(symbols)})
            self.line(indent, f"out += {self.constant(table, 'union')}[{value}]")
            return
        if kind == "string":  # one lookup: the branch and the length together
            self.line(indent, f"u{depth} = {value}")
            self.line(indent, f"if u{depth} is None:")
            self.line(indent + 1, f"out += {null_tag!r}")
            self.line(indent, "else:")
            self.line(indent + 1, f"b = u{depth}.encode()")
            self.line(indent + 1, "n = len(b)")
            tagged = self.constant(_tagged_lengths(other_tag), "tagged")
            self.line(indent + 1, f"if n < {_TAGGED_LIMIT}:")
            self.line(indent + 2, f"out += {tagged}[n]")
            self.line(indent + 1, "else:")
            self.line(indent + 2, f"out += {other_tag!r}")
            self.line(indent + 2, "out += _length(n)")
            self.line(indent + 1, "out += b")
            return
        held = f"r{depth}" if kind == "record" else f"u{depth}"
        self.line(indent, f"{held} = {value}")
        self.line(indent, f"if {held} is None:")
        self.line(indent + 1, f"out += {null_tag!r}")
        self.line(indent, "else:")
        self.line(indent + 1, f"out += {other_tag!r}")
        self.emit(other, held, indent + 1, depth)


def compile_writer(schema: Any, prefix: bytes = b"", name: str | None = None) -> Writer:
    """A function returning ``prefix`` plus the Avro binary encoding of a value of ``schema``.

    ``schema`` is a schema parsed by ``fastavro.parse_schema`` (named types are
    looked up in its ``__named_schemas``); an unparsed one is parsed first.
    Fields missing from a record take their default, as in fastavro's
    non-strict mode; extra keys are ignored (the caller checks them). ``name``
    labels the generated source in tracebacks. Raises
    :class:`UnsupportedSchema` for what is not compiled.
    """
    schema, named = parsed(schema)
    compiler = _Compiler(named)
    compiler.namespace["_PREFIX"] = bytes(prefix)
    compiler.line(0, "def write(r0):")
    compiler.line(1, "out = bytearray(_PREFIX)")
    compiler.emit(schema, "r0", 1, 0)
    compiler.line(1, "return bytes(out)")
    write: Writer = load(compiler, "write", "writer", schema, name)
    return write
