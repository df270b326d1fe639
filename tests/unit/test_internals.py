"""The seam (streams/internals.py) against the installed faust-streaming, mode and aiokafka.

Every private name the seam relies on must exist in the pinned versions: an
upgrade that renames one fails here, not in a worker under load. Names set
in a constructor or another method exist only on instances, so a class
"has" a name when one of its classes defines it or assigns ``self.<name>``
in its source.
"""

from __future__ import annotations

import ast
import asyncio
import functools
import inspect
import textwrap
from pathlib import Path
from typing import Any

import faust
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from faust.stores.rocksdb import Store as RocksDBStore
from faust.types import TP
from hookline.streams import fencing, internals, transport

THIRD_PARTY = ("faust", "mode", "aiokafka")


@functools.cache
def assigned_in(klass: type) -> frozenset[str]:
    """Attribute names ``klass``'s own source assigns to ``self``."""
    try:
        source = textwrap.dedent(inspect.getsource(klass))
    except (OSError, TypeError):
        return frozenset()
    return frozenset(
        node.attr
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.Attribute)
        and isinstance(node.ctx, ast.Store)
        and isinstance(node.value, ast.Name)
        and node.value.id == "self"
    )


def has(owner: type, name: str) -> bool:
    """``owner`` or one of its bases defines ``name``, or sets it on its instances."""
    return any(
        name in vars(klass) or name in assigned_in(klass)
        for klass in owner.__mro__
        if klass is not object
    )


def third_party(klass: type) -> bool:
    return klass.__module__.split(".")[0] in THIRD_PARTY


def test_the_seam_relies_on_something() -> None:
    assert len(internals.RELIED_ON) > 20
    assert all(third_party(owner) for owner, _name, _function in internals.RELIED_ON)


@pytest.mark.parametrize(
    ("owner", "name", "function"),
    internals.RELIED_ON,
    ids=[f"{function}-{owner.__name__}.{name}" for owner, name, function in internals.RELIED_ON],
)
def test_every_name_the_seam_relies_on_exists(owner: type, name: str, function: str) -> None:
    assert has(owner, name), f"{owner.__module__}.{owner.__qualname__} has no {name} ({function})"


SUBCLASS_NAMES = [
    (base, name) for base, names in internals.SUBCLASS_RELIANCE.items() for name in names
]


@pytest.mark.parametrize(
    ("base", "name"), SUBCLASS_NAMES, ids=[f"{b.__name__}.{n}" for b, n in SUBCLASS_NAMES]
)
def test_every_name_the_subclasses_rely_on_exists(base: type, name: str) -> None:
    assert has(base, name), f"{base.__module__}.{base.__qualname__} has no {name}"


