"""HOOKLINE_FETCH_MAX_WAIT_MS: read, bounded, and what the worker's Kafka consumer is built with."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import pytest
from hookline.core.settings import DEFAULT_FETCH_MAX_WAIT_MS, DEV_SOURCES, Settings, SettingsError
from hookline.streams.app import create_app
from hookline.streams.transport import fetch_max_wait_ms


def test_default_is_the_short_wait_the_embedded_broker_needs() -> None:
    assert Settings.from_env({}).fetch_max_wait_ms == DEFAULT_FETCH_MAX_WAIT_MS == 20


def test_an_app_not_built_by_create_app_fetches_with_the_default() -> None:
    assert fetch_max_wait_ms(object()) == 20


@pytest.mark.parametrize("value", ["1", "500", "10000"])
def test_a_wait_within_bounds_is_taken(value: str) -> None:
    settings = Settings.from_env({"HOOKLINE_FETCH_MAX_WAIT_MS": value})
    assert settings.fetch_max_wait_ms == int(value)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("0", ">= 1"),
        ("10001", "<= 10000"),
        ("0.5", "integer"),
        ("soon", "integer"),
    ],
)
def test_a_wait_out_of_bounds_is_a_clear_error(value: str, message: str) -> None:
    with pytest.raises(SettingsError, match="HOOKLINE_FETCH_MAX_WAIT_MS") as raised:
        Settings.from_env({"HOOKLINE_FETCH_MAX_WAIT_MS": value})
    assert message in str(raised.value)


@pytest.mark.parametrize("wait_ms", [20, 500])
def test_the_worker_consumer_fetches_with_the_configured_wait(wait_ms: int) -> None:
    """Through the real app and transport: the aiokafka consumer Faust's thread creates."""

    async def build() -> int:
        settings = replace(
            Settings.from_env(
                {
                    "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:9",  # never contacted
                    "HOOKLINE_STORE": "memory",
                    "HOOKLINE_FETCH_MAX_WAIT_MS": str(wait_ms),
                }
            ),
            sources_path=DEV_SOURCES,
        )
        app = create_app(settings)
        # The consumer Faust's thread makes for the worker, and what the seam set on it.
        thread = app.consumer._thread  # type: ignore[attr-defined]  # noqa: SLF001
        consumer = thread._create_worker_consumer(app.consumer.transport)  # noqa: SLF001
        try:
            return int(consumer._fetch_max_wait_ms)  # noqa: SLF001
        finally:
            await consumer.stop()

    assert asyncio.run(build()) == wait_ms
