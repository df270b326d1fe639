"""Expiry bookkeeping: which keys are due, and what a sweep deletes.

The memory store keeps an index; the RocksDB store is scanned from a cursor,
tested here against real rocksdict databases.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import rocksdict
from faust.stores.rocksdb import RocksDBOptions, Store
from hookline.schemas.codec import UnknownSchema
from hookline.streams.expiry import (
    SCAN_PER_EVENT,
    Expiry,
    ExpiryIndex,
    StoreScan,
    StreamTime,
    local_items,
    scan,
)
from hookline.streams.pipeline import StateTable

OFFSET_KEY = Store.offset_key


@dataclass
class FakeMessage:
    partition: int


@dataclass
class FakeEvent:
    message: FakeMessage


def event(partition: int) -> Any:
    return FakeEvent(FakeMessage(partition))


@dataclass
class MemoryStore:
    """What Expiry sees of Faust's memory store."""

    data: dict[bytes, bytes] = field(default_factory=dict)
    _key_partition: dict[bytes, int] = field(default_factory=dict)


@dataclass
class DiskStore:
    """What Expiry sees of Faust's RocksDB store: one database per partition."""

    _dbs: dict[int, rocksdict.Rdict]
    offset_key: bytes = OFFSET_KEY

    @property
    def dbs(self) -> dict[int, rocksdict.Rdict]:
        return self._dbs


@dataclass(frozen=True)
class TP:
    topic: str
    partition: int


class FakeAssignor:
    def __init__(self, actives: set[int]) -> None:
        self.actives = actives

    def assigned_actives(self) -> set[TP]:
        return {TP("t-changelog", p) for p in self.actives} | {TP("other", 9)}


class FakeChangelog:
    def get_topic_name(self) -> str:
        return "t-changelog"


class FakeApp:
    def __init__(self, actives: set[int]) -> None:
        self.assignor = FakeAssignor(actives)


@dataclass
class FakeTable:
    data: Any = field(default_factory=MemoryStore)
    callbacks: list[Any] = field(default_factory=list)
    app: FakeApp = field(default_factory=lambda: FakeApp(set()))
    changelog_topic: FakeChangelog = field(default_factory=FakeChangelog)

    def on_recover(self, fn: Any) -> Any:
        self.callbacks.append(fn)
        return fn


@dataclass
class FakeBatch:
    values: dict[bytes, dict[str, Any]]
    deleted: list[tuple[int, bytes]] = field(default_factory=list)
    replaced: list[tuple[int, bytes, dict[str, Any]]] = field(default_factory=list)

    def get(self, ev: Any, key: bytes) -> dict[str, Any] | None:
        return self.values.get(key)

    def delete(self, ev: Any, key: bytes) -> None:
        self.deleted.append((ev.message.partition, key))
        self.values.pop(key)

    def put(self, ev: Any, key: bytes, value: dict[str, Any]) -> None:
        self.replaced.append((ev.message.partition, key, value))
        self.values[key] = value


def encode(value: dict[str, Any]) -> bytes:
    return json.dumps(value).encode()


def decode(raw: bytes) -> dict[str, Any]:
    return json.loads(raw)  # type: ignore[no-any-return]


@pytest.fixture
def open_db(tmp_path: Path) -> Iterator[Any]:
    """Open databases as Faust does (raw mode), closed at the end."""
    opened: list[rocksdict.Rdict] = []

    def open_one(name: str) -> rocksdict.Rdict:
        db = RocksDBOptions(**StateTable.ROCKSDB_OPTIONS).open(tmp_path / name)
        opened.append(db)
        return db

    yield open_one
    for db in opened:
        db.close()


def fill(db: rocksdict.Rdict, expiries: dict[bytes, int]) -> None:
    db.put(OFFSET_KEY, b"42")
    for key, expires_at in expiries.items():
        db.put(key, encode({"expires_at": expires_at}))


def clock_at(now: int, partition: int = 0, events: int = 1) -> StreamTime:
    clock = StreamTime()
    for _ in range(events):
        clock.saw(event(partition), now)
    return clock


# -- memory store: the index -------------------------------------------------


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


def test_stream_time_keeps_the_newest_event_per_partition_and_counts_events() -> None:
    clock = StreamTime()
    first, newer, other = event(0), event(0), event(1)
    clock.saw(first, 100)
    clock.saw(newer, 200)
    clock.saw(first, 150)
    clock.saw(other, 5)
    assert clock.latest == {0: (newer, 200), 1: (other, 5)}
    assert clock.events == {0: 3, 1: 1}


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


# -- RocksDB store: the scan -------------------------------------------------


