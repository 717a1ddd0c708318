"""Prometheus metrics of the stockflow processes, declared once here."""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable
from typing import Any

from prometheus_client import Counter, Gauge, Histogram

EVENTS = Counter(
    "stockflow_events_total", "Events handled per stage and outcome", ["stage", "outcome"]
)
DROPPED = Counter(
    "stockflow_dropped_total",
    "Events dropped, by reason: duplicate, stale, invalid:<code>",
    ["reason"],
)
DEAD_LETTERS = Counter("stockflow_dead_letters_total", "Records sent to inventory.deadletter",
                       ["reason"])
GAPS = Counter("stockflow_sequence_gaps_total", "Sequence gaps seen (a resync was requested)",
               ["supplier"])
CLAMPED = Counter("stockflow_clamped_total", "Adjustments clamped at zero", ["supplier"])
CHANGES = Counter("stockflow_changes_emitted_total", "InventoryChange records emitted")
TABLE_KEYS = Gauge(
    "stockflow_table_keys",
    "Keys in a table's active partitions on this worker (RocksDB: its estimate-num-keys)",
    ["table"],
)
SINK_BATCH_SIZE = Histogram(
    "stockflow_sink_batch_size", "Records per sink batch", ["sink"],
    buckets=(1, 5, 10, 50, 100, 250, 500, 1000, 2500, 5000),
)
SINK_LATENCY = Histogram(
    "stockflow_sink_batch_seconds", "Time to write one batch including retries", ["sink"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
SINK_RETRIES = Counter("stockflow_sink_retries_total", "Retried sink writes", ["sink"])
SINK_ERRORS = Counter("stockflow_sink_errors_total", "Failed sink attempts", ["sink", "error"])
CASSANDRA_BATCH_WARNINGS = Counter(
    "stockflow_cassandra_batch_warnings_total",
    "Cassandra's per-request warnings about the sink's batches (size, partitions), not logged")
FRESHNESS = Histogram(
    "stockflow_freshness_seconds",
    "Time from the delta's produce time to the stage's write",
    ["stage"],
    # 25 ms steps up to half a second: the goal (p99 <= 250 ms) and the range around it are
    # read from these buckets, and a quantile is interpolated inside one (a 250-500 ms bucket
    # put every p99 between them near 490 ms).
    buckets=(0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.125, 0.15, 0.175, 0.2, 0.225, 0.25,
             0.275, 0.3, 0.35, 0.4, 0.45, 0.5, 0.75, 1, 2.5, 5, 10, 30),
)
WORKER_LOOP_SECONDS = Counter(
    "stockflow_worker_loop_seconds_total",
    "Wall time of the worker's main loop by phase: poll (waiting for records), process (batches "
    "handed out), settle (waiting for batches still writing before a commit), commit",
    ["phase"],
)
SUPPLIER_LAST_SEEN = Gauge(
    "stockflow_supplier_last_event_timestamp_seconds",
    "Time of the last accepted event per supplier (a silent feed shows as an old value)",
    ["supplier"],
)

# --- observability (issue 8) ----------------------------------------------------------------
WORKER_READY = Gauge(
    "stockflow_worker_ready",
    "1 once table recovery finished and no rebalance is in progress, else 0",
)
REBALANCES = Gauge(
    "stockflow_worker_rebalances", "Rebalances this worker went through since start",
)
# Exported by topologies.runtime.lag.ConsumerLagCollector at scrape time (committed offsets against
# the high watermarks of the worker's input topics): declared here so every metric name of
# stockflow is found in this module.
CONSUMER_LAG_NAME = "stockflow_consumer_lag"
CONSUMER_COMMITTED_NAME = "stockflow_consumer_committed_offset"
CONSUMER_END_NAME = "stockflow_consumer_end_offset"
LAG_SCRAPE_ERRORS = Counter(
    "stockflow_consumer_lag_errors", "Failed lag lookups (Kafka unreachable or slow)",
)


def observe_many(histogram: Any, values: Iterable[float]) -> int:
    """Observe every value into a histogram child (`FRESHNESS.labels(...)`), as `observe`
    per value would, with one lock acquisition per bucket hit instead of two per value.

    prometheus_client has no batch observe; a freshness observation per event cost
    ~2.5 µs in the worker's hot path (two per event: Cassandra and Redis). This fills the
    child's own per-bucket counts and sum (prometheus-client 0.20-0.26, checked by
    tests/unit/pipeline/test_metrics_batch.py against `observe`); a child without them gets
    `observe` per value. Returns how many values were observed."""
    bounds = getattr(histogram, "_upper_bounds", None)
    buckets = getattr(histogram, "_buckets", None)
    total = getattr(histogram, "_sum", None)
    if bounds is None or buckets is None or total is None or len(bounds) != len(buckets):
        n = 0
        for value in values:
            histogram.observe(value)
            n += 1
        return n
    counts = [0] * len(bounds)
    where = bisect_left
    amount = 0.0
    n = 0
    for value in values:
        if value == value:  # NaN is in no bucket, as with observe (but in the sum)
            counts[where(bounds, value)] += 1  # the first bound >= value: `value <= bound`
        amount += value
        n += 1
    for i, count in enumerate(counts):
        if count:
            buckets[i].inc(count)
    if n:
        total.inc(amount)
    return n
