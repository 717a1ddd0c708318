"""`stockflow cache ...`: rebuild the Redis availability cache from Cassandra, read one SKU."""

from __future__ import annotations

import asyncio
import json
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console

if TYPE_CHECKING:
    pass

console = Console()

cache_app = typer.Typer(help="The Redis availability cache.", no_args_is_help=True)


@cache_app.command("rebuild")
def rebuild(
    keyspace: Annotated[str | None, typer.Option(
        help="keyspace (default: settings.cassandra_keyspace)")] = None,
    keys_per_pipeline: Annotated[int, typer.Option(
        "--batch", min=1, max=10_000, help="platform SKUs per Redis pipeline")] = 500,
) -> None:
    """Refill Redis from Cassandra's availability_by_sku (e.g. after Redis restarted empty).

    Version-guarded like every cache write: safe while the pipeline keeps writing changes.
    """
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        SpinnerColumn,
        TextColumn,
        TimeElapsedColumn,
    )

    from connectors.cassandra.cluster import ClusterConfig, check_keyspace_name, connect
    from connectors.cassandra.read import estimated_platform_skus, iter_availability
    from connectors.redis.cache import RebuildStats, RedisCache, rebuild_from_rows
    from pipeline.settings import get_settings

    settings = get_settings()
    ks = check_keyspace_name(keyspace or settings.cassandra_keyspace)
    cluster, session = connect(ClusterConfig.from_settings(settings))
    try:
        estimate = estimated_platform_skus(session, ks)
        with Progress(SpinnerColumn(), TextColumn("[bold]{task.description}"), BarColumn(),
                      MofNCompleteColumn(), TextColumn("{task.fields[rows]} rows"),
                      TimeElapsedColumn(), console=console) as progress:
            task = progress.add_task("platform SKUs", total=estimate, rows=0)

            def on_progress(keys: int, rows: int) -> None:
                total = progress.tasks[0].total
                # The estimate can be low; never show more than 100 %.
                progress.update(task, completed=keys, rows=rows,
                                total=max(total, keys) if total is not None else None)

            async def run() -> RebuildStats:
                async with RedisCache.from_settings(settings) as cache:
                    return await rebuild_from_rows(
                        cache, iter_availability(session, ks),
                        keys_per_pipeline=keys_per_pipeline, on_progress=on_progress)

            stats = asyncio.run(run())
            progress.update(task, total=stats.keys, completed=stats.keys)
    finally:
        cluster.shutdown()
    console.print(f"rebuilt {stats.keys} platform SKUs from {stats.rows} rows "
                  f"({stats.entries_written} supplier entries written, the rest were current)")


@cache_app.command("get")
def get(
    platform_sku: Annotated[str, typer.Argument(metavar="SKU", help="the platform SKU")],
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
) -> None:
    """Print what Redis holds for a platform SKU (no Cassandra fallback). Exit 1 if nothing."""
    from connectors.redis.cache import RedisCache, availability_key
    from pipeline.settings import get_settings
    from pipeline.shell.views import availability_table

    settings = get_settings()

    async def run() -> tuple[dict[str, Any] | None, int]:
        async with RedisCache.from_settings(settings) as cache:
            got = await cache.get(platform_sku)
            ttl_ms = await cache.client.pttl(cache.key(platform_sku)) if got else -2
            return got, int(ttl_ms)

    availability, ttl_ms = asyncio.run(run())
    if availability is None:
        console.print(f"platform SKU {platform_sku!r} is not in the cache", markup=False,
                      highlight=False)
        raise typer.Exit(1)
    if as_json:
        console.print_json(json.dumps({**availability, "ttl_ms": ttl_ms}))
        return
    console.print(availability_table(availability, "redis"))
    ttl = "none" if ttl_ms < 0 else f"{ttl_ms / 1000:.0f}s"
    console.print(f"complete: {availability['complete']}   ttl: {ttl}   "
                  f"key: {availability_key(settings.redis_cache_key_prefix, platform_sku)}",
                  markup=False, highlight=False)


def register(app: typer.Typer) -> None:
    """Add `stockflow cache ...`."""
    app.add_typer(cache_app, name="cache")
