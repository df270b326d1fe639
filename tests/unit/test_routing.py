"""streams/routing.py: where events go, and which memberships need not go again."""

from __future__ import annotations

import random
from typing import Any

import pytest
from hookline.core.events import CanonicalEvent
from hookline.streams.routing import REFRESH_SHARE, known_member, routes

from tests.unit.flow import DAY, Flow, checkout, order_status, payment, refund

RETENTION = 400 * DAY
T0 = 1_700_000_000_000


def status(order: str, at: int, tx: str = "t-1", event_id: str | None = None) -> CanonicalEvent:
    event = order_status(order, "ACTIVE", at, transaction_id=tx)[0]
    if event_id is not None:
        event["event_id"] = event_id
    return event


def test_a_membership_claimed_earlier_and_recently_is_known() -> None:
    claims = {"t-1": (T0, "e-1")}
    assert known_member(claims, status("o-1", T0 + 5), RETENTION)


@pytest.mark.parametrize(
    ("claims", "event", "why"),
    [
        ({}, status("o-1", T0), "no claim"),
        ({"t-2": (T0, "e-1")}, status("o-1", T0 + 5), "another transaction's claim"),
        ({"t-1": (T0 + 5, "e-9")}, status("o-1", T0), "the event is earlier: it moves the claim"),
        ({"t-1": (T0, "e-1")}, status("o-1", T0, event_id="e-1"), "the claim's own fact"),
        ({"t-1": (T0, "")}, status("o-1", T0 + 5), "a claim made up at retirement"),
        (
            {"t-1": (T0, "e-1")},
            status("o-1", T0 + RETENTION // REFRESH_SHARE),
            "old enough to renew the transaction's expiry",
        ),
        ({"t-1": (T0, "e-1")}, status("o-1", T0 + 5, tx=None), "no transaction"),  # type: ignore[arg-type]
    ],
)
def test_a_membership_is_sent_when(
    claims: dict[str, tuple[int, str]], event: CanonicalEvent, why: str
) -> None:
    assert not known_member(claims, event, RETENTION), why


def _run(deliveries: list[list[CanonicalEvent]], seed: int, skip_known: bool) -> Flow:
    """Intake routes each delivery in turn, applying its order events at once (every order
    is local, as a partner order is); its transaction facts reach the transactions stage
    later, in a random order among themselves and the updates that stage sends."""
    rng = random.Random(seed)
    flow = Flow(join_retention=RETENTION)
    pending: list[tuple[str, Any, Any]] = []
    skipped = 0
    for events in deliveries:
        claims = {
            order_id: {
                c["transaction_id"]: (c["claimed_received_at"], c["claimed_event_id"])
                for c in record["claims"]
            }
            for order_id, record in flow.orders.items()
        }
        for destination, key, event in routes(events):
            if destination == "order_inputs":
                flow.to_order(event)
            elif destination == "transaction_facts":
                if (
                    skip_known
                    and event["entity_type"] != "transaction"
                    and known_member(claims.get(event["order_id"], {}), event, RETENTION)
                ):
                    skipped += 1
                    continue
                pending.append((destination, key, event))
        # Some of what is pending is handled now, the rest later.
        for _ in range(rng.randrange(len(pending) + 1)):
            _handle(flow, pending, rng)
    while pending:
        _handle(flow, pending, rng)
    flow.skipped = skipped  # type: ignore[attr-defined]
    return flow


def _handle(flow: Flow, pending: list[tuple[str, Any, Any]], rng: random.Random) -> None:
    destination, key, item = pending.pop(rng.randrange(len(pending)))
    if destination == "transaction_facts":
        pending += [("update", None, u) for u in flow.to_transaction(key, item)]
    else:
        flow.to_order(item)


def _stories(rng: random.Random) -> list[list[CanonicalEvent]]:
    deliveries = []
    for n in range(6):
        tx, at = f"t-{n}", T0 + n * 1000
        orders = [f"o-{n}-{i}" for i in range(rng.randint(1, 3))]
        story = [checkout(tx, "PENDING", at, dict.fromkeys(orders, "10"))]
        for i, order in enumerate(orders):
            story.append(order_status(order, "PENDING", at + 10 + i, transaction_id=tx))
            story.append(order_status(order, "ACTIVE", at + 20 + i, transaction_id=tx))
            story.append(order_status(order, None, at + 30 + i, tx, pdf=f"https://x/{order}"))
        story.append(payment(tx, rng.choice(["SUCCEEDED", "FAILED"]), at + 15))
        if rng.random() < 0.3:
            story.append(refund(orders[0], "10", at + 40))
        rng.shuffle(story)  # providers send in any order
        deliveries += story
    return deliveries


#: What an order's state says, whatever the interleaving (its version and
#: updated_at count the changes on the way, which the interleaving decides).
CONTENT = (
    "transaction_id",
    "order_status",
    "payment_status",
    "confirmation_pdf_url",
    "amount",
    "currency",
    "refunded_amount",
)


def _contents(flow: Flow) -> dict[str, tuple[Any, ...]]:
    return {
        order: tuple(record["state"][name] for name in CONTENT)
        for order, record in flow.orders.items()
    }


def _members(flow: Flow) -> dict[str, list[str]]:
    return {
        tx: sorted(member["order_id"] for member in record["members"])
        for tx, record in flow.transactions.items()
    }


@pytest.mark.parametrize("seed", range(40))
def test_skipping_known_memberships_changes_no_order(seed: int) -> None:
    deliveries = _stories(random.Random(seed))
    every = _run(deliveries, seed, skip_known=False)
    fewer = _run(deliveries, seed, skip_known=True)
    assert _contents(fewer) == _contents(every)
    assert _members(fewer) == _members(every)


def test_the_stories_do_repeat_memberships() -> None:
    """The property above is not vacuous: memberships are skipped in these stories."""
    skipped = sum(
        _run(_stories(random.Random(seed)), seed, skip_known=True).skipped  # type: ignore[attr-defined]
        for seed in range(40)
    )
    assert skipped > 100
