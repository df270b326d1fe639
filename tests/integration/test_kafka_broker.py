"""``hookline broker --kafka``: a real three-node Apache Kafka, its replication, a clean Ctrl-C."""

from __future__ import annotations

import asyncio
import os
import select
import signal
import subprocess
import sys
from pathlib import Path

from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from tests.support.broker import require


def _first_line(process: subprocess.Popen[str], timeout: float) -> str:
    assert process.stdout is not None
    ready, _, _ = select.select([process.stdout], [], [], timeout)
    assert ready, f"nothing printed within {timeout:g}s"
    return process.stdout.readline()


def _children(pid: int) -> list[int]:
    found = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True, check=False)
    return [int(p) for p in found.stdout.split()]


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


async def _replication(bootstrap: str, topic: str) -> tuple[list[int], str]:
    """Write one record with acks=all to a new topic; its replicas and min.insync.replicas."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        await producer.send_and_wait(topic, b"value", key=b"key")
    finally:
        await producer.stop()
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        [described] = await admin.describe_topics([topic])
        [configs] = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic)])
    finally:
        await admin.close()
    entries = {entry[0]: entry[1] for entry in configs.resources[0][4]}
    return sorted(described["partitions"][0]["replicas"]), entries["min.insync.replicas"]


def test_three_nodes_replicate_every_topic_and_ctrl_c_stops_them_all(tmp_path: Path) -> None:
    require("kafka")
    process = subprocess.Popen(
        [sys.executable, "-m", "hookline", "broker", "--kafka", "--nodes", "3"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        line = _first_line(process, timeout=180)
        if not line:  # it exited
            assert process.stderr is not None
            raise AssertionError(f"exited with {process.wait()}: {process.stderr.read()}")
        assert line.startswith("KAFKA_BOOTSTRAP_SERVERS="), line
        servers = line.strip().split("=", 1)[1].split(",")
        assert len(servers) == 3
        assert all(server.startswith("127.0.0.1:") for server in servers)
        nodes = _children(process.pid)
        assert len(nodes) == 3, nodes

        replicas, min_isr = asyncio.run(_replication(",".join(servers), "replicated"))
        assert replicas == [1, 2, 3]
        assert min_isr == "2"

        process.send_signal(signal.SIGINT)  # what Ctrl-C sends
        assert process.wait(timeout=60) == 0
        assert not [pid for pid in nodes if _running(pid)]
        assert sorted(p.name for p in (tmp_path / ".hookline").iterdir()) == [
            f"kafka-{servers[0].split(':')[1]}-node{n}.log" for n in (1, 2, 3)
        ]
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_without_java_a_one_line_error(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "JAVA_HOME"}
    env["PATH"] = str(tmp_path)  # no java, no mvn
    done = subprocess.run(
        [sys.executable, "-m", "hookline", "broker", "--kafka"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1
    assert done.stdout == ""
    assert done.stderr.strip().splitlines() == [
        "hookline: Apache Kafka needs Java 17 or newer: no java on PATH (or JAVA_HOME); "
        "install it, e.g. apt-get install openjdk-17-jre-headless"
    ]
