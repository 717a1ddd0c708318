"""Benchmark: Cassandra rows/s and CPU per row: one-by-one inserts, per-partition batches, the sink.

    python -m bench.cassandra_sink --updates 20000 --batch 500 --shape burst --rounds 3

Three ways to write the very rows the sink builds (three prepared INSERTs:
availability_by_sku, stock_by_supplier, change_history), through one session, in the same
run, each round in a rotated order so none always meets a compaction or a flush first:

- `single`: one request per row, the driver's `execute_concurrent_with_args` (its default
  per-request timeout), `--concurrency` in flight;
- `batched`: the same rows of each `--batch` updates grouped per (table, partition key)
  into UNLOGGED batches of at most `--batch-rows` rows with the driver's public API
  (`BatchStatement.add`), through `execute_concurrent`, same concurrency;
- `sink_partition`: `CassandraSink.write_batch` per `--batch` updates with
  `batch_scope="partition"` (a batch holds rows of one partition; coalescing, statement
  building and the in-flight window included; `--concurrency` = max_in_flight);
- `sink`: the same with `batch_scope="replica"`, the default (a batch holds rows of any
  table whose partitions share a replica set, up to `--batch-rows` rows).

CPU per row is this process's CPU (every thread: the driver's reactor too) and, when the
local stack's pid files are found, Cassandra's, over the round. Shapes: `burst` = every
batch is one supplier's run of SKUs (a supplier's file landing), each platform SKU offered
by `--offers` suppliers; `spread` = every batch mixes all suppliers. A throw-away keyspace
is dropped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
import uuid
from pathlib import Path
from typing import Any

from cassandra.concurrent import execute_concurrent, execute_concurrent_with_args
from cassandra.query import BatchStatement, BatchType

from bench.harness import proc_cpu_seconds, stack_pids
from connectors.cassandra.cluster import ClusterConfig, connect
from connectors.cassandra.schema import migrate
from connectors.cassandra.sink import CassandraSink, group_by_partition
from pipeline.log import configure_logging

MODES = ("single", "batched", "sink_partition", "sink")


def make_updates(n: int, round_no: int, *, shape: str, suppliers: int,
                 offers: int) -> list[dict[str, Any]]:
    """n StockUpdates, one per (supplier, sku): nothing coalesces away, every row is written.

    SKU j of supplier s is offered as platform SKU j // 1 of the suppliers s..s+offers-1
    sharing it: each platform SKU has `offers` suppliers.
    """
    per_supplier = -(-n // suppliers)
    version = 1_000 * (round_no + 1)
    updates = []
    for i in range(n):
        if shape == "burst":  # supplier after supplier, each a contiguous run of its SKUs
            supplier, j = divmod(i, per_supplier)
        else:  # round-robin over the suppliers
            j, supplier = divmod(i, suppliers)
        updates.append({
            "platform_sku": f"PSKU-{j}-{supplier // offers}",
            "supplier_id": f"supplier-{supplier}", "sku": f"SKU-{supplier}-{j:08d}",
            "quantity_before": i % 50, "quantity_after": (i * 7) % 500,
            "version": version + i % 5, "status": "ACTIVE", "cause": "ADJUSTMENT",
            "event_id": f"ev-{round_no}-{i}", "observed_at": 1_760_000_000_000 + i,
            "received_at": 1_760_000_000_100 + i, "produced_at": 1_760_000_000_200 + i,
            "price": "19.99", "currency": "EUR", "lead_time_days": 3, "clamped": False,
            "suspect": False,
        })
    return updates


class Meter:
    """Wall time and CPU (this process, Cassandra) of one round."""

    def __init__(self, cassandra_pid: int | None) -> None:
        self._pid = cassandra_pid

    def __enter__(self) -> Meter:
        self._t0 = time.perf_counter()
        self._cpu0 = time.process_time()
        self._cass0 = proc_cpu_seconds(self._pid) if self._pid else 0.0
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self._t0
        self.cpu_s = time.process_time() - self._cpu0
        self.cassandra_cpu_s = (proc_cpu_seconds(self._pid) - self._cass0) if self._pid \
            else float("nan")


def single_round(sink: CassandraSink, batches: list[list[dict[str, Any]]],
                 concurrency: int) -> int:
    """One request per row (execute_concurrent_with_args per statement); returns the rows."""
    rows = 0
    for batch in batches:
        by_statement: dict[Any, list[tuple[Any, ...]]] = {}
        for statement, params in sink.statements_for(batch):
            by_statement.setdefault(statement, []).append(params)
        for statement, rows_params in by_statement.items():
            results = execute_concurrent_with_args(sink.session, statement, rows_params,
                                                   concurrency=concurrency,
                                                   raise_on_first_error=True)
            assert all(ok for ok, _ in results)
            rows += len(rows_params)
    return rows


def batched_round(sink: CassandraSink, batches: list[list[dict[str, Any]]],
                  concurrency: int, batch_rows: int) -> int:
    """Per-partition UNLOGGED batches with the driver's public API; returns the rows."""
    rows = 0
    for batch in batches:
        statements = []
        for insert, table_rows in zip(sink._inserts(), sink.rows_for(batch), strict=True):
            for chunk in group_by_partition(table_rows, insert.partition_columns, batch_rows):
                request = BatchStatement(BatchType.UNLOGGED)
                for params in chunk:
                    request.add(insert.statement, params)
                statements.append((request, ()))
                rows += len(chunk)
        results = execute_concurrent(sink.session, statements, concurrency=concurrency,
                                     raise_on_first_error=True)
        assert all(ok for ok, _ in results)
    return rows


