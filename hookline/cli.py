"""The ``hookline`` command: run, gateway, worker, broker, tail, redrive, replay, schemas, sink.

Every subcommand reads KAFKA_BOOTSTRAP_SERVERS and HOOKLINE_SOURCES (plus the
HOOKLINE_* settings listed in the README) from the environment.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import os
import signal
import sys
import time
from collections.abc import Sequence
from typing import Any

from hookline.core.settings import Settings, SettingsError
from hookline.core.sources import ENVIRONMENTS, SourcesError, load_sources

log = logging.getLogger("hookline")

ENV_HELP = """
environment:
  KAFKA_BOOTSTRAP_SERVERS  host:port[,host:port...] of the Kafka cluster
                           (unset: `run` starts an embedded broker)
  HOOKLINE_SOURCES         sources file; gateway, worker, redrive and replay need it
                           (unset: `run` and `send` use infra/sources.dev.toml)
  HOOKLINE_*               further settings, see the README's settings table
"""


def _configure_logging(verbose: bool) -> None:
    """Text or JSON lines (HOOKLINE_LOG_FORMAT), the same in every process; see hookline.logs."""
    from hookline import logs

    try:
        logs.configure(verbose)
    except logs.LogFormatError as exc:
        raise SystemExit(f"hookline: {exc}") from None


def _settings() -> Settings:
    try:
        return Settings.from_env()
    except SettingsError as exc:
        raise SystemExit(f"hookline: {exc}") from None


def _check_sources(settings: Settings, with_secrets: bool) -> None:
    try:
        load_sources(settings.require_sources(), with_secrets=with_secrets)
    except (SourcesError, SettingsError) as exc:
        raise SystemExit(f"hookline: {exc}") from None


def cmd_broker(args: argparse.Namespace) -> int:
    from pathlib import Path

    from hookline.infra.broker import BrokerError, EmbeddedBroker
    from hookline.infra.kafka_cluster import KafkaCluster, kafka_version

    broker: EmbeddedBroker | KafkaCluster
    if args.kafka:
        if args.host != "127.0.0.1" or args.log_file:
            raise SystemExit("hookline: --kafka listens on 127.0.0.1 and logs to .hookline/")
        broker = KafkaCluster(nodes=args.nodes, port=args.port, log_dir=Path(".hookline"))
        try:
            broker.start()
        except BrokerError as exc:  # KafkaUnavailable too: no Java 17, no jars and no mvn
            raise SystemExit(f"hookline: {exc}") from None
        except KeyboardInterrupt:  # start() has stopped the nodes it launched
            return 130
        ready = (
            f"Apache Kafka {kafka_version()} ({args.nodes} KRaft node"
            f"{'s' if args.nodes > 1 else ''}, data in a temporary folder) ready; "
            f"logs: .hookline/kafka-{broker.port}-node*.log; Ctrl-C stops it"
        )
    else:
        if args.nodes != 1:
            raise SystemExit("hookline: --nodes needs --kafka (Tansu runs one node)")
        broker = EmbeddedBroker(port=args.port, host=args.host, log_path=args.log_file)
        broker.start()
        ready = f"embedded broker (Tansu, in memory) ready; log: {broker.log_path}; Ctrl-C stops it"
    print(f"KAFKA_BOOTSTRAP_SERVERS={broker.bootstrap_servers}", flush=True)
    print(ready, file=sys.stderr, flush=True)
    stop = {"signal": False}

    def on_signal(signum: int, frame: object) -> None:
        stop["signal"] = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        while not stop["signal"]:
            if not broker.alive():
                print("hookline: broker exited unexpectedly", file=sys.stderr)
                return 1
            time.sleep(0.2)
    finally:
        broker.stop()
    return 0


def cmd_gateway(args: argparse.Namespace) -> int:
    from hookline.gateway.app import create_app
    from hookline.gateway.server import serve

    settings = _settings()
    if not settings.bootstrap_servers:
        _missing_bootstrap()
    _check_sources(settings, with_secrets=True)
    serve(
        create_app(settings),
        args.host,
        args.port,
        args.forwarded_allow_ips,
        metrics_port=args.metrics_port,
        metrics_host=args.metrics_host,
    )
    return 0


def _missing_bootstrap() -> None:
    raise SystemExit(
        "hookline: KAFKA_BOOTSTRAP_SERVERS is not set. Start a broker with "
        "`hookline broker`, or use `hookline run`, which starts one for you."
    )


async def _ensure_worker_topics(settings: Settings, check_raw_partitions: bool = True) -> None:
    """Create hookline's topics when missing; the worker also needs raw's partition count."""
    from aiokafka.errors import KafkaError

    from hookline.core import topics

    max_record = settings.max_record_bytes
    specs = [
        spec
        for env in ENVIRONMENTS
        for spec in (
            topics.worker_topics(env, settings.topic_retention_days, max_record)
            + topics.gateway_topics(env, settings.raw_retention_days, max_record)
        )
    ]
    attempt = 0
    while True:
        attempt += 1
        try:
            await topics.ensure_topics(
                settings.require_bootstrap(),
                specs,
                settings.partitions,
                settings.replication_factor,
            )
            counts = await topics.partition_counts(
                settings.require_bootstrap(), [topics.raw(env) for env in ENVIRONMENTS]
            )
            break
        except (KafkaError, OSError, TimeoutError) as exc:
            if attempt == 1 or attempt % 10 == 0:
                log.warning("waiting for Kafka at %s (%s)", settings.bootstrap_servers, exc)
            await asyncio.sleep(1.0)
    # Deduplication runs on raw and keeps its table in raw's partitions: the
    # gateway puts every retry of a delivery in one raw partition, so the
    # table must have exactly as many. (The sink reads any partition count.)
    for name, count in sorted(counts.items()) if check_raw_partitions else ():
        if count != settings.partitions:
            raise SystemExit(
                f"hookline: topic {name} has {count} partitions but HOOKLINE_PARTITIONS is "
                f"{settings.partitions}; the worker's tables are partitioned like the raw "
                f"topic, so set HOOKLINE_PARTITIONS={count} (or recreate the topic)."
            )


def cmd_worker(args: argparse.Namespace) -> int:
    import faust
    import uvloop

    from hookline import logs
    from hookline.streams.app import create_app, use_guarantee

    settings = _settings()
    if not settings.bootstrap_servers:
        _missing_bootstrap()
    _check_sources(settings, with_secrets=False)
    asyncio.run(_ensure_worker_topics(settings))
    (settings.data_dir / "worker").mkdir(parents=True, exist_ok=True)
    # The worker's time is mostly per-record asyncio machinery (futures,
    # callbacks, socket writes, the consumer thread waking the loop): on
    # uvloop its CPU per delivery is lower (docs/performance.md). Set before
    # Faust creates its loops, the consumer thread's included.
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    app = create_app(settings, web_port=args.web_port, web_host=args.web_host)
    use_guarantee(app, settings, _processing_guarantee(settings, app))
    worker = faust.Worker(
        app,
        loglevel="DEBUG" if args.verbose else "INFO",
        quiet=True,
        # Faust replaces the root logging setup; give it ours (text or JSON lines).
        logging_config=logs.dict_config(args.verbose),
    )
    _collect_less_often()
    worker.execute_from_commandline()
    return 0


def _processing_guarantee(settings: Settings, app: Any) -> Any:
    """The guarantee in force (a ``Guarantee``), said on the worker's first lines."""
    from hookline.streams.client_settings import worker_client_settings
    from hookline.streams.exactly_once import (
        Guarantee,
        TransactionsUnsupported,
        resolve_guarantee,
    )

    try:
        guarantee = asyncio.run(
            resolve_guarantee(
                settings.processing_guarantee, worker_client_settings(app, "transactions-probe")
            )
        )
    except TransactionsUnsupported as exc:
        raise SystemExit(f"hookline: {exc}") from None
    if guarantee is Guarantee.EXACTLY_ONCE:
        log.info(
            "processing guarantee: exactly_once (Kafka transactions; consumers reading "
            "read_committed see each order version once)"
        )
    else:
        reason = (
            "as configured"
            if settings.processing_guarantee
            else "the broker has no transactions (the embedded broker has none)"
        )
        log.info(
            "processing guarantee: at_least_once (%s): after a crash a consumer may read "
            "an order version again",
            reason,
        )
    return guarantee


