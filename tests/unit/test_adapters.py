"""core/adapters: provider JSON to canonical events (PRODUCT.md section 4, mapping)."""

from __future__ import annotations

import copy
import json
from decimal import Decimal
from typing import Any

import jwt
import pytest
from hookline.core.adapters import (
    ADAPTERS,
    Unmappable,
    adapter_for,
    envelope,
    envelope_problem,
    ordering_key,
    partner,
    payments,
    vignette_sales,
)
from hookline.core.events import CanonicalEvent, DeliveryContext
from hookline.core.sources import KINDS
from hookline.schemas import codec

from tests.unit.helpers import T0, ctx, iso_ms, payload, payload_bytes

KEY = "payments-jwt-key-0123456789abcdef-0123"
LONG_ID = "x" * 257
MAX_ID = "y" * 256


def base(context: DeliveryContext, index: int = 0) -> dict[str, Any]:
    """The fields every event gets from its delivery, with everything optional unset."""
    return {
        "event_id": f"{context.delivery_id}:{index}",
        "delivery_id": context.delivery_id,
        "source": context.source,
        "kind": context.kind,
        "environment": context.environment,
        "received_at": context.received_at,
        "provider_event_type": None,
        "occurred_at": None,
        "order_id": None,
        "transaction_id": None,
        "order_ids": [],
        "order_status": None,
        "payment_status": None,
        "confirmation_pdf_url": None,
        "vignette_id": None,
        "error": None,
        "amount": None,
        "currency": None,
        "refused_amount": None,
        "provider_event_id": None,
    }


def schema_valid(events: list[CanonicalEvent]) -> list[CanonicalEvent]:
    for event in events:
        assert codec.decode_as(
            codec.CANONICAL_EVENT, codec.encode(codec.CANONICAL_EVENT, event)
        ) == (event)
    return events


def token(claims: dict[str, Any], key: str = KEY, **headers: Any) -> str:
    return jwt.encode(claims, key, algorithm="HS256", headers=headers or None)


def payments_doc(claims: dict[str, Any], key: str = KEY) -> dict[str, Any]:
    return {"token": token(claims, key)}


def test_one_adapter_per_kind() -> None:
    assert set(ADAPTERS) == set(KINDS)
    for kind in KINDS:
        assert kind == adapter_for(kind).KIND
    with pytest.raises(Unmappable):
        adapter_for("unknown")


# -- partner ---------------------------------------------------------------------------

PC = ctx("d-p", T0, kind="partner", source_name="partner")


def test_partner_order_status() -> None:
    events = schema_valid(partner.to_events(payload("partner-order-status.json"), PC))
    assert events == [
        base(PC)
        | {
            "type": "order.status_changed",
            "entity_type": "order",
            "entity_id": "ord_5a71",
            "provider_event_type": "ORDER_STATUS_CHANGED",
            "occurred_at": iso_ms("2026-11-21T10:15:09Z"),
            "order_id": "ord_5a71",
            "transaction_id": "tr_8c1f0d2a",
            "order_status": "ACTIVE",
        }
    ]


@pytest.mark.parametrize("status", ["CREATED", "PENDING", "DEFERRED", "ACTIVE", "REFUNDED"])
def test_partner_order_status_values(status: str) -> None:
    document = dict(payload("partner-order-status.json"), status=status)
    [event] = partner.to_events(document, PC)
    assert event["order_status"] == status


def test_partner_order_status_without_transaction() -> None:
    document = payload("partner-order-status.json")
    del document["transaction_id"]
    [event] = partner.to_events(document, PC)
    assert event["transaction_id"] is None
    assert event["order_status"] == "ACTIVE"


def priced(context: DeliveryContext, index: int, order_id: str, **fields: Any) -> dict[str, Any]:
    """An order.priced event of a partner checkout."""
    return (
        base(context, index)
        | {
            "type": "order.priced",
            "entity_type": "order",
            "entity_id": order_id,
            "provider_event_type": "CHECKOUT_STATUS_CHANGED",
            "order_id": order_id,
        }
        | fields
    )


def test_partner_checkout_multi() -> None:
    events = schema_valid(partner.to_events(payload("partner-checkout-multi.json"), PC))
    occurred = iso_ms("2026-11-21T10:15:02Z")
    money = {"amount": Decimal("15.7000"), "currency": "EUR", "occurred_at": occurred}
    assert events == [
        base(PC)
        | {
            "type": "transaction.status_changed",
            "entity_type": "transaction",
            "entity_id": "tr_8c1f0d2a",
            "provider_event_type": "CHECKOUT_STATUS_CHANGED",
            "occurred_at": occurred,
            "transaction_id": "tr_8c1f0d2a",
            "order_ids": ["ord_5a71", "ord_5a72"],
            "payment_status": "SUCCEEDED",
        },
        priced(PC, 1, "ord_5a71", transaction_id="tr_8c1f0d2a", **money),
        priced(PC, 2, "ord_5a72", transaction_id="tr_8c1f0d2a", **money),
    ]
    assert all(type(event["amount"]) is Decimal for event in events[1:])


