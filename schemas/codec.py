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

Versions (``schemas/README.md``): ``released/vN/`` holds the complete folder of
release N. The registry knows every fingerprint of every release, so a record
written years ago still decodes; an older writer schema is resolved to the
*current* schema of the same full name, so callers always see today's fields
(added ones take their defaults). Records written with the current schema, the
common case, are read directly without resolution.
"""

from __future__ import annotations

import io
import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import fastavro
from fastavro.schema import UnknownType, fingerprint, load_schema, to_parsing_canonical_form
from hookline.schemas.avro_reader import Reader, compile_reader
from hookline.schemas.avro_writer import UnsupportedSchema, Writer, compile_writer

SCHEMA_DIR = Path(__file__).resolve().parent
RELEASED_DIR = SCHEMA_DIR / "released"
INTERNAL_PREFIX = "hookline.internal."
MAGIC = b"\xc3\x01"
HEADER_SIZE = len(MAGIC) + 8


class CodecError(ValueError):
    """Bytes that are not a single-object-encoded record of a known schema."""


class UnknownSchema(CodecError):
    """A single-object-encoded record whose writer schema this release does not know.

    Not corrupt data: most likely a record written by a newer release. A
    worker never acks such a record unread; it waits for a worker that can
    read it (docs/operations.md, "Upgrading workers").
    """

    def __init__(self, fingerprint: bytes) -> None:
        self.fingerprint = bytes(fingerprint).hex()
        super().__init__(f"unknown writer schema fingerprint {self.fingerprint}")


@dataclass(frozen=True)
class Schema:
    name: str
    fingerprint: bytes
    parsed: Any  # as written: logical types intact
    plain: Any  # logical types stripped: same bytes, ints for timestamps
    fields: frozenset[str]
    #: Every release whose folder holds this exact schema (same fingerprint).
    releases: tuple[int, ...] = field(default=(), compare=False)
    #: True for the schema in ``schemas/`` itself, the one ``encode`` writes.
    current: bool = field(default=True, compare=False)

    @property
    def header(self) -> bytes:
        return MAGIC + self.fingerprint

    @property
    def version(self) -> int:
        """The first release that held this schema: its version number."""
        return self.releases[0]

    @property
    def public(self) -> bool:
        """Public schemas are a contract with consumers; internal ones only with older workers."""
        return not self.name.startswith(INTERNAL_PREFIX)


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


@dataclass(frozen=True)
class _Loaded:
    """One schema as one folder defines it, before releases are assigned."""

    name: str
    fingerprint: bytes
    parsed: Any
    plain: Any
    fields: frozenset[str]


def load_folder(directory: Path) -> dict[str, _Loaded]:
    """Every ``.avsc`` of one folder, named types resolved within that folder only.

    A snapshot must be read on its own: ``released/v1/hookline.OrderChange.avsc``
    means the v1 ``OrderState``, never today's.
    """
    raws = {path.stem: json.loads(path.read_text()) for path in directory.glob("*.avsc")}
    parsed = _parse_all(raws)
    plain = _parse_all({name: _strip_logical(raw) for name, raw in raws.items()})
    loaded = {}
    for name, raw in sorted(raws.items()):
        # The canonical form must inline each referenced named type at its
        # first use, as a reader loading the .avsc from this folder sees it;
        # load_schema does that (parse_schema leaves bare names).
        standalone = load_schema(directory / f"{name}.avsc", named_schemas={})
        fp = crc64_avro_fingerprint(to_parsing_canonical_form(standalone))
        fields = frozenset(f["name"] for f in raw.get("fields", ()))
        loaded[name] = _Loaded(name, fp, parsed[name], plain[name], fields)
    return loaded


def released_folders(released: Path) -> dict[int, Path]:
    """``released/vN`` folders by release number N."""
    folders = {}
    if released.is_dir():
        for path in released.iterdir():
            match = re.fullmatch(r"v([1-9][0-9]*)", path.name)
            if match and path.is_dir():
                folders[int(match.group(1))] = path
    return dict(sorted(folders.items()))


class Registry:
    """Every schema of every release, by fingerprint; the current ones by full name."""

    def __init__(self, directory: Path = SCHEMA_DIR, released: Path | None = None) -> None:
        released = directory / "released" if released is None else released
        snapshots = {n: load_folder(p) for n, p in released_folders(released).items()}
        current = load_folder(directory)
        newest = max(snapshots, default=0)
        same_as_newest = newest > 0 and {n: s.fingerprint for n, s in current.items()} == {
            n: s.fingerprint for n, s in snapshots[newest].items()
        }
        #: The release the current folder is (or will be when released).
        self.current_release = newest if same_as_newest else newest + 1

        releases: dict[bytes, list[int]] = {}
        first_seen: dict[bytes, _Loaded] = {}
        for number, folder in [*snapshots.items(), (self.current_release, current)]:
            for loaded in folder.values():
                releases.setdefault(loaded.fingerprint, [])
                if number not in releases[loaded.fingerprint]:
                    releases[loaded.fingerprint].append(number)
                first_seen.setdefault(loaded.fingerprint, loaded)

        def schema_of(loaded: _Loaded, is_current: bool) -> Schema:
            return Schema(
                loaded.name,
                loaded.fingerprint,
                loaded.parsed,
                loaded.plain,
                loaded.fields,
                tuple(sorted(releases[loaded.fingerprint])),
                is_current,
            )

        self._by_name: dict[str, Schema] = {n: schema_of(s, True) for n, s in current.items()}
        self._by_fingerprint: dict[bytes, Schema] = {}
        # Per fingerprint, the reader schema to resolve to: None for the
        # current schemas (the direct, fast path) and for a name no longer in
        # the current folder (read as written).
        self._reader: dict[bytes, Any] = {}
        current_fps = {s.fingerprint for s in self._by_name.values()}
        for fp, loaded in first_seen.items():
            if fp in current_fps:
                schema = next(s for s in self._by_name.values() if s.fingerprint == fp)
                self._reader[fp] = None
            else:
                schema = schema_of(loaded, False)
                target = self._by_name.get(loaded.name)
                self._reader[fp] = target.plain if target is not None else None
            self._by_fingerprint[fp] = schema

        # What decode needs per fingerprint read as written (the current
        # schemas, the hot path): the schema and its compiled reader, where
        # there is one; fastavro reads the rest, resolving older ones.
        self._compiled: dict[bytes, tuple[Schema, Reader]] = {}
        for fp, target in self._reader.items():
            if target is None:
                schema = self._by_fingerprint[fp]
                try:
                    read = compile_reader(schema.plain, schema.name)
                except UnsupportedSchema:
                    continue
                self._compiled[fp] = (schema, read)

        # What encode needs per current schema: its fields and its compiled
        # writer (header included), or None where fastavro writes it instead.
        self._writers: dict[str, tuple[Schema, Writer | None]] = {}
        for name, schema in self._by_name.items():
            try:
                writer: Writer | None = compile_writer(schema.plain, schema.header, name)
            except UnsupportedSchema:
                writer = None
            self._writers[name] = (schema, writer)

    def __iter__(self) -> Iterator[Schema]:
        """The current schemas (one per full name), the ones ``encode`` writes."""
        return iter(self._by_name.values())

    def versions(self, name: str | None = None) -> list[Schema]:
        """Every distinct schema ever released (and the current one), oldest first."""
        found = [s for s in self._by_fingerprint.values() if name is None or s.name == name]
        return sorted(found, key=lambda s: (s.name, s.version))

    def schema(self, name: str) -> Schema:
        try:
            return self._by_name[name]
        except KeyError:
            raise CodecError(f"no schema named {name!r} in {SCHEMA_DIR}") from None

    def by_fingerprint(self, fp: bytes) -> Schema:
        try:
            return self._by_fingerprint[bytes(fp)]
        except KeyError:
            raise UnknownSchema(fp) from None

    def encode(self, name: str, record: Mapping[str, Any]) -> bytes:
        try:
            schema, writer = self._writers[name]
        except KeyError:
            raise CodecError(f"no schema named {name!r} in {SCHEMA_DIR}") from None
        # fastavro would drop unknown fields silently: a typo must not lose data.
        if not record.keys() <= schema.fields:
            unknown = record.keys() - schema.fields
            raise CodecError(f"{name} has no field(s) {sorted(unknown)}")
        if writer is None:
            return self._refused(name, schema, record, None)
        try:
            return writer(record)
        except Exception as exc:
            # A value the writer refuses. Let fastavro say why, naming the field
            # (its exception is what encode raised before the compiled writer);
            # if fastavro would write it, it coerces a wrong type: still refused.
            return self._refused(name, schema, record, exc)

    @classmethod
    def _refused(
        cls, name: str, schema: Schema, record: Mapping[str, Any], exc: Exception | None
    ) -> bytes:
        """Encode with fastavro; whatever it refuses is a :class:`CodecError`.

        Every value a record can hold (a lone surrogate, a decimal beyond its
        precision, a wrong type) fails here as data, never as another
        exception type a caller would not expect.
        """
        try:
            encoded = cls._fastavro_encode(schema, record)
        except Exception as refused:
            raise CodecError(f"{name}: {refused}") from refused
        if exc is not None:
            raise CodecError(f"{name}: {exc}") from exc
        return encoded

    @staticmethod
    def _fastavro_encode(schema: Schema, record: Mapping[str, Any]) -> bytes:
        out = io.BytesIO()
        out.write(schema.header)
        # Not strict: fields left out take their schema default (strict mode in
        # fastavro 1.13 rejects a missing field even when it has a default).
        fastavro.schemaless_writer(out, schema.plain, record)
        return out.getvalue()

    def decode(self, data: bytes) -> tuple[str, dict[str, Any]]:
        """Return (schema full name, record in the current schema's fields).

        Raise :class:`CodecError` on anything else.
        """
        if len(data) < HEADER_SIZE or data[:2] != MAGIC:
            raise CodecError("not Avro single-object encoded (missing C3 01 marker)")
        fp = bytes(data[2:HEADER_SIZE])
        compiled = self._compiled.get(fp)
        if compiled is not None:
            schema, read = compiled
            if type(data) is not bytes:  # a bytearray would give bytearrays for bytes fields
                data = bytes(data)
            try:
                record, end = read(data, HEADER_SIZE)
            except Exception as exc:  # ValueError: truncated, not UTF-8, out of range...
                raise CodecError(f"corrupt {schema.name} record: {exc}") from exc
            if end != len(data):
                raise CodecError(f"{len(data) - end} trailing bytes after a {schema.name}")
            return schema.name, record
        schema = self._by_fingerprint.get(fp)
        if schema is None:
            raise UnknownSchema(fp)
        reader = self._reader[fp]
        buf = io.BytesIO(data)
        buf.seek(HEADER_SIZE)
        try:
            if reader is None:
                record = fastavro.schemaless_reader(buf, schema.plain)
            else:
                record = fastavro.schemaless_reader(buf, schema.plain, reader)
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


#: The process-wide registry; loading parses every schema of every release once.
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
REJECTED_FACT = "hookline.RejectedFact"
DELIVERY = "hookline.internal.Delivery"
TRANSACTION_UPDATE = "hookline.internal.TransactionUpdate"
DEDUP_ENTRY = "hookline.internal.DedupEntry"
TRANSACTION_RECORD = "hookline.internal.TransactionRecord"
ORDER_RECORD = "hookline.internal.OrderRecord"
