"""`stockflow demo`: the whole pipeline on simulated suppliers, with a live view of the result."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Annotated, Any, cast

import typer

NEXT_STEPS = """[bold]What to try next[/] (another terminal, this folder, `. .venv/bin/activate`):
  stockflow inventory get <SKU> [--cache]    availability across suppliers (Cassandra / Redis)
  stockflow trace <EVENT_ID>                 what happened to one event
  stockflow verify                           recompute from the log and compare with the stores
  stockflow top                              the live metrics view alone
  curl -H 'X-API-Key: demo-key' localhost:8000/v1/inventory   the public API (docs/api.md)
  stockflow stack status | logs kafka        the local services
Ctrl-C stops the worker, simulator and connectors; `stockflow stack down` stops the stack."""


def _sample_availability(settings: Any, limit: int = 6) -> Any:
    """A table of a few platform SKUs as the cache holds them."""
    import redis
    from rich.table import Table

    from connectors.redis.cache import parse_hash, platform_sku_of

    table = Table(title="a few SKUs (Redis cache)", expand=True)
    for col in ("platform SKU", "total", "best supplier", "suppliers"):
        table.add_column(col)
    prefix = f"{settings.redis_cache_key_prefix}avail:"
    client = redis.Redis.from_url(settings.redis_url.get_secret_value(), decode_responses=True,
                                  socket_timeout=2)
    try:
        keys = []
        for key in client.scan_iter(f"{prefix}*", count=200):
            keys.append(key)
            if len(keys) >= limit:
                break
        for key in sorted(keys):
            sku = platform_sku_of(settings.redis_cache_key_prefix, key)
            # decode_responses=True: the hash's fields and values are str.
            view = parse_hash(sku, cast("dict[str, str]", client.hgetall(key)))
            suppliers = ", ".join(f"{s}={e['quantity']}"
                                  for s, e in sorted(view["suppliers"].items()))
            table.add_row(sku, str(view["total"]), str(view["best_supplier"] or "-"), suppliers)
    except redis.RedisError as exc:
        table.add_row("-", "-", "-", f"Redis: {exc}")
    finally:
        client.close()
    return table


WHAT_RUNS = {  # short: the screen is 80 columns when it is not a terminal
    "worker": "deltas -> Cassandra -> Redis",
    "simulator": "5 suppliers: REST, GraphQL, webhook, FTP, SFTP",
    "connectors": "suppliers -> inventory.deltas",
    "api": "the public API and the live page",
}


def _summary(settings: Any, procs: dict[str, subprocess.Popen[bytes]], log_dir: Path) -> str:
    """The demo's one screen: what runs, where to look, how to stop."""
    lines = ["[bold]stockflow demo is running[/]"]
    for name, proc in procs.items():
        lines.append(f"  started {name} (pid {proc.pid}): {WHAT_RUNS.get(name, '')}")
    lines += [
        f"  logs       {log_dir}/<name>.log",
        f"  live page  http://{settings.api_host}:{settings.api_port}/ (API key demo-key)",
        f"  metrics    http://127.0.0.1:{settings.metrics_port}/metrics (worker)",
        f"             http://127.0.0.1:{settings.connectors_metrics_port}/metrics (connectors)",
        "  stop       Ctrl-C (the stack stays up: `stockflow stack down`)",
    ]
    return "\n".join(lines)


STOP_GRACE_S = 30.0  # for all children together, not each


def _stop_children(procs: dict[str, subprocess.Popen[bytes]],
                   grace_s: float = STOP_GRACE_S) -> list[str]:
    """SIGTERM every child's process group at once, wait for them together up to grace_s,
    SIGKILL what is left; the names of those killed."""
    for proc in procs.values():
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    killed = []
    for name, proc in procs.items():
        try:
            proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            killed.append(name)
    return killed


# Set by SIGTERM, SIGHUP or Ctrl-C; the demo's loop stops at its next check (at most one
# refresh interval later). The handlers only set it: an exception raised from a signal
# handler lands wherever Python happens to be, and inside a weakref callback or a __del__
# it is printed and dropped ("Exception ignored in ...") and the demo would run on.
_STOP = threading.Event()


def _interrupt(signum: int, _frame: Any) -> None:
    _STOP.set()


