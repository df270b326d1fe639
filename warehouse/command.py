"""``hookline sink``: its arguments, settings and start-up checks.

Importable without the ``warehouse`` extra (``hookline --help`` lists the
command everywhere); pyiceberg and pyarrow are imported only when it runs,
and their absence is one clear line, not a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import hashlib
import importlib.util
import logging
import os
import signal
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

from hookline.core.settings import Settings, SettingsError, _float, _int
from hookline.core.sources import ENVIRONMENTS

log = logging.getLogger("hookline.sink")

EXTRA_MISSING = (
    "`hookline sink` needs the warehouse extra (pyiceberg, pyarrow): "
    "pip install 'hookline[warehouse]' (from a checkout: pip install -e '.[warehouse]')"
)

SINK_ENV_HELP = """
sink settings (flags win over the environment):
  HOOKLINE_WAREHOUSE             default for --warehouse (else $HOOKLINE_DATA_DIR/warehouse)
  HOOKLINE_SINK_CATALOG          default for --catalog
  HOOKLINE_SINK_BATCH_ROWS       default for --batch-rows (50000)
  HOOKLINE_SINK_COMMIT_INTERVAL  default for --commit-interval (60 seconds)
  HOOKLINE_SINK_DECODERS         default for --decoders (2)
  PYICEBERG_CATALOG__<NAME>__*   the named catalog's configuration (pyiceberg's own),
                                 or ~/.pyiceberg.yaml; see docs/warehouse.md
"""


def warehouse_available() -> bool:
    """True when the ``warehouse`` extra is installed (``hookline run`` asks)."""
    return all(importlib.util.find_spec(m) is not None for m in ("pyiceberg", "pyarrow"))


def default_warehouse(env: dict[str, str] | os._Environ[str] | None = None) -> Path:
    env = os.environ if env is None else env
    if env.get("HOOKLINE_WAREHOUSE"):
        return Path(env["HOOKLINE_WAREHOUSE"])
    return Path(env.get("HOOKLINE_DATA_DIR") or ".hookline") / "warehouse"


def add_parser(sub: Any, epilog: str) -> None:
    parser = sub.add_parser(
        "sink",
        help="land orders.state, orders.changes and webhooks.events as Iceberg tables",
        description=(
            "Read <env>.orders.state, <env>.orders.changes and <env>.webhooks.events and "
            "write the Apache Iceberg tables <env>.orders_state (one row per order, its "
            "latest version), <env>.order_changes and <env>.webhook_events, exactly once "
            "across restarts and crashes. Start several: they share partitions as a consumer "
            "group and the tables through the catalog. Serves /metrics on --web-port. "
            "With --maintain it compacts, expires snapshots and exits (docs/warehouse.md)."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=SINK_ENV_HELP + epilog,
    )
    where = parser.add_mutually_exclusive_group()
    where.add_argument(
        "--warehouse",
        metavar="DIR",
        default=None,
        help="local warehouse: SQLite catalog 'hookline' at DIR/catalog.db, data files "
        "under DIR (default $HOOKLINE_WAREHOUSE, else $HOOKLINE_DATA_DIR/warehouse)",
    )
    where.add_argument(
        "--catalog",
        metavar="NAME",
        default=None,
        help="a catalog from pyiceberg's configuration (REST, Glue, SQL... with object "
        "storage) instead of a local folder",
    )
    parser.add_argument(
        "--environment",
        action="append",
        choices=ENVIRONMENTS,
        default=None,
        help="land only this environment (repeatable; default: all)",
    )
    parser.add_argument(
        "--batch-rows",
        type=int,
        default=None,
        help="commit when this many records are buffered (default 50000)",
    )
    parser.add_argument(
        "--commit-interval",
        type=float,
        default=None,
        metavar="SECONDS",
        help="commit when the oldest buffered record waited this long (default 60)",
    )
    parser.add_argument(
        "--decoders",
        type=int,
        default=None,
        metavar="N",
        help="processes that decode records into rows beside the sink's own (default 2; "
        "0: the sink decodes them itself; at most 64)",
    )
    parser.add_argument(
        "--group",
        default=None,
        help="Kafka consumer group (default: hookline-sink-<hash of the warehouse>, so sinks "
        "into one warehouse share partitions and sinks into another never take them)",
    )
    parser.add_argument(
        "--web-port", type=int, default=6067, help="port for /metrics (default 6067; 0: none)"
    )
    parser.add_argument("--web-host", default="127.0.0.1", help="bind address for /metrics")
    maintenance = parser.add_argument_group("maintenance (runs once, then exits)")
    maintenance.add_argument(
        "--maintain",
        action="store_true",
        help="compact small files, expire old snapshots, delete unreferenced files",
    )
    maintenance.add_argument(
        "--expire-after-hours",
        type=float,
        default=24.0,
        help="expire snapshots (and delete unreferenced files) older than this (default 24)",
    )
    maintenance.add_argument(
        "--compact-min-files",
        type=int,
        default=8,
        help="compact a day partition holding at least this many files (default 8)",
    )
    parser.set_defaults(func=cmd_sink, parser=parser)


def default_group(config: Any) -> str:
    """One consumer group per warehouse: a sink never takes partitions from another's."""
    where = f"catalog:{config.catalog_name}" if config.catalog_name else f"dir:{config.directory}"
    return f"hookline-sink-{hashlib.sha256(where.encode()).hexdigest()[:12]}"


