"""The Redis cache fed by the real worker: reference values, reordering, outage, rebuild, CLI."""

from __future__ import annotations

import asyncio
import random
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from bench.pipeline_env import PipelineEnv
from connectors.redis.cache import RedisCache
from tests.integration.test_redis_cache import PrivateRedis
from tests.unit.reference_model import reference_run

pytestmark = pytest.mark.integration

SUPPLIERS = [f"sup{i}" for i in range(5)]
LEADS = [None, 1, 3, 3, 7]


# --- workload and expectations -------------------------------------------------------------


def delta(supplier: str, sku: str, sequence: int, kind: str, quantity: int, *,
          status: str = "ACTIVE", lead: int | None = None) -> dict[str, Any]:
    now = int(time.time() * 1000)
    return {
        "supplier_id": supplier, "sku": sku, "event_id": f"{supplier}-{sku}-{sequence}",
        "sequence": sequence, "kind": kind, "quantity": quantity, "observed_at": now,
        "price": None, "currency": None, "warehouse": None, "lead_time_days": lead,
        "status": status, "connector": "test", "received_at": now,
    }


class Workload:
    """Random deltas over a few SKUs: snapshots, adjustments, discontinuations, redeliveries,
    stale events and lead times that make quantity ties rank by lead time."""

    def __init__(self, seed: int, skus: int) -> None:
        self.rng = random.Random(seed)
        self.skus = [f"SKU-{i}" for i in range(skus)]
        self.sequence: dict[tuple[str, str], int] = {}
        self.sent: list[dict[str, Any]] = []

    def batch(self, n: int) -> list[dict[str, Any]]:
        rng = self.rng
        out: list[dict[str, Any]] = []
        for _ in range(n):
            roll = rng.random()
            if self.sent and roll < 0.05:
                out.append(dict(rng.choice(self.sent)))  # redelivery: same event_id
                continue
            supplier, sku = rng.choice(SUPPLIERS), rng.choice(self.skus)
            seq = self.sequence.get((supplier, sku), 0)
            if seq and roll < 0.10:
                # stale: an older sequence with a fresh event_id
                out.append(delta(supplier, sku, rng.randrange(1, seq + 1), "SNAPSHOT", 99))
                out[-1]["event_id"] += "-late"
                continue
            seq += 1
            self.sequence[(supplier, sku)] = seq
            lead = rng.choice(LEADS)
            if seq > 1 and roll < 0.35:
                out.append(delta(supplier, sku, seq, "ADJUSTMENT", rng.randrange(-3, 4),
                                 lead=lead))
            else:
                status = "DISCONTINUED" if roll > 0.93 else "ACTIVE"
                # Small quantities: ties on stock are common, so lead times decide `best`.
                out.append(delta(supplier, sku, seq, "SNAPSHOT", rng.randrange(0, 6),
                                 status=status, lead=lead))
        self.sent.extend(out)
        return out


