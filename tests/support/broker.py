"""Which broker the tests talk to: KAFKA_BOOTSTRAP_SERVERS, else testcontainers'
Kafka when a Docker engine answers, else an embedded Tansu on a free port."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from hookline.infra.broker import EmbeddedBroker


@dataclass
class TestBroker:
    __test__ = False  # not a test class, despite the name
    bootstrap_servers: str
    kind: str  # "external" | "testcontainers" | "tansu"
    embedded: EmbeddedBroker | None = None


def _docker_answers() -> bool:
    try:
        import docker

        client = docker.from_env(timeout=2)
        client.ping()
        return True
    except Exception:
        return False


@contextlib.contextmanager
def test_broker(log_dir: Path) -> Iterator[TestBroker]:
    external = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if external:
        yield TestBroker(external, "external")
        return
    if _docker_answers():
        from testcontainers.kafka import KafkaContainer

        with KafkaContainer() as kafka:
            yield TestBroker(kafka.get_bootstrap_server(), "testcontainers")
        return
    broker = EmbeddedBroker(log_path=log_dir / "tansu.log")
    with broker:
        yield TestBroker(broker.bootstrap_servers, "tansu", embedded=broker)
