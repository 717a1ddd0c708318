"""The local stack without a container engine: Kafka (KRaft), Cassandra and Redis as processes.

Kafka and Cassandra jars are resolved from Maven Central with `mvn` (one POM per server, so
their shared dependencies keep their own versions) and cached under the stack folder;
Redis is Debian's `redis-server`. Everything `up` creates lives under one git-ignored folder:
`<stack_dir>/<service>/{libs,conf,data}`, `<stack_dir>/logs/<service>.log` and
`<stack_dir>/run/<service>.pid`. `down` stops exactly the PIDs `up` recorded.
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from string import Template

from pipeline.errors import PrerequisiteMissing, StackError
from pipeline.log import get_logger
from pipeline.settings import Settings

log = get_logger(__name__)

# The versions of the local stack, pinned here and nowhere else (docker/compose.yml is
# checked against them by tests/unit/pipeline/shell/test_compose.py).
KAFKA_VERSION = "4.1.1"
KAFKA_SCALA = "2.13"
LOG4J_VERSION = "2.24.3"
CASSANDRA_VERSION = "5.0.8"
REDIS_MIN_MAJOR = 6
DEPENDENCY_PLUGIN = "org.apache.maven.plugins:maven-dependency-plugin:3.8.1"

KAFKA_PORT = 9092
KAFKA_CONTROLLER_PORT = 9093
CASSANDRA_PORT = 9042
CASSANDRA_STORAGE_PORT = 7000
CASSANDRA_JMX_PORT = 7199
REDIS_PORT = 6379

SERVICES = ("kafka", "cassandra", "redis")

# Cassandra's own conf/jvm17-server.options, reduced to what 5.0 needs on Java 17.
_CASSANDRA_JAVA17_FLAGS = [
    "-Djdk.attach.allowAttachSelf=true",
    "--add-exports=java.base/jdk.internal.misc=ALL-UNNAMED",
    "--add-exports=java.management.rmi/com.sun.jmx.remote.internal.rmi=ALL-UNNAMED",
    "--add-exports=java.management/com.sun.jmx.remote.security=ALL-UNNAMED",
    "--add-exports=java.rmi/sun.rmi.registry=ALL-UNNAMED",
    "--add-exports=java.rmi/sun.rmi.server=ALL-UNNAMED",
    "--add-exports=java.sql/java.sql=ALL-UNNAMED",
    "--add-exports=java.base/java.lang.ref=ALL-UNNAMED",
    "--add-exports=jdk.unsupported/sun.misc=ALL-UNNAMED",
    "--add-opens=java.base/java.lang.module=ALL-UNNAMED",
    "--add-opens=java.base/jdk.internal.loader=ALL-UNNAMED",
    "--add-opens=java.base/jdk.internal.ref=ALL-UNNAMED",
    "--add-opens=java.base/jdk.internal.reflect=ALL-UNNAMED",
    "--add-opens=java.base/jdk.internal.math=ALL-UNNAMED",
    "--add-opens=java.base/jdk.internal.module=ALL-UNNAMED",
    "--add-opens=java.base/jdk.internal.util.jar=ALL-UNNAMED",
    "--add-opens=java.base/sun.nio.ch=ALL-UNNAMED",
    "--add-opens=java.base/java.io=ALL-UNNAMED",
    "--add-opens=java.base/java.lang.reflect=ALL-UNNAMED",
    "--add-opens=java.base/java.lang=ALL-UNNAMED",
    "--add-opens=java.base/java.util=ALL-UNNAMED",
    "--add-opens=java.base/java.nio=ALL-UNNAMED",
    "--add-opens=jdk.management/com.sun.management.internal=ALL-UNNAMED",
]


@dataclass(frozen=True)
class ServiceStatus:
    """One row of `stockflow stack status`."""

    name: str
    state: str  # "up", "starting", "down", "foreign" (port held by a process we did not start)
    pid: int | None
    port: int
    version: str


def _pom(artifact_id: str, deps: Iterable[tuple[str, str, str]]) -> str:
    body = "".join(
        f"<dependency><groupId>{g}</groupId><artifactId>{a}</artifactId>"
        f"<version>{v}</version></dependency>"
        for g, a, v in deps
    )
    return (
        '<project xmlns="http://maven.apache.org/POM/4.0.0"><modelVersion>4.0.0</modelVersion>'
        f"<groupId>stockflow.stack</groupId><artifactId>{artifact_id}</artifactId>"
        f"<version>1</version><packaging>pom</packaging><dependencies>{body}</dependencies>"
        "</project>\n"
    )


_KAFKA_DEPS = [
    ("org.apache.kafka", f"kafka_{KAFKA_SCALA}", KAFKA_VERSION),
    # Kafka logs through slf4j 1.7; this binds it to the log4j2 that Kafka 4 ships.
    ("org.apache.logging.log4j", "log4j-slf4j-impl", LOG4J_VERSION),
]
_CASSANDRA_DEPS = [("org.apache.cassandra", "cassandra-all", CASSANDRA_VERSION)]


def port_open(port: int, host: str = "127.0.0.1", timeout: float = 0.5) -> bool:
    """True when something accepts TCP connections on host:port."""
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=timeout):
        return True
    return False


class LocalStack:
    """Starts, checks and stops the three local services under one folder."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.root = settings.stack_dir.resolve()
        self.run_dir = self.root / "run"
        self.log_dir = self.root / "logs"

    # ------------------------------------------------------------------ paths
    def pid_file(self, service: str) -> Path:
        return self.run_dir / f"{service}.pid"

    def log_file(self, service: str) -> Path:
        return self.log_dir / f"{service}.log"

    def service_dir(self, service: str) -> Path:
        return self.root / service

    # ---------------------------------------------------------- prerequisites
    @staticmethod
    def check_prerequisites(services: Iterable[str] = SERVICES) -> None:
        """Fail with what to install when java 17+, mvn or redis-server is missing."""
        wanted = set(services)
        problems: list[str] = []
        if wanted & {"kafka", "cassandra"}:
            java = shutil.which("java")
            if java is None:
                problems.append("java 17 is missing: apt-get install -y openjdk-17-jre-headless")
            else:
                major = _java_major(java)
                if major is not None and not 17 <= major <= 21:
                    problems.append(
                        f"java {major} found; Kafka {KAFKA_VERSION} and Cassandra "
                        f"{CASSANDRA_VERSION} need Java 17 (Cassandra 5.0 runs on 17 only): "
                        "apt-get install -y openjdk-17-jre-headless and put it first on PATH"
                    )
            if shutil.which("mvn") is None:
                problems.append("Maven is missing (resolves the Kafka/Cassandra jars): "
                                "apt-get install -y maven")
        if "redis" in wanted and shutil.which("redis-server") is None:
            problems.append("redis-server is missing: apt-get install -y redis-server")
        if problems:
            raise PrerequisiteMissing("; ".join(problems))

    # ------------------------------------------------------------------ jars
    def resolve_jars(self, service: str) -> Path:
        """Resolve a server's runtime jars from Maven Central once; later calls reuse them."""
        deps = _KAFKA_DEPS if service == "kafka" else _CASSANDRA_DEPS
        version = KAFKA_VERSION if service == "kafka" else CASSANDRA_VERSION
        sdir = self.service_dir(service)
        libs = sdir / "libs"
        marker = libs / f".resolved-{version}"
        if marker.exists():
            return libs
        if libs.exists():
            shutil.rmtree(libs)  # another version, or an interrupted resolve
        sdir.mkdir(parents=True, exist_ok=True)
        pom = sdir / "pom.xml"
        pom.write_text(_pom(service, deps))
        log.info("stack.resolve_jars", service=service, version=version)
        cmd = [
            "mvn", "-B", "-q", "-f", str(pom), f"{DEPENDENCY_PLUGIN}:copy-dependencies",
            "-DincludeScope=runtime", f"-DoutputDirectory={libs}",
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            tail = (proc.stdout + proc.stderr)[-3000:]
            raise StackError(f"mvn could not resolve {service} {version}:\n{tail}")
        marker.touch()
        return libs

    # ------------------------------------------------------------- processes
    def read_pid(self, service: str) -> int | None:
        """The PID `up` recorded for a service, if that process is still ours and alive."""
        path = self.pid_file(service)
        try:
            pid = int(path.read_text().strip())
        except (OSError, ValueError):
            return None
        if not _alive(pid) or str(self.root) not in _cmdline(pid):
            return None
        return pid

    def _spawn(self, service: str, cmd: list[str], cwd: Path) -> int:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        logf = self.log_file(service).open("ab")
        proc = subprocess.Popen(
            cmd, cwd=cwd, stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True,  # survives the CLI and is not hit by its Ctrl-C
        )
        logf.close()
        self.pid_file(service).write_text(str(proc.pid))
        return proc.pid

    def _start_kafka(self) -> int:
        libs = self.resolve_jars("kafka")
        sdir = self.service_dir("kafka")
        conf, data = sdir / "conf", sdir / "data"
        conf.mkdir(parents=True, exist_ok=True)
        props = conf / "server.properties"
        props.write_text(_kafka_properties(data))
        log4j = conf / "log4j2.properties"
        log4j.write_text(_stack_file("kafka-log4j2.properties"))
        java = [
            "java", f"-Xms{self.settings.stack_kafka_heap}",
            f"-Xmx{self.settings.stack_kafka_heap}",
            "-XX:+UseG1GC", "-XX:MaxGCPauseMillis=20", "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={log4j}", "-cp", f"{libs}/*",
        ]
        if not (data / "meta.properties").exists():
            _format_kafka_storage(java, sdir / "cluster.id", props, "kafka")
        # The stack folder on the command line marks the process as ours for read_pid/down.
        return self._spawn("kafka", [*java, f"-Dstockflow.stack={self.root}", "kafka.Kafka",
                                     str(props)], sdir)

    def _start_cassandra(self) -> int:
        libs = self.resolve_jars("cassandra")
        sdir = self.service_dir("cassandra")
        conf, data = sdir / "conf", sdir / "data"
        conf.mkdir(parents=True, exist_ok=True)
        for sub in ("data", "commitlog", "saved_caches", "hints", "cdc_raw"):
            (data / sub).mkdir(parents=True, exist_ok=True)
        yaml_path = conf / "cassandra.yaml"
        yaml_path.write_text(_cassandra_yaml(data))
        logback = conf / "logback.xml"
        logback.write_text(_stack_file("cassandra-logback.xml"))
        heap = self.settings.stack_cassandra_heap
        jamm = sorted(libs.glob("jamm-*.jar"))
        cmd = [
            "java", f"-Xms{heap}", f"-Xmx{heap}", "-Xss512k", "-XX:+UseG1GC",
            "-XX:+HeapDumpOnOutOfMemoryError", "-XX:HeapDumpPath=" + str(data),
            *([f"-javaagent:{jamm[0]}"] if jamm else []),
            f"-Dcassandra.config=file://{yaml_path}",
            f"-Dlogback.configurationFile=file://{logback}",
            f"-Dcassandra.logdir={self.log_dir}",
            f"-Dcassandra.storagedir={data}",
            "-Dcassandra-foreground=yes",
            f"-Dcassandra.jmx.local.port={CASSANDRA_JMX_PORT}",
            "-Dcassandra.skip_wait_for_gossip_to_settle=0",
            "-Dcassandra.ring_delay_ms=100",
            "-Djava.net.preferIPv4Stack=true",
            "-Dchronicle.analytics.disable=true",
            "-Dio.netty.tryReflectionSetAccessible=true",
            f"-Dstockflow.stack={self.root}",
            *_CASSANDRA_JAVA17_FLAGS,
            "-cp", f"{conf}:{libs}/*",
            "org.apache.cassandra.service.CassandraDaemon",
        ]
        return self._spawn("cassandra", cmd, sdir)

    def _start_redis(self) -> int:
        sdir = self.service_dir("redis")
        sdir.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        pidfile = self.pid_file("redis")
        cmd = [
            "redis-server", "--daemonize", "yes", "--bind", "127.0.0.1", "--port", str(REDIS_PORT),
            "--save", "", "--appendonly", "no", "--dir", str(sdir),
            "--pidfile", str(pidfile), "--logfile", str(self.log_file("redis")),
            # Not a config key: a marker in the process title, so read_pid knows it is ours.
            "--proc-title-template", f"{{title}} {{listen-addr}} stockflow:{self.root}",
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise StackError(f"redis-server did not start: {proc.stdout}{proc.stderr}")
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            pid = self.read_pid("redis")
            if pid:
                return pid
            time.sleep(0.1)
        raise StackError(f"redis-server wrote no pid file:\n{self.tail('redis')}")

    # ------------------------------------------------------------ readiness
    def probe(self, service: str) -> str | None:
        """The server's version when it answers a real request, else None."""
        try:
            if service == "kafka":
                return _probe_kafka(self.settings)
            if service == "cassandra":
                return _probe_cassandra()
            return _probe_redis()
        except Exception:  # any failure just means "not ready yet"
            return None

    def _wait_ready(self, service: str, deadline: float) -> str:
        while True:
            version = self.probe(service)
            if version:
                return version
            if self.read_pid(service) is None:
                raise StackError(f"{service} exited during start-up; its log ends:\n"
                                 f"{self.tail(service)}")
            if time.monotonic() > deadline:
                raise StackError(f"{service} was not ready within "
                                 f"{self.settings.stack_start_timeout_s:.0f}s; its log ends:\n"
                                 f"{self.tail(service)}")
            time.sleep(1.0)

    # ------------------------------------------------------------- commands
    def up(self, services: Iterable[str] = SERVICES,
           on_ready: Callable[[str, str, float], None] | None = None) -> list[ServiceStatus]:
        """Start what is not running, wait until every service answers. Idempotent."""
        wanted = [s for s in SERVICES if s in set(services)]
        self.check_prerequisites(wanted)
        ports = {"kafka": KAFKA_PORT, "cassandra": CASSANDRA_PORT, "redis": REDIS_PORT}
        started_at = time.monotonic()
        for service in wanted:
            if self.read_pid(service):
                continue
            if port_open(ports[service]):
                raise StackError(
                    f"port {ports[service]} is held by a process stockflow did not start; "
                    f"stop it or point stockflow at it with STOCKFLOW_* settings")
            starter = {"kafka": self._start_kafka, "cassandra": self._start_cassandra,
                       "redis": self._start_redis}[service]
            pid = starter()
            log.info("stack.started", service=service, pid=pid)
        deadline = time.monotonic() + self.settings.stack_start_timeout_s
        for service in wanted:
            version = self._wait_ready(service, deadline)
            if on_ready:
                on_ready(service, version, time.monotonic() - started_at)
        return self.status()

    def down(self, services: Iterable[str] = SERVICES, timeout: float = 60.0) -> list[str]:
        """Stop exactly the processes `up` started; returns the services it stopped."""
        stopped = []
        for service in reversed([s for s in SERVICES if s in set(services)]):
            pid = self.read_pid(service)
            if pid is None:
                self.pid_file(service).unlink(missing_ok=True)
                continue
            _stop_process(pid, signal.SIGTERM, timeout)
            self.pid_file(service).unlink(missing_ok=True)
            stopped.append(service)
            log.info("stack.stopped", service=service, pid=pid)
        return stopped

    def status(self) -> list[ServiceStatus]:
        rows = []
        for service, port in (("kafka", KAFKA_PORT), ("cassandra", CASSANDRA_PORT),
                              ("redis", REDIS_PORT)):
            pid = self.read_pid(service)
            version = self.probe(service) if (pid or port_open(port)) else None
            if pid and version:
                state = "up"
            elif pid:
                state = "starting"
            elif port_open(port):
                state = "foreign"
            else:
                state = "down"
            pinned = {"kafka": KAFKA_VERSION, "cassandra": CASSANDRA_VERSION}.get(service, "-")
            rows.append(ServiceStatus(service, state, pid, port, version or pinned))
        return rows

    def tail(self, service: str, lines: int = 40) -> str:
        path = self.log_file(service)
        if not path.exists():
            return "(no log yet)"
        with path.open("rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - 64 * 1024))
            text = fh.read().decode("utf-8", "replace")
        return "\n".join(text.splitlines()[-lines:])


class KafkaCluster:
    """`stockflow stack up --brokers N`: a KRaft cluster of N nodes on this machine, each a
    broker and a voter of one combined controller quorum, beside the default stack.

    Its own folder (`stack_cluster_dir`: node-<i>/{conf,data}, logs/kafka-<i>.log,
    run/kafka-<i>.pid) and ports (`stack_cluster_port_base` + i - 1, controllers + 100), so
    a test can SIGKILL one broker without touching the shared single-broker Kafka. The
    jars are the default stack's (resolved once). Cassandra and Redis stay the default
    stack's.
    """

    def __init__(self, settings: Settings, brokers: int = 3) -> None:
        if not 1 <= brokers <= 9:
            raise StackError(f"--brokers must be between 1 and 9, not {brokers}")
        self.settings = settings
        self.brokers = brokers
        self.root = settings.stack_cluster_dir.resolve()
        self.base = settings.stack_cluster_port_base
        self.run_dir = self.root / "run"
        self.log_dir = self.root / "logs"
        self._jars = LocalStack(settings)

    # ------------------------------------------------------------------ layout
    @property
    def nodes(self) -> range:
        return range(1, self.brokers + 1)

    def port(self, node: int) -> int:
        return self.base + node - 1

    def controller_port(self, node: int) -> int:
        return self.base + 100 + node - 1

    @property
    def bootstrap_servers(self) -> str:
        """The cluster's address for STOCKFLOW_KAFKA_BOOTSTRAP_SERVERS."""
        return ",".join(f"127.0.0.1:{self.port(n)}" for n in self.nodes)

    def node_dir(self, node: int) -> Path:
        return self.root / f"node-{node}"

    def pid_file(self, node: int) -> Path:
        return self.run_dir / f"kafka-{node}.pid"

    def log_file(self, node: int) -> Path:
        return self.log_dir / f"kafka-{node}.log"

    def read_pid(self, node: int) -> int | None:
        """The PID of a node `up` started, if that process is still ours and alive."""
        try:
            pid = int(self.pid_file(node).read_text().strip())
        except (OSError, ValueError):
            return None
        if not _alive(pid) or f"-Dstockflow.stack={self.node_dir(node)} " not in \
                _cmdline(pid) + " ":
            return None
        return pid

    # --------------------------------------------------------------- processes
    def _java(self, node: int) -> list[str]:
        libs = self._jars.resolve_jars("kafka")
        conf = self.node_dir(node) / "conf"
        heap = self.settings.stack_kafka_heap
        return ["java", f"-Xms{heap}", f"-Xmx{heap}", "-XX:+UseG1GC",
                "-XX:MaxGCPauseMillis=20", "-Djava.awt.headless=true",
                f"-Dlog4j2.configurationFile={conf / 'log4j2.properties'}",
                "-cp", f"{libs}/*"]

    def _configure(self, node: int) -> Path:
        ndir = self.node_dir(node)
        conf, data = ndir / "conf", ndir / "data"
        conf.mkdir(parents=True, exist_ok=True)
        voters = ",".join(f"{n}@127.0.0.1:{self.controller_port(n)}" for n in self.nodes)
        props = conf / "server.properties"
        props.write_text(_kafka_properties(
            data, node_id=node, port=self.port(node), controller_port=self.controller_port(node),
            voters=voters, replicas=min(3, self.brokers)))
        (conf / "log4j2.properties").write_text(_stack_file("kafka-log4j2.properties"))
        if not (data / "meta.properties").exists():
            _format_kafka_storage(self._java(node), self.root / "cluster.id", props,
                                  f"kafka node {node}")
        return props

    def start_broker(self, node: int) -> int:
        """Start one node (no-op when it runs); returns its PID."""
        pid = self.read_pid(node)
        if pid:
            return pid
        if port_open(self.port(node)) or port_open(self.controller_port(node)):
            raise StackError(f"port {self.port(node)} or {self.controller_port(node)} is held "
                             "by a process stockflow did not start; set "
                             "STOCKFLOW_STACK_CLUSTER_PORT_BASE to free ports")
        props = self._configure(node)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        with self.log_file(node).open("ab") as logf:
            proc = subprocess.Popen(
                [*self._java(node), f"-Dstockflow.stack={self.node_dir(node)}", "kafka.Kafka",
                 str(props)], cwd=self.node_dir(node), stdout=logf, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True)
        self.pid_file(node).write_text(str(proc.pid))
        log.info("stack.broker_started", node=node, pid=proc.pid, port=self.port(node))
        return proc.pid

    def stop_broker(self, node: int, sig: int = signal.SIGTERM, timeout: float = 60.0) -> bool:
        """Stop one node with `sig` (SIGKILL: a crash); False when it was not running."""
        pid = self.read_pid(node)
        if pid is None:
            self.pid_file(node).unlink(missing_ok=True)
            return False
        _stop_process(pid, sig, timeout)
        self.pid_file(node).unlink(missing_ok=True)
        log.info("stack.broker_stopped", node=node, pid=pid, signal=signal.Signals(sig).name)
        return True

    def live_brokers(self) -> int:
        """Brokers the cluster's metadata lists (0 when none answers)."""
        from confluent_kafka.admin import AdminClient

        if not any(port_open(self.port(n)) for n in self.nodes):
            return 0
        try:
            admin = AdminClient({"bootstrap.servers": self.bootstrap_servers,
                                 "socket.timeout.ms": 2000, "log_level": 0})
            return len(admin.list_topics(timeout=3).brokers)
        except Exception:  # not answering yet
            return 0

    def controller(self) -> int | None:
        """The node id of the active controller (the quorum's leader), from the newest
        quorum-state a running node wrote; None when no leader is known."""
        import json

        best: tuple[int, int] | None = None
        for node in self.nodes:
            if self.read_pid(node) is None:
                continue
            path = self.node_dir(node) / "data" / "__cluster_metadata-0" / "quorum-state"
            with contextlib.suppress(OSError, ValueError):
                state = json.loads(path.read_text())
                epoch, leader = int(state.get("leaderEpoch", -1)), int(state.get("leaderId", -1))
                if leader > 0 and (best is None or epoch > best[0]):
                    best = (epoch, leader)
        return best[1] if best else None

    # ----------------------------------------------------------------- commands
    def up(self, on_ready: Callable[[str, str, float], None] | None = None,
           timeout: float | None = None) -> list[ServiceStatus]:
        """Start every node that is not running; wait until all of them are in the metadata."""
        LocalStack.check_prerequisites(["kafka"])
        started = time.monotonic()
        for node in self.nodes:
            self.start_broker(node)
        deadline = started + (timeout or self.settings.stack_start_timeout_s)
        while self.live_brokers() < self.brokers:
            for node in self.nodes:
                # Twice, a second apart: just after the spawn the process may not show its
                # final command line yet (seen once on a loaded machine, with the node fine).
                if self.read_pid(node) is None and not _pid_within(
                        functools.partial(self.read_pid, node), 1.0):
                    raise StackError(f"kafka node {node} exited during start-up; its log "
                                     f"ends:\n{self.tail(node)}")
            if time.monotonic() > deadline:
                raise StackError(f"the {self.brokers}-broker cluster was not ready in time; "
                                 f"node 1's log ends:\n{self.tail(1)}")
            time.sleep(0.5)
        if on_ready:
            on_ready(f"kafka x{self.brokers} ({self.bootstrap_servers})", KAFKA_VERSION,
                     time.monotonic() - started)
        return self.status()

    def down(self, timeout: float = 60.0) -> list[str]:
        return [f"kafka-{n}" for n in reversed(self.nodes) if self.stop_broker(n, timeout=timeout)]

    def status(self) -> list[ServiceStatus]:
        answering = self.live_brokers() > 0
        rows = []
        for node in self.nodes:
            pid = self.read_pid(node)
            listening = port_open(self.port(node))
            if pid and listening and answering:
                state = "up"
            elif pid:
                state = "starting"
            elif listening:
                state = "foreign"
            else:
                state = "down"
            rows.append(ServiceStatus(f"kafka-{node}", state, pid, self.port(node),
                                      KAFKA_VERSION))
        return rows

    def tail(self, node: int, lines: int = 40) -> str:
        path = self.log_file(node)
        if not path.exists():
            return "(no log yet)"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


# ---------------------------------------------------------------------------- probes
def _probe_kafka(settings: Settings, port: int = KAFKA_PORT) -> str | None:
    from confluent_kafka.admin import AdminClient

    # A broker still starting refuses connections: no client until the port listens, and
    # the client's own log silenced (log_level 0), or librdkafka prints a "Connection
    # refused" line to the terminal for every probe. Kafka's log says why it is not ready.
    if not port_open(port):
        return None
    admin = AdminClient({"bootstrap.servers": f"127.0.0.1:{port}", "socket.timeout.ms": 2000,
                         "log_level": 0})
    md = admin.list_topics(timeout=2)
    return KAFKA_VERSION if md.brokers else None


def _probe_cassandra() -> str | None:
    from cassandra.cluster import EXEC_PROFILE_DEFAULT, Cluster, ExecutionProfile
    from cassandra.policies import RoundRobinPolicy

    if not port_open(CASSANDRA_PORT):
        return None
    # Protocol v4, as the sink's default (STOCKFLOW_CASSANDRA_PROTOCOL_VERSION); the policy in
    # an execution profile (the driver warns that the Cluster's own parameters are legacy).
    profile = ExecutionProfile(load_balancing_policy=RoundRobinPolicy(), request_timeout=5)
    cluster = Cluster(["127.0.0.1"], port=CASSANDRA_PORT, connect_timeout=3,
                      control_connection_timeout=3, protocol_version=4,
                      execution_profiles={EXEC_PROFILE_DEFAULT: profile})
    try:
        session = cluster.connect()
        row = session.execute("SELECT release_version FROM system.local", timeout=5).one()
        return str(row.release_version)
    finally:
        cluster.shutdown()


def _probe_redis() -> str | None:
    import redis

    client = redis.Redis(host="127.0.0.1", port=REDIS_PORT, socket_timeout=2)
    try:
        if client.ping():
            return str(client.info("server")["redis_version"])
        return None
    finally:
        client.close()


# ----------------------------------------------------------------------- process utils
def _stop_process(pid: int, sig: int, timeout: float) -> None:
    """Send `sig`, wait up to `timeout` for the process to end, then SIGKILL it and wait."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)
    deadline = time.monotonic() + timeout
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    if _alive(pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        while _alive(pid):
            time.sleep(0.1)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (exited, not yet reaped) is not alive.
    with contextlib.suppress(OSError):
        stat = Path(f"/proc/{pid}/stat").read_text()
        if stat.rsplit(")", 1)[1].split()[0] == "Z":
            return False
    return True


def _pid_within(read: Callable[[], int | None], seconds: float) -> bool:
    """Whether `read` gives a PID within `seconds` (polled every 0.1 s)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        time.sleep(0.1)
        if read() is not None:
            return True
    return False


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _java_major(java: str) -> int | None:
    out = subprocess.run([java, "-version"], capture_output=True, text=True, check=False).stderr
    for token in out.split('"')[1:2]:
        head = token.split(".")[0]
        if head == "1":
            return int(token.split(".")[1])
        with contextlib.suppress(ValueError):
            return int(head)
    return None


def _kafka_cluster_id() -> str:
    """A random cluster id as Kafka writes one: 22 URL-safe base64 characters.

    URL-safe base64 includes '-', and an id that begins with it reads as an option on the
    command line; Kafka's own generator draws again in that case, and so does this one.
    """
    import base64

    while True:
        cid = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cid.startswith("-"):
            return cid


def _format_kafka_storage(java: list[str], cluster_id_file: Path, props: Path,
                          what: str) -> None:
    """Format a KRaft node's log dirs with the stack's cluster id (made once, then kept).

    The id is passed as `--cluster-id=<id>`, one argument, so it is never taken for an
    option, even when an older stack's kept `cluster.id` begins with '-'.
    """
    if not cluster_id_file.exists():
        cluster_id_file.parent.mkdir(parents=True, exist_ok=True)
        cluster_id_file.write_text(_kafka_cluster_id())
    fmt = subprocess.run(
        [*java, "kafka.tools.StorageTool", "format",
         f"--cluster-id={cluster_id_file.read_text().strip()}", "-c", str(props),
         "--ignore-formatted"],
        capture_output=True, text=True, check=False)
    if fmt.returncode != 0:
        raise StackError(f"{what} storage format failed:\n{(fmt.stdout + fmt.stderr)[-3000:]}")


# ------------------------------------------------------------------------- configs
# The servers' config files are templates in stack_files/ (package data), filled in here.
def _stack_file(name: str, **values: object) -> str:
    """The text of a config template of stack_files/, with $names filled in."""
    text = (resources.files("pipeline.shell") / "stack_files" / name).read_text()
    return Template(text).substitute({k: str(v) for k, v in values.items()}) if values else text


def _kafka_properties(data: Path, *, node_id: int = 1, port: int = KAFKA_PORT,
                      controller_port: int = KAFKA_CONTROLLER_PORT,
                      voters: str = f"1@127.0.0.1:{KAFKA_CONTROLLER_PORT}",
                      replicas: int = 1) -> str:
    # replicas > 1 (a cluster): internal topics replicated, and a write acknowledged by all
    # in-sync replicas needs at least two of them.
    return _stack_file("kafka-server.properties", data=data, node_id=node_id, port=port,
                       controller_port=controller_port, voters=voters, replicas=replicas,
                       min_isr=min(2, replicas))


def _cassandra_yaml(data: Path) -> str:
    return _stack_file("cassandra.yaml", data=data, storage_port=CASSANDRA_STORAGE_PORT,
                       native_port=CASSANDRA_PORT)