#: Allocations between two young collections (CPython's default: 700), and
#: young collections per middle one, middle per old one (default: 10, 10).
WORKER_GC_THRESHOLDS = (20_000, 20, 20)


def _collect_less_often() -> None:
    """Freeze what start-up built and collect the young generation less often.

    Every delivery allocates a few hundred short-lived containers (events,
    dicts, futures): with CPython's default threshold the cyclic collector
    ran every few deliveries and walked the young generation each time, and
    its full collections walked every module, class and table object built
    at start-up. Frozen, those are no longer walked; the thresholds make the
    young collections rarer (garbage without cycles is freed at once anyway).
    In alternating bench runs this took 15 % off the CPU per delivery
    (docs/performance.md).
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(*WORKER_GC_THRESHOLDS)


def cmd_run(args: argparse.Namespace) -> int:
    from hookline.supervisor import run_all

    return run_all(
        gateway_port=args.port,
        worker_web_port=args.worker_web_port,
        broker_port=args.broker_port,
        sink_web_port=args.sink_web_port,
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hookline",
        description="Provider webhooks in, trustworthy Kafka streams of order state out.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=ENV_HELP,
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser(
        "run",
        help="everything on one machine: broker (if needed), gateway, a worker and a sink",
        description=(
            "Start an embedded Kafka-protocol broker when KAFKA_BOOTSTRAP_SERVERS is unset, "
            "then the gateway, one worker and (with the warehouse extra) a sink, with the dev "
            "sources file unless HOOKLINE_SOURCES is set. Every port is checked first. With the "
            "embedded broker, which starts empty, each run lands in a new warehouse folder "
            "under $HOOKLINE_DATA_DIR/warehouse/. Ctrl-C, SIGTERM, SIGHUP or a closed output "
            "pipe stops everything: gateway first, then the worker (which commits), the sink, "
            "then the broker."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=ENV_HELP,
    )
    run.add_argument("--port", type=int, default=8000, help="gateway port (default 8000)")
    run.add_argument(
        "--worker-web-port", type=int, default=6066, help="worker /metrics port (default 6066)"
    )
    run.add_argument(
        "--broker-port", type=int, default=None, help="embedded broker port (default: a free port)"
    )
    run.add_argument(
        "--sink-web-port",
        type=int,
        default=6067,
        help="warehouse sink /metrics port (default 6067; the sink runs when the "
        "warehouse extra is installed)",
    )
    run.set_defaults(func=cmd_run)

    gw = sub.add_parser(
        "gateway",
        help="the HTTP gateway: verify webhooks and publish them to Kafka",
        description=(
            "Serve POST /webhooks/{source}, /healthz, /readyz and /metrics. "
            "Needs KAFKA_BOOTSTRAP_SERVERS and the secrets named in the sources file."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=ENV_HELP,
    )
    gw.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    gw.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    gw.add_argument(
        "--forwarded-allow-ips",
        default=None,
        help="trust X-Forwarded-For from these proxy addresses (for allow_ips behind a proxy)",
    )
    gw.add_argument(
        "--metrics-port",
        type=int,
        default=None,
        help="serve /metrics on this port instead of the public one (default: "
        "HOOKLINE_GATEWAY_METRICS_PORT; unset: on the public port)",
    )
    gw.add_argument("--metrics-host", default="127.0.0.1", help="bind address for --metrics-port")
    gw.set_defaults(func=cmd_gateway)

    wk = sub.add_parser(
        "worker",
        help="a stream worker: normalize, deduplicate, join, emit order state",
        description=(
            "Run one Faust worker. Start as many as you like: they share partitions as the "
            "consumer group 'hookline'. Serves /metrics, /healthz and /readyz on --web-port."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=ENV_HELP,
    )
    wk.add_argument(
        "--web-port",
        type=int,
        default=6066,
        help="port for /metrics, /healthz, /readyz (default 6066)",
    )
    wk.add_argument("--web-host", default="127.0.0.1", help="bind address for /metrics")
    wk.set_defaults(func=cmd_worker)

    br = sub.add_parser(
        "broker",
        help="the embedded Kafka-protocol broker (Tansu, in memory) or Apache Kafka, foreground",
        description=(
            "Start Tansu (or, with --kafka, Apache Kafka in KRaft mode) on loopback and print "
            "KAFKA_BOOTSTRAP_SERVERS=host:port[,...]. Data is gone when it stops. "
            "For development and tests only."
        ),
    )
    br.add_argument("--port", type=int, default=None, help="port (default: a free port)")
    br.add_argument("--host", default="127.0.0.1", help="address (default 127.0.0.1)")
    br.add_argument(
        "--log-file", default=None, help="broker log (default .hookline/broker-PORT.log)"
    )
    br.add_argument(
        "--kafka",
        action="store_true",
        help="Apache Kafka (KRaft, pinned in infra/kafka/pom.xml; needs Java 17+, and Maven "
        "the first time, to fetch the jars) instead of Tansu",
    )
    br.add_argument(
        "--nodes",
        type=int,
        default=1,
        choices=range(1, 10),
        metavar="N",
        help="with --kafka: N nodes, replication factor N, min.insync.replicas min(N, 2)",
    )
    br.set_defaults(func=cmd_broker)

    from hookline import order_story, redrive, replay, schema_commands, send, tail
    from hookline.warehouse import command as sink_command

    tail.add_parser(sub, ENV_HELP)
    order_story.add_parser(sub, ENV_HELP)
    redrive.add_parser(sub, ENV_HELP)
    replay.add_parser(sub, ENV_HELP)
    schema_commands.add_parser(sub)
    sink_command.add_parser(sub, ENV_HELP)
    send.add_parser(sub, ENV_HELP)
    sink_command.add_query_parser(sub, ENV_HELP)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _configure_logging(args.verbose)
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    return int(args.func(args) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
