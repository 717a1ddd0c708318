"""`stockflow verify` at scale: keys/s, peak RSS and connections held, on one isolated pipeline.

    python -m bench.verify --platform-skus 200000 --suppliers 2

Loads the stores the cheap way (SNAPSHOTs to the log, `stockflow rebuild --only cassandra
--only cache`; `--tables` also rebuilds the changelogs), then runs `stockflow verify --json`
as a subprocess and samples it every 0.1 s: RSS from /proc, its TCP connections to Redis
(6379), Cassandra (9042) and Kafka (9092) from /proc/<pid>/net/tcp + its fds.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from bench.harness import ROOT, load_average, pipeline_env_class, proc_rss_bytes

PORTS = {6379: "redis", 9042: "cassandra", 9092: "kafka"}


def socket_inodes(pid: int) -> set[str]:
    out = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            out.add(target[8:-1])
    return out


def connections(pid: int) -> dict[str, int]:
    """The process's established TCP connections per service port."""
    inodes = socket_inodes(pid)
    counts = dict.fromkeys(PORTS.values(), 0)
    for table in ("tcp", "tcp6"):
        try:
            lines = Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            parts = line.split()
            remote_port = int(parts[2].rsplit(":", 1)[1], 16)
            if parts[3] == "01" and parts[9] in inodes and remote_port in PORTS:
                counts[PORTS[remote_port]] += 1
    return counts


def produce(env: Any, platform_skus: int, suppliers: int) -> float:
    t0 = time.monotonic()
    now = int(time.time() * 1000)
    with env.producer() as producer:
        for i in range(platform_skus):
            for s in range(1, suppliers + 1):
                producer.produce({
                    "supplier_id": f"s{s}", "sku": f"v{i:07d}", "event_id": f"s{s}-{i}-1",
                    "sequence": 1, "kind": "SNAPSHOT", "quantity": (i * 7 + s) % 50 + 1,
                    "observed_at": now - 1000, "price": "9.50", "currency": "EUR",
                    "warehouse": None, "lead_time_days": 2, "status": "ACTIVE",
                    "connector": "bench", "received_at": now - 500}, timestamp_ms=now)
        producer.flush(300)
    return time.monotonic() - t0


def measure_verify(env: Any, args: list[str]) -> dict[str, Any]:
    proc = subprocess.Popen([sys.executable, "-m", "pipeline.shell.cli", "verify", *args],
                            env=env.env, cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    peak = {"rss": 0, **dict.fromkeys(PORTS.values(), 0)}
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            try:
                peak["rss"] = max(peak["rss"], proc_rss_bytes(proc.pid))
                for service, n in connections(proc.pid).items():
                    peak[service] = max(peak[service], n)
            except (OSError, ValueError):
                pass
            done.wait(0.1)

    watcher = threading.Thread(target=sample, daemon=True)
    t0 = time.monotonic()
    watcher.start()
    out, err = proc.communicate()
    seconds = time.monotonic() - t0
    done.set()
    watcher.join()
    report = json.loads(out) if out.strip().startswith("{") else {"raw": out, "stderr": err}
    return {"exit_code": proc.returncode, "seconds": round(seconds, 1),
            "peak_rss_mb": round(peak["rss"] / 2**20), "max_connections": {
                k: v for k, v in peak.items() if k != "rss"}, "report": report}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--platform-skus", type=int, default=200_000)
    parser.add_argument("--suppliers", type=int, default=2)
    parser.add_argument("--tables", action="store_true",
                        help="also rebuild and compare the worker's changelogs")
    parser.add_argument("--keep", action="store_true", help="leave the pipeline's data")
    a = parser.parse_args()
    env = pipeline_env_class()(Path(tempfile.mkdtemp(prefix="bench-verify-")))
    try:
        env.setup()
        produce_s = produce(env, a.platform_skus, a.suppliers)
        t0 = time.monotonic()
        only = [] if a.tables else ["--only", "cassandra", "--only", "cache"]
        env.cli("rebuild", *only, "--yes", timeout=7200)
        rebuild_s = time.monotonic() - t0
        result = measure_verify(env, ["--settle", "0", "--json", "--max-listed", "20",
                                      *([] if a.tables else ["--no-tables"])])
        report = result.pop("report")
        entries = a.platform_skus * a.suppliers
        print(json.dumps({
            "platform_skus": a.platform_skus, "supplier_skus": entries,
            "produce_s": round(produce_s, 1), "rebuild_s": round(rebuild_s, 1),
            **result,
            "platform_skus_per_s": round(a.platform_skus / result["seconds"]),
            "supplier_skus_per_s": round(entries / result["seconds"]),
            "status": report.get("status"), "stores": report.get("stores"),
            "phases_s": report.get("phases_s"), "reported_connections":
                report.get("connections"), "load_average": load_average(),
        }, indent=2))
    finally:
        if not a.keep:
            env.cleanup()


if __name__ == "__main__":
    main()
