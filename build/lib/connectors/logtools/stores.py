"""The log tools writing the stores: a replay with the sinks it writes opened and closed around
it, and the full rebuild's steps in order (empty the stores, refold the whole log into them,
rewrite the worker's table changelogs and its group's offsets)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from connectors.logtools.runner import Replay, ReplayProgress
    from pipeline.settings import Settings

# Runs a Replay to its end (the command's: under a progress bar, Ctrl-C stopping it).
RunReplay = Callable[["Replay", str], Awaitable["ReplayProgress"]]


async def replay_into(settings: Settings, reader: Any, fold: Any, *, fold_start: dict[int, int],
                      fold_end: dict[int, int], window: Any, cassandra: bool, cache: bool,
                      history: bool, checkpoint: Any, dry_run: bool, max_rate: float | None,
                      run: RunReplay) -> ReplayProgress:
    """Replay `window` of the log into Cassandra and/or Redis (neither on a dry run)."""
    from connectors.cassandra.sink import CassandraSink
    from connectors.logtools.runner import Replay
    from connectors.redis.cache import RedisCache

    sink = redis = None
    if not dry_run and cassandra:
        sink = CassandraSink.from_settings(settings)
        await sink.start()
    if not dry_run and cache:
        redis = RedisCache.from_settings(settings)
    try:
        return await run(Replay(reader, fold, fold_start=fold_start, fold_end=fold_end,
                                window=window, sink=sink, cache=redis, history=history,
                                checkpoint=checkpoint, dry_run=dry_run, max_rate=max_rate),
                         "replay")
    finally:
        if sink is not None:
            await sink.close()
        if redis is not None:
            await redis.close()


async def rebuild_stores(settings: Settings, *, cassandra: bool, cache: bool, tables: bool,
                         history: bool, batch_size: int, run: RunReplay,
                         say: Callable[[str], None]) -> int:
    """`stockflow rebuild`: empty the chosen stores, refold the whole log into them and, for
    the worker's tables, rewrite their changelogs and the group's offsets. Returns the exit
    code (130: interrupted)."""
    from connectors.cassandra.sink import CassandraSink
    from connectors.logtools import rebuild as kafka_side
    from connectors.logtools.runner import Replay, ReplayWindow, new_fold, new_reader
    from connectors.redis.cache import RedisCache

    sink = redis = None
    try:
        if cassandra:
            sink = CassandraSink.from_settings(settings)
            await sink.start()
            emptied = ["availability_by_sku", "stock_by_supplier"] + \
                (["change_history"] if history else [])
            for table in emptied:
                # TRUNCATE drops every cell whatever its write timestamp: the one way to
                # remove cells written above their version (see docs/runbook.md).
                await asyncio.to_thread(sink.session.execute,
                                        f"TRUNCATE {sink.keyspace}.{table}", timeout=120)
            say(f"truncated {', '.join(emptied)}")
        if cache:
            redis = RedisCache.from_settings(settings)
            deleted = await delete_cache_keys(redis)
            say(f"deleted {deleted} Redis keys")
        fold = new_fold(settings)
        with new_reader(settings, batch_size) as reader:
            marks = reader.watermarks()
            start = {p: lo for p, (lo, _hi) in marks.items()}
            end = {p: hi for p, (_lo, hi) in marks.items()}
            replay = Replay(reader, fold, fold_start=start, fold_end=end,
                            window=ReplayWindow(start, end), sink=sink, cache=redis,
                            history=history or sink is None)
            result = await run(replay, "rebuild")
        if result.interrupted:
            say("[yellow]interrupted[/]: the stores are partly rebuilt; run the same "
                "rebuild again (it starts over)")
            return 130
        say(f"folded {result.read} records: {len(fold.stock)} supplier SKUs, "
            f"{len(fold.availability)} platform SKUs; wrote {result.updates_written} "
            f"updates and {result.changes_written} changes")
        if tables:
            kafka_side.require_no_worker(settings)
            await asyncio.to_thread(kafka_side.recreate_changelogs, settings)
            counts = await asyncio.to_thread(kafka_side.write_changelogs, settings, fold)
            removed = kafka_side.remove_table_store(settings)
            await asyncio.to_thread(kafka_side.set_worker_offsets, settings, end)
            say(f"changelogs rewritten ({counts}); local store "
                f"{removed or kafka_side.table_store_dir(settings)} removed; group "
                f"{settings.app_id} set to deltas offsets {end}")
            say("now start the worker (`stockflow worker`): it restores its tables "
                "from the new changelogs. If it runs on another host, delete "
                "the table store there first (path above).")
    finally:
        if sink is not None:
            await sink.close()
        if redis is not None:
            await redis.close()
    return 0


async def delete_cache_keys(cache: Any) -> int:
    """Delete every availability hash under the cache's prefix (SCAN + UNLINK, in chunks)."""
    client = cache.client
    pattern = f"{cache.key_prefix}avail:*"
    deleted = 0
    chunk: list[str] = []
    async for key in client.scan_iter(match=pattern, count=1000):
        chunk.append(key)
        if len(chunk) >= 1000:
            deleted += await client.unlink(*chunk)
            chunk = []
    if chunk:
        deleted += await client.unlink(*chunk)
    return deleted