def _fail(message: str) -> SystemExit:
    return SystemExit(f"hookline sink: {message}")


def cmd_sink(args: argparse.Namespace) -> int:
    if not warehouse_available():
        raise _fail(EXTRA_MISSING)
    from hookline.warehouse import maintenance, sink, tables
    from hookline.warehouse.rows import TABLES

    try:
        settings = Settings.from_env()
        batch_rows = (
            args.batch_rows
            if args.batch_rows is not None
            else _int(os.environ, "HOOKLINE_SINK_BATCH_ROWS", sink.DEFAULT_BATCH_ROWS)
        )
        interval = (
            args.commit_interval
            if args.commit_interval is not None
            else _float(os.environ, "HOOKLINE_SINK_COMMIT_INTERVAL", sink.DEFAULT_COMMIT_INTERVAL_S)
        )
        decoders = (
            args.decoders
            if args.decoders is not None
            else _int(
                os.environ,
                "HOOKLINE_SINK_DECODERS",
                sink.DEFAULT_DECODERS,
                minimum=0,
                maximum=sink.MAX_DECODERS,
            )
        )
    except SettingsError as exc:
        raise _fail(str(exc)) from None
    if not 0 <= decoders <= sink.MAX_DECODERS:
        args.parser.error(f"--decoders must be between 0 and {sink.MAX_DECODERS}")
    if batch_rows < 1 or interval <= 0:  # a usage error: exit 2, as argparse's own
        args.parser.error("--batch-rows and --commit-interval must be positive")
    if args.expire_after_hours <= 0 or args.compact_min_files < 2:
        args.parser.error("--expire-after-hours must be > 0 and --compact-min-files >= 2")
    catalog_name = args.catalog or os.environ.get("HOOKLINE_SINK_CATALOG") or None
    config = tables.WarehouseConfig(
        directory=None if catalog_name else Path(args.warehouse or default_warehouse()).resolve(),
        catalog_name=catalog_name,
    )
    environments = tuple(args.environment or ENVIRONMENTS)
    try:
        catalog = tables.open_catalog(config)
        if args.maintain:
            maintenance.maintain(  # logs one line per table
                catalog,
                environments,
                timedelta(hours=args.expire_after_hours),
                args.compact_min_files,
            )
            return 0
        for environment in environments:
            for table in TABLES:
                tables.ensure_table(catalog, table, environment)
    except tables.WarehouseError as exc:
        raise _fail(str(exc)) from None
    if not settings.bootstrap_servers:
        raise _fail(
            "KAFKA_BOOTSTRAP_SERVERS is not set; start a broker with `hookline broker` "
            "or use `hookline run`, which starts one (and a sink) for you"
        )
    group = args.group or default_group(config)
    log.info("warehouse: %s; consumer group %s", config.describe(), group)
    if args.web_port:
        from prometheus_client import start_http_server

        try:
            start_http_server(args.web_port, addr=args.web_host)
        except OSError as exc:
            where = f"{args.web_host}:{args.web_port}"
            raise _fail(f"cannot serve /metrics on {where}: {exc}") from None
        log.info("metrics on http://%s:%d/metrics", args.web_host, args.web_port)
    sink_config = sink.SinkConfig(
        bootstrap_servers=settings.bootstrap_servers,
        environments=environments,
        batch_rows=batch_rows,
        commit_interval_s=interval,
        group_id=group,
        session_timeout_s=settings.session_timeout_s,
        decoders=decoders,
    )
    # A batch is tens of thousands of rows of tuples, none in a reference
    # cycle: with the default thresholds the cyclic collector ran every 700
    # allocations and walked them again and again (a third of the sink's CPU).
    gc.freeze()
    gc.set_threshold(100_000, 50, 100)
    try:
        asyncio.run(_run(settings, sink.Sink(sink_config, catalog)))
    except sink.SinkError as exc:
        print(f"hookline sink: {exc}", file=sys.stderr, flush=True)
        return 1
    return 0


