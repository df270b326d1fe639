"""Money as providers send it, turned into exact decimals (PRODUCT.md section 3).

Providers write amounts as JSON numbers (``15.70``). The JSON reader hands
them over as ``float``; ``repr`` of a float is the shortest text that reads
back as the same float, which for every amount of at most 15 significant
digits is the text the provider wrote, so ``Decimal(repr(x))`` recovers it
exactly. Anything longer, negative, or finer than the Avro scale is not money
hookline can vouch for and is refused, never rounded: :func:`amount` raises
(the caller dead-letters), :func:`priced` keeps the refused text so the
delivery's other facts still apply and the order state publishes a
``money_out_of_range`` rejected fact (PRODUCT.md section 4, "Money out of
range"; docs/consumers.md, "Money"). A value that is not a JSON number is
always unmappable.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation
from typing import Any

from hookline.core.adapters.fields import Unmappable

#: The Avro ``decimal`` of OrderState.amount: precision 18, scale 4.
SCALE = 4
PRECISION = 18
MAX_SIGNIFICANT = 15  # what a float carries exactly
_CURRENCY = re.compile(r"^[A-Z]{3}$")
_QUANTUM = Decimal(1).scaleb(-SCALE)
#: The refused text kept on an event is at most this long (a huge integer is cut).
MAX_REFUSED_TEXT = 64


def amount(value: Any, what: str) -> Decimal | None:
    """A provider amount as an exact Decimal, or None when absent."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise Unmappable(f"{what} must be a JSON number")
    text = repr(value) if isinstance(value, float) else str(value)
    if len(text) > 32:
        raise Unmappable(f"{what} is too long")
    try:
        exact = Decimal(text)
    except InvalidOperation:
        raise Unmappable(f"{what} is not a number") from None
    if not exact.is_finite() or exact.is_signed():
        raise Unmappable(f"{what} must be a finite, non-negative number")
    digits = exact.as_tuple()
    if len(digits.digits) > MAX_SIGNIFICANT and isinstance(value, float):
        raise Unmappable(f"{what} has more digits than a JSON number keeps exactly")
    if exact.adjusted() >= PRECISION - SCALE:
        raise Unmappable(f"{what} is larger than {PRECISION - SCALE} digits")
    if exact != exact.quantize(_QUANTUM):
        raise Unmappable(f"{what} has more than {SCALE} decimals")
    return exact.quantize(_QUANTUM)


def priced(value: Any, what: str) -> tuple[Decimal | None, str | None]:
    """(amount, refused text): ``(None, None)`` when absent, ``(None, text)`` when out of range.

    Raises :class:`Unmappable` only when the value is not a JSON number.
    """
    if value is None:
        return None, None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise Unmappable(f"{what} must be a JSON number")
    try:
        return amount(value, what), None
    except Unmappable:
        text = repr(value) if isinstance(value, float) else str(value)
        if len(text) > MAX_REFUSED_TEXT:
            text = text[: MAX_REFUSED_TEXT - 3] + "..."
        return None, text


def fits(value: Decimal) -> bool:
    """True when ``value`` is money an OrderState can hold: decimal(18,4), not negative.

    For sums of amounts that each fit (refunds): the sum may not.
    """
    return (
        value.is_finite()
        and not value.is_signed()
        and (value == 0 or value.adjusted() < PRECISION - SCALE)
        and value == value.quantize(_QUANTUM)
    )


def currency(value: Any, what: str) -> str | None:
    """An ISO 4217 code (three capital letters), or None when absent."""
    if value is None or value == "":
        return None
    if not isinstance(value, str) or not value.isascii() or not _CURRENCY.fullmatch(value.upper()):
        raise Unmappable(f"{what} must be an ISO 4217 code")
    return value.upper()
