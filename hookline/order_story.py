"""``hookline order ID``: one order's story, for support and operators (PRODUCT.md section 5).

The current state, every version with what changed and the delivery behind
it, the facts the rules refused, the canonical events (the order's own and
those of the transactions that claimed it) and the dead letters that name
it. Each topic of the environment is read from its beginning to its end
with ``isolation_level="read_committed"`` (only what committed), through
:class:`hookline.topic_reader.TopicReader`; records are decoded and matched
exactly as ``hookline tail --order ID`` does (hookline/tail.py), so every
value reads as ``tail`` prints it. How far each topic was read is part of
the answer: the story is complete up to those offsets, not beyond.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import textwrap
from dataclasses import dataclass, field
from typing import Any, TextIO

from hookline.core import topics
from hookline.progress import Progress
from hookline.tail import iso_ms, record_filter, render
from hookline.topic_reader import ReadError, TopicReader


@dataclass
class Scan:
    """The matching records of one topic, as ``hookline tail`` prints them, in log order."""

    topic: str
    lines: list[dict[str, Any]] = field(default_factory=list)
    records: int = 0
    positions: dict[int, int] = field(default_factory=dict)
    missing: bool = False

    def summary(self) -> dict[str, Any]:
        return {
            "records": self.records,
            "matched": len(self.lines),
            "to_offsets": {str(p): offset for p, offset in sorted(self.positions.items())},
            "missing": self.missing,
        }


def add_parser(sub: argparse._SubParsersAction, epilog: str) -> None:  # type: ignore[type-arg]
    parser = sub.add_parser(
        "order",
        help="one order's story: state, every change and its delivery, rejected facts, "
        "events, dead letters",
        description=textwrap.fill(
            "Read the environment's orders.state, orders.changes, orders.rejected, "
            "webhooks.events and webhooks.deadletter from the beginning (committed records "
            "only) and tell the story of order ID: its current state, every version with the "
            "fields it changed and the delivery that caused it (id, source, provider event "
            "type, gateway time), the facts the rules refused, its canonical events (and those "
            "of the transactions that claimed it) and the dead letters naming it. Times are "
            "ISO-8601 UTC. With --json, one JSON object with state, changes, rejected, events, "
            "dead_letters (records as `hookline tail` prints them, in log order) and scanned "
            "(records read and the offsets reached per topic).",
            width=78,
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=epilog,
    )
    parser.add_argument("order_id", metavar="ID", help="the order id")
    parser.add_argument("--env", default="production", help="the environment (default production)")
    parser.add_argument("--json", action="store_true", help="one JSON object on stdout")
    parser.set_defaults(func=cmd_order)


async def _scan(
    bootstrap: str,
    topic: str,
    keep: Any,
    progress: Progress,
    required: bool,
) -> Scan:
    scan = Scan(topic)

    def on_message(message: Any) -> None:
        key, value, line = render(message)
        if keep(key, value, message.timestamp):
            scan.lines.append(line)

    try:
        async with TopicReader(
            bootstrap, topic, client_id="hookline-order", isolation_level="read_committed"
        ) as reader:
            scan.records = await reader.scan(on_message, progress)
            scan.positions = await reader.positions()
    except ReadError as exc:
        if required or not str(exc).startswith("no topic"):
            raise
        scan.missing = True  # e.g. orders.rejected before any worker created it
    return scan


def _first_per(lines: list[dict[str, Any]], identity: str) -> list[dict[str, Any]]:
    """Records in log order without their repeats (at-least-once: same ``identity`` value)."""
    seen: set[Any] = set()
    kept = []
    for line in lines:
        value = line.get("value")
        ident = value.get(identity) if isinstance(value, dict) else None
        if ident is not None and ident in seen:
            continue
        seen.add(ident)
        kept.append(line)
    return kept


async def story(bootstrap: str, env: str, order_id: str, err: TextIO) -> dict[str, Any]:
    """The ``--json`` object for ``order_id`` (PRODUCT.md section 5)."""
    progress = Progress("order", err)
    keep = record_filter(order_id, None, None)

    def of_order(key: str | None, value: Any, timestamp_ms: int) -> bool:
        return key == order_id  # the order topics are keyed by order id

    state = await _scan(bootstrap, topics.orders_state(env), of_order, progress, True)
    changes = await _scan(bootstrap, topics.orders_changes(env), of_order, progress, True)
    rejected = await _scan(bootstrap, topics.orders_rejected(env), of_order, progress, False)
    claimed = {
        line["value"]["after"]["transaction_id"]
        for line in changes.lines
        if isinstance(line.get("value"), dict) and line["value"]["after"]["transaction_id"]
    }

    def of_story(key: str | None, value: Any, timestamp_ms: int) -> bool:
        if keep(key, value, timestamp_ms):
            return True
        return isinstance(value, dict) and value.get("transaction_id") in claimed

    events = await _scan(bootstrap, topics.events(env), of_story, progress, False)
    letters = await _scan(bootstrap, topics.deadletter(env), keep, progress, False)

    versions = [line["value"] for line in state.lines if isinstance(line.get("value"), dict)]
    current = max(versions, key=lambda value: value["version"]) if versions else None
    return {
        "order_id": order_id,
        "environment": env,
        "state": current,
        "changes": _first_per(changes.lines, "version"),
        "rejected": rejected.lines,
        "events": _first_per(events.lines, "event_id"),
        "dead_letters": letters.lines,
        "scanned": {
            scan.topic: scan.summary() for scan in (state, changes, rejected, events, letters)
        },
    }


# -- the text form --------------------------------------------------------------------------


def _delivery(cause: dict[str, Any]) -> str:
    return (
        f"delivery {cause['delivery_id']} ({cause['source']}, "
        f"{cause.get('provider_event_type') or cause['type']}, "
        f"received {iso_ms(cause['received_at'])})"
    )


def _shown(value: Any) -> str:
    return "null" if value is None else str(value)


def render_text(answer: dict[str, Any], out: TextIO) -> None:
    """The story as lines for a person (the same content as ``--json``)."""
    write = out.write
    write(f"order {answer['order_id']} ({answer['environment']})\n")
    state = answer["state"]
    if state is None:
        write("state: none yet\n")
    else:
        write(f"state: version {state['version']}, updated {iso_ms(state['updated_at'])}\n")
        for name in (
            "order_status",
            "payment_status",
            "transaction_id",
            "amount",
            "currency",
            "refunded_amount",
            "confirmation_pdf_url",
            "vignette_id",
        ):
            write(f"  {name}: {_shown(state[name])}\n")
    write(f"changes ({len(answer['changes'])}):\n")
    for line in answer["changes"]:
        change = line["value"]
        before = change["before"] or {}
        moved = ", ".join(
            f"{name} {_shown(before.get(name))} -> {_shown(change['after'][name])}"
            for name in change["changed_fields"]
        )
        write(f"  v{change['version']}: {moved}\n    {_delivery(change['cause'])}\n")
    write(f"rejected facts ({len(answer['rejected'])}):\n")
    for line in answer["rejected"]:
        fact = line["value"]
        write(
            f"  {iso_ms(fact['rejected_at'])} {fact['rule']}: {fact['field']} = {fact['value']}\n"
            f"    {_delivery(fact['cause'])}\n"
        )
    write(f"events ({len(answer['events'])}):\n")
    for line in answer["events"]:
        event = line["value"]
        write(
            f"  {iso_ms(event['received_at'])} {event['type']} {event['entity_type']} "
            f"{event['entity_id']} (delivery {event['delivery_id']}, {event['source']})\n"
        )
    write(f"dead letters ({len(answer['dead_letters'])}):\n")
    for line in answer["dead_letters"]:
        letter = line["value"]
        write(
            f"  {iso_ms(letter['dead_lettered_at'])} stage {letter['stage']}: "
            f"{letter['reason']} (delivery {letter['delivery_id']})\n"
        )
    write("scanned (committed records, from the beginning):\n")
    for topic, scan in answer["scanned"].items():
        if scan["missing"]:
            write(f"  {topic}: no such topic\n")
            continue
        offsets = ", ".join(f"[{p}] {o}" for p, o in scan["to_offsets"].items())
        write(f"  {topic}: {scan['records']} records, to offsets {offsets}\n")


def cmd_order(args: argparse.Namespace) -> int:
    from hookline.core.settings import Settings, SettingsError
    from hookline.core.sources import ENVIRONMENTS

    if args.env not in ENVIRONMENTS:
        print(f"hookline: --env must be one of {', '.join(ENVIRONMENTS)}", file=sys.stderr)
        return 2
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
    try:
        answer = asyncio.run(story(bootstrap, args.env, args.order_id, sys.stderr))
    except ReadError as exc:
        print(f"hookline: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    if args.json:
        sys.stdout.write(json.dumps(answer, ensure_ascii=False, indent=2) + "\n")
    else:
        render_text(answer, sys.stdout)
    return 0
