"""Reservations benchmark: holds decided per second, hold latency through the API, read latency.

One isolated worker and `stockflow api` on the local stack, with supplier SNAPSHOTs flowing
the whole time from a separate process (the supplier pipeline running):
1. throughput: N HOLD commands written straight to reservations.commands as fast as the
   producer goes, timed until their N decisions are read (read_committed);
2. latency: holds through `POST /v1/reservations`, open loop at a fixed rate for a while,
   each timed from its scheduled send to its answer (p50, p99), on SKUs of their own (the
   holds the throughput step left behind make every later command of a SKU dearer: the
   agent re-encodes the SKU's whole state per command); CPU per request of the API process,
   of the worker and of this client;
3. reads: `GET /v1/inventory/{sku}` through the API one at a time, each followed by the
   raw Redis reads of the same SKU: one HGETALL, and the two the API makes (one pipelined
   round trip); after an untimed first read of every SKU (a cache miss: Cassandra).

The HTTP client is a few lines over asyncio streams (keep-alive connections, requests
formatted once): on a 2-core machine a heavier client takes CPU from what it measures.

    python -m bench.reservations [--holds 20000] [--rate 200,500] [--seconds 10] [--trace]
    python -m bench.reservations --holds 0 --rate 0 --reads 3000    # the reads only
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from bench.harness import (
    ROOT,
    CpuMeter,
    histogram_buckets,
    histogram_quantile,
    load_average,
    percentile,
    pipeline_env_class,
    scrape,
)

KEY = "bench-key"
SKUS = 200


def _supplier_load(config: dict[str, Any], topic: str, rate: float) -> None:
    """Supplier SNAPSHOTs for SKUs the holds do not touch, at `rate` per second (a process
    of its own: a thread here would take the GIL from the client)."""
    from connectors.delta_producer import DeltaProducer

    seq = 0
    started = time.monotonic()
    with DeltaProducer(config, topic) as producer:
        while True:
            seq += 1
            now = int(time.time() * 1000)
            producer.produce({
                "supplier_id": "feed", "sku": f"OTHER-{seq % 500}", "event_id": f"o{seq}",
                "sequence": seq, "kind": "SNAPSHOT", "quantity": seq % 97, "observed_at": now,
                "price": None, "currency": None, "warehouse": None, "lead_time_days": None,
                "status": "ACTIVE", "connector": "bench", "received_at": now})
            delay = started + seq / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)


class _PathTrace:
    """Where a hold's decision time goes, from the records themselves: the command's
    timestamp (the API produced it), the decision's (the worker produced it) and when a
    read_committed consumer got the decision (its transaction committed). One thread, two
    consumers; --trace only, since decoding every record takes CPU from what is measured."""

    def __init__(self, env: Any) -> None:
        import threading

        self.env = env
        self.commands: dict[str, int] = {}  # command id -> command timestamp
        self.decisions: dict[str, tuple[int, float]] = {}  # -> decision timestamp, seen at
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _consumer(self, logical: str, isolation: str) -> Any:
        from confluent_kafka import Consumer, TopicPartition

        topic = self.env.topic(logical)
        consumer = Consumer({**self.env.settings.confluent_config(),
                             "group.id": uuid.uuid4().hex, "enable.auto.commit": False,
                             "isolation.level": isolation, "fetch.wait.max.ms": 5})
        parts = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        consumer.assign([TopicPartition(topic, p, consumer.get_watermark_offsets(
            TopicPartition(topic, p), timeout=10)[1]) for p in parts])
        return consumer

    def __enter__(self) -> _PathTrace:
        self.consumers = (self._consumer("reservations.commands", "read_uncommitted"),
                          self._consumer("reservations.decisions", "read_committed"))
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        time.sleep(1.0)  # the last decisions
        self.stop.set()
        self.thread.join(10)
        for consumer in self.consumers:
            consumer.close()

    def _run(self) -> None:
        from schemas.codec import codec_for

        command, decision = codec_for("ReservationCommand"), codec_for("ReservationDecision")
        while not self.stop.is_set():
            for consumer, codec in zip(self.consumers, (command, decision), strict=True):
                first = consumer.poll(0.005)
                if first is None:
                    continue
                seen = time.time() * 1000
                for msg in (first, *consumer.consume(1000, 0)):
                    if msg.error() is not None:
                        continue
                    value = codec.decode_trusted(msg.value() or b"")
                    if value["kind"] != "HOLD" or not value["command_id"]:
                        continue
                    if codec is command:
                        self.commands[value["command_id"]] = msg.timestamp()[1]
                    else:
                        self.decisions[value["command_id"]] = (msg.timestamp()[1], seen)

    def summary(self) -> dict[str, Any]:
        decide, commit = [], []
        for cid, produced in self.commands.items():
            if cid in self.decisions:
                decided, seen = self.decisions[cid]
                decide.append(decided - produced)
                commit.append(seen - decided)
        return {"traced": len(decide),
                "command_to_decision_produced_p50_ms": round(percentile(decide, 0.5), 1),
                "command_to_decision_produced_p99_ms": round(percentile(decide, 0.99), 1),
                "decision_produced_to_committed_p50_ms": round(percentile(commit, 0.5), 1),
                "decision_produced_to_committed_p99_ms": round(percentile(commit, 0.99), 1)}


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
                d = decision.decode(msg.value() or b"")
                if (d["command_id"] or "").startswith(run):
                    seen += 1
                    granted += d["outcome"] == "GRANTED"
    elapsed = time.monotonic() - started
    consumer.close()
    return {"holds": holds, "decided": seen, "granted": granted,
            "produce_s": round(produced, 2), "elapsed_s": round(elapsed, 2),
            "decided_per_s": round(seen / elapsed, 1)}


class _Http:
    """A minimal HTTP/1.1 client: keep-alive connections to one host, Content-Length bodies."""

    def __init__(self, base: str) -> None:
        host, _, port = base.removeprefix("http://").partition(":")
        self.host, self.port = host, int(port)
        self.idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        self.opened: list[asyncio.StreamWriter] = []

    async def request(self, raw: bytes) -> tuple[int, bytes]:
        while self.idle:
            reader, writer = self.idle.pop()
            if not reader.at_eof():  # the server closes a connection idle for 5 s
                break
        else:
            reader, writer = await asyncio.open_connection(self.host, self.port)
            self.opened.append(writer)
        writer.write(raw)
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionError):
            # Closed by the server as the request went out: once more on a new connection
            # (a hold is idempotent by its key).
            reader, writer = await asyncio.open_connection(self.host, self.port)
            self.opened.append(writer)
            writer.write(raw)
            head = await reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        at = head.lower().find(b"content-length:")
        length = int(head[at + 15:head.index(b"\r\n", at)]) if at >= 0 else 0
        body = await reader.readexactly(length) if length else b""
        self.idle.append((reader, writer))
        return status, body

    def close(self) -> None:
        for writer in self.opened:
            writer.close()


def _hold_request(sku: str, key: str) -> bytes:
    body = json.dumps({"platform_sku": sku, "quantity": 1}).encode()
    return (f"POST /v1/reservations HTTP/1.1\r\nHost: bench\r\nX-API-Key: {KEY}\r\n"
            f"Idempotency-Key: {key}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body


def _get_request(path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: bench\r\nX-API-Key: {KEY}\r\n\r\n".encode()


def _run(coro: Any) -> Any:
    """Run on uvloop when it is there (the API does too)."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coro)


