"""``hookline redrive``: send dead letters back through the pipeline after a fix.

Each selected dead letter's envelope goes back to ``<env>.webhooks.raw``
unchanged (same delivery id, received_at, body, headers), partitioned like
the gateway does (hookline/raw_publisher.py), and the worker maps it with
today's code. Idempotence is the worker's dedup table, not ours: a delivery
that was dead-lettered never wrote a dedup entry, so its first redrive is
new and writes one under its own delivery id; any later redrive finds that
entry and is a reprocessing (nothing emitted). A redrive that fails half way
is therefore safe to run again, and this command keeps no state of its own.

Afterwards it waits until the worker group has committed past the records it
wrote (hookline/worker_wait.py) and counts the deliveries that came back on
the dead-letter topic: dead-lettered again, with their new reasons.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import textwrap
from collections.abc import Iterable
from dataclasses import dataclass, field
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
from hookline.streams.normalize import INTERNAL_RECORD_HEADER
from hookline.tail import iso_ms

STAGES = ("decode", "normalize", "dedup")
SHOWN_SKIPPED = 20


def add_parser(sub: argparse._SubParsersAction, epilog: str) -> None:  # type: ignore[type-arg]
    parser = sub.add_parser(
        "redrive",
        help="send dead letters back through the pipeline after a fix (idempotent)",
        description=textwrap.fill(
            "Re-publish the envelopes of the selected dead letters of <env>.webhooks.deadletter "
            "to <env>.webhooks.raw, unchanged and partitioned as the gateway does, so the "
            "worker maps them with today's code. Idempotent: a delivery the worker accepted "
            "once is a reprocessing the next time (nothing emitted, nothing changed); a "
            "dedup conflict stays a conflict. Then wait until the worker has processed them "
            "and report how many were dead-lettered again, and why. A delivery with several "
            "dead letters is re-published once. Progress and the report go to stderr. "
            "Exit 0 done, 1 Kafka unreachable, 2 bad arguments, 3 re-published but not "
            "all processed within --timeout. See docs/operations.md.",
            width=78,
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=epilog,
    )
    add_selection_arguments(parser, on_what="dead_lettered_at")
    parser.add_argument(
        "--stage",
        action="append",
        choices=STAGES,
        help="only dead letters of this stage; repeat for several (decode letters are "
        "reported as skipped: their record was not a usable envelope)",
    )
    parser.add_argument(
        "--reason",
        type=_regex,
        metavar="REGEX",
        help="only dead letters whose reason matches REGEX (Python re.search; (?i) for any case)",
    )
    add_wait_arguments(parser)
    parser.set_defaults(func=cmd_redrive)


def _regex(text: str) -> re.Pattern[str]:
    try:
        return re.compile(text)
    except re.error as exc:
        raise argparse.ArgumentTypeError(f"{text!r} is not a regular expression: {exc}") from None


# -- selection (pure) ----------------------------------------------------------------


@dataclass(frozen=True)
class LetterFilter:
    stages: frozenset[str] | None = None
    reason: re.Pattern[str] | None = None
    window: TimeRange = field(default_factory=TimeRange)
    sources: frozenset[str] | None = None

    def matches(self, letter: dict[str, Any]) -> bool:
        if self.stages is not None and letter["stage"] not in self.stages:
            return False
        if self.reason is not None and not self.reason.search(letter["reason"]):
            return False
        if letter["dead_lettered_at"] not in self.window:
            return False
        return self.sources is None or letter["envelope"]["source"] in self.sources


def select(letters: Iterable[dict[str, Any]], keep: LetterFilter) -> list[dict[str, Any]]:
    """One matching letter per delivery id (its newest), oldest delivery first.

    A delivery redriven before and dead-lettered again has several letters
    with the same envelope; it is selected when any matches, and re-published
    once. Oldest received first, so deliveries about one order reach the
    worker in their original order (the gateway's received_at, then the
    time-ordered delivery id).
    """
    chosen: dict[str, dict[str, Any]] = {}
    for letter in letters:
        if not keep.matches(letter):
            continue
        held = chosen.get(letter["delivery_id"])
        if held is None or letter["dead_lettered_at"] >= held["dead_lettered_at"]:
            chosen[letter["delivery_id"]] = letter
    return sorted(
        chosen.values(),
        key=lambda letter: (letter["envelope"]["received_at"], letter["delivery_id"]),
    )


def not_redrivable(letter: dict[str, Any], environment: str) -> str | None:
    """Why re-publishing this letter's envelope cannot help (None: it can)."""
    envelope = letter["envelope"]
    if envelope["environment"] != environment:
        return (
            f"its envelope is for {envelope['environment']!r}, not {environment!r} "
            "(written to the wrong raw topic)"
        )
    if letter["stage"] == "decode":
        return "the raw record was not a hookline envelope"
    if INTERNAL_RECORD_HEADER in envelope["headers"]:
        return (
            f"a {letter['stage']} stage record, not a delivery: re-run delivery "
            f"{envelope['delivery_id']} with hookline replay"
        )
    return None


