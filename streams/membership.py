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
the current generation. An evicted member hears ``UNKNOWN_MEMBER_ID`` or
``ILLEGAL_GENERATION`` and the batch is dropped unsent and uncommitted
(:class:`Fenced`: the worker exits and is restarted, like any failed batch).
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
from typing import Any

import aiokafka.errors as errors
from aiokafka.protocol.group import HeartbeatRequest

#: Attempts when the coordinator cannot be reached, before the batch fails.
ATTEMPTS = 5
RETRY_BACKOFF_S = 0.2


class Fenced(Exception):
    """This worker lost its group membership: its batch must not be sent."""


async def confirm_membership(app: Any, generation: int) -> None:
    """Raise :class:`Fenced` unless this member is current and read the batch in ``generation``."""
    thread = app.consumer._thread
    answer = await thread.call_thread(_heartbeat, thread)
    current_generation, error = answer
    if error is not None:
        raise Fenced(error)
    if generation != current_generation:
        raise Fenced(
            f"batch read in generation {generation}, group is at generation {current_generation}"
        )


async def _heartbeat(thread: Any) -> tuple[int, str | None]:
    """Runs in the consumer's thread, where its coordinator lives."""
    coordinator = thread._ensure_consumer()._coordinator
    last_error: Exception | None = None
    for attempt in range(ATTEMPTS):
        generation, member = coordinator.generation, coordinator.member_id
        try:
            response = await coordinator._send_req(
                HeartbeatRequest(coordinator.group_id, generation, member)
            )
        except errors.KafkaError as exc:  # coordinator moving or unreachable: try again
            last_error = exc
            await asyncio.sleep(RETRY_BACKOFF_S * (attempt + 1))
            continue
        error = errors.for_code(response.error_code)
        if error in (errors.NoError, errors.RebalanceInProgressError):
            return generation, None
        if error in (errors.UnknownMemberIdError, errors.IllegalGenerationError):
            return generation, f"evicted from the group ({error.__name__})"
        last_error = error()
        await asyncio.sleep(RETRY_BACKOFF_S * (attempt + 1))
    raise errors.KafkaError(f"cannot confirm group membership: {last_error!r}")
