"""Topology benchmark: events/s through validate -> dedup -> apply -> aggregate on the real broker.

    python -m bench.topology --events 60000 --out bench-out/

The same workload bytes are written to the inventory.deltas topic of an isolated pipeline
(Cassandra sink and Redis cache switched off: this measures the topology), then a worker
starts and drains it; the rate is taken from the worker's counters over the 10 %-90 % part
of the drain (steady state, no start-up or tail). Done with exactly-once on and off, each
against raw confluent-kafka consumption, aiokafka getmany, a do-nothing Faust agent and
two peers doing the same delta step with stockflow's rules (a confluent-kafka batch loop
with transactions, and Quix Streams in its own venv: bench/peer_*.py), all reading the
same topic in the same run. A py-spy profile of the worker is taken on a
second drain, after the measured one, so the profiler does not slow the measured run.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import baselines, peer_venv
from bench.harness import (
    PipelineCounts,
    cpu_delta,
    load_average,
    pipeline_env_class,
    proc_cpu_seconds,
    proc_rss_bytes,
    proc_thread_cpu,
    py_spy,
    scrape,
    window_rate,
)
from bench.workload import Workload, WorkloadSpec
from pipeline.topics import DELTAS

TOPOLOGY_OFF = {"STOCKFLOW_SINK_ENABLED": "false", "STOCKFLOW_CACHE_ENABLED": "false"}


def _items(spec: WorkloadSpec, count: int, now_ms: int) -> list[tuple[bytes | None, bytes, int]]:
    return [(e.key, e.value, now_ms) for e in Workload(spec).events(count, now_ms)]


def drain(env: Any, total: int, timeout_s: float, *, already: PipelineCounts | None = None,
          on_first: Any = None) -> dict[str, Any]:
    """Wait while the worker drains `total` deltas; samples of its counters every 0.2 s."""
    base = already or PipelineCounts(0, 0, 0, 0, 0, {})
    samples: list[tuple[float, float]] = []
    cpu_first = t_first = None
    threads_first: dict[str, float] = {}
    t0 = time.monotonic()
    last = base
    while time.monotonic() - t0 < timeout_s:
        env.assert_worker_alive()
        try:
            counts = PipelineCounts.from_samples(scrape(env.metrics_port))
        except OSError:
            time.sleep(0.2)
            continue
        now = time.monotonic()
        handled = counts.handled - base.handled
        if handled > 0 and t_first is None:
            t_first, cpu_first = now, proc_cpu_seconds(env.worker.pid)
            threads_first = proc_thread_cpu(env.worker.pid)
            if on_first is not None:
                on_first()
        samples.append((now, handled))
        last = counts
        if handled >= total and counts.aggregated >= counts.applied:
            break
        time.sleep(0.2)
    else:
        raise TimeoutError(f"worker handled {samples[-1][1] if samples else 0} of {total} "
                           f"in {timeout_s:.0f}s")
    t_end = samples[-1][0]
    cpu = proc_cpu_seconds(env.worker.pid) - (cpu_first or 0.0)
    assert t_first is not None
    return {
        "events": total, "seconds": t_end - t_first,
        "rate_steady": window_rate(samples, total),
        "rate_overall": total / (t_end - t_first) if t_end > t_first else math.nan,
        "cpu_us_per_event": cpu * 1e6 / total,
        "applied": last.applied - base.applied, "aggregated": last.aggregated - base.aggregated,
        "rss_bytes": proc_rss_bytes(env.worker.pid), "counts": last,
        # Where the worker's CPU went by thread: the event loop vs RocksDB's and others'.
        "thread_cpu_s": cpu_delta(threads_first, proc_thread_cpu(env.worker.pid)),
    }


def run_guarantee(guarantee: str, spec: WorkloadSpec, events: int, workdir: Path,
                  profile_s: int, with_baselines: bool,
                  quix: peer_venv.PeerVenv | None = None) -> dict[str, Any]:
    """One isolated pipeline: fill its deltas topic, baselines on it, then the worker drains it."""
    PipelineEnv = pipeline_env_class()
    env = PipelineEnv(workdir / guarantee, guarantee=guarantee, extra_env=TOPOLOGY_OFF)
    (workdir / guarantee).mkdir(parents=True, exist_ok=True)
    out: dict[str, Any] = {"guarantee": guarantee, "partitions": env.settings.partitions}
    try:
        env.cli("topics", "create")
        conf = env.settings.confluent_config()
        topic = env.topic(DELTAS.name)
        items = _items(spec, events, int(time.time() * 1000))
        out["produce"] = baselines.confluent_produce(conf, topic, items)
        if with_baselines:
            out["confluent_consume"] = baselines.confluent_consume(conf, topic, events)
            out["aiokafka_getmany"] = baselines.aiokafka_getmany(env.settings, topic, events)
            out["faust_noop"] = baselines.faust_noop(env.settings, topic, events,
                                                      workdir / guarantee)
        if quix is not None:  # the peers (None: --no-peers)
            out["peer_loop"] = baselines.confluent_loop(env.settings, topic, events,
                                                        workdir / guarantee,
                                                        guarantee=guarantee)
            out["peer_quix"] = baselines.quix_streams(env.settings, topic, events,
                                                      workdir / guarantee, quix.python,
                                                      guarantee=guarantee,
                                                      why_not=quix.reason)
        load0 = load_average()
        env.start_worker()
        res = drain(env, events, timeout_s=max(300.0, events / 200))
        res["load_avg"] = (load0, load_average())
        counts = res.pop("counts")
        out["topology"] = res
        if profile_s > 0:
            # Second drain with the profiler attached: long enough to cover the recording.
            n2 = max(1000, int(res["rate_overall"] * (profile_s + 10)))
            more = _items(WorkloadSpec(**{**spec.__dict__, "seed": spec.seed + 1}), n2,
                          int(time.time() * 1000))
            baselines.confluent_produce(conf, topic, more)
            prof: dict[str, Any] = {}
            drain(env, n2, timeout_s=max(300.0, n2 / 200), already=counts,
                  on_first=lambda: prof.update(py_spy(env.worker.pid, workdir,
                                                      f"profile-topology-{guarantee}",
                                                      profile_s)))
            out["profile"] = prof
    finally:
        out["worker_log_tail"] = env.worker_log()[-1500:] if env.worker_logs else ""
        env.cleanup()
    return out


def run(events: int, spec: WorkloadSpec, workdir: Path, *, profile_s: int = 20,
        guarantees: tuple[str, ...] = ("exactly_once", "at_least_once"), peers: bool = True,
        log: Callable[[str], None] = print) -> dict[str, Any]:
    """The topology benchmark, every guarantee; baselines on each pipeline's own topic."""
    results: dict[str, Any] = {"events": events, "spec": spec.__dict__, "runs": {}}
    quix = None
    if peers:
        # Built before any clock starts (pip is slow), once for every guarantee.
        quix = peer_venv.ensure_quix_venv()
        if quix.python is None:
            log(f"Quix Streams baseline skipped: {quix.reason}")
        elif quix.built:
            log(f"built the Quix Streams venv {quix.python.parents[1]}")
        results["quix_venv"] = str(quix.python) if quix.python else quix.reason
    for g in guarantees:
        res = run_guarantee(g, spec, events, workdir, profile_s if g == guarantees[0] else 0,
                            with_baselines=True, quix=quix)
        res.pop("worker_log_tail", None)
        results["runs"][g] = res
    return results


