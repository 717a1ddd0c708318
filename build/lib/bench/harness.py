"""Benchmark harness: the measuring parts (metrics, percentiles, CPU and memory from /proc, lag).

Pure functions (quantiles, lag slope, boundedness, CPU per event) are unit-tested; the
process readers only read /proc and the worker's Prometheus endpoint.
"""

from __future__ import annotations

import math
import os
import re
import sys
import time
import urllib.request
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def pipeline_env_class() -> Any:
    """bench/pipeline_env.PipelineEnv (the one isolated-pipeline launcher)."""
    from bench.pipeline_env import PipelineEnv

    return PipelineEnv


# ------------------------------------------------------------------ percentiles
def percentile(values: Sequence[float], q: float) -> float:
    """The q-quantile (0..1) of raw values, linear between closest ranks (numpy's default)."""
    if not values:
        return math.nan
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"q must be in [0, 1], got {q}")
    ordered = sorted(values)
    pos = q * (len(ordered) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def histogram_quantile(before: Mapping[float, float], after: Mapping[float, float],
                       q: float) -> float:
    """The q-quantile of the observations between two scrapes of a cumulative histogram.

    `before`/`after` map each bucket's upper bound (`le`, +inf included) to its cumulative
    count. Linear inside the bucket, as Prometheus' histogram_quantile; a quantile in the
    +inf bucket returns the last finite bound (a lower bound of the truth).
    """
    bounds = sorted(after)
    deltas = [(le, after[le] - before.get(le, 0.0)) for le in bounds]
    if not deltas or deltas[-1][1] <= 0:
        return math.nan
    rank = q * deltas[-1][1]
    lower, below = 0.0, 0.0
    for le, cumulative in deltas:
        if cumulative >= rank and cumulative > below:
            if math.isinf(le):
                return lower
            return lower + (le - lower) * (rank - below) / (cumulative - below)
        lower, below = le, cumulative
    return lower


# --------------------------------------------------------------- lag and rates
def lag_slope(samples: Sequence[tuple[float, float]]) -> float:
    """Least-squares slope (events/s) of backlog samples (t, backlog); 0 with < 2 samples."""
    if len(samples) < 2:
        return 0.0
    n = len(samples)
    mt = sum(t for t, _ in samples) / n
    mb = sum(b for _, b in samples) / n
    var = sum((t - mt) ** 2 for t, _ in samples)
    if var == 0:
        return 0.0
    return sum((t - mt) * (b - mb) for t, b in samples) / var


def is_bounded(samples: Sequence[tuple[float, float]], rate: float, *,
               growth_tolerance: float = 0.05, backlog_limit_s: float = 2.0) -> bool:
    """Did the backlog stay bounded at this offered rate?

    Bounded = over the second half of the step the backlog grew by less than
    `growth_tolerance` of the offered rate, and it ended below `backlog_limit_s` seconds
    of traffic. The first half is left out: it holds the ramp-up of a new step.
    """
    if not samples:
        return False
    t0, t1 = samples[0][0], samples[-1][0]
    half = [s for s in samples if s[0] >= t0 + (t1 - t0) / 2]
    return (lag_slope(half) <= growth_tolerance * rate
            and samples[-1][1] <= max(backlog_limit_s * rate, 100.0))


def sustained_rate(steps: Iterable[Mapping[str, Any]]) -> float:
    """The highest offered rate of a bounded step below which every step was bounded too."""
    best = 0.0
    for step in sorted(steps, key=lambda s: s["offered_rate"]):
        if not step["bounded"]:
            break
        best = float(step["offered_rate"])
    return best


def window_rate(samples: Sequence[tuple[float, float]], total: float, lo: float = 0.1,
                hi: float = 0.9) -> float:
    """Rate over the part of a drain between lo*total and hi*total processed.

    `samples` are (t, processed so far), increasing. Leaving out the start (partition
    assignment, warm caches) and the tail (the last partitions) measures the steady state.
    """
    def crossing(target: float) -> float:
        prev_t, prev_v = samples[0]
        for t, v in samples:
            if v >= target:
                if v == prev_v:
                    return t
                return prev_t + (t - prev_t) * (target - prev_v) / (v - prev_v)
            prev_t, prev_v = t, v
        raise ValueError(f"never reached {target} (last {samples[-1][1]})")

    t_lo, t_hi = crossing(lo * total), crossing(hi * total)
    if t_hi <= t_lo:
        return math.inf
    return (hi - lo) * total / (t_hi - t_lo)


def ratio(value: float, baseline: float) -> float:
    """value / baseline; nan when either is missing or the baseline is zero."""
    if baseline is None or value is None or baseline == 0 or math.isnan(baseline) \
            or math.isnan(value):
        return math.nan
    return value / baseline


def cpu_us_per_event(cpu_s_before: float, cpu_s_after: float, events: float) -> float:
    """Microseconds of CPU a process spent per event over a window."""
    if events <= 0:
        return math.nan
    return (cpu_s_after - cpu_s_before) * 1e6 / events


# -------------------------------------------------------------------- /proc
def proc_cpu_seconds(pid: int) -> float:
    """user + system CPU seconds of a process (and its reaped children) from /proc/PID/stat."""
    text = Path(f"/proc/{pid}/stat").read_text()
    # The command name may hold spaces and parentheses: split after the last ')'.
    fields = text[text.rindex(")") + 2:].split()
    utime, stime, cutime, cstime = (int(x) for x in fields[11:15])
    return (utime + stime + cutime + cstime) / CLK_TCK


def proc_thread_cpu(pid: int) -> dict[str, float]:
    """CPU seconds per thread name of a process (native threads py-spy cannot see included)."""
    out: dict[str, float] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            name = (task / "comm").read_text().strip()
            text = (task / "stat").read_text()
        except OSError:
            continue
        fields = text[text.rindex(")") + 2:].split()
        out[name] = out.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / CLK_TCK
    return out


def cpu_delta(before: Mapping[str, float], after: Mapping[str, float]) -> dict[str, float]:
    """Per-name CPU seconds between two readings, largest first."""
    diff = {k: v - before.get(k, 0.0) for k, v in after.items()}
    return dict(sorted(((k, v) for k, v in diff.items() if v > 0), key=lambda kv: -kv[1]))


def proc_rss_bytes(pid: int) -> int:
    """Resident set size of a process (VmRSS)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def stack_pids(stack_dir: Path) -> dict[str, int]:
    """PIDs of the local stack's services from their pid files (kafka, cassandra, redis)."""
    out = {}
    for f in sorted((stack_dir / "run").glob("*.pid")):
        try:
            pid = int(f.read_text().strip())
        except ValueError:
            continue
        if Path(f"/proc/{pid}").exists():
            out[f.stem] = pid
    return out


class CpuMeter:
    """CPU seconds of named processes between two snapshots."""

    def __init__(self, pids: Mapping[str, int]) -> None:
        self.pids = dict(pids)
        self._start: dict[str, float] = {}
        self._t0 = 0.0

    def _read(self) -> dict[str, float]:
        out = {}
        for name, pid in self.pids.items():
            try:
                out[name] = proc_cpu_seconds(pid)
            except (OSError, ValueError):
                out[name] = math.nan
        return out

    def start(self) -> None:
        self._start = self._read()
        self._t0 = time.monotonic()

    def stop(self) -> dict[str, float]:
        """CPU seconds used by each process since start(); '_wall' is the wall time."""
        end = self._read()
        used = {name: end[name] - self._start.get(name, math.nan) for name in end}
        used["_wall"] = time.monotonic() - self._t0
        return used


def load_average() -> float:
    """The 1-minute load average (how much the 2 cores were shared during a step)."""
    return os.getloadavg()[0]


def dir_size_bytes(path: Path) -> int:
    """Bytes of the regular files under a directory (0 when it does not exist)."""
    if not path.exists():
        return 0
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


# ------------------------------------------------------------------- metrics
_SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)$')
_LABEL = re.compile(r'(\w+)="([^"]*)"')


