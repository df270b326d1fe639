"""What an unauthenticated client can send, parsed: core/json_object.py and gateway/body.py.

The gateway-hardening cases that are about parsing (lone surrogates, duplicate
keys, numbers out of range) plus the bounds on reading a body (timeout,
budget, a client that leaves) and the refusal log's rate limit.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import httpx
import jwt as pyjwt
import pytest
from hookline.core.adapters import payments
from hookline.core.json_object import NotAJsonObject, loads_object
from hookline.core.settings import Settings
from hookline.gateway.app import body_limit, create_app
from hookline.gateway.body import (
    BadBody,
    BodyBudget,
    BodyTimeout,
    Busy,
    ClientGone,
    parse_object,
    read_body,
)
from hookline.gateway.throttled_log import ThrottledLog
from hookline.gateway.time_limit import TimeLimit
from hookline.gateway.verify import JWT_BODY_LIMIT
from starlette.types import Message, Receive

from tests.unit.helpers import PAYLOADS, ctx, payload, source

# -- lone surrogates (a 500 before) --------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        b'{"token":"\\ud800"}',
        b'{"token":"\\udfff"}',
        b'{"token":"a\\ud800b"}',
        b'{"token":"\\ud800\\u0041"}',
        b'{"event_type":"ORDER_STATUS_CHANGED","order_id":"\\udc00"}',
        b'{"\\ud800":1}',
        b'{"a":["x","\\ud83d"]}',
        b'{"a":"\xed\xa0\x80"}',  # a surrogate encoded as UTF-8 bytes (CESU-8)
    ],
)
def test_lone_surrogate_is_a_bad_body(body: bytes) -> None:
    with pytest.raises(BadBody, match=r"surrogate|UTF-8"):
        parse_object(body, max_depth=32)


def test_a_surrogate_pair_is_one_character_and_fine() -> None:
    assert parse_object(b'{"a":"\\ud83d\\ude00"}', 32) == {"a": "\U0001f600"}


# -- duplicate keys -----------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        b'{"token":"forged","token":"valid"}',
        b'{"token": "forged" , "token" : "valid"}',
        b'{"a":1,"\\u0061":2}',  # the same key once escaped
        b'{"a\\"":1,"a\\"":2}',
        b'{"a":{"b":1,"c":2,"b":3}}',
        b'{"a":[{"x":1},{"y":1,"y":2}]}',
        b'{"a":"has:colons","a":"x"}',
        b'{"a":"\\\\","a":1}',
    ],
)
def test_duplicate_key_is_a_bad_body(body: bytes) -> None:
    with pytest.raises(BadBody, match="duplicate"):
        parse_object(body, max_depth=32)


NESTED_SAME_KEYS = {"a": {"a": {"a": 1}}, "b": [{"a": 1}, {"a": 2}]}


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b'{"a":"x:y","b":":"}', {"a": "x:y", "b": ":"}),
        (b'{"a\\":b":1,"a":2}', {'a":b': 1, "a": 2}),
        (b'{"u":"https:\\/\\/x.example\\/p?q=1:2"}', {"u": "https://x.example/p?q=1:2"}),
        (
            b'{"a":{"a":{"a":1}},"b":[{"a":1},{"a":2}]}',
            {"a": {"a": {"a": 1}}, "b": [{"a": 1}, {"a": 2}]},
        ),
        (b'{"\\u003a":1,":":2}', None),  # same key: ':' escaped and not
    ],
)
def test_colons_and_equal_keys_in_different_objects_are_not_duplicates(
    body: bytes, expected: dict[str, Any] | None
) -> None:
    if expected is None:
        with pytest.raises(BadBody, match="duplicate"):
            parse_object(body, 32)
    else:
        assert parse_object(body, 32) == expected


# -- numbers ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body", [b'{"a":1e999}', b'{"a":-1e999}', b'{"a":[1E400]}', b'{"a":NaN}', b'{"a":Infinity}']
)
def test_numbers_that_are_not_finite_doubles_are_bad_bodies(body: bytes) -> None:
    with pytest.raises(BadBody):
        parse_object(body, max_depth=32)


@pytest.mark.parametrize(
    "number",
    [
        "123456789012345678901234567890",
        "-9223372036854775809",
        "18446744073709551616",
        "9223372036854775807",
        "0.1",
        "1e308",
        "5e-324",
        "-0.0",
        "1.0000000000000000000001",
    ],
)
def test_numbers_read_exactly_as_the_standard_library_reads_them(number: str) -> None:
    # The worker parses what the gateway accepted and reads numbers as int/float.
    body = f'{{"a": {number}, "s": "12345678901234567890123"}}'.encode()
    parsed = loads_object(body)
    assert parsed == json.loads(body)
    assert type(parsed["a"]) is type(json.loads(body)["a"])


def test_an_integer_too_long_for_python_is_a_bad_body_not_a_crash() -> None:
    with pytest.raises(NotAJsonObject):
        loads_object(b'{"a":' + b"9" * 5000 + b"}")


@pytest.mark.parametrize("name", sorted(p.name for p in PAYLOADS.glob("*.json")))
def test_every_example_payload_reads_as_the_standard_library_reads_it(name: str) -> None:
    body = (PAYLOADS / name).read_bytes()
    assert loads_object(body) == json.loads(body)


@pytest.mark.parametrize(
    "body", [b"\xef\xbb\xbf{}", b'{"a":"\\x"}', b'{"a":"\x01"}', b'{"a":1,}', b"{} {}"]
)
def test_other_strictness(body: bytes) -> None:
    with pytest.raises(BadBody):
        parse_object(body, 32)


def test_refusal_reasons_never_echo_the_body() -> None:
    secret = "s3cr3t-value-0123456789"
    for body in (
        f'{{"token":"{secret}","token":"x"}}',
        f'{{"token":"{secret}\\ud800"}}',
        f'{{"token":"{secret}" x}}',
        f'{{"token":"{secret}","n":1e999}}',
    ):
        with pytest.raises(BadBody) as info:
            parse_object(body.encode(), 32)
        assert secret not in str(info.value)


# -- reading the body: timeout, budget, a client that leaves --------------------------


def trickle(chunks: list[bytes], pause_s: float) -> Receive:
    """An ASGI receive channel serving ``chunks`` with a pause before each after the first."""
    sent = 0

    async def receive() -> Message:
        nonlocal sent
        if sent:
            await asyncio.sleep(pause_s)
        sent += 1
        more = sent < len(chunks)
        return {"type": "http.request", "body": chunks[sent - 1], "more_body": more}

    return receive


async def test_a_body_that_stops_arriving_times_out() -> None:
    with pytest.raises(BodyTimeout):
        await read_body(trickle([b"{"] * 100, 0.05), 1000, time_limit=TimeLimit(0.2))


async def test_a_body_that_never_starts_times_out() -> None:
    async def silent() -> Message:
        await asyncio.sleep(3600)
        raise AssertionError("unreachable")

    with pytest.raises(BodyTimeout):
        await read_body(silent, 1000, time_limit=TimeLimit(0.1))


async def test_a_body_that_arrives_in_time_is_read() -> None:
    body = await read_body(trickle([b"{", b"}"], 0.01), 1000, time_limit=TimeLimit(2))
    assert body == b"{}"


def disconnecting() -> Receive:
    messages: list[Message] = [
        {"type": "http.request", "body": b"{", "more_body": True},
        {"type": "http.disconnect"},
    ]

    async def receive() -> Message:
        return messages.pop(0)

    return receive


async def test_a_client_that_leaves_mid_body_is_client_gone() -> None:
    with pytest.raises(ClientGone):
        await read_body(disconnecting(), 1000, time_limit=TimeLimit(1))


async def test_the_budget_refuses_bytes_past_it_and_is_given_back() -> None:
    levels: list[int] = []
    budget = BodyBudget(10, levels.append)
    with budget.hold() as first:
        await read_body(trickle([b"abcd", b"efg"], 0), 100, hold=first)
        assert budget.used == 7
        with budget.hold() as second, pytest.raises(Busy):
            await read_body(trickle([b"12", b"34"], 0), 100, hold=second)
        assert budget.used == 7  # the refused body's bytes were given back
    assert budget.used == 0
    assert levels[-1] == 0
    assert max(levels) <= 10


async def test_the_budget_is_given_back_when_reading_fails() -> None:
    budget = BodyBudget(100)
    with budget.hold() as hold, pytest.raises(BodyTimeout):
        await read_body(trickle([b"x" * 10] * 5, 0.1), 1000, time_limit=TimeLimit(0.15), hold=hold)
    assert budget.used == 0


# -- per-source body limits ----------------------------------------------------------


def test_a_jwt_source_gets_a_small_limit_and_others_the_global_one() -> None:
    settings = Settings(max_body_bytes=1024 * 1024)
    payments = source(kind="payments", verify="jwt-hs256")
    assert body_limit(payments, settings) == JWT_BODY_LIMIT < 64 * 1024
    assert body_limit(source(), settings) == 1024 * 1024
    assert body_limit(source(max_body_bytes=4096), settings) == 4096
    assert body_limit(source(max_body_bytes=10**9), settings) == 1024 * 1024
    assert body_limit(payments, Settings(max_body_bytes=1000)) == 1000


def test_the_jwt_limit_holds_the_longest_token_the_verifier_takes() -> None:
    body = json.dumps({"token": "a" * 8192}).encode()
    assert len(body) < JWT_BODY_LIMIT


# -- the refusal log ------------------------------------------------------------------


def test_refusal_lines_are_rate_limited_and_the_rest_counted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = [0.0]
    logger = logging.getLogger("test.throttled")
    throttled = ThrottledLog(logger, per_second=1.0, burst=3, clock=lambda: now[0])
    with caplog.at_level(logging.WARNING, logger="test.throttled"):
        for i in range(1000):
            throttled.warning("refused %d", i)
        assert len(caplog.records) == 3
        now[0] += 1.0
        throttled.warning("refused again")
    lines = [r.getMessage() for r in caplog.records]
    assert lines[-2] == "997 similar lines not logged (rate limit; the metrics count every one)"
    assert lines[-1] == "refused again"


# -- the app without a broker: routes that never publish ---------------------------------


class NeverPublishes:
    """Stands in for the publisher in routes that must not reach it."""

    async def start(self) -> None:
        raise AssertionError("not started in these tests")


async def get(settings: Settings, path: str) -> httpx.Response:
    app = create_app(settings, {"partner": source("partner")}, publisher=NeverPublishes())  # type: ignore[arg-type]
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://gateway.test"
    ) as client:
        return await client.get(path)


@pytest.mark.parametrize("path", ["/docs", "/redoc", "/openapi.json"])
async def test_api_docs_can_be_turned_off(path: str) -> None:
    assert (await get(Settings(api_docs=True), path)).status_code == 200
    off = await get(Settings(api_docs=False), path)
    assert off.status_code == 404
    assert off.json() == {"detail": "Not Found"}


# -- jwt-hs256: only the token is authenticated ----------------------------------------------


def test_body_fields_beside_the_jwt_never_reach_the_canonical_event() -> None:
    """The gateway verifies only ``token``; whatever else the body says must not count."""
    claims = payload("payments-claims.json")
    token = pyjwt.encode(claims, "payments-key-0123456789abcdef0123456789", algorithm="HS256")
    alone = loads_object(json.dumps({"token": token}).encode())
    beside = loads_object(
        json.dumps(
            {
                "token": token,
                "orderReference": "unauthenticated-ref",
                "paymentStatus": "failed",
                "event": "unauthenticated-event",
                "paymentDetails": {"amount": 0.01, "currency": "XXX"},
            }
        ).encode()
    )
    context = ctx(kind="payments")
    events = payments.to_events(beside, context)
    assert events == payments.to_events(alone, context)
    assert "unauthenticated" not in repr(events)
    assert "XXX" not in repr(events)
    assert payments.dedup_identity(beside, ()) == payments.dedup_identity(alone, ())
    assert payments.ordering_key(beside) == payments.ordering_key(alone)
