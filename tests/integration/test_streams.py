"""Webhooks posted to the real gateway end as the state PRODUCT.md section 4 defines.

One gateway and one worker (real processes) on the session broker, with the
dev sources file. Every test uses fresh ids, so tests do not see each other.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
from hookline.core.settings import DEV_SOURCES
from hookline.streams.order_state import STATE_FIELDS

from tests.conftest import hookline_env
from tests.support import processes, traffic
from tests.support.broker import TestBroker
from tests.support.kafka import Record, latest_by_key, read_topics
from tests.support.signing import DEV, hmac_signature, payments_body


@pytest.fixture(scope="module")
def service(
    broker: TestBroker, log_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Any]]:
    env = hookline_env(
        broker.bootstrap_servers,
        tmp_path_factory.mktemp("streams-data"),
        HOOKLINE_SOURCES=str(DEV_SOURCES),
    )
    gw = processes.gateway(env, log_dir).start()
    wk = processes.worker(env, log_dir).start(timeout=90)
    try:
        yield {"gateway": gw, "worker": wk, "bootstrap": broker.bootstrap_servers}
    finally:
        gw.stop()
        wk.stop()


@pytest.fixture
async def client(service: dict[str, Any]) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=service["gateway"].url, timeout=15) as c:
        yield c


async def post(client: httpx.AsyncClient, source: str, body: bytes) -> str:
    """POST signed the way the source's kind requires; return the delivery id."""
    headers = {"content-type": "application/json"}
    params = {}
    if source in ("partner", "envelope", "partner-sandbox"):
        secret_var = {"partner": "PARTNER_SECRET", "envelope": "ENVELOPE_SECRET"}.get(
            source, "PARTNER_SANDBOX_SECRET"
        )
        params["token"] = DEV[secret_var]
    elif source == "vignette-sales":
        headers["x-signature"] = hmac_signature(body, DEV["VIGNETTE_SALES_SECRET"])
    response = await client.post(
        f"/webhooks/{source}", content=body, headers=headers, params=params
    )
    assert response.status_code == 200, response.text
    return response.json()["id"]


async def post_payment(
    client: httpx.AsyncClient, transaction_id: str, status: str, **extra: Any
) -> str:
    body = payments_body(
        traffic.payment_claims(transaction_id, status), DEV["PAYMENTS_SECRET"], **extra
    )
    return await post(client, "payments", body)


#: Fields every expectation pins (None unless given); money fields only when a test names them.
PINNED = ("transaction_id", "order_status", "payment_status", "confirmation_pdf_url", "vignette_id")


def state(**fields: Any) -> dict[str, Any]:
    unknown = fields.keys() - set(STATE_FIELDS)
    assert not unknown, unknown
    return {name: fields.get(name) for name in PINNED} | fields


def money(text: str) -> Decimal:
    return Decimal(text).quantize(Decimal("0.0001"))


async def settle(
    service: dict[str, Any], expected: dict[str, dict[str, Any]], env: str = "production"
) -> tuple[dict[str, dict[str, Any]], list[Record]]:
    """Wait until each order's latest state has the expected fields; return states and changes."""

    def done(records: list[Record]) -> bool:
        latest = latest_by_key([r for r in records if r.topic == f"{env}.orders.state"])
        return all(
            order in latest and {k: latest[order][k] for k in want} == want
            for order, want in expected.items()
        )

    records = await read_topics(
        service["bootstrap"],
        f"{env}.orders.state",
        f"{env}.orders.changes",
        until=done,
        timeout=45,
        idle=1.5,
    )
    states = latest_by_key(
        [r for r in records if r.topic == f"{env}.orders.state" and r.key in expected]
    )
    changes = [r for r in records if r.topic == f"{env}.orders.changes" and r.key in expected]
    return states, changes


