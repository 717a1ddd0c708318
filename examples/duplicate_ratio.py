"""How many valid deltas each demo feed emits twice (same event id), broker-free.

Runs the demo's suppliers (examples/suppliers.yaml, on free ports and a temporary drop folder)
and its connectors for `--seconds`, with an in-memory emitter instead of Kafka, then prints
per supplier: deltas emitted, distinct event ids, and the share that were repeats — what the
pipeline's dedup would drop as duplicates. `--runs 2` starts the demo twice in a row on the
same connector state, as a second `make demo` does (the dedup table remembers event ids for
days, so a repeat of the first run's ids counts too).

    .venv/bin/python examples/duplicate_ratio.py --seconds 60 --runs 2
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
from pathlib import Path
from typing import Any

from connectors.simulator.config import SimulatorConfig
from connectors.simulator.runner import Simulator
from connectors.sources.cursor_store import CursorStore
from connectors.sources.emitters import MemoryEmitter
from connectors.sources.service import ConnectorService
from connectors.suppliers import SuppliersFile, load_yaml, parse_suppliers


async def run_once(config_path: Path, seconds: float, tmp: str,
                   store: CursorStore) -> list[dict[str, Any]]:
    """One demo session of `seconds` on `store`; returns the deltas the connectors emitted."""
    text = config_path.read_text(encoding="utf-8")
    data, _marks = load_yaml(text, str(config_path))
    sim_section = {**data["simulator"], "http_port": 0, "ftp_port": 0, "sftp_port": 0,
                   "drop_dir": str(Path(tmp) / "drops")}
    sim = Simulator(SimulatorConfig.model_validate(sim_section), environment="development")
    await sim.start(webhooks=False)
    suppliers = parse_suppliers(text, str(config_path))
    ports = {":8701": sim.http_port, ":8721": sim.ftp_port, ":8722": sim.sftp_port}
    rewritten = []
    for s in suppliers.suppliers:
        endpoint = getattr(s, "endpoint", None)
        if endpoint is not None:
            for old, port in ports.items():
                endpoint = endpoint.replace(old, f":{port}")
            s = s.model_copy(update={"endpoint": endpoint})
        rewritten.append(s)
    config = SuppliersFile.model_validate({
        **suppliers.model_dump(exclude={"suppliers", "webhook_receiver"}),
        "webhook_receiver": {**suppliers.webhook_receiver.model_dump(), "port": 0},
        "suppliers": [s.model_dump() for s in rewritten]})
    emitter = MemoryEmitter()
    service = ConnectorService(config, emitter=emitter, store=store, environ={},
                               environment="development")
    stop = asyncio.Event()
    task = asyncio.create_task(service.run(stop))
    while service.receiver is not None and service.receiver.port in (None, 0):
        await asyncio.sleep(0.05)
    if service.receiver is not None:
        for spec in sim.specs.values():
            if spec.feed == "webhook":
                sim.start_webhooks(spec.id, f"http://127.0.0.1:{service.receiver.port}"
                                            f"/webhooks/{spec.id}")
    await asyncio.sleep(seconds)
    stop.set()
    await task
    await sim.stop()
    return emitter.deltas


def repeats(deltas: list[dict[str, Any]], seen: set[str]) -> dict[str, dict[str, int]]:
    """Per supplier: deltas, and how many carried an event id already in `seen` (updated)."""
    out: dict[str, dict[str, int]] = {}
    for d in deltas:
        row = out.setdefault(d["supplier_id"], {"deltas": 0, "repeats": 0})
        row["deltas"] += 1
        key = f"{d['supplier_id']}|{d['event_id']}"
        if key in seen:
            row["repeats"] += 1
        seen.add(key)
    return dict(sorted(out.items()))


async def measure(config_path: Path, seconds: float,
                  runs: int) -> list[dict[str, dict[str, int]]]:
    seen: set[str] = set()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        store = CursorStore(Path(tmp) / "state.sqlite")
        try:
            for run in range(runs):
                deltas = await run_once(config_path, seconds, f"{tmp}/run{run}", store)
                results.append(repeats(deltas, seen))
        finally:
            store.close()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=Path("examples/suppliers.yaml"))
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--runs", type=int, default=1)
    args = parser.parse_args()
    results = asyncio.run(measure(args.config, args.seconds, args.runs))
    print(f"{'run':<4} {'supplier':<12} {'deltas':>8} {'repeats':>8} {'ratio':>7}")
    for run, result in enumerate(results, 1):
        rows = [*result.items(), ("all", {
            "deltas": sum(r["deltas"] for r in result.values()),
            "repeats": sum(r["repeats"] for r in result.values())})]
        for supplier, r in rows:
            ratio = r["repeats"] / r["deltas"] if r["deltas"] else 0.0
            print(f"{run:<4} {supplier:<12} {r['deltas']:>8} {r['repeats']:>8} {ratio:>7.1%}")


if __name__ == "__main__":
    main()
