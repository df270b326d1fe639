"""Avro records to warehouse rows: columns derived from schemas/, exact values."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
from hookline.schemas import codec
from hookline.warehouse import rows
from hookline.warehouse.rows import (
    ORDER_CHANGES,
    ORDERS_STATE,
    WEBHOOK_EVENTS,
    MappingError,
    TableDef,
)

MS = 1_772_406_000_123  # 2026-03-01T23:00:00.123Z


def state(version: int = 1, **fields: Any) -> dict[str, Any]:
    record = {
        "order_id": "ord_1",
        "environment": "production",
        "transaction_id": "tr_1",
        "order_status": "ACTIVE",
        "payment_status": "SUCCEEDED",
        "confirmation_pdf_url": None,
        "vignette_id": "vg_1",
        "version": version,
        "updated_at": MS,
        "amount": Decimal("15.7000"),
        "currency": "EUR",
        "refunded_amount": None,
    }
    return record | fields


def decoded(name: str, record: dict[str, Any]) -> dict[str, Any]:
    """The record as the sink sees it: through the real codec."""
    return codec.decode_as(name, codec.encode(name, record))


def test_every_order_state_field_is_a_column_with_its_exact_value() -> None:
    row = rows.to_row(ORDERS_STATE, decoded(codec.ORDER_STATE, state()))
    assert row == {
        "order_id": "ord_1",
        "environment": "production",
        "transaction_id": "tr_1",
        "order_status": "ACTIVE",
        "payment_status": "SUCCEEDED",
        "confirmation_pdf_url": None,
        "vignette_id": "vg_1",
        "version": 1,
        "updated_at": datetime(2026, 3, 1, 23, 0, 0, 123000, tzinfo=UTC),
        "amount": Decimal("15.7000"),
        "currency": "EUR",
        "refunded_amount": None,
    }
    assert set(row) == codec.REGISTRY.schema(codec.ORDER_STATE).fields


def test_change_is_flattened_into_before_after_and_cause_columns() -> None:
    change = {
        "order_id": "ord_1",
        "environment": "production",
        "version": 2,
        "before": state(1, order_status="PENDING", updated_at=MS - 1000),
        "after": state(2),
        "changed_fields": ["order_status"],
        "cause": {
            "event_id": "d1:0",
            "delivery_id": "d1",
            "source": "partner",
            "kind": "partner",
            "type": "order.status_changed",
            "received_at": MS,
            "provider_event_type": "ORDER_STATUS_CHANGED",
        },
    }
    row = rows.to_row(ORDER_CHANGES, decoded(codec.ORDER_CHANGE, change))
    assert row["before_order_status"] == "PENDING"
    assert row["after_order_status"] == "ACTIVE"
    assert row["updated_at"] == datetime(2026, 3, 1, 23, 0, 0, 123000, tzinfo=UTC)
    assert row["before_updated_at"] == datetime(2026, 3, 1, 22, 59, 59, 123000, tzinfo=UTC)
    assert row["after_amount"] == Decimal("15.7000")
    assert row["cause_provider_event_type"] == "ORDER_STATUS_CHANGED"
    assert row["changed_fields"] == ["order_status"]
    # Identity and version are not repeated inside before/after.
    assert not {"before_order_id", "after_order_id", "after_version", "after_updated_at"} & set(row)


def test_first_change_has_empty_before_columns() -> None:
    change = {
        "order_id": "ord_1",
        "environment": "production",
        "version": 1,
        "before": None,
        "after": state(1),
        "changed_fields": ["order_status"],
        "cause": {
            "event_id": "d1:0",
            "delivery_id": "d1",
            "source": "partner",
            "kind": "partner",
            "type": "order.status_changed",
            "received_at": MS,
        },
    }
    row = rows.to_row(ORDER_CHANGES, decoded(codec.ORDER_CHANGE, change))
    assert row["before_order_status"] is None
    assert row["before_amount"] is None
    assert row["cause_provider_event_type"] is None


def test_event_error_and_order_ids_columns() -> None:
    event = {
        "event_id": "d2:0",
        "delivery_id": "d2",
        "source": "vignette-sales",
        "kind": "vignette-sales",
        "environment": "production",
        "type": "transaction.status_changed",
        "entity_type": "transaction",
        "entity_id": "sale_1",
        "received_at": MS,
        "order_ids": ["a", "b"],
        "error": {"code": "VEHICLE_NOT_FOUND", "message": "no"},
    }
    row = rows.to_row(WEBHOOK_EVENTS, decoded(codec.CANONICAL_EVENT, event))
    assert row["error_code"] == "VEHICLE_NOT_FOUND"
    assert row["error_message"] == "no"
    assert row["order_ids"] == ["a", "b"]
    assert row["occurred_at"] is None
    assert row["amount"] is None


def test_only_key_version_and_time_are_required() -> None:
    required = {t.name: {c.name for c in rows.columns(t) if c.required} for t in rows.TABLES}
    assert required == {
        "orders_state": {"order_id", "version", "updated_at"},
        "order_changes": {"order_id", "version", "updated_at"},
        "webhook_events": {"event_id", "received_at"},
    }


def test_money_columns_keep_the_schema_precision() -> None:
    money = {
        c.name: (c.precision, c.scale) for c in rows.columns(ORDERS_STATE) if c.kind == "decimal"
    }
    assert money == {"amount": (18, 4), "refunded_amount": (18, 4)}


def test_a_missing_required_value_is_refused() -> None:
    with pytest.raises(MappingError, match="order_id"):
        rows.to_row(ORDERS_STATE, state() | {"order_id": None})


def test_an_unmappable_avro_type_is_named() -> None:
    weird = TableDef(
        name="weird",
        record=codec.ORDER_STATE,
        topic_suffix="x",
        key=("nope",),
        time_column="updated_at",
    )
    with pytest.raises(MappingError, match="nope"):
        rows.columns(weird)


def test_unique_rows_keeps_the_highest_version_and_first_copy() -> None:
    s1, s3, s2 = (rows.to_row(ORDERS_STATE, state(v)) for v in (1, 3, 2))
    assert rows.unique_rows(ORDERS_STATE, [s1, s3, s2]) == [s3]
    event = {"event_id": "e1", "received_at": datetime(2026, 1, 1, tzinfo=UTC)}
    copy = dict(event)
    assert rows.unique_rows(WEBHOOK_EVENTS, [event, copy]) == [event]


# -- the sink's fast path: rows.row_reader, as_row, latest_rows ---------------------


def change(version: int, before: dict[str, Any] | None) -> dict[str, Any]:
    return {
        "order_id": "ord_1",
        "environment": "production",
        "version": version,
        "before": before,
        "after": state(version),
        "changed_fields": ["order_status"],
        "cause": {
            "event_id": "d1:0",
            "delivery_id": "d1",
            "source": "partner",
            "kind": "partner",
            "type": "order.status_changed",
            "received_at": MS,
        },
    }


FAST_PATH_CASES = [
    (ORDERS_STATE, codec.ORDER_STATE, state()),
    (ORDERS_STATE, codec.ORDER_STATE, state(amount=None, transaction_id=None)),
    (ORDER_CHANGES, codec.ORDER_CHANGE, change(1, None)),
    (ORDER_CHANGES, codec.ORDER_CHANGE, change(2, state(1, order_status="PENDING"))),
    (
        WEBHOOK_EVENTS,
        codec.CANONICAL_EVENT,
        {
            "event_id": "d2:0",
            "delivery_id": "d2",
            "source": "vignette-sales",
            "kind": "vignette-sales",
            "environment": "production",
            "type": "transaction.status_changed",
            "entity_type": "transaction",
            "entity_id": "sale_1",
            "received_at": MS,
            "order_ids": ["a", "b"],
            "error": {"code": "VEHICLE_NOT_FOUND", "message": "no"},
        },
    ),
]


@pytest.mark.parametrize(("table", "name", "record"), FAST_PATH_CASES)
def test_row_reader_gives_to_rows_values_in_column_order(
    table: TableDef, name: str, record: dict[str, Any]
) -> None:
    value = decoded(name, record)
    row = rows.row_reader(table)(value)
    assert row == rows.as_row(table, rows.to_row(table, value))
    assert len(row) == len(rows.columns(table))
    at = row[rows.position(table, table.time_column)]
    assert at == MS * 1000  # microseconds, as Arrow keeps a timestamp


@pytest.mark.parametrize(
    ("record", "message"),
    [
        (state() | {"order_id": None}, "order_id is required"),
        (state() | {"amount": 15.7}, "expected a Decimal, got float"),
        (state() | {"updated_at": 2**62}, "beyond what a datetime holds"),
    ],
)
def test_row_reader_refuses_what_to_row_refuses(record: dict[str, Any], message: str) -> None:
    with pytest.raises(MappingError, match=message):
        rows.to_row(ORDERS_STATE, record)
    with pytest.raises(MappingError, match=message):
        rows.row_reader(ORDERS_STATE)(record)


def test_latest_rows_keeps_the_highest_version_and_first_copy() -> None:
    read = rows.row_reader(ORDERS_STATE)
    s1, s3, s2, other = (
        read(state(1)),
        read(state(3)),
        read(state(2)),
        read(state(1, order_id="o2")),
    )
    assert rows.latest_rows(ORDERS_STATE, [s1, s3, s2, other]) == [s3, other]
    again = read(state(3, order_status="PENDING"))  # an equal version: the first one stays
    assert rows.latest_rows(ORDERS_STATE, [s3, again]) == [s3]
    first, second = (rows.row_reader(ORDER_CHANGES)(change(2, None)) for _ in range(2))
    assert rows.latest_rows(ORDER_CHANGES, [first, second]) == [first]
    assert rows.latest_rows(
        ORDER_CHANGES, [first, rows.row_reader(ORDER_CHANGES)(change(3, None))]
    ) == [
        first,
        rows.row_reader(ORDER_CHANGES)(change(3, None)),
    ]


@pytest.mark.parametrize(("table", "name", "record"), FAST_PATH_CASES)
def test_compiled_row_reader_reads_the_bytes_into_the_same_row(
    table: TableDef, name: str, record: dict[str, Any]
) -> None:
    from hookline.warehouse.avro_rows import compile_row_reader

    data = codec.encode(name, record)
    row, end = compile_row_reader(table)(data, codec.HEADER_SIZE)
    assert end == len(data)
    assert row == rows.row_reader(table)(codec.decode_as(name, data))


def test_compiled_row_reader_refuses_what_the_general_way_refuses() -> None:
    from hookline.warehouse.avro_rows import compile_row_reader

    read = compile_row_reader(ORDERS_STATE)
    beyond = codec.encode(codec.ORDER_STATE, state(updated_at=2**62))
    with pytest.raises(MappingError, match="beyond what a datetime holds"):
        read(beyond, codec.HEADER_SIZE)
    data = codec.encode(codec.ORDER_STATE, state())
    with pytest.raises(ValueError, match=r"truncated|end"):
        read(data[:-3], codec.HEADER_SIZE)
