"""A local Apache Kafka (KRaft) of 1 to N nodes on loopback, from pinned jars, no Docker.

The jars are the runtime classpath of ``infra/kafka/pom.xml``, copied by Maven
on first use into a cache outside the repository
(``$XDG_CACHE_HOME/hookline/kafka/<version>-<pom digest>/lib``, by default under
``~/.cache``); a changed pom gets a new folder. Each node is one JVM in combined
mode (broker and controller), listening on 127.0.0.1 only, its data in a temporary
folder removed when the cluster stops. With N nodes every topic defaults to
replication factor N and ``min.insync.replicas`` min(N, 2), internal topics
included, so a 3-node cluster keeps acknowledging writes with one node down.

This is the real broker the tests run against besides Tansu (infra/broker.py);
it is for laptops and CI, never production.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from types import TracebackType

from hookline.infra.broker import BrokerError, free_port, kafka_answers

POM = Path(__file__).resolve().parent / "kafka" / "pom.xml"
#: The JVM options of every node: a small heap and the serial collector keep
#: three nodes and the test processes within 2 cores; C1 only starts faster.
JVM_OPTIONS = (
    "-Xms128m",
    "-Xmx512m",
    "-XX:+UseSerialGC",
    "-XX:TieredStopAtLevel=1",
    "-XX:+ExitOnOutOfMemoryError",
    "-Djava.awt.headless=true",
    "-Djava.net.preferIPv4Stack=true",
)
_LOG4J2 = """\
status = warn
appender.out.type = Console
appender.out.name = out
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.out.ref = out
logger.state.name = state.change.logger
logger.state.level = WARN
logger.request.name = kafka.request.logger
logger.request.level = WARN
"""
HOST = "127.0.0.1"


class _PortTaken(BrokerError):
    """A node could not bind a port picked free a moment before: start again elsewhere."""


class KafkaUnavailable(BrokerError):
    """Java 17+ is missing, or the jars are not cached and cannot be fetched.

    Its message is one line, fit to print as the whole error.
    """


def kafka_version() -> str:
    """The pinned Apache Kafka version (``kafka.version`` in infra/kafka/pom.xml)."""
    found = re.search(r"<kafka\.version>([^<]+)</kafka\.version>", POM.read_text())
    if not found:
        raise KafkaUnavailable(f"no <kafka.version> in {POM}")
    return found.group(1).strip()


def cache_dir() -> Path:
    """Where this pom's jars live: a folder per Kafka version and pom content."""
    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    digest = hashlib.sha256(POM.read_bytes()).hexdigest()[:12]
    return root / "hookline" / "kafka" / f"{kafka_version()}-{digest}"


