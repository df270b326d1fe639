"""``hookline replay``: re-run raw deliveries through the pipeline after a bug fix.

The selected ``<env>.webhooks.raw`` records (by source and received_at) are
re-published with one extra envelope header, ``x-hookline-replay: <replay
id>`` (``streams.dedup.REPLAY_HEADER``), same delivery id, same partition.
The header is what lets a delivery past its own dedup entry: without it the
worker would take the copy for a reprocessing after a crash and emit
nothing. A provider retry of another delivery is still dropped, and events
keep their ids (``<delivery id>:<index>``). Downstream rules are idempotent,
so only what the fixed code maps differently changes, as a new version;
docs/operations.md says what consumers see.

Raw is scanned from the beginning (no offsets-for-times on the embedded
broker, see hookline/topic_reader.py); records are re-published in their
raw order, so deliveries about one order keep their order.
"""

from __future__ import annotations

import argparse
import json
import secrets
import sys
import textwrap
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TextIO

from hookline.operator_args import (
    SelectionError,
    TimeRange,
    add_selection_arguments,
    add_wait_arguments,
    check_sources,
    operator_setup,
    run_operator,
)
from hookline.progress import Progress
from hookline.schemas import codec
from hookline.streams.dedup import REPLAY_HEADER
from hookline.tail import iso_ms


