"""The real local stack answers: Kafka (confluent-kafka and aiokafka), Cassandra, Redis, Faust."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline.settings import Settings
from pipeline.shell.stack import LocalStack
from tests.conftest import KAFKA, wait_for

pytestmark = pytest.mark.integration


def _consume(topic: str, count: int, timeout: float = 30.0, group: str | None = None) -> list:
    from confluent_kafka import Consumer

    consumer = Consumer({"bootstrap.servers": KAFKA, "group.id": group or f"g-{topic}",
                         "auto.offset.reset": "earliest", "isolation.level": "read_committed",
                         "topic.metadata.refresh.interval.ms": 1000})
    consumer.subscribe([topic])
    out = []
    deadline = time.monotonic() + timeout
    try:
        while len(out) < count and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is None or msg.error():
                continue
            out.append(msg)
    finally:
        consumer.close()
    return out


def test_confluent_kafka_round_trip(unique: str) -> None:
    from confluent_kafka import Producer

    topic = f"{unique}.roundtrip"
    producer = Producer({"bootstrap.servers": KAFKA, "enable.idempotence": True})
    producer.produce(topic, b"hello", b"k1")
    assert producer.flush(30) == 0
    msgs = _consume(topic, 1)
    assert [(m.key(), m.value()) for m in msgs] == [(b"k1", b"hello")]


async def test_aiokafka_round_trip(unique: str) -> None:
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

    topic = f"{unique}.aio"
    producer = AIOKafkaProducer(bootstrap_servers=KAFKA, enable_idempotence=True)
    await producer.start()
    try:
        await producer.send_and_wait(topic, b"v1", key=b"k")
    finally:
        await producer.stop()
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=KAFKA, group_id=f"g-{unique}",
                                auto_offset_reset="earliest")
    await consumer.start()
    try:
        batch = await asyncio.wait_for(consumer.getone(), timeout=30)
    finally:
        await consumer.stop()
    assert (batch.key, batch.value) == (b"k", b"v1")


def test_cassandra_write_and_read(unique: str) -> None:
    from cassandra.cluster import EXEC_PROFILE_DEFAULT, Cluster, ExecutionProfile
    from cassandra.policies import RoundRobinPolicy

    profile = ExecutionProfile(load_balancing_policy=RoundRobinPolicy())
    cluster = Cluster(["127.0.0.1"], protocol_version=5,
                      execution_profiles={EXEC_PROFILE_DEFAULT: profile})
    session = cluster.connect()
    try:
        session.execute(f"CREATE KEYSPACE {unique} WITH replication = "
                        "{'class': 'SimpleStrategy', 'replication_factor': 1}")
        session.execute(f"CREATE TABLE {unique}.kv (k text PRIMARY KEY, v bigint)")
        insert = session.prepare(f"INSERT INTO {unique}.kv (k, v) VALUES (?, ?)")
        session.execute(insert, ("sku-1", 42))
        row = session.execute(f"SELECT v FROM {unique}.kv WHERE k = %s", ("sku-1",)).one()
        assert row.v == 42
    finally:
        session.execute(f"DROP KEYSPACE IF EXISTS {unique}")
        cluster.shutdown()


def test_redis_set_get(unique: str) -> None:
    import redis

    client = redis.Redis(host="127.0.0.1", port=6379)
    try:
        client.set(f"{unique}:k", "v", ex=60)
        assert client.get(f"{unique}:k") == b"v"
    finally:
        client.delete(f"{unique}:k")
        client.close()


def test_faust_worker_processes_one_event(unique: str, tmp_path: Path) -> None:
    from confluent_kafka import Producer
    from confluent_kafka.admin import AdminClient, NewTopic

    # Source topics exist before a worker subscribes (`stockflow topics create` does this).
    admin = AdminClient({"bootstrap.servers": KAFKA})
    topics = [NewTopic(f"{unique}.in", 1, 1), NewTopic(f"{unique}.out", 1, 1)]
    for fut in admin.create_topics(topics).values():
        fut.result(30)
    env = {**os.environ, "ECHO_APP_ID": unique, "ECHO_DATADIR": str(tmp_path),
           "ECHO_IN": f"{unique}.in", "ECHO_OUT": f"{unique}.out"}
    worker = subprocess.Popen(
        [sys.executable, "-m", "faust", "-A", "tests.integration.echo_app", "worker",
         "-l", "warn", "--without-web"],
        env=env, cwd=Path(__file__).parents[2], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        producer = Producer({"bootstrap.servers": KAFKA})
        producer.produce(f"{unique}.in", json.dumps({"n": 21}).encode())
        assert producer.flush(30) == 0
        msgs = _consume(f"{unique}.out", 1, timeout=90)
    finally:
        worker.send_signal(signal.SIGTERM)
        try:
            out, _ = worker.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            worker.kill()
            out, _ = worker.communicate()
    log = out.decode(errors="replace")[-3000:]
    assert [json.loads(m.value()) for m in msgs] == [{"doubled": 42}], log
    assert worker.returncode == 0, log


def test_stack_up_is_idempotent_and_status_reports_all() -> None:
    """A second `up` on a running stack starts nothing and keeps every PID."""
    stack = LocalStack(Settings())
    before = {s.name: s.pid for s in stack.status()}
    assert all(s.state == "up" for s in stack.status())
    t0 = time.monotonic()
    after = {s.name: s.pid for s in stack.up()}
    assert after == before
    assert time.monotonic() - t0 < 30
    wait_for(lambda: all(s.state == "up" for s in stack.status()), 10, message="all up")


def test_kafka_storage_formats_with_a_cluster_id_that_begins_with_a_dash(tmp_path: Path) -> None:
    """A URL-safe base64 id may begin with '-'; the format step must not read it as an option.

    One in 64 random ids did, and `stack up` then failed on a fresh machine.
    """
    from pipeline.shell import stack as stack_mod

    libs = LocalStack(Settings()).resolve_jars("kafka")  # already resolved by the running stack
    props = tmp_path / "server.properties"
    props.write_text(stack_mod._kafka_properties(tmp_path / "data"))
    cluster_id = "-" + stack_mod._kafka_cluster_id()[1:]
    (tmp_path / "cluster.id").write_text(cluster_id)
    stack_mod._format_kafka_storage(["java", "-Xmx128m", "-cp", f"{libs}/*"],
                                    tmp_path / "cluster.id", props, "kafka")
    meta = (tmp_path / "data" / "meta.properties").read_text()
    assert f"cluster.id={cluster_id}\n" in meta