async def first_record(service: dict[str, Any], topic: str, key: str) -> dict[str, Any]:
    """The first record with this key on the topic (waiting for it to arrive)."""
    records = await read_topics(
        service["bootstrap"], topic, until=lambda rs: any(r.key == key for r in rs), idle=0.2
    )
    return next(r.value for r in records if r.key == key)


def versions(changes: list[Record], order_id: str) -> list[int]:
    return sorted(r.value["version"] for r in changes if r.key == order_id)


async def test_partner_order_checkout_and_confirmation(
    service: dict[str, Any], client: httpx.AsyncClient
) -> None:
    order, tx = traffic.unique("ord"), traffic.unique("tr")
    await post(client, "partner", traffic.checkout(tx, [order], "CREATED"))
    await post(client, "partner", traffic.order_status(order, "ACTIVE", tx))
    await post(client, "partner", traffic.confirmation(order, tx))
    await post(client, "partner", traffic.checkout(tx, [order], "SUCCESS"))
    expected = state(
        transaction_id=tx,
        order_status="ACTIVE",
        payment_status="SUCCEEDED",
        confirmation_pdf_url=traffic.pdf_url(order),
        amount=money("15.70"),
        currency="EUR",
        refunded_amount=None,
    )
    states, changes = await settle(service, {order: expected})
    final = states[order]
    assert final["environment"] == "production"
    # Changes: CREATED->PENDING payment, price, ACTIVE, pdf, SUCCEEDED; versions 1..n, no gap.
    assert versions(changes, order) == list(range(1, final["version"] + 1))
    assert final["version"] == 5
    last = max((r for r in changes if r.key == order), key=lambda r: r.value["version"])
    assert last.value["after"] == final
    assert last.value["changed_fields"] == ["payment_status"]
    assert last.value["before"]["payment_status"] == "PENDING"
    assert last.value["cause"]["source"] == "partner"
    assert last.value["cause"]["provider_event_type"] == "CHECKOUT_STATUS_CHANGED"


async def test_vignette_sales_success_rows_and_failure(
    service: dict[str, Any], client: httpx.AsyncClient
) -> None:
    sale, row_active, row_pending = (
        traffic.unique("sale"),
        traffic.unique("row"),
        traffic.unique("row"),
    )
    await post(
        client,
        "vignette-sales",
        traffic.sale_success(
            sale, [(row_active, True, "kp_9"), (row_pending, False, None)], vignette_id="vg_top"
        ),
    )
    failed_sale, linked_order = traffic.unique("sale"), traffic.unique("ord")
    await post(client, "partner", traffic.order_status(linked_order, "CREATED", failed_sale))
    await post(client, "vignette-sales", traffic.sale_failure(failed_sale))
    expected = {
        row_active: state(
            transaction_id=sale,
            order_status="ACTIVE",
            payment_status="SUCCEEDED",
            vignette_id="kp_9",
            amount=money("30.68"),
            currency="BGN",
        ),
        # No kapschProperties: the top-level vignetteId applies.
        row_pending: state(
            transaction_id=sale,
            order_status="PENDING",
            payment_status="SUCCEEDED",
            vignette_id="vg_top",
        ),
        linked_order: state(
            transaction_id=failed_sale, order_status="CREATED", payment_status="FAILED"
        ),
    }
    await settle(service, expected)
    failure = await first_record(service, "production.webhooks.events", failed_sale)
    assert failure["payment_status"] == "FAILED"
    assert failure["error"] == {
        "code": "VEHICLE_NOT_FOUND",
        "message": "The licence plate could not be validated",
    }


