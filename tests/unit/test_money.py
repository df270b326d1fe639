"""core/adapters/money.py: provider amounts as exact Decimals, refused rather than rounded."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from hookline.core.adapters import money
from hookline.core.adapters.fields import Unmappable
from hookline.core.events import ORDER_PRICED, new_event
from hookline.core.json_object import loads_object
from hookline.schemas import codec

from tests.unit.helpers import ctx


def parsed(text: str) -> Any:
    """A JSON number exactly as the worker reads it (same parser as normalize)."""
    return loads_object(b'{"amount": ' + text.encode() + b"}")["amount"]


# -- exactness ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("15.70", "15.7000"),
        ("15.7", "15.7000"),
        ("0.1", "0.1000"),
        ("31.40", "31.4000"),
        ("99999.99", "99999.9900"),
        ("30.68", "30.6800"),
        ("0.01", "0.0100"),
        ("1.2345", "1.2345"),
        ("0", "0.0000"),
        ("0.0", "0.0000"),
        ("15", "15.0000"),
        ("1e2", "100.0000"),
        ("1.5E1", "15.0000"),
        ("12345678901.2345", "12345678901.2345"),  # 15 significant digits: still exact
        ("99999999999999", "99999999999999.0000"),  # 14 integer digits: the Avro maximum
    ],
)
def test_json_numbers_become_exact_decimals(text: str, expected: str) -> None:
    value = money.amount(parsed(text), "amount")
    assert type(value) is Decimal
    assert str(value) == expected
    assert value == Decimal(text)  # the number the provider wrote, not its binary float
    assert value.as_tuple().exponent == -money.SCALE


def test_amounts_are_never_floats() -> None:
    # 0.1 as a float is 0.1000000000000000055...; the Decimal is exactly one tenth.
    tenth = money.amount(0.1, "amount")
    assert tenth is not None
    assert tenth != Decimal(0.1)  # noqa: RUF032 (the float's exact value, on purpose)
    assert tenth * 3 == Decimal("0.3")
    a, b = money.amount(15.70, "a"), money.amount(15.70, "b")
    total = money.amount(31.40, "total")
    assert a is not None
    assert b is not None
    assert a + b == total  # 15.70 + 15.70 == 31.40, which floats get only by luck
    parts = [money.amount(value, "part") for value in (0.1, 0.2)]
    assert parts[0] is not None
    assert parts[1] is not None
    assert parts[0] + parts[1] == money.amount(0.3, "sum")
    assert 0.1 + 0.2 != 0.3


def test_ints_and_floats_of_the_same_value_are_equal() -> None:
    assert money.amount(15, "a") == money.amount(15.0, "a") == Decimal("15.0000")


def test_absent_amount_is_none() -> None:
    assert money.amount(None, "amount") is None


def test_amounts_survive_the_avro_decimal() -> None:
    context = ctx("d-m", kind="partner")
    for value in (15.70, 0.1, 31.40, 99999.99, 99999999999999, 12345678901.2345):
        exact = money.amount(value, "amount")
        event = new_event(
            context, 1, ORDER_PRICED, "order", "o", order_id="o", amount=exact, currency="EUR"
        )
        decoded = codec.decode_as(codec.CANONICAL_EVENT, codec.encode(codec.CANONICAL_EVENT, event))
        assert decoded["amount"] == exact
        assert str(decoded["amount"]) == str(exact)


# -- refusals ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        -0.01,
        -1,
        -15.70,
        parsed("-31.40"),
        True,
        False,
        "abc",
        "",
        [15.7],
        {"amount": 15.7},
        b"15.70",
        Decimal("-1"),
        float("nan"),
        float("inf"),
        "NaN",
        "Infinity",
        1.23456,
        0.00001,
        parsed("15.70001"),
        10**14,  # 15 integer digits: does not fit decimal(18, 4)
        1e14,
        1e16,
        parsed("123456789012345678"),
        0.1 + 0.2,  # 0.30000000000000004: 17 significant digits
        123456789012.3456,  # 16 significant digits: a float does not keep them exactly
        "9" * 40,
    ],
)
def test_unusable_amounts_are_refused(value: Any) -> None:
    with pytest.raises(Unmappable) as raised:
        money.amount(value, "amount of order 'ord_1'")
    assert "amount of order 'ord_1'" in str(raised.value)


@pytest.mark.parametrize(
    ("value", "words"),
    [
        (-1, "non-negative"),
        (True, "number"),
        ("abc", "must be a JSON number"),
        (1.23456, "4 decimals"),
        (10**14, "14 digits"),
        (0.1 + 0.2, "digits"),
    ],
)
def test_refusal_reasons_say_why(value: Any, words: str) -> None:
    with pytest.raises(Unmappable, match=words):
        money.amount(value, "x")


def test_refusal_is_not_rounding() -> None:
    # Four decimals is the scale: a fifth decimal is refused, never rounded away.
    assert money.amount(1.2345, "x") == Decimal("1.2345")
    with pytest.raises(Unmappable):
        money.amount(1.23451, "x")


# -- currency ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [("EUR", "EUR"), ("eur", "EUR"), ("Bgn", "BGN"), (None, None), ("", None)],
)
def test_currency_codes(value: Any, expected: str | None) -> None:
    assert money.currency(value, "currency") == expected


@pytest.mark.parametrize(
    "value", ["EU", "EURO", "E1R", " EUR", "EUR ", "€", 978, True, ["EUR"], {"code": "EUR"}]
)
def test_bad_currency_codes_are_refused(value: Any) -> None:
    with pytest.raises(Unmappable, match="'currency'"):
        money.currency(value, "'currency'")


@pytest.mark.parametrize("value", ["EUR\n", "\ufb00a", "\u0131dr"])
def test_currency_with_trailing_newline_or_non_ascii_is_refused(value: str) -> None:
    with pytest.raises(Unmappable):
        money.currency(value, "currency")


@pytest.mark.parametrize("value", ["15.70", "1_000", "-0", -0.0, -0])
def test_strings_and_negative_zero_are_not_money(value: object) -> None:
    if value == 0 and not isinstance(value, float) and not isinstance(value, str):
        assert money.amount(value, "amount") == 0  # plain integer 0 is zero
        return
    with pytest.raises(Unmappable):
        money.amount(value, "amount")
