"""The worker's stateful stages in memory: route, join, apply, exactly as the pipeline does.

Used by the unit tests to run a story of deliveries through the pure
functions (streams/routing.py, streams/join.py, streams/order_state.py) in
any interleaving, without Kafka.
"""

from __future__ import annotations

import random
from collections import defaultdict
from decimal import Decimal
from typing import Any

from hookline.core.events import (
    ORDER_PRICED,
    ORDER_REFUNDED,
    ORDER_STATUS_CHANGED,
    TRANSACTION_STATUS_CHANGED,
    CanonicalEvent,
    new_event,
)
from hookline.schemas import codec
from hookline.streams.join import apply_to_transaction
from hookline.streams.order_state import apply_event, apply_update, retire
from hookline.streams.routing import routes

from tests.unit.helpers import ctx

ENV = "production"
DAY = 86_400_000
YEAR_ISH = 400 * DAY


def checkout(
    transaction_id: str,
    status: str,
    at: int,
    orders: dict[str, str | None] | None = None,
    currency: str = "EUR",
    delivery_id: str | None = None,
    kind: str = "partner",
) -> list[CanonicalEvent]:
    """A partner checkout delivery: the transaction event plus one order.priced per priced order."""
    context = ctx(delivery_id or f"co-{transaction_id}-{status}-{at}", at, kind=kind)
    orders = orders or {}
    events = [
        new_event(
            context,
            0,
            TRANSACTION_STATUS_CHANGED,
            "transaction",
            transaction_id,
            provider_event_type="CHECKOUT_STATUS_CHANGED",
            transaction_id=transaction_id,
            order_ids=list(orders),
            payment_status=status,
        )
    ]
    for order_id, amount in orders.items():
        if amount is not None:
            events.append(
                new_event(
                    context,
                    len(events),
                    ORDER_PRICED,
                    "order",
                    order_id,
                    provider_event_type="CHECKOUT_STATUS_CHANGED",
                    order_id=order_id,
                    transaction_id=transaction_id,
                    amount=Decimal(amount).quantize(Decimal("0.0001")),
                    currency=currency,
                )
            )
    return events


def payment(transaction_id: str, status: str, at: int, delivery_id: str | None = None) -> list:
    """A payments notification (no order list: seed 002 names only the orderReference)."""
    context = ctx(delivery_id or f"pay-{transaction_id}-{status}-{at}", at, kind="payments")
    return [
        new_event(
            context,
            0,
            TRANSACTION_STATUS_CHANGED,
            "transaction",
            transaction_id,
            provider_event_type="payment.completed" if status == "SUCCEEDED" else "payment.update",
            transaction_id=transaction_id,
            payment_status=status,
        )
    ]


def order_status(
    order_id: str,
    status: str | None,
    at: int,
    transaction_id: str | None = None,
    pdf: str | None = None,
    delivery_id: str | None = None,
) -> list[CanonicalEvent]:
    context = ctx(delivery_id or f"os-{order_id}-{status}-{at}", at)
    return [
        new_event(
            context,
            0,
            ORDER_STATUS_CHANGED,
            "order",
            order_id,
            provider_event_type="ORDER_STATUS_CHANGED",
            order_id=order_id,
            transaction_id=transaction_id,
            order_status=status,
            confirmation_pdf_url=pdf,
        )
    ]


def refund(
    order_id: str,
    amount: str | None,
    at: int,
    currency: str | None = "EUR",
    delivery_id: str | None = None,
    envelope_id: str | None = None,
    refused: str | None = None,
) -> list[CanonicalEvent]:
    """An envelope refund; ``envelope_id`` is the provider's id (the same on a re-send).

    ``refused``: the amount the adapter refused as out of range (``amount`` is then None).
    """
    context = ctx(delivery_id or f"rf-{order_id}-{amount}-{at}", at, kind="envelope")
    return [
        new_event(
            context,
            0,
            ORDER_REFUNDED,
            "order",
            order_id,
            provider_event_type="subscription_event_refund",
            order_id=order_id,
            amount=None if amount is None else Decimal(amount).quantize(Decimal("0.0001")),
            currency=currency if amount is not None or refused is not None else None,
            refused_amount=refused,
            provider_event_id=envelope_id or context.delivery_id,
        )
    ]