def parse_metrics(text: str) -> list[tuple[str, dict[str, str], float]]:
    """Prometheus text exposition -> (name, labels, value) samples (comments skipped)."""
    out = []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = _SAMPLE.match(line)
        if m:
            labels = dict(_LABEL.findall(m.group(2) or ""))
            out.append((m.group(1), labels, float(m.group(3))))
    return out


def metric_sum(samples: Iterable[tuple[str, dict[str, str], float]], name: str,
               **labels: str) -> float:
    """Sum of a metric's samples whose labels include `labels`."""
    return sum(v for n, ls, v in samples
               if n == name and all(ls.get(k) == want for k, want in labels.items()))


def histogram_buckets(samples: Iterable[tuple[str, dict[str, str], float]], name: str,
                      **labels: str) -> dict[float, float]:
    """{le: cumulative count} of one histogram series, summed over the samples given (the
    scrapes of several workers)."""
    out: dict[float, float] = {}
    for n, ls, v in samples:
        if n == f"{name}_bucket" and all(ls.get(k) == w for k, w in labels.items()):
            le = float(ls["le"])
            out[le] = out.get(le, 0.0) + v
    return out


def scrape(port: int, timeout: float = 5.0) -> list[tuple[str, dict[str, str], float]]:
    """The samples of a worker's /metrics endpoint."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=timeout) as resp:
        return parse_metrics(resp.read().decode())


@dataclass
class PipelineCounts:
    """Where the worker stands, from its counters."""

    handled: float  # deltas through validate/dedup/apply (dead letters included)
    applied: float  # deltas that produced a StockUpdate
    aggregated: float  # StockUpdates folded into availability
    changed: float  # InventoryChanges emitted
    cached: float  # changes written to Redis
    freshness: dict[float, float]  # Redis freshness histogram, cumulative

    @classmethod
    def from_samples(cls, samples: list[tuple[str, dict[str, str], float]]) -> PipelineCounts:
        ev = "stockflow_events_total"
        return cls(
            handled=metric_sum(samples, ev, stage="apply")
            + metric_sum(samples, "stockflow_dead_letters_total"),
            applied=metric_sum(samples, ev, stage="apply", outcome="applied"),
            aggregated=metric_sum(samples, ev, stage="aggregate"),
            changed=metric_sum(samples, ev, stage="aggregate", outcome="changed"),
            cached=metric_sum(samples, ev, stage="cache", outcome="written"),
            freshness=histogram_buckets(samples, "stockflow_freshness_seconds", stage="redis"),
        )

    def backlog(self, sent: float, *, cache: bool = True) -> float:
        """Events sent but not yet through every stage (each stage's own queue added up)."""
        pending = (sent - self.handled) + (self.applied - self.aggregated)
        if cache:
            pending += self.changed - self.cached
        return max(0.0, pending)


def wait_for(what: str, predicate: Callable[[], Any], timeout_s: float,
             poll_s: float = 0.25) -> Any:
    """Poll until predicate() is truthy; TimeoutError after timeout_s."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout_s:.0f}s waiting for {what}")
        time.sleep(poll_s)


# ------------------------------------------------------------------- profile
def collapsed_summary(lines: Iterable[str], top: int = 15) -> dict[str, list[tuple[str, float]]]:
    """Top frames of py-spy's collapsed stacks: by self samples and by inclusive samples.

    Each line is `frame;frame;...;leaf COUNT`; shares are of all samples.
    """
    own: dict[str, float] = {}
    inclusive: dict[str, float] = {}
    total = 0.0
    for line in lines:
        line = line.strip()
        if not line:
            continue
        stack, _, count_text = line.rpartition(" ")
        try:
            count = float(count_text)
        except ValueError:
            continue
        total += count
        frames = stack.split(";")
        own[frames[-1]] = own.get(frames[-1], 0.0) + count
        for frame in set(frames):
            inclusive[frame] = inclusive.get(frame, 0.0) + count
    if total == 0:
        return {"self": [], "inclusive": []}

    def best(d: dict[str, float]) -> list[tuple[str, float]]:
        return [(f, c / total) for f, c in sorted(d.items(), key=lambda kv: -kv[1])[:top]]

    return {"self": best(own), "inclusive": best(inclusive), "samples": [("total", total)]}


def py_spy(pid: int, out_dir: Path, name: str, duration_s: int = 20) -> dict[str, Any]:
    """Profile a process with py-spy: a flame graph (SVG) then collapsed stacks summarised.

    Two consecutive recordings of duration_s/2 each (py-spy writes one format per run), in
    blocking mode: py-spy pauses the worker for each sample. --nonblocking lost over 90 % of
    the samples of a busy worker (stacks read while they changed are dropped), and profiles
    are taken on a drain that is not the measured one.
    """
    import shutil
    import subprocess

    exe = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    svg = out_dir / f"{name}.svg"
    raw = out_dir / f"{name}.txt"
    half = max(2, duration_s // 2)
    result: dict[str, Any] = {"svg": str(svg), "collapsed": str(raw)}
    for fmt, path in (("flamegraph", svg), ("raw", raw)):
        proc = subprocess.run(
            [exe, "record", "--pid", str(pid), "--duration", str(half), "--rate", "100",
             "--format", fmt, "-o", str(path)],
            capture_output=True, text=True, timeout=half + 60, check=False)
        if proc.returncode != 0:
            result["error"] = proc.stderr[-500:]
            return result
    result.update(collapsed_summary(raw.read_text().splitlines()))
    return result
