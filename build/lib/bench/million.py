"""1M keys through the worker's topology (sinks off): worker RSS, then SIGKILL and recovery.

    python -m bench.million --keys 1000000 --out DIR

One SNAPSHOT per key straight into inventory.deltas, a worker drains it (both tables then
hold 1M keys), its RSS is read, then it is SIGKILLed and restarted: the time to its first
assignment (stores opened and caught up from the changelogs) and the time until a delta sent
at the kill has gone through both hops are measured.
"""

from __future__ import annotations

import argparse
import json
import signal
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.harness import pipeline_env_class, proc_rss_bytes
from bench.workload import Workload, WorkloadSpec
from pipeline.topics import DELTAS, STOCK_UPDATES


def _produce_keys(env: Any, workload: Workload) -> float:
    from confluent_kafka import Producer

    producer = Producer({**env.settings.confluent_config(), "linger.ms": 50,
                         "batch.size": 1_000_000, "partitioner": "murmur2_random"})
    topic = env.topic(DELTAS.name)
    t0 = time.monotonic()
    for event in workload.one_per_key(int(time.time() * 1000)):
        while True:
            try:
                producer.produce(topic, event.value, event.key)
                break
            except BufferError:
                producer.poll(0.05)
    if producer.flush(300) != 0:
        raise RuntimeError("keys not acknowledged")
    return time.monotonic() - t0


def _drained(env: Any) -> bool:
    return all(env.lag(t) == 0 for t in (DELTAS.name, STOCK_UPDATES.name))


def run(keys: int, suppliers: int, out: Path) -> dict[str, Any]:
    env = pipeline_env_class()(Path(tempfile.mkdtemp(prefix="sf-million-")), extra_env={
        "STOCKFLOW_SINK_ENABLED": "false", "STOCKFLOW_CACHE_ENABLED": "false"}).setup()
    result: dict[str, Any] = {"keys": keys, "suppliers": suppliers}
    try:
        workload = Workload(WorkloadSpec(skus=keys, suppliers=suppliers))
        result["produce_s"] = _produce_keys(env, workload)
        t0 = time.monotonic()
        env.start_worker()
        env.wait_until(lambda: _drained(env), 3600, "the worker to drain the keys")
        result["drain_s"] = time.monotonic() - t0
        result["drain_rate"] = keys / result["drain_s"]
        result["worker_rss_mb"] = proc_rss_bytes(env.worker.pid) / 2**20
        env.kill_worker(signal.SIGKILL)
        killed = time.monotonic()
        # One more delta for a key the tables hold, sent at the kill.
        probe = next(iter(workload.events(1, int(time.time() * 1000))))
        env.produce_raw([(probe.key, probe.value)])
        env.start_worker()
        env.wait_until(lambda: '"runtime.partitions_assigned"' in
                       env.worker_logs[-1].read_text(errors="replace"), 600,
                       "the restarted worker's assignment")
        result["restart_to_assigned_s"] = time.monotonic() - killed
        env.wait_until(lambda: _drained(env), 600, "the probe to pass both hops")
        result["restart_to_probe_processed_s"] = time.monotonic() - killed
        assigned = [json.loads(line) for line in
                    env.worker_logs[-1].read_text(errors="replace").splitlines()
                    if '"runtime.partitions_assigned"' in line]
        result["restored_records"] = assigned[-1].get("changelog_records_restored")
    finally:
        env.kill_worker(signal.SIGKILL)
        env.cleanup()
    out.mkdir(parents=True, exist_ok=True)
    (out / "million.json").write_text(json.dumps(result, indent=1))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keys", type=int, default=1_000_000)
    parser.add_argument("--suppliers", type=int, default=50)
    parser.add_argument("--out", type=Path, default=Path("bench-out"))
    args = parser.parse_args()
    print(json.dumps(run(args.keys, args.suppliers, args.out), indent=1))


if __name__ == "__main__":
    main()
