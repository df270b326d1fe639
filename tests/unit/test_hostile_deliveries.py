"""No delivery stops the pipeline (PRODUCT.md section 5): hostile, authentic deliveries
of every kind, driven through the gateway's acceptance, intake (normalize,
encode), the join, the order state and the warehouse rows.

Each generated story is a few deliveries of the four kinds, built from the
example payloads with fields replaced by hostile values: strings with lone
surrogates and control characters, nesting up to and past every limit,
numbers at and past every money bound, wrong types, huge lists, dates out of
range with offsets; orders and transactions are drawn from a small pool so
that facts meet (two refunds of one order sum past decimal(18,4)). Properties:

- the gateway either refuses the body (400, as it would) or computes its
  ordering key and raw record without raising;
- intake returns a Delivery or a DeadLetter that names a stage and a reason,
  never raises;
- every fact of a mapped delivery goes through the join and the order rules
  without raising, and everything they write encodes and reads back;
- every record the sink lands becomes a row.
"""

from __future__ import annotations

import copy
import json
from decimal import Decimal
from typing import Any

import jwt
from hookline.core.adapters import envelope_problem, ordering_key
from hookline.core.json_object import DEFAULT_MAX_DEPTH, NotAJsonObject, loads_object
from hookline.core.partitioner import partition_for
from hookline.core.sources import Source
from hookline.gateway.envelope import new_delivery_id, raw_envelope
from hookline.schemas import codec
from hookline.streams.join import apply_to_transaction
from hookline.streams.normalize import DeadLetter, Delivery, normalize
from hookline.streams.order_state import apply_event, apply_update
from hookline.streams.routing import routes
from hookline.warehouse import rows
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.unit.helpers import T0, payload, source

ENV = "production"
RETENTION = 400 * 86_400_000
JWT_KEY = "payments-jwt-key-0123456789abcdef-0123"
SOURCES: dict[str, Source] = {
    "partner": source("partner", "partner", "token"),
    "vignette-sales": source("vignette-sales", "vignette-sales", "hmac-sha256"),
    "payments": source("payments", "payments", "jwt-hs256"),
    "envelope": source("envelope", "envelope", "token"),
}
EXAMPLES: dict[str, list[dict[str, Any]]] = {
    "partner": [
        payload("partner-order-status.json"),
        payload("partner-checkout-single.json"),
        payload("partner-checkout-multi.json"),
        payload("partner-order-confirmation.json"),
    ],
    "vignette-sales": [
        payload("vignette-sales-success.json"),
        payload("vignette-sales-failure.json"),
    ],
    "payments": [payload("payments-claims.json")],
    "envelope": [payload("envelope-refund.json"), payload("envelope-user-create.json")],
}

# -- hostile values ------------------------------------------------------------------------
IDS = st.sampled_from(["ord_1", "ord_2", "tr_1", "tr_2", "row_1"])
HOSTILE_TEXT = st.one_of(
    IDS,
    st.sampled_from(
        [
            "\ud800",
            "a\udfffb",
            "\x00\x07\x1b[31m",
            "\u202e\ufeff",
            "",
            " ",
            "x" * 5000,
            "9999-12-31T23:59:59-14:00",
            "0001-01-01T00:00:00+14:00",
            "2026-13-45T25:61:61Z",
            "NaN",
            "SUCCESS",
            "completed",
            "subscription_event_refund",
            "ACTIVE",
        ]
    ),
    st.text(max_size=40),
)
MONEY = st.sampled_from(
    [
        0,
        -1,
        -0.0,
        0.0001,
        0.00001,
        1.23456,
        15.7,
        99999999999999.9999,
        60_000_000_000_000,
        99_999_999_999_999,
        10**14,
        10**18,
        10**30,
        1e308,
        2**63,
        2**64 + 1,
        True,
        "15.70",
    ]
)
DATES = st.sampled_from(
    ["9999-12-31T23:59:59-14:00", "0001-01-01T00:00:00+14:00", "1969-12-31T23:59:59Z", 2**62]
)


def nested(depth: int) -> Any:
    value: Any = "deep"
    for _ in range(depth):
        value = {"x": value}
    return value


