"""What tracing costs the worker: throughput and CPU per event with tracing off, at 1 % and 100 %.

One run, three variants, each an isolated pipeline (its own topics, app id, keyspace, Redis
prefix) on the shared stack, in rounds so the variants take turns with the machine's load:

- `off`: tracing disabled, records without headers (what runs today);
- `1%` and `100%`: tracing on, OTLP/HTTP export (batch span processor, protobuf) to a local
  receiver that accepts and discards, and every record carrying a `traceparent` whose sampled
  flag is set for that share of traces, as the connector's ratio decides. Dead letters of the
  workload (0.5 %) are recorded in every traced variant, as the settings say.

Each variant's backlog (`--events` records of bench.workload's mix) is in inventory.deltas
before its worker starts, so every variant works in full batches. Throughput is the records
handled after the worker's first assignment / the time from then to the last change written
to Redis (the first assignment is read from the worker's log); CPU per event is the worker
process's CPU over that time / those records. The
machine's load average is printed with each run: on a shared machine, read the CPU column.

    python -m bench.tracing_cost --events 30000 --rounds 2
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from bench.harness import (
    PipelineCounts,
    pipeline_env_class,
    proc_cpu_seconds,
    scrape,
)
from bench.workload import Workload, WorkloadSpec
from pipeline.topics import DELTAS

VARIANTS: dict[str, float | None] = {"off": None, "1%": 0.01, "100%": 1.0}


class OtlpSink:
    """An OTLP/HTTP endpoint that answers 200 and counts what it was sent."""

    def __init__(self) -> None:
        sink = self
        self.requests = 0
        self.bytes = 0

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", 0))
                self.rfile.read(length)
                sink.requests += 1
                sink.bytes += length
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *_args: Any) -> None:
                return None

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def traceparent(rng: random.Random, sampled: bool) -> bytes:
    return (f"00-{rng.getrandbits(128):032x}-{rng.getrandbits(64) or 1:016x}-"
            f"{'01' if sampled else '00'}").encode()


def preload(env: Any, events: int, ratio: float | None, seed: int) -> None:
    """The variant's backlog, with the headers a traced connector would have sent."""
    from confluent_kafka import Producer

    from connectors.delta_producer import PRODUCER_DEFAULTS

    workload = Workload(WorkloadSpec(skus=5_000, suppliers=10, seed=seed))
    rng = random.Random(seed)
    producer = Producer({**PRODUCER_DEFAULTS, **env.settings.confluent_config(),
                         "linger.ms": 20})
    topic = env.topic(DELTAS.name)
    for event in workload.events(events, int(time.time() * 1000)):
        kwargs: dict[str, Any] = {"timestamp": event.timestamp_ms}
        if ratio is not None:
            kwargs["headers"] = [("traceparent", traceparent(rng, rng.random() < ratio))]
        while True:
            try:
                producer.produce(topic, event.value, event.key, **kwargs)
                break
            except BufferError:
                producer.poll(0.05)
        producer.poll(0)
    if producer.flush(120) != 0:
        raise RuntimeError("the backlog was not acknowledged")


def measure(env: Any, events: int, ratio: float | None, seed: int,
            timeout_s: float) -> dict[str, float]:
    """Send the backlog, start the worker, and time its drain: wall time and the worker's
    CPU from the moment it is ready (assigned) to the last change written to Redis."""
    preload(env, events, ratio, seed)
    env.start_worker()
    assert env.worker is not None
    pid = env.worker.pid
    deadline = time.monotonic() + timeout_s
    start: tuple[float, float, float] | None = None  # wall, CPU, records handled
    log = env.worker_logs[-1]
    while time.monotonic() < deadline:
        if start is None:
            # The runtime logs its first assignment; records flow right after it.
            if log.exists() and b"runtime.partitions_assigned" in log.read_bytes():
                wall, cpu = time.monotonic(), proc_cpu_seconds(pid)
                try:
                    handled = PipelineCounts.from_samples(
                        scrape(env.metrics_port, timeout=2)).handled
                except OSError:
                    handled = 0.0
                start = (wall, cpu, handled)
            env.assert_worker_alive()
            time.sleep(0.01)
            continue
        try:
            samples = scrape(env.metrics_port, timeout=2)
        except OSError:
            samples = []
        if samples:
            counts = PipelineCounts.from_samples(samples)
            if counts.handled >= events and counts.cached >= counts.changed:
                wall, cpu = time.monotonic(), proc_cpu_seconds(pid)
                measured = events - start[2]
                return {"events": measured, "seconds": wall - start[0],
                        "events_s": measured / (wall - start[0]),
                        "cpu_us_event": (cpu - start[1]) * 1e6 / measured,
                        "cpu_cores": (cpu - start[1]) / (wall - start[0])}
        env.assert_worker_alive()
        time.sleep(0.05)
    raise RuntimeError(f"not drained within {timeout_s}s:\n{env.worker_log()[-2000:]}")