class Flow:
    """Tables ``transactions`` and ``orders`` and the records the stages emit."""

    def __init__(self, order_retention: int = YEAR_ISH, join_retention: int = YEAR_ISH) -> None:
        self.order_retention = order_retention
        self.join_retention = join_retention
        self.transactions: dict[str, dict[str, Any]] = {}
        self.orders: dict[str, dict[str, Any]] = {}
        self.changes: dict[str, list[dict[str, Any]]] = defaultdict(list)
        self.conflicts: list[str] = []
        #: Every rejection, as (field, held, value), published or only counted.
        self.rejected: list[tuple[str, str | None, str]] = []
        #: The RejectedFact records the worker would publish, in order.
        self.facts: list[dict[str, Any]] = []

    # -- the stages, one input each ---------------------------------------------------------
    def to_transaction(self, transaction_id: str, event: CanonicalEvent) -> list[dict[str, Any]]:
        result = apply_to_transaction(
            self.transactions.get(transaction_id), event, self.join_retention
        )
        if result.changed:
            _roundtrip(codec.TRANSACTION_RECORD, result.record)
            self.transactions[transaction_id] = result.record
        for update in result.updates:
            _roundtrip(codec.TRANSACTION_UPDATE, update)
        return result.updates

    def to_order(self, item: dict[str, Any]) -> None:
        order_id = item["order_id"]
        current = self.orders.get(order_id)
        if "event_id" in item:
            result = apply_event(current, item, ENV, self.order_retention)
        else:
            result = apply_update(current, item, ENV, self.order_retention)
        for rejection in result.rejected:
            self.rejected.append((rejection.field, rejection.held, rejection.value))
            if rejection.fact is not None:
                _roundtrip(codec.REJECTED_FACT, rejection.fact)
                self.facts.append(rejection.fact)
        if result.conflict:
            self.conflicts.append(result.conflict)
        if result.change is not None:
            _roundtrip(codec.ORDER_CHANGE, result.change)
            assert result.change["after"] == result.record["state"]
            self.changes[order_id].append(result.change)
        if result.changed:
            _roundtrip(codec.ORDER_RECORD, result.record)
            self.orders[order_id] = result.record

    # -- whole stories ----------------------------------------------------------------------
    def run(self, deliveries: list[list[CanonicalEvent]]) -> Flow:
        """Each delivery fully processed before the next (the simplest interleaving)."""
        for events in deliveries:
            for destination, key, event in routes(events):
                if destination == "transaction_facts":
                    for update in self.to_transaction(key, event):
                        self.to_order(update)
                elif destination == "order_inputs":
                    self.to_order(event)
        return self

    def run_shuffled(self, deliveries: list[list[CanonicalEvent]], seed: int) -> Flow:
        """Every record in a random interleaving: the topics give no order between keys."""
        rng = random.Random(seed)
        pending: list[tuple[str, Any, Any]] = [
            (destination, key, event)
            for events in deliveries
            for destination, key, event in routes(events)
            if destination != "events"
        ]
        while pending:
            destination, key, item = pending.pop(rng.randrange(len(pending)))
            if destination == "transaction_facts":
                pending += [("update", None, u) for u in self.to_transaction(key, item)]
            else:
                self.to_order(item)
        return self

    def retire_all(self) -> Flow:
        """What the sweeper does to orders idle past the retention (streams/expiry.py)."""
        self.orders = {oid: retire(record) for oid, record in self.orders.items()}
        for record in self.orders.values():
            _roundtrip(codec.ORDER_RECORD, record)
        return self

    def state(self, order_id: str) -> dict[str, Any]:
        return self.orders[order_id]["state"]

    def rules(self, order_id: str | None = None) -> list[tuple[str, str, str]]:
        """(rule, field, value) of each published rejected fact (of one order)."""
        return [
            (fact["rule"], fact["field"], fact["value"])
            for fact in self.facts
            if order_id is None or fact["order_id"] == order_id
        ]


def _roundtrip(schema: str, record: dict[str, Any]) -> None:
    """Everything a stage writes must fit its schema and read back identical."""
    assert codec.decode_as(schema, codec.encode(schema, record)) == record
