"""Benchmark: rows/s of CassandraSink.write_batch vs raw execute_concurrent_with_args, same rows.

    python -m bench.cassandra_sink --updates 20000 --batch 500 --concurrency 128 --rounds 3

Both write the very rows the sink builds (three prepared INSERTs: availability_by_sku,
stock_by_supplier, change_history), through the same session, with the same concurrency,
alternating raw and sink rounds so both see the same machine load. Uses a throw-away
keyspace that is dropped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
import uuid
from collections import defaultdict
from typing import Any

from cassandra.concurrent import execute_concurrent_with_args

from connectors.cassandra_cluster import ClusterConfig, connect
from connectors.cassandra_schema import migrate
from connectors.cassandra_sink import CassandraSink
from pipeline.log import configure_logging


def make_updates(n: int, round_no: int) -> list[dict[str, Any]]:
    """n StockUpdates with distinct keys (nothing coalesces away: every row is written)."""
    version = 1_000 * (round_no + 1)
    return [{
        "platform_sku": f"PSKU-{i % (n // 3 or 1)}", "supplier_id": f"supplier-{i % 37}",
        "sku": f"SKU-{i:08d}", "quantity_before": i % 50, "quantity_after": (i * 7) % 500,
        "version": version + i % 5, "status": "ACTIVE", "cause": "ADJUSTMENT",
        "event_id": f"ev-{round_no}-{i}", "observed_at": 1_760_000_000_000 + i,
        "received_at": 1_760_000_000_100 + i, "produced_at": 1_760_000_000_200 + i,
        "price": "19.99", "currency": "EUR", "lead_time_days": 3, "clamped": False,
        "suspect": False,
    } for i in range(n)]


def raw_round(sink: CassandraSink, batches: list[list[dict[str, Any]]], concurrency: int) -> float:
    """Rows/s of execute_concurrent_with_args over exactly the rows the sink would write."""
    by_statement: dict[Any, list[tuple[Any, ...]]] = defaultdict(list)
    rows = 0
    for batch in batches:
        for statement, params in sink.statements_for(batch):
            by_statement[statement].append(params)
            rows += 1
    t0 = time.perf_counter()
    for statement, rows_params in by_statement.items():
        results = execute_concurrent_with_args(sink.session, statement, rows_params,
                                               concurrency=concurrency, raise_on_first_error=True)
        assert all(ok for ok, _ in results)
    return rows / (time.perf_counter() - t0)


async def sink_round(sink: CassandraSink, batches: list[list[dict[str, Any]]]) -> float:
    """Rows/s of write_batch, statement building and coalescing included."""
    rows = 0
    t0 = time.perf_counter()
    for batch in batches:
        rows += await sink.write_batch(batch)
    return rows / (time.perf_counter() - t0)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    ks = "sf_bench_" + uuid.uuid4().hex[:8]
    cluster, session = connect(ClusterConfig())
    migrate(session, ks, replication="{'class': 'SimpleStrategy', 'replication_factor': 1}",
            history_ttl_s=3600, stock_buckets=64)
    sink = CassandraSink(keyspace=ks, max_in_flight=args.concurrency)
    await sink.start()
    raw: list[float] = []
    sunk: list[float] = []
    try:
        # Warm-up: connections, prepared-statement caches, JIT on the server.
        warm = make_updates(2_000, 0)
        await sink.write_batch(warm)
        for r in range(args.rounds):
            updates = make_updates(args.updates, r + 1)
            batches = [updates[i:i + args.batch] for i in range(0, len(updates), args.batch)]
            # Alternate who goes first so neither always meets a compaction or a flush.
            if r % 2 == 0:
                raw.append(await asyncio.to_thread(raw_round, sink, batches, args.concurrency))
                sunk.append(await sink_round(sink, batches))
            else:
                sunk.append(await sink_round(sink, batches))
                raw.append(await asyncio.to_thread(raw_round, sink, batches, args.concurrency))
            print(f"round {r + 1}: raw {raw[-1]:,.0f} rows/s, sink {sunk[-1]:,.0f} rows/s "
                  f"({sunk[-1] / raw[-1]:.0%})", flush=True)
    finally:
        await sink.close()
        session.execute(f"DROP KEYSPACE IF EXISTS {ks}", timeout=120)
        cluster.shutdown()
    raw_median, sink_median = statistics.median(raw), statistics.median(sunk)
    return {"updates": args.updates, "batch": args.batch, "concurrency": args.concurrency,
            "rows_per_round": 3 * args.updates, "raw_rows_s": raw_median,
            "sink_rows_s": sink_median, "ratio": sink_median / raw_median}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--updates", type=int, default=20_000)
    parser.add_argument("--batch", type=int, default=500, help="updates per write_batch")
    parser.add_argument("--concurrency", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    configure_logging(json=False, level="WARNING")
    result = asyncio.run(run(args))
    print(f"median of {args.rounds} rounds, {result['rows_per_round']:,} rows each: "
          f"raw {result['raw_rows_s']:,.0f} rows/s, sink {result['sink_rows_s']:,.0f} rows/s, "
          f"sink/raw = {result['ratio']:.1%}")


if __name__ == "__main__":
    main()