def add_parser(sub: argparse._SubParsersAction, epilog: str) -> None:  # type: ignore[type-arg]
    parser = sub.add_parser(
        "replay",
        help="re-run raw deliveries of a time range through the pipeline (after a bug fix)",
        description=textwrap.fill(
            "Re-publish the raw deliveries of <env>.webhooks.raw received in the time range "
            f"(and of --source) with the envelope header {REPLAY_HEADER}: <replay id>, same "
            "delivery id and partition, so the worker maps them again with today's code and "
            "the derived topics end as if it had seen them first: canonical events again with "
            "the same event ids; an order whose state the fixed code computes differently "
            "gets a new version (n+1), others none. Provider retries stay dropped. "
            "order_status never moves back and SUCCEEDED stays final. Then wait until the "
            "worker has processed them and report how many were dead-lettered. Progress and "
            "the report go to stderr. Exit 0 done, 1 Kafka unreachable, 2 bad arguments, "
            "3 re-published but not all processed within --timeout. See docs/operations.md.",
            width=78,
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=epilog,
    )
    add_selection_arguments(parser, on_what="received_at (gateway time)", since_required=True)
    parser.add_argument(
        "--replay-id",
        metavar="ID",
        type=_replay_id,
        help="the value of the replay header (default: the UTC time and a random suffix); "
        "it marks the re-published raw records, nothing downstream",
    )
    add_wait_arguments(parser)
    parser.set_defaults(func=cmd_replay)


def _replay_id(text: str) -> str:
    if not text or len(text) > 128 or not text.isprintable():
        raise argparse.ArgumentTypeError("expected 1 to 128 printable characters")
    return text


def new_replay_id(now: datetime | None = None) -> str:
    """Sortable by time, unique enough to find one replay's records in raw."""
    at = now or datetime.now(UTC)
    return f"replay-{at:%Y%m%dT%H%M%SZ}-{secrets.token_hex(3)}"


# -- selection (pure) ----------------------------------------------------------------


@dataclass(frozen=True)
class RawFilter:
    environment: str
    window: TimeRange = field(default_factory=TimeRange)
    sources: frozenset[str] | None = None

    def matches(self, envelope: dict[str, Any]) -> bool:
        if envelope["environment"] != self.environment:
            return False  # the worker dead-letters it (stage decode); replaying cannot help
        if self.sources is not None and envelope["source"] not in self.sources:
            return False
        return envelope["received_at"] in self.window


def select(envelopes: Iterable[dict[str, Any]], keep: RawFilter) -> list[dict[str, Any]]:
    """Matching envelopes in raw order, each delivery once (its first record).

    Raw can hold a delivery more than once: redrives and earlier replays
    re-published it (same delivery id). Earlier replay headers are dropped,
    so the copy carries only this replay's.
    """
    seen: set[str] = set()
    chosen = []
    for envelope in envelopes:
        if envelope["delivery_id"] in seen or not keep.matches(envelope):
            continue
        seen.add(envelope["delivery_id"])
        headers = {k: v for k, v in envelope["headers"].items() if k != REPLAY_HEADER}
        chosen.append(dict(envelope, headers=headers))
    return chosen


# -- the command ---------------------------------------------------------------------


def _line(envelope: dict[str, Any], action: str, **extra: Any) -> str:
    return json.dumps(
        {
            "action": action,
            "delivery_id": envelope["delivery_id"],
            "source": envelope["source"],
            "kind": envelope["kind"],
            "received_at": iso_ms(envelope["received_at"]),
            **extra,
        },
        ensure_ascii=False,
    )


async def replay(
    bootstrap: str,
    keep: RawFilter,
    replay_id: str,
    *,
    dry_run: bool,
    wait: bool,
    timeout_s: float,
    max_json_depth: int,
    max_request_bytes: int,
    out: TextIO,
    err: TextIO,
) -> int:
    from hookline.core import topics
    from hookline.raw_publisher import NotRepublishable, plan, publish
    from hookline.topic_reader import TopicReader
    from hookline.worker_wait import report, verdict

    progress = Progress("replay", err)
    environment = keep.environment
    raw, deadletter = topics.raw(environment), topics.deadletter(environment)
    envelopes: list[dict[str, Any]] = []
    undecodable = 0

    def collect(message: Any) -> None:
        nonlocal undecodable
        try:
            envelope = codec.decode_as(codec.WEBHOOK_ENVELOPE, message.value)
        except codec.CodecError:
            undecodable += 1  # the worker dead-lettered it (stage decode) long ago
            return
        if keep.matches(envelope):  # hold only the range: raw may be years of bodies
            envelopes.append(envelope)

    async with TopicReader(bootstrap, raw, also_required=[deadletter]) as reader:
        scanned = await reader.scan(collect, progress)
        partitions = reader.partitions_of(raw)
    selected = select(envelopes, keep)
    header = {REPLAY_HEADER: replay_id}
    outgoing, skipped = [], []
    for envelope in selected:
        try:
            outgoing.append(plan(envelope, partitions, max_json_depth, extra_headers=header))
        except NotRepublishable as exc:
            skipped.append((envelope, str(exc)))
            if dry_run:
                out.write(_line(envelope, "skip", why=str(exc)) + "\n")
            continue
        if dry_run:
            out.write(_line(envelope, "send", partition=outgoing[-1].partition) + "\n")
    out.flush()
    verb = "would re-publish" if dry_run else "re-publishing"
    progress.say(
        f"{scanned} records of {raw} scanned"
        + (f" ({undecodable} undecodable, ignored)" if undecodable else "")
        + f": {len(selected)} deliveries received {keep.window.describe()}, {verb} "
        f"{len(outgoing)} with {REPLAY_HEADER}: {replay_id}, {len(skipped)} skipped"
    )
    for envelope, why in skipped[:20]:
        progress.say(f"  skipped {envelope['delivery_id']}: {why}")
    if dry_run or not outgoing:
        return 0

    if not wait:
        await publish(bootstrap, raw, outgoing, max_request_bytes, progress)
        progress.say(f"{len(outgoing)} re-published to {raw}; not waiting (--no-wait)")
        return 0
    # Read the dead-letter topic to its end first: what comes after is this replay's.
    async with TopicReader(bootstrap, deadletter) as deadletters:
        await deadletters.scan(lambda message: None, progress)
        highest = await publish(bootstrap, raw, outgoing, max_request_bytes, progress)
        progress.say(f"{len(outgoing)} re-published to {raw} (acknowledged)")
        result = await verdict(
            bootstrap,
            raw,
            deadletters,
            highest,
            {item.delivery_id for item in outgoing},
            {},
            timeout_s,
            progress,
        )
    return report(
        progress,
        result,
        timeout_s,
        raw,
        accepted="mapped again (events re-emitted with their ids; retries dropped)",
        rejected="dead-lettered",
    )


def cmd_replay(args: argparse.Namespace) -> int:
    try:
        setup = operator_setup()
        keep = RawFilter(
            environment=args.env,
            window=TimeRange(args.since, args.until),
            sources=check_sources(args.source, args.env, setup.sources),
        )
    except SelectionError as exc:
        print(f"hookline: {exc}", file=sys.stderr)
        return 2
    replay_id = args.replay_id or new_replay_id()
    return run_operator(
        replay(
            setup.bootstrap,
            keep,
            replay_id,
            dry_run=args.dry_run,
            wait=not args.no_wait,
            timeout_s=args.timeout,
            max_json_depth=setup.settings.max_json_depth,
            max_request_bytes=setup.settings.max_record_bytes,
            out=sys.stdout,
            err=sys.stderr,
        ),
        f"hookline replay: interrupted; records already re-published carry "
        f"{REPLAY_HEADER}: {replay_id}; replaying the range again is harmless",
    )