def expected_cache(deltas: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """platform SKU -> what Redis must hold, from the reference model."""
    run = reference_run(deltas, dedup_per_key=True)
    versions = {(c["platform_sku"], c["supplier_id"]): c["version"] for c in run.changes}
    out: dict[str, dict[str, Any]] = {}
    for sku, avail in run.availability.items():
        out[sku] = {
            "total": avail["total"],
            "best_supplier": avail["best_supplier"],
            "suppliers": {
                sid: {"sku": e["sku"], "quantity": e["quantity"], "status": e["status"],
                      "lead_time_days": e["lead_time_days"], "version": versions[(sku, sid)]}
                for sid, e in avail["suppliers"].items()
            },
        }
    return out


def _comparable(got: dict[str, Any]) -> dict[str, Any]:
    return {
        "total": got["total"],
        "best_supplier": got["best_supplier"],
        "suppliers": {sid: {k: e[k] for k in ("sku", "quantity", "status", "lead_time_days",
                                              "version")}
                      for sid, e in got["suppliers"].items()},
    }


async def _read_all(url: str, prefix: str, skus: list[str]) -> dict[str, dict[str, Any]]:
    """Everything Redis holds for `skus` (as RedisCache.get returns it)."""
    cache = RedisCache(url, key_prefix=prefix)
    try:
        out = {}
        for sku in skus:
            got = await cache.get(sku)
            if got is not None:
                out[sku] = got
        return out
    finally:
        await cache.close()


def cached(env: PipelineEnv, skus: list[str]) -> dict[str, dict[str, Any]]:
    return asyncio.run(_read_all(env.settings.redis_url.get_secret_value(),
                                 env.settings.redis_cache_key_prefix, skus))


def wait_for_cache(env: PipelineEnv, expected: dict[str, dict[str, Any]], skus: list[str],
                   timeout: float = 180) -> None:
    """Wait until Redis holds exactly `expected` for `skus`; fail with the difference."""
    last: dict[str, Any] = {}

    def matches() -> bool:
        nonlocal last
        try:
            last = {sku: _comparable(v) for sku, v in cached(env, skus).items()}
        except Exception as exc:  # Redis restarting: not converged yet
            last = {"error": repr(exc)}
            return False
        return last == expected

    try:
        env.wait_until(matches, timeout, "Redis equals the reference model")
    except AssertionError:
        diff = {sku: (last.get(sku), expected.get(sku)) for sku in sorted(set(last) | set(expected))
                if last.get(sku) != expected.get(sku)}
        raise AssertionError(f"Redis != reference for {len(diff)} SKUs, e.g. "
                             f"{list(diff.items())[:3]}\n{env.worker_log()[-3000:]}") from None


def produce(env: PipelineEnv, deltas: list[dict[str, Any]]) -> None:
    producer = env.producer()
    try:
        for d in deltas:
            producer.produce(d)
        producer.flush()
    finally:
        producer.close()


# --- fixtures --------------------------------------------------------------------------------


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    """A redis-server of the test's own (AOF, fsync always): it may stop, restart and flush it."""
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server not installed")
    directory = tmp_path / "redis"
    directory.mkdir()
    server = PrivateRedis(directory, persistent=True)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def _pipeline(tmp_path: Path, **kwargs: Any) -> Iterator[PipelineEnv]:
    env = PipelineEnv(tmp_path, partitions=2, **kwargs)
    try:
        env.setup()
        env.start_worker()
        yield env
    finally:
        env.cleanup()


@pytest.fixture
def pipeline(tmp_path: Path) -> Iterator[PipelineEnv]:
    """A running worker on the shared stack (own topics, keyspace and Redis key prefix)."""
    yield from _pipeline(tmp_path)


@pytest.fixture
def agent_pipeline(tmp_path: Path) -> Iterator[PipelineEnv]:
    """A running worker whose cache is written by the refresh_cache agent from
    inventory.changes (`cache_writer` agent) instead of inline by the aggregate agent."""
    yield from _pipeline(tmp_path, extra_env={"STOCKFLOW_CACHE_WRITER": "agent"})


@pytest.fixture
def private_pipeline(tmp_path: Path, private_redis: PrivateRedis) -> Iterator[PipelineEnv]:
    """A running worker whose cache is the test's private Redis."""
    yield from _pipeline(tmp_path, extra_env={"STOCKFLOW_REDIS_URL": private_redis.url})


# --- tests -----------------------------------------------------------------------------------


def test_end_to_end_redis_equals_reference_model(pipeline: PipelineEnv) -> None:
    work = Workload(seed=5, skus=25)
    first = work.batch(400)
    produce(pipeline, first)
    wait_for_cache(pipeline, expected_cache(work.sent), work.skus)
    # A second wave on the same keys (newer versions over cached hashes) converges too.
    produce(pipeline, work.batch(400))
    expected = expected_cache(work.sent)
    wait_for_cache(pipeline, expected, work.skus)
    # The workload did exercise what it claims to.
    run = reference_run(work.sent, dedup_per_key=True)
    assert run.counts["duplicate"] > 0 and run.counts["stale"] > 0
    assert any(e["status"] == "DISCONTINUED" for a in expected.values()
               for e in a["suppliers"].values())
    # Lead time decided `best` somewhere: the top stock was tied between suppliers.
    assert any(sum(1 for e in a["suppliers"].values() if e["status"] == "ACTIVE"
                   and e["quantity"] == max(x["quantity"] for x in a["suppliers"].values()))
               > 1 and a["total"] > 0 for a in expected.values())
    pipeline.assert_worker_alive()


def _change(sku: str, supplier: str, version: int, quantity: int,
            lead: int | None = None) -> dict[str, Any]:
    now = int(time.time() * 1000)
    return {
        "platform_sku": sku, "supplier_id": supplier, "sku": f"{supplier}-{sku}",
        "quantity_before": 0, "quantity_after": quantity, "version": version,
        "total_available": 0, "best_supplier": None, "status": "ACTIVE", "cause": "SNAPSHOT",
        "event_id": f"{supplier}-{sku}-{version}", "observed_at": now + version,
        "produced_at": now, "changed_at": now, "lead_time_days": lead,
    }


def test_reordered_change_events_never_overwrite_a_newer_version(
        agent_pipeline: PipelineEnv) -> None:
    from connectors.delta_producer import DeltaProducer

    pipeline = agent_pipeline

    producer = DeltaProducer(pipeline.settings.confluent_config(),
                             pipeline.topic("inventory.changes"), record="InventoryChange")
    skus = [f"R-{i}" for i in range(8)]
    newest = {(sku, sup): 10 for sku in skus for sup in ("a", "b")}

    def send(changes: list[dict[str, Any]]) -> None:
        for c in changes:
            producer.produce(c, key=c["platform_sku"].encode())
        producer.flush()

    def quantity(version: int) -> int:
        return 100 + version  # every version has its own quantity: a regression shows

    try:
        # 1. The newest versions arrive first and are cached.
        send([_change(sku, sup, v, quantity(v), lead=2) for (sku, sup), v in newest.items()])
        expected = {sku: {"total": 2 * quantity(10), "best_supplier": "a",
                          "suppliers": {sup: {"sku": f"{sup}-{sku}", "quantity": quantity(10),
                                              "status": "ACTIVE", "lead_time_days": 2,
                                              "version": 10} for sup in ("a", "b")}}
                    for sku in skus}
        wait_for_cache(pipeline, expected, skus, timeout=120)
        # 2. Then every older version, shuffled, and redeliveries of version 10 with another
        #    quantity (an equal version must not land either), in later batches.
        rng = random.Random(3)
        late = [_change(sku, sup, v, quantity(v), lead=0)
                for (sku, sup) in newest for v in range(1, 10)]
        late += [_change(sku, sup, 10, 999, lead=0) for (sku, sup) in newest]
        rng.shuffle(late)
        send(late)
        pipeline.wait_until(lambda: pipeline.lag("inventory.changes") == 0, 120,
                            "the worker consumed every reordered change")
        got = {sku: _comparable(v) for sku, v in cached(pipeline, skus).items()}
        assert got == expected
    finally:
        producer.close()
    pipeline.assert_worker_alive()


def test_redis_down_20s_mid_stream_converges_nothing_lost(
    private_pipeline: PipelineEnv, private_redis: PrivateRedis
) -> None:
    env = private_pipeline
    work = Workload(seed=7, skus=30)
    produce(env, work.batch(300))
    wait_for_cache(env, expected_cache(work.sent), work.skus)
    retries_before = env.metric("stockflow_sink_retries_total", sink="redis")

    private_redis.stop()
    down_at = time.monotonic()
    # Keep producing through the outage: ten waves over 20 s.
    for wave in range(10):
        produce(env, work.batch(40))
        time.sleep(max(0.0, down_at + 2.0 * (wave + 1) - time.monotonic()))
    # The changes are flowing (Cassandra and inventory.changes keep up), Redis is not there.
    assert time.monotonic() - down_at >= 20
    env.assert_worker_alive()
    assert env.metric("stockflow_sink_retries_total", sink="redis") > retries_before
    private_redis.start()

    produce(env, work.batch(200))
    wait_for_cache(env, expected_cache(work.sent), work.skus)
    env.assert_worker_alive()


def test_cache_rebuild_after_flushall_gives_identical_values(
    private_pipeline: PipelineEnv, private_redis: PrivateRedis
) -> None:
    env = private_pipeline
    work = Workload(seed=9, skus=40)
    produce(env, work.batch(500))
    wait_for_cache(env, expected_cache(work.sent), work.skus)
    before = cached(env, work.skus)
    # The write path built these hashes from changes alone: not marked complete.
    assert before and not any(v["complete"] for v in before.values())

    client = redis.Redis.from_url(private_redis.url)
    try:
        client.flushall()
        assert client.dbsize() == 0
    finally:
        client.close()
    out = env.cli("cache", "rebuild", "--batch", "7").stdout
    assert f"rebuilt {len(before)} platform SKUs" in out

    after = cached(env, work.skus)
    assert {sku: {**v, "complete": False} for sku, v in after.items()} == before
    assert all(v["complete"] for v in after.values())
    env.assert_worker_alive()


def test_inventory_get_cache_reads_redis_and_falls_back_to_cassandra(
    pipeline: PipelineEnv,
) -> None:
    sku = "CLI-1"
    deltas = [delta("sup0", sku, 1, "SNAPSHOT", 4, lead=3),
              delta("sup1", sku, 1, "SNAPSHOT", 4, lead=1)]
    produce(pipeline, deltas)
    expected = expected_cache(deltas)
    wait_for_cache(pipeline, expected, [sku], timeout=120)
    assert expected[sku]["best_supplier"] == "sup1"

    # The write path's hash is not `complete`: the first read goes to Cassandra and fills.
    first = pipeline.cli("inventory", "get", sku, "--cache").stdout
    assert f"{sku} (cassandra)" in first and "total available: 8" in first
    assert "best supplier: sup1" in first
    second = pipeline.cli("inventory", "get", sku, "--cache").stdout
    assert f"{sku} (redis)" in second and "total available: 8" in second
    assert cached(pipeline, [sku])[sku]["complete"]

    missing = pipeline.cli("inventory", "get", "NOPE", "--cache", check=False)
    assert missing.returncode == 1 and "no supplier has reported" in missing.stdout