def test_partner_checkout_single_created_is_pending() -> None:
    transaction, order = partner.to_events(payload("partner-checkout-single.json"), PC)
    assert transaction["payment_status"] == "PENDING"
    assert transaction["transaction_id"] == transaction["entity_id"] == "tr_8c1f0d2b"
    assert transaction["order_ids"] == ["ord_5a73"]
    assert transaction["amount"] is None
    assert (order["type"], order["order_id"], order["transaction_id"]) == (
        "order.priced",
        "ord_5a73",
        "tr_8c1f0d2b",
    )
    assert (order["amount"], order["currency"]) == (Decimal("15.7000"), "EUR")
    assert order["payment_status"] is None
    assert order["order_status"] is None


@pytest.mark.parametrize(
    ("status", "mapped"), [("CREATED", "PENDING"), ("SUCCESS", "SUCCEEDED"), ("FAILED", "FAILED")]
)
def test_partner_checkout_statuses(status: str, mapped: str) -> None:
    document = dict(payload("partner-checkout-multi.json"), status=status)
    event, *prices = partner.to_events(document, PC)
    assert event["payment_status"] == mapped
    assert event["order_ids"] == ["ord_5a71", "ord_5a72"]
    assert [p["order_id"] for p in prices] == ["ord_5a71", "ord_5a72"]


def test_partner_checkout_without_orders() -> None:
    document = payload("partner-checkout-multi.json")
    del document["orders"]
    [event] = partner.to_events(document, PC)
    assert event["order_ids"] == []
    assert event["payment_status"] == "SUCCEEDED"


def checkout(*orders: dict[str, Any], **top: Any) -> dict[str, Any]:
    return payload("partner-checkout-multi.json") | {"orders": list(orders)} | top


def test_partner_checkout_prices_only_orders_with_an_amount() -> None:
    document = checkout(
        {"order_id": "o1", "amount": 10},
        {"order_id": "o2"},
        {"order_id": "o3", "amount": None},
        {"order_id": "o4", "amount": 0.1},
        currency="huf",
    )
    events = schema_valid(partner.to_events(document, PC))
    assert events[0]["order_ids"] == ["o1", "o2", "o3", "o4"]
    assert [(e["event_id"], e["order_id"], e["amount"], e["currency"]) for e in events[1:]] == [
        ("d-p:1", "o1", Decimal("10.0000"), "HUF"),
        ("d-p:2", "o4", Decimal("0.1000"), "HUF"),
    ]
    assert all(e["transaction_id"] == "tr_8c1f0d2a" for e in events[1:])


def test_partner_checkout_without_currency_prices_without_currency() -> None:
    document = checkout({"order_id": "o1", "amount": 15.7})
    del document["currency"]
    [_, order] = schema_valid(partner.to_events(document, PC))
    assert (order["amount"], order["currency"]) == (Decimal("15.7000"), None)


def test_partner_checkout_order_listed_twice_is_one_order() -> None:
    document = checkout({"order_id": "o1", "amount": 5}, {"order_id": "o1", "amount": 5})
    events = partner.to_events(document, PC)
    assert events[0]["order_ids"] == ["o1"]
    assert [e["order_id"] for e in events[1:]] == ["o1"]


def test_partner_order_confirmation() -> None:
    events = schema_valid(partner.to_events(payload("partner-order-confirmation.json"), PC))
    assert events == [
        base(PC)
        | {
            "type": "order.confirmation_received",
            "entity_type": "order",
            "entity_id": "ord_5a71",
            "provider_event_type": "ORDER_CONFIRMATION_RECEIVED",
            "occurred_at": iso_ms("2026-11-21T10:16:45Z"),
            "order_id": "ord_5a71",
            "transaction_id": "tr_8c1f0d2a",
            "confirmation_pdf_url": "https://files.example.com/confirmations/ord_5a71.pdf",
        }
    ]


def _with(name: str, **changes: Any) -> dict[str, Any]:
    document = payload(name)
    for key, value in changes.items():
        if value is ...:
            del document[key]
        else:
            document[key] = value
    return document


