"""Benchmark report: ratios to the baselines, goals, JSON, PNG plots and the markdown table."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from bench.harness import ratio

GOALS = {
    "topology_rate": 20_000.0,  # events/s through validate-dedup-aggregate per worker
    "e2e_rate": 5_000.0,  # events/s end to end with Cassandra and Redis, bounded backlog
    "freshness_p99_ms_at_1000": 250.0,  # produced -> Redis written, at 1,000 events/s
    "burst_100k_s": 30.0,  # 100,000 snapshot rows sent at once, all visible in Redis
    "recovery_s_1m_keys": 10.0,
    "worker_rss_mb_1m_skus": 500.0,
    # issue 18, same run, exactly-once: the worker against peers doing the same delta step
    "topology_over_quix": 1.0,
    "topology_over_loop": 0.8,
}

# The peer baselines of the topology phase: result key -> label.
PEERS = {"peer_quix": "Quix Streams (same rules)",
         "peer_loop": "confluent-kafka loop (same rules)"}


def _get(d: Any, *path: str, default: Any = math.nan) -> Any:
    for p in path:
        if not isinstance(d, dict) or p not in d:
            return default
        d = d[p]
    return d


def step_at(steps: list[dict[str, Any]], rate: float) -> dict[str, Any] | None:
    """The ladder step offered at exactly `rate`, if it ran."""
    return next((s for s in steps if s["offered_rate"] == rate), None)


def highest_bounded(steps: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The bounded step with the highest offered rate (the sustained rate's step)."""
    bounded = [s for s in steps if s["bounded"]]
    return max(bounded, key=lambda s: s["offered_rate"]) if bounded else None


def ratios(result: dict[str, Any]) -> dict[str, float]:
    """Every measured rate (and CPU per event) as a ratio to its same-run baseline."""
    out: dict[str, float] = {}
    for g, run in _get(result, "topology", "runs", default={}).items():
        rate = _get(run, "topology", "rate_steady")
        out[f"topology[{g}] / confluent consume"] = ratio(rate, _get(run, "confluent_consume",
                                                                    "rate"))
        out[f"topology[{g}] / aiokafka getmany"] = ratio(rate, _get(run, "aiokafka_getmany",
                                                                   "rate"))
        out[f"topology[{g}] / Faust no-op agent"] = ratio(rate, _get(run, "faust_noop", "rate"))
        out[f"topology[{g}] worker CPU per event / Faust no-op's"] = ratio(
            _get(run, "topology", "cpu_us_per_event"), _get(run, "faust_noop",
                                                            "cpu_us_per_event"))
        for key, label in PEERS.items():
            if key in run:
                out[f"topology[{g}] / {label}"] = ratio(rate, _get(run, key, "rate"))
                out[f"topology[{g}] worker CPU per event / {label}'s"] = ratio(
                    _get(run, "topology", "cpu_us_per_event"),
                    _get(run, key, "cpu_us_per_event"))
    e2e = result.get("end_to_end") or {}
    base = e2e.get("baselines") or {}
    sustained = e2e.get("sustained_rate", math.nan)
    for name, label in (("confluent_produce", "confluent-kafka produce"),
                        ("confluent_consume", "confluent-kafka consume"),
                        ("aiokafka_getmany", "aiokafka getmany"),
                        ("faust_noop", "Faust no-op agent"),
                        ("cassandra_execute_concurrent",
                         "Cassandra execute_concurrent (updates/s)"),
                        ("redis_pipeline", "Redis pipelined HSET")):
        out[f"end-to-end sustained / {label}"] = ratio(sustained, _get(base, name, "rate"))
    step = highest_bounded(e2e.get("steps") or [])
    if step is not None:
        out["end-to-end worker CPU per event / Faust no-op's"] = ratio(
            _get(step, "cpu_us_per_event", "worker"), _get(base, "faust_noop",
                                                           "cpu_us_per_event"))
    return out


