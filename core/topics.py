"""Every Kafka topic hookline reads or writes: names, policies, creation.

Names are the contract of PRODUCT.md section 3; each is prefixed by the
environment so sandbox traffic can never share a topic with production.
Internal topics (repartitioning and table changelogs) carry ``hookline`` in
their name and are nobody else's business.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError

log = logging.getLogger(__name__)

DAY_MS = 86_400_000
_TOPIC_ALREADY_EXISTS = 36


def raw(env: str) -> str:
    return f"{env}.webhooks.raw"


def events(env: str) -> str:
    return f"{env}.webhooks.events"


def deadletter(env: str) -> str:
    return f"{env}.webhooks.deadletter"


def orders_state(env: str) -> str:
    return f"{env}.orders.state"


def orders_changes(env: str) -> str:
    return f"{env}.orders.changes"


def orders_rejected(env: str) -> str:
    """Facts the order state rules refused (RejectedFact), keyed by order id."""
    return f"{env}.orders.rejected"


def transaction_facts(env: str) -> str:
    """Transaction facts and order memberships, keyed by transaction id."""
    return f"{env}.hookline.transaction-facts"


def order_inputs(env: str) -> str:
    """Order facts and transaction status updates, keyed by order id."""
    return f"{env}.hookline.order-inputs"


def changelog(env: str, table: str) -> str:
    return f"{env}.hookline.{table}-changelog"


@dataclass(frozen=True)
class TopicSpec:
    name: str
    compacted: bool = False
    retention_ms: int | None = None
    configs: dict[str, str] = field(default_factory=dict)

    def topic_configs(self) -> dict[str, str]:
        configs = {"cleanup.policy": "compact" if self.compacted else "delete"}
        if self.retention_ms is not None and not self.compacted:
            configs["retention.ms"] = str(self.retention_ms)
        configs.update(self.configs)
        return configs


TABLES = ("dedup", "transactions", "orders")


def gateway_topics(
    env: str, raw_retention_days: float | None, max_record_bytes: int
) -> list[TopicSpec]:
    """The raw topic: the system of record, kept forever unless a retention is set."""
    return [
        TopicSpec(
            raw(env),
            retention_ms=-1 if raw_retention_days is None else int(raw_retention_days * DAY_MS),
            # A body at the gateway's limit must fit (Kafka's default is ~1 MB).
            configs={"max.message.bytes": str(max_record_bytes)},
        )
    ]


def worker_topics(env: str, retention_days: float, max_record_bytes: int) -> list[TopicSpec]:
    retention = int(retention_days * DAY_MS)
    return [
        TopicSpec(events(env), retention_ms=retention),
        # A dead letter carries the whole raw body: room for one at the limit.
        TopicSpec(
            deadletter(env),
            retention_ms=retention,
            configs={"max.message.bytes": str(max_record_bytes + 16 * 1024)},
        ),
        TopicSpec(orders_state(env), compacted=True),
        TopicSpec(orders_changes(env), retention_ms=retention),
        TopicSpec(orders_rejected(env), retention_ms=retention),
        TopicSpec(transaction_facts(env), retention_ms=retention),
        TopicSpec(order_inputs(env), retention_ms=retention),
        *(TopicSpec(changelog(env, t), compacted=True) for t in TABLES),
    ]


async def partition_counts(
    bootstrap: str, names: Iterable[str], timeout_s: float = 30.0
) -> dict[str, int]:
    """Partitions of each existing topic among ``names``."""
    wanted = set(names)
    admin = AIOKafkaAdminClient(
        bootstrap_servers=bootstrap, request_timeout_ms=int(timeout_s * 1000)
    )
    await asyncio.wait_for(admin.start(), timeout_s)
    try:
        described = await admin.describe_topics(sorted(wanted))
    finally:
        await admin.close()
    return {
        topic["topic"]: len(topic["partitions"])
        for topic in described
        if topic["topic"] in wanted and topic.get("error_code", 0) == 0 and topic["partitions"]
    }


async def partitions_of(
    consumer: Any, bootstrap: str, names: Iterable[str], timeout_s: float = 30.0
) -> dict[str, list[int]]:
    """The partition ids of each topic in ``names``, for a consumer that assigns them.

    The consumer's metadata first; for a topic it does not know, the cluster
    itself: a consumer with no subscription may hold metadata of no topic at
    all (Apache Kafka answers a Metadata request for the topics asked; Tansu
    lists every topic), and one that assigned nothing would read nothing.
    """
    found = {name: sorted(consumer.partitions_for_topic(name) or ()) for name in names}
    lacking = [name for name, partitions in found.items() if not partitions]
    if lacking:
        counts = await partition_counts(bootstrap, lacking, timeout_s)
        found.update({name: list(range(counts.get(name, 0))) for name in lacking})
    return found


async def ensure_topics(
    bootstrap: str,
    specs: Iterable[TopicSpec],
    partitions: int,
    replication_factor: int,
    timeout_s: float = 30.0,
) -> list[str]:
    """Create the missing topics; return the names created.

    Existing topics are left alone (hookline never alters a topic it did not
    just create), so a cluster operator's changes survive restarts.
    """
    specs = list(specs)
    admin = AIOKafkaAdminClient(
        bootstrap_servers=bootstrap, request_timeout_ms=int(timeout_s * 1000)
    )
    await asyncio.wait_for(admin.start(), timeout_s)
    try:
        existing = set(await admin.list_topics())
        missing = [s for s in specs if s.name not in existing]
        if not missing:
            return []
        response = await admin.create_topics(
            [
                NewTopic(s.name, partitions, replication_factor, topic_configs=s.topic_configs())
                for s in missing
            ],
            timeout_ms=int(timeout_s * 1000),
        )
        created = []
        for name, code, message in response.topic_errors:
            if code == 0:
                created.append(name)
            elif code != _TOPIC_ALREADY_EXISTS:  # another replica won the race
                raise KafkaError(f"creating topic {name} failed: error {code} {message}")
        if created:
            log.info("created topics %s (%d partitions)", ", ".join(sorted(created)), partitions)
        return created
    finally:
        await admin.close()
