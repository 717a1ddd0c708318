"""Baselines, same run, same bytes: the cheapest way to do each part of the job.

- raw confluent-kafka produce and consume (librdkafka, what a C client gets out of Kafka here);
- aiokafka getmany (the consumer Faust is built on, without Faust);
- a Faust agent that does nothing (Faust's own per-event cost);
- peers doing stockflow's delta step with the same rules (bench/peer_logic.py): a plain
  confluent-kafka batch loop with transactions, and Quix Streams in its own venv;
- raw Cassandra execute_concurrent_with_args of the rows the sink writes;
- raw Redis pipelined HSETs of the keys the cache writes.

Each returns a dict with `rate` (items/s) and what it measured.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.harness import ROOT, proc_cpu_seconds, wait_for

KeyValue = tuple[bytes | None, bytes, int]  # key, value, timestamp ms


def confluent_produce(config: dict[str, Any], topic: str,
                      items: Sequence[KeyValue]) -> dict[str, Any]:
    """Produce the bytes with the producer settings every feed uses; wait for every ack."""
    from confluent_kafka import Producer

    from connectors.delta_producer import PRODUCER_DEFAULTS

    producer = Producer({**PRODUCER_DEFAULTS, **config})
    cpu0 = time.process_time()
    t0 = time.perf_counter()
    for key, value, ts in items:
        while True:
            try:
                producer.produce(topic, value, key, timestamp=ts)
                break
            except BufferError:
                producer.poll(0.05)
        producer.poll(0)
    remaining = producer.flush(120)
    seconds = time.perf_counter() - t0
    if remaining:
        raise RuntimeError(f"{remaining} records to {topic} not acknowledged")
    return {"what": "confluent-kafka produce (acks=all, idempotent, lz4)", "events": len(items),
            "seconds": seconds, "rate": len(items) / seconds,
            "cpu_us_per_event": (time.process_time() - cpu0) * 1e6 / len(items)}


def confluent_consume(config: dict[str, Any], topic: str, count: int,
                      timeout_s: float = 300) -> dict[str, Any]:
    """Read `count` records of a topic from the start (read_committed), touching each value.

    Partitions are assigned, not subscribed: no group join, so the clock (started at the
    assignment) holds only fetching and handing over records.
    """
    from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

    consumer = Consumer({**config, "group.id": f"bench-raw-{uuid.uuid4().hex[:8]}",
                         "enable.auto.commit": False, "isolation.level": "read_committed"})
    parts = consumer.list_topics(topic, timeout=10).topics[topic].partitions
    seen = 0
    nbytes = 0
    deadline = time.monotonic() + timeout_s
    cpu0 = time.process_time()
    t0 = time.perf_counter()
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in parts])
    try:
        while seen < count and time.monotonic() < deadline:
            for msg in consumer.consume(num_messages=10_000, timeout=0.5):
                if msg.error():
                    continue
                nbytes += len(msg.value() or b"")
                seen += 1
        seconds = time.perf_counter() - t0
        cpu = time.process_time() - cpu0
    finally:
        consumer.close()
    return {"what": "confluent-kafka consume (assign, read_committed)", "events": seen,
            "seconds": seconds, "rate": seen / seconds,
            "cpu_us_per_event": cpu * 1e6 / max(seen, 1), "bytes": nbytes}


def aiokafka_getmany(settings: Any, topic: str, count: int,
                     timeout_s: float = 300) -> dict[str, Any]:
    """Read `count` records with aiokafka's getmany (Faust's consumer, without Faust)."""
    from aiokafka import AIOKafkaConsumer

    async def run() -> dict[str, Any]:
        from aiokafka import TopicPartition

        consumer = AIOKafkaConsumer(group_id=None, enable_auto_commit=False,
                                    isolation_level="read_committed",
                                    **settings.aiokafka_config())
        await consumer.start()
        seen = 0
        deadline = time.monotonic() + timeout_s
        try:
            parts = consumer.partitions_for_topic(topic) or set()
            if not parts:
                await consumer._client.force_metadata_update()
                parts = consumer.partitions_for_topic(topic) or set()
            tps = [TopicPartition(topic, p) for p in sorted(parts)]
            cpu0 = time.process_time()
            t0 = time.perf_counter()
            consumer.assign(tps)
            await consumer.seek_to_beginning(*tps)
            while seen < count and time.monotonic() < deadline:
                batches = await consumer.getmany(timeout_ms=500, max_records=10_000)
                for records in batches.values():
                    seen += len(records)
            seconds = time.perf_counter() - t0
            cpu = time.process_time() - cpu0
        finally:
            await consumer.stop()
        return {"what": "aiokafka getmany (assign, read_committed)", "events": seen,
                "seconds": seconds, "rate": seen / seconds,
                "cpu_us_per_event": cpu * 1e6 / max(seen, 1)}

    return asyncio.run(run())


def faust_noop(settings: Any, topic: str, count: int, workdir: Path,
               timeout_s: float = 300) -> dict[str, Any]:
    """A Faust worker whose one agent does nothing with each event, on the same topic.

    It runs in its own process (as the stockflow worker does) and writes when it saw its
    first and its `count`-th event, with its CPU time at both.
    """
    result = workdir / f"noop-{uuid.uuid4().hex[:6]}.json"
    log = (workdir / "faust-noop.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.faust_noop", "--topic", topic, "--count", str(count),
         "--result", str(result), "--broker", settings.kafka_broker_url,
         "--datadir", str(workdir / "noop-data")],
        cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        def done() -> bool:
            if proc.poll() is not None:
                raise RuntimeError(f"faust noop worker exited {proc.returncode}; "
                                   f"see {workdir / 'faust-noop.log'}")
            return result.exists()

        wait_for("the Faust no-op agent to see every event", done, timeout_s, poll_s=0.5)
        out = json.loads(result.read_text())
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        log.close()
    seconds = out["t_last"] - out["t_first"]
    events = out["count"] - 1  # the clock starts at the first event
    return {"what": "Faust agent that does nothing (stream.events(), at_least_once)",
            "events": out["count"], "seconds": seconds, "rate": events / seconds,
            "cpu_us_per_event": (out["cpu_last"] - out["cpu_first"]) * 1e6 / max(events, 1)}


def peer_report(raw: dict[str, Any], expected: int) -> dict[str, Any]:
    """A peer's result file -> a baseline entry: `rate` is its 10-90 % window rate, as the
    topology's; a peer that handled fewer records than were written gets an `error`."""
    events = int(raw.get("events") or 0)
    rate = raw.get("rate_steady")
    if rate is None or not math.isfinite(rate):
        rate = raw.get("rate_overall")
    out = {k: v for k, v in raw.items() if k not in ("rate_steady",)}
    out.update({"events": events, "rate": rate, "rate_steady": raw.get("rate_steady"),
                "cpu_us_per_event": raw.get("cpu_us_per_event")})
    if events != expected:
        out["error"] = f"handled {events:,} of {expected:,} records"
    return out


