"""How many orders are paid but not yet ACTIVE (the operator's "stuck order" signal).

A count per partition of table ``orders``, kept exact without a per-order
structure in memory: each change adjusts its partition's count, and after
every recovery (a restart or a rebalance) the partitions now owned are
counted again from the local store, so counts move with their partitions.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from faust.types import TableT
from hookline.schemas.codec import CodecError
from hookline.streams.expiry import active_partitions, local_items

DONE = frozenset({"ACTIVE", "REFUNDED"})


def awaiting(state: dict[str, Any] | None) -> bool:
    """Paid, but the order is not ACTIVE (nor refunded) yet."""
    return (
        state is not None
        and state["payment_status"] == "SUCCEEDED"
        and state["order_status"] not in DONE
    )


class AwaitingActivation:
    def __init__(self, table: TableT, decode: Callable[[bytes], dict[str, Any]]) -> None:
        self.table = table
        self.decode = decode
        self.counts: dict[int, int] = {}
        table.on_recover(self.rebuild)

    def changed(self, partition: int, before: dict[str, Any] | None, after: dict[str, Any]) -> None:
        delta = int(awaiting(after)) - int(awaiting(before))
        if delta:
            self.counts[partition] = self.counts.get(partition, 0) + delta

    def total(self) -> int:
        return sum(self.counts.values())

    async def rebuild(self) -> None:
        active = active_partitions(self.table)
        counts = dict.fromkeys(active, 0)
        for partition, _key, raw in local_items(self.table, active):
            try:
                state = self.decode(raw)["state"]
            except CodecError:  # a newer release's record (after a rollback): not counted
                continue
            if awaiting(state):
                counts[partition] += 1
        self.counts = counts