async def _latency(base: str, rate: float, seconds: float, skus: str,
                   cpu: CpuMeter) -> dict[str, Any]:
    http = _Http(base)
    n = int(rate * seconds)
    requests = [_hold_request(f"{skus}-{i % SKUS}", uuid.uuid4().hex) for i in range(n)]
    latencies: list[float] = []
    statuses: dict[int, int] = {}

    async def one(i: int, scheduled: float) -> None:
        status, _body = await http.request(requests[i])
        statuses[status] = statuses.get(status, 0) + 1
        # From the scheduled send: a client that falls behind counts against the answer.
        latencies.append(time.perf_counter() - scheduled)

    tasks = []
    port = int(base.rsplit(":", 1)[1])
    before = scrape(port)
    cpu.start()
    started = time.perf_counter()
    for i in range(n):
        scheduled = started + i / rate
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(i, scheduled)))
    await asyncio.gather(*tasks)
    used = cpu.stop()
    http.close()
    after = scrape(port)

    def quantile_ms(name: str, q: float, **labels: str) -> float:
        return round(histogram_quantile(histogram_buckets(before, name, **labels),
                                        histogram_buckets(after, name, **labels), q) * 1000, 1)

    route = {"route": "/v1/reservations"}
    ms = [x * 1000 for x in latencies]
    return {"rate": rate, "requests": len(ms), "statuses": statuses,
            "p50_ms": round(percentile(ms, 0.5), 1), "p99_ms": round(percentile(ms, 0.99), 1),
            "max_ms": round(max(ms), 1), "connections": len(http.opened),
            # The API's histograms: from writing the command to reading its decision (the
            # worker's part and Kafka's), and from the request's start in the API to its
            # answer; the rest of p50/p99 is the network's, the kernel's and the client's.
            "decision_wait_p50_ms": quantile_ms("stockflow_api_decision_seconds", 0.5),
            "decision_wait_p99_ms": quantile_ms("stockflow_api_decision_seconds", 0.99),
            "api_request_p50_ms": quantile_ms("stockflow_api_request_seconds", 0.5, **route),
            "api_request_p99_ms": quantile_ms("stockflow_api_request_seconds", 0.99, **route),
            "cpu_ms_per_request": {name: round(v * 1000 / n, 3) for name, v in used.items()
                                   if not name.startswith("_")},
            "load_average": round(load_average(), 1)}