@pytest.mark.parametrize(
    "document",
    [
        _with("partner-order-status.json", event_type="ORDER_DELETED"),
        _with("partner-order-status.json", event_type="order_status_changed"),
        _with("partner-order-status.json", event_type=None),
        _with("partner-order-status.json", status="SHIPPED"),
        _with("partner-order-status.json", status="active"),
        _with("partner-order-status.json", status=...),
        _with("partner-order-status.json", order_id=...),
        _with("partner-order-status.json", order_id=""),
        _with("partner-order-status.json", order_id=12345),
        _with("partner-order-status.json", order_id=LONG_ID),
        _with("partner-order-status.json", transaction_id=LONG_ID),
        _with("partner-order-confirmation.json", pdf_url=...),
        _with("partner-order-confirmation.json", pdf_url="https://x/" + "p" * 2048),
        _with("partner-order-confirmation.json", order_id=LONG_ID),
        _with("partner-checkout-multi.json", status="SUCCEEDED"),
        _with("partner-checkout-multi.json", status=...),
        _with("partner-checkout-multi.json", transaction_id=...),
        _with("partner-checkout-multi.json", transaction_id=LONG_ID),
        _with("partner-checkout-multi.json", orders="ord_5a71"),
        _with("partner-checkout-multi.json", orders=["ord_5a71"]),
        _with("partner-checkout-multi.json", orders=[{"id": "ord_5a71"}]),
        _with("partner-checkout-multi.json", orders=[{"order_id": LONG_ID}]),
        checkout({"order_id": "o1", "amount": "abc"}),
        checkout({"order_id": "o1", "amount": True}),
        checkout({"order_id": "o1", "amount": {"value": 1}}),
        checkout({"order_id": "o1", "amount": 1}, currency="EURO"),
        checkout({"order_id": "o1", "amount": 1}, currency=978),
    ],
)
def test_partner_unmappable(document: dict[str, Any]) -> None:
    with pytest.raises(Unmappable):
        partner.to_events(document, PC)


@pytest.mark.parametrize(
    ("bad", "text"), [(-15.7, "-15.7"), (1.23456, "1.23456"), (10**15, "1000000000000000")]
)
def test_partner_checkout_refuses_one_bad_price_and_keeps_the_others(bad: Any, text: str) -> None:
    """PRODUCT.md section 4: the refused amount is marked, the checkout's other facts stay."""
    document = checkout(
        {"order_id": "o1", "amount": 10}, {"order_id": "o2", "amount": bad}, currency="EUR"
    )
    events = schema_valid(partner.to_events(document, PC))
    assert events[0]["order_ids"] == ["o1", "o2"]
    assert [
        (e["order_id"], e["amount"], e["refused_amount"], e["currency"]) for e in events[1:]
    ] == [
        ("o1", Decimal("10.0000"), None, "EUR"),
        ("o2", None, text, "EUR"),
    ]


def test_partner_ids_of_256_characters_are_fine() -> None:
    [event] = partner.to_events(_with("partner-order-status.json", order_id=MAX_ID), PC)
    assert event["order_id"] == MAX_ID


def test_partner_envelope_problem() -> None:
    assert partner.envelope_problem(payload("partner-order-status.json")) is None
    assert partner.envelope_problem({"event_type": "UNKNOWN_BUT_STRING"}) is None
    assert partner.envelope_problem({}) is not None
    assert partner.envelope_problem({"event_type": 3}) is not None
    assert partner.envelope_problem({"type": "ORDER_STATUS_CHANGED"}) is not None


def test_partner_dedup_key_is_the_content() -> None:
    body = payload_bytes("partner-order-status.json")
    document = json.loads(body)
    key, digest = partner.dedup_identity(document, ())
    assert key == "json:" + digest
    assert partner.dedup_identity(json.loads(body), ()) == (key, digest)
    other = body.replace(b"AB123CD", b"AB123CE")
    assert partner.dedup_identity(json.loads(other), ())[0] != key
    # Same content, other bytes: a trailing newline or other indentation is the same delivery.
    assert partner.dedup_identity(json.loads(body + b"\n"), ())[0] == key
    assert partner.dedup_identity(json.loads(json.dumps(document, indent=7)), ())[0] == key


def test_partner_ordering_key() -> None:
    assert ordering_key("partner", payload("partner-order-status.json")) == "ord_5a71"
    assert ordering_key("partner", payload("partner-order-confirmation.json")) == "ord_5a71"
    assert ordering_key("partner", payload("partner-checkout-multi.json")) == "tr_8c1f0d2a"
    assert ordering_key("partner", {"event_type": "PING"}) == "PING"


# -- vignette-sales ---------------------------------------------------------------------

VC = ctx("d-v", T0, kind="vignette-sales", source_name="vignette-sales")
SALE_OK = "vignette-sales-success.json"
SALE_FAILED = "vignette-sales-failure.json"