async def _run(settings: Settings, landing: Any) -> None:
    from hookline.cli import _ensure_worker_topics

    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, landing.stop)
    # The worker creates its topics too; whoever starts first creates them,
    # so the sink can subscribe before any worker ever ran.
    ensure = asyncio.create_task(_ensure_worker_topics(settings, check_raw_partitions=False))
    stopped = asyncio.create_task(landing.stopped())
    await asyncio.wait({ensure, stopped}, return_when=asyncio.FIRST_COMPLETED)
    stopped.cancel()
    if not ensure.done():  # stopped while Kafka never answered
        ensure.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await ensure
        return
    ensure.result()  # its failure is ours, never a "Task exception was never retrieved"
    await landing.run()
    log.info("sink stopped")


def add_query_parser(sub: Any, epilog: str) -> None:
    parser = sub.add_parser(
        "warehouse",
        help="query the sink's Iceberg tables with SQL (DuckDB, offline)",
        description="Look at the warehouse the sink (or `hookline run`) lands into.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=SINK_ENV_HELP + epilog,
    )
    commands = parser.add_subparsers(dest="warehouse_command", required=True, metavar="COMMAND")
    sql = commands.add_parser(
        "sql",
        help="run one SQL query over the tables and print the result",
        description=(
            "Run QUERY in DuckDB with the tables <env>.orders_state, <env>.order_changes and "
            "<env>.webhook_events (env: production, sandbox) read through the catalog: no "
            "download, no metadata file to find. Needs duckdb (in the test extra). A folder "
            "holding `hookline run`'s per-run warehouses means its newest run."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sql.add_argument("query", metavar="QUERY", help="e.g. 'SELECT * FROM production.orders_state'")
    where = sql.add_mutually_exclusive_group()
    where.add_argument("--warehouse", metavar="DIR", default=None, help="as for `hookline sink`")
    where.add_argument("--catalog", metavar="NAME", default=None, help="as for `hookline sink`")
    sql.add_argument("--csv", action="store_true", help="CSV with a header instead of a table")
    sql.set_defaults(func=cmd_warehouse_sql)


def newest_warehouse(folder: Path) -> Path | None:
    """``folder`` when it holds a catalog, else its newest subfolder that does (per-run ones)."""
    if (folder / "catalog.db").exists():
        return folder
    runs = sorted(p.parent for p in folder.glob("*/catalog.db"))
    return runs[-1] if runs else None


def cmd_warehouse_sql(args: argparse.Namespace) -> int:
    if not warehouse_available():
        raise SystemExit(f"hookline warehouse: {EXTRA_MISSING}")
    if importlib.util.find_spec("duckdb") is None:
        raise SystemExit("hookline warehouse: needs duckdb: pip install 'duckdb==1.4.4'")
    import csv

    import duckdb
    from hookline.warehouse import tables
    from hookline.warehouse.rows import TABLES

    catalog_name = args.catalog or os.environ.get("HOOKLINE_SINK_CATALOG") or None
    directory = None
    if not catalog_name:
        given = Path(args.warehouse or default_warehouse()).resolve()
        directory = newest_warehouse(given)
        if directory is None:
            raise SystemExit(f"hookline warehouse: no warehouse (catalog.db) in {given}")
        if directory != given:
            print(f"warehouse: {directory}", file=sys.stderr, flush=True)
    try:
        catalog = tables.open_catalog(tables.WarehouseConfig(directory, catalog_name))
        connection = duckdb.connect()
        connection.execute("SET TimeZone = 'UTC'")
        for environment in ENVIRONMENTS:
            connection.execute(f"CREATE SCHEMA IF NOT EXISTS {environment}")
            for table_def in TABLES:
                name = table_def.identifier(environment)
                if name not in args.query:  # read only the tables the query names
                    continue
                arrow = f"{environment}__{table_def.name}"
                connection.register(arrow, catalog.load_table(name).scan().to_arrow())
                # Names from TABLES and ENVIRONMENTS, never from the query.
                connection.execute(f"CREATE VIEW {name} AS SELECT * FROM {arrow}")  # noqa: S608
        result = connection.sql(args.query)
    except tables.WarehouseError as exc:
        raise SystemExit(f"hookline warehouse: {exc}") from None
    except duckdb.Error as exc:
        raise SystemExit(f"hookline warehouse: {exc}".splitlines()[0]) from None
    if result is None:
        return 0
    if args.csv:
        writer = csv.writer(sys.stdout)
        writer.writerow(result.columns)
        writer.writerows(result.fetchall())
    else:
        result.show(max_width=10_000, max_rows=10_000)
    return 0
