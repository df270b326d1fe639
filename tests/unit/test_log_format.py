"""hookline/logs.py's JSON lines: fields come from the log call, never from message text."""

from __future__ import annotations

import json
import logging

from hookline.logs import JsonFormatter


def record(message: str, *args: object, **extra: object) -> logging.LogRecord:
    made = logging.LogRecord("hookline.gateway", logging.WARNING, __file__, 1, message, args, None)
    for key, value in extra.items():
        setattr(made, key, value)
    return made


def test_key_value_text_in_a_message_is_never_a_field() -> None:
    # A source name is input: whatever it says must stay inside the message.
    line = json.loads(
        JsonFormatter().format(record("refused unknown source %r", "zz order_id=ord_5a71"))
    )
    assert line["message"] == "refused unknown source 'zz order_id=ord_5a71'"
    assert "order_id" not in line
    assert "source" not in line


def test_structured_fields_come_from_extra() -> None:
    line = json.loads(
        JsonFormatter().format(
            record("refused source=%s status=%d", "partner", 401, source="partner")
        )
    )
    assert line["source"] == "partner"
    assert line["level"] == "WARNING"
    assert {"delivery_id", "order_id", "transaction_id"}.isdisjoint(line)