@contextmanager
def pipeline(workdir: Path, name: str, ratio: float | None, sink: OtlpSink) -> Iterator[Any]:
    env_vars: dict[str, str] = {}
    if ratio is not None:
        env_vars.update({
            "STOCKFLOW_TRACING_ENABLED": "true", "STOCKFLOW_TRACING_EXPORTER": "otlp",
            "STOCKFLOW_TRACING_ENDPOINT": f"http://127.0.0.1:{sink.port}/v1/traces",
            "STOCKFLOW_TRACING_SAMPLE_RATIO": str(ratio),
            # The backlog waited in the topic by design: only sampling and dead letters here.
            "STOCKFLOW_TRACING_SLOW_RECORD_S": "0"})
    (workdir / name).mkdir(parents=True)
    env = pipeline_env_class()(workdir / name, partitions=4, extra_env=env_vars)
    try:
        env.setup()
        yield env
    finally:
        env.cleanup()


def run(events: int, rounds: int, timeout_s: float) -> dict[str, dict[str, float]]:
    sink = OtlpSink()
    results: dict[str, list[dict[str, float]]] = {v: [] for v in VARIANTS}
    exported: dict[str, int] = {v: 0 for v in VARIANTS}
    try:
        with tempfile.TemporaryDirectory(prefix="stockflow-tracing-bench-") as tmp:
            for round_no in range(rounds):
                order = list(VARIANTS) if round_no % 2 == 0 else list(reversed(VARIANTS))
                for variant in order:
                    ratio = VARIANTS[variant]
                    name = f"r{round_no}-{variant.strip('%') or 'off'}"
                    with pipeline(Path(tmp), name, ratio, sink) as env:
                        bytes_before = sink.bytes
                        result = measure(env, events, ratio, round_no, timeout_s)
                        env.stop_worker()  # flushes the span processor at exit
                        exported[variant] += sink.bytes - bytes_before
                    results[variant].append(result)
                    print(f"round {round_no + 1} {variant:>4}: {result['events_s']:,.0f} ev/s, "
                          f"{result['cpu_us_event']:.0f} µs CPU/event, load average "
                          f"{os.getloadavg()[0]:.1f}", flush=True)
    finally:
        sink.close()
    summary = {}
    for variant, runs in results.items():
        summary[variant] = {
            "events_s": statistics.median(r["events_s"] for r in runs),
            "cpu_us_event": statistics.median(r["cpu_us_event"] for r in runs),
            "otlp_bytes_event": exported[variant] / sum(r["events"] for r in runs),
        }
    return summary


def main() -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=30_000, help="backlog per variant")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=600.0, help="per variant drain")
    args = parser.parse_args()
    summary = run(args.events, args.rounds, args.timeout)
    off = summary["off"]
    print(f"median of {args.rounds} rounds, {args.events:,} events per variant:")
    print("| tracing | events/s | vs off | worker CPU µs/event | vs off | OTLP bytes/event |")
    print("|---|---|---|---|---|---|")
    for variant, s in summary.items():
        print(f"| {variant} | {s['events_s']:,.0f} | {s['events_s'] / off['events_s'] - 1:+.1%} "
              f"| {s['cpu_us_event']:.0f} | {s['cpu_us_event'] / off['cpu_us_event'] - 1:+.1%} "
              f"| {s['otlp_bytes_event']:.0f} |")


if __name__ == "__main__":
    main()
