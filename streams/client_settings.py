"""The connection and security settings every Kafka client a worker makes shares.

Faust makes the worker's consumer and producer itself; the worker adds its
own clients beside them (the end-offset probe, the membership check, the
transactional producers). Each must reach the same cluster the same way: the
same bootstrap servers and every security setting aiokafka takes (SSL, and
each SASL mechanism: PLAIN, SCRAM, GSSAPI, OAUTHBEARER). Copying some of
them by hand left GSSAPI and OAUTHBEARER clusters unreachable for the extra
clients, so they all take their settings from :func:`worker_client_settings`.

Invariant: the settings come from the app's configuration through the very
conversion Faust applies to its own consumer and producer
(``credentials_to_aiokafka_auth`` and ``server_list`` in
``faust.transport.drivers.aiokafka``), so an extra client can never reach the
cluster differently from the consumer beside it.
"""

from __future__ import annotations

from typing import Any

from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth, server_list

#: The keyword arguments :func:`worker_client_settings` may return: the ones
#: ``AIOKafkaClient``, ``AIOKafkaConsumer`` and ``AIOKafkaProducer`` all accept.
SHARED_KEYS = frozenset(
    {
        "bootstrap_servers",
        "client_id",
        "security_protocol",
        "ssl_context",
        "sasl_mechanism",
        "sasl_plain_username",
        "sasl_plain_password",
        "sasl_kerberos_service_name",
        "sasl_kerberos_domain_name",
        "sasl_oauth_token_provider",
    }
)


def worker_client_settings(app: Any, purpose: str | None = None) -> dict[str, Any]:
    """Keyword arguments for any aiokafka client the worker makes besides Faust's own.

    Bootstrap servers (the consumer transport's), the client id (suffixed with
    ``-{purpose}`` when one is given, so a broker's logs tell the clients
    apart) and every security setting Faust gives its own consumer. Only keys
    that ``AIOKafkaClient``, ``AIOKafkaConsumer`` and ``AIOKafkaProducer`` all
    accept (:data:`SHARED_KEYS`): no consumer-only or producer-only setting.
    """
    conf = app.conf
    transport = app.transport
    client_id = conf.broker_client_id
    settings: dict[str, Any] = {
        "bootstrap_servers": server_list(transport.url, transport.default_port),
        "client_id": f"{client_id}-{purpose}" if purpose else client_id,
        **credentials_to_aiokafka_auth(conf.broker_credentials, conf.ssl_context),
    }
    unexpected = settings.keys() - SHARED_KEYS
    if unexpected:  # a Faust upgrade added a setting: decide where it belongs
        raise TypeError(f"client settings not shared by every aiokafka client: {unexpected}")
    return settings