def goals(result: dict[str, Any]) -> list[dict[str, Any]]:
    """Each goal of the issue with the measured value and whether it is met."""
    e2e = result.get("end_to_end") or {}
    steps = e2e.get("steps") or []
    keys = _get(e2e, "memory", "keys")
    topo = _get(result, "topology", "runs", "exactly_once", "topology", "rate_steady")
    at1k = step_at(steps, 1000)
    p99_1k = at1k["p99_ms"] if at1k and at1k["bounded"] else math.nan
    # The key load sends one SNAPSHOT per key as fast as the producer goes: with >= 100k
    # keys it is the burst of the goal (seconds until every row is in Redis).
    load = e2e.get("load") or {}
    burst = load.get("seconds", math.nan) if load.get("keys", 0) >= 100_000 \
        and load.get("drained") else math.nan
    rec = _get(e2e, "recovery", "seconds")
    rss_mb = _get(e2e, "memory", "worker_rss_bytes") / 2**20
    eos = _get(result, "topology", "runs", "exactly_once", default={})
    over_quix = ratio(topo, _get(eos, "peer_quix", "rate"))
    over_loop = ratio(topo, _get(eos, "peer_loop", "rate"))
    rows = [
        ("events/s through validate-dedup-aggregate per worker (exactly-once)", topo,
         GOALS["topology_rate"], topo >= GOALS["topology_rate"]),
        ("events/s end to end (Cassandra + Redis)", e2e.get("sustained_rate", math.nan),
         GOALS["e2e_rate"], e2e.get("sustained_rate", 0) >= GOALS["e2e_rate"]),
        ("freshness p99 (ms) at 1,000 events/s", p99_1k, GOALS["freshness_p99_ms_at_1000"],
         p99_1k <= GOALS["freshness_p99_ms_at_1000"]),
        ("burst of 100,000 snapshot rows all in Redis (s)", burst, GOALS["burst_100k_s"],
         burst <= GOALS["burst_100k_s"]),
        (f"recovery after SIGKILL (s) with {keys:,} keys" if keys == keys else "recovery (s)",
         rec, GOALS["recovery_s_1m_keys"], rec <= GOALS["recovery_s_1m_keys"]),
        (f"worker RSS (MB) at {keys:,} SKUs" if keys == keys else "worker RSS (MB)", rss_mb,
         GOALS["worker_rss_mb_1m_skus"], rss_mb <= GOALS["worker_rss_mb_1m_skus"]),
    ]
    out = [{"goal": g, "measured": v, "target": t, "met": bool(m) and v == v}
           for g, v, t, m in rows]
    peer_rows = [
        ("topology / Quix Streams with the same rules, same run (exactly-once)", over_quix,
         GOALS["topology_over_quix"]),
        ("topology / confluent-kafka loop with the same rules, same run (exactly-once)",
         over_loop, GOALS["topology_over_loop"]),
    ]
    out += [{"goal": g, "measured": v, "target": t, "met": v == v and v >= t, "fmt": ".2f"}
            for g, v, t in peer_rows]
    return out


def topology_table(result: dict[str, Any]) -> list[str]:
    """The topology phase next to its same-run baselines (peers skipped or failed say why)."""
    runs = _get(result, "topology", "runs", default={})
    if not runs:
        return []
    lines = ["| guarantee | system | events/s | CPU µs/event | topology / system |",
             "|---|---|---|---|---|"]
    for g, run in runs.items():
        rate = _get(run, "topology", "rate_steady")
        lines.append(f"| {g} | stockflow worker (steady 10-90 %) | {_f(rate)} | "
                     f"{_f(_get(run, 'topology', 'cpu_us_per_event'))} | 1 |")
        for key, label in (("faust_noop", "Faust agent that does nothing"), *PEERS.items()):
            entry = run.get(key)
            if entry is None:
                continue
            if entry.get("skipped") or entry.get("error"):
                why = entry.get("skipped") or entry.get("error")
                lines.append(f"| {g} | {label} | not measured: {why} | | |")
                continue
            lines.append(f"| {g} | {label} | {_f(entry.get('rate'))} | "
                         f"{_f(entry.get('cpu_us_per_event'))} | "
                         f"{_f(ratio(rate, entry.get('rate')), '.3f')} |")
    return lines


def write_json(result: dict[str, Any], path: Path) -> None:
    """The whole result, NaN written as null."""
    def clean(x: Any) -> Any:
        if isinstance(x, float) and (math.isnan(x) or math.isinf(x)):
            return None
        if isinstance(x, dict):
            return {str(k): clean(v) for k, v in x.items()}
        if isinstance(x, list | tuple):
            return [clean(v) for v in x]
        if hasattr(x, "__dict__"):
            return clean(vars(x))
        return x

    path.write_text(json.dumps(clean(result), indent=2))


