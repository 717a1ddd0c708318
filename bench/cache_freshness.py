"""Benchmark: freshness (delta produced -> Redis written) of the running pipeline at given rates.

    python -m bench.cache_freshness --rates 1000,5000 --duration 30

Starts a `stockflow worker` (exactly-once by default) in an isolated namespace (own topic
prefix, app id, Cassandra keyspace, Redis key prefix, ports), produces SupplierDelta
SNAPSHOTs at each rate (every one changes a quantity, so every one becomes an
InventoryChange and a Redis write), waits until the worker has written all of them to Redis,
and reports p50/p99 of `stockflow_freshness_seconds{stage="redis"}` over that window (the
histogram's buckets, linearly interpolated). Everything it created is removed at the end.
"""

from __future__ import annotations

import argparse
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

FRESHNESS_BUCKET = re.compile(
    r'^stockflow_freshness_seconds_bucket\{le="([^"]+)",stage="redis"\} ([0-9.e+]+)$')


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def scrape_buckets(port: int) -> list[tuple[float, float]]:
    """Cumulative (upper bound, count) of the Redis freshness histogram; [] before any write."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    out = []
    for line in text.splitlines():
        m = FRESHNESS_BUCKET.match(line)
        if m:
            out.append((float(m.group(1)), float(m.group(2))))
    return sorted(out)


def quantile(before: list[tuple[float, float]], after: list[tuple[float, float]],
             q: float) -> float:
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


def _count(buckets: list[tuple[float, float]]) -> float:
    return buckets[-1][1] if buckets else 0.0


def _wait_for(what: str, predicate: Any, timeout_s: float, poll_s: float = 0.25) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout_s:.0f}s waiting for {what}")
        time.sleep(poll_s)


class Namespace:
    """The isolated settings of one benchmark run, as environment for the worker."""

    def __init__(self, data_dir: Path, guarantee: str) -> None:
        run = uuid.uuid4().hex[:8]
        self.env = {
            "STOCKFLOW_TOPIC_PREFIX": f"bench-{run}.",
            "STOCKFLOW_APP_ID": f"stockflow-bench-{run}",
            "STOCKFLOW_CASSANDRA_KEYSPACE": f"bench_{run}",
            "STOCKFLOW_REDIS_CACHE_KEY_PREFIX": f"bench-{run}:",
            "STOCKFLOW_METRICS_PORT": str(_free_port()),
            "STOCKFLOW_WEB_PORT": str(_free_port()),
            "STOCKFLOW_DATA_DIR": str(data_dir / "worker"),
            "STOCKFLOW_PROCESSING_GUARANTEE": guarantee,
            "STOCKFLOW_LOG_JSON": "true",
        }

    def settings(self) -> Any:
        from pipeline.settings import Settings

        saved = {k: os.environ.get(k) for k in self.env}
        os.environ.update(self.env)
        try:
            return Settings()
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v


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
        keep: bool) -> list[dict[str, Any]]:
    """Start a worker, measure each rate, clean up; one result dict per rate."""
    from connectors.cassandra_cluster import ClusterConfig, connect
    from connectors.cassandra_schema import migrate
    from connectors.delta_producer import DeltaProducer
    from topologies.topics import create_topics

    tmp = Path(tempfile.mkdtemp(prefix="stockflow-bench-"))
    ns = Namespace(tmp, guarantee)
    settings = ns.settings()
    metrics_port = settings.metrics_port
    create_topics(settings)
    cluster, session = connect(ClusterConfig.from_settings(settings))
    migrate(session, settings.cassandra_keyspace, replication=settings.cassandra_replication,
            history_ttl_s=3600, stock_buckets=8)
    log = (tmp / "worker.log").open("wb")
    worker = subprocess.Popen(
        [sys.executable, "-c", "from pipeline.cli import main; main()", "worker"],
        env={**os.environ, **ns.env}, stdout=log, stderr=subprocess.STDOUT)
    results: list[dict[str, Any]] = []
    sequences: dict[tuple[str, str], int] = {}
    print(f"worker log: {tmp}/worker.log", file=sys.stderr)
    try:
        def written() -> float:
            """Changes written to Redis so far; -1 while the endpoint does not answer."""
            if worker.poll() is not None:
                raise RuntimeError(f"worker exited {worker.returncode}; see {tmp}/worker.log")
            try:
                return _count(scrape_buckets(metrics_port))
            except OSError:
                return -1.0

        _wait_for("the worker's metrics endpoint", lambda: written() >= 0, 120)
        producer = DeltaProducer(settings.confluent_config(), settings.topic("inventory.deltas"))
        # Warm-up: partitions assigned, tables recovered, first writes done.
        warm = produce_at_rate(producer, 200, 3, skus, suppliers, sequences)
        _wait_for("the warm-up to reach Redis", lambda: written() >= warm, 180)
        for rate in rates:
            before = scrape_buckets(metrics_port)
            t0 = time.monotonic()
            sent = produce_at_rate(producer, rate, duration_s, skus, suppliers, sequences)
            achieved = sent / (time.monotonic() - t0)
            target = _count(before) + sent
            _wait_for(f"{sent} changes at {rate}/s to reach Redis",
                      lambda t=target: written() >= t,
                      120 + duration_s)
            after = scrape_buckets(metrics_port)
            results.append({"rate": rate, "achieved": achieved, "events": sent,
                            "p50_ms": 1000 * quantile(before, after, 0.50),
                            "p99_ms": 1000 * quantile(before, after, 0.99)})
        producer.close()
    finally:
        worker.terminate()
        try:
            worker.wait(timeout=30)
        except subprocess.TimeoutExpired:
            worker.kill()
        log.close()
        if not keep:
            _cleanup(settings, session)
        cluster.shutdown()
    return results


def _cleanup(settings: Any, session: Any) -> None:
    """Drop exactly what this run created: its topics, keyspace and Redis keys."""
    import redis
    from confluent_kafka.admin import AdminClient

    admin = AdminClient(settings.confluent_config())
    mine = [t for t in admin.list_topics(timeout=30).topics
            if t.startswith(settings.topic_prefix) or t.startswith(f"{settings.app_id}-")]
    if mine:
        for fut in admin.delete_topics(mine, operation_timeout=60).values():
            try:
                fut.result()
            except Exception as exc:  # cleanup is best effort; say what was left
                print(f"could not delete a topic: {exc}", file=sys.stderr)
    session.execute(f"DROP KEYSPACE IF EXISTS {settings.cassandra_keyspace}", timeout=120)
    client = redis.Redis.from_url(settings.redis_url.get_secret_value())
    for key in client.scan_iter(match=f"{settings.redis_cache_key_prefix}*", count=1000):
        client.unlink(key)
    client.close()


def main() -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rates", default="1000,5000", help="events/s, comma separated")
    parser.add_argument("--duration", type=float, default=30.0, help="seconds per rate")
    parser.add_argument("--skus", type=int, default=5000)
    parser.add_argument("--suppliers", type=int, default=10)
    parser.add_argument("--guarantee", default="exactly_once",
                        choices=["exactly_once", "at_least_once"])
    parser.add_argument("--keep", action="store_true", help="keep topics, keyspace and keys")
    args = parser.parse_args()
    results = run([int(r) for r in args.rates.split(",")], args.duration, args.skus,
                  args.suppliers, args.guarantee, args.keep)
    print("| target events/s | achieved | events | p50 ms | p99 ms |")
    print("|---|---|---|---|---|")
    for r in results:
        print(f"| {r['rate']:,} | {r['achieved']:,.0f} | {r['events']:,} | {r['p50_ms']:.0f} "
              f"| {r['p99_ms']:.0f} |")


if __name__ == "__main__":
    main()