def test_vignette_sales_success() -> None:
    events = schema_valid(vignette_sales.to_events(payload(SALE_OK), VC))
    created = iso_ms("2026-11-21T08:00:00Z")
    assert events == [
        base(VC, 0)
        | {
            "type": "transaction.status_changed",
            "entity_type": "transaction",
            "entity_id": "sale_20261121_0001",
            "provider_event_type": "sale.succeeded",
            "occurred_at": created,
            "transaction_id": "sale_20261121_0001",
            "order_ids": ["row_1"],
            "payment_status": "SUCCEEDED",
        },
        base(VC, 1)
        | {
            "type": "order.status_changed",
            "entity_type": "order",
            "entity_id": "row_1",
            "provider_event_type": "sale.row",
            "occurred_at": created,
            "order_id": "row_1",
            "transaction_id": "sale_20261121_0001",
            "order_status": "ACTIVE",
            "vignette_id": "kp_1",
            "amount": Decimal("30.6800"),
            "currency": "BGN",
        },
    ]
    assert events[0]["amount"] is None  # the sale total is not an order's price


def sale_with_rows(*rows: Any, vignette_id: str = "vg_7731") -> dict[str, Any]:
    document = payload(SALE_OK)
    document["vignetteId"] = vignette_id
    document["vignetteSale"]["data"]["saleRows"] = list(rows)
    return document


def row(row_id: str, active: Any = True, kapsch: Any = "default") -> dict[str, Any]:
    template = copy.deepcopy(payload(SALE_OK)["vignetteSale"]["data"]["saleRows"][0])
    template["id"] = row_id
    if active is ...:
        del template["active"]
    else:
        template["active"] = active
    if kapsch is ...:
        del template["kapschProperties"]
    elif kapsch != "default":
        template["kapschProperties"] = kapsch
    return template


def test_vignette_sales_rows() -> None:
    document = sale_with_rows(
        row("r1", True, {"id": "kp_a"}),
        row("r2", False, {"id": "kp_b"}),
        row("r3", ..., ...),
        row("r4", "true", {"id": ""}),
        row("r5", 1, None),
        row("r6", True, {"status": 1}),
    )
    events = schema_valid(vignette_sales.to_events(document, VC))
    assert events[0]["order_ids"] == ["r1", "r2", "r3", "r4", "r5", "r6"]
    assert events[0]["payment_status"] == "SUCCEEDED"
    orders = events[1:]
    assert [e["event_id"] for e in orders] == [f"d-v:{i}" for i in range(1, 7)]
    assert [(e["order_id"], e["order_status"], e["vignette_id"]) for e in orders] == [
        ("r1", "ACTIVE", "kp_a"),
        ("r2", "PENDING", "kp_b"),
        ("r3", "PENDING", "vg_7731"),
        ("r4", "PENDING", "vg_7731"),
        ("r5", "PENDING", "vg_7731"),
        ("r6", "ACTIVE", "vg_7731"),
    ]
    assert all(e["transaction_id"] == "sale_20261121_0001" for e in orders)
    assert all(e["payment_status"] is None for e in orders)


def test_vignette_sales_rows_carry_their_price() -> None:
    document = sale_with_rows(
        row("r1", True, {"id": "kp_a", "price": {"currency": "EUR", "amount": 15.70}}),
        row("r2", True, {"id": "kp_b", "price": {"currency": "bgn", "amount": 30}}),
        row("r3", True, {"id": "kp_c"}),
        row("r4", True, {"id": "kp_d", "price": "30.68 BGN"}),
        row("r5", True, {"id": "kp_e", "price": {"currency": "BGN"}}),
        row("r6", True, {"id": "kp_f", "price": {"amount": 0.1}}),
    )
    events = schema_valid(vignette_sales.to_events(document, VC))
    assert [(e["order_id"], e["amount"], e["currency"]) for e in events[1:]] == [
        ("r1", Decimal("15.7000"), "EUR"),
        ("r2", Decimal("30.0000"), "BGN"),
        ("r3", None, None),
        ("r4", None, None),
        ("r5", None, None),  # a currency without an amount is no price
        ("r6", Decimal("0.1000"), None),
    ]


@pytest.mark.parametrize(
    "price",
    [
        {"currency": "BGN", "amount": "abc"},
        {"currency": "BGN", "amount": False},
        {"currency": "BG", "amount": 30.68},
        {"currency": 975, "amount": 30.68},
    ],
)
def test_vignette_sales_bad_price_is_unmappable(price: dict[str, Any]) -> None:
    document = sale_with_rows(row("r1", True, {"id": "kp_a", "price": price}))
    with pytest.raises(Unmappable, match="'r1'"):
        vignette_sales.to_events(document, VC)


def test_vignette_sales_refuses_a_row_price_out_of_range_and_keeps_the_row() -> None:
    document = sale_with_rows(
        row("r1", True, {"id": "kp_a", "price": {"currency": "BGN", "amount": -30.68}}),
        row("r2", True, {"id": "kp_b", "price": {"currency": "BGN", "amount": 30.68}}),
    )
    events = schema_valid(vignette_sales.to_events(document, VC))
    assert [
        (e["order_id"], e["order_status"], e["amount"], e["refused_amount"]) for e in events[1:]
    ] == [("r1", "ACTIVE", None, "-30.68"), ("r2", "ACTIVE", Decimal("30.6800"), None)]