def java_command() -> str:
    """The ``java`` of JAVA_HOME, else of PATH, checked to be Java 17 or newer."""
    home = os.environ.get("JAVA_HOME")
    java = str(Path(home) / "bin" / "java") if home else shutil.which("java")
    if not java or not Path(java).exists():
        raise KafkaUnavailable(
            "Apache Kafka needs Java 17 or newer: no java on PATH (or JAVA_HOME); "
            "install it, e.g. apt-get install openjdk-17-jre-headless"
        )
    try:
        done = subprocess.run(
            [java, "-version"], capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise KafkaUnavailable(
            f"Apache Kafka needs Java 17 or newer: {java} failed: {exc}"
        ) from None
    found = re.search(r'version "(\d+)(?:\.(\d+))?', done.stderr + done.stdout)
    major = int(found.group(1)) if found else 0
    if major == 1 and found and found.group(2):  # "1.8.0_x" is Java 8
        major = int(found.group(2))
    if major < 17:
        raise KafkaUnavailable(
            f"Apache Kafka needs Java 17 or newer; {java} is "
            f"{'version ' + str(major) if major else 'of an unknown version'}"
        )
    return java


def classpath(fetch: bool = True) -> str:
    """The broker's classpath, fetching the jars with Maven when not cached yet.

    The copy goes to a sibling folder renamed into place when complete, so a
    cache folder that exists always holds the whole classpath.
    """
    target = cache_dir()
    lib = target / "lib"
    if not lib.is_dir():
        if not fetch:
            raise KafkaUnavailable(f"Apache Kafka's jars are not cached in {target}")
        mvn = shutil.which("mvn")
        if not mvn:
            raise KafkaUnavailable(
                f"Apache Kafka's jars are not cached in {target} and fetching them needs "
                "Maven: no mvn on PATH (apt-get install maven)"
            )
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
        try:
            done = subprocess.run(
                [
                    mvn,
                    *("-q", "-B", "-f", str(POM)),
                    "dependency:copy-dependencies",
                    "-DincludeScope=runtime",
                    f"-DoutputDirectory={staging / 'lib'}",
                ],
                capture_output=True,
                text=True,
                check=False,
            )
            if done.returncode != 0:
                last = (done.stdout + done.stderr).strip().splitlines()[-1:] or ["no output"]
                raise KafkaUnavailable(
                    f"fetching Apache Kafka's jars with Maven failed ({done.returncode}): {last[0]}"
                )
            try:
                staging.rename(target)
            except OSError:
                if not lib.is_dir():  # not another process that finished first
                    raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return str(lib / "*")


def check_available(fetch: bool = True) -> None:
    """Raise KafkaUnavailable (one line) unless a node could start: Java 17+ and the jars."""
    java_command()
    classpath(fetch)


def _cluster_id() -> str:
    """A Kafka cluster id: a random UUID, base64url without padding, not starting with '-'."""
    while True:
        text = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        if not text.startswith("-"):
            return text


def live_brokers(host: str, port: int, timeout: float = 1.0) -> int:
    """How many unfenced brokers the node on host:port knows (Metadata v4, no topics); -1 when
    it does not answer. A broker answers ApiVersions before it is unfenced, so readiness
    needs this too: topics with replication factor N need N live brokers."""
    client_id = b"hookline-probe"
    # header v1: api_key=3 (Metadata), api_version=4, correlation_id, client_id;
    # body: topics = [] (none), allow_auto_topic_creation = false
    body = struct.pack(">hhih", 3, 4, 11, len(client_id)) + client_id + struct.pack(">ib", 0, 0)
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.settimeout(timeout)
            sock.sendall(struct.pack(">i", len(body)) + body)
            size = struct.unpack(">i", _read(sock, 4))[0]
            answer = _read(sock, size)
            correlation, _throttle, brokers = struct.unpack(">iii", answer[:12])
    except (OSError, struct.error):
        return -1
    return brokers if correlation == 11 else -1


def _read(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise OSError("connection closed")
        data += chunk
    return data


class KafkaNode:
    """One combined broker+controller JVM of a KafkaCluster: ports, config, process."""

    def __init__(self, node_id: int, port: int, controller_port: int, home: Path) -> None:
        self.node_id = node_id
        self.port = port
        self.controller_port = controller_port
        self.home = home
        self.config = home / "server.properties"
        self.process: subprocess.Popen[bytes] | None = None

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None


class KafkaCluster:
    """Apache Kafka on loopback, ``nodes`` KRaft combined nodes; a context manager.

    ``port`` is the first node's client port (default: free); the others take
    free ports. Logs go to ``log_dir`` (default: the temporary folder, removed on
    stop), one file per node. ``stop_node``/``start_node``/``kill_node`` act on one
    node and keep its data, for restarts within the cluster's life.
    """

    def __init__(
        self,
        nodes: int = 1,
        port: int | None = None,
        log_dir: Path | None = None,
        ready_timeout: float = 120.0,
        settings: dict[str, str] | None = None,
    ) -> None:
        if nodes < 1:
            raise ValueError("a cluster has at least one node")
        self.size = nodes
        self.first_port = port
        self.log_dir = Path(log_dir) if log_dir else None
        self.ready_timeout = ready_timeout
        self.settings = dict(settings or {})
        self.nodes: list[KafkaNode] = []
        self._tmp: Path | None = None
        self._java = ""
        self._classpath = ""

    @property
    def bootstrap_servers(self) -> str:
        return ",".join(f"{HOST}:{node.port}" for node in self.nodes)

    @property
    def port(self) -> int:
        return self.nodes[0].port

    def log_path(self, node: KafkaNode) -> Path:
        return (self.log_dir or node.home) / f"kafka-{self.nodes[0].port}-node{node.node_id}.log"

    def broker_settings(self, node: KafkaNode) -> dict[str, str]:
        """server.properties of one node; ``settings`` given to the cluster override these."""
        replicas = str(self.size)
        min_isr = str(min(self.size, 2))
        voters = ",".join(f"{n.node_id}@{HOST}:{n.controller_port}" for n in self.nodes)
        props = {
            "process.roles": "broker,controller",
            "node.id": str(node.node_id),
            "controller.quorum.voters": voters,
            "listeners": f"PLAINTEXT://{HOST}:{node.port},CONTROLLER://{HOST}:{node.controller_port}",
            "advertised.listeners": f"PLAINTEXT://{HOST}:{node.port}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "log.dirs": str(node.home / "data"),
            "num.partitions": "1",
            "default.replication.factor": replicas,
            "min.insync.replicas": min_isr,
            "offsets.topic.replication.factor": replicas,
            "offsets.topic.num.partitions": "8",
            "transaction.state.log.replication.factor": replicas,
            "transaction.state.log.min.isr": min_isr,
            "transaction.state.log.num.partitions": "8",
            "share.coordinator.state.topic.replication.factor": replicas,
            "share.coordinator.state.topic.min.isr": min_isr,
            "group.initial.rebalance.delay.ms": "0",
            "log.cleaner.backoff.ms": "1000",
            "num.network.threads": "2",
            "num.io.threads": "4",
            "num.recovery.threads.per.data.dir": "1",
            "auto.create.topics.enable": "true",
            "unclean.leader.election.enable": "false",
        }
        props.update(self.settings)
        return props

    def start(self) -> KafkaCluster:
        """Start every node and wait until all are live; on failure nothing is left running.

        Ports are picked free and then bound by the JVMs seconds later, so another
        process may take one meanwhile: such a start is retried on fresh ports.
        """
        if self.nodes:
            raise BrokerError("Kafka cluster already started")
        self._java = java_command()
        self._classpath = classpath()
        for attempt in range(1, 4):
            try:
                return self._start_once()
            except _PortTaken as exc:
                if attempt == 3:
                    raise BrokerError(str(exc)) from None
        raise AssertionError("unreachable")

    def _start_once(self) -> KafkaCluster:
        self._tmp = Path(tempfile.mkdtemp(prefix="hookline-kafka-"))
        if self.log_dir:
            self.log_dir.mkdir(parents=True, exist_ok=True)
        (self._tmp / "log4j2.properties").write_text(_LOG4J2)
        taken: set[int] = set()
        for node_id in range(1, self.size + 1):
            wanted = self.first_port if node_id == 1 else None
            port = wanted or _fresh_port(taken)
            taken.add(port)
            controller = _fresh_port(taken)
            taken.add(controller)
            home = self._tmp / f"node{node_id}"
            home.mkdir()
            self.nodes.append(KafkaNode(node_id, port, controller, home))
        for node in self.nodes:
            if kafka_answers(HOST, node.port, timeout=0.2):
                self.nodes = []
                self._cleanup()
                raise BrokerError(f"something already serves Kafka on {HOST}:{node.port}")
        try:
            self._format()
            for node in self.nodes:
                self._launch(node)
            self._wait_ready(self.nodes)
        except BaseException:
            self.stop()
            raise
        return self

    def _java_args(self, main: str, *args: str) -> list[str]:
        assert self._tmp is not None
        return [
            self._java,
            *JVM_OPTIONS,
            f"-Dlog4j2.configurationFile={self._tmp / 'log4j2.properties'}",
            "-cp",
            self._classpath,
            main,
            *args,
        ]

    def _format(self) -> None:
        """``StorageTool format`` every node's data folder with one cluster id, in parallel."""
        cluster_id = _cluster_id()
        running = []
        for node in self.nodes:
            node.config.write_text(
                "".join(f"{k}={v}\n" for k, v in self.broker_settings(node).items())
            )
            command = self._java_args(
                "kafka.tools.StorageTool", "format", "-t", cluster_id, "-c", str(node.config)
            )
            running.append(
                subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
            )
        for process in running:
            output, _ = process.communicate(timeout=120)
            if process.returncode != 0:
                text = output.decode(errors="replace").strip()
                raise BrokerError(f"kafka StorageTool format failed ({process.returncode}): {text}")

    def _launch(self, node: KafkaNode) -> None:
        with open(self.log_path(node), "ab") as log:
            # Own session: a Ctrl-C in the terminal reaches the supervisor, which
            # stops the nodes after the clients.
            node.process = subprocess.Popen(
                self._java_args("kafka.Kafka", str(node.config)),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def _wait_ready(self, nodes: list[KafkaNode]) -> None:
        """Until every given node answers with all nodes of the cluster live (unfenced)."""
        deadline = time.monotonic() + self.ready_timeout
        waiting = list(nodes)
        while waiting:
            for node in list(waiting):
                if node.process is not None and node.process.poll() is not None:
                    log = self.log_path(node)
                    text = log.read_text(errors="replace") if log.exists() else ""
                    failure = _PortTaken if "Address already in use" in text else BrokerError
                    raise failure(
                        f"Kafka node {node.node_id} exited with {node.process.returncode} "
                        f"at start; see {self.log_path(node)}"
                    )
                if live_brokers(HOST, node.port, timeout=0.5) >= self.size:
                    waiting.remove(node)
            if not waiting:
                return
            if time.monotonic() > deadline:
                raise BrokerError(
                    f"Kafka not ready after {self.ready_timeout:g}s; "
                    f"see {self.log_path(waiting[0])}"
                )
            time.sleep(0.1)

    def node(self, node_id: int) -> KafkaNode:
        return self.nodes[node_id - 1]

    def stop_node(self, node_id: int, timeout: float = 30.0) -> int | None:
        """SIGTERM one node (a controlled shutdown), SIGKILL after ``timeout``."""
        return _stop([self.node(node_id)], timeout)[0]

    def kill_node(self, node_id: int) -> None:
        """SIGKILL one node: no controlled shutdown, unflushed writes lost."""
        node = self.node(node_id)
        if node.alive() and node.process is not None:
            node.process.kill()
            node.process.wait()

    def start_node(self, node_id: int) -> None:
        """Start a stopped node again on its ports and data; return once the cluster has all
        its nodes live again."""
        node = self.node(node_id)
        if node.alive():
            raise BrokerError(f"Kafka node {node_id} is running")
        self._launch(node)
        self._wait_ready([node])

    def stop(self, timeout: float = 30.0) -> None:
        """Stop every node (SIGTERM together, SIGKILL after ``timeout``), remove the data."""
        nodes, self.nodes = self.nodes, []
        _stop(nodes, timeout)
        self._cleanup()

    def _cleanup(self) -> None:
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None

    def alive(self) -> bool:
        """Every node is running."""
        return bool(self.nodes) and all(node.alive() for node in self.nodes)

    def __enter__(self) -> KafkaCluster:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def _fresh_port(taken: set[int]) -> int:
    while True:
        port = free_port(HOST)
        if port not in taken:
            return port


def _stop(nodes: list[KafkaNode], timeout: float) -> list[int | None]:
    """SIGTERM all given nodes at once, wait for them until ``timeout``, SIGKILL the rest."""
    for node in nodes:
        if node.alive() and node.process is not None:
            try:
                os.kill(node.process.pid, signal.SIGCONT)  # in case it was paused
                node.process.terminate()
            except ProcessLookupError:
                pass
    deadline = time.monotonic() + timeout
    codes: list[int | None] = []
    for node in nodes:
        process = node.process
        if process is None:
            codes.append(None)
            continue
        try:
            process.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        codes.append(process.returncode)
    return codes


def main() -> int:
    """``python -m hookline.infra.kafka_cluster``: fetch the jars now (CI does, up front)."""
    try:
        check_available(fetch=True)
    except KafkaUnavailable as exc:
        print(f"hookline: {exc}", file=sys.stderr)
        return 1
    print(f"Apache Kafka {kafka_version()}: {cache_dir() / 'lib'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
