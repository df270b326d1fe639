"""Schema releases (schemas/README.md): every version decodes, every change is fully compatible.

PRODUCT.md section 3: "schemas/ keeps every version of a public schema that was
ever released ... Every change is fully compatible ... a test fails any change
that is not." These are those tests.
"""

from __future__ import annotations

import io
import json
import random
import shutil
from decimal import Decimal
from pathlib import Path
from typing import Any

import fastavro
import pytest
from fastavro.schema import load_schema, to_parsing_canonical_form
from fastavro.utils import generate_many
from hookline.schemas import codec
from hookline.schemas.compatibility import full_problems, read_problems

from tests.unit.helpers import SCHEMAS, T0
from tests.unit.test_codec import header_for

V1 = SCHEMAS / "released" / "v1"
RELEASED = sorted(p for p in (SCHEMAS / "released").iterdir() if p.is_dir())
CURRENT = sorted(s.name for s in codec.REGISTRY)
#: (current schema, an earlier version of the same name), for every such pair.
EARLIER = [
    (s.name, old.version)
    for s in codec.REGISTRY
    for old in codec.REGISTRY.versions(s.name)
    if old.fingerprint != s.fingerprint
]


def _earlier(name: str, version: int) -> codec.Schema:
    return next(s for s in codec.REGISTRY.versions(name) if s.version == version and not s.current)


# -- the registry knows every release ---------------------------------------------


def test_there_is_a_release_1_snapshot_with_every_v1_schema() -> None:
    assert (SCHEMAS / "released" / "v1").is_dir()
    assert len(list(V1.glob("*.avsc"))) >= 14


@pytest.mark.parametrize("folder", RELEASED, ids=lambda p: p.name)
def test_every_snapshot_schema_is_indexed_by_its_own_folders_fingerprint(folder: Path) -> None:
    """A snapshot resolves its references within itself: v1 OrderChange embeds v1 OrderState."""
    release = int(folder.name[1:])
    for path in folder.glob("*.avsc"):
        standalone = load_schema(str(path), named_schemas={})
        header = header_for(to_parsing_canonical_form(standalone))
        schema = codec.REGISTRY.by_fingerprint(header[2:])
        assert schema.name == path.stem
        assert release in schema.releases


def test_version_is_the_first_release_holding_the_fingerprint() -> None:
    newest = max(int(p.name[1:]) for p in RELEASED)
    assert codec.REGISTRY.current_release in (newest, newest + 1)
    for schema in codec.REGISTRY.versions():
        assert schema.version == min(schema.releases)
        if schema.current:
            assert codec.REGISTRY.current_release in schema.releases
    # Release 2 changed OrderState; the enums it uses are unchanged since release 1.
    assert codec.REGISTRY.schema(codec.ORDER_STATE).version == 2
    assert [s.version for s in codec.REGISTRY.versions(codec.ORDER_STATE)] == [1, 2]
    assert codec.REGISTRY.schema("hookline.OrderStatus").version == 1


def _write_folder(folder: Path, schemas: dict[str, dict[str, Any]]) -> None:
    folder.mkdir(parents=True)
    for name, schema in schemas.items():
        (folder / f"{name}.avsc").write_text(json.dumps(schema))


def _thing(*extra: dict[str, Any]) -> dict[str, Any]:
    fields = [{"name": "id", "type": "string"}, *extra]
    return {"type": "record", "name": "Thing", "namespace": "t", "fields": fields}


COLOUR = {"name": "colour", "type": ["null", "string"], "default": None}


def test_current_release_is_the_next_one_unless_identical_to_the_newest(tmp_path: Path) -> None:
    _write_folder(tmp_path / "released" / "v1", {"t.Thing": _thing()})
    _write_folder(tmp_path / "same", {"t.Thing": _thing()})
    shutil.copytree(tmp_path / "released", tmp_path / "same" / "released")
    assert codec.Registry(tmp_path / "same").current_release == 1

    _write_folder(tmp_path / "changed", {"t.Thing": _thing(COLOUR)})
    shutil.copytree(tmp_path / "released", tmp_path / "changed" / "released")
    registry = codec.Registry(tmp_path / "changed")
    assert registry.current_release == 2
    assert [s.version for s in registry.versions("t.Thing")] == [1, 2]


def test_a_name_gone_from_the_current_folder_still_decodes_as_written(tmp_path: Path) -> None:
    old = {"type": "record", "name": "Gone", "namespace": "t", "fields": [COLOUR]}
    _write_folder(tmp_path / "released" / "v1", {"t.Thing": _thing(), "t.Gone": old})
    _write_folder(tmp_path / "now", {"t.Thing": _thing()})
    shutil.copytree(tmp_path / "released", tmp_path / "now" / "released")
    registry = codec.Registry(tmp_path / "now")
    v1 = codec.Registry(tmp_path / "released" / "v1", released=tmp_path / "none")
    assert registry.decode(v1.encode("t.Gone", {"colour": "red"})) == ("t.Gone", {"colour": "red"})
    with pytest.raises(codec.CodecError):
        registry.encode("t.Gone", {"colour": "red"})