def test_vignette_sales_row_without_any_vignette_id() -> None:
    document = sale_with_rows(row("r1", True, ...), vignette_id="")
    assert vignette_sales.to_events(document, VC)[1]["vignette_id"] is None


def test_vignette_sales_failure_keeps_error() -> None:
    events = schema_valid(vignette_sales.to_events(payload(SALE_FAILED), VC))
    assert events == [
        base(VC)
        | {
            "type": "transaction.status_changed",
            "entity_type": "transaction",
            "entity_id": "sale_20261121_0002",
            "provider_event_type": "sale.failed",
            "transaction_id": "sale_20261121_0002",
            "payment_status": "FAILED",
            "error": {
                "code": "VEHICLE_NOT_FOUND",
                "message": "The licence plate could not be validated",
            },
        }
    ]


def test_vignette_sales_failure_without_error_object() -> None:
    document = payload(SALE_FAILED)
    del document["vignetteSale"]["error"]
    [event] = vignette_sales.to_events(document, VC)
    assert event["payment_status"] == "FAILED"
    assert event["error"] == {"code": None, "message": None}


def _sale(mutate: str) -> dict[str, Any]:
    document = payload(SALE_OK)
    data = document["vignetteSale"]["data"]
    if mutate == "success-string":
        document["vignetteSale"]["success"] = "true"
    elif mutate == "success-missing":
        del document["vignetteSale"]["success"]
    elif mutate == "no-data":
        del document["vignetteSale"]["data"]
    elif mutate == "rows-not-list":
        data["saleRows"] = {"id": "row_1"}
    elif mutate == "rows-missing":
        del data["saleRows"]
    elif mutate == "row-not-object":
        data["saleRows"] = ["row_1"]
    elif mutate == "row-null":
        data["saleRows"].append(None)
    elif mutate == "row-no-id":
        del data["saleRows"][0]["id"]
    elif mutate == "row-long-id":
        data["saleRows"][0]["id"] = LONG_ID
    elif mutate == "sale-id-missing":
        del document["saleId"]
    elif mutate == "sale-id-long":
        document["saleId"] = LONG_ID
    elif mutate == "sale-not-object":
        document["vignetteSale"] = [document["vignetteSale"]]
    elif mutate == "kapsch-id-long":
        data["saleRows"][0]["kapschProperties"]["id"] = LONG_ID
    else:
        raise AssertionError(mutate)
    return document


@pytest.mark.parametrize(
    "mutate",
    [
        "success-string",
        "success-missing",
        "no-data",
        "rows-not-list",
        "rows-missing",
        "row-not-object",
        "row-null",
        "row-no-id",
        "row-long-id",
        "sale-id-missing",
        "sale-id-long",
        "sale-not-object",
        "kapsch-id-long",
    ],
)
def test_vignette_sales_unmappable(mutate: str) -> None:
    with pytest.raises(Unmappable):
        vignette_sales.to_events(_sale(mutate), VC)


def test_vignette_sales_failed_sale_with_long_id_is_unmappable() -> None:
    document = dict(payload(SALE_FAILED), saleId=LONG_ID)
    with pytest.raises(Unmappable):
        vignette_sales.to_events(document, VC)


def test_vignette_sales_envelope_problem() -> None:
    assert vignette_sales.envelope_problem(payload(SALE_OK)) is None
    assert vignette_sales.envelope_problem(payload(SALE_FAILED)) is None
    assert vignette_sales.envelope_problem({"saleId": "s"}) is not None
    assert vignette_sales.envelope_problem({"vignetteSale": {}}) is not None
    assert vignette_sales.envelope_problem({"saleId": 1, "vignetteSale": {}}) is not None
    assert vignette_sales.envelope_problem({"saleId": "s", "vignetteSale": True}) is not None


def test_vignette_sales_dedup_key_is_the_content() -> None:
    body = payload_bytes(SALE_OK)
    same, digest = vignette_sales.dedup_identity(json.loads(body), ())
    assert same == "json:" + digest
    assert vignette_sales.dedup_identity(payload(SALE_OK), ()) == (same, digest)
    other = payload_bytes(SALE_FAILED)
    assert vignette_sales.dedup_identity(json.loads(other), ())[0] != same


def test_vignette_sales_ordering_key_is_the_sale() -> None:
    assert ordering_key("vignette-sales", payload(SALE_OK)) == "sale_20261121_0001"
    assert ordering_key("vignette-sales", payload(SALE_FAILED)) == "sale_20261121_0002"


# -- payments -------------------------------------------------------------------------

YC = ctx("d-y", T0, kind="payments", source_name="payments")
CLAIMS = payload("payments-claims.json")


