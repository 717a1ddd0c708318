"""Reservations benchmark: holds decided per second, hold latency through the API, read latency.

One isolated worker and `stockflow api` on the local stack, with supplier deltas flowing the
whole time (the supplier pipeline running):
1. throughput: N HOLD commands written straight to reservations.commands as fast as the
   producer goes, timed until their N decisions are read (read_committed);
2. latency: holds through `POST /v1/reservations`, open loop at a fixed rate for a while,
   each timed from send to answer (p50, p99);
3. reads: `GET /v1/inventory/{sku}` through the API, and the Redis reads it makes
   (the availability hash and the reserved units) timed alone.

    python -m bench.reservations [--holds 20000] [--rate 200,500] [--seconds 10]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from bench.harness import ROOT, percentile, pipeline_env_class

KEY = "bench-key"
SKUS = 200


def _supplier_load(env: Any, stop: threading.Event, rate: float) -> None:
    """Supplier SNAPSHOTs for SKUs the holds do not touch, at `rate` per second."""
    seq = 0
    with env.producer() as producer:
        while not stop.is_set():
            seq += 1
            now = int(time.time() * 1000)
            producer.produce({
                "supplier_id": "feed", "sku": f"OTHER-{seq % 500}", "event_id": f"o{seq}",
                "sequence": seq, "kind": "SNAPSHOT", "quantity": seq % 97, "observed_at": now,
                "price": None, "currency": None, "warehouse": None, "lead_time_days": None,
                "status": "ACTIVE", "connector": "bench", "received_at": now})
            time.sleep(1 / rate)


def _throughput(env: Any, holds: int) -> dict[str, float]:
    from confluent_kafka import Consumer, Producer, TopicPartition

    from schemas.codec import codec_for

    command = codec_for("ReservationCommand")
    decision = codec_for("ReservationDecision")
    decisions_topic = env.topic("reservations.decisions")
    consumer = Consumer({**env.settings.confluent_config(), "group.id": uuid.uuid4().hex,
                         "isolation.level": "read_committed", "enable.auto.commit": False})
    parts = consumer.list_topics(decisions_topic, timeout=10).topics[decisions_topic].partitions
    consumer.assign([TopicPartition(decisions_topic, p, consumer.get_watermark_offsets(
        TopicPartition(decisions_topic, p), timeout=10)[1]) for p in parts])
    producer = Producer({**env.settings.confluent_config(), "partitioner": "murmur2_random",
                         "linger.ms": 5, "enable.idempotence": True})
    run = uuid.uuid4().hex[:6]
    started = time.monotonic()
    for i in range(holds):
        sku = f"HOT-{i % SKUS}"
        value = command.encode({
            "command_id": f"{run}-{i}", "kind": "HOLD", "platform_sku": sku,
            "reservation_id": f"{run}-{i}", "quantity": 1, "ttl_ms": 600_000,
            "idempotency_key": None, "requested_at": int(time.time() * 1000)})
        while True:
            try:
                producer.produce(env.topic("reservations.commands"), value, sku.encode())
                break
            except BufferError:
                producer.poll(0.01)
    producer.flush(60)
    produced = time.monotonic() - started
    seen = 0
    granted = 0
    deadline = time.monotonic() + 300
    while seen < holds and time.monotonic() < deadline:
        for msg in consumer.consume(1000, 0.5):
            if msg.error() is None:
                d = decision.decode(msg.value())
                if (d["command_id"] or "").startswith(run):
                    seen += 1
                    granted += d["outcome"] == "GRANTED"
    elapsed = time.monotonic() - started
    consumer.close()
    return {"holds": holds, "decided": seen, "granted": granted,
            "produce_s": round(produced, 2), "elapsed_s": round(elapsed, 2),
            "decided_per_s": round(seen / elapsed, 1)}


async def _latency(base: str, rate: float, seconds: float) -> dict[str, float]:
    import aiohttp

    latencies: list[float] = []
    statuses: dict[int, int] = {}

    async def one(session: aiohttp.ClientSession, i: int) -> None:
        t0 = time.perf_counter()
        async with session.post(f"{base}/v1/reservations",
                                json={"platform_sku": f"HOT-{i % SKUS}", "quantity": 1},
                                headers={"X-API-Key": KEY,
                                         "Idempotency-Key": uuid.uuid4().hex}) as r:
            await r.read()
            statuses[r.status] = statuses.get(r.status, 0) + 1
        latencies.append(time.perf_counter() - t0)

    tasks = []
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1000)) as session:
        started = time.perf_counter()
        n = int(rate * seconds)
        for i in range(n):
            delay = started + i / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(session, i)))
        await asyncio.gather(*tasks)
    ms = [x * 1000 for x in latencies]
    return {"rate": rate, "requests": len(ms), "statuses": statuses,
            "p50_ms": round(percentile(ms, 0.5), 1), "p99_ms": round(percentile(ms, 0.99), 1),
            "max_ms": round(max(ms), 1)}


async def _reads(base: str, settings: Any, n: int) -> dict[str, float]:
    import aiohttp
    import redis.asyncio as aioredis

    from connectors.redis_cache import availability_key
    from pipeline.api.follower import atp_key

    api_ms: list[float] = []
    async with aiohttp.ClientSession() as session:
        for i in range(n):
            t0 = time.perf_counter()
            async with session.get(f"{base}/v1/inventory/HOT-{i % SKUS}",
                                   headers={"X-API-Key": KEY}) as r:
                await r.read()
            api_ms.append((time.perf_counter() - t0) * 1000)
    client = aioredis.Redis.from_url(settings.redis_url.get_secret_value(),
                                     decode_responses=True)
    redis_ms: list[float] = []
    prefix = settings.redis_cache_key_prefix
    for i in range(n):
        t0 = time.perf_counter()
        await client.hgetall(availability_key(prefix, f"HOT-{i % SKUS}"))
        await client.hgetall(atp_key(prefix, f"HOT-{i % SKUS}"))
        redis_ms.append((time.perf_counter() - t0) * 1000)
    await client.aclose()
    return {"reads": n, "api_p50_ms": round(percentile(api_ms, 0.5), 2),
            "api_p99_ms": round(percentile(api_ms, 0.99), 2),
            "redis_p50_ms": round(percentile(redis_ms, 0.5), 2),
            "redis_p99_ms": round(percentile(redis_ms, 0.99), 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--holds", type=int, default=20_000)
    parser.add_argument("--rate", default="500", help="holds/s through the API; a,b,c: each")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--reads", type=int, default=5000)
    parser.add_argument("--supplier-rate", type=float, default=200.0)
    args = parser.parse_args()

    from pipeline.api.keys import hash_key
    from tests.integration.pipeline_harness import free_port

    tmp = Path(tempfile.mkdtemp(prefix="bench-reservations-"))
    port = free_port()
    env = pipeline_env_class()(tmp, partitions=4, extra_env={
        "STOCKFLOW_API_PORT": str(port), "STOCKFLOW_API_KEYS": "bench:" + hash_key(KEY),
        "STOCKFLOW_API_RATE_PER_S": "1000000", "STOCKFLOW_API_RATE_BURST": "1000000",
        "STOCKFLOW_LOG_LEVEL": "WARNING"})
    base = f"http://127.0.0.1:{port}"
    stop = threading.Event()
    api = None
    try:
        env.setup()
        env.start_worker()
        with (tmp / "api.log").open("wb") as log:
            api = subprocess.Popen([sys.executable, "-m", "pipeline.cli", "api"], env=env.env,
                                   cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True)
        import urllib.request

        def ready() -> bool:
            try:
                with urllib.request.urlopen(base + "/ready", timeout=2) as r:
                    return bool(r.status == 200)
            except Exception:
                return False

        env.wait_until(ready, 120, "API ready")
        now = int(time.time() * 1000)
        with env.producer() as producer:
            for i in range(SKUS):
                producer.produce({
                    "supplier_id": "s1", "sku": f"HOT-{i}", "event_id": f"h{i}", "sequence": 1,
                    "kind": "SNAPSHOT", "quantity": 1_000_000, "observed_at": now,
                    "price": None, "currency": None, "warehouse": None,
                    "lead_time_days": None, "status": "ACTIVE", "connector": "bench",
                    "received_at": now})
        env.wait_until(lambda: env.lag("inventory.stock-updates") == 0
                       and env.lag("inventory.deltas") == 0, 120, "supply loaded")
        threading.Thread(target=_supplier_load, args=(env, stop, args.supplier_rate),
                         daemon=True).start()
        result = {"throughput": _throughput(env, args.holds),
                  "latency": [asyncio.run(_latency(base, float(rate), args.seconds))
                              for rate in args.rate.split(",")],
                  "reads": asyncio.run(_reads(base, env.settings, args.reads)),
                  "supplier_rate": args.supplier_rate, "load_average": os.getloadavg()[0]}
        print(json.dumps(result, indent=2))
    finally:
        stop.set()
        if api is not None:
            os.killpg(api.pid, signal.SIGTERM)
            api.wait(30)
        env.cleanup()


if __name__ == "__main__":
    main()
