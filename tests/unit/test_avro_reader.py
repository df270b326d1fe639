"""schemas/avro_reader.py: the compiled readers return exactly what fastavro returns, or raise.

Every current schema is checked against ``fastavro.schemaless_reader`` on the
records the pipeline's pure functions make and on seeded random records, value
types and decimal exponents included; every truncation of a real record must
raise, and corrupted bytes must raise or decode as fastavro decodes them.
``codec.decode`` keeps its errors, and records of older releases still go
through fastavro's schema resolution.
"""

from __future__ import annotations

import io
import json
import random
import struct
from decimal import Decimal
from pathlib import Path
from typing import Any

import fastavro
import pytest
from hookline.schemas import codec
from hookline.schemas.avro_reader import InvalidData, Reader, UnsupportedSchema, compile_reader

from tests.unit.test_avro_writer import _ALPHABETS, PIPELINE, RandomRecords, fastavro_bytes

CURRENT = {schema.name: schema for schema in codec.REGISTRY}
RECORDS = sorted(name for name, schema in CURRENT.items() if schema.plain["type"] == "record")
READERS: dict[str, Reader] = {
    name: compile_reader(schema.plain, name) for name, schema in CURRENT.items()
}


def fastavro_read(schema: Any, body: bytes) -> tuple[Any, int]:
    """fastavro's value of ``body`` and how many bytes it read."""
    buf = io.BytesIO(body)
    value = fastavro.schemaless_reader(buf, schema)
    return value, buf.tell()


def assert_identical(got: Any, expected: Any, path: str = "value") -> None:
    """Equal, with the same types, keys in the same order and decimals with the same exponent.

    ``==`` alone would pass ``1 == True``, ``Decimal("1.0") == Decimal("1.00")``
    and dicts in another key order.
    """
    assert type(got) is type(expected), f"{path}: {type(got).__name__} {got!r} != {expected!r}"
    if isinstance(expected, dict):
        assert list(got) == list(expected), f"{path}: keys {list(got)} != {list(expected)}"
        for key, value in expected.items():
            assert_identical(got[key], value, f"{path}[{key!r}]")
    elif isinstance(expected, list):
        assert len(got) == len(expected), f"{path}: {len(got)} items != {len(expected)}"
        for index, (item, expected_item) in enumerate(zip(got, expected, strict=True)):
            assert_identical(item, expected_item, f"{path}[{index}]")
    elif isinstance(expected, Decimal):
        assert got.as_tuple() == expected.as_tuple(), f"{path}: {got!r} != {expected!r}"
    elif isinstance(expected, float):
        assert struct.pack("<d", got) == struct.pack("<d", expected), f"{path}: {got} != {expected}"
    else:
        assert got == expected, f"{path}: {got!r} != {expected!r}"


def assert_reads_as_fastavro(name: str, body: bytes, via_codec: bool = True) -> Any:
    """The compiled reader, at an offset, reads what fastavro reads; so does codec.decode."""
    schema = CURRENT[name]
    expected, used = fastavro_read(schema.plain, body)
    assert used == len(body)
    value, end = READERS[name](b"\x00" * 10 + body, 10)
    assert end == 10 + len(body)
    assert_identical(value, expected)
    if via_codec and name in RECORDS:
        decoded_name, record = codec.decode(schema.header + body)
        assert decoded_name == name
        assert_identical(record, expected)
    return value


# -- (a) every current schema compiles -------------------------------------------------------------


def test_every_current_schema_is_compiled() -> None:
    # One that is not (a recursive record, a timestamp logical type, an array
    # of nulls) raises UnsupportedSchema above; codec would read it with fastavro.
    assert READERS.keys() == CURRENT.keys()