def plot(result: dict[str, Any], out_dir: Path) -> list[Path]:
    """throughput.png (processed vs offered) and latency.png (freshness percentiles)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = _get(result, "end_to_end", "steps", default=[])
    if not steps:
        return []
    offered = [s["offered_rate"] for s in steps]
    written: list[Path] = []

    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.plot(offered, offered, "--", color="grey", label="offered = processed")
    ax.plot(offered, [s["processed_rate"] for s in steps], "o-", label="processed (apply stage)")
    ax.plot(offered, [s["achieved_send_rate"] for s in steps], "x:", label="sent")
    for s in steps:
        if not s["bounded"]:
            ax.annotate("backlog grows", (s["offered_rate"], s["processed_rate"]),
                        textcoords="offset points", xytext=(-40, 10))
    sustained = _get(result, "end_to_end", "sustained_rate", default=0)
    if sustained:
        ax.axvline(sustained, color="green", alpha=0.4, label=f"sustained {sustained:,.0f}/s")
    ax.set_xlabel("offered events/s")
    ax.set_ylabel("events/s")
    ax.set_title("stockflow end to end: throughput vs offered load (2 shared cores)")
    ax.legend()
    ax.grid(alpha=0.3)
    path = out_dir / "throughput.png"
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    written.append(path)

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for key, label in (("p50_ms", "p50"), ("p99_ms", "p99"), ("p99.9_ms", "p99.9")):
        ax.plot(offered, [s[key] for s in steps], "o-", label=label)
    ax.axhline(GOALS["freshness_p99_ms_at_1000"], color="red", alpha=0.4,
               label="p99 goal (at 1,000/s)")
    ax.set_yscale("log")
    ax.set_xlabel("offered events/s")
    ax.set_ylabel("freshness, produced -> Redis (ms)")
    ax.set_title("stockflow freshness percentiles per offered load")
    ax.legend()
    ax.grid(alpha=0.3, which="both")
    path = out_dir / "latency.png"
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    written.append(path)
    return written


def _f(x: Any, fmt: str = ",.0f") -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    return format(x, fmt)


def _mb(n: Any) -> str:
    return "n/a" if n is None or (isinstance(n, float) and math.isnan(n)) else f"{n / 2**20:.1f} MB"


def markdown(result: dict[str, Any]) -> str:
    """The tables of docs/performance.md for this result."""
    lines: list[str] = []
    lines += ["| goal | measured | target | met |", "|---|---|---|---|"]
    for g in goals(result):
        fmt = g.get("fmt", ",.0f")
        lines.append(f"| {g['goal']} | {_f(g['measured'], fmt)} | {_f(g['target'], fmt)} | "
                     f"{'yes' if g['met'] else 'no'} |")
    topology = topology_table(result)
    if topology:
        lines += ["", *topology]
    steps = _get(result, "end_to_end", "steps", default=[])
    if steps:
        lines += ["", "| offered/s | sent/s | processed/s | bounded | p50 ms | p99 ms | "
                  "p99.9 ms | worker µs/event | kafka | cassandra | redis | load avg |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for s in steps:
            cpu = s["cpu_us_per_event"]
            lines.append(
                f"| {s['offered_rate']:,} | {_f(s['achieved_send_rate'])} | "
                f"{_f(s['processed_rate'])} | {'yes' if s['bounded'] else 'no'} | "
                f"{_f(s['p50_ms'])} | {_f(s['p99_ms'])} | {_f(s['p99.9_ms'])} | "
                f"{_f(cpu.get('worker'))} | {_f(cpu.get('kafka'))} | "
                f"{_f(cpu.get('cassandra'))} | {_f(cpu.get('redis'))} | "
                f"{s['load_avg'][0]:.1f}-{s['load_avg'][1]:.1f} |")
    e2e = result.get("end_to_end") or {}
    mem = e2e.get("memory") or {}
    rep = e2e.get("replay") or {}
    load_method = _get(e2e, "load", "method", default="") or \
        "closed loop, one SNAPSHOT per key through the worker"
    if e2e:
        lines += ["", "| other measure | value |", "|---|---|",
                  f"| key load ({load_method}) | "
                  f"{_f(_get(e2e, 'load', 'rate'))} keys/s |",
                  f"| cold start with {_f(_get(e2e, 'cold_start', 'keys_in_tables'))} keys "
                  f"in the changelogs (empty data dir) | "
                  f"{_f(_get(e2e, 'cold_start', 'seconds'), '.1f')} s |",
                  f"| worker RSS at {_f(mem.get('keys'))} SKUs | "
                  f"{_f(_get(mem, 'worker_rss_bytes') / 2**20, '.0f')} MB |",
                  f"| RocksDB on disk | {_f(_get(mem, 'rocksdb_bytes') / 2**20, '.1f')} MB |",
                  f"| Redis, this run's keys (MEMORY USAGE sample) | "
                  f"{_f(_get(mem, 'redis_bytes_estimate') / 2**20, '.1f')} MB |",
                  f"| Cassandra data dir (flushed SSTables) | "
                  f"{_mb(_get(mem, 'cassandra_data_bytes'))} |",
                  f"| recovery after SIGKILL (sentinel in Redis) | "
                  f"{_f(_get(e2e, 'recovery', 'seconds'), '.1f')} s (metrics up after "
                  f"{_f(_get(e2e, 'recovery', 'metrics_up_s'), '.1f')} s) |",
                  f"| replay rate | {_f(rep.get('rate'))} events/s |" if rep.get("measured")
                  else f"| replay rate | not measured: {rep.get('why', 'n/a')} |"]
    lines += ["", "| measured / baseline | ratio |", "|---|---|"]
    for name, value in ratios(result).items():
        lines.append(f"| {name} | {_f(value, '.3f')} |")
    return "\n".join(lines)
