"""`stockflow trace` tells an applied, a duplicate, a stale and a dead-lettered event apart."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bench.pipeline_env import PipelineEnv

pytestmark = pytest.mark.integration

SUPPLIER = "trc1"


def delta(sku: str, sequence: int, kind: str, quantity: int, event_id: str) -> dict[str, Any]:
    now = int(time.time() * 1000)
    return {
        "supplier_id": SUPPLIER, "sku": sku, "event_id": event_id, "sequence": sequence,
        "kind": kind, "quantity": quantity, "observed_at": now, "price": None,
        "currency": None, "warehouse": None, "lead_time_days": None, "status": "ACTIVE",
        "connector": "test", "received_at": now,
    }


@pytest.fixture
def env(tmp_path: Path) -> Iterator[PipelineEnv]:
    pipeline = PipelineEnv(tmp_path, partitions=3)
    try:
        pipeline.setup()
        yield pipeline
    finally:
        pipeline.cleanup()


def trace(env: PipelineEnv, event_id: str, *options: str) -> dict[str, Any]:
    proc = env.cli("trace", event_id, "--json", *options, check=False)
    assert proc.returncode in (0, 1), proc.stderr[-3000:]
    return json.loads(proc.stdout)  # type: ignore[no-any-return]


def test_trace_applied_duplicate_stale_and_dead_lettered(env: PipelineEnv) -> None:
    env.start_worker()
    records = [
        delta("S1", 1, "SNAPSHOT", 5, "ev-applied"),
        delta("S2", 1, "SNAPSHOT", 7, "ev-twice"),
        delta("S2", 2, "ADJUSTMENT", -2, "ev-adjust"),
        delta("S2", 1, "SNAPSHOT", 3, "ev-late"),  # older sequence, new event_id: stale
        delta("S3", 1, "SNAPSHOT", -4, "ev-negative"),  # dead letter: negative_snapshot
    ]
    with env.producer() as producer:
        for record in records:
            producer.produce(record)
        producer.produce(records[1])  # a redelivery of ev-twice: duplicate
        producer.flush()
    # Processed end to end: the cache took every change (S1, S2 x2).
    env.wait_until(lambda: env.metric("stockflow_events_total", stage="cache",
                                      outcome="written") >= 3 and env.lag() == 0,
                   180, "the workload reached Redis")

    applied = trace(env, "ev-applied", "--supplier", SUPPLIER, "--sku", "S1")
    assert len(applied["scanned_partitions"]) == 1  # narrowed to the key's partition
    [occ] = applied["occurrences"]
    assert occ["outcome"] == "applied"
    assert occ["processed"] is True
    assert occ["cassandra"]["written"] is True and occ["cassandra"]["history_row"] is True
    assert occ["cassandra"]["availability_version"] == 1
    assert occ["redis"] == {"version": 1, "cached": True}

    twice = trace(env, "ev-twice")  # no narrowing: every partition is scanned
    assert len(twice["scanned_partitions"]) >= 1
    first, second = sorted(twice["occurrences"], key=lambda o: o["offset"])
    assert first["outcome"] == "applied"
    # Superseded in Cassandra and Redis by ev-adjust (version 2), still written.
    assert first["cassandra"]["written"] is True and first["cassandra"]["superseded"] is True
    assert first["cassandra"]["history_row"] is True
    assert first["redis"]["cached"] is True and first["redis"]["version"] == 2
    assert second["outcome"] == "duplicate"
    assert f"offset {first['offset']}" in second["detail"]

    late = trace(env, "ev-late", "--supplier", SUPPLIER)
    [occ] = late["occurrences"]
    assert occ["outcome"] == "stale" and "sequence 1 <= version 2" in occ["detail"]

    negative = trace(env, "ev-negative", "--supplier", SUPPLIER, "--sku", "S3")
    [occ] = negative["occurrences"]
    assert occ["outcome"] == "invalid:negative_snapshot"
    assert occ["dead_letter"]["reason"] == "negative_snapshot"
    assert occ["cassandra"] == {} and occ["redis"] == {}

    missing = env.cli("trace", "no-such-event", check=False)
    assert missing.returncode == 1 and "not found" in missing.stdout

    # The human form names the outcome and the evidence.
    text = env.cli("trace", "ev-applied", "--supplier", SUPPLIER, "--sku", "S1").stdout
    assert "outcome=applied" in text and "Cassandra: written" in text and "Redis: cached" in text