def underscore_names_used(klass: type) -> set[str]:
    """Single-underscore names ``klass`` defines, or reaches through ``self`` or ``super()``."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            names.add(node.name)
        elif isinstance(node, ast.Attribute):
            value = node.value
            if (isinstance(value, ast.Name) and value.id == "self") or (
                isinstance(value, ast.Call)
                and isinstance(value.func, ast.Name)
                and value.func.id == "super"
            ):
                names.add(node.attr)
    return {name for name in names if name.startswith("_") and not name.startswith("__")}


SUBCLASSES = [
    klass
    for module in (transport, fencing)
    for klass in vars(module).values()
    if inspect.isclass(klass)
    and klass.__module__ == module.__name__
    and any(third_party(base) for base in klass.__mro__)
]


@pytest.mark.parametrize("klass", SUBCLASSES, ids=[k.__qualname__ for k in SUBCLASSES])
def test_the_subclasses_rely_on_no_unlisted_private_name(klass: type) -> None:
    """An underscore name of a Faust base that a subclass uses must be listed (and so checked)."""
    base = next(base for base in klass.__mro__ if third_party(base))
    inherited = {name for name in underscore_names_used(klass) if has(base, name)}
    listed = set(internals.SUBCLASS_RELIANCE.get(base, {}))
    assert inherited <= listed, f"add to SUBCLASS_RELIANCE[{base.__qualname__}]"


def private_names_in(function: ast.FunctionDef) -> set[str]:
    """Underscore attribute names a seam function reads, writes or tests with hasattr."""
    names = set()
    for node in ast.walk(function):
        if isinstance(node, ast.Attribute):
            names.add(node.attr)
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in ("hasattr", "getattr")
            and isinstance(node.args[1], ast.Constant)
        ):
            names.add(node.args[1].value)
    return {name for name in names if name.startswith("_") and not name.startswith("__")}


SEAM_FUNCTIONS = [
    node
    for node in ast.parse(Path(internals.__file__).read_text()).body
    if isinstance(node, ast.FunctionDef) and node.name != "relies_on"
]


@pytest.mark.parametrize("function", SEAM_FUNCTIONS, ids=[f.name for f in SEAM_FUNCTIONS])
def test_every_seam_function_declares_what_it_relies_on(function: ast.FunctionDef) -> None:
    declared = {name for _owner, name, used_by in internals.RELIED_ON if used_by == function.name}
    assert private_names_in(function) <= declared


def test_the_checks_tell_a_missing_name() -> None:
    assert not has(AIOKafkaConsumer, "_fetch_max_wait_msec")
    assert not has(AIOKafkaConsumer, "_no_such_attribute")


# The seam's functions on real, unstarted objects: no broker needed.


@pytest.fixture
def app() -> faust.App:
    return faust.App("internals-test", broker="kafka://127.0.0.1:1", store="memory://")


async def test_the_consumer_settings_land_on_a_real_consumer() -> None:
    consumer = AIOKafkaConsumer(bootstrap_servers="127.0.0.1:1")
    internals.set_fetch_max_wait(consumer, 20)
    assert consumer._fetch_max_wait_ms == 20  # noqa: SLF001 (what the seam wrote)
    internals.set_isolation_level(consumer, "read_committed")
    assert consumer._isolation_level == "read_committed"  # noqa: SLF001
    assert internals.fetch_positions(consumer, [TopicPartition("t", 0)]) == {}


def test_an_unstarted_app_reads_as_empty(app: faust.App) -> None:
    assert internals.committed_offset(app, TP("t", 0)) is None
    assert list(internals.flow_control_queued(app.flow_control)) == []
    assert internals.conductor_channels(app.topics, TP("t", 0)) == set()
    assert internals.stopped_flag(app.consumer)() is False


async def test_queued_items_of_flow_control(app: faust.App) -> None:
    queue = app.FlowControlQueue(maxsize=10, clear_on_resume=True)
    queue.put_nowait("a")
    assert "a" in list(internals.flow_control_queued(app.flow_control))
    await asyncio.sleep(0)


def test_the_memory_store_by_partition(app: faust.App) -> None:
    store = app.Table("memory-store").data
    internals.store_put(store, b"k", b"v", 3)
    assert internals.store_get(store, b"k", 3) == b"v"
    assert internals.key_partitions(store) == {b"k": 3}
    assert internals.partition_dbs(store) is None
    internals.store_delete(store, b"k", 3)
    assert internals.store_get(store, b"k", 3) is None
    assert internals.key_partitions(store) == {}


def test_the_rocksdb_store_by_partition(app: faust.App, tmp_path: Path) -> None:
    table = app.Table("disk-store")
    store: Any = RocksDBStore(f"rocksdb://{tmp_path}", app, table)
    internals.store_put(store, b"k", b"v", 2)
    assert internals.store_get(store, b"k", 2) == b"v"
    dbs = internals.partition_dbs(store)
    assert dbs is not None
    assert list(dbs) == [2]
    internals.store_delete(store, b"k", 2)
    assert internals.store_get(store, b"k", 2) is None
