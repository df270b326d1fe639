"""The Faust application: settings, pipelines for every environment, /metrics.

Production defaults: RocksDB tables (``HOOKLINE_STORE=rocksdb``) whose
changelogs are compacted topics, ``acks=all``, offsets reset to *earliest*
(never latest: a new consumer group must not skip data), no standby replicas
(a restarted or reassigned partition recovers from its changelog).
"""

from __future__ import annotations

import faust
from hookline.core import topics
from hookline.core.settings import Settings
from hookline.core.sources import ENVIRONMENTS, load_sources
from hookline.streams.client_settings import worker_client_settings
from hookline.streams.exactly_once import Guarantee, PartitionProducers
from hookline.streams.metrics import WorkerMetrics
from hookline.streams.pipeline import DAY_MS, EnvironmentPipeline, PipelineConfig
from prometheus_client import CONTENT_TYPE_LATEST, disable_created_metrics, generate_latest

APP_ID = "hookline"
DEAD_LETTER_OVERHEAD = 16 * 1024  # stage, reason (<= 1000 chars), timestamps

disable_created_metrics()  # *_created series only add noise to every scrape


#: Records one poll hands to the stages (Faust's ``broker_max_poll_records``).
MAX_POLL_RECORDS = 500


def create_app(
    settings: Settings | None = None,
    web_port: int = 6066,
    web_host: str = "127.0.0.1",
    metrics: WorkerMetrics | None = None,
) -> faust.App:
    """The worker's app, at least once until :func:`use_guarantee` says otherwise."""
    settings = settings or Settings.from_env()
    bootstrap = settings.require_bootstrap()
    sources = load_sources(settings.require_sources(), with_secrets=False)
    metrics = metrics or WorkerMetrics()
    servers = [server.strip() for server in bootstrap.split(",")]
    app = faust.App(
        APP_ID,
        broker=[f"kafka://{server}" for server in servers],
        # Same cluster, consumed through streams/transport.py (short fetch wait).
        broker_consumer=[f"hookline://{server}" for server in servers],
        # Room for a dead letter carrying a body at the gateway's limit.
        producer_max_request_size=settings.max_record_bytes + DEAD_LETTER_OVERHEAD,
        store="rocksdb://" if settings.store == "rocksdb" else "memory://",
        datadir=str(settings.data_dir / "worker"),
        topic_partitions=settings.partitions,
        topic_replication_factor=settings.replication_factor,
        topic_allow_declare=True,
        consumer_auto_offset_reset="earliest",
        broker_commit_interval=settings.commit_interval_s,
        broker_session_timeout=settings.session_timeout_s,
        stream_processing_timeout=settings.stall_timeout_s,
        broker_commit_livelock_soft_timeout=settings.stall_timeout_s,
        broker_heartbeat_interval=min(3.0, settings.session_timeout_s / 3),
        producer_acks=-1,
        # A batch's outputs are sent in one burst and awaited together: a few
        # milliseconds of linger turn them into a few produce requests.
        producer_linger=0.004,
        producer_max_batch_size=256 * 1024,
        table_standby_replicas=0,
        recovery_consistency_check=settings.recovery_consistency_check,
        stream_wait_empty=True,
        # A fetch returns up to 1 MB per partition (thousands of raw records)
        # and Faust hands a whole poll to the streams before polling again:
        # the records of the next hop (order-inputs) waited behind every raw
        # record of the first fetch. A poll of at most 500 records lets them in
        # after a few hundred (a burst's first order state ~100 ms sooner).
        broker_max_poll_records=MAX_POLL_RECORDS,
        web_enabled=True,
        web_port=web_port,
        web_host=web_host,
        web_bind=web_host,
    )
    config = PipelineConfig(
        partitions=settings.partitions,
        join_retention_ms=int(settings.effective_join_retention_days * DAY_MS),
        order_retention_ms=int(settings.order_retention_days * DAY_MS),
        max_json_depth=settings.max_json_depth,
        fence_dir=settings.data_dir / "worker" / "fences" if settings.store == "rocksdb" else None,
    )
    # Read by streams/transport.py when it creates the consumer.
    app.hookline_fetch_max_wait_ms = settings.fetch_max_wait_ms  # type: ignore[attr-defined]
    app.hookline_metrics = metrics  # type: ignore[attr-defined]
    use_guarantee(app, settings, Guarantee.AT_LEAST_ONCE)
    app.hookline_pipelines = [  # type: ignore[attr-defined]
        EnvironmentPipeline(app, env, config, sources, metrics) for env in ENVIRONMENTS
    ]
    metrics.watch_lag(app)

    @app.page("/metrics")
    async def prometheus_metrics(
        web: faust.web.Web, request: faust.web.Request
    ) -> faust.web.Response:
        # aiohttp refuses a charset inside content_type=, so set the header itself.
        return web.bytes(
            generate_latest(metrics.registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )

    @app.page("/healthz")
    async def healthz(web: faust.web.Web, request: faust.web.Request) -> faust.web.Response:
        return web.json({"status": "ok"})

    @app.page("/readyz")
    async def readyz(web: faust.web.Web, request: faust.web.Request) -> faust.web.Response:
        """Ready: partitions assigned, tables recovered, not rebalancing."""
        ready = (
            not app.rebalancing
            and not app.in_recovery
            and app.tables.recovery.completed.is_set()
            and bool(app.consumer.assignment())
        )
        return web.json({"ready": ready}, status=200 if ready else 503)

    return app


def use_guarantee(app: faust.App, settings: Settings, guarantee: Guarantee) -> None:
    """Set the processing guarantee, before the worker starts (hookline/cli.py resolves it).

    Exactly once: the pipelines and the consumer find the transactional
    producers in ``app.hookline_transactions`` (None: at least once).
    """
    app.hookline_transactions = (  # type: ignore[attr-defined]
        _partition_producers(app, settings) if guarantee is Guarantee.EXACTLY_ONCE else None
    )
    app.hookline_metrics.processing_guarantee.state(guarantee.value)  # type: ignore[attr-defined]


def _partition_producers(app: faust.App, settings: Settings) -> PartitionProducers:
    """The transactional producers of exactly-once mode, configured as Faust's own producer."""

    inputs = {
        name
        for env in ENVIRONMENTS
        for name in (topics.raw(env), topics.transaction_facts(env), topics.order_inputs(env))
    }
    return PartitionProducers(
        group=APP_ID,
        client_settings=lambda: worker_client_settings(app, "transactions"),
        is_input=inputs.__contains__,
        producer_settings={
            "acks": "all",
            "linger_ms": 4,
            "max_batch_size": 256 * 1024,
            "max_request_size": settings.max_record_bytes + DEAD_LETTER_OVERHEAD,
            "request_timeout_ms": int(settings.publish_timeout_s * 1000 * 6),
        },
    )