# -- v1 records decode with today's code and today's fields ----------------------


def _v1_bytes(name: str, record: dict[str, Any]) -> bytes:
    """What a release-1 producer wrote: plain fastavro with the v1 .avsc files."""
    schema = load_schema(str(V1 / f"{name}.avsc"), named_schemas={})
    out = io.BytesIO()
    fastavro.schemaless_writer(out, schema, record)
    return header_for(to_parsing_canonical_form(schema)) + out.getvalue()


V1_STATE = {
    "order_id": "ord_1",
    "environment": "production",
    "transaction_id": "tr_1",
    "order_status": "ACTIVE",
    "payment_status": "SUCCEEDED",
    "confirmation_pdf_url": None,
    "vignette_id": "kp_1",
    "version": 4,
    "updated_at": T0,
}
V1_CAUSE = {
    "event_id": "d-1:0",
    "delivery_id": "d-1",
    "source": "partner",
    "kind": "partner",
    "type": "order.status_changed",
    "received_at": T0,
}
V1_EVENT = {
    "event_id": "d-1:0",
    "delivery_id": "d-1",
    "source": "partner",
    "kind": "partner",
    "environment": "production",
    "type": "order.status_changed",
    "provider_event_type": "ORDER_STATUS_CHANGED",
    "entity_type": "order",
    "entity_id": "ord_1",
    "received_at": T0,
    "occurred_at": T0 - 5,
    "order_id": "ord_1",
    "transaction_id": None,
    "order_ids": [],
    "order_status": "ACTIVE",
    "payment_status": None,
    "confirmation_pdf_url": None,
    "vignette_id": None,
    "error": None,
}


def _current_fields(name: str) -> set[str]:
    return set(codec.REGISTRY.schema(name).fields)


def test_v1_order_state_decodes_with_todays_fields() -> None:
    data = _v1_bytes(codec.ORDER_STATE, V1_STATE)
    assert data[:10] != codec.REGISTRY.schema(codec.ORDER_STATE).header  # really an old writer
    name, record = codec.decode(data)
    assert name == codec.ORDER_STATE
    assert set(record) == _current_fields(codec.ORDER_STATE)
    assert {k: record[k] for k in V1_STATE} == V1_STATE
    assert isinstance(record["updated_at"], int)
    assert record["amount"] is None
    assert record["currency"] is None
    assert record["refunded_amount"] is None


def test_v1_order_change_decodes_with_todays_nested_fields() -> None:
    change = {
        "order_id": "ord_1",
        "environment": "production",
        "version": 4,
        "before": dict(V1_STATE, version=3, order_status="PENDING"),
        "after": V1_STATE,
        "changed_fields": ["order_status"],
        "cause": V1_CAUSE,
    }
    record = codec.decode_as(codec.ORDER_CHANGE, _v1_bytes(codec.ORDER_CHANGE, change))
    assert set(record) == _current_fields(codec.ORDER_CHANGE)
    assert set(record["after"]) == _current_fields(codec.ORDER_STATE)
    assert set(record["before"]) == _current_fields(codec.ORDER_STATE)
    assert set(record["cause"]) == _current_fields("hookline.ChangeCause")
    assert record["cause"]["provider_event_type"] is None
    assert record["before"]["order_status"] == "PENDING"
    assert record["after"]["refunded_amount"] is None
    assert record["cause"]["received_at"] == T0


def test_v1_canonical_event_decodes_with_todays_fields() -> None:
    record = codec.decode_as(codec.CANONICAL_EVENT, _v1_bytes(codec.CANONICAL_EVENT, V1_EVENT))
    assert set(record) == _current_fields(codec.CANONICAL_EVENT)
    assert {k: record[k] for k in V1_EVENT} == V1_EVENT
    assert record["amount"] is None
    assert record["currency"] is None


def test_current_records_take_the_direct_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """The worker decodes every record: today's records must not pay for resolution."""
    calls: list[int] = []
    real = fastavro.schemaless_reader

    def counting(fo: Any, writer: Any, reader: Any = None, **kw: Any) -> Any:
        calls.append(0 if reader is None else 1)
        return real(fo, writer, reader, **kw)

    monkeypatch.setattr(codec.fastavro, "schemaless_reader", counting)
    now = dict(V1_STATE, amount=Decimal("12.5000"), currency="EUR", refunded_amount=None)
    assert codec.decode_as(codec.ORDER_STATE, codec.encode(codec.ORDER_STATE, now)) == now
    codec.decode(_v1_bytes(codec.ORDER_STATE, V1_STATE))
    assert calls == [1]  # today's record took the compiled reader (schemas/avro_reader.py)


# -- every change is fully compatible ----------------------------------------------


def test_there_are_earlier_versions_to_check() -> None:
    assert (codec.ORDER_STATE, 1) in EARLIER