LEAVES = st.one_of(
    HOSTILE_TEXT,
    MONEY,
    DATES,
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from([DEFAULT_MAX_DEPTH - 2, DEFAULT_MAX_DEPTH, DEFAULT_MAX_DEPTH + 5, 600]).map(
        nested
    ),
    st.integers(min_value=0, max_value=1200).map(lambda n: [f"ord_{i}" for i in range(n)]),
    st.integers(min_value=0, max_value=1200).map(
        lambda n: [{"id": f"ord_{i}", "amount": 1.5} for i in range(n)]
    ),
    st.just({}),
    st.just([]),
)


def paths(document: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """The places in a document a value can be replaced (not inside a deep value
    already put there: the generator stays within Python's recursion limit)."""
    found = [prefix] if prefix else []
    if len(prefix) >= 6:
        return found
    if isinstance(document, dict):
        for key, value in document.items():
            found += paths(value, (*prefix, key))
    elif isinstance(document, list):
        for index, value in enumerate(document[:3]):
            found += paths(value, (*prefix, index))
    return found


def replaced(document: Any, path: tuple[Any, ...], value: Any) -> Any:
    copied = copy.deepcopy(document)
    target = copied
    for step in path[:-1]:
        target = target[step]
    target[path[-1]] = value
    return copied


@st.composite
def documents(draw: st.DrawFn, kind: str) -> dict[str, Any]:
    document = copy.deepcopy(draw(st.sampled_from(EXAMPLES[kind])))
    for _ in range(draw(st.integers(min_value=1, max_value=4))):
        places = paths(document)
        if not places:
            break
        path = draw(st.sampled_from(places))
        document = replaced(document, path, draw(LEAVES))
    return document


def body_of(kind: str, document: dict[str, Any]) -> bytes:
    if kind == "payments":
        token = jwt.encode(document, JWT_KEY, algorithm="HS256")
        return json.dumps({"token": token}).encode()
    # The standard library writes lone surrogates as escapes: the gateway refuses them.
    return json.dumps(document).encode()


@st.composite
def deliveries(draw: st.DrawFn) -> tuple[str, bytes]:
    kind = draw(st.sampled_from(sorted(EXAMPLES)))
    return kind, body_of(kind, draw(documents(kind)))


# -- the stages, as the gateway and the worker run them -------------------------------------
def accept(kind: str, body: bytes, at: int) -> tuple[bytes, bytes] | None:
    """The gateway's part: None when it would answer 400, else (key, raw record)."""
    try:
        document = loads_object(body, DEFAULT_MAX_DEPTH)
    except NotAJsonObject:
        return None
    if envelope_problem(kind, document) is not None:
        return None
    key = ordering_key(kind, document).encode()  # the gateway encodes it unchecked
    partition_for(key, range(4))
    delivery_id = new_delivery_id(at)
    envelope = raw_envelope(SOURCES[kind], body, {}, "203.0.113.9", at, delivery_id)
    return delivery_id.encode(), codec.encode(codec.WEBHOOK_ENVELOPE, envelope)


def roundtrip(schema: str, record: dict[str, Any]) -> bytes:
    encoded = codec.encode(schema, record)
    assert codec.decode_as(schema, encoded) == record
    return encoded


class Worker:
    """Tables and outputs of one worker, in memory, fed through the pure stage functions."""

    def __init__(self) -> None:
        self.transactions: dict[str, dict[str, Any]] = {}
        self.orders: dict[str, dict[str, Any]] = {}
        self.landed = 0

    def land(self, table: rows.TableDef, schema: str, record: dict[str, Any]) -> None:
        """The sink: the record as the topic holds it, decoded and made a row."""
        name, value = codec.decode(roundtrip(schema, record))
        assert name == table.record
        rows.to_row(table, value)
        self.landed += 1

    def to_order(self, item: dict[str, Any]) -> None:
        order_id = item["order_id"]
        current = self.orders.get(order_id)
        if "event_id" in item:
            result = apply_event(current, item, ENV, RETENTION)
        else:
            result = apply_update(current, item, ENV, RETENTION)
        if result.change is not None:
            self.land(rows.ORDER_CHANGES, codec.ORDER_CHANGE, result.change)
            self.land(rows.ORDERS_STATE, codec.ORDER_STATE, result.change["after"])
        if result.changed:
            roundtrip(codec.ORDER_RECORD, result.record)
            self.orders[order_id] = result.record

    def intake(self, key: bytes, value: bytes) -> Delivery | DeadLetter:
        result = normalize(key, value, ENV, SOURCES)
        if isinstance(result, DeadLetter):
            letter = codec.decode_as(codec.DEAD_LETTER, result.value)
            assert letter["stage"] == "normalize"
            assert letter["reason"]
            return result
        for event in result.events:
            encoded = result.encoded[event["event_id"]]
            assert codec.decode_as(codec.CANONICAL_EVENT, encoded) == event
        for destination, entity, event in routes(result.events):
            if destination == "events":
                self.land(rows.WEBHOOK_EVENTS, codec.CANONICAL_EVENT, event)
            elif destination == "transaction_facts":
                joined = apply_to_transaction(self.transactions.get(entity), event, RETENTION)
                if joined.changed:
                    roundtrip(codec.TRANSACTION_RECORD, joined.record)
                    self.transactions[entity] = joined.record
                for update in joined.updates:
                    roundtrip(codec.TRANSACTION_UPDATE, update)
                    self.to_order(update)
            else:
                self.to_order(event)
        return result


@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(st.lists(deliveries(), min_size=1, max_size=5))
def test_no_hostile_delivery_raises_in_any_stage(story: list[tuple[str, bytes]]) -> None:
    worker = Worker()
    for step, (kind, body) in enumerate(story):
        accepted = accept(kind, body, T0 + step)
        if accepted is None:
            continue  # the gateway answered 400: nothing reached Kafka
        result = worker.intake(*accepted)
        assert isinstance(result, Delivery | DeadLetter)


# -- the cases the issue named, one by one --------------------------------------------------
def run_story(*bodies: tuple[str, dict[str, Any]]) -> tuple[Worker, list[Delivery | DeadLetter]]:
    worker = Worker()
    results = []
    for step, (kind, document) in enumerate(bodies):
        accepted = accept(kind, body_of(kind, document), T0 + step)
        assert accepted is not None, "the gateway accepts these"
        results.append(worker.intake(*accepted))
    return worker, results


def test_a_lone_surrogate_in_payments_claims_is_dead_lettered_naming_the_claims() -> None:
    claims = dict(payload("payments-claims.json"), event="\ud800")
    _, (result,) = run_story(("payments", claims))
    assert isinstance(result, DeadLetter)
    assert "surrogate" in result.record["reason"]
    assert "claims" in result.record["reason"]


def test_a_lone_surrogate_in_the_order_reference_still_has_an_ordering_key() -> None:
    claims = dict(payload("payments-claims.json"), orderReference="tr\ud800")
    body = body_of("payments", claims)
    key = ordering_key("payments", loads_object(body, DEFAULT_MAX_DEPTH))
    assert key.encode()  # no UnicodeEncodeError: a 200, not a 500
    _, (result,) = run_story(("payments", claims))
    assert isinstance(result, DeadLetter)


def test_claims_nested_past_the_limit_are_dead_lettered() -> None:
    claims = dict(payload("payments-claims.json"), extra=nested(600))
    _, (result,) = run_story(("payments", claims))
    assert isinstance(result, DeadLetter)
    assert "nested" in result.record["reason"]


def test_refunds_whose_sum_passes_decimal_18_4_do_not_raise() -> None:
    refund = payload("envelope-refund.json")
    first = replaced(replaced(refund, ("id",), "ev_1"), ("data", "amount"), 60_000_000_000_000)
    second = replaced(replaced(refund, ("id",), "ev_2"), ("data", "amount"), 60_000_000_000_000)
    worker, results = run_story(("envelope", first), ("envelope", second))
    assert all(isinstance(result, Delivery) for result in results)
    (order,) = worker.orders.values()
    refunded = order["state"]["refunded_amount"]
    assert refunded is None or refunded <= Decimal("99999999999999.9999")


def test_a_date_beyond_year_9999_is_no_occurred_at_and_lands() -> None:
    status = replaced(
        payload("partner-order-status.json"), ("created_at",), "9999-12-31T23:59:59-14:00"
    )
    worker, (result,) = run_story(("partner", status))
    assert isinstance(result, Delivery)
    assert result.events[0]["occurred_at"] is None
    assert worker.landed >= 3  # the event, the change and the state all became rows
