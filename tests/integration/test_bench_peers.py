"""The bench's peer baselines on the real Kafka: every record handled once, by stockflow's rules.

A private 4-partition deltas topic gets 2,000 workload records (duplicates, stale snapshots
and malformed records included); each peer must report exactly 2,000 handled with the
outcomes the workload planted, and its committed outputs (read_committed) must match them.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bench import baselines
from bench.workload import DUPLICATE, MALFORMED, STALE, Workload, WorkloadSpec
from pipeline.settings import Settings

pytestmark = pytest.mark.integration

RECORDS = 2_000


@pytest.fixture
def deltas(unique: str) -> Iterator[tuple[Settings, str, dict[str, int]]]:
    """Settings with a private topic prefix, its deltas topic filled; the kinds written."""
    from confluent_kafka.admin import AdminClient, NewTopic

    settings = Settings(topic_prefix=f"{unique}.")
    topic = settings.topic("inventory.deltas")
    admin = AdminClient(settings.confluent_config())
    for fut in admin.create_topics([NewTopic(topic, 4, 1)]).values():
        fut.result()
    events = list(Workload(WorkloadSpec(skus=300, suppliers=3, seed=11)).events(
        RECORDS, int(time.time() * 1000)))
    kinds: dict[str, int] = {}
    for e in events:
        kinds[e.kind] = kinds.get(e.kind, 0) + 1
    baselines.confluent_produce(settings.confluent_config(), topic,
                                [(e.key, e.value, e.timestamp_ms) for e in events])
    try:
        yield settings, topic, kinds
    finally:
        names = [t for t in admin.list_topics(timeout=10).topics if t.startswith(unique)]
        if names:
            for fut in admin.delete_topics(names, operation_timeout=30).values():
                with contextlib.suppress(Exception):
                    fut.result()


def committed_count(settings: Settings, topic: str) -> int:
    """Records of a topic a read_committed consumer sees (the committed transactions' ones)."""
    from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

    consumer = Consumer({**settings.confluent_config(), "group.id": "unused",
                         "enable.auto.commit": False, "isolation.level": "read_committed",
                         "enable.partition.eof": True})
    parts = consumer.list_topics(topic, timeout=10).topics[topic].partitions
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in parts])
    seen, at_end = 0, set()
    deadline = time.monotonic() + 20
    try:
        while len(at_end) < len(parts) and time.monotonic() < deadline:
            for msg in consumer.consume(num_messages=1000, timeout=0.5):
                if msg.error():
                    at_end.add(msg.partition())
                else:
                    seen += 1
    finally:
        consumer.close()
    assert len(at_end) == len(parts), f"did not reach the end of {topic}"
    return seen


def assert_handled_by_stockflow_rules(result: dict[str, Any], settings: Settings,
                                      kinds: dict[str, int]) -> None:
    assert "error" not in result, result
    assert result["events"] == RECORDS
    outcomes = result["outcomes"]
    assert sum(outcomes.values()) == RECORDS
    assert outcomes.get("invalid", 0) == kinds.get(MALFORMED, 0)
    # A redelivered event is a duplicate, or stale once its key moved on; a late snapshot
    # is stale: together exactly the planted ones.
    assert outcomes.get("duplicate", 0) + outcomes.get("stale", 0) == \
        kinds.get(DUPLICATE, 0) + kinds.get(STALE, 0)
    assert result["rate"] > 0 and result["cpu_us_per_event"] > 0
    prefix = result["prefix"]
    assert committed_count(settings, f"{prefix}stock-updates") == outcomes["applied"]
    assert committed_count(settings, f"{prefix}deadletter") == outcomes["invalid"]


def test_confluent_loop_baseline_handles_every_record_once(
        deltas: tuple[Settings, str, dict[str, int]], tmp_path: Path) -> None:
    settings, topic, kinds = deltas
    result = baselines.confluent_loop(settings, topic, RECORDS, tmp_path, timeout_s=60,
                                      cleanup=False)
    try:
        assert result["batches"] >= RECORDS // 500
        assert_handled_by_stockflow_rules(result, settings, kinds)
    finally:
        baselines.delete_peer_topics(settings.confluent_config(), result["prefix"])


def test_quix_streams_baseline_handles_every_record_once(
        deltas: tuple[Settings, str, dict[str, int]], tmp_path: Path) -> None:
    from bench.peer_venv import ensure_quix_venv

    venv = ensure_quix_venv()
    if venv.python is None:
        pytest.skip(f"no Quix Streams venv: {venv.reason}")
    settings, topic, kinds = deltas
    result = baselines.quix_streams(settings, topic, RECORDS, tmp_path, venv.python,
                                    timeout_s=90, cleanup=False)
    try:
        assert_handled_by_stockflow_rules(result, settings, kinds)
    finally:
        # Quix's changelog topics are named after its group, not the prefix.
        baselines.delete_peer_topics(settings.confluent_config(), result["prefix"])
