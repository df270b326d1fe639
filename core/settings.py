"""Process-wide settings, read once from the environment.

Every command reads the same variables, so one table in the README documents
them all. Values are validated here so a typo fails at start, not at the first
webhook.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

DEV_SOURCES = Path(__file__).resolve().parent.parent / "infra" / "sources.dev.toml"


class SettingsError(ValueError):
    """A setting has a value hookline cannot use."""


def _int(
    env: Mapping[str, str], name: str, default: int, minimum: int = 1, maximum: int | None = None
) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(f"{name} must be an integer, got {raw!r}") from None
    if value < minimum:
        raise SettingsError(f"{name} must be >= {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise SettingsError(f"{name} must be <= {maximum}, got {value}")
    return value


#: Short for the embedded broker (see ``Settings.fetch_max_wait_ms``).
DEFAULT_FETCH_MAX_WAIT_MS = 20
#: Above this a fetch could outlive aiokafka's request timeout (40 s) on a
#: slow broker; no broker needs more than a few seconds to answer an empty one.
MAX_FETCH_WAIT_MS = 10_000


def _float(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise SettingsError(f"{name} must be a number, got {raw!r}") from None
    if value <= 0:
        raise SettingsError(f"{name} must be > 0, got {value}")
    return value


def _days_or_unlimited(env: Mapping[str, str], name: str, default: float | None) -> float | None:
    """A number of days, or ``unlimited`` (None: keep forever)."""
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    if raw.strip().lower() in ("unlimited", "forever", "-1"):
        return None
    return _float(env, name, 1.0)


def _bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    if raw.lower() in ("1", "true", "yes", "on"):
        return True
    if raw.lower() in ("0", "false", "no", "off"):
        return False
    raise SettingsError(f"{name} must be true or false, got {raw!r}")


@dataclass(frozen=True)
class Settings:
    """Everything configurable through environment variables (see README)."""

    bootstrap_servers: str | None = None
    #: None outside ``hookline run``: the gateway and the worker refuse to start
    #: rather than silently use the development sources.
    sources_path: Path | None = None
    partitions: int = 8
    replication_factor: int = 1
    publish_timeout_s: float = 5.0
    max_body_bytes: int = 1024 * 1024
    max_json_depth: int = 32
    store: str = "rocksdb"
    data_dir: Path = Path(".hookline")
    commit_interval_s: float = 1.0
    session_timeout_s: float = 30.0
    #: "exactly_once", "at_least_once", or None: exactly once where the
    #: broker has transactions (Apache Kafka), else at least once
    #: (streams/exactly_once.py).
    processing_guarantee: str | None = None
    #: Seconds an assigned input partition may go without progress (no fetch
    #: answered, nothing processed, nothing committed while records wait)
    #: before the worker logs an ERROR about it (Faust's livelock checks).
    stall_timeout_s: float = 300.0
    #: How long the worker's fetch waits on the broker for partitions with no
    #: new records (streams/transport.py). Kafka answers as soon as a record
    #: arrives, so 500 costs it no latency; the embedded broker answers only
    #: near the end of the wait, so the default is short, at the price of
    #: ~45 empty fetches a second on an idle worker.
    fetch_max_wait_ms: int = DEFAULT_FETCH_MAX_WAIT_MS
    #: None: as long as order_retention_days (a transaction fact must never
    #: miss an order that is still live).
    join_retention_days: float | None = None
    order_retention_days: float = 400.0
    #: None: unlimited. The raw topic is the system of record.
    raw_retention_days: float | None = None
    #: Events, changes, dead letters and internal topics.
    topic_retention_days: float = 30.0
    #: Faust's check that a RocksDB table is not ahead of its changelog. Off
    #: only for the embedded broker, whose end offsets are too low after
    #: multi-record batches (it would refuse to start on good state).
    recovery_consistency_check: bool = True
    #: A body must arrive whole this many seconds after the request's headers
    #: (408 otherwise): a sender that stalls mid-body holds nothing for long.
    body_timeout_s: float = 10.0
    #: Bytes of bodies held at once for senders not yet verified (HMAC, JWT,
    #: Standard Webhooks, none); past it 503, so unauthenticated clients
    #: cannot fill the gateway's memory.
    unverified_body_bytes: int = 64 * 1024 * 1024
    #: Serve /docs, /redoc and /openapi.json (turn off on the open internet).
    api_docs: bool = True

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        store = env.get("HOOKLINE_STORE", "rocksdb")
        if store not in ("rocksdb", "memory"):
            raise SettingsError(f"HOOKLINE_STORE must be 'rocksdb' or 'memory', got {store!r}")
        guarantee = env.get("HOOKLINE_PROCESSING_GUARANTEE") or None
        if guarantee not in (None, "exactly_once", "at_least_once"):
            raise SettingsError(
                "HOOKLINE_PROCESSING_GUARANTEE must be 'exactly_once' or 'at_least_once' "
                f"(unset: exactly once where the broker has transactions), got {guarantee!r}"
            )
        return cls(
            bootstrap_servers=env.get("KAFKA_BOOTSTRAP_SERVERS") or None,
            sources_path=Path(env["HOOKLINE_SOURCES"]) if env.get("HOOKLINE_SOURCES") else None,
            partitions=_int(env, "HOOKLINE_PARTITIONS", 8),
            replication_factor=_int(env, "HOOKLINE_REPLICATION_FACTOR", 1),
            publish_timeout_s=_float(env, "HOOKLINE_PUBLISH_TIMEOUT", 5.0),
            max_body_bytes=_int(env, "HOOKLINE_MAX_BODY_BYTES", 1024 * 1024),
            max_json_depth=_int(env, "HOOKLINE_MAX_JSON_DEPTH", 32),
            store=store,
            data_dir=Path(env.get("HOOKLINE_DATA_DIR") or ".hookline"),
            commit_interval_s=_float(env, "HOOKLINE_COMMIT_INTERVAL", 1.0),
            session_timeout_s=_float(env, "HOOKLINE_SESSION_TIMEOUT", 30.0),
            processing_guarantee=guarantee,
            stall_timeout_s=_float(env, "HOOKLINE_STALL_TIMEOUT", 300.0),
            fetch_max_wait_ms=_int(
                env,
                "HOOKLINE_FETCH_MAX_WAIT_MS",
                DEFAULT_FETCH_MAX_WAIT_MS,
                maximum=MAX_FETCH_WAIT_MS,
            ),
            join_retention_days=(
                _float(env, "HOOKLINE_JOIN_RETENTION_DAYS", 1.0)
                if env.get("HOOKLINE_JOIN_RETENTION_DAYS")
                else None
            ),
            order_retention_days=_float(env, "HOOKLINE_ORDER_RETENTION_DAYS", 400.0),
            raw_retention_days=_days_or_unlimited(env, "HOOKLINE_RAW_RETENTION_DAYS", None),
            topic_retention_days=_float(env, "HOOKLINE_TOPIC_RETENTION_DAYS", 30.0),
            recovery_consistency_check=_bool(env, "HOOKLINE_RECOVERY_CONSISTENCY_CHECK", True),
            body_timeout_s=_float(env, "HOOKLINE_BODY_TIMEOUT", 10.0),
            unverified_body_bytes=_int(
                env, "HOOKLINE_UNVERIFIED_BODY_BYTES", 64 * 1024 * 1024, minimum=1024
            ),
            api_docs=_bool(env, "HOOKLINE_API_DOCS", True),
        )

    @property
    def effective_join_retention_days(self) -> float:
        """The join keeps its state at least as long as the orders do, by default."""
        if self.join_retention_days is None:
            return self.order_retention_days
        return self.join_retention_days

    @property
    def max_record_bytes(self) -> int:
        """A raw record: the body at its limit plus the envelope's other fields."""
        return self.max_body_bytes + 64 * 1024

    def require_sources(self) -> Path:
        if self.sources_path is None:
            raise SettingsError(
                "HOOKLINE_SOURCES is not set: point it at your sources file (see README, "
                f"Sources); `hookline run` uses the development file {DEV_SOURCES} by itself"
            )
        return self.sources_path

    def require_bootstrap(self) -> str:
        if not self.bootstrap_servers:
            raise SettingsError(
                "KAFKA_BOOTSTRAP_SERVERS is not set; start a broker with `hookline broker` "
                "or use `hookline run`, which starts one for you"
            )
        return self.bootstrap_servers
