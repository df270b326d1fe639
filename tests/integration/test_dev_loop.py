"""``hookline run`` as a developer uses it: restarted, left idle, closed, run twice.

Each test starts the real supervisor (embedded broker, gateway, worker, sink)
through tests/support/hookline_run.py and checks what a developer would see.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from hookline.infra.broker import free_port
from hookline.infra.processes import stop_process
from pyiceberg.catalog.sql import SqlCatalog

from tests.support import traffic
from tests.support.hookline_run import RunningHookline, hookline_run
from tests.support.kafka import read_topics
from tests.support.signing import DEV


def _story(running: RunningHookline, order: str, tx: str) -> None:
    """An order's life on the partner source: checkout, active, confirmation, paid."""
    bodies = [
        traffic.checkout(tx, [order], "CREATED"),
        traffic.order_status(order, "ACTIVE", tx),
        traffic.confirmation(order, tx),
        traffic.checkout(tx, [order], "SUCCESS"),
    ]
    with httpx.Client(base_url=running.gateway_url, timeout=15) as client:
        for body in bodies:
            response = client.post(
                "/webhooks/partner",
                content=body,
                params={"token": DEV["PARTNER_SECRET"]},
                headers={"content-type": "application/json"},
            )
            assert response.status_code == 200, response.text


def _topics(running: RunningHookline, order: str) -> tuple[set[Any], set[Any]]:
    """(order_id, version) pairs of orders.changes and event ids of webhooks.events, once paid."""

    def paid(records: list[Any]) -> bool:
        return any(
            r.topic == "production.orders.changes"
            and r.key == order
            and r.value["after"]["payment_status"] == "SUCCEEDED"
            for r in records
        )

    records = asyncio.run(
        read_topics(
            running.bootstrap_servers,
            "production.orders.changes",
            "production.webhooks.events",
            until=paid,
            timeout=60,
            idle=2.0,
        )
    )
    changes = {
        (r.key, r.value["version"]) for r in records if r.topic == "production.orders.changes"
    }
    events = {r.value["event_id"] for r in records if r.topic == "production.webhooks.events"}
    return changes, events


def _tables(warehouse: Path) -> tuple[set[Any], set[Any]]:
    catalog = SqlCatalog(
        "hookline", uri=f"sqlite:///{warehouse / 'catalog.db'}", warehouse=warehouse.as_uri()
    )

    def rows(name: str) -> list[dict[str, Any]]:
        return catalog.load_table(f"production.{name}").scan().to_arrow().to_pylist()

    changes = {(row["order_id"], row["version"]) for row in rows("order_changes")}
    return changes, {row["event_id"] for row in rows("webhook_events")}


def _landed(warehouse: Path, expected: tuple[set[Any], set[Any]], timeout: float = 45) -> None:
    deadline = time.monotonic() + timeout
    while True:
        got = _tables(warehouse) if (warehouse / "catalog.db").exists() else (set(), set())
        if got[0] >= expected[0] and got[1] >= expected[1]:
            return
        if time.monotonic() > deadline:
            missing = (expected[0] - got[0], expected[1] - got[1])
            raise AssertionError(f"not in the tables of {warehouse}: {missing}")
        time.sleep(1.0)