@pytest.mark.parametrize(("name", "version"), EARLIER, ids=lambda v: str(v))
def test_current_schema_is_fully_compatible_with_earlier_version(name: str, version: int) -> None:
    old, new = _earlier(name, version), codec.REGISTRY.schema(name)
    problems = full_problems(old.parsed, new.parsed)
    assert problems == {direction: [] for direction in problems}, (
        f"{name} (release {codec.REGISTRY.current_release}) is not fully compatible with its "
        f"version {version}; add fields with defaults, never rename or retype (schemas/README.md)"
    )


def _no_logical(node: Any) -> Any:
    """Resolution ignores logical types; random bytes are no valid decimal, so drop them."""
    if isinstance(node, dict):
        return {
            k: _no_logical(v)
            for k, v in node.items()
            if k != "logicalType" and not k.startswith("__")
        }
    if isinstance(node, list):
        return [_no_logical(v) for v in node]
    return node


def _bare(schema: codec.Schema) -> Any:
    named = {k: _no_logical(v) for k, v in schema.parsed.get("__named_schemas", {}).items()}
    return fastavro.parse_schema(_no_logical(schema.parsed), named_schemas=named)


@pytest.mark.parametrize(("name", "version"), EARLIER, ids=lambda v: str(v))
def test_fastavro_resolves_earlier_and_current_both_ways(name: str, version: int) -> None:
    """The static check's claim, tried on data: random records read across versions."""
    old, new = _bare(_earlier(name, version)), _bare(codec.REGISTRY.schema(name))
    random.seed(f"{name}:{version}")
    for writer, reader in ((old, new), (new, old)):
        for record in generate_many(writer, 30):
            out = io.BytesIO()
            fastavro.schemaless_writer(out, writer, record)
            out.seek(0)
            fastavro.schemaless_reader(out, writer, reader)


# -- the checker itself fails incompatible changes ---------------------------------


def _parsed(schema: dict[str, Any]) -> Any:
    return fastavro.parse_schema(schema, named_schemas={})


def _problems(old: dict[str, Any], new: dict[str, Any]) -> dict[str, list[str]]:
    return full_problems(_parsed(old), _parsed(new))


def test_adding_a_field_with_a_default_is_fully_compatible() -> None:
    assert _problems(_thing(), _thing(COLOUR)) == {
        "backward (new reader, old records)": [],
        "forward (old reader, new records)": [],
    }


def test_adding_a_field_without_a_default_breaks_backward() -> None:
    problems = _problems(_thing(), _thing({"name": "size", "type": "int"}))
    assert problems["backward (new reader, old records)"] == [
        "size: missing in the writer and has no default"
    ]
    assert problems["forward (old reader, new records)"] == []


def test_removing_a_field_without_a_default_breaks_forward() -> None:
    problems = _problems(_thing({"name": "size", "type": "int"}), _thing())
    assert problems["forward (old reader, new records)"] == [
        "size: missing in the writer and has no default"
    ]


@pytest.mark.parametrize(
    ("old", "new", "needle"),
    [
        ({"name": "n", "type": "string"}, {"name": "n", "type": "long"}, "cannot be read as"),
        (
            {"name": "n", "type": "int"},
            {"name": "n", "type": "long"},
            "long, cannot be read as int",
        ),
        (
            {"name": "n", "type": "string"},
            {"name": "n", "type": ["null", "long"], "default": None},
            "matches no branch",
        ),
        (
            {"name": "n", "type": ["null", "string"], "default": None},
            {"name": "n", "type": "string"},
            "written as null, cannot be read as string",
        ),
        (
            {"name": "n", "type": {"type": "enum", "name": "E", "symbols": ["A", "B"]}},
            {"name": "n", "type": {"type": "enum", "name": "E", "symbols": ["A"]}},
            "lacks symbol",
        ),
        (
            {
                "name": "n",
                "type": {"type": "bytes", "logicalType": "decimal", "precision": 18, "scale": 4},
            },
            {
                "name": "n",
                "type": {"type": "bytes", "logicalType": "decimal", "precision": 18, "scale": 2},
            },
            "scale",
        ),
        (
            {"name": "n", "type": {"type": "long", "logicalType": "timestamp-millis"}},
            {"name": "n", "type": {"type": "long", "logicalType": "timestamp-micros"}},
            "logical type",
        ),
        (
            {"name": "n", "type": {"type": "array", "items": "string"}},
            {"name": "n", "type": {"type": "array", "items": "int"}},
            "n[]",
        ),
    ],
)
def test_retyping_a_field_is_not_fully_compatible(
    old: dict[str, Any], new: dict[str, Any], needle: str
) -> None:
    problems = _problems(_thing(old), _thing(new))
    assert any(needle in p for found in problems.values() for p in found), problems


def test_enum_with_a_default_reads_unknown_symbols() -> None:
    wide = {"type": "enum", "name": "E", "symbols": ["A", "B"]}
    narrow = {"type": "enum", "name": "E", "symbols": ["A"], "default": "A"}
    assert read_problems(_parsed(wide), _parsed(narrow)) == []
    assert read_problems(_parsed(narrow), _parsed(wide)) == []
