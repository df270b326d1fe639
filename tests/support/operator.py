"""For the redrive and replay tests: raw records as the gateway writes them, commands as processes.

Raw records are partitioned here with aiokafka's partitioner over
``hookline.core.adapters.ordering_key``, independently of hookline/raw_publisher.py,
so a test can check that a re-published copy lands where the original is.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from aiokafka import AIOKafkaProducer
from aiokafka.partitioner import DefaultPartitioner
from hookline.core.adapters import ordering_key
from hookline.core.settings import DEV_SOURCES
from hookline.core.sources import Source, load_sources
from hookline.infra.broker import free_port
from hookline.infra.processes import ServiceProcess

from tests.support import traffic
from tests.support.signing import DEV

REPO = Path(__file__).resolve().parents[2]
PARTITIONER = DefaultPartitioner()
SOURCES: dict[str, Source] = load_sources(DEV_SOURCES, DEV)


@dataclass(frozen=True)
class Produced:
    delivery_id: str
    source: str
    partition: int
    received_at: int


async def produce_raw(bootstrap: str, items: list[tuple[str, bytes, int]]) -> list[Produced]:
    """(source name, body, received_at ms) -> records on ``<env>.webhooks.raw``, in order."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=False)
    await producer.start()
    produced = []
    try:
        for name, body, received_at in items:
            source = SOURCES[name]
            topic = f"{source.environment}.webhooks.raw"
            partitions = sorted(await producer.partitions_for(topic))
            key, value = traffic.raw_record(source, body, received_at_ms=received_at)
            order_key = ordering_key(source.kind, json.loads(body)).encode()
            partition = PARTITIONER(order_key, partitions, partitions)
            await producer.send_and_wait(topic, value, key=key, partition=partition)
            produced.append(Produced(key.decode(), name, partition, received_at))
    finally:
        await producer.stop()
    return produced


def hookline(
    env: dict[str, str], *args: str, timeout: float = 90
) -> subprocess.CompletedProcess[str]:
    """``hookline ARGS`` as an operator runs it; output captured as text."""
    return subprocess.run(
        [sys.executable, "-m", "hookline", *args],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def patched_worker(env: dict[str, str], log_dir: Path, mode: str) -> ServiceProcess:
    """A worker started through tests/support/patched_worker.py; ready at /readyz."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    return ServiceProcess(
        f"worker-{mode}",
        [
            sys.executable,
            "-m",
            "tests.support.patched_worker",
            mode,
            "worker",
            "--web-port",
            str(port),
        ],
        env,
        log_dir / f"worker-{mode}-{port}.log",
        url + "/readyz",
        cwd=REPO,
    )