def test_scan_resumes_after_a_key_even_one_deleted_since(open_db: Any) -> None:
    db = open_db("p0")
    fill(db, {b"a": 1, b"b": 1, b"c": 1})
    assert [k for k, _ in scan(db)] == [OFFSET_KEY, b"a", b"b", b"c"]
    assert [k for k, _ in scan(db, b"a")] == [b"b", b"c"]
    db.delete(b"b")
    assert [k for k, _ in scan(db, b"b")] == [b"c"]
    assert list(scan(db, b"c")) == []


def test_store_scan_examines_a_budget_per_call_and_wraps_around(open_db: Any) -> None:
    db = open_db("p0")
    fill(db, {b"k1": 10, b"k2": 900, b"k3": 20, b"k4": 30, b"k5": 0})
    store_scan = StoreScan(lambda raw: decode(raw)["expires_at"])
    # Offset key, k1, k2: only k1 is due; the offset key is never a candidate.
    assert store_scan.due(db, 0, now=100, budget=3, skip=OFFSET_KEY) == [b"k1"]
    assert store_scan.cursors == {0: b"k2"}
    # k3, k4, k5 (never expires), then the end: the cursor is dropped.
    assert store_scan.due(db, 0, now=100, budget=10, skip=OFFSET_KEY) == [b"k3", b"k4"]
    assert store_scan.cursors == {}
    # A key written behind the cursor is found on the next pass.
    db.put(b"k0", encode({"expires_at": 5}))
    assert store_scan.due(db, 0, now=100, budget=3, skip=OFFSET_KEY) == [b"k0", b"k1"]


def test_store_scan_stops_at_the_delete_limit(open_db: Any) -> None:
    db = open_db("p0")
    fill(db, {b"k%d" % i: 1 for i in range(10)})
    store_scan = StoreScan(lambda raw: decode(raw)["expires_at"])
    assert store_scan.due(db, 0, now=5, budget=100, limit=3, skip=OFFSET_KEY) == [
        b"k0",
        b"k1",
        b"k2",
    ]
    assert store_scan.due(db, 0, now=5, budget=100, limit=3, skip=OFFSET_KEY) == [
        b"k3",
        b"k4",
        b"k5",
    ]


def disk_expiry(open_db: Any, partitions: int, on_expired: Any = None) -> tuple[Expiry, DiskStore]:
    store = DiskStore({p: open_db(f"p{p}") for p in range(partitions)})
    return Expiry(FakeTable(data=store), decode, on_expired), store  # type: ignore[arg-type]


def test_a_rocksdb_sweep_keeps_nothing_per_key_in_memory(open_db: Any) -> None:
    expiry, store = disk_expiry(open_db, 2)
    for i in range(1000):
        expiry.noted(event(i % 2), b"k%d" % i, {"expires_at": 10 + i})
    assert len(expiry.index) == 0
    for p, db in store.dbs.items():
        fill(db, {b"k%d" % i: 10 + i for i in range(p, 1000, 2)})
    batch = FakeBatch({b"k%d" % i: {"expires_at": 10 + i} for i in range(1000)})
    clock = clock_at(2000, partition=0, events=100)
    clock.saw(event(1), 2000)
    examined = 100 * SCAN_PER_EVENT + 1 * SCAN_PER_EVENT  # the offset keys among them
    assert expiry.sweep(batch, clock) == examined - 2  # type: ignore[arg-type]
    assert set(expiry.scan.cursors) == {0, 1}


def test_a_rocksdb_sweep_spends_its_budget_by_events_in_each_partition(open_db: Any) -> None:
    expiry, store = disk_expiry(open_db, 2)
    values = {}
    for p, db in store.dbs.items():
        keys = {b"p%d-%03d" % (p, i): 10 for i in range(50)}
        fill(db, keys)
        values.update({k: {"expires_at": at} for k, at in keys.items()})
    batch = FakeBatch(values)
    clock = clock_at(100, partition=0, events=5)
    clock.saw(event(1), 100)
    expiry.sweep(batch, clock)  # type: ignore[arg-type]
    by_partition = {p: sum(1 for q, _ in batch.deleted if q == p) for p in (0, 1)}
    # The offset key is examined but not a candidate.
    assert by_partition == {0: 5 * SCAN_PER_EVENT - 1, 1: SCAN_PER_EVENT - 1}


def test_a_rocksdb_sweep_rechecks_the_batch_value_and_retires(open_db: Any) -> None:
    def retire(value: dict[str, Any]) -> dict[str, Any]:
        return {**value, "expires_at": 0, "retired": True}

    expiry, store = disk_expiry(open_db, 1, on_expired=retire)
    fill(store.dbs[0], {b"a-old": 10, b"b-extended": 10, b"c-gone": 10, b"d-fresh": 900})
    batch = FakeBatch(
        {
            b"a-old": {"expires_at": 10},
            b"b-extended": {"expires_at": 500},  # this batch rewrote it
            b"d-fresh": {"expires_at": 900},
        }
    )
    assert expiry.sweep(batch, clock_at(100, events=10)) == 1  # type: ignore[arg-type]
    assert batch.replaced == [(0, b"a-old", {"expires_at": 0, "retired": True})]
    assert batch.deleted == []
    assert len(expiry.index) == 0


