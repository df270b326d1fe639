"""The worker's verdict on records an operator command re-published to raw.

A worker sends a batch's outputs (dead letters included), waits for Kafka's
acks, and only then commits its input offsets (Faust flushes the producer
before every commit; docs/design.md). So once the consumer group ``hookline``
has committed past the highest offset we wrote to a raw partition, every
dead letter those records caused is on the dead-letter topic. That is a
positive signal: an accepted delivery that is a reprocessing (a second
redrive) emits nothing at all, so waiting for outputs could never tell
"accepted" from "not processed yet".
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from hookline.progress import Progress
from hookline.schemas import codec
from hookline.topic_reader import TopicReader

#: The worker's Faust app id, which is its consumer group (streams/app.py APP_ID;
#: not imported: that would load Faust into every operator command).
WORKER_GROUP = "hookline"
POLL_S = 0.5
#: Exit code when the records were re-published but the worker did not
#: process them all within --timeout (the outcome is unknown, not a failure).
EXIT_NOT_PROCESSED = 3
SHOWN = 20


class WaitError(Exception):
    """Kafka stopped answering while we waited: one line for the operator."""


# -- pure parts ----------------------------------------------------------------------


def collector(into: list[dict[str, Any]], undecodable: list[Any]) -> Callable[[Any], None]:
    """Decode each dead-letter record into ``into``; keep what does not decode aside."""

    def collect(message: Any) -> None:
        try:
            into.append(codec.decode_as(codec.DEAD_LETTER, message.value))
        except codec.CodecError:
            undecodable.append(message)

    return collect


def pending(highest: Mapping[int, int], offsets: Mapping[int, int]) -> dict[int, int]:
    """Partition -> records not yet committed (a committed offset is the next one to read)."""
    return {
        p: last + 1 - max(offsets.get(p, -1), 0)
        for p, last in highest.items()
        if offsets.get(p, -1) < last + 1
    }


def dead_lettered_again(
    later: Iterable[dict[str, Any]], sent: set[str], newest_before: Mapping[str, int]
) -> dict[str, dict[str, Any]]:
    """Letters read after the re-publish for deliveries we sent, newest per delivery.

    ``later`` holds only letters read after the scan that preceded the
    re-publish; a letter must also be newer than any earlier letter of the
    same delivery, so a copy of an old letter can never count.
    """
    found: dict[str, dict[str, Any]] = {}
    for letter in later:
        delivery = letter["delivery_id"]
        if delivery not in sent or letter["dead_lettered_at"] < newest_before.get(delivery, 0):
            continue
        held = found.get(delivery)
        if held is None or letter["dead_lettered_at"] >= held["dead_lettered_at"]:
            found[delivery] = letter
    return found


def reason_summary(letters: Iterable[dict[str, Any]], width: int = 160) -> list[tuple[str, int]]:
    """(``stage: reason``, count), most frequent first: what is still wrong."""
    counts = Counter(f"{letter['stage']}: {letter['reason'][:width]}" for letter in letters)
    return counts.most_common()


# -- talking to Kafka ----------------------------------------------------------------


async def committed(admin: Any, topic: str, partitions: list[int]) -> dict[int, int]:
    """The worker group's committed offset per partition (-1: none yet)."""
    from aiokafka import TopicPartition

    offsets = await admin.list_consumer_group_offsets(
        WORKER_GROUP, partitions=[TopicPartition(topic, p) for p in partitions]
    )
    found = {tp.partition: meta.offset for tp, meta in offsets.items() if meta is not None}
    return {p: found.get(p, -1) for p in partitions}


async def wait_processed(
    bootstrap: str,
    topic: str,
    highest: Mapping[int, int],
    timeout_s: float,
    progress: Progress | None = None,
) -> dict[int, int]:
    """Wait until the group committed past ``highest`` (partition -> offset) or time runs out.

    Returns what is still pending (empty: all processed).
    """
    from aiokafka.admin import AIOKafkaAdminClient
    from aiokafka.errors import KafkaError

    deadline = time.monotonic() + timeout_s
    partitions = sorted(highest)
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10_000)
    try:
        await asyncio.wait_for(admin.start(), 15)
        while True:
            left = pending(highest, await committed(admin, topic, partitions))
            if not left or time.monotonic() >= deadline:
                return left
            if progress is not None:
                progress.maybe(
                    f"waiting for the worker (group {WORKER_GROUP!r}): "
                    f"{sum(left.values())} records not processed yet"
                )
            await asyncio.sleep(POLL_S)
    except (KafkaError, OSError, TimeoutError) as exc:
        raise WaitError(
            f"lost Kafka at {bootstrap} while waiting for the worker: {exc or type(exc).__name__}"
        ) from None
    finally:
        await admin.close()


@dataclass
class Verdict:
    sent: int
    #: raw partition -> records the worker has not committed yet (empty: all processed)
    left: dict[int, int] = field(default_factory=dict)
    #: delivery id -> its newest dead letter written after the re-publish
    again: dict[str, dict[str, Any]] = field(default_factory=dict)


async def verdict(
    bootstrap: str,
    raw: str,
    deadletters: TopicReader,
    highest: Mapping[int, int],
    sent: set[str],
    newest_before: Mapping[str, int],
    timeout_s: float,
    progress: Progress,
) -> Verdict:
    """Wait for the worker, then read the dead letters it wrote since ``deadletters``' scan."""
    left = await wait_processed(bootstrap, raw, highest, timeout_s, progress)
    later: list[dict[str, Any]] = []
    await deadletters.scan(collector(later, []))
    return Verdict(len(sent), left, dead_lettered_again(later, sent, newest_before))


def report(
    progress: Progress,
    result: Verdict,
    timeout_s: float,
    raw: str,
    accepted: str,
    rejected: str = "dead-lettered again",
) -> int:
    """Print the verdict; return the command's exit code."""
    again = result.again
    if result.left:
        progress.say(
            f"the worker did not process all of them within {timeout_s:g}s "
            f"({sum(result.left.values())} records still pending on {raw}; is a worker "
            f"running?); so far {len(again)} {rejected}"
        )
    else:
        progress.say(
            f"the worker processed all {result.sent}: {result.sent - len(again)} {accepted}, "
            f"{len(again)} {rejected}"
        )
    for reason, count in reason_summary(again.values()):
        progress.say(f"  {count} x {reason}")
    for delivery in sorted(again)[:SHOWN]:
        progress.say(f"  {rejected}: {delivery}")
    if len(again) > SHOWN:
        progress.say(f"  ... and {len(again) - SHOWN} more (see hookline tail)")
    return EXIT_NOT_PROCESSED if result.left else 0
