"""Scaling benchmark: throughput with 1, 2 and 3 worker processes of one app id on the same
workload, CPU per event, time for a rebalance to settle; plus the lag at the end of each chaos
case of the reliability suite (read from its results file).

Per worker count: a fresh isolated pipeline (12 partitions, Kafka only: the sink and cache
off, so the workers' own cost is measured), the workers started one after the other (each
join is a rebalance, timed), then the whole workload sent as fast as one producer can and
timed until every input record is committed. CPU is each worker's user + system time from
/proc over that window.

    .venv/bin/python -m bench.scaling [--events 60000] [--workers 1,2,3] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from bench.harness import proc_cpu_seconds
from bench.messy_workload import build_workload, send_all
from bench.pipeline_env import PipelineEnv
from bench.worker_process import RESULTS, ChaosWorker, lag, wait_for
from pipeline.topics import CHANGES

PARTITIONS = 12


def _ts(event: dict[str, Any]) -> float:
    return datetime.fromisoformat(event["timestamp"].replace("Z", "+00:00")).timestamp()


def settle_seconds(workers: list[ChaosWorker], since: float) -> float:
    """From the first revoke after `since` to the last assignment: the rebalance proper."""
    revokes = [_ts(e) for w in workers for e in w.events("runtime.partitions_revoked")
               if _ts(e) >= since]
    assigns = [_ts(e) for w in workers for e in w.events("runtime.partitions_assigned")
               if _ts(e) >= since]
    if not assigns:
        return float("nan")
    return max(assigns) - (min(revokes) if revokes else min(assigns))


def last_output_at(env: PipelineEnv, logical: str = CHANGES.name) -> float:
    """The newest record timestamp (set by the worker's producer) of a topic, in seconds:
    when the last stage finished, without the lag probe's polling delay."""
    from confluent_kafka import Consumer, TopicPartition

    topic = env.topic(logical)
    consumer = Consumer({**env.settings.confluent_config(), "group.id": "scaling-probe",
                         "enable.auto.commit": False, "isolation.level": "read_committed"})
    newest = 0
    try:
        parts = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        for p in parts:
            lo, hi = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
            if hi <= lo:
                continue
            # The last data record sits before at most a few transaction markers.
            consumer.assign([TopicPartition(topic, p, max(lo, hi - 20))])
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                msg = consumer.poll(0.5)
                if msg is None:
                    break
                if not msg.error():
                    newest = max(newest, msg.timestamp()[1])
    finally:
        consumer.close()
    return newest / 1000


def run(n: int, valid: list[dict[str, Any]], malformed: list[tuple[bytes, bytes, str]],
        tmp: Path) -> dict[str, Any]:
    (tmp / f"n{n}").mkdir()
    env = PipelineEnv(tmp / f"n{n}", partitions=PARTITIONS,
                      extra_env={"STOCKFLOW_SINK_ENABLED": "false",
                                 "STOCKFLOW_CACHE_ENABLED": "false"}).setup()
    workers = [ChaosWorker(env, f"w{i}") for i in range(n)]
    joins: list[dict[str, float]] = []
    try:
        for k, w in enumerate(workers):
            started = time.monotonic()
            wall = time.time()
            w.start()
            wait_for(lambda w=w: w.events("runtime.started"), 120, f"{w.name} started", workers)
            total = len(w.events("runtime.started")[0]["topics"]) * PARTITIONS
            live = workers[:k + 1]
            wait_for(lambda live=live, total=total: all(x.assigned() > 0 for x in live) and
                     sum(x.assigned() for x in live) == total, 180, "assignment settled", live)
            joins.append({"workers": k + 1,
                          "start_to_settled_s": round(time.monotonic() - started, 2),
                          "rebalance_s": round(settle_seconds(live, wall), 2)})
        pids = {w.name: w.proc.pid for w in workers if w.proc}
        samples: list[tuple[float, dict[str, float]]] = []
        sampling = threading.Event()

        def sample() -> None:  # CPU every 0.2 s, to read it at the moment the work ended
            while not sampling.is_set():
                samples.append((time.time(), {k: proc_cpu_seconds(p) for k, p in pids.items()}))
                sampling.wait(0.2)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        while not samples:
            time.sleep(0.01)
        t0 = time.monotonic()
        wall0 = time.time()
        send_all(env, valid, malformed, random.Random(1))
        sent_s = time.monotonic() - t0
        wait_for(lambda: lag(env) == 0, 900, "drained", workers)
        probed_s = time.monotonic() - t0
        done_at = last_output_at(env)
        elapsed = done_at - wall0  # the lag probe polls; this does not
        sampling.set()
        sampler.join()
        cpu0 = next(c for t, c in reversed(samples) if t <= wall0)
        cpu1 = next((c for t, c in samples if t >= done_at), samples[-1][1])
        events = len(valid) + len(malformed)
        cpu_s = sum(cpu1[k] - cpu0[k] for k in cpu0)
        return {
            "workers": n, "events": events, "send_s": round(sent_s, 2),
            "drain_s": round(elapsed, 2), "drain_probed_s": round(probed_s, 2),
            "events_per_s": round(events / elapsed),
            "cpu_s": round(cpu_s, 2), "cpu_us_per_event": round(cpu_s * 1e6 / events, 1),
            "cores_busy": round(cpu_s / elapsed, 2), "load_average": os.getloadavg()[0],
            "cpu_s_per_worker": {k: round(cpu1[k] - cpu0[k], 2) for k in cpu0},
            "joins": joins,
        }
    finally:
        for w in workers:
            w.stop(signal.SIGKILL)
        env.cleanup()


def chaos_lags() -> list[dict[str, Any]]:
    """The newest row per reliability case: lag when the faults ended, time to converge."""
    if not RESULTS.exists():
        return []
    newest: dict[str, dict[str, Any]] = {}
    for line in RESULTS.read_text().splitlines():
        row = json.loads(line)
        newest[f"{row['case']} ({'full' if row.get('full') else 'trimmed'})"] = row
    return [{"case": k, "lag_at_chaos_end": r["lag_at_chaos_end"],
             "converge_s": r["converge_s"], "events": r["events"]}
            for k, r in sorted(newest.items())]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=60_000)
    parser.add_argument("--workers", default="1,2,3")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    valid, malformed = build_workload(seed=5, target_events=args.events)
    rows = []
    with tempfile.TemporaryDirectory(prefix="stockflow-scaling-") as tmp:
        for n in (int(x) for x in args.workers.split(",")):
            row = run(n, valid, malformed, Path(tmp))
            print(json.dumps(row), flush=True)
            rows.append(row)
    report = {"scaling": rows, "chaos": chaos_lags()}
    for c in report["chaos"]:
        print(json.dumps(c))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
