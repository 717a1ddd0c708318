"""Replay rate vs raw confluent-kafka consumption of the same inventory.deltas, in one run.

Produces N SupplierDeltas over K keys (many events per key) into an isolated topic, then
measures (1) a raw read of the whole topic with confluent-kafka (no decode), (2) a fold
without writes (decode + validate + apply + aggregate), and (3) the replay into Cassandra and
Redis, with and without the full change history. Uses its own topics, keyspace and Redis prefix;
everything is removed at the end.

    python -m bench.replay --events 200000 --keys 2000
"""

from __future__ import annotations

import argparse
import asyncio
import random
import tempfile
import time
from pathlib import Path

from bench.pipeline_env import PipelineEnv


def produce(env: PipelineEnv, events: int, keys: int) -> None:
    rng = random.Random(1)
    now = int(time.time() * 1000) - 600_000
    seqs: dict[int, int] = {}
    with env.producer() as producer:
        for i in range(events):
            k = rng.randrange(keys)
            seq = seqs[k] = seqs.get(k, 0) + 1
            ts = now + i // 100
            producer.produce({
                "supplier_id": f"s{k % 7}", "sku": f"sku-{k}", "event_id": f"e{k}-{seq}",
                "sequence": seq, "kind": "SNAPSHOT", "quantity": rng.randint(0, 500),
                "observed_at": ts, "price": "9.99", "currency": "EUR", "warehouse": None,
                "lead_time_days": 2, "status": "ACTIVE", "connector": "bench",
                "received_at": ts}, timestamp_ms=ts)
        producer.flush(300)


def raw_read(env: PipelineEnv) -> tuple[int, float]:
    from connectors.logtools.runner import new_reader

    with new_reader(env.settings, 20000) as reader:
        marks = reader.watermarks()
        t0 = time.perf_counter()
        n = sum(len(b) for b in reader.read({p: lo for p, (lo, _) in marks.items()},
                                            {p: hi for p, (_, hi) in marks.items()}))
        return n, time.perf_counter() - t0


def fold_only(env: PipelineEnv) -> tuple[int, float]:
    from connectors.logtools.runner import fold_log, new_fold, new_reader

    with new_reader(env.settings, 20000) as reader:
        marks = reader.watermarks()
        t0 = time.perf_counter()
        n = fold_log(reader, new_fold(env.settings), {p: lo for p, (lo, _) in marks.items()},
                     {p: hi for p, (_, hi) in marks.items()})
        return n, time.perf_counter() - t0


async def replay(env: PipelineEnv, history: bool) -> tuple[int, float, int]:
    from connectors.cassandra.sink import CassandraSink
    from connectors.logtools.runner import Replay, ReplayWindow, new_fold, new_reader
    from connectors.redis.cache import RedisCache

    sink = CassandraSink.from_settings(env.settings)
    await sink.start()
    cache = RedisCache.from_settings(env.settings)
    try:
        with new_reader(env.settings, 20000) as reader:
            marks = reader.watermarks()
            start = {p: lo for p, (lo, _) in marks.items()}
            end = {p: hi for p, (_, hi) in marks.items()}
            run = Replay(reader, new_fold(env.settings), fold_start=start, fold_end=end,
                         window=ReplayWindow(start, end), sink=sink, cache=cache,
                         history=history)
            t0 = time.perf_counter()
            result = await run.run()
            return result.read, time.perf_counter() - t0, result.rows_written
    finally:
        await sink.close()
        await cache.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--keys", type=int, default=2_000)
    args = parser.parse_args()
    env = PipelineEnv(Path(tempfile.mkdtemp(prefix="bench-replay-")))
    try:
        env.setup()
        t0 = time.perf_counter()
        produce(env, args.events, args.keys)
        print(f"produced {args.events} events over {args.keys} keys "
              f"in {time.perf_counter() - t0:.1f}s")
        for name, fn in (("raw confluent-kafka read", lambda: raw_read(env)),
                         ("fold (decode+validate+apply+aggregate)", lambda: fold_only(env))):
            n, dt = fn()
            print(f"{name:45} {n:>9} events {dt:6.2f}s {n / dt:>10,.0f} ev/s")
        for history in (False, True):
            n, dt, rows = asyncio.run(replay(env, history))
            label = f"replay into Cassandra+Redis ({'full history' if history else 'no-history'})"
            print(f"{label:45} {n:>9} events {dt:6.2f}s {n / dt:>10,.0f} ev/s "
                  f"({rows} Cassandra rows)")
    finally:
        env.cleanup()


if __name__ == "__main__":
    main()
