"""Micro benchmark: RedisCache.apply_batch keys/s against a raw pipeline of HSETs of the same keys.

    python -m bench.redis_cache --url redis://127.0.0.1:6379/0 --keys 20000 --batch 1000

Both sides write the same keys, one pipeline per batch, in the same run and alternating
rounds; the ratio is the price of the version guard (HGET + compare + recompute in Lua).
Each side's client CPU per key (this process) and Redis's (from INFO's used_cpu) are
reported too.
Keys live under a fresh prefix that is deleted afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
import uuid
from typing import Any

from connectors.redis.cache import RedisCache


def _changes(n: int, version: int, supplier: int) -> list[dict[str, Any]]:
    now = int(time.time() * 1000)
    return [
        {"platform_sku": f"SKU-{i}", "supplier_id": f"s{supplier}", "sku": f"X-{i}",
         "quantity_before": 0, "quantity_after": (i * 7 + version) % 100, "version": version,
         "total_available": 0, "best_supplier": None, "status": "ACTIVE", "cause": "SNAPSHOT",
         "event_id": f"{i}-{version}", "observed_at": now, "produced_at": now, "changed_at": now}
        for i in range(n)
    ]


async def _server_cpu(cache: RedisCache) -> float:
    info = await cache.client.info("cpu")
    return float(info["used_cpu_sys"]) + float(info["used_cpu_user"])


async def _metered(cache: RedisCache, n: int, work: Any) -> tuple[float, float, float]:
    """(keys/s, client CPU µs a key, Redis CPU µs a key) of one round."""
    server0, cpu0, t0 = await _server_cpu(cache), time.process_time(), time.perf_counter()
    await work
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    server = await _server_cpu(cache) - server0
    return n / wall, cpu * 1e6 / n, server * 1e6 / n


async def _cas_round(cache: RedisCache, changes: list[dict[str, Any]], batch: int) -> float:
    t0 = time.perf_counter()
    for i in range(0, len(changes), batch):
        await cache.apply_batch(changes[i:i + batch])
    return len(changes) / (time.perf_counter() - t0)


async def _raw_round(cache: RedisCache, changes: list[dict[str, Any]], batch: int,
                     prefix: str) -> float:
    """The same keys and fields written blindly: HSET (+ PEXPIRE), no guard, no recompute."""
    client = cache.client
    t0 = time.perf_counter()
    for i in range(0, len(changes), batch):
        async with client.pipeline(transaction=False) as pipe:
            for c in changes[i:i + batch]:
                key = f"{prefix}{c['platform_sku']}"
                sup = c["supplier_id"]
                pipe.hset(key, mapping={
                    f"q:{sup}": c["quantity_after"], f"v:{sup}": c["version"],
                    f"s:{sup}": c["status"], f"k:{sup}": c["sku"], f"t:{sup}": c["changed_at"],
                    "total": c["quantity_after"], "best": sup, "updated_at": c["changed_at"],
                })
                pipe.pexpire(key, cache.ttl_ms)
            await pipe.execute()
    return len(changes) / (time.perf_counter() - t0)


async def run(url: str, keys: int, batch: int, rounds: int, suppliers: int) -> dict[str, float]:
    """Alternate CAS and raw rounds (each round a newer version of every key); medians."""
    prefix = f"bench-{uuid.uuid4().hex[:8]}:"
    cache = RedisCache(url, key_prefix=prefix, ttl_s=3600)
    cas: list[tuple[float, float, float]] = []
    raw: list[tuple[float, float, float]] = []
    try:
        # Warm up: every hash holds `suppliers` suppliers, so the recompute has real work.
        for s in range(suppliers):
            warm = _changes(keys, 1, s)
            for i in range(0, keys, batch):
                await cache.apply_batch(warm[i:i + batch])
            await _raw_round(cache, warm, batch, f"{prefix}raw:")
        for r in range(rounds):
            changes = _changes(keys, r + 2, r % suppliers)
            cas.append(await _metered(cache, keys, _cas_round(cache, changes, batch)))
            raw.append(await _metered(cache, keys, _raw_round(cache, changes, batch,
                                                              f"{prefix}raw:")))
    finally:
        async for key in cache.client.scan_iter(match=f"{prefix}*", count=1000):
            await cache.client.unlink(key)
        await cache.close()
    def med(runs: list[tuple[float, float, float]], i: int) -> float:
        return statistics.median(r[i] for r in runs)

    return {"cas_keys_per_s": med(cas, 0), "raw_keys_per_s": med(raw, 0),
            "ratio": med(cas, 0) / med(raw, 0),
            "cas_client_us": med(cas, 1), "raw_client_us": med(raw, 1),
            "cas_redis_us": med(cas, 2), "raw_redis_us": med(raw, 2)}


def main() -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--keys", type=int, default=20_000)
    parser.add_argument("--batch", type=int, default=1_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--suppliers", type=int, default=4,
                        help="suppliers per hash (the recompute reads them all)")
    args = parser.parse_args()
    result = asyncio.run(run(args.url, args.keys, args.batch, args.rounds, args.suppliers))
    print(f"| keys {args.keys} | batch {args.batch} | apply_batch {result['cas_keys_per_s']:,.0f} "
          f"keys/s | raw HSET pipeline {result['raw_keys_per_s']:,.0f} keys/s | "
          f"ratio {result['ratio']:.2f} |")
    print(f"| CPU µs a key | apply_batch: client {result['cas_client_us']:.1f}, Redis "
          f"{result['cas_redis_us']:.1f} | raw HSET pipeline: client "
          f"{result['raw_client_us']:.1f}, Redis {result['raw_redis_us']:.1f} |")


if __name__ == "__main__":
    main()
