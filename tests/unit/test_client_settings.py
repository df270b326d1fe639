"""Every client a worker makes reaches the cluster as Faust's consumer does."""

from __future__ import annotations

import inspect
import ssl
from typing import Any

import faust
import pytest
from aiokafka import AIOKafkaClient, AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.abc import AbstractTokenProvider
from faust.auth import GSSAPICredentials, OAuthCredentials, SASLCredentials, SSLCredentials
from hookline.streams.client_settings import SHARED_KEYS, worker_client_settings


class TokenProvider(AbstractTokenProvider):
    async def token(self) -> str:
        return "token"


def app_with(**conf: Any) -> faust.App:
    return faust.App(
        "client-settings-test",
        broker=["kafka://b1:9093", "kafka://b2"],
        store="memory://",
        broker_client_id="hookline-worker",
        **conf,
    )


def test_oauthbearer_keeps_the_token_provider() -> None:
    provider = TokenProvider()
    context = ssl.create_default_context()
    app = app_with(broker_credentials=OAuthCredentials(oauth_cb=provider, ssl_context=context))
    settings = worker_client_settings(app, "end-offsets")
    assert settings["sasl_mechanism"] == "OAUTHBEARER"
    assert settings["sasl_oauth_token_provider"] is provider
    assert settings["security_protocol"] == "SASL_SSL"
    assert settings["ssl_context"] is context
    assert settings["bootstrap_servers"] == ["b1:9093", "b2:9092"]
    assert settings["client_id"] == "hookline-worker-end-offsets"


def test_gssapi_keeps_the_kerberos_names() -> None:
    app = app_with(
        broker_credentials=GSSAPICredentials(
            kerberos_service_name="kafka-prod", kerberos_domain_name="kdc.example"
        )
    )
    settings = worker_client_settings(app)
    assert settings["sasl_mechanism"] == "GSSAPI"
    assert settings["security_protocol"] == "SASL_PLAINTEXT"
    assert settings["sasl_kerberos_service_name"] == "kafka-prod"
    assert settings["sasl_kerberos_domain_name"] == "kdc.example"
    assert settings["client_id"] == "hookline-worker"


@pytest.mark.parametrize(
    ("credentials", "expected"),
    [
        (
            SASLCredentials(username="u", password="p", mechanism="SCRAM-SHA-512"),
            {"sasl_plain_username": "u", "sasl_plain_password": "p"},
        ),
        (SSLCredentials(ssl.create_default_context()), {"security_protocol": "SSL"}),
        (None, {"security_protocol": "PLAINTEXT"}),
    ],
)
def test_other_credentials(credentials: Any, expected: dict[str, Any]) -> None:
    settings = worker_client_settings(app_with(broker_credentials=credentials))
    assert expected.items() <= settings.items()


@pytest.mark.parametrize("client", [AIOKafkaClient, AIOKafkaConsumer, AIOKafkaProducer])
def test_only_settings_every_client_accepts(client: type) -> None:
    assert inspect.signature(client).parameters.keys() >= SHARED_KEYS


async def test_every_client_takes_the_settings() -> None:
    settings = worker_client_settings(
        app_with(broker_credentials=OAuthCredentials(oauth_cb=TokenProvider()))
    )
    AIOKafkaClient(**settings)
    AIOKafkaConsumer(**settings)
    AIOKafkaProducer(**settings)  # constructed, never started: no broker needed


async def test_the_settings_are_the_worker_consumers() -> None:
    """What Faust's consumer thread gives the worker's consumer, key for key (client_id aside)."""
    app = app_with(
        broker_credentials=OAuthCredentials(
            oauth_cb=TokenProvider(), ssl_context=ssl.create_default_context()
        )
    )
    thread = app.consumer._thread  # type: ignore[attr-defined]  # noqa: SLF001
    consumer = thread._create_worker_consumer(app.transport)  # noqa: SLF001
    try:
        client = consumer._client  # noqa: SLF001
        settings = worker_client_settings(app, "probe")
        for key, value in settings.items():
            if key != "client_id":
                assert getattr(client, f"_{key}") == value, key
        assert settings["client_id"] == f"{client._client_id}-probe"  # noqa: SLF001
    finally:
        await consumer.stop()
