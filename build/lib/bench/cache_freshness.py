"""Benchmark: freshness (delta produced -> Redis written) of the running pipeline at given rates.

    python -m bench.cache_freshness --rates 1000,5000 --duration 30

Runs the real `stockflow worker` (exactly-once by default) in an isolated namespace through
`bench/pipeline_env.PipelineEnv` (own topic prefix, app id, Cassandra keyspace,
Redis key prefix, ports), produces SupplierDelta SNAPSHOTs at each rate (every one changes a
quantity, so every one becomes an InventoryChange and a Redis write), waits until the worker
has caught up, and reports p50/p99 of `stockflow_freshness_seconds{stage="redis"}` over that
window (the histogram's buckets, linearly interpolated), the worker's CPU share and the mean
Cassandra and Redis batch times. Everything it created is removed at the end.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

FRESHNESS_PREFIX = "stockflow_freshness_seconds_bucket{"
Buckets = list[tuple[float, float]]


def buckets_of(samples: dict[str, float]) -> Buckets:
    """Cumulative (upper bound, count) of the Redis freshness histogram; [] before any write."""
    out = []
    for name, value in samples.items():
        if name.startswith(FRESHNESS_PREFIX) and 'stage="redis"' in name:
            le = name.split('le="', 1)[1].split('"', 1)[0]
            out.append((float(le), value))
    return sorted(out)


def quantile(before: Buckets, after: Buckets, q: float) -> float:
    """The q-quantile of the observations between two scrapes (interpolated in a bucket)."""
    start = dict(before)
    deltas = [(le, count - start.get(le, 0.0)) for le, count in after]
    total = deltas[-1][1]
    if total <= 0:
        return float("nan")
    rank = q * total
    lower, below = 0.0, 0.0
    for le, cumulative in deltas:
        if cumulative >= rank:
            if le == float("inf"):
                return lower
            inside = cumulative - below
            return lower + (le - lower) * ((rank - below) / inside if inside else 1.0)
        lower, below = le, cumulative
    return lower


def _count(buckets: Buckets) -> float:
    return buckets[-1][1] if buckets else 0.0


def _mean(samples: dict[str, float], before: dict[str, float], name: str, sink: str) -> float:
    """Mean of a histogram between two scrapes (NaN when nothing was observed)."""
    key_sum, key_count = f'{name}_sum{{sink="{sink}"}}', f'{name}_count{{sink="{sink}"}}'
    n = samples.get(key_count, 0.0) - before.get(key_count, 0.0)
    return (samples.get(key_sum, 0.0) - before.get(key_sum, 0.0)) / n if n else float("nan")


def _cpu_seconds(pid: int) -> float:
    """utime + stime of a process and its reaped children, from /proc (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(x) for x in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def produce_at_rate(producer: Any, rate: int, duration_s: float, skus: int, suppliers: int,
                    sequences: dict[tuple[str, str], int]) -> int:
    """SNAPSHOTs at `rate` events/s for `duration_s`, paced per 10 ms slice; returns the count."""
    sent = 0
    start = time.monotonic()
    n = 0
    while True:
        elapsed = time.monotonic() - start
        if elapsed >= duration_s:
            break
        due = int(elapsed * rate)
        now_ms = int(time.time() * 1000)
        while sent < due:
            supplier, sku = f"s{n % suppliers}", f"SKU-{(n // suppliers) % skus}"
            n += 1
            seq = sequences.get((supplier, sku), 0) + 1
            sequences[(supplier, sku)] = seq
            producer.produce({
                "supplier_id": supplier, "sku": sku, "event_id": f"{supplier}-{sku}-{seq}",
                "sequence": seq, "kind": "SNAPSHOT", "quantity": seq % 1000 + 1,
                "observed_at": now_ms, "price": None, "currency": None, "warehouse": None,
                "lead_time_days": None, "status": "ACTIVE", "connector": "bench",
                "received_at": now_ms,
            })
            sent += 1
        time.sleep(0.01)
    producer.flush()
    return sent


def run(rates: list[int], duration_s: float, skus: int, suppliers: int, guarantee: str,
        partitions: int, keep: bool, drain_s: float = 120.0) -> list[dict[str, Any]]:
    """Start a worker, measure each rate, clean up; one result dict per rate."""
    sys.path.insert(0, str(Path(__file__).parents[1]))
    from bench.pipeline_env import PipelineEnv

    tmp = Path(tempfile.mkdtemp(prefix="stockflow-bench-"))
    env = PipelineEnv(tmp, partitions=partitions, guarantee=guarantee)
    results: list[dict[str, Any]] = []
    sequences: dict[tuple[str, str], int] = {}
    print(f"worker logs: {tmp}/worker-0.log", file=sys.stderr)
    try:
        env.setup()
        env.start_worker()
        assert env.worker is not None
        pid = env.worker.pid

        def scrape() -> dict[str, float]:
            try:
                return env.metrics()
            except OSError:
                return {}

        progress_at = [time.monotonic()]

        def caught_up() -> bool:
            """Nothing left on the worker's input topics (progress every 10 s)."""
            topics = env.settings.worker_input_topics()
            lags = [env.lag(t) for t in topics]
            if time.monotonic() - progress_at[0] > 10:
                progress_at[0] = time.monotonic()
                print(f"  written {_count(buckets_of(scrape())):.0f}, lag "
                      f"{dict(zip(topics, lags, strict=True))}", file=sys.stderr)
            return not any(lags)

        env.wait_until(lambda: scrape() != {}, 120, "the worker's metrics endpoint")
        producer = env.producer()
        # Warm-up: partitions assigned, tables recovered, first writes done.
        warm = produce_at_rate(producer, 200, 3, skus, suppliers, sequences)
        env.wait_until(lambda: _count(buckets_of(scrape())) >= warm or caught_up(), 180,
                       "the warm-up to reach Redis")
        print(f"warm-up: {warm} sent, {_count(buckets_of(scrape())):.0f} written to Redis",
              file=sys.stderr)
        for rate in rates:
            before = scrape()
            cpu0, t0 = _cpu_seconds(pid), time.monotonic()
            sent = produce_at_rate(producer, rate, duration_s, skus, suppliers, sequences)
            achieved = sent / (time.monotonic() - t0)
            target = _count(buckets_of(before)) + sent

            def written_all(t: float = target) -> bool:
                return _count(buckets_of(scrape())) >= t or caught_up()

            try:
                env.wait_until(written_all, drain_s, f"{sent} changes at {rate}/s")
                drained = True
            except AssertionError:
                # The worker did not keep up: report what reached Redis within the window
                # (the quantiles then only cover those writes, a lower bound).
                drained = False
            busy = time.monotonic() - t0
            cpu = (_cpu_seconds(pid) - cpu0) / busy
            after = scrape()
            written = _count(buckets_of(after)) - _count(buckets_of(before))
            results.append({
                "rate": rate, "achieved": achieved, "events": sent, "written": written,
                "drained": drained, "seconds": busy,
                "p50_ms": 1000 * quantile(buckets_of(before), buckets_of(after), 0.50),
                "p99_ms": 1000 * quantile(buckets_of(before), buckets_of(after), 0.99),
                "worker_cpu": cpu,
                "cassandra_batch_ms": 1000 * _mean(after, before,
                                                   "stockflow_sink_batch_seconds", "cassandra"),
                "redis_batch_ms": 1000 * _mean(after, before,
                                               "stockflow_sink_batch_seconds", "redis"),
                "cassandra_batch": _mean(after, before, "stockflow_sink_batch_size",
                                         "cassandra"),
            })
        producer.close()
    finally:
        if keep:
            env.kill_worker()
        else:
            env.cleanup()
    return results


def main() -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rates", default="1000,5000", help="events/s, comma separated")
    parser.add_argument("--duration", type=float, default=30.0, help="seconds per rate")
    parser.add_argument("--skus", type=int, default=5000)
    parser.add_argument("--suppliers", type=int, default=10)
    parser.add_argument("--guarantee", default="exactly_once",
                        choices=["exactly_once", "at_least_once"])
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--drain", type=float, default=120.0,
                        help="seconds to wait for the worker to catch up after each rate")
    parser.add_argument("--keep", action="store_true", help="keep topics, keyspace and keys")
    args = parser.parse_args()
    results = run([int(r) for r in args.rates.split(",")], args.duration, args.skus,
                  args.suppliers, args.guarantee, args.partitions, args.keep, args.drain)
    print("| target events/s | achieved | events | written to Redis (s) | p50 ms | p99 ms "
          "| worker CPU | Cassandra batch (mean rows, ms) | Redis batch ms |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in results:
        late = "" if r["drained"] else " not drained"
        print(f"| {r['rate']:,} | {r['achieved']:,.0f} | {r['events']:,} "
              f"| {r['written']:,.0f} ({r['seconds']:.0f} s{late}) "
              f"| {r['p50_ms']:.0f} | {r['p99_ms']:.0f} | {100 * r['worker_cpu']:.0f} % "
              f"| {r['cassandra_batch']:.0f}, {r['cassandra_batch_ms']:.0f} "
              f"| {r['redis_batch_ms']:.1f} |")


if __name__ == "__main__":
    main()
