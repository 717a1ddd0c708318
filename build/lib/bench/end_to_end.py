"""End-to-end benchmark: an isolated stockflow worker with Cassandra and Redis, on a rate ladder.

Phases, all in one run on this machine's shared stack:
1. load N SKUs (one SNAPSHOT per key) so the tables hold N keys;
2. the rate ladder: each step sends open loop for a fixed time, samples the backlog (every
   stage's queue, from the worker's counters), then gives the worker a grace period to drain;
   a step is bounded when the backlog did not grow; freshness percentiles (produced ->
   Redis written) from the worker's histogram; CPU per event of every process from /proc;
3. memory at N SKUs (worker RSS, RocksDB on disk, Redis, Cassandra data dir);
4. recovery: SIGKILL the worker, restart it, time until a sentinel sent at the kill is in Redis;
5. baselines on the same bytes (bench/baselines.py).
"""

from __future__ import annotations

import contextlib
import math
import time
import uuid
from pathlib import Path
from typing import Any

from bench import baselines
from bench.harness import (
    CpuMeter,
    PipelineCounts,
    dir_size_bytes,
    histogram_quantile,
    is_bounded,
    lag_slope,
    load_average,
    pipeline_env_class,
    proc_rss_bytes,
    py_spy,
    scrape,
    stack_pids,
    sustained_rate,
    wait_for,
)
from bench.workload import Workload, WorkloadSpec, send_open_loop


def _counts(env: Any) -> PipelineCounts:
    """The counters of every worker of the pipeline, added up."""
    return PipelineCounts.from_samples([s for port in env.metrics_ports()
                                        for s in scrape(port)])


class Sender:
    """The benchmark's producer: sends workload events stamped with their send time."""

    def __init__(self, env: Any) -> None:
        self.producer = env.producer()
        self.sent = 0

    def __call__(self, event: Any) -> None:
        self.producer.produce({}, key=event.key, value=event.value,
                              timestamp_ms=event.timestamp_ms)
        self.sent += 1


