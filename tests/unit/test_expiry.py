"""Expiry bookkeeping: which keys are due, and what a sweep deletes."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hookline.streams.expiry import Expiry, ExpiryIndex, StreamTime


@dataclass
class FakeMessage:
    partition: int


@dataclass
class FakeEvent:
    message: FakeMessage


def event(partition: int) -> Any:
    return FakeEvent(FakeMessage(partition))


@dataclass
class FakeTable:
    callbacks: list[Any] = field(default_factory=list)

    def on_recover(self, fn: Any) -> Any:
        self.callbacks.append(fn)
        return fn


@dataclass
class FakeBatch:
    values: dict[bytes, dict[str, Any]]
    deleted: list[tuple[int, bytes]] = field(default_factory=list)

    def get(self, ev: Any, key: bytes) -> dict[str, Any] | None:
        return self.values.get(key)

    def delete(self, ev: Any, key: bytes) -> None:
        self.deleted.append((ev.message.partition, key))
        self.values.pop(key)


def test_due_returns_keys_in_expiry_order_up_to_now_and_limit() -> None:
    index = ExpiryIndex()
    for key, at in ((b"c", 30), (b"a", 10), (b"b", 20), (b"d", 40)):
        index.note(0, key, at)
    assert index.due(0, now=25) == [b"a", b"b"]
    assert index.due(0, now=25) == []
    assert index.due(0, now=100, limit=1) == [b"c"]
    assert len(index) == 1


def test_a_key_is_indexed_once_and_partitions_are_separate() -> None:
    index = ExpiryIndex()
    index.note(0, b"k", 10)
    index.note(0, b"k", 50)  # already indexed: the sweep re-checks the value
    index.note(1, b"k", 10)
    assert len(index) == 2
    assert index.due(0, now=100) == [b"k"]
    assert index.due(1, now=5) == []


def test_keep_only_drops_partitions_no_longer_owned() -> None:
    index = ExpiryIndex()
    index.note(0, b"a", 1)
    index.note(1, b"b", 1)
    index.keep_only({1})
    assert index.due(0, now=10) == []
    assert index.due(1, now=10) == [b"b"]


def test_stream_time_keeps_the_newest_event_per_partition() -> None:
    clock = StreamTime()
    first, newer, other = event(0), event(0), event(1)
    clock.saw(first, 100)
    clock.saw(newer, 200)
    clock.saw(first, 150)
    clock.saw(other, 5)
    assert clock.latest == {0: (newer, 200), 1: (other, 5)}


def test_sweep_deletes_expired_and_reschedules_extended_keys() -> None:
    table = FakeTable()
    expiry = Expiry(table, decode=lambda raw: {"expires_at": int(raw)})  # type: ignore[arg-type]
    assert table.callbacks == [expiry.rebuild]
    batch = FakeBatch(
        {
            b"old": {"expires_at": 10},
            b"extended": {"expires_at": 500},  # rewritten after it was indexed
            b"fresh": {"expires_at": 900},
        }
    )
    ev = event(3)
    expiry.noted(ev, b"old", {"expires_at": 10})
    expiry.noted(ev, b"extended", {"expires_at": 20})
    expiry.noted(ev, b"fresh", {"expires_at": 900})
    clock = StreamTime()
    clock.saw(ev, 100)
    assert expiry.sweep(batch, clock) == 1  # type: ignore[arg-type]
    assert batch.deleted == [(3, b"old")]
    assert set(batch.values) == {b"extended", b"fresh"}
    # The extended key is due again only at its new expiry.
    clock.saw(ev, 499)
    assert expiry.sweep(batch, clock) == 0  # type: ignore[arg-type]
    clock.saw(ev, 500)
    assert expiry.sweep(batch, clock) == 1  # type: ignore[arg-type]
    assert batch.deleted[-1] == (3, b"extended")


def test_sweep_ignores_keys_already_gone() -> None:
    expiry = Expiry(FakeTable(), decode=lambda raw: {})  # type: ignore[arg-type]
    ev = event(0)
    expiry.noted(ev, b"gone", {"expires_at": 1})
    clock = StreamTime()
    clock.saw(ev, 10)
    assert expiry.sweep(FakeBatch({}), clock) == 0  # type: ignore[arg-type]
