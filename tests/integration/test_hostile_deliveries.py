"""No delivery stops the pipeline, end to end (PRODUCT.md section 5).

The real ``hookline run`` (gateway, worker, sink) on the session broker.
Authentic deliveries with pathological content, each of which once stopped a
component on every restart, are posted; then ordinary deliveries for orders
in every partition. The gateway answers each with 200; each case ends applied
or dead-lettered; every ordinary order reaches ``orders.state`` and the
warehouse; neither the worker nor the sink exits.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
from hookline.core.partitioner import partition_for
from hookline.infra.processes import ServiceProcess
from pyiceberg.catalog.sql import SqlCatalog

from tests.support import processes, traffic
from tests.support.broker import TestBroker
from tests.support.kafka import latest_by_key, read_topics
from tests.support.signing import DEV, payments_body

DEADLETTER = "production.webhooks.deadletter"
STATE = "production.orders.state"
REJECTED = "production.orders.rejected"


@pytest.fixture(scope="module")
def service(
    broker: TestBroker, log_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Any]]:
    with processes.run_with_sink(
        broker.bootstrap_servers,
        log_dir,
        tmp_path_factory.mktemp("hostile-data"),
        tmp_path_factory.mktemp("hostile-warehouse"),
    ) as running:
        yield running


async def post(client: httpx.AsyncClient, source: str, body: bytes) -> str:
    params = {}
    if source in ("partner", "envelope"):
        params["token"] = DEV["PARTNER_SECRET" if source == "partner" else "ENVELOPE_SECRET"]
    response = await client.post(
        f"/webhooks/{source}",
        content=body,
        headers={"content-type": "application/json"},
        params=params,
    )
    assert response.status_code == 200, response.text
    return str(response.json()["id"])


def nested(depth: int) -> Any:
    value: Any = "deep"
    for _ in range(depth):
        value = {"x": value}
    return value


def warehouse_orders(warehouse: Path) -> set[str]:
    catalog = SqlCatalog(
        "hookline", uri=f"sqlite:///{warehouse / 'catalog.db'}", warehouse=warehouse.as_uri()
    )
    rows = catalog.load_table("production.orders_state").scan().to_arrow().to_pylist()
    return {row["order_id"] for row in rows}


async def test_no_authentic_delivery_stops_the_worker_or_the_sink(service: dict[str, Any]) -> None:
    run: ServiceProcess = service["run"]
    secret = DEV["PAYMENTS_SECRET"]
    refunded, far_dated = traffic.unique("ord"), traffic.unique("ord")
    async with httpx.AsyncClient(base_url=service["gateway"], timeout=15) as client:
        claims = traffic.payment_claims(traffic.unique("tr"), "completed")
        dead = {
            "surrogate claim": await post(
                client, "payments", payments_body({**claims, "event": "\ud800"}, secret)
            ),
            "deep claims": await post(
                client, "payments", payments_body({**claims, "extra": nested(600)}, secret)
            ),
            "surrogate reference": await post(
                client, "payments", payments_body({**claims, "orderReference": "tr\ud800"}, secret)
            ),
        }
        # Two refunds whose sum does not fit decimal(18,4), for a priced order.
        tx = traffic.unique("tr")
        await post(client, "partner", traffic.checkout(tx, [refunded], "SUCCESS"))
        for _ in range(2):
            await post(
                client,
                "envelope",
                traffic.envelope_event(
                    traffic.unique("wh"),
                    "subscription_event_refund",
                    {"order_id": refunded, "amount": 60_000_000_000_000, "currency": "EUR"},
                ),
            )
        # A provider date past year 9999 in UTC.
        status = json.loads(traffic.order_status(far_dated, "ACTIVE"))
        status["created_at"] = "9999-12-31T23:59:59-14:00"
        await post(client, "partner", json.dumps(status).encode())

        # Then ordinary deliveries, for orders in every partition.
        ordinary = [traffic.unique("ord") for _ in range(24)]
        assert {partition_for(o.encode(), range(4)) for o in ordinary} == {0, 1, 2, 3}
        for order in ordinary:
            await post(client, "partner", traffic.order_status(order, "ACTIVE"))

    wanted = {*ordinary, refunded, far_dated}
    records = await read_topics(
        service["bootstrap"],
        STATE,
        DEADLETTER,
        REJECTED,
        until=lambda rs: (
            wanted <= {r.key for r in rs if r.topic == STATE}
            and set(dead.values()) <= {r.key for r in rs if r.topic == DEADLETTER}
            and refunded in {r.key for r in rs if r.topic == REJECTED}
        ),
        timeout=60,
        idle=1.0,
    )
    latest = latest_by_key([r for r in records if r.topic == STATE])
    assert all(latest[order]["order_status"] == "ACTIVE" for order in [*ordinary, far_dated])
    # The refunds: whichever comes first applies (REFUNDED); the sum does not fit, so
    # the second is refused as a rejected fact.
    assert latest[refunded]["order_status"] == "REFUNDED"
    assert latest[refunded]["refunded_amount"] == Decimal("60000000000000.0000")
    (refusal,) = [r.value for r in records if r.topic == REJECTED and r.key == refunded]
    assert refusal["rule"] == "money_out_of_range"
    letters = {r.key: r.value for r in records if r.topic == DEADLETTER}
    assert "surrogate" in letters[dead["surrogate claim"]]["reason"]
    assert "nested" in letters[dead["deep claims"]]["reason"]
    assert letters[dead["surrogate reference"]]["stage"] == "normalize"

    deadline = time.monotonic() + 45
    while not wanted <= warehouse_orders(service["warehouse"]):
        assert time.monotonic() < deadline, "the sink did not land every order"
        await asyncio.sleep(0.5)
    assert run.process is not None
    assert run.process.poll() is None, run.tail()
    assert "exited" not in run.log(), run.tail()