def test_codec_reads_every_current_schema_without_fastavro(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("fastavro read a current record")

    bodies = {name: PIPELINE[name][0] for name in RECORDS}
    encoded = {name: codec.encode(name, record) for name, record in bodies.items()}
    monkeypatch.setattr(codec.fastavro, "schemaless_reader", refuse)
    for name, data in encoded.items():
        assert codec.decode(data)[0] == name


# -- (b) the records the pipeline makes ------------------------------------------------------------


@pytest.mark.parametrize("name", RECORDS)
def test_pipeline_records_read_as_fastavro_reads_them(name: str) -> None:
    assert PIPELINE[name]
    for record in PIPELINE[name]:
        body = codec.encode(name, record)[len(codec.MAGIC) + 8 :]
        assert assert_reads_as_fastavro(name, body) == record


def test_enum_schemas() -> None:
    for name in ("hookline.OrderStatus", "hookline.PaymentStatus"):
        for symbol in CURRENT[name].plain["symbols"]:
            assert (
                assert_reads_as_fastavro(name, fastavro_bytes(CURRENT[name].plain, symbol))
                == symbol
            )


def test_values_are_fresh_objects() -> None:
    """Nothing mutable is shared between two reads (enum symbols are the only constants)."""
    data = codec.encode(codec.ORDER_CHANGE, PIPELINE[codec.ORDER_CHANGE][-1])
    first, second = codec.decode(data)[1], codec.decode(data)[1]
    assert first == second
    assert first is not second
    assert first["changed_fields"] is not second["changed_fields"]
    assert first["after"] is not second["after"]


# -- (c) random valid records ----------------------------------------------------------------------


class QuickRecords(RandomRecords):
    """The writer tests' random values, with text cut from long random strings.

    Drawing every character made generating the values most of this test's time.
    """

    POOLS = tuple(
        "".join(random.Random(index).choices(alphabet, k=20_000))
        for index, alphabet in enumerate(_ALPHABETS)
    )

    def text(self) -> str:
        rng = self.rng
        size = rng.choice((0, 1, rng.randrange(64), rng.randrange(300), 255, 256))
        if rng.random() < 0.01:
            size = 8200  # beyond the two-byte lengths
        pool = rng.choice(self.POOLS)
        start = rng.randrange(len(pool) - size)
        return pool[start : start + size]


@pytest.mark.parametrize("name", RECORDS)
def test_random_records_read_as_fastavro_reads_them(name: str) -> None:
    plain = CURRENT[name].plain
    for seed in range(300):
        value = QuickRecords(plain["__named_schemas"], seed=seed).value(plain)
        assert_reads_as_fastavro(name, fastavro_bytes(plain, value), via_codec=seed < 20)


@pytest.mark.parametrize(
    "amount",
    [
        Decimal("0"),
        Decimal("-0.0000"),
        Decimal("1"),
        Decimal("-1"),
        Decimal("1.5"),
        Decimal("-0.0001"),
        Decimal("0.0001"),
        Decimal("-128"),  # fastavro writes it in two bytes, one more than needed
        Decimal("-0.0128"),
        Decimal("127"),
        Decimal("-99999999999999.9999"),
        Decimal("99999999999999.9999"),
        Decimal("12E+3"),
        Decimal("-12345678901234.5678"),
        # More than 18 digits once rescaled: fastavro's writer let these
        # through, its reader rounds them to 18 digits (exponent -3 to -1).
        Decimal("100000000000000"),
        Decimal("-1234567890123456"),
        Decimal("-99999999999999999"),
    ],
)
def test_decimals(amount: Decimal) -> None:
    state = dict(PIPELINE[codec.ORDER_STATE][0], amount=amount, refunded_amount=-amount)
    assert_reads_as_fastavro(
        codec.ORDER_STATE, fastavro_bytes(CURRENT[codec.ORDER_STATE].plain, state)
    )


def test_a_decimal_beyond_the_precision_is_rounded_as_fastavro_rounds_it() -> None:
    plain = CURRENT[codec.ORDER_STATE].plain
    state = dict(PIPELINE[codec.ORDER_STATE][0], amount=Decimal("100000000000000"))
    value = assert_reads_as_fastavro(codec.ORDER_STATE, fastavro_bytes(plain, state))
    assert value["amount"].as_tuple().exponent == -3


# -- (d) truncated, (e) corrupted ------------------------------------------------------------------


def _pipeline_bodies() -> list[tuple[str, bytes]]:
    return [
        (name, codec.encode(name, record)[10:]) for name in RECORDS for record in PIPELINE[name]
    ]


@pytest.mark.parametrize("name", RECORDS)
def test_every_truncation_raises(name: str) -> None:
    read = READERS[name]
    for record in PIPELINE[name]:
        data = codec.encode(name, record)
        for cut in range(10, len(data)):
            with pytest.raises(InvalidData):  # ends early, or a count too large for what is left
                read(data[:cut], 10)
            with pytest.raises(codec.CodecError, match=f"corrupt {name} record"):
                codec.decode(data[:cut])


def _corrupted(body: bytes, rng: random.Random) -> bytes:
    data = bytearray(body)
    for _ in range(rng.choice((1, 1, 1, 2, 3))):
        where = rng.randrange(len(data))
        how = rng.random()
        if how < 0.5:
            data[where] = rng.randrange(256)
        elif how < 0.7:
            data[where] ^= 1 << rng.randrange(8)
        elif how < 0.8:
            data.insert(where, rng.choice((0x00, 0x01, 0x7F, 0x80, 0xFF, rng.randrange(256))))
        elif how < 0.9:
            del data[where]
        else:  # a long varint: a huge length or count
            data[where:where] = rng.choice((b"\xff" * 9 + b"\x01", b"\xfe" * 9 + b"\x7f"))
    return bytes(data)


def test_corrupted_bytes_raise_or_read_as_fastavro_reads_them() -> None:
    rng = random.Random(20240611)
    bodies = _pipeline_bodies()
    outcomes = {"raised": 0, "same": 0}
    for _ in range(6000):
        name, body = rng.choice(bodies)
        data = _corrupted(body, rng)
        try:
            value, end = READERS[name](data, 0)
        except ValueError:
            outcomes["raised"] += 1
            continue
        # Read something: fastavro must read the same (were it to raise, this
        # reader would accept what fastavro refuses, and the test fails).
        expected, used = fastavro_read(CURRENT[name].plain, data)
        assert used == end
        assert_identical(value, expected)
        outcomes["same"] += 1
    assert outcomes["raised"] > 1000
    assert outcomes["same"] > 100  # e.g. a changed letter in a string


# -- hostile and invalid bytes ---------------------------------------------------------------------

LONG = compile_reader("long")
STRINGS = compile_reader({"type": "array", "items": "string"})
HEADERS = compile_reader({"type": "map", "values": "string"})
NULL_OR_STRING = compile_reader(["null", "string"])
STATUS = READERS["hookline.OrderStatus"]


@pytest.mark.parametrize(
    "value",
    [
        *(0, 1, -1, 63, 64, -64, -65, 8191, 8192, 2**27, 2**31, -(2**31) - 1),
        # Six bytes (read inline): 2**34 to 2**41 - 1 in magnitude.
        *(2**34 - 1, 2**34, -(2**34), -(2**34) - 1, 1_762_000_000_000, -1_762_000_000_001),
        *(2**41 - 1, -(2**41), 2**41, -(2**41) - 1, 2**48, 2**56, 2**63 - 1, -(2**63)),
    ],
)
def test_longs(value: int) -> None:
    data = fastavro_bytes("long", value)
    assert fastavro_read("long", data) == (value, len(data))
    assert LONG(data, 0) == (value, len(data))
    assert LONG(b"\x00" + data + b"\x00", 1) == (value, len(data) + 1)


def test_a_varint_that_is_not_minimal_reads_as_in_fastavro() -> None:
    for data in (b"\x80\x00", b"\x81\x80\x00", b"\x80" * 9 + b"\x00", b"\xfe\xff\x80\x80\x80\x00"):
        assert LONG(data, 0) == fastavro_read("long", data)


@pytest.mark.parametrize(
    "data",
    [
        b"\xff" * 10 + b"\x01",  # 11 bytes: fastavro reads it
        b"\x80" * 10 + b"\x00",
        b"\xff" * 9 + b"\x02",  # beyond 64 bits: fastavro wraps it around
        b"\xff" * 9 + b"\x7f",
        b"\x80",
        b"\xff\xff\xff\xff\xff",
        b"",
    ],
)
def test_invalid_longs_raise(data: bytes) -> None:
    with pytest.raises(InvalidData):
        LONG(data, 0)


@pytest.mark.parametrize(
    ("reader", "data", "message"),
    [
        (NULL_OR_STRING, b"\x02\x01abc", "negative length"),  # fastavro reads the rest
        (NULL_OR_STRING, b"\x02\x08abc", "ends before"),
        (NULL_OR_STRING, b"\x02\xc8\x01abc", "ends before"),  # a two-byte length
        (NULL_OR_STRING, b"\x02\xfe\xff\xff\xff\x0fabc", "ends before"),
        (NULL_OR_STRING, b"\x02", "ends before"),
        (NULL_OR_STRING, b"\x04", "branch 2 is not below 2"),
        (NULL_OR_STRING, b"\x01", "branch -1 is not below 2"),  # fastavro: EOFError
        (NULL_OR_STRING, b"\x84\x01", "branch 66 is not below 2"),
        (STATUS, b"\x0a", "enum index 5 is not below 5"),
        (STATUS, b"\x01", "enum index -1 is not below 5"),  # fastavro: the last symbol
        (STATUS, b"\x80\x02", "enum index 128 is not below 5"),
        (STRINGS, b"\x02\x02a", "ends before"),
        (STRINGS, b"\x04\x02a", "ends before"),
        (STRINGS, b"\x06\x00\x00", "3 items cannot fit in the 2 bytes left"),
        (STRINGS, b"\xfe\xff\xff\xff\xff\xff\xff\xff\xff\x01", "cannot fit in the 0 bytes"),
        (HEADERS, b"\x04\x00\x00\x00", "2 items cannot fit in the 3 bytes left"),
        (HEADERS, b"\xfe\xff\xff\xff\xff\xff\xff\xff\xff\x01" + b"\x00" * 100, "cannot fit"),
    ],
)
def test_invalid_data_raises(reader: Reader, data: bytes, message: str) -> None:
    with pytest.raises(InvalidData, match=message):
        reader(data, 0)


@pytest.mark.parametrize(
    "data",
    [
        b"\x02\xff",
        b"\x04\xc3\x28",
        b"\x06\xed\xa0\x80",  # a UTF-16 surrogate, which UTF-8 must not encode
        b"\x08\xf4\x90\x80\x80",  # beyond U+10FFFF
        b"\x04\xc0\xaf",  # overlong
    ],
)
def test_invalid_utf8_raises_as_in_fastavro(data: bytes) -> None:
    with pytest.raises(UnicodeDecodeError):
        fastavro_read("string", data)
    with pytest.raises(UnicodeDecodeError):
        compile_reader("string")(data, 0)


def test_a_boolean_is_zero_or_one() -> None:
    read = compile_reader("boolean")
    assert read(b"\x00", 0) == (False, 1)
    assert read(b"\x01", 0) == (True, 1)
    with pytest.raises(InvalidData, match="not 2"):
        read(b"\x02", 0)  # fastavro: True


def test_negative_block_counts_read_as_in_fastavro() -> None:
    """A block may be written as -count, then its size in bytes, then the items."""
    cases = [
        (STRINGS, {"type": "array", "items": "string"}, b"\x03\x08\x02a\x02b\x00"),
        (STRINGS, {"type": "array", "items": "string"}, b"\x03\x7f\x02a\x02b\x01\x00\x02c\x00"),
        (HEADERS, {"type": "map", "values": "string"}, b"\x01\x08\x02k\x02v\x02\x02k\x02w\x00"),
        (STRINGS, {"type": "array", "items": "string"}, b"\x80\x00"),  # zero, not minimal
        (STRINGS, {"type": "array", "items": "string"}, b"\x82\x00\x02a\x00"),
    ]
    for reader, schema, data in cases:
        expected, used = fastavro_read(schema, data)
        assert reader(data, 0) == (expected, used)
        assert used == len(data)
    assert HEADERS(b"\x01\x08\x02k\x02v\x02\x02k\x02w\x00", 0)[0] == {"k": "w"}  # the last


def test_a_huge_count_raises_at_once() -> None:
    """A count the bytes left cannot hold raises before any item is read or allocated."""
    schema = {"type": "array", "items": {"type": "array", "items": "long"}}
    read = compile_reader(schema)
    with pytest.raises(InvalidData, match="cannot fit"):
        read(b"\xfe\xff\xff\xff\xff\xff\xff\xff\x7f" + b"\x00" * 1000, 0)
    record = {
        "type": "record",
        "name": "Pair",
        "fields": [{"name": "a", "type": "long"}, {"name": "b", "type": "string"}],
    }
    pairs = compile_reader({"type": "array", "items": record})
    assert pairs(b"\x02\x02\x02x\x00", 0) == ([{"a": 1, "b": "x"}], 5)
    with pytest.raises(InvalidData, match="3 items cannot fit in the 4 bytes"):
        pairs(b"\x06\x02\x02x\x00", 0)  # three items of at least two bytes each


def test_a_huge_decimal_raises() -> None:
    """Converting a huge integer to a Decimal takes quadratic time: refused past 4096 bits."""
    schema = {"type": "bytes", "logicalType": "decimal", "precision": 18, "scale": 4}
    read = compile_reader(schema)
    for size in (17, 512):  # beyond the precision: rounded as fastavro rounds it
        data = fastavro_bytes("bytes", b"\x7f" + b"\xff" * (size - 1))
        assert_identical(read(data, 0), fastavro_read(schema, data))
    data = fastavro_bytes("bytes", b"\x01" + b"\x00" * 512)
    with pytest.raises(InvalidData, match="4097 bits"):
        read(data, 0)
    padded = fastavro_bytes("bytes", b"\xff" * 100_000)  # -1: within the precision
    assert_identical(read(padded, 0), fastavro_read(schema, padded))


# -- (f) codec.decode keeps its behaviour ----------------------------------------------------------


def test_decode_trailing_bytes_message_is_unchanged() -> None:
    data = codec.encode(codec.ORDER_STATE, PIPELINE[codec.ORDER_STATE][0])
    with pytest.raises(codec.CodecError) as failure:
        codec.decode(data + b"\x00\x01")
    assert str(failure.value) == f"2 trailing bytes after a {codec.ORDER_STATE}"


def test_decode_corrupt_names_the_schema() -> None:
    data = codec.encode(codec.CANONICAL_EVENT, PIPELINE[codec.CANONICAL_EVENT][0])
    bad_utf8 = data[:11] + b"\xff" + data[12:]  # the first character of event_id
    for corrupt in (data[:-1], bad_utf8, data[:10] + b"\x01" + data[11:]):
        with pytest.raises(codec.CodecError, match=f"corrupt {codec.CANONICAL_EVENT} record"):
            codec.decode(corrupt)


def test_decode_takes_any_bytes_like_value() -> None:
    data = codec.encode(codec.WEBHOOK_ENVELOPE, PIPELINE[codec.WEBHOOK_ENVELOPE][0])
    _, expected = codec.decode(data)
    for other in (bytearray(data), memoryview(data)):
        name, record = codec.decode(other)  # type: ignore[arg-type]
        assert name == codec.WEBHOOK_ENVELOPE
        assert_identical(record, expected)


def test_generated_source_shows_in_tracebacks() -> None:
    data = codec.encode(codec.CANONICAL_EVENT, PIPELINE[codec.CANONICAL_EVENT][0])
    with pytest.raises(UnicodeDecodeError) as failure:
        READERS[codec.CANONICAL_EVENT](data[:11] + b"\xff" + data[12:], 10)
    assert "v1 = data[pos:end].decode()" in str(failure.traceback[-1])


# -- (g) older releases still go through fastavro --------------------------------------------------


def test_older_releases_are_resolved_by_fastavro(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only a current record takes the compiled reader; an older one is resolved to today's."""
    calls: list[bool] = []
    real = fastavro.schemaless_reader

    def counting(fo: Any, writer: Any, reader: Any = None, **kw: Any) -> Any:
        calls.append(reader is not None)
        return real(fo, writer, reader, **kw)

    monkeypatch.setattr(codec.fastavro, "schemaless_reader", counting)
    state = PIPELINE[codec.ORDER_STATE][0]
    current = codec.REGISTRY.schema(codec.ORDER_STATE)
    older = next(s for s in codec.REGISTRY.versions(codec.ORDER_STATE) if not s.current)
    v1_state = {k: v for k, v in state.items() if k in older.fields}
    assert codec.decode_as(codec.ORDER_STATE, codec.encode(codec.ORDER_STATE, state)) == state
    assert calls == []
    decoded = codec.decode_as(
        codec.ORDER_STATE, older.header + fastavro_bytes(older.plain, v1_state)
    )
    assert calls == [True]
    assert list(decoded) == [f["name"] for f in current.plain["fields"]]
    assert {k: decoded[k] for k in v1_state} == v1_state


# -- schemas beyond today's ------------------------------------------------------------------------

OTHER_TYPES = {
    "type": "record",
    "name": "x.Other",
    "fields": [
        {"name": "i", "type": "int"},
        {"name": "n", "type": "null"},
        {"name": "f", "type": "float"},
        {"name": "d", "type": "double"},
        {"name": "flag", "type": "boolean"},
        {"name": "raw", "type": "bytes"},
        {"name": "fx", "type": {"type": "fixed", "name": "x.Four", "size": 4}},
        {"name": "fx0", "type": {"type": "fixed", "name": "x.Zero", "size": 0}},
        {
            "name": "price",
            "type": {
                "type": "fixed",
                "name": "x.Price",
                "size": 5,
                "logicalType": "decimal",
                "precision": 9,
                "scale": 2,
            },
        },
        {
            "name": "any",
            "type": ["string", "long", "null", "x.Four", {"type": "map", "values": "int"}],
        },
        {"name": "later_null", "type": ["long", "null"]},
        {"name": "grid", "type": {"type": "array", "items": {"type": "array", "items": "int"}}},
        {
            "name": "by_name",
            "type": {
                "type": "map",
                "values": {
                    "type": "record",
                    "name": "x.Point",
                    "fields": [{"name": "p", "type": "long"}, {"name": "q", "type": "x.Point2"}],
                },
            },
        },
        {"name": "points", "type": {"type": "array", "items": "x.Point"}},
        {"name": "empty", "type": {"type": "record", "name": "x.Empty", "fields": []}},
    ],
}
POINT2 = {"type": "record", "name": "x.Point2", "fields": [{"name": "s", "type": "string"}]}


def test_types_no_current_schema_uses() -> None:
    named: dict[str, Any] = {}
    fastavro.parse_schema(POINT2, named_schemas=named)
    schema = fastavro.parse_schema(OTHER_TYPES, named_schemas=named)
    read = compile_reader(schema)
    base = {
        "i": -(2**31),
        "n": None,
        "f": 1.5,
        "d": -0.1,
        "flag": False,
        "raw": b"\x00\xff",
        "fx": b"abcd",
        "fx0": b"",
        "price": Decimal("-1234567.89"),
        "any": "text",
        "later_null": -5,
        "grid": [[], [2**31 - 1], [1, 2, 3]],
        "by_name": {"a": {"p": 1, "q": {"s": "z"}}, "ключ": {"p": -1, "q": {"s": ""}}},
        "points": [{"p": 2**40, "q": {"s": "😀"}}],
        "empty": {},
    }
    samples = [
        base,
        dict(base, f=float("inf"), d=float("nan"), any=2**62, later_null=None, price=Decimal(0)),
        dict(base, f=-0.0, d=5e-324, any=None, grid=[], by_name={}, points=[]),
        dict(base, any=b"wxyz", i=2**31 - 1),
        dict(base, any={"k": -1, "": 0}),
    ]
    for record in samples:
        body = fastavro_bytes(schema, record)
        expected, used = fastavro_read(schema, body)
        value, end = read(body, 0)
        assert end == used == len(body)
        assert_identical(value, expected)
    with pytest.raises(InvalidData, match="int range"):
        compile_reader("int")(b"\x80\x80\x80\x80\x10", 0)  # fastavro: 2**31
    with pytest.raises(InvalidData, match="ends before"):
        compile_reader({"type": "fixed", "name": "F", "size": 4})(b"abc", 0)
    with pytest.raises(InvalidData, match="ends before"):
        compile_reader("double")(b"\x00" * 7, 0)


@pytest.mark.parametrize(
    "field_type",
    [
        {"type": "long", "logicalType": "timestamp-millis"},
        {"type": "string", "logicalType": "uuid"},
        {"type": "int", "logicalType": "date"},
        {"type": "record", "name": "Node", "fields": [{"name": "next", "type": ["null", "Node"]}]},
        {"type": "array", "items": "null"},
        {"type": "array", "items": {"type": "record", "name": "E", "fields": []}},
        {"type": "array", "items": {"type": "fixed", "name": "Z", "size": 0}},
    ],
)
def test_what_is_not_compiled_says_so(field_type: Any) -> None:
    schema = {"type": "record", "name": "T", "fields": [{"name": "f", "type": field_type}]}
    with pytest.raises(UnsupportedSchema):
        compile_reader(schema)


def test_codec_falls_back_to_fastavro_for_a_schema_not_compiled(tmp_path: Path) -> None:
    schema = {
        "type": "record",
        "name": "Seen",
        "namespace": "x",
        "fields": [
            {"name": "at", "type": {"type": "array", "items": "null"}},
            {"name": "unit", "type": "string"},
        ],
    }
    (tmp_path / "x.Seen.avsc").write_text(json.dumps(schema))
    registry = codec.Registry(tmp_path, released=tmp_path / "released")
    record = {"at": [None, None], "unit": "m"}
    data = registry.encode("x.Seen", record)
    assert registry.decode_as("x.Seen", data) == record
    with pytest.raises(codec.CodecError, match="trailing"):
        registry.decode(data + b"\x00")


def test_the_generated_reader_is_documented() -> None:
    read = READERS[codec.ORDER_STATE]
    assert "OrderState" in (read.__doc__ or "")
    assert read.__source__.startswith("def read(data, pos):")  # type: ignore[attr-defined]