def test_a_restarted_run_lands_every_change_of_its_second_story(tmp_path: Path) -> None:
    order, tx = "ord_restart_1", "tr_restart_1"
    with hookline_run(tmp_path) as first:
        _story(first, order, tx)
        for n in range(8):  # more records on the first broker than the second will have
            _story(first, f"ord_restart_extra_{n}", f"tr_restart_extra_{n}")
        expected = _topics(first, order)
        _landed(first.warehouse(), expected)
        first_warehouse = first.warehouse()
    with hookline_run(tmp_path) as second:  # same folder: same HOOKLINE_DATA_DIR
        assert second.warehouse() != first_warehouse
        _story(second, order, tx)
        expected = _topics(second, order)
        assert (order, 1) in expected[0]  # the same order ids again, from version 1
        _landed(second.warehouse(), expected)
        assert _tables(first_warehouse)[0] >= {(order, 1), (order, 4)}  # kept, readable

        # The first warehouse next to the second broker: the sink sees its topics end
        # below the offsets the tables hold and refuses, naming the cause.
        env = {k: v for k, v in os.environ.items() if not k.startswith(("KAFKA_", "HOOKLINE_"))}
        env.update(KAFKA_BOOTSTRAP_SERVERS=second.bootstrap_servers, HOOKLINE_PARTITIONS="4")
        sink = subprocess.run(
            [
                *(sys.executable, "-m", "hookline", "sink", "--warehouse", str(first_warehouse)),
                *("--web-port", "0", "--group", "refusal-check"),
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=90,
            check=False,
        )
    assert sink.returncode == 1, sink.stderr[-2000:]
    last = sink.stderr.strip().splitlines()[-1]
    assert last.startswith("hookline sink: production."), sink.stderr[-2000:]
    assert "below offset" in last
    assert "another Kafka cluster" in last


def test_busy_port_is_one_line_naming_the_port_and_its_flag(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {k: v for k, v in os.environ.items() if not k.startswith(("KAFKA_", "HOOKLINE_"))}
        env["HOOKLINE_DATA_DIR"] = str(tmp_path)
        for flag in ("--port", "--worker-web-port", "--sink-web-port", "--broker-port"):
            started = time.monotonic()
            result = subprocess.run(
                [sys.executable, "-m", "hookline", "run", flag, str(port)],
                env=env,
                capture_output=True,
                text=True,
                timeout=30,
                check=False,
            )
            assert result.returncode != 0
            assert result.stdout == ""
            lines = result.stderr.strip().splitlines()
            assert len(lines) == 1, result.stderr
            assert f"port {port}" in lines[0]
            assert f"{flag} PORT" in lines[0]
            assert time.monotonic() - started < 15  # nothing was started first
    assert not (tmp_path / "warehouse").exists()


def _descendants(pid: int) -> set[int]:
    """Every process below ``pid`` (by /proc parent links)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    found, frontier = set(), {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier}
        found |= frontier
    return found


def _alive(pids: set[int]) -> set[int]:
    alive = set()
    for pid in pids:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z":
            alive.add(pid)
    return alive


def test_closing_the_terminal_stops_everything(tmp_path: Path) -> None:
    with hookline_run(tmp_path) as running:
        children = _descendants(running.process.pid)
        assert len(children) >= 4  # broker, gateway, worker, sink
        running.process.send_signal(signal.SIGHUP)
        assert running.process.wait(60) is not None
    assert _alive(children) == set(), "left running after SIGHUP"


def test_a_closed_output_pipe_stops_everything(tmp_path: Path) -> None:
    """``hookline run 2>&1 | head``: once head has its lines, the pipe closes."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KAFKA_", "HOOKLINE_"))}
    env["HOOKLINE_DATA_DIR"] = str(tmp_path)
    ports = [str(free_port()) for _ in range(4)]
    process = subprocess.Popen(
        [
            *(sys.executable, "-m", "hookline", "run", "--port", ports[0]),
            *("--worker-web-port", ports[1], "--sink-web-port", ports[2]),
            *("--broker-port", ports[3]),
        ],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        assert process.stdout is not None
        for line in process.stdout:
            if b"Ctrl-C stops everything" in line:
                break
        children = _descendants(process.pid)
        assert len(children) >= 4
        process.stdout.close()  # the worker still logs its start: the next line fails
        assert process.wait(90) != 0
        assert _alive(children) == set(), "left running after its output pipe closed"
    finally:
        stop_process(process, timeout=30)


@pytest.mark.slow
def test_an_idle_run_logs_no_error_line(tmp_path: Path) -> None:
    """Idle after a story for twice the stall timeout (Faust's livelock checks), shortened."""
    with hookline_run(tmp_path, HOOKLINE_STALL_TIMEOUT="20") as running:
        _story(running, "ord_idle_1", "tr_idle_1")
        _landed(running.warehouse(), _topics(running, "ord_idle_1"))
        time.sleep(45)
        assert running.process.poll() is None
        errors = [line for line in running.lines() if " ERROR " in line or "Traceback" in line]
    assert errors == []


def test_a_standalone_sink_next_to_hookline_run_lands_everything_too(tmp_path: Path) -> None:
    """docs/warehouse.md's standalone sink beside `hookline run`: both warehouses complete."""
    order = "ord_standalone_1"
    with hookline_run(tmp_path) as running:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("KAFKA_", "HOOKLINE_"))}
        env.update(KAFKA_BOOTSTRAP_SERVERS=running.bootstrap_servers, PYTHONUNBUFFERED="1")
        standalone = tmp_path / "standalone"
        log = tmp_path / "sink.log"
        with open(log, "wb") as out:
            sink = subprocess.Popen(
                [
                    *(sys.executable, "-m", "hookline", "sink", "--warehouse", str(standalone)),
                    *("--web-port", "0", "--commit-interval", "1"),
                ],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            for n in range(4):
                _story(running, f"{order}_{n}", f"tr_standalone_{n}")
            expected = _topics(running, f"{order}_3")
            _landed(running.warehouse(), expected)
            _landed(standalone, expected)
            assert sink.poll() is None, log.read_text()
        finally:
            stop_process(sink, timeout=30)
        query = subprocess.run(
            [
                *(sys.executable, "-m", "hookline", "warehouse", "sql", "--csv"),
                "SELECT count(*) AS changes FROM production.order_changes",
                *("--warehouse", str(running.warehouse())),
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    text = log.read_text()
    assert "Task exception" not in text
    assert "partitions but HOOKLINE_PARTITIONS" not in text
    assert query.returncode == 0, query.stderr
    assert query.stdout.split() == ["changes", str(len(expected[0]))]