def demo(
    config: Annotated[Path, typer.Option(
        "--config", "-c", help="suppliers + simulator YAML")] = Path("examples/suppliers.yaml"),
    duration: Annotated[float | None, typer.Option(
        help="stop after this many seconds (default: until Ctrl-C)")] = None,
    interval: Annotated[float, typer.Option(help="seconds between view refreshes")] = 2.0,
) -> None:
    """Stack up, topics and tables, simulator + connectors + worker, and a live view."""
    from rich.console import Console, Group
    from rich.live import Live

    from pipeline.log import configure_logging
    from pipeline.settings import get_settings
    from pipeline.shell.commands.top import render, scrape
    from pipeline.shell.stack import LocalStack
    from pipeline.topics import create_topics

    console = Console()
    settings = get_settings()
    if not config.exists():
        raise typer.BadParameter(f"{config} not found (run from the stockflow folder)")
    # The demo's own screen is the ✓ lines and the live table: the stack's progress logs
    # (JSON in production) would only clutter it; warnings and errors still show.
    configure_logging(json=False, level="WARNING")

    with console.status("stack up (the first run resolves Kafka and Cassandra from Maven "
                        "Central; a few minutes)..."):
        LocalStack(settings).up(on_ready=lambda s, v, dt: console.print(
            f"[green]✓[/] {s} {v} ready ({dt:.0f}s)"))
    log_dir = settings.stack_dir / "demo"
    log_dir.mkdir(parents=True, exist_ok=True)
    # The stack answers by now; what the clients still log goes to a file, not the terminal.
    actions = [action for _name, action in create_topics(settings)]
    migrate = subprocess.run([sys.executable, "-m", "pipeline.shell.cli", "db", "migrate"],
                             capture_output=True, text=True, check=False)
    (log_dir / "setup.log").write_text(migrate.stdout + migrate.stderr)
    if migrate.returncode != 0:
        console.print(f"[red]cassandra schema migration failed[/]; see {log_dir}/setup.log")
        raise typer.Exit(1)
    console.print(f"[green]✓[/] {len(actions)} topics ({actions.count('created')} created), "
                  f"cassandra schema up to date")
    # The demo suppliers file's secrets are public defaults, accepted only in development.
    env = {**os.environ, "STOCKFLOW_SUPPLIERS_CONFIG": str(config),
           "STOCKFLOW_ENVIRONMENT": os.environ.get("STOCKFLOW_ENVIRONMENT", "development")}
    commands = {
        "worker": ["worker"],
        "simulator": ["simulate", "--config", str(config)],
        "connectors": ["connectors", "run", "--config", str(config)],
        "api": ["api"],
    }
    procs: dict[str, subprocess.Popen[bytes]] = {}
    # SIGTERM or SIGHUP (a closed terminal, `timeout`, a service manager) stop the demo
    # the way Ctrl-C does: through the `finally` below that stops its children, which run
    # in their own sessions and would otherwise be left running.
    _STOP.clear()
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _interrupt)
    try:
        for name, args in commands.items():
            with (log_dir / f"{name}.log").open("ab") as fh:
                procs[name] = subprocess.Popen(
                    [sys.executable, "-m", "pipeline.shell.cli", "--json-logs", *args], env=env,
                    stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
        console.print(_summary(settings, procs, log_dir), highlight=False)

        urls = [f"http://127.0.0.1:{settings.metrics_port}/metrics",
                f"http://127.0.0.1:{settings.connectors_metrics_port}/metrics"]
        started = time.monotonic()
        prev = None
        with Live(console=console, refresh_per_second=2, screen=False) as live:
            while not _STOP.is_set() and (duration is None
                                          or time.monotonic() - started < duration):
                cur = scrape(urls)
                dead = [n for n, p in procs.items() if p.poll() is not None]
                notes = [f"[red]{n} exited ({procs[n].returncode}); see "
                         f"{log_dir / n}.log[/]" for n in dead]
                live.update(Group(render(cur, prev), _sample_availability(settings),
                                  *notes, NEXT_STEPS))
                prev = cur
                _STOP.wait(interval)
    except KeyboardInterrupt:  # a signal before the handlers were installed
        pass
    finally:
        # Stopping: a further Ctrl-C, SIGTERM or SIGHUP must not cut the children's shutdown
        # short or end the demo with a KeyboardInterrupt after it (exit status -2).
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(signum, signal.SIG_IGN)
        killed = _stop_children(procs)
        for name in killed:
            console.print(f"[yellow]{name} did not stop within {STOP_GRACE_S:.0f}s of SIGTERM; "
                          f"killed[/] (see {log_dir / name}.log)")
        console.print("demo stopped; the stack is still up (`stockflow stack down` stops it)")


def register(app: typer.Typer) -> None:
    app.command("demo")(demo)