def test_a_rocksdb_sweep_skips_partitions_not_open(open_db: Any) -> None:
    expiry, _ = disk_expiry(open_db, 1)
    assert expiry.sweep(FakeBatch({}), clock_at(100, partition=7)) == 0  # type: ignore[arg-type]


def test_local_items_of_rocksdb_leave_out_the_offset_key(open_db: Any) -> None:
    _, store = disk_expiry(open_db, 2)
    fill(store.dbs[0], {b"a": 1})
    fill(store.dbs[1], {b"b": 2})
    table = FakeTable(data=store)
    assert [(p, k) for p, k, _ in local_items(table, {0, 1})] == [(0, b"a"), (1, b"b")]  # type: ignore[arg-type]
    assert [(p, k) for p, k, _ in local_items(table, {1})] == [(1, b"b")]  # type: ignore[arg-type]


def test_rocksdb_options_are_all_known_to_faust() -> None:
    """A misspelt option would silently fall into Faust's ignored extra options."""
    options = RocksDBOptions(**StateTable.ROCKSDB_OPTIONS)
    assert options.extra_options == {}
    assert options.write_buffer_size * options.max_write_buffer_number <= 8 * 1024 * 1024
    assert options.block_cache_size <= 2 * 1024 * 1024


async def test_a_rocksdb_recovery_forgets_revoked_partitions_and_indexes_nothing(
    open_db: Any,
) -> None:
    expiry, store = disk_expiry(open_db, 2)
    for db in store.dbs.values():
        fill(db, {b"a": 1, b"b": 1, b"c": 1})
    expiry.sweep(FakeBatch({}), clock_at(100, partition=0))  # type: ignore[arg-type]
    expiry.sweep(FakeBatch({}), clock_at(100, partition=1))  # type: ignore[arg-type]
    assert set(expiry.scan.cursors) == {0, 1}
    expiry.table.app = FakeApp({1})  # type: ignore[attr-defined]
    await expiry.rebuild()
    assert set(expiry.scan.cursors) == {1}
    assert len(expiry.index) == 0


async def test_a_memory_recovery_indexes_the_owned_partitions() -> None:
    store = MemoryStore(
        data={b"a": b"10", b"b": b"0", b"c": b"30"},
        _key_partition={b"a": 0, b"b": 0, b"c": 1},
    )
    table = FakeTable(data=store, app=FakeApp({0}))
    expiry = Expiry(table, decode=lambda raw: {"expires_at": int(raw)})  # type: ignore[arg-type]
    expiry.noted(event(1), b"c", {"expires_at": 30})
    await expiry.rebuild()
    assert len(expiry.index) == 1  # a; b never expires; partition 1 is not owned
    assert expiry.index.due(0, now=50) == [b"a"]


def newer_release_decode(raw: bytes) -> dict[str, Any]:
    """A decode where ``b"newer"`` is a value of a schema this release does not know."""
    if raw == b"newer":
        raise UnknownSchema(b"\x01" * 8)
    return {"expires_at": int(raw)}


async def test_a_recovery_leaves_values_of_an_unknown_schema_alone() -> None:
    """After a rollback the store holds a newer release's values: never expired, no crash."""
    store = MemoryStore(
        data={b"a": b"10", b"n": b"newer"},
        _key_partition={b"a": 0, b"n": 0},
    )
    table = FakeTable(data=store, app=FakeApp({0}))
    expiry = Expiry(table, decode=newer_release_decode)  # type: ignore[arg-type]
    await expiry.rebuild()
    assert expiry.index.due(0, now=50) == [b"a"]


def test_a_sweep_skips_a_value_of_an_unknown_schema() -> None:
    class UnreadableBatch(FakeBatch):
        def get(self, event: Any, key: bytes) -> Any:
            if key == b"n":
                raise UnknownSchema(b"\x01" * 8)
            return super().get(event, key)

    expiry = Expiry(FakeTable(), decode=newer_release_decode)  # type: ignore[arg-type]
    ev = event(0)
    expiry.noted(ev, b"n", {"expires_at": 5})
    expiry.noted(ev, b"old", {"expires_at": 5})
    batch = UnreadableBatch({b"old": {"expires_at": 5}})
    clock = StreamTime()
    clock.saw(ev, 10)
    assert expiry.sweep(batch, clock) == 1  # type: ignore[arg-type]
    assert batch.deleted == [(0, b"old")]
