"""Pure parts of observability: lag arithmetic, readiness, the trace replay, top's quantiles."""

from __future__ import annotations

import time
from types import SimpleNamespace
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from connectors.logtools.trace import LogRecord, key_partition, replay_key
from pipeline import metrics
from pipeline.shell.commands.top import Scrape, bucket_quantile, parse_samples, rate, render
from schemas.codec import codec_for
from topologies.runtime.health import is_ready, table_keys, worker_health
from topologies.runtime.lag import (
    ConsumerLagCollector,
    LagLookupError,
    PartitionLag,
    partition_lags,
)

# --- lag ------------------------------------------------------------------------------------


def test_partition_lag() -> None:
    assert PartitionLag("t", 0, committed=7, end=10).lag == 3
    assert PartitionLag("t", 0, committed=None, end=10).lag == 10  # never committed
    assert PartitionLag("t", 0, committed=12, end=10).lag == 0  # end read before a commit


class FakeConsumer:
    """committed()/get_watermark_offsets() of a confluent Consumer, from dicts."""

    def __init__(self, parts: dict[str, int], committed: dict[tuple[str, int], int],
                 ends: dict[tuple[str, int], int]) -> None:
        self.parts, self._committed, self.ends = parts, committed, ends

    def list_topics(self, timeout: float) -> Any:
        return SimpleNamespace(topics={t: SimpleNamespace(partitions={p: None for p in range(n)})
                                       for t, n in self.parts.items()})

    def committed(self, tps: list[Any], timeout: float) -> list[Any]:
        for tp in tps:
            tp.offset = self._committed.get((tp.topic, tp.partition), -1001)
        return tps

    def get_watermark_offsets(self, tp: Any, timeout: float, cached: bool) -> tuple[int, int]:
        return 0, self.ends[(tp.topic, tp.partition)]


def test_partition_lags_reads_every_partition_of_the_known_topics() -> None:
    consumer = FakeConsumer({"d": 2, "c": 1}, {("d", 0): 5, ("c", 0): 4},
                            {("d", 0): 9, ("d", 1): 3, ("c", 0): 4})
    rows = partition_lags(consumer, ["d", "c", "missing"], timeout_s=1)
    assert {(r.topic, r.partition): (r.committed, r.lag) for r in rows} == {
        ("d", 0): (5, 4), ("d", 1): (None, 3), ("c", 0): (4, 0)}


def test_lag_collector_exports_per_partition_and_counts_failures() -> None:
    collector = ConsumerLagCollector({}, "grp", ["d"])
    collector._consumer = FakeConsumer({"d": 2}, {("d", 0): 1}, {("d", 0): 4, ("d", 1): 2})
    registry = CollectorRegistry()
    registry.register(collector)
    body = generate_latest(registry).decode()
    samples = parse_samples(body)
    lag = {dict(k[1])["partition"]: v for k, v in samples.items()
           if k[0] == metrics.CONSUMER_LAG_NAME}
    assert lag == {"0": 3.0, "1": 2.0}

    class Broken:
        def list_topics(self, timeout: float) -> Any:
            from confluent_kafka import KafkaError, KafkaException

            raise KafkaException(KafkaError(KafkaError._TRANSPORT))

    collector._consumer = Broken()
    before = metrics.LAG_SCRAPE_ERRORS._value.get()
    with pytest.raises(LagLookupError):
        collector.lags()
    samples = parse_samples(generate_latest(registry).decode())
    assert not any(k[0] == metrics.CONSUMER_LAG_NAME for k in samples)
    assert metrics.LAG_SCRAPE_ERRORS._value.get() == before + 1


# --- health ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("completed", "in_recovery", "rebalancing", "ready"), [
    (False, False, False, False),  # first recovery not finished
    (False, True, False, False),
    (True, True, False, False),  # a later recovery
    (True, False, True, False),  # rebalancing
    (True, False, False, True),
])
def test_ready_only_after_recovery_and_outside_rebalances(
        completed: bool, in_recovery: bool, rebalancing: bool, ready: bool) -> None:
    assert is_ready(recovery_completed=completed, in_recovery=in_recovery,
                    rebalancing=rebalancing) is ready


def fake_app(*, rebalances: int, rebalancing: bool = False) -> Any:
    runtime = SimpleNamespace(rebalances=rebalances, rebalancing=rebalancing,
                              assignment={("t", 1), ("t", 2), ("t", 3)})
    return SimpleNamespace(conf=SimpleNamespace(id="app"), runtime=runtime)


def test_worker_health_reads_the_runtime_flags() -> None:
    health = worker_health(fake_app(rebalances=0, rebalancing=True))
    assert not health.ready and health.reason == "table recovery in progress"
    health = worker_health(fake_app(rebalances=2, rebalancing=True))
    assert not health.ready and health.reason == "rebalance in progress"
    health = worker_health(fake_app(rebalances=2))
    assert health.ready and health.as_dict()["reason"] == ""
    assert health.assigned_partitions == 3 and health.rebalances == 2


