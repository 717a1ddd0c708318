"""`stockflow replay` (refold inventory.deltas into Cassandra/Redis) and `stockflow rebuild`."""

from __future__ import annotations

import asyncio
import signal
import time
from enum import StrEnum
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console

from pipeline.topics import DELTAS

if TYPE_CHECKING:
    from connectors.logtools.runner import Replay, ReplayProgress
    from pipeline.settings import Settings

console = Console()
err_console = Console(stderr=True)


class Into(StrEnum):
    """Which stores a replay writes."""

    cassandra = "cassandra"
    cache = "cache"
    all = "all"


class RebuildPart(StrEnum):
    """Which parts a rebuild recreates."""

    tables = "tables"
    cassandra = "cassandra"
    cache = "cache"


def _progress_bar() -> Any:
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("{task.fields[rate]:>9,.0f} ev/s"),
                    TextColumn("{task.fields[written]:,} written"),
                    TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                    console=err_console, transient=False)


async def _run_with_progress(replay: Replay, description: str) -> ReplayProgress:
    """Run a replay under a progress bar; Ctrl-C stops it after the batch being written."""
    loop = asyncio.get_running_loop()

    def on_sigint() -> None:
        if not replay.stop_requested:
            err_console.print("[yellow]stopping after the batch being written "
                              "(nothing is left half-applied)...[/]")
        replay.request_stop()

    loop.add_signal_handler(signal.SIGINT, on_sigint)
    loop.add_signal_handler(signal.SIGTERM, on_sigint)
    try:
        with _progress_bar() as bar:
            task = bar.add_task(description, total=replay.progress.total, rate=0.0, written=0)

            def on_batch(p: ReplayProgress) -> None:
                elapsed = max(time.monotonic() - p.started, 1e-6)
                bar.update(task, completed=p.read, rate=p.read / elapsed,
                           written=p.updates_written)

            result = await replay.run(on_batch)
            bar.update(task, completed=result.read, written=result.updates_written)
            return result
    finally:
        loop.remove_signal_handler(signal.SIGINT)
        loop.remove_signal_handler(signal.SIGTERM)


def _checkpoint_path(settings: Settings, plan: str) -> Any:
    return settings.data_dir / "replay" / f"checkpoint-{plan}.json"


