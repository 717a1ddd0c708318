"""A running worker's metrics equal a known workload; health, readiness and lag endpoints answer."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bench.pipeline_env import PipelineEnv

pytestmark = pytest.mark.integration

SUPPLIER = "obs1"
SKUS = [f"A{i}" for i in range(10)]


def delta(sku: str, sequence: int, kind: str, quantity: int, *, event_id: str | None = None,
          supplier: str = SUPPLIER) -> dict[str, Any]:
    now = int(time.time() * 1000)
    return {
        "supplier_id": supplier, "sku": sku, "event_id": event_id or f"{sku}-{sequence}",
        "sequence": sequence, "kind": kind, "quantity": quantity, "observed_at": now,
        "price": None, "currency": None, "warehouse": None, "lead_time_days": None,
        "status": "ACTIVE", "connector": "test", "received_at": now,
    }


def http_get(port: int, path: str) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


@pytest.fixture
def env(tmp_path: Path) -> Iterator[PipelineEnv]:
    pipeline = PipelineEnv(tmp_path, partitions=2)
    try:
        pipeline.setup()
        yield pipeline
    finally:
        pipeline.cleanup()


def test_metrics_equal_the_workload(env: PipelineEnv) -> None:
    env.start_worker()
    # Liveness first (the web server starts before table recovery), then readiness.
    env.wait_until(lambda: _status(env, "/health") == 200, 120, "/health answers")
    env.wait_until(lambda: _status(env, "/ready") == 200, 120, "/ready says ready")

    originals = [delta(sku, 1, "SNAPSHOT", 5) for sku in SKUS]  # 10 applied
    adjustments = [delta(sku, 2, "ADJUSTMENT", 1) for sku in SKUS[:5]]  # 5 applied (5 -> 6)
    duplicates = [dict(originals[i]) for i in (0, 1, 2, 3)]  # 4 duplicates (same event_id)
    stale = [delta(sku, 1, "SNAPSHOT", 9, event_id=f"{sku}-late") for sku in SKUS[:3]]  # 3
    noops = [delta(sku, 3, "SNAPSHOT", 6) for sku in SKUS[:2]]  # 2 noop (already 6)
    negative = [delta(sku, 4, "SNAPSHOT", -1) for sku in SKUS[5:8]]  # 3 negative_snapshot

    with env.producer() as producer:
        for record in originals + adjustments + duplicates + stale + noops + negative:
            producer.produce(record)
        # Same key, other (supplier, sku) in the record: key_mismatch.
        producer.produce(delta("A9", 7, "SNAPSHOT", 1), key=f"{SUPPLIER}|A8".encode())
        producer.flush()
    env.produce_raw([(f"{SUPPLIER}|A0".encode(), b"not avro"), (None, b"\x00garbage")])

    expected = {
        'stockflow_events_total{outcome="valid",stage="validate"}': 24,
        'stockflow_events_total{outcome="invalid",stage="validate"}': 6,
        'stockflow_events_total{outcome="applied",stage="apply"}': 15,
        'stockflow_events_total{outcome="noop",stage="apply"}': 2,
        'stockflow_events_total{outcome="duplicate",stage="apply"}': 4,
        'stockflow_events_total{outcome="stale",stage="apply"}': 3,
        'stockflow_dropped_total{reason="duplicate"}': 4,
        'stockflow_dropped_total{reason="stale"}': 3,
        'stockflow_dropped_total{reason="invalid:negative_snapshot"}': 3,
        'stockflow_dropped_total{reason="invalid:key_mismatch"}': 1,
        'stockflow_dropped_total{reason="invalid:decode_error"}': 2,
        'stockflow_dead_letters_total{reason="negative_snapshot"}': 3,
        'stockflow_dead_letters_total{reason="key_mismatch"}': 1,
        'stockflow_dead_letters_total{reason="decode_error"}': 2,
    }
    changed = 'stockflow_events_total{outcome="changed",stage="aggregate"}'
    unchanged = 'stockflow_events_total{outcome="unchanged",stage="aggregate"}'
    # Downstream of apply every count follows the aggregate's "changed": Cassandra writes,
    # emitted changes, cache writes and both freshness stages.
    downstream = ["stockflow_changes_emitted_total",
                  'stockflow_events_total{outcome="written",stage="cache"}',
                  'stockflow_freshness_seconds_count{stage="cassandra"}',
                  'stockflow_freshness_seconds_count{stage="redis"}']

    progress: dict[str, float] = {}

    def settled() -> dict[str, float] | None:
        samples = env.metrics()
        lag = sum(v for k, v in samples.items()
                  if k.startswith("stockflow_consumer_lag{")
                  and f'topic="{env.topic("inventory.deltas")}"' in k)
        progress.clear()
        progress.update({k: samples.get(k, 0) for k, v in expected.items()
                         if samples.get(k, 0) != v}, deltas_lag=lag)
        folded = samples.get(changed, 0) + samples.get(unchanged, 0)
        progress["folded"] = folded
        if lag == 0 and all(samples.get(k, 0) >= v for k, v in expected.items()) \
                and folded >= 15 and all(samples.get(k, 0) >= samples.get(changed, 0)
                                         for k in downstream):
            return samples
        return None

    try:
        env.wait_until(settled, 180, "the workload is processed and the lag is 0")
    except AssertionError as exc:
        raise AssertionError(f"not settled: {progress}") from exc
    # Let any over-count show up (a redelivery counted twice would arrive late).
    time.sleep(2)
    samples = env.metrics()
    got = {k: samples.get(k, 0) for k in expected}
    assert got == expected
    # Each of the 15 stock updates is folded once and changes its SKU's availability.
    assert samples[changed] == 15
    assert samples.get(unchanged, 0) == 0
    assert {k: samples.get(k, 0) for k in downstream} == dict.fromkeys(downstream,
                                                                        samples[changed])

    # Nothing else was dead-lettered or dropped.
    assert sum(v for k, v in samples.items() if k.startswith("stockflow_dead_letters_total")) \
        == 6
    assert sum(v for k, v in samples.items() if k.startswith("stockflow_dropped_total")) == 13
    # A silent feed is visible: the supplier's last accepted event is recent.
    assert time.time() - samples[f'stockflow_supplier_last_event_timestamp_seconds'
                                 f'{{supplier="{SUPPLIER}"}}'] < 300
    # Lag is exported per topic-partition of the worker's group.
    deltas = env.topic("inventory.deltas")
    for partition in (0, 1):
        key = (f'stockflow_consumer_lag{{group="{env.name}",partition="{partition}",'
               f'topic="{deltas}"}}')
        assert samples[key] == 0
    # Readiness and table sizes come from the worker's timer (every few seconds).
    env.wait_until(lambda: env.metric("stockflow_worker_ready") == 1, 30, "ready gauge")
    env.wait_until(lambda: env.metric("stockflow_table_keys", table="stock") >= len(SKUS), 30,
                   "stock table size")
    env.wait_until(lambda: env.metric("stockflow_table_keys", table="availability") >= 1, 30,
                   "availability table size")
    status, body = http_get(env.web_port, "/ready")
    assert status == 200 and body["ready"] is True and body["recovery_completed"] is True


def _status(env: PipelineEnv, path: str) -> int:
    try:
        return http_get(env.web_port, path)[0]
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return 0
