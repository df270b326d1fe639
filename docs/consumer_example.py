"""Follow order state from hookline, idempotently (see docs/consumers.md).

    KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:9092 python docs/consumer_example.py

Reads ``production.orders.changes`` from the beginning and keeps, per order,
the highest version applied. A record whose version is not higher than the
one already applied is a redelivery (at-least-once) and is skipped, so the
consumer can crash and restart anywhere without applying anything twice.

``codec.decode`` gives timestamps (``updated_at``, ``cause.received_at``) as
UTC epoch milliseconds and money (``amount``, ``refunded_amount``) as exact
``decimal.Decimal``; records written with an older schema release come back
with today's fields (new ones at their defaults).
"""

from __future__ import annotations

import asyncio
import os
from datetime import UTC, datetime
from typing import Any

from aiokafka import AIOKafkaConsumer
from hookline.schemas import codec


class OrderView:
    """What a downstream service keeps: the latest applied state per order."""

    def __init__(self) -> None:
        self.orders: dict[str, dict[str, Any]] = {}

    def apply(self, change: dict[str, Any]) -> bool:
        """Apply one OrderChange; False when it is a redelivery."""
        current = self.orders.get(change["order_id"])
        if current is not None and change["version"] <= current["version"]:
            return False
        self.orders[change["order_id"]] = change["after"]
        return True


async def follow(bootstrap: str, topic: str = "production.orders.changes") -> None:
    view = OrderView()
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id="order-view-example",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        # Only what committed transactions wrote: on Apache Kafka (exactly once)
        # each (order, version) then arrives once; on the embedded broker it
        # changes nothing (docs/consumers.md, "Guarantees").
        isolation_level="read_committed",
    )
    try:
        await consumer.start()
        async for message in consumer:
            name, change = codec.decode(message.value)
            if name != codec.ORDER_CHANGE:
                continue  # a newer record type this consumer does not know
            if view.apply(change):
                after = change["after"]
                updated = datetime.fromtimestamp(after["updated_at"] / 1000, UTC)  # UTC epoch ms
                print(
                    f"{change['order_id']} v{change['version']} at {updated.isoformat()}: "
                    f"order={after['order_status']} payment={after['payment_status']} "
                    f"amount={after['amount']} {after['currency'] or ''} "
                    f"refunded={after['refunded_amount']} "
                    f"({', '.join(change['changed_fields'])})"
                )
            # Commit after applying: a crash in between means a redelivery, which apply() skips.
            await consumer.commit()
    finally:
        await consumer.stop()


if __name__ == "__main__":
    import contextlib

    # Ctrl-C: asyncio cancels follow(), whose finally leaves the group; then exit quietly.
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(follow(os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092")))