def replay(
    from_: Annotated[str, typer.Option("--from", help="beginning | ISO time | epoch ms | "
                                                      "partition:offset,...")],
    to: Annotated[str | None, typer.Option("--to", help="end of the window (exclusive); "
                                                         "default: the log end now")] = None,
    supplier: Annotated[list[str] | None, typer.Option("--supplier",
                                                       help="only this supplier (repeat)")] = None,
    sku: Annotated[list[str] | None, typer.Option(
        "--sku", help="only this supplier SKU or platform SKU (repeat)")] = None,
    into: Annotated[Into, typer.Option("--into", help="stores to write")] = Into.all,
    dry_run: Annotated[bool, typer.Option("--dry-run",
                                          help="print what would change in Cassandra; "
                                               "write nothing")] = False,
    history: Annotated[bool, typer.Option(
        "--history/--no-history",
        help="write every change to change_history (--no-history: only the newest per key "
             "and batch, much faster where keys repeat)")] = True,
    restart: Annotated[bool, typer.Option("--restart",
                                          help="ignore the checkpoint of an interrupted run")]
    = False,
    batch_size: Annotated[int, typer.Option(min=1, help="log records per batch")] = 20000,
    max_rate: Annotated[float | None, typer.Option(
        "--max-rate", min=1, help="at most this many log records per second (spares a live "
                                  "Cassandra); default: as fast as it goes")] = None,
    show: Annotated[int, typer.Option(help="dry-run: differences to print")] = 20,
) -> None:
    """Refold inventory.deltas with the worker's steps; write the window's updates to the sinks.

    The fold always starts at the beginning of the log (state before the window decides what
    its deltas do); only updates of deltas in [--from, --to) that pass the filters are
    written, through the worker's idempotent sinks (Cassandra USING TIMESTAMP = version, then
    Redis compare-and-set). Reads in its own consumer group: the live worker is undisturbed.
    Ctrl-C finishes the batch being written and keeps a checkpoint; the same command continues.
    """
    from connectors.logtools.log_reader import parse_position
    from connectors.logtools.runner import (
        Checkpoint,
        ReplayWindow,
        new_fold,
        new_reader,
        plan_id,
    )
    from pipeline.settings import get_settings

    settings = get_settings()
    start_pos = parse_position(from_)
    end_pos = parse_position(to) if to else None
    suppliers, skus = frozenset(supplier or ()), frozenset(sku or ())
    with new_reader(settings, batch_size) as reader:
        marks = reader.watermarks()
        fold_start = {p: lo for p, (lo, _hi) in marks.items()}
        write_from = reader.resolve(start_pos, marks)
        write_to = reader.resolve(end_pos, marks) if end_pos else \
            {p: hi for p, (_lo, hi) in marks.items()}
        plan = plan_id(topic=reader.topic, servers=settings.kafka_bootstrap_servers,
                       keyspace=settings.cassandra_keyspace,
                       prefix=settings.redis_cache_key_prefix, start=from_, end=to,
                       suppliers=sorted(suppliers), skus=sorted(skus), into=into.value,
                       history=history)
        checkpoint: Checkpoint | None = None
        if not dry_run:
            path = _checkpoint_path(settings, plan)
            checkpoint = None if restart else Checkpoint.load(path, plan)
            if checkpoint is not None:
                write_to = {p: min(write_to.get(p, o), o) if to else o
                            for p, o in checkpoint.fold_end.items()}
                console.print(f"continuing the interrupted replay from checkpoint {path} "
                              f"(written through {checkpoint.written})", highlight=False)
            else:
                checkpoint = Checkpoint(path, plan, fold_end=dict(write_to))
        window = ReplayWindow(write_from, write_to, suppliers, skus)
        selected = sum(max(0, write_to[p] - write_from[p]) for p in write_to)
        folded = sum(write_to.values()) - sum(fold_start.values())
        console.print(f"replay {reader.topic}: fold {folded} records from the beginning, "
                      f"write {selected} in the window "
                      f"[{start_pos.describe()}, {end_pos.describe() if end_pos else 'end'}) "
                      f"into {into.value}{' (dry run)' if dry_run else ''}", highlight=False)
        exit_code = asyncio.run(_replay(settings, reader, new_fold(settings), fold_start,
                                        write_to, window, into, history, checkpoint, dry_run,
                                        show, max_rate))
    raise typer.Exit(exit_code)


async def _replay(settings: Settings, reader: Any, fold: Any, fold_start: dict[int, int],
                  fold_end: dict[int, int], window: Any, into: Into, history: bool,
                  checkpoint: Any, dry_run: bool, show: int,
                  max_rate: float | None = None) -> int:
    from connectors.logtools.stores import replay_into

    result = await replay_into(
        settings, reader, fold, fold_start=fold_start, fold_end=fold_end, window=window,
        cassandra=into in (Into.cassandra, Into.all), cache=into in (Into.cache, Into.all),
        history=history, checkpoint=checkpoint, dry_run=dry_run, max_rate=max_rate,
        run=_run_with_progress)
    stats = fold.stats
    console.print(f"read {result.read} records ({stats.invalid} invalid, {stats.duplicate} "
                  f"duplicate, {stats.stale} stale, {stats.noop} no-op); {result.selected} "
                  f"updates in the window; wrote {result.updates_written} updates "
                  f"({result.rows_written} Cassandra rows) and {result.changes_written} "
                  f"changes ({result.keys_written} Redis keys changed)", highlight=False)
    if result.interrupted:
        console.print(f"[yellow]interrupted[/]: writes are complete through "
                      f"{checkpoint.written if checkpoint else {}}; run the same command "
                      "again to continue (--restart to start over)", highlight=False)
        return 130
    if dry_run:
        return await asyncio.to_thread(_print_dry_run, settings, fold, result, show)
    return 0