def _run_peer(cmd: list[str], name: str, result: Path, workdir: Path, expected: int,
              timeout_s: float) -> dict[str, Any]:
    """Run one peer process to its end; its report, or an `error` with its log's tail."""
    log_path = workdir / f"{name}.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            code = proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            code = None
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    tail = log_path.read_text(errors="replace")[-1500:]
    if code != 0 or not result.exists():
        why = f"timed out after {timeout_s:.0f} s" if code is None else f"exited {code}"
        return {"error": f"{name} {why}; see {log_path}", "log_tail": tail}
    return peer_report(json.loads(result.read_text()), expected)


def delete_peer_topics(config: dict[str, Any], prefix: str) -> None:
    """Remove a peer's topics (its own, and Quix's changelog__<group>--...) and its group."""
    from confluent_kafka.admin import AdminClient

    admin = AdminClient(config)
    names = [t for t in admin.list_topics(timeout=10).topics
             if t.startswith(prefix) or f"__{prefix}group--" in t]
    if names:
        for fut in admin.delete_topics(names, operation_timeout=30).values():
            with contextlib.suppress(Exception):
                fut.result()
    with contextlib.suppress(Exception):
        for fut in admin.delete_consumer_groups([f"{prefix}group"]).values():
            fut.result()


def confluent_loop(settings: Any, topic: str, count: int, workdir: Path, *,
                   guarantee: str = "exactly_once", batch: int = 500,
                   timeout_s: float = 600, cleanup: bool = True) -> dict[str, Any]:
    """The plain confluent-kafka batch loop (bench/peer_loop.py) in its own process, this venv.

    Its output topics are `prefix`+name (`prefix` in the entry); `cleanup` deletes them.
    """
    prefix = f"{settings.topic_prefix}peer-loop-{uuid.uuid4().hex[:6]}."
    result = workdir / f"peer-loop-{uuid.uuid4().hex[:6]}.json"
    cmd = [sys.executable, "-m", "bench.peer_loop", "--broker", settings.kafka_bootstrap_servers,
           "--topic", topic, "--count", str(count), "--prefix", prefix,
           "--guarantee", guarantee, "--batch", str(batch),
           "--dedup-ttl-s", str(settings.dedup_ttl_s),
           "--linger-ms", str(round(settings.producer_linger_s * 1000)),
           "--timeout-s", str(timeout_s), "--result", str(result)]
    try:
        return {**_run_peer(cmd, "peer-loop", result, workdir, count, timeout_s + 60),
                "prefix": prefix}
    finally:
        if cleanup:
            delete_peer_topics(settings.confluent_config(), prefix)