def test_payments_completed() -> None:
    events = schema_valid(payments.to_events(payments_doc(CLAIMS), YC))
    assert events == [
        base(YC)
        | {
            "type": "transaction.status_changed",
            "entity_type": "transaction",
            "entity_id": "tr_8c1f0d2a",
            "provider_event_type": "payment.completed",
            "transaction_id": "tr_8c1f0d2a",
            "payment_status": "SUCCEEDED",
            "amount": Decimal("31.4000"),
            "currency": "EUR",
        }
    ]


@pytest.mark.parametrize(
    ("status", "mapped"),
    [
        ("processing", "PENDING"),
        ("completed", "SUCCEEDED"),
        ("canceled", "CANCELED"),
        ("expired", "EXPIRED"),
        ("failed", "FAILED"),
    ],
)
def test_payments_statuses(status: str, mapped: str) -> None:
    [event] = payments.to_events(payments_doc({**CLAIMS, "paymentStatus": status}), YC)
    assert event["payment_status"] == mapped
    assert event["order_ids"] == []


@pytest.mark.parametrize(
    "claims",
    [
        {**CLAIMS, "paymentStatus": "refunded"},
        {**CLAIMS, "paymentStatus": "COMPLETED"},
        {**CLAIMS, "paymentStatus": None},
        {k: v for k, v in CLAIMS.items() if k != "paymentStatus"},
        {k: v for k, v in CLAIMS.items() if k != "orderReference"},
        {**CLAIMS, "orderReference": ""},
        {**CLAIMS, "orderReference": 42},
        {**CLAIMS, "orderReference": LONG_ID},
    ],
)
def test_payments_unmappable(claims: dict[str, Any]) -> None:
    with pytest.raises(Unmappable):
        payments.to_events(payments_doc(claims), YC)


@pytest.mark.parametrize("document", [{"token": "not-a-jwt"}, {"token": "a.b.c"}, {}])
def test_payments_unreadable_token_is_unmappable(document: dict[str, Any]) -> None:
    with pytest.raises(Unmappable):
        payments.to_events(document, YC)
    with pytest.raises(Unmappable):
        payments.dedup_identity(document, ())


def test_payments_envelope_problem() -> None:
    assert payments.envelope_problem(payments_doc(CLAIMS)) is None
    for document in ({}, {"token": ""}, {"token": 5}, {"token": None}, {"jwt": "a.b.c"}):
        assert payments.envelope_problem(document) is not None


def _key(claims: dict[str, Any], key: str = KEY) -> str:
    dedup_key, digest = payments.dedup_identity(payments_doc(claims, key), ())
    assert dedup_key == "claims:" + digest
    return dedup_key


def test_payments_dedup_key_ignores_signing_claims() -> None:
    first = _key({**CLAIMS, "iat": 1_700_000_000, "exp": 1_700_000_600})
    retry = _key(
        {**CLAIMS, "iat": 1_700_000_300, "exp": 1_700_000_900, "nbf": 1_700_000_300, "jti": "r2"},
        key="a-different-signing-key-0123456789abcdef",
    )
    plain = _key(CLAIMS)
    assert first == retry == plain


def test_payments_dedup_key_ignores_claim_order_and_token_header() -> None:
    reordered = dict(reversed(list(CLAIMS.items())))
    document = {"token": token(reordered, KEY, kid="k2")}
    assert payments.dedup_identity(document, ())[0] == _key(CLAIMS)


@pytest.mark.parametrize(
    "changed",
    [
        {"paymentStatus": "failed"},
        {"orderReference": "tr_other"},
        {"paymentDetails": {**CLAIMS["paymentDetails"], "amount": 31.41}},
        {"event": "payment.completed.v2"},
        {"iss": "payments"},
        {"sub": "tr_8c1f0d2a"},
        {"aud": "hookline"},
        {"extra": None},
    ],
)
def test_payments_dedup_key_sees_other_claims(changed: dict[str, Any]) -> None:
    assert _key({**CLAIMS, **changed}) != _key(CLAIMS)


def test_payments_amount_reaches_the_transaction_event() -> None:
    # PRODUCT.md section 4: paymentDetails.amount/currency are the transaction's amount.
    [event] = schema_valid(payments.to_events(payments_doc(CLAIMS), YC))
    assert (event["amount"], event["currency"]) == (Decimal("31.4000"), "EUR")
    assert event["order_id"] is None  # the transaction's, never an order's price


def test_payments_amount_out_of_range_is_refused_and_the_status_applies() -> None:
    details = {**CLAIMS["paymentDetails"], "amount": -31.4}
    [event] = payments.to_events(payments_doc({**CLAIMS, "paymentDetails": details}), YC)
    assert (event["amount"], event["refused_amount"]) == (None, "-31.4")
    assert event["payment_status"] == "SUCCEEDED"


