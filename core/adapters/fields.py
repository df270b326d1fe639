"""Reading provider JSON defensively: typed, bounded, with a reason on failure.

Anything a provider sends that does not fit becomes :class:`Unmappable`, which
the normalize stage turns into a dead letter carrying the reason, so nothing is
dropped silently and nothing oversized reaches a topic.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

MAX_ID = 256
MAX_URL = 2048
MAX_TEXT = 1000
MAX_ITEMS = 1000  # orders in one transaction
#: 9999-12-31T23:59:59.999Z, the last instant a Python datetime can hold.
MAX_TIMESTAMP_MS = 253_402_300_799_999


class Unmappable(Exception):
    """The payload is authentic but hookline cannot map it (goes to the dead-letter topic)."""


def text(
    document: Mapping[str, Any], key: str, *, limit: int = MAX_ID, required: bool = True
) -> str | None:
    value = document.get(key)
    if value is None or value == "":
        if required:
            raise Unmappable(f"missing {key!r}")
        return None
    if not isinstance(value, str):
        raise Unmappable(f"{key!r} must be a string, got {type(value).__name__}")
    if len(value) > limit:
        raise Unmappable(f"{key!r} longer than {limit} characters")
    return value


def required_text(document: Mapping[str, Any], key: str, *, limit: int = MAX_ID) -> str:
    value = text(document, key, limit=limit, required=True)
    assert value is not None
    return value


def obj(document: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = document.get(key)
    if not isinstance(value, dict):
        raise Unmappable(f"{key!r} must be an object")
    return value


def items(document: Mapping[str, Any], key: str) -> list[Any]:
    value = document.get(key)
    if not isinstance(value, list):
        raise Unmappable(f"{key!r} must be a list")
    if len(value) > MAX_ITEMS:
        raise Unmappable(f"{key!r} has more than {MAX_ITEMS} items")
    return value


def choice(value: str | None, mapping: Mapping[str, str], what: str) -> str:
    if value not in mapping:
        raise Unmappable(f"unknown {what} {str(value)[:MAX_ID]!r}")
    return mapping[value]


def timestamp_ms(value: Any) -> int | None:
    """An ISO-8601 provider timestamp in milliseconds; None when absent or unreadable.

    A provider's clock is informative only (occurred_at), so a bad value is
    not worth a dead letter.
    """
    if not isinstance(value, str) or not value or len(value) > 64:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    millis = int(parsed.timestamp() * 1000)
    # Bounded to what every reader can hold as a datetime (9999-12-31 UTC at
    # most, the epoch at least): a provider's far date would otherwise pass
    # here and break a consumer's conversion to a datetime (the warehouse sink's).
    return millis if 0 <= millis <= MAX_TIMESTAMP_MS else None