def _print_dry_run(settings: Settings, fold: Any, result: ReplayProgress, show: int) -> int:
    """What the replay would change in availability_by_sku (newer versions or missing rows)."""
    from connectors.cassandra.cluster import ClusterConfig, connect
    from connectors.cassandra.read import read_availability
    from connectors.logtools.compare import AHEAD, MISMATCH, OK, compare_entries
    from connectors.logtools.fold import cassandra_row

    by_sku: dict[str, list[str]] = {}
    for platform_sku, supplier_id in sorted(result.touched):
        by_sku.setdefault(platform_sku, []).append(supplier_id)
    cluster, session = connect(ClusterConfig.from_settings(settings))
    would_change, conflicts, current = [], [], 0
    try:
        for platform_sku, suppliers in by_sku.items():
            actual = read_availability(session, platform_sku, settings.cassandra_keyspace)
            expected = {s: cassandra_row(fold.rows[(platform_sku, s)]) for s in suppliers
                        if (platform_sku, s) in fold.rows}
            actual_rows = {s: e for s, e in (actual or {"suppliers": {}})["suppliers"].items()
                           if s in expected}
            for d in compare_entries("cassandra", platform_sku, expected, actual_rows,
                                     ("sku", "quantity", "version", "status", "lead_time_days",
                                      "price", "currency", "updated_at")):
                if d.kind == MISMATCH:
                    conflicts.append(d)
                elif d.kind not in (AHEAD, OK):
                    would_change.append(d)
            current += len(expected)
    finally:
        cluster.shutdown()
    console.print(f"dry run: {len(result.touched)} availability rows touched by the window; "
                  f"{len(would_change)} would change, {len(conflicts)} conflict (same version, "
                  f"other values: a replay cannot fix those, see docs/runbook.md), the rest "
                  f"are current or newer. Nothing was written.", highlight=False)
    for d in (would_change + conflicts)[:show]:
        console.print(f"  {d.describe()}", highlight=False, markup=False)
    return 0


def rebuild(
    only: Annotated[list[RebuildPart] | None, typer.Option(
        "--only", help="rebuild only this part (repeat); default: tables, cassandra, cache")]
    = None,
    history: Annotated[bool, typer.Option(
        "--history/--no-history", help="also truncate and rewrite change_history")] = False,
    yes: Annotated[bool, typer.Option("--yes", help="do not ask for confirmation")] = False,
    batch_size: Annotated[int, typer.Option(min=1)] = 20000,
) -> None:
    """Rebuild the worker's tables, Cassandra and Redis from inventory.deltas alone.

    Needs the worker stopped when the tables are rebuilt (refuses while its consumer group has
    members). Cassandra state tables are truncated and Redis keys under the cache prefix
    deleted before the replay from the beginning rewrites them; the tables' changelogs are
    recreated from the fold, the local RocksDB stores deleted, and the worker group's offsets
    set to where the fold ended. Then start the worker.
    """
    from connectors.logtools.rebuild import require_no_worker, table_store_dir
    from pipeline.settings import get_settings

    settings = get_settings()
    parts = set(only or list(RebuildPart))
    if RebuildPart.tables in parts:
        require_no_worker(settings)
    plan = []
    if RebuildPart.cassandra in parts:
        tables = "availability_by_sku, stock_by_supplier" + \
            (", change_history" if history else "")
        plan.append(f"TRUNCATE {settings.cassandra_keyspace}.{{{tables}}} and rewrite them")
    if RebuildPart.cache in parts:
        plan.append(f"delete Redis keys {settings.redis_cache_key_prefix}avail:* and rewrite them")
    if RebuildPart.tables in parts:
        plan.append(f"recreate topics {settings.app_id}-stock-changelog and "
                    f"{settings.app_id}-availability-changelog from the log, delete "
                    f"{table_store_dir(settings)}, set group {settings.app_id}'s offsets")
    console.print("rebuild from " + settings.topic(DELTAS.name) + ":\n  - "
                  + "\n  - ".join(plan), highlight=False)
    if not yes and not typer.confirm("proceed?"):
        raise typer.Exit(1)
    from connectors.logtools.stores import rebuild_stores

    code = asyncio.run(rebuild_stores(
        settings, cassandra=RebuildPart.cassandra in parts, cache=RebuildPart.cache in parts,
        tables=RebuildPart.tables in parts, history=history, batch_size=batch_size,
        run=_run_with_progress, say=lambda line: console.print(line, highlight=False)))
    raise typer.Exit(code)


def register(app: typer.Typer) -> None:
    """Add `stockflow replay` and `stockflow rebuild`."""
    app.command("replay")(replay)
    app.command("rebuild")(rebuild)