def test_payments_without_details_carry_no_amount() -> None:
    claims = {k: v for k, v in CLAIMS.items() if k != "paymentDetails"}
    [event] = payments.to_events(payments_doc(claims), YC)
    assert (event["amount"], event["currency"], event["refused_amount"]) == (None, None, None)


def test_payments_ordering_key_is_the_order_reference() -> None:
    assert ordering_key("payments", payments_doc(CLAIMS)) == "tr_8c1f0d2a"
    resigned = payments_doc({**CLAIMS, "iat": 1_700_000_000, "jti": "r2"})
    assert ordering_key("payments", resigned) == "tr_8c1f0d2a"


# -- envelope ----------------------------------------------------------------------------

EC = ctx("d-e", T0, kind="envelope", source_name="envelope")


def test_envelope_refund_refunds_the_order() -> None:
    events = schema_valid(envelope.to_events(payload("envelope-refund.json"), EC))
    assert events == [
        base(EC)
        | {
            "type": "order.refunded",
            "entity_type": "order",
            "entity_id": "ord_5a72",
            "provider_event_type": "subscription_event_refund",
            "occurred_at": iso_ms("2026-11-22T09:00:00Z"),
            "order_id": "ord_5a72",
            "amount": Decimal("15.7000"),
            "currency": "EUR",
            "provider_event_id": "wh_01JD8Q5R2N7",
        }
    ]


def test_envelope_chargeback_refunds_the_order() -> None:
    document = dict(payload("envelope-refund.json"), type="subscription_manual_chargeback")
    [event] = envelope.to_events(document, EC)
    assert event["type"] == "order.refunded"
    assert event["order_id"] == "ord_5a72"
    # The order state decides REFUNDED (amount against the order's price), not the adapter.
    assert event["order_status"] is None
    assert (event["amount"], event["currency"]) == (Decimal("15.7000"), "EUR")
    assert event["provider_event_type"] == "subscription_manual_chargeback"


def refund(**data: Any) -> dict[str, Any]:
    document = payload("envelope-refund.json")
    for key, value in data.items():
        if value is ...:
            del document["data"][key]
        else:
            document["data"][key] = value
    return document


@pytest.mark.parametrize(
    ("data", "amount", "currency"),
    [
        ({"amount": ..., "currency": ...}, None, None),  # a full refund
        ({"amount": None}, None, "EUR"),
        ({"amount": 5}, Decimal("5.0000"), "EUR"),
        ({"amount": 0.1, "currency": "huf"}, Decimal("0.1000"), "HUF"),
        ({"amount": 15.70, "currency": ...}, Decimal("15.7000"), None),
    ],
)
def test_envelope_refund_amounts(
    data: dict[str, Any], amount: Decimal | None, currency: Any
) -> None:
    [event] = schema_valid(envelope.to_events(refund(**data), EC))
    assert event["type"] == "order.refunded"
    assert (event["amount"], event["currency"]) == (amount, currency)
    assert event["order_status"] is None


@pytest.mark.parametrize("data", [{"amount": "abc"}, {"amount": True}, {"currency": "EU"}])
def test_envelope_refund_bad_amount_is_unmappable(data: dict[str, Any]) -> None:
    with pytest.raises(Unmappable, match="data"):
        envelope.to_events(refund(**data), EC)


@pytest.mark.parametrize(("amount", "text"), [(-1, "-1"), (1.23456, "1.23456")])
def test_envelope_refund_amount_out_of_range_is_refused_never_a_full_refund(
    amount: Any, text: str
) -> None:
    [event] = schema_valid(envelope.to_events(refund(amount=amount), EC))
    assert event["type"] == "order.refunded"
    assert (event["amount"], event["refused_amount"]) == (None, text)


def test_envelope_refund_without_order_keeps_its_amount() -> None:
    # PRODUCT.md section 4: only a refund naming an order refunds; the event keeps the amount.
    [event] = schema_valid(envelope.to_events(refund(order_id=...), EC))
    assert event["type"] == "envelope.subscription_event_refund"
    assert (event["amount"], event["currency"]) == (Decimal("15.7000"), "EUR")
    assert event["provider_event_id"] == "wh_01JD8Q5R2N7"


@pytest.mark.parametrize("order_id", [..., None, ""])
@pytest.mark.parametrize(
    "event_type", ["subscription_event_refund", "subscription_manual_chargeback"]
)
def test_envelope_refund_without_order_is_only_an_event(event_type: str, order_id: Any) -> None:
    document = dict(payload("envelope-refund.json"), type=event_type)
    if order_id is ...:
        del document["data"]["order_id"]
    else:
        document["data"]["order_id"] = order_id
    [event] = schema_valid(envelope.to_events(document, EC))
    assert event["type"] == f"envelope.{event_type}"
    assert event["order_status"] is None
    assert event["order_id"] is None
    assert (event["entity_type"], event["entity_id"]) == ("subscription", "sub_42")


