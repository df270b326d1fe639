"""Input partitions a stage holds at a record it cannot read.

A record whose writer schema this release does not know (``codec.UnknownSchema``)
is not bad data: during a rolling upgrade a newer worker or gateway wrote it,
and after a rollback the tables hold records of the newer release. Acking it
unread would lose its facts for good; dead-lettering it would too (a worker
that can read it would never see it). So the stage *holds* the partition at
that record: neither it nor anything after it in the partition is processed,
acked or committed; the partition's fetching is paused; the hold is counted
(``hookline_worker_unreadable_records_total``,
``hookline_worker_held_partitions``) and logged with the fingerprint when it
starts and once a minute after. Other partitions go on.

A hold ends with the consumer-group generation it began in: after a
rebalance the partition is sought back to its committed offset, which is at
or before the held record, so whoever owns it then reads that record again,
and a worker of the newer release processes it exactly (docs/operations.md,
"Upgrading workers").
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

from faust.types import TP, EventT
from hookline.schemas.codec import UnknownSchema
from hookline.streams.take import drop_unacked

log = logging.getLogger("hookline.worker")

#: Seconds between two reminders of a hold that goes on.
REMIND_EVERY_S = 60.0


@dataclass
class Hold:
    offset: int
    fingerprint: str
    what: str
    generation: int
    since: float
    reminded_at: float


class HeldPartitions:
    """One stage's holds, per input partition (for one environment)."""

    def __init__(self, app: Any, environment: str, stage: str, metrics: Any) -> None:
        self.app = app
        self.environment = environment
        self.stage = stage
        self._held: dict[TP, Hold] = {}
        self._unreadable = metrics.unreadable.labels(environment, stage)
        self._gauge = metrics.held_partitions.labels(environment, stage)

    def hold(self, event: EventT, error: UnknownSchema, what: str) -> None:
        """Hold the event's partition at the event (``what``: the record it could not read)."""
        message = event.message
        tp = TP(message.topic, message.partition)
        self._unreadable.inc()
        if tp in self._held and self._current(tp):
            return
        now = time.monotonic()
        self._held[tp] = Hold(
            message.offset, error.fingerprint, what, self.app.consumer_generation_id, now, now
        )
        self._gauge.set(len(self._held))
        log.error(
            "stage %s: %s at %s[%s] offset %s has writer schema fingerprint %s, unknown to "
            "this release; holding the partition there (nothing past it is processed or "
            "committed) until a worker that knows the schema owns it",
            self.stage,
            what,
            message.topic,
            message.partition,
            message.offset,
            error.fingerprint,
        )
        try:
            self.app.consumer.pause_partitions([tp])
        except Exception:
            log.warning("could not pause %s[%s]", tp.topic, tp.partition, exc_info=True)

    def holds(self, event: EventT) -> bool:
        """True when the event is at or after its partition's held record."""
        if not self._held:
            return False
        message = event.message
        tp = TP(message.topic, message.partition)
        hold = self._held.get(tp)
        return hold is not None and self._current(tp) and message.offset >= hold.offset

    def release(self, events: list[EventT]) -> None:
        """Take the held events out of the batch, in place, unacked and untracked.

        The batch's list is what ``streams.take.batches`` acks: an event left
        out is never acked, so no commit moves past it; untracked, so a
        rebalance does not wait for it.
        """
        if not self._held:
            return
        kept = [event for event in events if not self.holds(event)]
        if len(kept) == len(events):
            return
        held = [event for event in events if self.holds(event)]
        drop_unacked(self.app.consumer, held)
        events[:] = kept

    def remind(self) -> None:
        """Log the holds that go on (once a minute each); forget those a rebalance ended."""
        now = time.monotonic()
        for tp in list(self._held):
            hold = self._held[tp]
            if not self._current(tp):
                continue
            if now - hold.reminded_at >= REMIND_EVERY_S:
                hold.reminded_at = now
                log.error(
                    "stage %s: still holding %s[%s] at offset %s for %.0f s: %s of unknown "
                    "writer schema fingerprint %s; upgrade this worker",
                    self.stage,
                    tp.topic,
                    tp.partition,
                    hold.offset,
                    now - hold.since,
                    hold.what,
                    hold.fingerprint,
                )

    def _current(self, tp: TP) -> bool:
        """Is the hold on ``tp`` of the current generation? (A rebalance ends it.)"""
        hold = self._held[tp]
        if hold.generation == self.app.consumer_generation_id:
            return True
        del self._held[tp]
        self._gauge.set(len(self._held))
        return False