def main() -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=60_000)
    parser.add_argument("--skus", type=int, default=20_000)
    parser.add_argument("--suppliers", type=int, default=10)
    parser.add_argument("--profile", type=int, default=20, help="py-spy seconds (0 = none)")
    parser.add_argument("--guarantee", choices=("exactly_once", "at_least_once"),
                        action="append", help="only this guarantee (repeatable; default both)")
    parser.add_argument("--no-peers", action="store_true",
                        help="without the Quix Streams and confluent-kafka loop baselines")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    from pipeline.log import configure_logging

    configure_logging(json=False, level="WARNING")
    out = args.out or Path(tempfile.mkdtemp(prefix="stockflow-topology-"))
    out.mkdir(parents=True, exist_ok=True)
    result = run(args.events, WorkloadSpec(skus=args.skus, suppliers=args.suppliers), out,
                 profile_s=args.profile, peers=not args.no_peers,
                 guarantees=tuple(args.guarantee or ("exactly_once", "at_least_once")),
                 log=lambda msg: print(msg, file=sys.stderr, flush=True))
    (out / "topology.json").write_text(json.dumps(result, indent=2, default=str))
    print(json.dumps(result, indent=2, default=str))
    from bench.report import topology_table

    table = "\n".join(topology_table({"topology": result}))
    (out / "topology.md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