async def test_payments_statuses_reach_every_order(
    service: dict[str, Any], client: httpx.AsyncClient
) -> None:
    tx = traffic.unique("tr")
    orders = [traffic.unique("ord") for _ in range(4)]
    await post(client, "partner", traffic.checkout(tx, orders, "CREATED"))
    await settle(service, {o: state(transaction_id=tx, payment_status="PENDING") for o in orders})
    await post_payment(client, tx, "processing")
    await post_payment(client, tx, "failed")
    # A new notification (not a retry): PENDING never replaces FAILED.
    await post_payment(client, tx, "processing", paymentPurpose="second attempt")
    await post_payment(client, tx, "completed")  # SUCCEEDED may follow anything
    await post_payment(client, tx, "canceled")  # ...and is final
    expected = {o: state(transaction_id=tx, payment_status="SUCCEEDED") for o in orders}
    _, changes = await settle(service, expected)
    for order in orders:
        history = [
            r.value["after"]["payment_status"]
            for r in sorted(changes, key=lambda r: r.value["version"])
            if r.key == order and "payment_status" in r.value["changed_fields"]
        ]
        assert history == ["PENDING", "FAILED", "SUCCEEDED"]
        assert versions(changes, order) == [1, 2, 3, 4]  # and the price


async def test_envelope_refund_and_informational_events(
    service: dict[str, Any], client: httpx.AsyncClient
) -> None:
    order = traffic.unique("ord")
    await post(client, "partner", traffic.order_status(order, "ACTIVE"))
    await post(
        client,
        "envelope",
        traffic.envelope_event(
            traffic.unique("wh"), "subscription_manual_chargeback", {"order_id": order}
        ),
    )
    subscription = traffic.unique("sub")
    await post(
        client,
        "envelope",
        traffic.envelope_event(
            traffic.unique("wh"), "subscription_user_create", {"subscription_id": subscription}
        ),
    )
    await settle(service, {order: state(order_status="REFUNDED")})
    info = await first_record(service, "production.webhooks.events", subscription)
    assert info["type"] == "envelope.subscription_user_create"
    assert info["entity_type"] == "subscription"
    assert info["order_id"] is None
    assert info["order_status"] is None


async def test_retries_yield_one_event_and_one_change(
    service: dict[str, Any], client: httpx.AsyncClient
) -> None:
    metrics_before = _duplicates(service)
    order, tx = traffic.unique("ord"), traffic.unique("tr")
    body = traffic.order_status(order, "PENDING", tx)
    for _ in range(3):
        await post(client, "partner", body)
    for attempt in range(3):  # re-signed each time: a new iat, same claims
        await post_payment(client, tx, "completed", iat=1_700_000_000 + attempt, jti=f"j{attempt}")
    _, changes = await settle(
        service,
        {order: state(transaction_id=tx, order_status="PENDING", payment_status="SUCCEEDED")},
    )
    assert versions(changes, order) == [1, 2]
    events = await read_topics(
        service["bootstrap"],
        "production.webhooks.events",
        until=lambda rs: any(r.key == tx for r in rs) and any(r.key == order for r in rs),
        idle=1.0,
    )
    assert len([r for r in events if r.key == order]) == 1
    assert len([r for r in events if r.key == tx]) == 1
    for _ in range(75):  # the dedup stage may still be on the last retries
        if _duplicates(service) - metrics_before >= 4:
            break
        await asyncio.sleep(0.2)
    assert _duplicates(service) - metrics_before == 4


def _duplicates(service: dict[str, Any]) -> float:
    text = httpx.get(f"{service['worker'].url}/metrics", timeout=5).text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("hookline_worker_duplicates_dropped_total{")
    )


async def test_reordering_converges(service: dict[str, Any], client: httpx.AsyncClient) -> None:
    a, b, c = (traffic.unique("ord") for _ in range(3))
    tx = traffic.unique("tr")
    # a: ACTIVE before PENDING (the late PENDING is rejected)
    await post(client, "partner", traffic.order_status(a, "ACTIVE"))
    await post(client, "partner", traffic.order_status(a, "PENDING"))
    # b: confirmation before ACTIVE
    await post(client, "partner", traffic.confirmation(b))
    await post(client, "partner", traffic.order_status(b, "ACTIVE"))
    # c: payment before any order event, then the order event links it later
    await post_payment(client, tx, "completed")
    await settle(
        service,
        {
            a: state(order_status="ACTIVE"),
            b: state(order_status="ACTIVE", confirmation_pdf_url=traffic.pdf_url(b)),
        },
    )
    await post(client, "partner", traffic.order_status(c, "DEFERRED", tx))
    _, changes = await settle(
        service,
        {
            a: state(order_status="ACTIVE"),
            b: state(order_status="ACTIVE", confirmation_pdf_url=traffic.pdf_url(b)),
            c: state(transaction_id=tx, order_status="DEFERRED", payment_status="SUCCEEDED"),
        },
    )
    assert versions(changes, a) == [1]  # the late PENDING changed nothing
    assert versions(changes, b) == [1, 2]


