"""Shared fixtures: one broker per test session, environments for hookline processes.

Broker choice (DEVELOPERS.md): KAFKA_BOOTSTRAP_SERVERS if set, else
testcontainers' Kafka when a Docker engine answers, else an embedded Tansu.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from hookline.core.settings import DEV_SOURCES

from hookline.supervisor import dev_secrets
from tests.support.broker import TestBroker, test_broker

TESTS = Path(__file__).resolve().parent
TEST_SOURCES = TESTS / "sources.test.toml"
#: A standard-webhooks secret (base64 of 32 bytes) for tests only.
STDHOOKS_SECRET = "whsec_MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "/integration/" in str(item.fspath):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def log_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("logs")


@pytest.fixture(scope="session")
def broker(log_dir: Path) -> Iterator[TestBroker]:
    with test_broker(log_dir) as found:
        yield found


def hookline_env(bootstrap: str, data_dir: Path, **overrides: str) -> dict[str, str]:
    """The environment a hookline process gets in tests."""
    env = dict(os.environ)
    env.update(dev_secrets())
    env.update(
        KAFKA_BOOTSTRAP_SERVERS=bootstrap,
        HOOKLINE_SOURCES=str(DEV_SOURCES),
        HOOKLINE_PARTITIONS="4",
        HOOKLINE_STORE="memory",
        HOOKLINE_DATA_DIR=str(data_dir),
        HOOKLINE_SESSION_TIMEOUT="6",
        HOOKLINE_COMMIT_INTERVAL="1",
        STDHOOKS_SECRET=STDHOOKS_SECRET,
        PYTHONUNBUFFERED="1",
    )
    env.update(overrides)
    return env