def _wait_drained(env: Any, sender: Sender, timeout_s: float) -> tuple[bool, float]:
    """Wait until every stage caught up with what was sent; (drained, seconds waited)."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout_s:
        env.assert_worker_alive()
        with contextlib.suppress(OSError):
            if _counts(env).backlog(sender.sent) <= 0:
                return True, time.monotonic() - t0
        time.sleep(0.2)
    return False, time.monotonic() - t0


def run_step(env: Any, sender: Sender, workload: Workload, rate: int, duration_s: float,
             grace_s: float, pids: dict[str, int]) -> dict[str, Any]:
    """One rung of the ladder: send at `rate` for `duration_s`, then drain within `grace_s`."""
    before = _counts(env)
    sent0 = sender.sent
    samples: list[tuple[float, float]] = []
    last_sample = [0.0]
    meter = CpuMeter(pids)
    meter.start()

    def sample_and_sleep(tick: float) -> None:
        # Sampling rides on the sender's idle ticks: the schedule stays open loop.
        now = time.monotonic()
        if now - last_sample[0] >= 0.5:
            last_sample[0] = now
            with contextlib.suppress(OSError):
                samples.append((now, _counts(env).backlog(sender.sent)))
        time.sleep(tick)

    load0 = load_average()
    sent, seconds = send_open_loop(sender, workload, rate, duration_s, sleep=sample_and_sleep)
    sender.producer.flush(60)
    end_counts = _counts(env)
    end_backlog = end_counts.backlog(sender.sent)
    samples.append((time.monotonic(), end_backlog))
    processed_in_step = end_counts.handled - before.handled
    drained, drain_s = _wait_drained(env, sender, grace_s)
    cpu = meter.stop()
    after = _counts(env)
    events = sender.sent - sent0
    q = {f"p{name}_ms": 1000 * histogram_quantile(before.freshness, after.freshness, v)
         for name, v in (("50", 0.5), ("99", 0.99), ("99.9", 0.999))}
    return {
        "offered_rate": rate, "achieved_send_rate": sent / seconds,
        "processed_rate": processed_in_step / seconds, "events": events,
        "backlog_end": end_backlog, "backlog_slope": lag_slope(samples[len(samples) // 2:]),
        "bounded": bool(drained and is_bounded(samples, rate)), "drained": drained,
        "drain_s": drain_s, "redis_writes": after.cached - before.cached, **q,
        "cpu_us_per_event": {name: (v * 1e6 / events if events else math.nan)
                             for name, v in cpu.items() if not name.startswith("_")},
        "cpu_cores": {name: v / cpu["_wall"] for name, v in cpu.items()
                      if not name.startswith("_")},
        "workers": sum(1 for name in pids if name.startswith("worker")),
        "load_avg": [load0, load_average()],
    }


def load_keys(env: Any, sender: Sender, workload: Workload, timeout_s: float) -> dict[str, Any]:
    """One SNAPSHOT per key, as fast as the producer goes; wait until all are in Redis."""
    t0 = time.monotonic()
    for event in workload.one_per_key(int(time.time() * 1000)):
        sender(event)
    sender.producer.flush(120)
    drained, _ = _wait_drained(env, sender, timeout_s)
    seconds = time.monotonic() - t0
    return {"keys": workload.spec.skus, "seconds": seconds, "drained": drained,
            "rate": workload.spec.skus / seconds}


def bulk_load(env: Any, workload: Workload, timeout_s: float) -> dict[str, Any]:
    """N keys the fast way, before the worker starts: one SNAPSHOT per key straight into
    inventory.deltas, then `stockflow rebuild` folds that log into the worker's tables (their
    changelogs), Cassandra and Redis. Sending 1M keys through the worker would take hours at
    its end-to-end rate; the rebuild is the operator's path and is timed too."""
    from confluent_kafka import Producer

    from connectors.delta_producer import PRODUCER_DEFAULTS

    producer = Producer({**PRODUCER_DEFAULTS, **env.settings.confluent_config(),
                         "linger.ms": 50, "batch.size": 1_000_000})
    topic = env.topic("inventory.deltas")
    t0 = time.monotonic()
    for event in workload.one_per_key(int(time.time() * 1000)):
        while True:
            try:
                producer.produce(topic, event.value, event.key, timestamp=event.timestamp_ms)
                break
            except BufferError:
                producer.poll(0.05)
        producer.poll(0)
    if producer.flush(300) != 0:
        raise RuntimeError("the bulk key load was not acknowledged")
    produced = time.monotonic() - t0
    t1 = time.monotonic()
    proc = env.cli("rebuild", "--yes", "--no-history", timeout=timeout_s)
    rebuilt = time.monotonic() - t1
    keys = workload.spec.skus
    return {"keys": keys, "method": "produce to the log, then `stockflow rebuild`",
            "produce_s": produced, "produce_rate": keys / produced,
            "rebuild_s": rebuilt, "rebuild_rate": keys / rebuilt,
            "rebuild_output": proc.stdout[-600:], "seconds": produced + rebuilt,
            "rate": keys / (produced + rebuilt), "drained": True}