async def sink_round(sink: CassandraSink, batches: list[list[dict[str, Any]]]) -> int:
    """CassandraSink.write_batch per batch; returns the rows."""
    rows = 0
    for batch in batches:
        rows += await sink.write_batch(batch)
    return rows


async def run(args: argparse.Namespace) -> dict[str, dict[str, float]]:
    ks = "sf_bench_" + uuid.uuid4().hex[:8]
    cluster, session = connect(ClusterConfig())
    migrate(session, ks, replication="{'class': 'SimpleStrategy', 'replication_factor': 1}",
            history_ttl_s=3600, stock_buckets=64)
    sink = CassandraSink(keyspace=ks, max_in_flight=args.concurrency,
                         batch_rows=args.batch_rows)
    await sink.start()
    partition_sink = CassandraSink(keyspace=ks, max_in_flight=args.concurrency,
                                   batch_rows=args.batch_rows, batch_scope="partition")
    await partition_sink.start()
    cassandra_pid = stack_pids(Path(args.stack_dir)).get("cassandra")
    modes = tuple(args.modes.split(",")) if args.modes else MODES
    results: dict[str, list[tuple[int, Meter]]] = {mode: [] for mode in modes}

    def make(n: int, round_no: int) -> list[dict[str, Any]]:
        return make_updates(n, round_no, shape=args.shape, suppliers=args.suppliers,
                            offers=args.offers)

    try:
        # Warm-up: connections, prepared-statement caches, JIT on the server.
        warm = make(3_000, 0)
        await sink.write_batch(warm)
        await partition_sink.write_batch(warm[2000:])
        await asyncio.to_thread(single_round, sink, [warm[:1000]], args.concurrency)
        await asyncio.to_thread(batched_round, sink, [warm[1000:2000]], args.concurrency,
                                args.batch_rows)
        for r in range(args.rounds):
            order = modes[r % len(modes):] + modes[:r % len(modes)]
            for k, mode in enumerate(order):
                # A newer version of every row each time: every write really writes.
                updates = make(args.updates, len(modes) * r + k + 1)
                batches = [updates[i:i + args.batch]
                           for i in range(0, len(updates), args.batch)]
                with Meter(cassandra_pid) as meter:
                    if mode == "single":
                        rows = await asyncio.to_thread(single_round, sink, batches,
                                                       args.concurrency)
                    elif mode == "batched":
                        rows = await asyncio.to_thread(batched_round, sink, batches,
                                                       args.concurrency, args.batch_rows)
                    elif mode == "sink_partition":
                        rows = await sink_round(partition_sink, batches)
                    else:
                        rows = await sink_round(sink, batches)
                results[mode].append((rows, meter))
            print(f"round {r + 1}: " + ", ".join(
                f"{mode} {rows / m.seconds:,.0f} rows/s, Cassandra "
                f"{m.cassandra_cpu_s * 1e6 / rows:.1f} us/row" for mode in modes
                for rows, m in results[mode][-1:]), flush=True)
    finally:
        await sink.close()
        await partition_sink.close()
        session.execute(f"DROP KEYSPACE IF EXISTS {ks}", timeout=120)
        cluster.shutdown()
    summary: dict[str, dict[str, float]] = {}
    for mode, runs in results.items():
        summary[mode] = {
            "rows": runs[0][0],
            "rows_s": statistics.median(rows / m.seconds for rows, m in runs),
            "client_us_row": statistics.median(m.cpu_s * 1e6 / rows for rows, m in runs),
            "cassandra_us_row": statistics.median(m.cassandra_cpu_s * 1e6 / rows
                                                  for rows, m in runs),
        }
    if "sink" in summary:
        summary["sink"]["requests"] = sink.stats.requests
    if "sink_partition" in summary:
        summary["sink_partition"]["requests"] = partition_sink.stats.requests
    return summary


def main() -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--updates", type=int, default=20_000)
    parser.add_argument("--batch", type=int, default=500, help="updates per write_batch")
    parser.add_argument("--batch-rows", type=int, default=50,
                        help="rows per unlogged batch (cassandra_batch_rows)")
    parser.add_argument("--concurrency", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--modes", default="", help=f"comma-separated subset of {MODES}")
    parser.add_argument("--shape", choices=("burst", "spread"), default="burst")
    parser.add_argument("--suppliers", type=int, default=20)
    parser.add_argument("--offers", type=int, default=4,
                        help="suppliers per platform SKU")
    parser.add_argument("--stack-dir", default=".stockflow/stack",
                        help="the local stack's directory (for Cassandra's pid)")
    args = parser.parse_args()
    configure_logging(json=False, level="WARNING")
    summary = asyncio.run(run(args))
    print(f"median of {args.rounds} rounds, {args.updates:,} updates "
          f"({next(iter(summary.values()))['rows']:,.0f} rows) per round, shape {args.shape}, "
          f"batch {args.batch}, batch rows {args.batch_rows}, concurrency {args.concurrency}:")
    print("| mode | rows/s | client CPU µs/row | Cassandra CPU µs/row |")
    print("|---|---|---|---|")
    for mode, s in summary.items():
        print(f"| {mode} | {s['rows_s']:,.0f} | {s['client_us_row']:.1f} | "
              f"{s['cassandra_us_row']:.1f} |")


if __name__ == "__main__":
    main()