async def test_order_events_long_after_checkout(
    service: dict[str, Any], client: httpx.AsyncClient
) -> None:
    tx, order = traffic.unique("tr"), traffic.unique("ord")
    await post(client, "partner", traffic.checkout(tx, [order], "SUCCESS"))
    await settle(service, {order: state(transaction_id=tx, payment_status="SUCCEEDED")})
    await post(client, "partner", traffic.order_status(order, "ACTIVE", tx))
    await post(client, "partner", traffic.confirmation(order, tx))
    _, changes = await settle(
        service,
        {
            order: state(
                transaction_id=tx,
                order_status="ACTIVE",
                payment_status="SUCCEEDED",
                confirmation_pdf_url=traffic.pdf_url(order),
            )
        },
    )
    assert versions(changes, order) == [1, 2, 3, 4]  # payment, price, ACTIVE, pdf


async def test_unknown_event_type_is_dead_lettered(
    service: dict[str, Any], client: httpx.AsyncClient
) -> None:
    marker = traffic.unique("ord")
    body = traffic.dumps({"event_type": "REFUND_REQUESTED", "order_id": marker})
    delivery_id = await post(client, "partner", body)
    letter = await first_record(service, "production.webhooks.deadletter", delivery_id)
    assert letter["stage"] == "normalize"
    assert "REFUND_REQUESTED" in letter["reason"]
    assert letter["envelope"]["body"] == body
    assert letter["envelope"]["source"] == "partner"


async def test_sandbox_stays_in_sandbox(service: dict[str, Any], client: httpx.AsyncClient) -> None:
    order = traffic.unique("ord")
    await post(client, "partner-sandbox", traffic.order_status(order, "ACTIVE"))
    states, _ = await settle(service, {order: state(order_status="ACTIVE")}, env="sandbox")
    assert states[order]["environment"] == "sandbox"
    production = await read_topics(
        service["bootstrap"],
        "production.orders.state",
        "production.orders.changes",
        "production.webhooks.events",
        "production.webhooks.raw",
        idle=1.0,
    )
    assert not any(order in r.key or order.encode() in r.raw for r in production)


async def test_dead_letter_carries_a_body_at_the_size_limit(
    service: dict[str, Any], client: httpx.AsyncClient
) -> None:
    # Just under the gateway's 1 MiB limit, authentic, of a type hookline does not know.
    padding = "x" * (1024 * 1024 - 200)
    body = traffic.dumps(
        {"event_type": "BULK_EXPORT", "order_id": traffic.unique("ord"), "pad": padding}
    )
    assert len(body) < 1024 * 1024
    delivery_id = await post(client, "partner", body)
    letter = await first_record(service, "production.webhooks.deadletter", delivery_id)
    assert letter["envelope"]["body"] == body
    assert "BULK_EXPORT" in letter["reason"]


