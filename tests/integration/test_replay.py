"""Replay, verify and rebuild against a real worker on the shared stack (one isolated pipeline).

One module-scoped pipeline: the real worker processes a workload, its Cassandra rows and
Redis hashes are snapshotted, then the stores are wiped, damaged and rebuilt with
`stockflow replay`, `stockflow verify` and `stockflow rebuild`. Tests run in file order.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bench.pipeline_env import PipelineEnv

pytestmark = pytest.mark.integration

SUPPLIERS = ("s1", "s2", "s3")
SKUS = tuple(f"k{i:02d}" for i in range(30))
WINDOW_SKUS = SKUS[:4]  # the only SKUs with events in phase B


def _delta(supplier: str, sku: str, seq: int, ts: int, rng: random.Random) -> dict[str, Any]:
    kind = "SNAPSHOT" if seq == 1 or rng.random() < 0.5 else "ADJUSTMENT"
    return {
        "supplier_id": supplier, "sku": sku, "event_id": f"{supplier}-{sku}-{seq}",
        "sequence": seq, "kind": kind,
        "quantity": rng.randint(0, 50) if kind == "SNAPSHOT" else rng.randint(-5, 8),
        "observed_at": ts - 1000, "price": f"{rng.randint(1, 99)}.50", "currency": "EUR",
        "warehouse": None, "lead_time_days": rng.choice([None, 1, 2, 3]),
        "status": "DISCONTINUED" if rng.random() < 0.05 else "ACTIVE",
        "connector": "test", "received_at": ts - 500,
    }


class State:
    """Shared between the tests of this module."""

    env: PipelineEnv
    window_start_ms: int
    original: dict[str, Any]


@pytest.fixture(scope="module")
def state(tmp_path_factory: pytest.TempPathFactory) -> Iterator[type[State]]:
    env = PipelineEnv(tmp_path_factory.mktemp("replay"))
    State.env = env
    try:
        env.setup()
        env.start_worker()
        rng = random.Random(7)
        now = int(time.time() * 1000)
        phase_a, phase_b = now - 120_000, now - 60_000
        seqs: dict[tuple[str, str], int] = {}
        with env.producer() as producer:
            for round_ in range(4):  # phase A: every (supplier, sku), several events each
                for supplier in SUPPLIERS:
                    for sku in SKUS:
                        seq = seqs[(supplier, sku)] = seqs.get((supplier, sku), 0) + 1
                        ts = phase_a + round_ * 10
                        producer.produce(_delta(supplier, sku, seq, ts, rng), timestamp_ms=ts)
            # a duplicate and a stale event: the replay must drop them like the worker
            dup = _delta("s1", "k10", 2, phase_a + 50, rng)
            producer.produce(dup, timestamp_ms=phase_a + 50)
            for round_ in range(3):  # phase B: only WINDOW_SKUS
                for supplier in SUPPLIERS:
                    for sku in WINDOW_SKUS:
                        seq = seqs[(supplier, sku)] = seqs[(supplier, sku)] + 1
                        ts = phase_b + round_ * 10
                        producer.produce(_delta(supplier, sku, seq, ts, rng), timestamp_ms=ts)
            producer.flush()
        State.window_start_ms = phase_b
        wait_settled(env)
        State.original = snapshot(env)
        assert len(State.original["availability_by_sku"]) > 50
        proc = env.cli("verify", "--settle", "5", "--no-tables", check=False)
        # The worker's own output must already agree with the log, exactly.
        assert proc.returncode == 0, proc.stdout[-3000:]
        yield State
    finally:
        env.cleanup()


def unread_records(env: PipelineEnv, logical: str) -> int:
    """Committed (read_committed) records of a topic after the worker group's committed offset.

    Not high watermark minus committed offset: stock-updates and changes are written in
    transactions, whose commit markers take offsets no consumer ever reads past.
    """
    from confluent_kafka import Consumer, KafkaError, TopicPartition

    probe = Consumer({**env.settings.confluent_config(), "group.id": env.name,
                      "enable.auto.commit": False, "enable.partition.eof": True,
                      "isolation.level": "read_committed"})
    try:
        topic = env.topic(logical)
        parts = probe.list_topics(topic, timeout=10).topics[topic].partitions
        committed = probe.committed([TopicPartition(topic, p) for p in parts], timeout=10)
        probe.assign([TopicPartition(topic, tp.partition, tp.offset if tp.offset >= 0 else -2)
                      for tp in committed])
        pending, unread = set(parts), 0
        deadline = time.monotonic() + 30
        while pending and time.monotonic() < deadline:
            for msg in probe.consume(100, 0.5):
                if msg.error() is None:
                    unread += 1
                elif msg.error().code() == KafkaError._PARTITION_EOF:
                    pending.discard(msg.partition())
        return unread if not pending else max(unread, 1)
    finally:
        probe.close()


def wait_settled(env: PipelineEnv) -> None:
    """Until the worker consumed (and committed) every input: Cassandra and Redis are written."""
    env.wait_until(lambda: all(unread_records(env, t) == 0
                               for t in env.settings.worker_input_topics()),
                   timeout=180, message="worker caught up on its inputs")


TABLES = ("availability_by_sku", "stock_by_supplier", "change_history")


def snapshot(env: PipelineEnv) -> dict[str, Any]:
    """Every row of the three tables and every cache hash of this pipeline."""
    import redis

    out: dict[str, Any] = {}
    session = env.cassandra_session()
    try:
        for table in TABLES:
            rows = session.execute(f"SELECT * FROM {env.name}.{table}")
            out[table] = sorted((tuple(sorted(r._asdict().items())) for r in rows), key=repr)
    finally:
        session.cluster.shutdown()
    client = redis.Redis.from_url(env.settings.redis_url.get_secret_value(),
                                  decode_responses=True)
    try:
        out["redis"] = {k: client.hgetall(k) for k in client.scan_iter(f"{env.name}:*")}
    finally:
        client.close()
    return out


def cache_values(hashes: dict[str, dict[str, str]]) -> dict[str, dict[str, str]]:
    """Cache hashes without the processing-time fields (t:*, updated_at; see fold.py)."""
    return {k: {f: v for f, v in h.items() if not f.startswith("t:") and f != "updated_at"}
            for k, h in hashes.items()}


def wipe(env: PipelineEnv, tables: tuple[str, ...] = TABLES) -> None:
    import redis

    session = env.cassandra_session()
    try:
        for table in tables:
            session.execute(f"TRUNCATE {env.name}.{table}", timeout=120)
    finally:
        session.cluster.shutdown()
    client = redis.Redis.from_url(env.settings.redis_url.get_secret_value())
    try:
        for key in client.scan_iter(f"{env.name}:*"):
            client.delete(key)
    finally:
        client.close()


def test_verify_passes_on_the_worker_output(state: type[State]) -> None:
    proc = state.env.cli("verify", "--settle", "0", check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "OK" in proc.stdout
    assert "table:stock" in proc.stdout  # the worker's tables were compared too


def test_replay_after_wipe_restores_every_row_and_key(state: type[State]) -> None:
    env = state.env
    env.stop_worker()  # from here on, only the replay writes
    wipe(env)
    assert snapshot(env)["availability_by_sku"] == []
    env.cli("replay", "--from", "beginning")
    first = snapshot(env)
    for table in TABLES:
        if table == "change_history":
            assert set(state.original[table]) <= set(first[table]), table
        else:
            assert first[table] == state.original[table], table
    assert cache_values(first["redis"]) == cache_values(state.original["redis"])
    assert len(first["availability_by_sku"]) >= 80
    # Twice: nothing changes, not even the processing-time fields (event time is replayed).
    env.cli("replay", "--from", "beginning")
    assert snapshot(env) == first


def test_dry_run_writes_nothing(state: type[State]) -> None:
    env = state.env
    wipe(env)
    proc = env.cli("replay", "--from", "beginning", "--dry-run")
    assert "would change" in proc.stdout
    n_rows = len(state.original["availability_by_sku"])
    assert f"{n_rows} would change" in proc.stdout, proc.stdout
    after = snapshot(env)
    assert all(after[t] == [] for t in TABLES) and after["redis"] == {}


def test_window_replay_touches_only_skus_with_events_in_the_window(state: type[State]) -> None:
    env = state.env
    wipe(env)
    env.cli("replay", "--from", str(state.window_start_ms), "--no-history")
    after = snapshot(env)
    skus = {dict(r)["platform_sku"] for r in after["availability_by_sku"]}
    assert skus == set(WINDOW_SKUS)
    original = {r for r in state.original["availability_by_sku"]
                if dict(r)["platform_sku"] in WINDOW_SKUS}
    assert set(after["availability_by_sku"]) == original
    window_keys = {f"{env.name}:avail:{s}" for s in WINDOW_SKUS}
    assert set(after["redis"]) == window_keys
    assert cache_values(after["redis"]) == {
        k: v for k, v in cache_values(state.original["redis"]).items() if k in window_keys}
    # A supplier filter narrows it further.
    wipe(env)
    env.cli("replay", "--from", str(state.window_start_ms), "--supplier", "s2",
            "--into", "cassandra")
    rows = snapshot(env)["availability_by_sku"]
    assert {dict(r)["supplier_id"] for r in rows} == {"s2"}
    assert {dict(r)["platform_sku"] for r in rows} == set(WINDOW_SKUS)


def test_verify_finds_missing_rows_and_passes_after_replay(state: type[State]) -> None:
    env = state.env
    wipe(env)
    proc = env.cli("verify", "--settle", "0", "--no-tables", "--require-cache",
                   check=False)
    assert proc.returncode == 1 and "DRIFT" in proc.stdout, proc.stdout
    env.cli("replay", "--from", "beginning")
    proc = env.cli("verify", "--settle", "0", "--no-tables", "--require-cache",
                   check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_verify_finds_injected_drift_and_rebuild_repairs_it(state: type[State]) -> None:
    import redis

    env = state.env
    session = env.cassandra_session()
    try:
        # A manual fix written "now" (server timestamp): the kind of damage a replay cannot
        # undo, because the cell's write timestamp is above every version.
        session.execute(f"UPDATE {env.name}.availability_by_sku SET quantity = 999 "
                        "WHERE platform_sku = 'k20' AND supplier_id = 's1'")
    finally:
        session.cluster.shutdown()
    client = redis.Redis.from_url(env.settings.redis_url.get_secret_value())
    try:
        assert client.hset(f"{env.name}:avail:k21", "q:s2", "12345") == 0
    finally:
        client.close()
    proc = env.cli("verify", "--settle", "0", "--no-tables", check=False)
    assert proc.returncode == 1, proc.stdout
    assert "cassandra 'k20' [s1]: mismatch" in proc.stdout, proc.stdout
    assert "redis 'k21' [s2]: mismatch" in proc.stdout, proc.stdout
    # The runbook's answer: truncate + rewrite the damaged stores from the log.
    env.cli("rebuild", "--only", "cassandra", "--only", "cache", "--yes")
    proc = env.cli("verify", "--settle", "0", "--no-tables", "--require-cache", check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    after = snapshot(env)
    assert after["availability_by_sku"] == state.original["availability_by_sku"]
    assert cache_values(after["redis"]) == cache_values(state.original["redis"])


def test_interrupted_replay_continues_from_its_checkpoint(state: type[State]) -> None:
    import os
    import signal
    import subprocess
    import sys

    from bench.pipeline_env import ROOT

    env = state.env
    wipe(env)
    # Tiny batches at 40 records/s: ~10 s, interrupted well before the end.
    args = [sys.executable, "-m", "pipeline.shell.cli", "replay", "--from", "beginning",
            "--batch-size", "5", "--max-rate", "40"]
    proc = subprocess.Popen(args, env=env.env, cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    checkpoints = Path(env.settings.data_dir) / "replay"
    env.wait_until(lambda: checkpoints.exists() and any(checkpoints.iterdir()), timeout=60,
                   message="a replay checkpoint")
    os.kill(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, out + err
    assert "interrupted" in out
    partial = snapshot(env)
    assert len(partial["availability_by_sku"]) < len(state.original["availability_by_sku"])
    rerun = env.cli("replay", "--from", "beginning", "--batch-size", "5")
    assert "continuing the interrupted replay" in rerun.stdout
    after = snapshot(env)
    env.cli("replay", "--from", "beginning", "--restart")  # a full, uninterrupted replay
    assert snapshot(env) == after
    assert not any(checkpoints.iterdir())  # a finished replay removes its checkpoint


def test_rebuild_tables_and_worker_resumes(state: type[State]) -> None:
    env = state.env
    env.stop_worker()  # the fixture's worker, when this test runs on its own
    env.start_worker()
    env.wait_until(lambda: env.cli("rebuild", "--only", "tables", "--yes",
                                   check=False).returncode != 0, timeout=60,
                   message="rebuild refuses while the worker runs")
    env.stop_worker()
    env.wait_until(lambda: env.cli("rebuild", "--only", "tables", "--yes",
                                   check=False).returncode == 0, timeout=90,
                   message="rebuild of the tables once the worker's group is empty")
    env.start_worker()
    # New events after the rebuild: the worker continues from the rebuilt tables.
    now = int(time.time() * 1000)
    with env.producer() as producer:
        producer.produce(_delta("s1", "k25", 50, now, random.Random(1)) | {"kind": "SNAPSHOT",
                                                                            "quantity": 77,
                                                                            "status": "ACTIVE"},
                         timestamp_ms=now)
        # an old sequence: stale only if the rebuilt table knows the version
        producer.produce(_delta("s1", "k26", 1, now, random.Random(2)) | {"kind": "SNAPSHOT",
                                                                           "quantity": 55},
                         timestamp_ms=now)
        producer.flush()
    wait_settled(env)
    proc = env.cli("verify", "--settle", "5", "--require-cache", check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = {dict(r)["platform_sku"] + "/" + dict(r)["supplier_id"]: dict(r)
            for r in snapshot(env)["availability_by_sku"]}
    assert rows["k25/s1"]["quantity"] == 77
    original = {dict(r)["platform_sku"] + "/" + dict(r)["supplier_id"]: dict(r)
                for r in state.original["availability_by_sku"]}
    assert rows["k26/s1"] == original["k26/s1"]
