"""``hookline tail TOPIC``: a topic's records, decoded, as JSON lines, for operators.

Records are decoded with the codec, which knows every released schema version,
so a topic holding records of several versions prints them all in today's field
set. Tansu, the embedded broker, has no offsets-for-times, so ``--since`` scans
each partition from the beginning and filters on the record timestamp; that is
also what happens on a real cluster (a topic worth tailing is small enough, and
one code path is easier to trust than two).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import re
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, TextIO

from hookline.schemas import codec

#: Fields whose value names an order or a transaction, in any hookline schema.
ORDER_FIELDS = frozenset({"order_id", "order_ids"})
TRANSACTION_FIELDS = frozenset({"transaction_id"})
ENTITY_TYPES = {"order": ORDER_FIELDS, "transaction": TRANSACTION_FIELDS}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
PROGRESS_EVERY_S = 2.0
IDLE_MS = 500


class TailError(Exception):
    """Something the operator should read as one line, not a traceback."""


def add_parser(sub: argparse._SubParsersAction, epilog: str) -> None:  # type: ignore[type-arg]
    parser = sub.add_parser(
        "tail",
        help="print a topic's records as JSON lines, decoded (every schema version)",
        description=textwrap.fill(
            "Read TOPIC (any hookline topic, e.g. production.orders.state) from the beginning "
            "and print one JSON object per record on stdout: topic, partition, offset, "
            "timestamp (ISO-8601 UTC) and timestamp_ms, key (UTF-8), schema (full name) and "
            "value, decoded with every released schema version and resolved to today's fields. "
            'Decimals are strings; bytes are UTF-8 text when valid, else {"base64": ...}; '
            "timestamp fields inside the value stay epoch milliseconds. Without --follow it "
            "stops at the end of the topic. Progress and a summary go to stderr.",
            width=78,
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=epilog,
    )
    parser.add_argument("topic", metavar="TOPIC", help="the topic, e.g. production.orders.state")
    parser.add_argument(
        "--order",
        metavar="ID",
        help="only records about this order: an order_id/order_ids field anywhere in the value, "
        "or the ID as a JSON value in a raw body",
    )
    parser.add_argument(
        "--transaction",
        metavar="ID",
        help="only records about this transaction (transaction_id anywhere in the value, or "
        "the ID as a JSON value in a raw body)",
    )
    parser.add_argument(
        "--since",
        metavar="TIME",
        type=_since_arg,
        help="only records with a timestamp at or after TIME: ISO-8601 (naive = UTC) or a "
        "duration back from now such as 90s, 15m, 2h, 7d (the topic is still scanned from "
        "the beginning: there is no offsets-for-times on the embedded broker)",
    )
    parser.add_argument(
        "--follow", "-f", action="store_true", help="keep printing new records until Ctrl-C"
    )
    parser.set_defaults(func=cmd_tail)


def parse_since(text: str, now: datetime | None = None) -> int:
    """Epoch milliseconds for an ISO-8601 time or a duration back from ``now``."""
    now = now or datetime.now(UTC)
    match = _DURATION.match(text)
    if match:
        seconds = float(match.group(1)) * _UNITS[match.group(2)]
        return int((now - timedelta(seconds=seconds)).timestamp() * 1000)
    try:
        at = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(
            f"--since {text!r}: expected an ISO-8601 time (2026-11-21T10:00:00Z) "
            "or a duration (30s, 15m, 2h, 7d)"
        ) from None
    if at.tzinfo is None:
        at = at.replace(tzinfo=UTC)
    return int(at.timestamp() * 1000)


def _since_arg(text: str) -> int:
    try:
        return parse_since(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


# -- turning a record into JSON -------------------------------------------------------


def jsonable(value: Any) -> Any:
    """Decoded Avro to JSON: exact decimals as strings, bytes as text or base64."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        raw = bytes(value)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            return {"base64": base64.b64encode(raw).decode("ascii")}
    if isinstance(value, datetime):
        return value.isoformat()
    return value


