"""`stockflow bench`: the end-to-end and topology benchmarks with same-run baselines (bench/)."""

from __future__ import annotations

import os
import shlex
import shutil
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

console = Console()

# quick: a few minutes on the shared 2-core machine; full: the sizes (1M SKUs).
MODES: dict[str, dict[str, Any]] = {
    "quick": {"topology_events": 30_000, "profile_s": 10, "skus": 10_000, "suppliers": 10,
              "ladder": (50, 6_400), "step_s": 15.0, "grace_s": 10.0,
              "baseline_events": 30_000},
    "full": {"topology_events": 100_000, "profile_s": 20, "skus": 1_000_000, "suppliers": 50,
             "ladder": (100, 25_600), "step_s": 30.0, "grace_s": 20.0,
             "baseline_events": 200_000},
}


def bench(
    quick: Annotated[bool, typer.Option("--quick", help="a few minutes (the default)")] = False,
    full: Annotated[bool, typer.Option("--full", help="the issue's sizes: 1M SKUs")] = False,
    out: Annotated[Path, typer.Option(help="directory for bench.json, PNGs, profiles")] = Path(
        "bench/results"),
    skus: Annotated[int | None, typer.Option(help="override the mode's SKU count")] = None,
    rates: Annotated[str | None, typer.Option(
        help="end-to-end offered rates, comma separated (default: the mode's ladder)")] = None,
    step_seconds: Annotated[float | None, typer.Option(
        help="seconds per end-to-end rate step (default: the mode's; longer steps judge "
             "'bounded' over more of the commit cycle's backlog swings)")] = None,
    workers: Annotated[int, typer.Option(
        min=1, max=8, help="worker processes of one app id sharing the partitions in the "
        "end-to-end rate ladder (scaling by partitions)")] = 1,
    topology: Annotated[bool, typer.Option(help="run the topology benchmark")] = True,
    end_to_end: Annotated[bool, typer.Option(help="run the end-to-end benchmark")] = True,
    peers: Annotated[bool, typer.Option(
        help="Quix Streams (own venv, built on demand) and a confluent-kafka loop with the "
             "same rules as topology baselines")] = True,
) -> None:
    """Benchmark stockflow on the running local stack; every result against a same-run baseline."""
    from bench import end_to_end as e2e
    from bench import report
    from bench import topology as topo
    from bench.workload import WorkloadSpec, rate_ladder
    from pipeline.log import configure_logging

    if quick and full:
        raise typer.BadParameter("--quick or --full, not both")
    mode = "full" if full else "quick"
    cfg = dict(MODES[mode])
    if skus is not None:
        cfg["skus"] = skus
    if step_seconds is not None:
        cfg["step_s"] = step_seconds
    configure_logging(json=False, level="WARNING")
    _interrupt_on_sigterm()
    out.mkdir(parents=True, exist_ok=True)
    work = out / "work"
    # A fresh scratch dir: a worker's data dir left by an earlier run must not be reused.
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    started = time.time()
    result: dict[str, Any] = {
        "mode": mode, "config": cfg,
        "command": "stockflow " + " ".join(shlex.quote(a) for a in sys.argv[1:]),
        "started": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started)),
        "machine": {"cores": os.cpu_count(), "load_avg_start": os.getloadavg()},
    }

    def say(msg: str) -> None:
        console.print(f"{time.time() - started:6.0f}s {msg}", highlight=False, markup=False)

    try:
        if topology:
            say(f"topology: {cfg['topology_events']:,} events, exactly-once and at-least-once")
            result["topology"] = topo.run(
                cfg["topology_events"], WorkloadSpec(skus=cfg["skus"], suppliers=cfg["suppliers"]),
                work, profile_s=cfg["profile_s"], peers=peers, log=say)
            for g, r in result["topology"]["runs"].items():
                say(f"topology[{g}]: {r['topology']['rate_steady']:,.0f} events/s steady, "
                    f"{r['topology']['cpu_us_per_event']:,.0f} µs CPU/event; raw consume "
                    f"{r['confluent_consume']['rate']:,.0f}/s, Faust no-op "
                    f"{r['faust_noop']['rate']:,.0f}/s")
                for key, label in report.PEERS.items():
                    if key in r:
                        say(f"topology[{g}] {label}: {_peer_line(r[key])}")
        if end_to_end:
            lo, hi = cfg["ladder"]
            ladder = _rates(rates) if rates else rate_ladder(lo, hi, 2.0, extra=(1_000, 5_000))
            say(f"end to end: {cfg['skus']:,} SKUs, ladder {ladder}")
            result["end_to_end"] = e2e.run(
                work, skus=cfg["skus"], suppliers=cfg["suppliers"], rates=ladder,
                step_s=cfg["step_s"], grace_s=cfg["grace_s"],
                baseline_events=cfg["baseline_events"], profile_s=cfg["profile_s"],
                workers=workers, log=say)
    finally:
        result["seconds"] = time.time() - started
        result["machine"]["load_avg_end"] = os.getloadavg()
        result["ratios"] = report.ratios(result)
        result["goals"] = report.goals(result)
        report.write_json(result, out / "bench.json")
        plots = report.plot(result, out)
        table = report.markdown(result)
        (out / "report.md").write_text(table + "\n")
    console.print(table, highlight=False, markup=False)
    say(f"wrote {out / 'bench.json'}, {', '.join(str(p) for p in plots)}, {out / 'report.md'}")


def _rates(text: str) -> list[int]:
    try:
        values = sorted({int(part) for part in text.split(",") if part.strip()})
    except ValueError as exc:
        raise typer.BadParameter(f"--rates: comma-separated integers, got {text!r}") from exc
    if not values or values[0] < 1:
        raise typer.BadParameter("--rates: at least one rate, each >= 1")
    return values


def _peer_line(entry: dict[str, Any]) -> str:
    """One peer baseline in a line: its rate and CPU, or why it was not measured."""
    if entry.get("skipped"):
        return f"skipped: {entry['skipped']}"
    if entry.get("error"):
        return f"failed: {entry['error']}"
    return (f"{entry['rate']:,.0f} events/s, {entry['cpu_us_per_event']:,.0f} µs CPU/event "
            f"({entry['events']:,} records)")


def _interrupt_on_sigterm() -> None:
    """SIGTERM raises KeyboardInterrupt, so a stopped run still removes its topics and workers
    (a background job ignores SIGINT)."""
    import signal

    def stop(_signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)


def register(app: typer.Typer) -> None:
    """Add `stockflow bench`."""
    app.command("bench")(bench)