def memory(env: Any, stack_dir: Path, keys: int) -> dict[str, Any]:
    """Worker RSS, RocksDB bytes, Redis bytes of this run's keys, Cassandra data dir bytes."""
    import redis

    client = redis.Redis.from_url(env.settings.redis_url.get_secret_value())
    try:
        prefix = env.settings.redis_cache_key_prefix
        names = list(client.scan_iter(match=f"{prefix}*", count=5000))
        sample = names[:: max(1, len(names) // 500)]
        per_key = (sum(client.memory_usage(k) or 0 for k in sample) / len(sample)
                   if sample else 0.0)
        used = client.info("memory").get("used_memory", 0)
    finally:
        client.close()
    return {
        "keys": keys,
        "worker_rss_bytes": proc_rss_bytes(env.worker.pid),
        "rocksdb_bytes": dir_size_bytes(env.tmp_path / "worker"),
        "redis_keys": len(names), "redis_bytes_estimate": per_key * len(names),
        "redis_used_memory_total": used,
        # Flushed SSTables only: what still sits in memtables and the commit log is not here.
        # None, not 0, when this is not the running stack's directory (see run()).
        "cassandra_data_bytes": dir_size_bytes(
            stack_dir / "cassandra" / "data" / "data" / env.settings.cassandra_keyspace)
        if (stack_dir / "cassandra" / "data").is_dir() else None,
    }


def recovery(env: Any, sender: Sender, workload: Workload, timeout_s: float) -> dict[str, Any]:
    """SIGKILL the worker, restart it, time until a sentinel sent at the kill is in Redis."""
    import redis

    from connectors.redis.cache import availability_key

    sku = f"SENTINEL-{uuid.uuid4().hex[:8]}"
    rec = workload.record(0, 0, 1, "SNAPSHOT", 42, int(time.time() * 1000))
    rec.update(sku=sku, event_id=f"sentinel-{sku}")
    key = availability_key(env.settings.redis_cache_key_prefix, sku)
    client = redis.Redis.from_url(env.settings.redis_url.get_secret_value())
    try:
        t_kill = time.monotonic()
        env.kill_worker()
        env.start_worker()
        sender.producer.produce(rec)
        sender.producer.flush(60)
        t_metrics = None
        deadline = t_kill + timeout_s
        while time.monotonic() < deadline:
            env.assert_worker_alive()
            if t_metrics is None:
                with contextlib.suppress(OSError):
                    scrape(env.metrics_port, timeout=1)
                    t_metrics = time.monotonic()
            if client.exists(key):
                t_done = time.monotonic()
                return {"seconds": t_done - t_kill,
                        "metrics_up_s": (t_metrics or t_done) - t_kill, "recovered": True}
            time.sleep(0.05)
        return {"seconds": math.nan, "recovered": False, "timeout_s": timeout_s}
    finally:
        client.close()


def run_baselines(env: Any, spec: WorkloadSpec, count: int, workdir: Path,
                  cassandra_updates: int, redis_keys: int) -> dict[str, Any]:
    """Every baseline on the bytes of this workload, written to a scratch topic of this env."""
    from confluent_kafka.admin import AdminClient, NewTopic

    topic = env.topic("bench.same-bytes")
    admin = AdminClient(env.settings.confluent_config())
    for fut in admin.create_topics(
            [NewTopic(topic, num_partitions=env.settings.partitions,
                      replication_factor=1)]).values():
        fut.result()
    now = int(time.time() * 1000)
    items = [(e.key, e.value, now) for e in Workload(spec).events(count, now)]
    conf = env.settings.confluent_config()
    out: dict[str, Any] = {}
    out["confluent_produce"] = baselines.confluent_produce(conf, topic, items)
    out["confluent_consume"] = baselines.confluent_consume(conf, topic, count)
    out["aiokafka_getmany"] = baselines.aiokafka_getmany(env.settings, topic, count)
    out["faust_noop"] = baselines.faust_noop(env.settings, topic, count, workdir)
    out["cassandra_execute_concurrent"] = baselines.cassandra_raw(env.settings,
                                                                  cassandra_updates)
    out["redis_pipeline"] = baselines.redis_raw(env.settings, redis_keys)
    return out


def replay(env: Any, events: int, timeout_s: float = 900) -> dict[str, Any]:
    """`stockflow replay --from beginning` over this run's whole log, into Cassandra and Redis.

    Wall time of the command, process start included; events/s over every delta in the log.
    """
    t0 = time.monotonic()
    try:
        proc = env.cli("replay", "--from", "beginning", "--restart", check=False,
                       timeout=timeout_s)
    except Exception as exc:  # a replay failure must not lose the rest of the report
        return {"measured": False, "why": f"stockflow replay failed: {exc}"}
    seconds = time.monotonic() - t0
    if proc.returncode != 0:
        return {"measured": False, "why": f"exit {proc.returncode}: {proc.stderr[-300:]}"}
    return {"measured": True, "events": events, "seconds": seconds, "rate": events / seconds}


def run(workdir: Path, *, skus: int, suppliers: int, rates: list[int], step_s: float,
        grace_s: float, baseline_events: int, profile_s: int,
        guarantee: str = "exactly_once", stack_dir: Path | None = None,
        bulk_load_above: int = 100_000, workers: int = 1,
        log: Any = print) -> dict[str, Any]:
    """The whole end-to-end run; always removes what it created.

    `workers` > 1: that many worker processes of one app id share the partitions during the
    rate ladder (scaling by partitions); memory and recovery are then measured with the
    first worker alone again."""
    from pipeline.settings import Settings

    stack_dir = stack_dir or Settings().stack_dir
    if not stack_pids(stack_dir):
        log(f"note: no pid files under {stack_dir / 'run'}: the Kafka, Cassandra and Redis "
            f"CPU columns and the Cassandra data size will be missing (run from the folder "
            f"whose stack is up, or set STOCKFLOW_STACK_DIR to that stack's directory)")
    PipelineEnv = pipeline_env_class()
    env = PipelineEnv(workdir / "e2e", guarantee=guarantee)
    (workdir / "e2e").mkdir(parents=True, exist_ok=True)
    spec = WorkloadSpec(skus=skus, suppliers=suppliers)
    workload = Workload(spec)
    result: dict[str, Any] = {"guarantee": guarantee, "partitions": env.settings.partitions,
                              "spec": spec.__dict__, "steps": [], "workers": workers}
    bulk = skus > bulk_load_above
    try:
        env.setup()
        if bulk:
            log(f"loading {skus:,} keys through the log and `stockflow rebuild`")
            result["load"] = bulk_load(env, workload, timeout_s=max(1800.0, skus / 200))
            log(f"load: { {k: v for k, v in result['load'].items() if k != 'rebuild_output'} }")
        t_start = time.monotonic()
        env.start_worker()
        wait_for("the worker's metrics endpoint", lambda: _try_scrape(env), 180)
        for i in range(2, workers + 1):
            from bench.worker_process import Worker

            extra = Worker(env, f"worker{i}")
            extra.start()
            env.extra_workers.append(extra)
            wait_for(f"worker {i}'s metrics endpoint", lambda: _try_scrape(env), 180)
        sender = Sender(env)
        # Warm-up: partitions assigned, tables recovered, first writes done.
        send_open_loop(sender, workload, 100, 3)
        sender.producer.flush(60)
        wait_for("the warm-up to reach Redis", lambda: _wait_drained(env, sender, 1)[0],
                 max(180.0, skus / 1000))
        # With N keys already in the changelogs this is the cold start: an empty data dir
        # restored from the changelogs, then the warm-up processed.
        result["cold_start"] = {"keys_in_tables": skus if bulk else 0,
                                "seconds": time.monotonic() - t_start}
        log(f"cold start: {result['cold_start']}")
        profiler = None
        if bulk:
            profile_s = 0  # the key load ran before the worker: nothing to profile then
        else:
            log(f"loading {skus:,} keys")
        if profile_s:
            # Profile while the worker is saturated by the key load (a closed-loop burst):
            # what limits the end-to-end rate is on its hot path then.
            import threading

            def record() -> None:
                time.sleep(2)
                result["profile"] = py_spy(env.worker.pid, workdir, "profile-e2e-worker",
                                           profile_s)

            profiler = threading.Thread(target=record, daemon=True)
            profiler.start()
        if not bulk:
            result["load"] = load_keys(env, sender, workload, timeout_s=max(120, skus / 100))
            if profiler is not None:
                profiler.join(timeout=profile_s + 90)
            log(f"load: {result['load']}")
        pids = {"worker": env.worker.pid, **{extra.name: extra.proc.pid
                                             for extra in env.extra_workers},
                **stack_pids(stack_dir)}
        for rate in rates:
            step = run_step(env, sender, workload, rate, step_s, grace_s, pids)
            result["steps"].append(step)
            cpu = step["cpu_us_per_event"]
            per_worker = "+".join(f"{cpu.get(name, math.nan):,.0f}" for name in pids
                                  if name.startswith("worker"))
            log(f"rate {rate:>6,}/s: processed {step['processed_rate']:,.0f}/s, "
                f"bounded={step['bounded']}, p99 {step['p99_ms']:.0f} ms, "
                f"worker {per_worker} us/event, slope {step['backlog_slope']:,.0f}/s")
            if not step["bounded"]:
                break
        result["sustained_rate"] = sustained_rate(result["steps"])
        result["drained_after_ladder"] = _wait_drained(env, sender, max(60.0, 4 * grace_s))[0]
        if env.extra_workers:
            log(f"stopping workers 2-{workers}: memory and recovery of one worker")
            env.stop_extra_workers()
        result["memory"] = memory(env, stack_dir, skus)
        log(f"memory: {result['memory']}")
        result["recovery"] = recovery(env, sender, workload, timeout_s=max(180.0, skus / 500))
        result["recovery"]["keys_in_tables"] = skus
        log(f"recovery: {result['recovery']}")
        if bulk:
            # The key load was a replay already: `stockflow rebuild` folded the whole log
            # (one record per key) into Cassandra, Redis and the changelogs.
            load = result["load"]
            result["replay"] = {"measured": True, "events": skus, "seconds": load["rebuild_s"],
                                "rate": load["rebuild_rate"],
                                "what": "stockflow rebuild over the key load's log"}
        else:
            result["replay"] = replay(env, sender.sent, timeout_s=max(900.0, skus / 500))
        log(f"replay: {result['replay']}")
        log("baselines")
        result["baselines"] = run_baselines(
            env, spec, baseline_events, workdir, cassandra_updates=min(baseline_events, 20_000),
            redis_keys=min(baseline_events, 20_000))
        sender.producer.close()
    finally:
        env.cleanup()
    return result


def _try_scrape(env: Any) -> bool:
    env.assert_worker_alive()
    try:
        scrape(env.metrics_port, timeout=1)
        return True
    except OSError:
        return False