def iso_ms(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds")


def _walk(value: Any) -> Iterator[tuple[str | None, Any]]:
    """Every (field name, value) pair in a decoded record, depth first."""
    if isinstance(value, dict):
        entity = value.get("entity_type")
        for key, item in value.items():
            yield key, item
            if key == "entity_id" and isinstance(entity, str):
                yield f"{entity}_id", item  # a canonical event's subject
            yield from _walk(item)
    elif isinstance(value, list):
        for item in value:
            yield None, item
            yield from _walk(item)


def _json_strings(document: Any) -> Iterator[str]:
    if isinstance(document, dict):
        for item in document.values():
            yield from _json_strings(item)
    elif isinstance(document, list):
        for item in document:
            yield from _json_strings(item)
    elif isinstance(document, (str, int)) and not isinstance(document, bool):
        yield str(document)


def mentions(value: Any, wanted: str, fields: frozenset[str]) -> bool:
    """True when a field in ``fields`` holds ``wanted`` (or a list holding it) anywhere.

    Raw bodies (bytes) are provider JSON whose field names differ per provider,
    so there any JSON string or number equal to ``wanted`` counts.
    """
    for name, item in _walk(value):
        if name in fields:
            if item == wanted or (isinstance(item, list) and wanted in item):
                return True
        elif isinstance(item, (bytes, bytearray)) and wanted.encode() in item:
            try:
                document = json.loads(item)
            except (ValueError, UnicodeDecodeError):
                continue
            if wanted in _json_strings(document):
                return True
    return False


def record_filter(
    order: str | None, transaction: str | None, since_ms: int | None
) -> Callable[[str | None, dict[str, Any] | None, int], bool]:
    def keep(key: str | None, value: dict[str, Any] | None, timestamp_ms: int) -> bool:
        if since_ms is not None and timestamp_ms < since_ms:
            return False
        for wanted, fields in ((order, ORDER_FIELDS), (transaction, TRANSACTION_FIELDS)):
            if wanted is None:
                continue
            if value is None:  # a tombstone: only its key says what it was about
                if key != wanted:
                    return False
            elif not mentions(value, wanted, fields):
                return False
        return True

    return keep


def render(message: Any) -> tuple[str | None, dict[str, Any] | None, dict[str, Any]]:
    """(key, decoded value or None, the JSON line's object) for one Kafka record."""
    key = message.key.decode("utf-8", errors="replace") if message.key is not None else None
    line: dict[str, Any] = {
        "topic": message.topic,
        "partition": message.partition,
        "offset": message.offset,
        "timestamp": iso_ms(message.timestamp),
        "timestamp_ms": message.timestamp,
        "key": key,
    }
    value: dict[str, Any] | None = None
    if message.value is None:
        line.update(schema=None, value=None, tombstone=True)
    else:
        try:
            name, value = codec.decode(message.value)
        except codec.CodecError as exc:
            line.update(schema=None, value=jsonable(message.value), error=str(exc))
        else:
            line.update(schema=name, value=jsonable(value))
    return key, value, line


# -- reading ---------------------------------------------------------------------------


async def tail(
    bootstrap: str,
    topic: str,
    keep: Callable[[str | None, dict[str, Any] | None, int], bool],
    follow: bool,
    out: TextIO,
    err: TextIO,
    connect_timeout_s: float = 15.0,
) -> tuple[int, int]:
    """Print the matching records; return (records scanned, records printed)."""
    from aiokafka import AIOKafkaConsumer, TopicPartition
    from aiokafka.errors import KafkaError

    from hookline.core.topics import partitions_of

    consumer = AIOKafkaConsumer(
        isolation_level="read_committed",
        bootstrap_servers=bootstrap,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        request_timeout_ms=int(connect_timeout_s * 1000),
        client_id="hookline-tail",
    )
    try:
        await asyncio.wait_for(consumer.start(), connect_timeout_s)
    except (KafkaError, OSError, TimeoutError) as exc:
        await consumer.stop()
        raise TailError(f"cannot reach Kafka at {bootstrap}: {exc or type(exc).__name__}") from None
    scanned = printed = 0
    try:
        existing = await consumer.topics()
        if topic not in existing:
            known = sorted(t for t in existing if not t.startswith("__"))
            raise TailError(
                f"no topic {topic!r} on {bootstrap}; topics there: {', '.join(known) or 'none'}"
            )
        partitions = (await partitions_of(consumer, bootstrap, [topic], connect_timeout_s))[topic]
        tps = [TopicPartition(topic, p) for p in partitions]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        caught_up = False
        last_progress = time.monotonic()
        while True:
            batch = await consumer.getmany(timeout_ms=IDLE_MS, max_records=1000)
            for tp in sorted(batch):
                for message in batch[tp]:
                    scanned += 1
                    key, value, line = render(message)
                    if keep(key, value, message.timestamp):
                        out.write(json.dumps(line, ensure_ascii=False) + "\n")
                        printed += 1
            out.flush()
            if not caught_up:
                positions = {tp: await consumer.position(tp) for tp in tps}
                # Tansu reports end offsets too low after multi-record batches
                # (README), so the end counts only once a fetch also comes back empty.
                caught_up = not batch and all(positions[tp] >= ends[tp] for tp in tps)
                if time.monotonic() - last_progress >= PROGRESS_EVERY_S:
                    behind = sum(max(ends[tp] - positions[tp], 0) for tp in tps)
                    err.write(
                        f"hookline tail: {scanned} records scanned, {printed} printed, "
                        f"about {behind} to go\n"
                    )
                    err.flush()
                    last_progress = time.monotonic()
                if caught_up and not follow:
                    return scanned, printed
                if caught_up:
                    err.write(f"hookline tail: at the end after {scanned} records; following\n")
                    err.flush()
    finally:
        await consumer.stop()


def cmd_tail(args: argparse.Namespace) -> int:
    from hookline.core.settings import Settings, SettingsError

    try:
        bootstrap = Settings.from_env().bootstrap_servers
    except SettingsError as exc:
        print(f"hookline: {exc}", file=sys.stderr)
        return 2
    if not bootstrap:
        print(
            "hookline: KAFKA_BOOTSTRAP_SERVERS is not set (the address `hookline run` or "
            "`hookline broker` printed)",
            file=sys.stderr,
        )
        return 2
    keep = record_filter(args.order, args.transaction, args.since)
    try:
        scanned, printed = asyncio.run(
            tail(bootstrap, args.topic, keep, args.follow, sys.stdout, sys.stderr)
        )
    except TailError as exc:
        print(f"hookline: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    except BrokenPipeError:  # `hookline tail ... | head`
        sys.stderr.close()
        return 0
    print(f"hookline tail: {scanned} records scanned, {printed} printed", file=sys.stderr)
    return 0
