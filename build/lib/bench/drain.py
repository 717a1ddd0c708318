"""Benchmark: how fast one worker drains a backlog end to end (Kafka -> Cassandra -> Redis).

    python -m bench.drain --events 40000 --rounds 2

An isolated pipeline (bench/pipeline_env.py: own topics, keyspace, Redis prefix, worker)
loaded with --skus keys (one SNAPSHOT each), then per round --events workload events
produced at once; a round ends when every stage has caught up (the worker's counters). It
reports events/s and the CPU per event of the worker, this benchmark's own process and the
stack's services in the same window. The worker is saturated throughout a round, so this is
the end-to-end ceiling, with less noise than an open-loop rate ladder on a shared machine.
Environment variables reach the worker (e.g. STOCKFLOW_BATCH_OVERLAP=false for the
alternative). Everything it created is removed at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any


def run(events: int, rounds: int, skus: int, suppliers: int, log: Any = print,
        profile: Path | None = None) -> list[dict[str, Any]]:
    from bench.end_to_end import Sender, _try_scrape, _wait_drained, load_keys
    from bench.harness import CpuMeter, scrape, stack_pids, wait_for
    from bench.pipeline_env import PipelineEnv
    from bench.workload import Workload, WorkloadSpec
    from pipeline.settings import Settings

    env = PipelineEnv(Path(tempfile.mkdtemp(prefix="bench-drain-")))
    results = []
    try:
        env.setup()
        env.start_worker()
        wait_for("the worker's metrics endpoint", lambda: _try_scrape(env), 180)
        sender = Sender(env)
        workload = Workload(WorkloadSpec(skus=skus, suppliers=suppliers))
        load = load_keys(env, sender, workload, timeout_s=max(300.0, skus / 100))
        log(f"loaded {skus:,} keys in {load['seconds']:.1f}s")
        pids = {"worker": env.worker.pid, "bench": os.getpid(),
                **stack_pids(Settings().stack_dir)}
        for index in range(rounds):
            batch = list(workload.events(events))
            loop_before = _loop_seconds(scrape(env.metrics_port))
            meter = CpuMeter(pids)
            meter.start()
            spy = _start_profile(env.worker.pid, profile, index) if profile else None
            started = time.monotonic()
            for event in batch:
                sender(event)
            sender.producer.flush(60)
            drained, _ = _wait_drained(env, sender, max(300.0, events / 100))
            seconds = time.monotonic() - started
            cpu = meter.stop()
            loop = {phase: seconds - loop_before.get(phase, 0.0) for phase, seconds
                    in _loop_seconds(scrape(env.metrics_port)).items()}
            if spy is not None:
                spy.wait(timeout=60)
            result = {"round": index + 1, "events": events, "seconds": round(seconds, 2),
                      "events_per_s": round(events / seconds), "drained": drained,
                      "cpu_us_per_event": {name: round(v * 1e6 / events)
                                           for name, v in cpu.items() if name != "_wall"},
                      # Where the worker's main loop spent the round (share of its wall time).
                      "loop_share": {phase: round(v / seconds, 2) for phase, v in loop.items()
                                     if not phase.startswith("cassandra_")},
                      "cassandra_batches": _sink_summary(loop, seconds)}
            results.append(result)
            log(f"round {index + 1}: {events:,} events in {seconds:.1f}s = "
                f"{events / seconds:,.0f}/s; CPU us/event {result['cpu_us_per_event']}; "
                f"worker loop {result['loop_share']}; Cassandra {result['cassandra_batches']}")
        sender.producer.close()
    finally:
        env.stop_worker()
        env.cleanup()
    return results


def _loop_seconds(samples: list[tuple[str, dict[str, str], float]]) -> dict[str, float]:
    """The worker loop's seconds per phase, and the Cassandra sink's batches, rows and seconds."""
    out = {labels["phase"]: value for name, labels, value in samples
           if name == "stockflow_worker_loop_seconds_total"}
    for name, labels, value in samples:
        if labels.get("sink") == "cassandra" and name in (
                "stockflow_sink_batch_seconds_count", "stockflow_sink_batch_seconds_sum",
                "stockflow_sink_batch_size_sum"):
            out[name.replace("stockflow_sink_batch_", "cassandra_")] = value
    return out


def _sink_summary(delta: dict[str, float], seconds: float) -> dict[str, float]:
    """Cassandra writes of a round: how many, their mean size and time, and the share of the
    round a write was running (the aggregate agent writes one batch at a time)."""
    batches = delta.get("cassandra_seconds_count", 0.0)
    if not batches:
        return {}
    return {"batches": int(batches),
            "mean_updates": round(delta.get("cassandra_size_sum", 0.0) / batches),
            "mean_ms": round(1000 * delta.get("cassandra_seconds_sum", 0.0) / batches, 1),
            "busy": round(delta.get("cassandra_seconds_sum", 0.0) / seconds, 2)}


def _start_profile(pid: int, out_dir: Path, index: int) -> Any:
    """py-spy the worker through one round (collapsed stacks, with idle frames: where a
    saturated worker's main thread waits matters as much as where it computes)."""
    import shutil
    import subprocess

    out_dir.mkdir(parents=True, exist_ok=True)
    exe = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    return subprocess.Popen(
        [exe, "record", "--pid", str(pid), "--duration", "8", "--rate", "100", "--idle",
         "--format", "raw", "-o", str(out_dir / f"drain-worker-{index + 1}.txt")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=40_000, help="events per round")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--skus", type=int, default=10_000)
    parser.add_argument("--suppliers", type=int, default=10)
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument("--profile", type=Path, default=None,
                        help="directory for py-spy collapsed stacks of the worker, 8 s per round")
    args = parser.parse_args(argv)
    results = run(args.events, args.rounds, args.skus, args.suppliers, profile=args.profile)
    if args.json:
        print(json.dumps(results))
    return 0 if all(r["drained"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
