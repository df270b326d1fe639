"""Order state v3 on a running pipeline (PRODUCT.md v3 sections 3-5).

One gateway and one worker on the session broker, with sources whose dedup
window is a few seconds, so a delivery sent again after it reaches the order
state rules instead of being dropped as a retry. Checks `orders.rejected`
(each rule, once, however often the deliveries come again), a checkout with
one bad price, a refund re-sent after the window, and `hookline order --json`.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import hookline_env
from tests.integration.test_streams import money, post, post_payment
from tests.support import operator, processes, traffic
from tests.support.broker import TestBroker
from tests.support.kafka import Record, latest_by_key, read_topics

#: Short enough to wait out in a test; every retry after it reaches the rules.
WINDOW_S = 3.0

SOURCES = f"""
[sources.partner]
kind = "partner"
environment = "production"
verify = "token"
secret_env = "PARTNER_SECRET"
dedup_window = "{WINDOW_S:g}s"

[sources.payments]
kind = "payments"
environment = "production"
verify = "jwt-hs256"
secret_env = "PAYMENTS_SECRET"
dedup_window = "{WINDOW_S:g}s"

[sources.envelope]
kind = "envelope"
environment = "production"
verify = "token"
secret_env = "ENVELOPE_SECRET"
dedup_window = "{WINDOW_S:g}s"
"""

STATE = "production.orders.state"
CHANGES = "production.orders.changes"
REJECTED = "production.orders.rejected"


@pytest.fixture(scope="module")
def service(
    broker: TestBroker, log_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Any]]:
    data = tmp_path_factory.mktemp("order-v3")
    sources = data / "sources.toml"
    sources.write_text(SOURCES)
    env = hookline_env(broker.bootstrap_servers, data / "worker", HOOKLINE_SOURCES=str(sources))
    gw = processes.gateway(env, log_dir).start()
    wk = processes.worker(env, log_dir).start(timeout=90)
    try:
        yield {"gateway": gw, "worker": wk, "bootstrap": broker.bootstrap_servers, "env": env}
    finally:
        gw.stop()
        wk.stop()


@pytest.fixture
async def client(service: dict[str, Any]) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=service["gateway"].url, timeout=15) as c:
        yield c


async def until(
    service: dict[str, Any], done: Any, *topics: str, idle: float = 1.5
) -> list[Record]:
    return await read_topics(service["bootstrap"], *topics, until=done, timeout=60, idle=idle)


def states(records: list[Record]) -> dict[str, dict[str, Any]]:
    return latest_by_key([r for r in records if r.topic == STATE])


def facts(records: list[Record], orders: set[str]) -> list[tuple[str, str, str, str]]:
    return sorted(
        (r.key, r.value["rule"], r.value["field"], r.value["value"])
        for r in records
        if r.topic == REJECTED and r.key in orders
    )


def bad_price_checkout(transaction_id: str, good: str, bad: str, status: str) -> bytes:
    document = json.loads(traffic.checkout(transaction_id, [good, bad], status))
    document["orders"][1]["amount"] = 15.70001  # a fifth decimal: out of decimal(18,4)
    return traffic.dumps(document)


def refund(envelope_id: str, order_id: str, amount: float, currency: str) -> bytes:
    return traffic.envelope_event(
        envelope_id,
        "subscription_event_refund",
        {"order_id": order_id, "amount": amount, "currency": currency},
    )


async def test_each_rule_is_one_rejected_fact_and_retries_repeat_none(
    service: dict[str, Any], client: httpx.AsyncClient
) -> None:
    lower, back, double, foreign, priced, bad = (
        traffic.unique(name) for name in ("lower", "back", "double", "foreign", "good", "bad")
    )
    tr_back, tr_1, tr_2, tr_foreign, tr_bad = (traffic.unique("tr") for _ in range(5))
    deliveries: list[tuple[str, Any]] = [
        ("partner", traffic.order_status(lower, "ACTIVE")),
        ("partner", traffic.order_status(lower, "PENDING")),  # status_regression
        ("partner", traffic.checkout(tr_back, [back], "CREATED")),
        ("payments", (tr_back, "failed")),
        ("payments", (tr_back, "processing")),  # payment_regression
        ("partner", traffic.checkout(tr_1, [double], "SUCCESS")),
        ("partner", traffic.checkout(tr_2, [double], "SUCCESS")),  # double_payment
        ("partner", traffic.checkout(tr_foreign, [foreign], "SUCCESS")),
        ("envelope", refund(traffic.unique("wh"), foreign, 5.0, "BGN")),  # other currency
        ("partner", bad_price_checkout(tr_bad, priced, bad, "SUCCESS")),  # money_out_of_range
    ]

    async def send_all() -> None:
        for source, body in deliveries:
            if source == "payments":
                await post_payment(client, *body)
            else:
                await post(client, source, body)

    await send_all()
    orders = {lower, back, double, foreign, priced, bad}
    expected = [
        (back, "payment_regression", "payment_status", "PENDING"),
        (bad, "money_out_of_range", "amount", "15.70001"),
        (double, "double_payment", "transaction_id", f"{tr_2} after {tr_1}"),
        (foreign, "refund_other_currency", "refunded_amount", "5.0000 BGN"),
        (lower, "status_regression", "order_status", "PENDING"),
    ]
    records = await until(
        service, lambda rs: facts(rs, orders) == sorted(expected), STATE, REJECTED
    )
    assert facts(records, orders) == sorted(expected)
    final = states(records)
    assert final[lower]["order_status"] == "ACTIVE"
    assert final[back]["payment_status"] == "FAILED"
    assert (final[double]["transaction_id"], final[double]["payment_status"]) == (
        tr_1,
        "SUCCEEDED",
    )
    assert final[foreign]["refunded_amount"] is None
    # The checkout with one bad price: the other order keeps its price, both are paid.
    assert (final[priced]["amount"], final[priced]["payment_status"]) == (
        money("15.70"),
        "SUCCEEDED",
    )
    assert (final[bad]["amount"], final[bad]["payment_status"]) == (None, "SUCCEEDED")
    by_rule = {r.value["rule"]: r.value for r in records if r.topic == REJECTED and r.key in orders}
    assert by_rule["status_regression"]["cause"]["source"] == "partner"
    assert by_rule["payment_regression"]["cause"]["kind"] == "payments"
    assert by_rule["refund_other_currency"]["cause"]["kind"] == "envelope"

    # Every delivery again, past the dedup window: each reaches the rules, none repeats a fact.
    await asyncio.sleep(WINDOW_S + 1)
    await send_all()
    for order_id in sorted(orders):  # then a fact per order, to know the retries were applied
        await post(client, "partner", traffic.confirmation(order_id))

    def confirmed(rs: list[Record]) -> bool:
        latest = states(rs)
        return all(
            latest.get(o, {}).get("confirmation_pdf_url") == traffic.pdf_url(o) for o in orders
        )

    again = await until(service, confirmed, STATE, REJECTED, idle=3.0)
    counted = Counter(
        (r.key, r.value["rule"], r.value["value"])
        for r in again
        if r.topic == REJECTED and r.key in orders
    )
    assert counted == Counter((o, rule, value) for o, rule, _, value in expected)


async def test_a_refund_sent_again_after_the_dedup_window_counts_once(
    service: dict[str, Any], client: httpx.AsyncClient
) -> None:
    order, tx, envelope_id = traffic.unique("ord"), traffic.unique("tr"), traffic.unique("wh")
    await post(client, "partner", traffic.checkout(tx, [order], "SUCCESS"))
    await post(client, "envelope", refund(envelope_id, order, 5.0, "EUR"))
    first = await until(
        service,
        lambda rs: states(rs).get(order, {}).get("refunded_amount") == money("5.00"),
        STATE,
    )
    assert states(first)[order]["refunded_amount"] == money("5.00")
    await asyncio.sleep(WINDOW_S + 1)
    await post(client, "envelope", refund(envelope_id, order, 5.0, "EUR"))  # past the window
    await post(client, "envelope", refund(traffic.unique("wh"), order, 1.0, "EUR"))
    records = await until(
        service,
        lambda rs: (
            states(rs).get(order, {}).get("refunded_amount") is not None
            and states(rs)[order]["refunded_amount"] >= money("6.00")
        ),
        STATE,
        CHANGES,
        "production.webhooks.events",
        idle=3.0,
    )
    assert states(records)[order]["refunded_amount"] == money("6.00")  # 5 once, then 1
    # The copy was not a dropped retry: it reached the rules as a second canonical event.
    copies = [
        r
        for r in records
        if r.topic == "production.webhooks.events"
        and r.value.get("provider_event_id") == envelope_id
    ]
    assert len(copies) == 2
    refunds = [
        r.value["after"]["refunded_amount"]
        for r in records
        if r.topic == CHANGES and r.key == order and "refunded_amount" in r.value["changed_fields"]
    ]
    assert refunds == [money("5.00"), money("6.00")]


async def test_hookline_order_json_tells_the_story(
    service: dict[str, Any], client: httpx.AsyncClient
) -> None:
    order, tr_1, tr_2 = traffic.unique("ord"), traffic.unique("tr"), traffic.unique("tr")

    async def paid(transaction_id: str, status: str) -> None:
        """Wait for the order's payment: a re-checkout is a customer's steps, one after another."""
        await until(
            service,
            lambda rs: (
                (
                    states(rs).get(order, {}).get("transaction_id"),
                    states(rs).get(order, {}).get("payment_status"),
                )
                == (transaction_id, status)
            ),
            STATE,
            idle=0.2,
        )

    await post(client, "partner", traffic.checkout(tr_1, [order], "CREATED"))
    await paid(tr_1, "PENDING")
    await post_payment(client, tr_1, "failed")
    await paid(tr_1, "FAILED")
    await post(client, "partner", traffic.checkout(tr_2, [order], "CREATED"))
    await paid(tr_2, "PENDING")
    await post_payment(client, tr_2, "completed")
    await paid(tr_2, "SUCCEEDED")
    await post(client, "partner", traffic.order_status(order, "ACTIVE", tr_2))
    refund_id = traffic.unique("wh")
    await post(client, "envelope", refund(refund_id, order, 5.0, "EUR"))
    lower = await post(client, "partner", traffic.order_status(order, "PENDING", tr_2))
    settled = await until(
        service,
        lambda rs: (
            any(r.key == order for r in rs if r.topic == REJECTED)
            and states(rs).get(order, {}).get("refunded_amount") == money("5.00")
        ),
        STATE,
        REJECTED,
    )
    version = states(settled)[order]["version"]

    done = await asyncio.to_thread(
        operator.hookline, service["env"], "order", order, "--json", "--env", "production"
    )
    assert done.returncode == 0, done.stderr
    story = json.loads(done.stdout)
    assert set(story) >= {"state", "changes", "rejected", "events", "dead_letters"}
    assert story["state"]["version"] == version
    assert {k: story["state"][k] for k in ("transaction_id", "payment_status", "order_status")} == {
        "transaction_id": tr_2,
        "payment_status": "SUCCEEDED",
        "order_status": "ACTIVE",
    }
    assert story["state"]["refunded_amount"] == "5.0000"  # decimals as tail prints them
    changes = [line["value"] for line in story["changes"]]
    assert [c["version"] for c in changes] == list(range(1, version + 1))
    payments = [
        (c["after"]["transaction_id"], c["after"]["payment_status"])
        for c in changes
        if "payment_status" in c["changed_fields"]
    ]
    assert payments == [(tr_1, "PENDING"), (tr_1, "FAILED"), (tr_2, "PENDING"), (tr_2, "SUCCEEDED")]
    assert all(c["cause"]["delivery_id"] and c["cause"]["source"] for c in changes)
    [refunded] = [c for c in changes if "refunded_amount" in c["changed_fields"]]
    assert refunded["cause"]["provider_event_type"] == "subscription_event_refund"
    assert refunded["after"]["order_status"] == "ACTIVE"  # a partial refund
    [fact] = [line["value"] for line in story["rejected"]]
    assert (fact["rule"], fact["field"], fact["value"]) == (
        "status_regression",
        "order_status",
        "PENDING",
    )
    assert fact["cause"]["delivery_id"] == lower
    assert all(line["timestamp"].endswith("+00:00") for line in story["changes"])
    types = Counter(line["value"]["type"] for line in story["events"])
    assert types["order.refunded"] == 1
    assert types["transaction.status_changed"] >= 4  # both checkouts and both payments
    assert story["dead_letters"] == []
    assert story["scanned"]["production.orders.changes"]["records"] >= version

    text = await asyncio.to_thread(operator.hookline, service["env"], "order", order)
    assert text.returncode == 0, text.stderr
    assert f"order {order} (production)" in text.stdout
    assert "status_regression: order_status = PENDING" in text.stdout
    assert "production.orders.rejected:" in text.stdout  # how far it scanned
