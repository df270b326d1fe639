"""The brokers the tests talk to: every broker-touching test runs on each kind.

``tansu``: the embedded Tansu on a free port (infra/broker.py). ``kafka``: Apache
Kafka, a single KRaft node from the pinned jars (infra/kafka_cluster.py), or the
cluster at KAFKA_BOOTSTRAP_SERVERS when that is set. Without Java 17+ (or, before
the jars are cached, Maven) the ``kafka`` half is skipped, except under CI=true,
where it fails: CI always runs both.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from hookline.infra.broker import EmbeddedBroker
from hookline.infra.kafka_cluster import KafkaCluster, KafkaUnavailable, check_available

#: The broker kinds, in the order the session runs them (each starts once).
KINDS = ("tansu", "kafka")
#: Broker settings of the tests' Kafka beyond infra/kafka_cluster.py's: consumer
#: sessions down to 1 s (Kafka's default minimum is 6 s), as tests that kill a
#: consumer use short sessions to keep restarts quick.
TEST_KAFKA_SETTINGS = {"group.min.session.timeout.ms": "1000"}


@dataclass
class TestBroker:
    __test__ = False  # not a test class, despite the name
    bootstrap_servers: str
    kind: str  # "tansu" | "kafka"
    embedded: EmbeddedBroker | None = None
    cluster: KafkaCluster | None = None  # None for an external cluster


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def require(kind: str) -> None:
    """Skip the calling test (fail it under CI=true) when ``kind`` cannot run here."""
    if kind != "kafka" or os.environ.get("KAFKA_BOOTSTRAP_SERVERS"):
        return
    try:
        check_available(fetch=True)
    except KafkaUnavailable as exc:
        if in_ci():
            pytest.fail(f"CI runs every broker test on Apache Kafka too: {exc}", pytrace=False)
        pytest.skip(f"Apache Kafka cannot run here: {exc}")


@contextlib.contextmanager
def running_broker(kind: str, log_dir: Path, name: str) -> Iterator[TestBroker]:
    """A running broker of ``kind``, logs in ``log_dir`` named after ``name``: the
    session's, or a module's own (one that kills members of group ``hookline``).
    For ``kafka``, KAFKA_BOOTSTRAP_SERVERS's cluster when that is set."""
    if kind == "tansu":
        with EmbeddedBroker(log_path=log_dir / f"tansu-{name}.log") as tansu:
            yield TestBroker(tansu.bootstrap_servers, kind, embedded=tansu)
        return
    if kind != "kafka":
        raise ValueError(f"unknown broker kind {kind!r}")
    external = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if external:
        yield TestBroker(external, kind)
        return
    with KafkaCluster(log_dir=log_dir / f"kafka-{name}", settings=TEST_KAFKA_SETTINGS) as cluster:
        yield TestBroker(cluster.bootstrap_servers, kind, cluster=cluster)
