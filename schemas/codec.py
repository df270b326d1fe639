"""Avro single-object encoding for every record hookline writes.

Wire format (Avro specification, "Single object encoding"): ``C3 01``, the
8-byte little-endian CRC-64-AVRO fingerprint of the writer schema's Parsing
Canonical Form, then the Avro binary body. The fingerprint lets any reader find
the writer schema among the ``.avsc`` files in this folder, so a topic can
evolve (or carry more than one record type) without a schema registry.

Internally timestamps stay ``int`` milliseconds: records are decoded with a
copy of the writer schema whose timestamp ``logicalType`` annotations are
removed. That changes neither the bytes nor the fingerprint (the canonical
form ignores logical types); external readers using the ``.avsc`` files get
datetimes. Money keeps its ``decimal`` logical type everywhere, so it is a
:class:`decimal.Decimal` in Python and never passes through a float.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fastavro
from fastavro.schema import UnknownType, fingerprint, load_schema, to_parsing_canonical_form

SCHEMA_DIR = Path(__file__).resolve().parent
MAGIC = b"\xc3\x01"
HEADER_SIZE = len(MAGIC) + 8


class CodecError(ValueError):
    """Bytes that are not a single-object-encoded record of a known schema."""


@dataclass(frozen=True)
class Schema:
    name: str
    fingerprint: bytes
    parsed: Any  # as written: logical types intact
    plain: Any  # logical types stripped: same bytes, ints for timestamps
    fields: frozenset[str]

    @property
    def header(self) -> bytes:
        return MAGIC + self.fingerprint


def _strip_logical(node: Any) -> Any:
    """A plain copy without timestamp logical types (and without fastavro's private keys)."""
    if isinstance(node, dict):
        strip = node.get("logicalType") != "decimal"
        return {
            k: _strip_logical(v)
            for k, v in node.items()
            if not (k == "logicalType" and strip) and not k.startswith("__")
        }
    if isinstance(node, list):
        return [_strip_logical(v) for v in node]
    return node


def _parse_all(raws: dict[str, Any]) -> dict[str, Any]:
    """Parse schemas that reference each other by full name, dependencies first."""
    named: dict[str, Any] = {}
    parsed: dict[str, Any] = {}
    pending = dict(sorted(raws.items()))
    while pending:
        progress = False
        for name, raw in list(pending.items()):
            try:
                parsed[name] = fastavro.parse_schema(raw, named_schemas=named)
            except UnknownType:
                continue
            del pending[name]
            progress = True
        if not progress:
            raise CodecError(f"unresolvable schema references in {sorted(pending)}")
    return parsed


def crc64_avro_fingerprint(canonical_form: str) -> bytes:
    """The 8 header bytes for a canonical form (fastavro's digest, little-endian)."""
    return bytes.fromhex(fingerprint(canonical_form, "CRC-64-AVRO"))


class Registry:
    """All schemas of a folder, by full name and by fingerprint."""

    def __init__(self, directory: Path = SCHEMA_DIR) -> None:
        self._by_name: dict[str, Schema] = {}
        self._by_fingerprint: dict[bytes, Schema] = {}
        raws = {path.stem: json.loads(path.read_text()) for path in directory.glob("*.avsc")}
        parsed = _parse_all(raws)
        plain = _parse_all({name: _strip_logical(raw) for name, raw in raws.items()})
        for name, raw in sorted(raws.items()):
            # The canonical form must inline each referenced named type at its
            # first use, as a reader loading the .avsc from this folder sees it;
            # load_schema does that (parse_schema leaves bare names).
            standalone = load_schema(directory / f"{name}.avsc", named_schemas={})
            fp = crc64_avro_fingerprint(to_parsing_canonical_form(standalone))
            fields = frozenset(f["name"] for f in raw.get("fields", ()))
            schema = Schema(name, fp, parsed[name], plain[name], fields)
            self._by_name[name] = schema
            self._by_fingerprint[fp] = schema

    def __iter__(self) -> Iterator[Schema]:
        return iter(self._by_name.values())

    def schema(self, name: str) -> Schema:
        try:
            return self._by_name[name]
        except KeyError:
            raise CodecError(f"no schema named {name!r} in {SCHEMA_DIR}") from None

    def encode(self, name: str, record: Mapping[str, Any]) -> bytes:
        schema = self.schema(name)
        unknown = record.keys() - schema.fields
        if unknown:  # fastavro would drop them silently: a typo must not lose data
            raise CodecError(f"{name} has no field(s) {sorted(unknown)}")
        out = io.BytesIO()
        out.write(schema.header)
        # Not strict: fields left out take their schema default (strict mode in
        # fastavro 1.13 rejects a missing field even when it has a default).
        fastavro.schemaless_writer(out, schema.plain, record)
        return out.getvalue()

    def decode(self, data: bytes) -> tuple[str, dict[str, Any]]:
        """Return (schema full name, record); raise :class:`CodecError` on anything else."""
        if len(data) < HEADER_SIZE or data[:2] != MAGIC:
            raise CodecError("not Avro single-object encoded (missing C3 01 marker)")
        schema = self._by_fingerprint.get(bytes(data[2:HEADER_SIZE]))
        if schema is None:
            raise CodecError(f"unknown writer schema fingerprint {data[2:HEADER_SIZE].hex()}")
        buf = io.BytesIO(data)
        buf.seek(HEADER_SIZE)
        try:
            record = fastavro.schemaless_reader(buf, schema.plain)
        except Exception as exc:  # fastavro raises EOFError, ValueError, IndexError...
            raise CodecError(f"corrupt {schema.name} record: {exc}") from exc
        if buf.tell() != len(data):
            raise CodecError(f"{len(data) - buf.tell()} trailing bytes after a {schema.name}")
        return schema.name, record  # type: ignore[return-value]

    def decode_as(self, name: str, data: bytes) -> dict[str, Any]:
        actual, record = self.decode(data)
        if actual != name:
            raise CodecError(f"expected a {name}, got a {actual}")
        return record


#: The process-wide registry; loading parses every schema once.
REGISTRY = Registry()
encode = REGISTRY.encode
decode = REGISTRY.decode
decode_as = REGISTRY.decode_as

# Full names, so a typo is an AttributeError at import rather than at run time.
WEBHOOK_ENVELOPE = "hookline.WebhookEnvelope"
DEAD_LETTER = "hookline.DeadLetter"
CANONICAL_EVENT = "hookline.CanonicalEvent"
ORDER_STATE = "hookline.OrderState"
ORDER_CHANGE = "hookline.OrderChange"
DELIVERY = "hookline.internal.Delivery"
TRANSACTION_UPDATE = "hookline.internal.TransactionUpdate"
DEDUP_ENTRY = "hookline.internal.DedupEntry"
TRANSACTION_RECORD = "hookline.internal.TransactionRecord"
ORDER_RECORD = "hookline.internal.OrderRecord"
