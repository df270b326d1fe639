"""Log output for every hookline process: text for people, or JSON lines for log pipelines.

``HOOKLINE_LOG_FORMAT=json`` makes every line a process writes to stderr one
JSON object (time, level, logger, message, and delivery_id / order_id /
transaction_id / source where the log call knows them), including the Faust
worker, whose own logging setup would otherwise replace ours, and
``hookline run``, which wraps whatever its children print that is not JSON.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from datetime import UTC, datetime
from types import TracebackType
from typing import Any

FORMAT_ENV = "HOOKLINE_LOG_FORMAT"
FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"
#: Identifiers given their own JSON keys, from the log call's ``extra=`` only: a message's
#: text can hold input (a source name from a URL), so fields are never parsed out of it.
CONTEXT_KEYS = ("delivery_id", "order_id", "transaction_id", "source")


class LogFormatError(ValueError):
    """HOOKLINE_LOG_FORMAT has a value we do not know."""


def log_format(env: dict[str, str] | None = None) -> str:
    value = (os.environ if env is None else env).get(FORMAT_ENV, "").strip().lower() or "text"
    if value not in FORMATS:
        raise LogFormatError(f"{FORMAT_ENV}={value!r}: expected one of {', '.join(FORMATS)}")
    return value


def is_json() -> bool:
    try:
        return log_format() == "json"
    except LogFormatError:
        return False


def _iso(epoch_s: float) -> str:
    return datetime.fromtimestamp(epoch_s, UTC).isoformat(timespec="milliseconds")


class JsonFormatter(logging.Formatter):
    """One JSON object per record; a traceback is one string in ``exception``.

    Fields come from the record's structured attributes, never from its message text.
    """

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        line: dict[str, Any] = {
            "time": _iso(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": message,
        }
        for key in CONTEXT_KEYS:
            value = getattr(record, key, None)
            if value is not None:
                line[key] = str(value)
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            line["stack"] = record.stack_info
        return json.dumps(line, ensure_ascii=False, default=str)


def dict_config(verbose: bool) -> dict[str, Any]:
    """A ``logging.config.dictConfig`` for the chosen format (also given to Faust)."""
    formatter: dict[str, Any] = (
        {"()": f"{__name__}.JsonFormatter"} if log_format() == "json" else {"format": TEXT_FORMAT}
    )
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"hookline": formatter},
        "handlers": {
            "stderr": {
                "class": "logging.StreamHandler",
                "formatter": "hookline",
                "stream": "ext://sys.stderr",
            }
        },
        "root": {"level": "DEBUG" if verbose else "INFO", "handlers": ["stderr"]},
        "loggers": {
            # aiokafka logs every reconnect attempt at ERROR while Kafka is away.
            "aiokafka": {"level": "INFO" if verbose else "CRITICAL"},
            # Faust and its service library log every service's start and stop
            # (~140 lines per worker start); their warnings and errors still show.
            "faust": {"level": "INFO" if verbose else "WARNING"},
            "mode": {"level": "INFO" if verbose else "WARNING"},
        },
    }


def _log_uncaught(
    kind: type[BaseException], value: BaseException, tb: TracebackType | None
) -> None:
    if issubclass(kind, KeyboardInterrupt):
        sys.__excepthook__(kind, value, tb)
        return
    logging.getLogger("hookline").critical("uncaught exception", exc_info=(kind, value, tb))


def configure(verbose: bool) -> None:
    """Set up this process's logging; raise :class:`LogFormatError` for a bad setting."""
    import logging.config

    logging.config.dictConfig(dict_config(verbose))
    if log_format() == "json":
        logging.captureWarnings(True)  # warnings.warn would write plain text to stderr
        sys.excepthook = _log_uncaught


def say(message: str) -> None:
    """A message for the person running ``hookline run``: plain text, or a JSON line."""
    if is_json():
        logging.getLogger("hookline.run").info(message.strip())
    else:
        print(message, file=sys.stderr, flush=True)


def child_line(name: str, raw: bytes) -> str:
    """One line of a child's output as ``hookline run`` shows it.

    Text: prefixed with the child's name. JSON: a JSON line passes through with
    ``process`` added; anything else (a crash's traceback, a library's print)
    is wrapped in a JSON object so the combined output stays parseable.
    """
    text = raw.decode(errors="replace").rstrip("\r\n")
    if not is_json():
        return f"[{name}] {text}\n"
    try:
        parsed = json.loads(text)
    except ValueError:
        parsed = None
    if isinstance(parsed, dict):
        parsed.setdefault("process", name)
        return json.dumps(parsed, ensure_ascii=False) + "\n"
    line = {
        "time": _iso(datetime.now(UTC).timestamp()),
        "level": "INFO",
        "logger": f"hookline.{name}.output",
        "message": text,
        "process": name,
    }
    return json.dumps(line, ensure_ascii=False) + "\n"