def test_table_keys_sums_the_assigned_partitions(tmp_path: Any) -> None:
    from topologies.app import app

    table = app.tables.get("stock", None)
    if table is None:
        from topologies.process_deltas import stock as table
    table.tabledir = tmp_path
    try:
        for p in (0, 1):
            table.open_partition(p)
            table.set_in(p, f"s|k{p}".encode(), {"quantity": 1, "version": 1, "updated_at": 1,
                                                 "status": "ACTIVE", "platform_sku": "k",
                                                 "suspect": False, "lead_time_days": None,
                                                 "recent_ids": b""})
        for p, rows in list(table.changed()):
            table.persist(p, rows, next_offset=1)
        assert table_keys(table) >= 2
    finally:
        table.close_all()


# --- trace replay ---------------------------------------------------------------------------

CODEC = codec_for("SupplierDelta")
T0 = int(time.time() * 1000)


def delta(sequence: int, quantity: int, event_id: str, kind: str = "SNAPSHOT",
          sku: str = "K") -> dict[str, Any]:
    return {"supplier_id": "s", "sku": sku, "event_id": event_id, "sequence": sequence,
            "kind": kind, "quantity": quantity, "observed_at": T0, "price": None,
            "currency": None, "warehouse": None, "lead_time_days": None, "status": "ACTIVE",
            "connector": "test", "received_at": T0}


def test_replay_tells_each_outcome() -> None:
    key = b"s|K"
    values = [
        CODEC.encode(delta(1, 5, "e1")),
        CODEC.encode(delta(2, 5, "e2")),  # same quantity: noop
        CODEC.encode(delta(1, 9, "e3")),  # older sequence: stale
        CODEC.encode(delta(1, 5, "e1")),  # redelivery: duplicate
        CODEC.encode(delta(3, -1, "e4")),  # negative snapshot: dead letter
        b"garbage",
        CODEC.encode(delta(5, 2, "e5", kind="ADJUSTMENT")),  # gap: applied, resync
    ]
    records = [LogRecord(0, 10 + i, T0 + i, key, v) for i, v in enumerate(values)]
    out = replay_key(records, targets={r.offset for r in records}, dedup_ttl_ms=10**9,
                     platform_sku_of=lambda s, k: f"P-{k}", codec=CODEC)
    outcomes = {offset: o[0] for offset, o in out.items()}
    assert outcomes == {10: "applied", 11: "noop", 12: "stale", 13: "duplicate",
                        14: "invalid:negative_snapshot", 15: "invalid:decode_error",
                        16: "applied"}
    assert out[13][1] == "event_id already accepted at offset 10"
    assert out[12][1] == "sequence 1 <= version 2"
    assert "resync requested" in out[16][1] and out[16][3] == "P-K"


def test_key_partition_matches_the_java_partitioner() -> None:
    from aiokafka.partitioner import DefaultPartitioner

    for key in (b"s|K", b"supplier-1|SKU-000042", "ü|x".encode()):
        parts = list(range(7))
        assert key_partition(key, 7) == DefaultPartitioner()(key, parts, parts)


# --- top ------------------------------------------------------------------------------------


def test_bucket_quantile_is_promql_histogram_quantile() -> None:
    buckets = [(0.1, 50.0), (0.5, 90.0), (1.0, 100.0), (float("inf"), 100.0)]
    assert bucket_quantile(0.5, buckets) == pytest.approx(0.1)
    assert bucket_quantile(0.99, buckets) == pytest.approx(0.95)
    assert bucket_quantile(0.5, [(1.0, 0.0), (float("inf"), 0.0)]) is None
    # Everything above the largest finite bound: PromQL answers that bound.
    assert bucket_quantile(0.9, [(1.0, 0.0), (float("inf"), 10.0)]) == 1.0


def test_rate_handles_new_series_and_restarts() -> None:
    labels = frozenset({("stage", "apply")})
    a = Scrape(at=10.0, samples={("x_total", labels): 100.0})
    b = Scrape(at=12.0, samples={("x_total", labels): 140.0})
    assert rate(a, b, "x_total", labels) == 20.0
    assert rate(None, b, "x_total", labels) is None
    restarted = Scrape(at=14.0, samples={("x_total", labels): 6.0})
    assert rate(b, restarted, "x_total", labels) == 3.0


def test_render_shows_stages_lag_freshness_dead_letters_and_feeds() -> None:
    from rich.console import Console

    text = "\n".join([
        '# TYPE stockflow_events_total counter',
        'stockflow_events_total{stage="apply",outcome="applied"} 42',
        '# TYPE stockflow_consumer_lag gauge',
        'stockflow_consumer_lag{group="g",topic="inventory.deltas",partition="0"} 7',
        'stockflow_consumer_lag{group="g",topic="inventory.deltas",partition="1"} 5',
        '# TYPE stockflow_dropped_total counter',
        'stockflow_dropped_total{reason="invalid:bad_sku"} 3',
        '# TYPE stockflow_supplier_last_event_timestamp_seconds gauge',
        'stockflow_supplier_last_event_timestamp_seconds{supplier="acme"} 1000',
        '# TYPE stockflow_worker_ready gauge',
        'stockflow_worker_ready 1',
    ]) + "\n"
    console = Console(width=120, record=True)
    console.print(render(Scrape(at=1060.0, samples=parse_samples(text)), None))
    out = console.export_text()
    assert "applied" in out and "42" in out
    assert "inventory.deltas" in out and "12" in out  # lag summed over partitions
    assert "invalid:bad_sku" in out
    assert "acme" in out and "60s" in out  # feed age
    assert "ready" in out