# -- the command ---------------------------------------------------------------------


def _line(letter: dict[str, Any], action: str, **extra: Any) -> str:
    envelope = letter["envelope"]
    return json.dumps(
        {
            "action": action,
            "delivery_id": letter["delivery_id"],
            "source": envelope["source"],
            "kind": envelope["kind"],
            "received_at": iso_ms(envelope["received_at"]),
            "stage": letter["stage"],
            "reason": letter["reason"],
            "dead_lettered_at": iso_ms(letter["dead_lettered_at"]),
            **extra,
        },
        ensure_ascii=False,
    )


async def redrive(
    bootstrap: str,
    environment: str,
    keep: LetterFilter,
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
    from hookline.raw_lookup import raw_envelopes, raw_position
    from hookline.raw_publisher import NotRepublishable, plan, publish
    from hookline.topic_reader import TopicReader
    from hookline.worker_wait import report, verdict

    progress = Progress("redrive", err)
    deadletter, raw = topics.deadletter(environment), topics.raw(environment)
    matching: list[dict[str, Any]] = []
    undecodable = 0
    #: delivery id -> its newest dead letter's time, over all letters: a letter
    #: read after the redrive counts only if it is newer.
    newest_before: dict[str, int] = {}

    def collect(message: Any) -> None:
        nonlocal undecodable
        try:
            letter = codec.decode_as(codec.DEAD_LETTER, message.value)
        except codec.CodecError:
            undecodable += 1
            return
        delivery = letter["delivery_id"]
        newest_before[delivery] = max(newest_before.get(delivery, 0), letter["dead_lettered_at"])
        if keep.matches(letter):  # hold only the selection: every letter carries a body
            matching.append(letter)

    async with TopicReader(bootstrap, deadletter, also_required=[raw]) as reader:
        scanned = await reader.scan(collect, progress)
        selected = select(matching, keep)
        partitions = reader.partitions_of(raw)
        # A letter naming its raw record keeps a redacted body: re-send the record.
        named = {
            letter["delivery_id"]: position
            for letter in selected
            if (position := raw_position(letter)) is not None
        }
        originals = await raw_envelopes(bootstrap, raw, named)
        outgoing, skipped = [], []
        for letter in selected:
            why = not_redrivable(letter, environment)
            envelope = originals.get(letter["delivery_id"], letter["envelope"])
            if why is None and letter["delivery_id"] in named and envelope is letter["envelope"]:
                partition, offset = named[letter["delivery_id"]]
                why = f"its raw record ({raw} partition {partition} offset {offset}) is gone"
            if why is None:
                try:
                    outgoing.append(plan(envelope, partitions, max_json_depth))
                except NotRepublishable as exc:
                    why = str(exc)
            if why is not None:
                skipped.append((letter, why))
            elif dry_run:
                out.write(_line(letter, "send", partition=outgoing[-1].partition) + "\n")
        for letter, why in skipped:
            if dry_run:
                out.write(_line(letter, "skip", why=why) + "\n")
        out.flush()
        verb = "would re-publish" if dry_run else "re-publishing"
        progress.say(
            f"{scanned} records of {deadletter} scanned"
            + (f" ({undecodable} undecodable, ignored)" if undecodable else "")
            + f": {len(selected)} deliveries selected, {verb} {len(outgoing)} to {raw}, "
            f"{len(skipped)} skipped"
        )
        for letter, why in skipped[:SHOWN_SKIPPED]:
            progress.say(f"  skipped {letter['delivery_id']}: {why}")
        if dry_run or not outgoing:
            return 0

        highest = await publish(bootstrap, raw, outgoing, max_request_bytes, progress)
        progress.say(f"{len(outgoing)} re-published to {raw} (acknowledged)")
        if not wait:
            progress.say("not waiting for the worker (--no-wait)")
            return 0

        result = await verdict(
            bootstrap,
            raw,
            reader,
            highest,
            {item.delivery_id for item in outgoing},
            newest_before,
            timeout_s,
            progress,
        )
    return report(
        progress,
        result,
        timeout_s,
        raw,
        accepted="accepted (mapped now, or accepted by an earlier redrive already)",
    )


def cmd_redrive(args: argparse.Namespace) -> int:
    try:
        setup = operator_setup()
        keep = LetterFilter(
            stages=frozenset(args.stage) if args.stage else None,
            reason=args.reason,
            window=TimeRange(args.since, args.until),
            sources=check_sources(args.source, args.env, setup.sources),
        )
    except SelectionError as exc:
        print(f"hookline: {exc}", file=sys.stderr)
        return 2
    return run_operator(
        redrive(
            setup.bootstrap,
            args.env,
            keep,
            dry_run=args.dry_run,
            wait=not args.no_wait,
            timeout_s=args.timeout,
            max_json_depth=setup.settings.max_json_depth,
            max_request_bytes=setup.settings.max_record_bytes,
            out=sys.stdout,
            err=sys.stderr,
        ),
        "hookline redrive: interrupted; running it again is safe",
    )