async def test_recheckout_after_a_failed_payment_ends_succeeded(
    service: dict[str, Any], client: httpx.AsyncClient
) -> None:
    """PRODUCT v2 section 4: the card is declined, the customer pays in a new checkout."""
    orders = [traffic.unique("ord"), traffic.unique("ord")]
    first, second = traffic.unique("tr"), traffic.unique("tr")
    await post(client, "partner", traffic.checkout(first, orders, "CREATED"))
    await post_payment(client, first, "failed")
    await settle(service, {o: state(transaction_id=first, payment_status="FAILED") for o in orders})
    await post(client, "partner", traffic.checkout(second, orders, "CREATED"))
    paid = await post_payment(client, second, "completed")
    expected = {
        o: state(
            transaction_id=second, payment_status="SUCCEEDED", amount=money("15.70"), currency="EUR"
        )
        for o in orders
    }
    _, changes = await settle(service, expected)
    for order in orders:
        mine = sorted((r for r in changes if r.key == order), key=lambda r: r.value["version"])
        assert [r.value["version"] for r in mine] == list(range(1, len(mine) + 1))
        assert mine[-1].value["changed_fields"] == ["payment_status"]
        assert mine[-1].value["cause"]["delivery_id"] == paid
        assert mine[-1].value["cause"]["kind"] == "payments"


async def test_partial_refunds_then_full(
    service: dict[str, Any], client: httpx.AsyncClient
) -> None:
    order, tx = traffic.unique("ord"), traffic.unique("tr")
    await post(client, "partner", traffic.checkout(tx, [order], "SUCCESS"))
    await post(client, "partner", traffic.order_status(order, "ACTIVE", tx))
    refund = {"order_id": order, "amount": 5.00, "currency": "EUR"}
    await post(
        client,
        "envelope",
        traffic.envelope_event(traffic.unique("wh"), "subscription_event_refund", refund),
    )
    await settle(
        service,
        {
            order: state(
                transaction_id=tx,
                order_status="ACTIVE",
                payment_status="SUCCEEDED",
                amount=money("15.70"),
                refunded_amount=money("5.00"),
            )
        },
    )
    rest = {"order_id": order, "amount": 10.70, "currency": "EUR"}
    await post(
        client,
        "envelope",
        traffic.envelope_event(traffic.unique("wh"), "subscription_manual_chargeback", rest),
    )
    _, changes = await settle(
        service,
        {
            order: state(
                transaction_id=tx,
                order_status="REFUNDED",
                payment_status="SUCCEEDED",
                amount=money("15.70"),
                refunded_amount=money("15.70"),
            )
        },
    )
    last = max((r for r in changes if r.key == order), key=lambda r: r.value["version"])
    assert last.value["changed_fields"] == ["order_status", "refunded_amount"]
    assert last.value["cause"]["provider_event_type"] == "subscription_manual_chargeback"


async def test_envelope_id_with_other_content_is_a_dead_lettered_conflict(
    service: dict[str, Any], client: httpx.AsyncClient
) -> None:
    order, envelope_id = traffic.unique("ord"), traffic.unique("wh")
    # Priced first: refunded_amount stays null until the order's currency is known.
    await post(client, "partner", traffic.checkout(traffic.unique("tr"), [order], "SUCCESS"))
    first = traffic.envelope_event(
        envelope_id,
        "subscription_event_refund",
        {"order_id": order, "amount": 1.0, "currency": "EUR"},
    )
    await post(client, "envelope", first)
    refunded = state(refunded_amount=money("1.00"), payment_status="SUCCEEDED")
    refunded.pop("transaction_id")
    states, _ = await settle(service, {order: refunded})
    version = states[order]["version"]
    other = traffic.envelope_event(
        envelope_id,
        "subscription_event_refund",
        {"order_id": order, "amount": 9.0, "currency": "EUR"},
    )
    conflicting = await post(client, "envelope", other)
    letter = await first_record(service, "production.webhooks.deadletter", conflicting)
    assert letter["stage"] == "dedup"
    assert "conflict" in letter["reason"]
    assert letter["envelope"]["body"] == other
    # A re-serialized retry of the first is a plain duplicate: no dead letter, no change.
    await post(client, "envelope", json.dumps(json.loads(first), indent=2).encode())
    states, changes = await settle(service, {order: refunded})
    assert states[order]["version"] == version
    assert versions(changes, order) == list(range(1, version + 1))
