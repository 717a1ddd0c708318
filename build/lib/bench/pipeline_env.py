"""An isolated, real stockflow pipeline for integration tests and benchmarks.

Each PipelineEnv has its own topic prefix, Faust app id, worker data dir, Cassandra keyspace
and Redis key prefix, so tests run side by side on the shared local stack. The worker is the
real `stockflow worker` in a subprocess (it can be SIGKILLed and restarted).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from pipeline.settings import Settings
from pipeline.topics import DELTAS

ROOT = Path(__file__).resolve().parents[1]  # the checkout (or, installed, site-packages)


def free_port() -> int:
    """A free TCP port on 127.0.0.1 for a worker to listen on, below the ephemeral range.

    A port from bind(0) is an ephemeral port: over a long test the Kafka and Cassandra
    clients' outgoing connections take ephemeral local ports too, and one of them holding
    the worker's port makes the worker's listen fail with "Address already in use".
    """
    import random

    low, _high = _ephemeral_range()
    rng = random.SystemRandom()
    for _ in range(200):
        port = rng.randrange(max(1024, low - 12000), low)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port below the ephemeral range")


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


class PipelineEnv:
    """Topics, keyspace, Redis prefix and a worker process of one isolated pipeline."""

    def __init__(self, tmp_path: Path, *, name: str | None = None, partitions: int = 4,
                 guarantee: str = "exactly_once", extra_env: dict[str, str] | None = None):
        self.name = name or "p" + uuid.uuid4().hex[:10]
        self.tmp_path = tmp_path
        self.metrics_port = free_port()
        self.web_port = free_port()
        self.env: dict[str, str] = {
            **os.environ,
            "STOCKFLOW_TOPIC_PREFIX": f"{self.name}.",
            "STOCKFLOW_APP_ID": self.name,
            "STOCKFLOW_DATA_DIR": str(tmp_path / "worker"),
            "STOCKFLOW_CASSANDRA_KEYSPACE": self.name,
            "STOCKFLOW_REDIS_CACHE_KEY_PREFIX": f"{self.name}:",
            "STOCKFLOW_METRICS_PORT": str(self.metrics_port),
            "STOCKFLOW_WEB_PORT": str(self.web_port),
            "STOCKFLOW_PARTITIONS": str(partitions),
            "STOCKFLOW_PROCESSING_GUARANTEE": guarantee,
            "STOCKFLOW_LOG_JSON": "true",
            **(extra_env or {}),
        }
        # Strings for every field, as from the environment: pydantic converts them.
        fields: dict[str, Any] = {
            k.removeprefix("STOCKFLOW_").lower(): v for k, v in self.env.items()
            if k.startswith("STOCKFLOW_") and k.removeprefix("STOCKFLOW_").lower()
            in Settings.model_fields
        }
        self.settings = Settings(**fields)
        self.worker: subprocess.Popen[bytes] | None = None
        self.worker_logs: list[Path] = []
        # More workers of the same app id (bench/worker_process.Worker), each with its own
        # data dir and ports: they share the partitions with `worker`.
        self.extra_workers: list[Any] = []

    # ------------------------------------------------------------------ setup
    def cli(self, *args: str, check: bool = True,
            timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """Run `stockflow ARGS` with this pipeline's environment."""
        proc = subprocess.run([sys.executable, "-m", "pipeline.shell.cli", *args], env=self.env,
                              cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                              check=False)
        if check and proc.returncode != 0:
            raise AssertionError(f"stockflow {' '.join(args)} failed ({proc.returncode}):\n"
                                 f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
        return proc

    def setup(self) -> PipelineEnv:
        self.cli("topics", "create")
        self.cli("db", "migrate")
        return self

    # ----------------------------------------------------------------- worker
    def start_worker(self) -> None:
        log = self.tmp_path / f"worker-{len(self.worker_logs)}.log"
        self.worker_logs.append(log)
        with log.open("wb") as fh:
            self.worker = subprocess.Popen(
                [sys.executable, "-m", "pipeline.shell.cli", "worker"], env=self.env, cwd=ROOT,
                stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)

    def kill_worker(self, sig: int = signal.SIGKILL) -> None:
        if self.worker is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.worker.pid, sig)
        try:
            self.worker.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(self.worker.pid, signal.SIGKILL)
            self.worker.wait()
        self.worker = None

    def stop_worker(self) -> None:
        self.kill_worker(signal.SIGTERM)

    def worker_log(self) -> str:
        return "\n".join(p.read_text(errors="replace")[-4000:] for p in self.worker_logs
                         if p.exists())

    def assert_worker_alive(self) -> None:
        assert self.worker is not None and self.worker.poll() is None, \
            f"worker exited:\n{self.worker_log()}"
        for extra in self.extra_workers:
            assert extra.proc is not None and extra.proc.poll() is None, \
                f"{extra.name} exited:\n{extra.text()[-4000:]}"

    def metrics_ports(self) -> list[int]:
        """The metrics ports of every running worker of this pipeline."""
        return [self.metrics_port, *(int(w.environ["STOCKFLOW_METRICS_PORT"])
                                     for w in self.extra_workers)]

    def stop_extra_workers(self) -> None:
        while self.extra_workers:
            self.extra_workers.pop().stop(signal.SIGTERM)

    # ------------------------------------------------------------------ kafka
    def topic(self, logical: str) -> str:
        return self.settings.topic(logical)

    def producer(self) -> Any:
        from connectors.delta_producer import DeltaProducer

        return DeltaProducer(self.settings.confluent_config(), self.topic(DELTAS.name))

    def produce_raw(self, items: Iterable[tuple[bytes | None, bytes]]) -> None:
        """Send raw (key, value) pairs to inventory.deltas (e.g. malformed bytes)."""
        from confluent_kafka import Producer

        p = Producer({**self.settings.confluent_config(), "partitioner": "murmur2_random",
                      "enable.idempotence": True})
        for key, value in items:
            p.produce(self.topic(DELTAS.name), value, key)
        assert p.flush(60) == 0

    def read_topic(self, logical: str, record: str | None, *, expect: int | None = None,
                   idle_s: float = 5.0,
                   timeout: float = 120.0) -> list[tuple[bytes | None, Any]]:
        """Read a whole topic (read_committed) until `expect` records or `idle_s` of silence."""
        from confluent_kafka import Consumer

        from schemas.codec import codec_for

        codec = codec_for(record) if record else None
        consumer = Consumer({**self.settings.confluent_config(),
                             "group.id": f"reader-{uuid.uuid4().hex[:8]}",
                             "auto.offset.reset": "earliest", "enable.auto.commit": False,
                             "isolation.level": "read_committed"})
        consumer.subscribe([self.topic(logical)])
        out: list[tuple[bytes | None, Any]] = []
        deadline = time.monotonic() + timeout
        last = time.monotonic()
        try:
            while time.monotonic() < deadline:
                if expect is not None and len(out) >= expect:
                    # keep reading briefly to catch duplicates
                    if time.monotonic() - last > 2.0:
                        break
                elif expect is None and out and time.monotonic() - last > idle_s:
                    break
                msg = consumer.poll(0.5)
                if msg is None or msg.error():
                    continue
                last = time.monotonic()
                raw = msg.value()
                # A tombstone (null value) stays None: there is nothing to decode.
                value = codec.decode(raw) if codec and raw is not None else raw
                out.append((msg.key(), value))
        finally:
            consumer.close()
        return out

    def read_changelog(self, table: str, record: str) -> dict[bytes, Any]:
        """A Faust table's current content, from its changelog topic (last value per key)."""
        from schemas.codec import codec_for

        codec = codec_for(record)
        out: dict[bytes, Any] = {}
        raw = self.read_topic_physical(f"{self.settings.app_id}-{table}-changelog")
        for key, value in raw:
            if key is None:  # a table's changelog records always have a key
                continue
            if value is None:
                out.pop(key, None)
            else:
                out[key] = codec.decode(value)
        return out

    def read_topic_physical(self, topic: str,
                            timeout: float = 120.0) -> list[tuple[bytes | None, bytes | None]]:
        """Every (key, raw value) of a topic by its physical name, read committed."""
        from confluent_kafka import Consumer

        from pipeline.kafka import nonempty_partitions, read_to_end

        consumer = Consumer({**self.settings.confluent_config(),
                             "group.id": f"reader-{uuid.uuid4().hex[:8]}",
                             "enable.auto.commit": False, "isolation.level": "read_committed",
                             "enable.partition.eof": True})
        try:
            assignment = nonempty_partitions(consumer, topic, timeout_s=10) or []
            return [(msg.key(), msg.value())
                    for msg in read_to_end(consumer, assignment, timeout_s=timeout)]
        finally:
            consumer.close()

    def lag(self, logical: str = DELTAS.name) -> int:
        """Data records of a topic the worker's consumer group has not committed yet.

        Offsets alone over-count: a transaction's commit marker takes an offset that no
        consumer ever processes, so a partition whose committed offset sits just before a
        marker is drained. Partitions behind their end are read to tell markers from data.
        """
        from confluent_kafka import Consumer, TopicPartition

        consumer = Consumer({**self.settings.confluent_config(), "group.id": self.name,
                             "isolation.level": "read_committed",
                             "enable.auto.commit": False})
        try:
            topic = self.topic(logical)
            parts = consumer.list_topics(topic, timeout=10).topics[topic].partitions
            committed = consumer.committed([TopicPartition(topic, p) for p in parts],
                                           timeout=10)
            behind = []
            total = 0
            for tp in committed:
                _lo, hi = consumer.get_watermark_offsets(TopicPartition(topic, tp.partition),
                                                         timeout=10)
                start = max(tp.offset, 0)
                if hi > start:
                    behind.append((TopicPartition(topic, tp.partition, start), hi))
            for tp, hi in behind:
                consumer.assign([tp])
                deadline = time.monotonic() + 5
                while time.monotonic() < deadline:
                    msg = consumer.poll(0.2)
                    if msg is not None and not msg.error():
                        total += hi - tp.offset  # real data is waiting
                        break
                    pos = consumer.position([TopicPartition(topic, tp.partition)])[0].offset
                    if pos >= hi:
                        break  # only markers were left
                else:
                    total += hi - tp.offset
            return total
        finally:
            consumer.close()

    # -------------------------------------------------------------- metrics
    def metrics(self) -> dict[str, float]:
        """The worker's Prometheus samples as {'name{labels}': value}."""
        import urllib.request

        from prometheus_client.parser import text_string_to_metric_families

        body = urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics",
                                      timeout=5).read().decode()
        out = {}
        for family in text_string_to_metric_families(body):
            for s in family.samples:
                labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
                out[f"{s.name}{{{labels}}}" if labels else s.name] = s.value
        return out

    def metric(self, name: str, **labels: str) -> float:
        key = name + ("{" + ",".join(f'{k}="{v}"' for k, v in sorted(labels.items())) + "}"
                      if labels else "")
        with contextlib.suppress(Exception):
            return self.metrics().get(key, 0.0)
        return 0.0

    # -------------------------------------------------------------- cassandra
    def cassandra_session(self) -> Any:
        """A driver session (call .cluster.shutdown() when done)."""
        from connectors.cassandra.cluster import ClusterConfig, connect

        _cluster, session = connect(ClusterConfig.from_settings(self.settings))
        return session

    def wait_until(self, predicate: Callable[[], Any], timeout: float, message: str) -> Any:
        deadline = time.monotonic() + timeout
        last: Any = None
        while time.monotonic() < deadline:
            if self.worker is not None:
                self.assert_worker_alive()
            last = predicate()
            if last:
                return last
            time.sleep(0.5)
        raise AssertionError(f"timed out after {timeout}s: {message}; last={last!r}\n"
                             f"{self.worker_log()[-3000:]}")

    # ---------------------------------------------------------------- cleanup
    def cleanup(self) -> None:
        for extra in self.extra_workers:
            extra.stop(signal.SIGKILL)
        self.extra_workers.clear()
        self.kill_worker()
        from pipeline.kafka import admin_client

        admin = admin_client(self.settings)
        names = [t for t in admin.list_topics(timeout=10).topics if t.startswith(self.name)]
        if names:
            for fut in admin.delete_topics(names, operation_timeout=30).values():
                with contextlib.suppress(Exception):
                    fut.result()
        with contextlib.suppress(Exception):
            session = self.cassandra_session()
            session.execute(f'DROP KEYSPACE IF EXISTS "{self.name}"', timeout=60)
            session.cluster.shutdown()
        with contextlib.suppress(Exception):
            import redis

            client = redis.Redis.from_url(self.settings.redis_url.get_secret_value())
            for key in client.scan_iter(f"{self.name}:*", count=1000):
                client.delete(key)
            client.close()
