"""``hookline run`` with the sink: deliveries posted to the gateway end in the Iceberg tables.

The real ``hookline run`` (gateway, worker and sink as its children) on the
session broker. After a scenario settles on the topics, ``production.orders_state``
read through pyiceberg's SQL catalog at ``DIR/catalog.db`` must hold exactly
one row per order of ``orders.state`` with the latest record's values, and
``order_changes`` exactly the (order_id, version) pairs of ``orders.changes``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from hookline.infra.processes import ServiceProcess
from pyiceberg.catalog.sql import SqlCatalog

from tests.support import processes, traffic
from tests.support.broker import TestBroker
from tests.support.kafka import Record, latest_by_key, read_topics
from tests.support.signing import DEV, hmac_signature, payments_body

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@pytest.fixture(scope="module")
def service(
    broker: TestBroker, log_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Any]]:
    with processes.run_with_sink(
        broker.bootstrap_servers,
        log_dir,
        tmp_path_factory.mktemp("run-data"),
        tmp_path_factory.mktemp("run-warehouse"),
    ) as running:
        yield running


async def post(client: httpx.AsyncClient, source: str, body: bytes) -> None:
    headers, params = {"content-type": "application/json"}, {}
    if source in ("partner", "envelope"):
        params["token"] = DEV["PARTNER_SECRET" if source == "partner" else "ENVELOPE_SECRET"]
    elif source == "vignette-sales":
        headers["x-signature"] = hmac_signature(body, DEV["VIGNETTE_SALES_SECRET"])
    response = await client.post(
        f"/webhooks/{source}", content=body, headers=headers, params=params
    )
    assert response.status_code == 200, response.text


def table(warehouse: Path, name: str) -> list[dict[str, Any]]:
    catalog = SqlCatalog(
        "hookline", uri=f"sqlite:///{warehouse / 'catalog.db'}", warehouse=warehouse.as_uri()
    )
    return catalog.load_table(f"production.{name}").scan().to_arrow().to_pylist()


def as_column(field: str, value: Any) -> Any:
    """An OrderState field as the table holds it: epoch ms become UTC timestamps."""
    if field == "updated_at":
        return EPOCH + timedelta(milliseconds=value)
    return value


async def test_hookline_run_lands_the_topics_in_iceberg(service: dict[str, Any]) -> None:
    run: ServiceProcess = service["run"]
    assert f"warehouse          {service['warehouse'].resolve()}" in run.log()
    order, tx = traffic.unique("ord"), traffic.unique("tr")
    sale, row = traffic.unique("sale"), traffic.unique("row")
    async with httpx.AsyncClient(base_url=service["gateway"], timeout=15) as client:
        await post(client, "partner", traffic.checkout(tx, [order], "CREATED"))
        await post(client, "partner", traffic.order_status(order, "ACTIVE", tx))
        await post(client, "partner", traffic.confirmation(order, tx))
        await post(client, "partner", traffic.checkout(tx, [order], "SUCCESS"))
        await post(
            client, "vignette-sales", traffic.sale_success(sale, [(row, True, "kp_1")], "vg")
        )
        claims = traffic.payment_claims(tx, "failed")  # late and lower: changes nothing
        await post(client, "payments", payments_body(claims, DEV["PAYMENTS_SECRET"]))

    def settled(records: list[Record]) -> bool:
        latest = latest_by_key([r for r in records if r.topic == "production.orders.state"])
        return (
            latest.get(order, {}).get("payment_status") == "SUCCEEDED"
            and latest.get(order, {}).get("confirmation_pdf_url") is not None
            and latest.get(row, {}).get("order_status") == "ACTIVE"
        )

    records = await read_topics(
        service["bootstrap"],
        "production.orders.state",
        "production.orders.changes",
        until=settled,
        timeout=45,
        idle=2.0,
    )
    # Every order of the topic, not only this test's: the whole topic is the reference.
    # Its latest record per order is the highest version: the worker writes an
    # order's versions in order, while tests/integration/test_sink.py, on the
    # same broker, appends older versions on purpose (which the table ignores).
    latest: dict[str, dict[str, Any]] = {}
    for r in records:
        if r.topic != "production.orders.state" or not r.value:
            continue
        if r.key not in latest or r.value["version"] > latest[r.key]["version"]:
            latest[r.key] = r.value
    ours = latest_by_key([r for r in records if r.topic == "production.orders.state"])
    assert latest[order] == ours[order]  # for the worker's output both agree
    pairs = {(r.key, r.value["version"]) for r in records if r.topic == "production.orders.changes"}

    def landed() -> bool:
        states = table(service["warehouse"], "orders_state")
        changes = table(service["warehouse"], "order_changes")
        return {s["order_id"]: s["version"] for s in states} == {
            k: v["version"] for k, v in latest.items()
        } and len(changes) >= len(pairs)

    deadline = time.monotonic() + 30
    while not landed():
        assert time.monotonic() < deadline, "the sink did not land the topics within 30s"
        await asyncio.sleep(0.5)

    states = table(service["warehouse"], "orders_state")
    assert len(states) == len({s["order_id"] for s in states}) == len(latest)
    for row_ in states:
        record = latest[row_["order_id"]]
        assert {f: row_[f] for f in record} == {f: as_column(f, v) for f, v in record.items()}
    assert latest[order]["version"] >= 4
    assert latest[order]["amount"] is not None

    changes = table(service["warehouse"], "order_changes")
    landed_pairs = [(c["order_id"], c["version"]) for c in changes]
    assert len(landed_pairs) == len(set(landed_pairs))
    assert set(landed_pairs) == pairs
