"""Is this worker still the owner of what it is about to write?

A worker can be frozen (a long pause, a stopped VM, SIGSTOP) after reading a
batch and before sending its outputs. Past the session timeout the group
coordinator evicts it and hands its partitions to another member, which
recovers the tables and carries on. When the frozen worker wakes it would
send the batch it computed from state that is no longer the latest: outputs
to ``orders.state`` that land after newer versions of the same orders (a
compacted topic keeps the last record: an order would appear to go back in
time), and changelog records that land after the new owner's.

So before a batch is sent, the worker asks the coordinator (one Heartbeat
request with its member id and generation) whether it is still a member of
the current generation; a confirmation less than a second old (and less
than a third of the session timeout) stands, since an eviction takes a whole
session timeout without heartbeats and a pause that long shows on the clock.
An evicted member hears ``UNKNOWN_MEMBER_ID`` or ``ILLEGAL_GENERATION`` and
the batch is dropped unsent and uncommitted (:class:`Fenced`): the stage goes
on with the next batch, and the inputs are read again by whichever member
owns their partitions after the rebalance. A coordinator that does not
answer (moving during a rolling restart, loading the group) is asked again
with backoff for up to ``GIVE_UP_AFTER_S``.
``REBALANCE_IN_PROGRESS`` still confirms membership: Faust does not hand a
partition over before this member's in-flight batches are acknowledged
(``stream_wait_empty``).

Without Kafka transactions this cannot be atomic: a worker frozen between
this check and the moment its records leave (a few milliseconds) still
writes late. Its changelog records are then fenced out of every recovery
(streams/fencing.py); its outputs repeat versions already published.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiokafka.errors as errors
from aiokafka.client import AIOKafkaClient, ConnectionGroup
from aiokafka.protocol.group import HeartbeatRequest
from hookline.streams.client_settings import worker_client_settings
from hookline.streams.internals import group_member

#: How long the check keeps asking while the coordinator cannot answer (it
#: moves during a rolling restart of the brokers, and a new one loads the
#: group first), before the batch fails as an infrastructure failure. Longer
#: than any eviction: past a session timeout without heartbeats the answer
#: is an eviction (:class:`Fenced`), not silence.
GIVE_UP_AFTER_S = 120.0
RETRY_BACKOFF_S = 0.2
MAX_BACKOFF_S = 2.0


class Fenced(Exception):
    """This worker lost its group membership: its batch must not be sent."""


class MembershipCheck:
    """Heartbeats on the worker's own connection, from the stages' event loop.

    Faust runs its consumer in a thread with its own loop; asking that thread
    (``call_thread``) queues behind its fetches and commits, and during a
    rebalance a commit can wait for the very batch that is asking. So the
    check reads the member id, generation and coordinator the consumer
    already knows (plain attributes) and sends the Heartbeat itself.
    """

    def __init__(self, app: Any) -> None:
        self.app = app
        self._client: AIOKafkaClient | None = None
        self._confirmed_at: float | None = None
        # An eviction needs a whole session timeout without one heartbeat
        # reaching the coordinator, ours included: a confirmation younger
        # than a fraction of it is as good as a new one. At most one
        # Heartbeat a second instead of one per batch (it cost ~6 % CPU).
        session_s = float(app.conf.broker_session_timeout)
        self.max_age_s = min(1.0, session_s / 3)

    async def confirm(self, generation: int) -> None:
        """Raise :class:`Fenced` unless still a member, in the batch's ``generation``."""
        known = group_member(self.app).generation
        if generation != known:
            raise Fenced(
                f"batch read in generation {generation}, the member is in generation {known}"
            )
        if self._confirmed_at is not None and _now() - self._confirmed_at < self.max_age_s:
            return
        last_error: Exception | None = None
        deadline = _now() + GIVE_UP_AFTER_S
        attempt = 0
        while _now() < deadline:
            if attempt:
                await asyncio.sleep(min(RETRY_BACKOFF_S * 2 ** (attempt - 1), MAX_BACKOFF_S))
            attempt += 1
            # Read together: the consumer thread may be resetting them.
            group, current, member, node = group_member(self.app)
            if node is None:
                last_error = errors.GroupCoordinatorNotAvailableError()
                continue
            try:
                client = await self._started()
                response = await client.send(
                    node,
                    HeartbeatRequest(group, current, member),
                    group=ConnectionGroup.COORDINATION,
                )
            except errors.KafkaError as exc:  # coordinator moving or unreachable
                last_error = exc
                continue
            error = errors.for_code(response.error_code)
            if error in (errors.UnknownMemberIdError, errors.IllegalGenerationError):
                raise Fenced(f"evicted from the group ({error.__name__})")
            if error in (errors.NoError, errors.RebalanceInProgressError):
                if generation != current:
                    raise Fenced(
                        f"batch read in generation {generation}, the member is in "
                        f"generation {current}"
                    )
                self._confirmed_at = _now()
                return
            last_error = error()  # NOT_COORDINATOR, COORDINATOR_LOAD_IN_PROGRESS...
        raise errors.KafkaError(
            f"cannot confirm group membership for {GIVE_UP_AFTER_S:.0f} s: {last_error!r}"
        )

    async def _started(self) -> AIOKafkaClient:
        if self._client is None:
            client = AIOKafkaClient(**worker_client_settings(self.app, "membership"))
            await client.bootstrap()
            self._client = client
        return self._client

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None


def _now() -> float:
    """Seconds on a clock that keeps running while the process or the host sleeps."""
    return time.clock_gettime(time.CLOCK_BOOTTIME)


def membership(app: Any) -> MembershipCheck:
    """The app's one check (one connection per worker)."""
    check = getattr(app, "hookline_membership", None)
    if check is None:
        check = app.hookline_membership = MembershipCheck(app)
    return check


async def confirm_membership(app: Any, generation: int) -> None:
    await membership(app).confirm(generation)
