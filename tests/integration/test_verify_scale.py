"""`stockflow verify` at 10k platform SKUs (20k supplier SKUs) on the shared stack.

The stores are loaded the cheap way: SNAPSHOTs produced to the log, then `stockflow rebuild`
(Cassandra, Redis and the worker's changelogs from the log; no worker runs). Verify must be
clean, hold the Redis connections it opens to its pool size, and name the key, store,
expected and found value of a drift injected into Redis, Cassandra and the tables. Tests
run in file order.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from bench.pipeline_env import ROOT, PipelineEnv

pytestmark = pytest.mark.integration

PLATFORM_SKUS = 10_000
SUPPLIERS = ("s1", "s2")
# What verify may open at most (connectors/redis/read.py, connectors/logtools/verification.py).
REDIS_POOL_SIZE = 2


def sku(i: int) -> str:
    return f"v{i:05d}"


def quantity(i: int, supplier: str) -> int:
    return (i * 7 + int(supplier[1:]) * 13) % 50 + 1


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PipelineEnv]:
    env = PipelineEnv(tmp_path_factory.mktemp("verify"))
    try:
        env.setup()
        now = int(time.time() * 1000)
        with env.producer() as producer:
            for i in range(PLATFORM_SKUS):
                for supplier in SUPPLIERS:
                    producer.produce({
                        "supplier_id": supplier, "sku": sku(i),
                        "event_id": f"{supplier}-{sku(i)}-1", "sequence": 1,
                        "kind": "SNAPSHOT", "quantity": quantity(i, supplier),
                        "observed_at": now - 1000, "price": "9.50", "currency": "EUR",
                        "warehouse": None, "lead_time_days": 2, "status": "ACTIVE",
                        "connector": "test", "received_at": now - 500,
                    }, timestamp_ms=now)
            producer.flush()

        def rebuild() -> subprocess.CompletedProcess[str] | None:
            proc = env.cli("rebuild", "--yes", check=False, timeout=900)
            # The first look at a new consumer group can answer NOT_COORDINATOR while the
            # group coordinator loads: rebuild then refuses before writing anything; rerun.
            return None if "NOT_COORDINATOR" in proc.stderr else proc

        rebuilt = env.wait_until(rebuild, timeout=1200, message="stockflow rebuild")
        assert rebuilt.returncode == 0, rebuilt.stdout[-2000:] + rebuilt.stderr[-2000:]
        yield env
    finally:
        env.cleanup()


def run_verify(env: PipelineEnv, *args: str) -> tuple[subprocess.CompletedProcess[str], int]:
    """Run verify; also the most Redis connections it held at once (CLIENT LIST, polled)."""
    import redis

    client = redis.Redis.from_url(env.settings.redis_url.get_secret_value(),
                                  decode_responses=True)
    name = f"{env.settings.app_id}-verify"
    most = 0
    done = threading.Event()

    def poll() -> None:
        nonlocal most
        while not done.is_set():
            clients: list[dict[str, Any]] = client.client_list()
            most = max(most, sum(1 for c in clients if c.get("name") == name))
            done.wait(0.02)

    watcher = threading.Thread(target=poll, daemon=True)
    watcher.start()
    try:
        proc = subprocess.run([sys.executable, "-m", "pipeline.shell.cli", "verify", *args],
                              env=env.env, cwd=ROOT, capture_output=True, text=True,
                              timeout=600, check=False)
    finally:
        done.set()
        watcher.join(timeout=5)
        client.close()
    return proc, most


def test_verify_is_clean_at_10k_keys_with_bounded_connections(env: PipelineEnv) -> None:
    proc, redis_connections = run_verify(env, "--settle", "0")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "OK" in proc.stdout
    assert redis_connections <= REDIS_POOL_SIZE

    proc, _ = run_verify(env, "--settle", "0", "--json")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(proc.stdout)
    assert report["status"] == "clean"
    assert report["differences"] == []
    checked = report["stores"]
    assert checked["cassandra"]["checked"] == PLATFORM_SKUS
    assert checked["redis"]["checked"] == PLATFORM_SKUS
    assert checked["table:stock"]["checked"] == PLATFORM_SKUS * len(SUPPLIERS)
    assert checked["table:availability"]["checked"] == PLATFORM_SKUS
    assert 1 <= report["connections"]["redis"] <= REDIS_POOL_SIZE
    # --json is quiet: no progress on stderr, only the report on stdout.
    assert "fold" not in proc.stderr

    # --sample reads those SKUs one by one (Cassandra, Redis) and only their table keys.
    proc, _ = run_verify(env, "--settle", "0", "--json", "--sample", "500", "--seed", "1")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    sampled = {store: s["checked"] for store, s in json.loads(proc.stdout)["stores"].items()}
    assert sampled == {"cassandra": 500, "redis": 500, "table:stock": 1000,
                       "table:availability": 500}


def test_verify_names_key_store_expected_and_found_of_injected_drift(env: PipelineEnv) -> None:
    import redis

    changed, deleted = 4321, 8765
    client = redis.Redis.from_url(env.settings.redis_url.get_secret_value())
    try:
        key = f"{env.settings.redis_cache_key_prefix}avail:{sku(changed)}"
        assert client.hset(key, "q:s1", "999") == 0
    finally:
        client.close()
    session = env.cassandra_session()
    try:
        session.execute(f"DELETE FROM {env.name}.availability_by_sku "
                        f"WHERE platform_sku = '{sku(deleted)}' AND supplier_id = 's2'")
    finally:
        session.cluster.shutdown()

    proc, _ = run_verify(env, "--settle", "0", "--json")
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(proc.stdout)
    assert report["status"] == "drift"
    diffs = report["differences"]
    assert {(d["store"], d["key"]) for d in diffs} == {("redis", sku(changed)),
                                                       ("cassandra", sku(deleted))}
    assert {"store": "redis", "key": sku(changed), "entry": "s1", "kind": "mismatch",
            "expected": {"quantity": quantity(changed, "s1")},
            "found": {"quantity": 999}} in diffs
    (missing,) = [d for d in diffs if d["store"] == "cassandra"]
    assert missing["entry"] == "s2" and missing["kind"] == "missing"
    assert missing["expected"]["quantity"] == quantity(deleted, "s2")
    assert missing["expected"]["version"] == 1
    assert missing["found"] is None
    assert report["stores"]["cassandra"]["drift"] == 1

    # With a settle delay the two drifted keys are read again, and still drift.
    proc, _ = run_verify(env, "--settle", "1", "--json")
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
    rechecked = json.loads(proc.stdout)
    assert rechecked["rechecked"] == 2
    assert rechecked["differences"] == report["differences"]
    assert rechecked["stores"] == report["stores"]

    proc, _ = run_verify(env, "--settle", "0")
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert (f"redis '{sku(changed)}' [s1]: mismatch: expected "
            f"{{'quantity': {quantity(changed, 's1')}}}, found {{'quantity': 999}}") in proc.stdout
    assert f"cassandra '{sku(deleted)}' [s2]: missing" in proc.stdout


def test_verify_finds_drift_in_the_worker_tables(env: PipelineEnv) -> None:
    from confluent_kafka import Producer

    from connectors.logtools.rebuild import changelog_topic
    from schemas.codec import codec_for

    # A changed stock record and a tombstone of an availability record, in the partitions
    # the worker's producer uses for those keys (murmur2), so they are the keys' last records.
    changed, deleted = 1234, 5678
    stock_key = f"s1|{sku(changed)}".encode()
    state = env.read_changelog("stock", "StockState")[stock_key]
    producer = Producer({**env.settings.confluent_config(), "partitioner": "murmur2_random"})
    producer.produce(changelog_topic(env.settings, "stock"),
                     codec_for("StockState").encode({**state, "quantity": 999}), stock_key)
    producer.produce(changelog_topic(env.settings, "availability"), None,
                     sku(deleted).encode())
    assert producer.flush(60) == 0

    proc, _ = run_verify(env, "--settle", "0", "--no-cache", "--json")
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
    diffs = json.loads(proc.stdout)["differences"]
    assert {"store": "table:stock", "key": f"s1|{sku(changed)}", "entry": "",
            "kind": "mismatch", "expected": {"quantity": quantity(changed, "s1")},
            "found": {"quantity": 999}} in diffs
    missing = {(d["store"], d["key"], d["entry"], d["kind"]) for d in diffs
               if d["store"] == "table:availability"}
    assert missing == {("table:availability", sku(deleted), s, "missing") for s in SUPPLIERS}


def test_verify_exits_2_with_the_error_when_a_store_is_unreachable(env: PipelineEnv) -> None:
    from bench.pipeline_env import free_port

    closed = {**env.env, "STOCKFLOW_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"}
    for args, check in ((["--json"], "json"), ([], "text")):
        proc = subprocess.run([sys.executable, "-m", "pipeline.shell.cli", "verify",
                               "--settle", "0", "--no-tables", *args], env=closed, cwd=ROOT,
                              capture_output=True, text=True, timeout=600, check=False)
        assert proc.returncode == 2, proc.stdout[-3000:] + proc.stderr[-3000:]
        if check == "json":
            report = json.loads(proc.stdout)
            assert report["status"] == "error" and "redis" in report["error"], report
        else:
            assert "error: redis scan failed: ConnectionError" in proc.stderr, proc.stderr