async def _reads(base: str, settings: Any, n: int, cpu: CpuMeter) -> dict[str, Any]:
    """API reads and raw Redis reads of the same keys, interleaved (one of each in turn), so
    both see the same moments of a shared machine. A first untimed pass reads every SKU once:
    the worker creates a SKU's hash without the `complete` mark, so the first read of each goes
    to Cassandra and fills Redis (cache-aside); timed, those misses (200 of 3,000 reads) were
    the p99. They are reported apart (`cold_*`), and a timed read not from Redis is counted."""
    import redis.asyncio as aioredis

    from connectors.api.follower import atp_key
    from connectors.redis.cache import availability_key

    http = _Http(base)
    client = aioredis.Redis.from_url(settings.redis_url.get_secret_value(),
                                     decode_responses=True)
    prefix = settings.redis_cache_key_prefix
    names = [f"HOT-{i % SKUS}" for i in range(n)]
    requests = [_get_request(f"/v1/inventory/{name}") for name in names]
    cold_ms: list[float] = []
    cold_sources: dict[str, int] = {}
    for i in range(min(n, SKUS)):
        t0 = time.perf_counter()
        status, body = await http.request(requests[i])
        cold_ms.append((time.perf_counter() - t0) * 1000)
        if status != 200:
            raise RuntimeError(f"GET /v1/inventory/{names[i]}: {status}")
        source = json.loads(body)["source"]
        cold_sources[source] = cold_sources.get(source, 0) + 1
    api_ms: list[float] = []
    one_ms: list[float] = []
    two_ms: list[float] = []
    not_redis = 0
    cpu.start()
    for i in range(n):
        t0 = time.perf_counter()
        status, body = await http.request(requests[i])
        api_ms.append((time.perf_counter() - t0) * 1000)
        if status != 200:
            raise RuntimeError(f"GET /v1/inventory/{names[i]}: {status}")
        not_redis += b'"source": "redis"' not in body
        key = availability_key(prefix, names[i])
        t0 = time.perf_counter()
        await client.hgetall(key)
        t1 = time.perf_counter()
        pipe = client.pipeline(transaction=False)
        pipe.hgetall(key)
        pipe.hgetall(atp_key(prefix, names[i]))
        await pipe.execute()
        two_ms.append((time.perf_counter() - t1) * 1000)
        one_ms.append((t1 - t0) * 1000)
    used = cpu.stop()
    http.close()
    await client.aclose()
    api_p99 = percentile(api_ms, 0.99)
    hgetall_p99 = percentile(one_ms, 0.99)
    return {"reads": n, "api_p50_ms": round(percentile(api_ms, 0.5), 2),
            "api_p99_ms": round(api_p99, 2),
            "api_over_5ms": sum(ms > 5 for ms in api_ms),
            "not_from_redis": not_redis,
            "hgetall_p50_ms": round(percentile(one_ms, 0.5), 2),
            "hgetall_p99_ms": round(hgetall_p99, 2),
            "two_hgetall_pipelined_p50_ms": round(percentile(two_ms, 0.5), 2),
            "two_hgetall_pipelined_p99_ms": round(percentile(two_ms, 0.99), 2),
            "api_p50_over_hgetall": round(percentile(api_ms, 0.5)
                                          / percentile(one_ms, 0.5), 1),
            "api_p99_over_hgetall": round(api_p99 / hgetall_p99, 1),
            # The API's CPU over the timed loop (the follower's work on the supplier changes
            # included) per API read.
            "api_cpu_ms_per_read": round(used["api"] * 1000 / n, 3),
            "cold_reads": len(cold_ms), "cold_sources": cold_sources,
            "cold_p50_ms": round(percentile(cold_ms, 0.5), 2),
            "cold_p99_ms": round(percentile(cold_ms, 0.99), 2),
            "load_average": round(load_average(), 1)}