def quix_streams(settings: Any, topic: str, count: int, workdir: Path, python: Path | None, *,
                 guarantee: str = "exactly_once", why_not: str = "",
                 timeout_s: float = 600, cleanup: bool = True) -> dict[str, Any]:
    """Quix Streams with the same rules (bench/peer_quix.py), run by its venv's `python`.

    Without a venv (`python` None) the entry says why it was skipped.
    """
    if python is None:
        return {"skipped": why_not or "no Quix Streams venv"}
    from pipeline.kafka import admin_client

    admin = admin_client(settings)
    partitions = len(admin.list_topics(topic, timeout=10).topics[topic].partitions)
    prefix = f"{settings.topic_prefix}peer-quix-{uuid.uuid4().hex[:6]}."
    result = workdir / f"peer-quix-{uuid.uuid4().hex[:6]}.json"
    cmd = [str(python), "-m", "bench.peer_quix", "--broker", settings.kafka_bootstrap_servers,
           "--topic", topic, "--count", str(count), "--prefix", prefix,
           "--guarantee", guarantee, "--commit-interval", str(settings.commit_interval_s),
           "--dedup-ttl-s", str(settings.dedup_ttl_s),
           "--linger-ms", str(round(settings.producer_linger_s * 1000)),
           "--partitions", str(partitions), "--state-dir", str(workdir / "quix-state"),
           "--result", str(result)]
    try:
        return {**_run_peer(cmd, "peer-quix", result, workdir, count, timeout_s),
                "prefix": prefix}
    finally:
        if cleanup:
            delete_peer_topics(settings.confluent_config(), prefix)


def cassandra_raw(settings: Any, updates: int, concurrency: int = 128) -> dict[str, Any]:
    """execute_concurrent_with_args of the rows the sink builds for `updates` StockUpdates.

    Uses the env's keyspace (its tables, its prepared INSERTs) with fresh keys, spread
    round-robin over 20 suppliers, 4 per platform SKU (bench/cassandra_sink.py's defaults).
    """
    from bench.cassandra_sink import make_updates, single_round
    from connectors.cassandra.sink import CassandraSink

    def updates_of(n: int, round_no: int) -> list[dict[str, Any]]:
        return make_updates(n, round_no, shape="spread", suppliers=20, offers=4)

    async def run() -> dict[str, Any]:
        sink = CassandraSink.from_settings(settings)
        await sink.start()
        try:
            await asyncio.to_thread(single_round, sink, [updates_of(500, 90)], concurrency)
            batch = updates_of(updates, 91)
            t0 = time.perf_counter()
            rows = await asyncio.to_thread(single_round, sink, [batch], concurrency)
            seconds = time.perf_counter() - t0
        finally:
            await sink.close()
        return {"what": "Cassandra execute_concurrent_with_args (one request per row)",
                "events": updates, "rows": rows, "rows_per_s": rows / seconds,
                "rate": updates / seconds}

    return asyncio.run(run())


def redis_raw(settings: Any, keys: int, batch: int = 1000) -> dict[str, Any]:
    """Pipelined HSET + PEXPIRE of the fields the cache writes, no version guard."""
    from bench.redis_cache import _changes, _raw_round
    from connectors.redis.cache import RedisCache

    async def run() -> dict[str, Any]:
        prefix = f"{settings.redis_cache_key_prefix}raw:"
        cache = RedisCache(settings.redis_url.get_secret_value(), key_prefix=prefix, ttl_s=3600)
        try:
            await _raw_round(cache, _changes(min(keys, 2000), 1, 0), batch, prefix)
            rate = await _raw_round(cache, _changes(keys, 2, 0), batch, prefix)
        finally:
            async for key in cache.client.scan_iter(match=f"{prefix}*", count=1000):
                await cache.client.unlink(key)
            await cache.close()
        return {"what": "Redis pipelined HSET + PEXPIRE (no guard)", "events": keys,
                "rate": rate}

    return asyncio.run(run())


def worker_cpu(pid: int) -> float:
    """CPU seconds of a worker process (0 once it is gone)."""
    try:
        return proc_cpu_seconds(pid)
    except OSError:
        return 0.0