def test_envelope_user_create_is_only_an_event() -> None:
    events = schema_valid(envelope.to_events(payload("envelope-user-create.json"), EC))
    assert events == [
        base(EC)
        | {
            "type": "envelope.subscription_user_create",
            "entity_type": "subscription",
            "entity_id": "sub_43",
            "provider_event_type": "subscription_user_create",
            "occurred_at": iso_ms("2026-11-22T09:01:00Z"),
            "provider_event_id": "wh_01JD8Q5R2N8",
        }
    ]


def test_other_type_naming_an_order_changes_nothing() -> None:
    document = dict(payload("envelope-refund.json"), type="subscription_event_renewal")
    [event] = envelope.to_events(document, EC)
    assert event["order_status"] is None
    assert event["order_id"] is None
    assert event["type"] == "envelope.subscription_event_renewal"


def test_envelope_without_subscription_is_about_the_delivery() -> None:
    document = {"id": "wh_1", "type": "ping", "data": {}}
    [event] = envelope.to_events(document, EC)
    assert (event["entity_type"], event["entity_id"]) == ("other", "wh_1")
    assert event["occurred_at"] is None


@pytest.mark.parametrize(
    "document",
    [
        {"type": "subscription_event_refund", "data": {}},
        {"id": "", "type": "x", "data": {}},
        {"id": LONG_ID, "type": "x", "data": {}},
        {"id": "wh_1", "data": {}},
        {"id": "wh_1", "type": "t" * 101, "data": {}},
        {"id": "wh_1", "type": "x", "data": "nope"},
        {"id": "wh_1", "type": "x"},
        {"id": "wh_1", "type": "subscription_event_refund", "data": {"order_id": LONG_ID}},
        {"id": "wh_1", "type": "subscription_event_refund", "data": {"order_id": 7}},
    ],
)
def test_envelope_unmappable(document: dict[str, Any]) -> None:
    with pytest.raises(Unmappable):
        envelope.to_events(document, EC)


def test_envelope_dedup_key_is_the_id() -> None:
    first = payload("envelope-refund.json")
    resent = dict(first, created_at="2026-11-22T09:05:00Z")
    key, digest = envelope.dedup_identity(first, ())
    assert key == "id:wh_01JD8Q5R2N7"
    assert envelope.dedup_identity(resent, ())[0] == key
    assert envelope.dedup_identity(resent, ())[1] != digest  # other content: a conflict
    assert envelope.dedup_identity(payload("envelope-refund.json"), ()) == (key, digest)
    other = payload("envelope-user-create.json")
    assert envelope.dedup_identity(other, ())[0] != key


def test_envelope_ordering_key_is_the_id() -> None:
    assert ordering_key("envelope", payload("envelope-refund.json")) == "wh_01JD8Q5R2N7"
    assert ordering_key("envelope", payload("envelope-user-create.json")) == "wh_01JD8Q5R2N8"
    conflicting = refund(order_id="ord_other", amount=1)
    assert ordering_key("envelope", conflicting) == "wh_01JD8Q5R2N7"


def test_ordering_key_is_bounded() -> None:
    assert ordering_key("envelope", {"id": "i" * 1000, "type": "t", "data": {}}) == "i" * 256


def test_envelope_envelope_problem() -> None:
    assert envelope.envelope_problem(payload("envelope-refund.json")) is None
    assert envelope.envelope_problem({"id": "i", "type": "t", "data": {}}) is None
    for document in (
        {},
        {"type": "t", "data": {}},
        {"id": 1, "type": "t", "data": {}},
        {"id": "i", "data": {}},
        {"id": "i", "type": "t"},
        {"id": "i", "type": "t", "data": []},
    ):
        assert envelope.envelope_problem(document) is not None


# -- the gateway's 400 check, by kind -------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "name"),
    [
        ("partner", "partner-order-status.json"),
        ("partner", "partner-checkout-multi.json"),
        ("partner", "partner-order-confirmation.json"),
        ("vignette-sales", SALE_OK),
        ("vignette-sales", SALE_FAILED),
        ("envelope", "envelope-refund.json"),
        ("envelope", "envelope-user-create.json"),
    ],
)
def test_envelope_problem_accepts_examples_and_refuses_them_for_other_kinds(
    kind: str, name: str
) -> None:
    assert envelope_problem(kind, payload(name)) is None
    for other in set(KINDS) - {kind}:
        assert envelope_problem(other, payload(name)) is not None
    assert envelope_problem(kind, {}) is not None


def test_payments_envelope_problem_via_dispatch() -> None:
    document = payments_doc(CLAIMS)
    assert envelope_problem("payments", document) is None
    assert envelope_problem("partner", document) is not None
    assert envelope_problem("payments", {}) is not None