def _process_group_pids(pgid: int) -> list[int]:
    """The processes of a process group (the API and, with --workers, its workers)."""
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        if int(text[text.rindex(")") + 2:].split()[2]) == pgid:
            pids.append(int(stat.parent.name))
    return pids


def _supply(env: Any, skus: list[str]) -> None:
    now = int(time.time() * 1000)
    with env.producer() as producer:
        for sku in skus:
            producer.produce({
                "supplier_id": "s1", "sku": sku, "event_id": f"h-{sku}", "sequence": 1,
                "kind": "SNAPSHOT", "quantity": 1_000_000, "observed_at": now,
                "price": None, "currency": None, "warehouse": None,
                "lead_time_days": None, "status": "ACTIVE", "connector": "bench",
                "received_at": now})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--holds", type=int, default=20_000,
                        help="HOLD commands of the throughput step (0: no such step)")
    parser.add_argument("--rate", default="500",
                        help="holds/s through the API; a,b,c: each; 0: no latency step")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--reads", type=int, default=5000)
    parser.add_argument("--supplier-rate", type=float, default=200.0)
    parser.add_argument("--latency-skus", choices=("own", "throughput"), default="own",
                        help="hold on SKUs of their own (default), or on the SKUs the "
                        "throughput step left 100 holds each on")
    parser.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                        help="a setting for the worker and the API of this run, e.g. "
                        "STOCKFLOW_BATCH_MAX_WAIT_S=0.005 (repeatable)")
    parser.add_argument("--trace", action="store_true",
                        help="split each hold's decision wait into the worker's deciding and "
                        "its commit, read from the records (costs the client CPU)")
    args = parser.parse_args()
    extra = dict(item.split("=", 1) for item in args.env)

    from bench.pipeline_env import free_port
    from connectors.api.keys import hash_key

    tmp = Path(tempfile.mkdtemp(prefix="bench-reservations-"))
    port = free_port()
    env = pipeline_env_class()(tmp, partitions=4, extra_env={
        "STOCKFLOW_API_PORT": str(port), "STOCKFLOW_API_KEYS": "bench:" + hash_key(KEY),
        "STOCKFLOW_API_RATE_PER_S": "1000000", "STOCKFLOW_API_RATE_BURST": "1000000",
        "STOCKFLOW_LOG_LEVEL": "WARNING", **extra})
    base = f"http://127.0.0.1:{port}"
    rates = [rate for rate in map(float, args.rate.split(",")) if rate > 0]
    api = None
    supplier = None
    try:
        env.setup()
        env.start_worker()
        with (tmp / "api.log").open("wb") as log:
            api = subprocess.Popen([sys.executable, "-m", "pipeline.shell.cli", "api"], env=env.env,
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
        sets = ["HOT"] + ([f"R{k}" for k in range(len(rates))]
                          if args.latency_skus == "own" else [])
        _supply(env, [f"{name}-{i}" for name in sets for i in range(SKUS)])
        env.wait_until(lambda: env.lag("inventory.stock-updates") == 0
                       and env.lag("inventory.deltas") == 0, 120, "supply loaded")
        if args.supplier_rate > 0:  # 0: no supplier pipeline (what it costs the holds)
            supplier = multiprocessing.get_context("spawn").Process(
                target=_supplier_load, daemon=True,
                args=(env.settings.confluent_config(), env.topic("inventory.deltas"),
                      args.supplier_rate))
            supplier.start()
        assert env.worker is not None
        cpu = CpuMeter({"api": api.pid, "worker": env.worker.pid, "client": os.getpid()})
        throughput = _throughput(env, args.holds) if args.holds > 0 else {}
        latency = []
        for k, rate in enumerate(rates):
            skus = f"R{k}" if args.latency_skus == "own" else "HOT"
            if args.trace:
                with _PathTrace(env) as trace:
                    latency.append(_run(_latency(base, rate, args.seconds, skus, cpu)))
                latency[-1]["path"] = trace.summary()
            else:
                latency.append(_run(_latency(base, rate, args.seconds, skus, cpu)))
        result = {"throughput": throughput, "latency": latency,
                  "reads": _run(_reads(base, env.settings, args.reads, cpu)),
                  "supplier_rate": args.supplier_rate, "latency_skus": args.latency_skus,
                  "env": extra,
                  "load_average": round(load_average(), 1)}
        print(json.dumps(result, indent=2))
    finally:
        if supplier is not None:
            supplier.terminate()
            supplier.join(10)
        if api is not None:
            os.killpg(api.pid, signal.SIGTERM)
            api.wait(30)
        env.cleanup()


if __name__ == "__main__":
    main()
