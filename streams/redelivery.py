"""A version decided but perhaps never published: which records owe their outputs.

The ``orders`` table is fed by two logs: order events straight from ``raw``
(when the order lives in the raw record's partition, streams/pipeline.py)
and transaction updates from ``order-inputs``. After a crash the two are
replayed in whatever order they are fetched again, so an ``orders.changes``
record sent before the crash but not yet in the table could be computed
again from another order of inputs: the same version with another content.
So the orders table is written *state first* (streams/batch.py): a version is
decided when its changelog record is acknowledged, and only then published.

The record keeps what it owes: ``outbox``, the encoded changes that the
batch which wrote it sends next (every version it decided for the order, in
order), the process that wrote it (``written_by``) and the input that did
(``input_topic``, ``input_offset``). The outbox was sent when

- this process wrote the record: it sends every output of a batch before its
  next batch reads the table (and exits if a send fails);
- or the consumer group committed past that input: a batch's inputs are
  acknowledged only after its outputs were, so a commit past one proves the
  batch was sent whole (a worker stopped cleanly, or a partition handed over
  in a rebalance, leaves nothing owed).

Otherwise (a worker that died before its commit) the first batch that reads
the record sends its outbox again, byte-identical, before anything newer.
That input was not committed, so it is read again after the crash: its
order is always touched again. A repeat costs duplicate records; consumers
already keep the highest version (docs/consumers.md).
"""

from __future__ import annotations

import os
from typing import Any

#: Changes one batch may decide for one order before it is flushed: bounds a
#: record's outbox (and so its changelog record) whatever the input holds.
MAX_OUTBOX = 32

_incarnation = [os.urandom(8).hex()]


def incarnation() -> str:
    """This worker process, as records name their writer. Random, so a restarted
    worker is another writer."""
    return _incarnation[0]


def renew() -> None:
    """Forget what this process wrote: a batch stopped between writing its
    records and sending their outputs (a cancelled stage; a failed one ends
    the process), so every record written so far is read as another's and
    its outbox sent again unless committed."""
    _incarnation[0] = os.urandom(8).hex()


def unpublished(record: dict[str, Any], committed: int | None) -> list[bytes]:
    """The record's outbox if it may not have been sent.

    ``committed``: the group's committed offset (the next to read) of the
    record's input partition, None when unknown.
    """
    outbox: list[bytes] = record.get("outbox") or []
    if not outbox or record.get("written_by") == _incarnation[0]:
        return []
    if committed is not None and committed > record.get("input_offset", -1):
        return []
    return outbox


def stamped(record: dict[str, Any], topic: str, offset: int) -> dict[str, Any]:
    """The record as this process writes it for the input at ``topic``/``offset``
    (in place: the batch owns it)."""
    record["written_by"] = _incarnation[0]
    record["input_topic"] = topic
    record["input_offset"] = offset
    return record
