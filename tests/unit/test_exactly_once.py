"""streams/exactly_once.py: a partition's writes and its input offset commit together, or not."""

from __future__ import annotations

from typing import Any

import pytest
from aiokafka.errors import KafkaTimeoutError, ProducerFenced
from faust.types import TP
from hookline.core.settings import Settings, SettingsError
from hookline.streams.exactly_once import PartitionProducers, Transaction, by_partition
from hookline.streams.membership import Fenced

from tests.support.transactional_producer import FakeTransactionalProducer

RAW0 = TP("production.webhooks.raw", 0)


async def producers_with(producer: FakeTransactionalProducer | None) -> PartitionProducers:
    """Producers for ``raw`` partitions; RAW0 assigned (with ``producer``) unless None."""
    producers = PartitionProducers(
        "hookline",
        lambda: {"bootstrap_servers": "kafka:9092"},
        lambda topic: topic.endswith("raw"),
        producer_settings={"acks": "all"},
        make_producer=lambda **settings: producer,
    )
    if producer is not None:
        await producers.assigned([RAW0])
        assert producer.names() == ["init"]
        producer.calls.clear()
    return producers


def sender(log: list[str]) -> Any:
    async def send(producer: Any, outputs: list[Any]) -> dict[tuple[str, int], int]:
        producer.calls.append(("send", len(outputs)))
        log.append("sent")
        return {("production.hookline.dedup-changelog", 0): 41}

    return send


async def test_outputs_state_and_offset_commit_in_one_transaction_then_the_store() -> None:
    producer = FakeTransactionalProducer()
    txn = Transaction(await producers_with(producer), RAW0)
    applied: list[Any] = []
    txn.send([("production.webhooks.events", b"k", b"v", None, None)])
    txn.send([("production.hookline.dedup-changelog", b"k", b"e", 0, None)])
    txn.after_commit(lambda last: applied.append(dict(last)))
    await txn.commit(150, sender([]))
    assert producer.names() == ["begin", "send", "offsets", "commit"]
    assert producer.calls[1] == ("send", 2)
    assert producer.calls[2] == ("offsets", ({("production.webhooks.raw", 0): 150}, "hookline"))
    # The store learns the changelog offsets only once the transaction committed.
    assert applied == [{("production.hookline.dedup-changelog", 0): 41}]


async def test_a_part_with_nothing_to_write_or_commit_opens_no_transaction() -> None:
    producer = FakeTransactionalProducer()
    txn = Transaction(await producers_with(producer), RAW0)
    applied: list[Any] = []
    txn.after_commit(lambda last: applied.append(last))
    await txn.commit(None, sender([]))
    assert producer.calls == []
    assert applied == [{}]


async def test_a_fenced_producer_drops_the_batch_and_the_partition_keeps_no_producer() -> None:
    producer = FakeTransactionalProducer(fail_on="commit", error=ProducerFenced())
    producers = await producers_with(producer)
    txn = Transaction(producers, RAW0)
    applied: list[Any] = []
    txn.send([("t", b"k", b"v", None, None)])
    txn.after_commit(lambda last: applied.append(last))
    with pytest.raises(Fenced):
        await txn.commit(7, sender([]))
    assert applied == []  # the store never takes a write whose transaction did not commit
    assert "abort" not in producer.names()  # a fenced producer cannot abort; the broker did
    assert producer.stopped
    with pytest.raises(Fenced):  # until the partition is assigned again
        producers.producer(RAW0)


async def test_any_other_failure_aborts_and_is_raised() -> None:
    producer = FakeTransactionalProducer(fail_on="offsets", error=KafkaTimeoutError())
    txn = Transaction(await producers_with(producer), RAW0)
    applied: list[Any] = []
    txn.send([("t", b"k", b"v", None, None)])
    txn.after_commit(lambda last: applied.append(last))
    with pytest.raises(KafkaTimeoutError):
        await txn.commit(7, sender([]))
    assert producer.names() == ["begin", "send", "offsets", "abort"]
    assert applied == []


async def test_a_partition_without_a_producer_is_fenced() -> None:
    txn = Transaction(await producers_with(None), RAW0)
    txn.send([("t", b"k", b"v", None, None)])
    with pytest.raises(Fenced):
        await txn.commit(7, sender([]))


async def test_a_producer_per_assigned_input_partition_named_for_it() -> None:
    made: list[FakeTransactionalProducer] = []

    def make(**settings: Any) -> FakeTransactionalProducer:
        made.append(FakeTransactionalProducer(**settings))
        return made[-1]

    producers = PartitionProducers(
        "hookline", dict, lambda topic: topic.endswith("raw"), {"acks": "all"}, make
    )
    changelog = TP("production.hookline.dedup-changelog", 0)
    await producers.assigned([RAW0, changelog, TP("production.webhooks.raw", 1)])
    ids = sorted(producer.settings["transactional_id"] for producer in made)
    assert ids == ["hookline-production.webhooks.raw-0", "hookline-production.webhooks.raw-1"]
    assert all(p.settings["acks"] == "all" and p.names() == ["init"] for p in made)
    await producers.revoked([RAW0])
    assert [p.stopped for p in made] == [True, False]
    with pytest.raises(Fenced):
        producers.producer(RAW0)


def test_a_batch_splits_by_input_partition_in_order() -> None:
    events = [("a", 1), ("b", 2), ("a", 3), ("c", 4), ("b", 5)]
    assert by_partition(events, lambda event: event[0]) == [
        [("a", 1), ("a", 3)],
        [("b", 2), ("b", 5)],
        [("c", 4)],
    ]


def test_the_guarantee_setting_accepts_the_two_names_and_unset() -> None:
    assert Settings.from_env({}).processing_guarantee is None
    for name in ("exactly_once", "at_least_once"):
        env = {"HOOKLINE_PROCESSING_GUARANTEE": name}
        assert Settings.from_env(env).processing_guarantee == name
    with pytest.raises(SettingsError, match="exactly_once"):
        Settings.from_env({"HOOKLINE_PROCESSING_GUARANTEE": "exactly-once"})


async def test_no_answer_about_transactions_is_an_error_not_at_least_once() -> None:
    """A cluster that cannot answer yet must not make a worker fall back to at least once."""
    from hookline.infra.broker import free_port
    from hookline.streams.exactly_once import TransactionsUnknown, broker_has_transactions

    nobody = {"bootstrap_servers": f"127.0.0.1:{free_port()}"}
    with pytest.raises(TransactionsUnknown, match="could not learn"):
        await broker_has_transactions(nobody, patience_s=1.0)
