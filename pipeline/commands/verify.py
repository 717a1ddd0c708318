"""`stockflow verify`: refold the log, compare it with Cassandra, Redis and the worker's tables."""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

if TYPE_CHECKING:
    from connectors.replay.compare import Comparison
    from connectors.replay.fold import LogFold
    from pipeline.settings import Settings

console = Console()


def _redis_hashes(settings: Settings, skus: list[str]) -> dict[str, dict[str, Any] | None]:
    from connectors.redis_cache import RedisCache

    async def run() -> dict[str, dict[str, Any] | None]:
        out: dict[str, dict[str, Any] | None] = {}
        async with RedisCache.from_settings(settings) as cache:
            for i in range(0, len(skus), 500):
                chunk = skus[i:i + 500]
                got = await asyncio.gather(*(cache.get(s) for s in chunk))
                out.update(zip(chunk, got, strict=True))
        return out

    return asyncio.run(run())


def _redis_skus(settings: Settings) -> set[str]:
    import redis

    from connectors.redis_cache import platform_sku_of

    client = redis.Redis.from_url(settings.redis_url.get_secret_value(), decode_responses=True)
    prefix = settings.redis_cache_key_prefix
    try:
        return {platform_sku_of(prefix, k)
                for k in client.scan_iter(match=f"{prefix}avail:*", count=1000)}
    finally:
        client.close()


def _cassandra(settings: Settings, skus: list[str] | None) -> dict[str, dict[str, Any]]:
    """Availability per platform SKU: the given ones, or every partition of the table."""
    from connectors.cassandra_cluster import ClusterConfig, connect
    from connectors.cassandra_read import iter_sku_availability, read_availability

    cluster, session = connect(ClusterConfig.from_settings(settings))
    ks = settings.cassandra_keyspace
    try:
        if skus is None:
            return {a["platform_sku"]: a for a in iter_sku_availability(session, ks)}
        out = {}
        for sku in skus:
            got = read_availability(session, sku, ks)
            if got is not None:
                out[sku] = got
        return out
    finally:
        cluster.shutdown()


def _compare(settings: Settings, fold: LogFold, skus: list[str], *, full_scan: bool,
             cache: bool, tables: bool, require_cache: bool) -> Comparison:
    from connectors.replay import compare as cmp
    from connectors.replay.rebuild import changelog_topic, read_changelog

    result = cmp.Comparison()
    by_sku: dict[str, dict[str, dict[str, Any]]] = {}
    for (platform_sku, supplier_id), change in fold.changes.items():
        by_sku.setdefault(platform_sku, {})[supplier_id] = change

    actual = _cassandra(settings, None if full_scan else skus)
    for sku in skus:
        result.add("cassandra", cmp.compare_cassandra(sku, fold.expected_rows(sku),
                                                      actual.get(sku)))
    if full_scan:
        for sku in actual.keys() - set(skus):
            result.add("cassandra", cmp.compare_cassandra(sku, {}, actual[sku]))

    if cache:
        wanted = [s for s in skus if s in by_sku]
        hashes = _redis_hashes(settings, wanted)
        for sku in wanted:
            diffs = cmp.compare_cache(sku, cmp.expected_cache_entries(by_sku[sku]), hashes[sku])
            if not require_cache:
                # An absent hash is a cache miss (TTL, eviction), refilled on read.
                diffs = [d if not (d.kind == cmp.MISSING and d.entry == "") else
                         cmp.Difference(d.store, d.key, d.entry, "absent", d.expected, None)
                         for d in diffs]
            result.add("redis", diffs)
        if full_scan:
            extra = sorted(_redis_skus(settings) - set(by_sku))
            extra_hashes = _redis_hashes(settings, extra)
            for sku in extra:
                result.add("redis", cmp.compare_cache(sku, {}, extra_hashes[sku]))

    if tables:
        stock = read_changelog(settings, changelog_topic(settings, "stock"), "StockState")
        avail_raw = read_changelog(settings, changelog_topic(settings, "availability"),
                                   "Availability")
        avail = {k.decode(): v for k, v in avail_raw.items()}
        wanted_sku = set(skus)
        if full_scan:
            result.add("table:stock", cmp.compare_stock_table(fold.stock, stock))
            result.add("table:availability",
                       cmp.compare_availability_table(fold.availability, avail))
        else:
            keys = {k for k, v in fold.stock.items() if v["platform_sku"] in wanted_sku}
            result.add("table:stock", cmp.compare_stock_table(
                {k: fold.stock[k] for k in keys}, {k: stock[k] for k in keys if k in stock}))
            result.add("table:availability", cmp.compare_availability_table(
                {k: fold.availability[k] for k in wanted_sku if k in fold.availability},
                {k: avail[k] for k in wanted_sku if k in avail}))
        # The whole tables were compared in one call each: count their keys, not calls.
        result.checked["table:stock"] = len(fold.stock if full_scan else keys)
        result.checked["table:availability"] = len(fold.availability if full_scan
                                                   else wanted_sku)
    return result



def verify(
    sample: Annotated[int | None, typer.Option(
        "--sample", min=1, help="check N random platform SKUs instead of all")] = None,
    settle: Annotated[float, typer.Option(
        help="seconds to wait before re-checking differences the worker may still be "
             "writing (0: no re-check)")] = 10.0,
    cache: Annotated[bool, typer.Option("--cache/--no-cache", help="compare Redis")] = True,
    tables: Annotated[bool, typer.Option(
        "--tables/--no-tables", help="compare the worker's tables (their changelogs)")] = True,
    require_cache: Annotated[bool, typer.Option(
        "--require-cache", help="an absent Redis hash is drift (default: a cache miss)")]
    = False,
    show: Annotated[int, typer.Option(help="differences to print")] = 20,
    seed: Annotated[int | None, typer.Option(help="random seed of --sample")] = None,
) -> None:
    """Recompute state from inventory.deltas and compare; exit 1 on drift (fit for cron).

    Drift: an entry older than the log says (after a re-check), missing, unexpected, or with
    the same version but other values. A store ahead of the folded log (the worker wrote it
    after the log was read) is not drift.
    """
    from connectors.replay import compare as cmp
    from connectors.replay.runner import fold_log, new_fold, new_reader
    from pipeline.settings import get_settings

    settings = get_settings()
    t0 = time.monotonic()
    fold = new_fold(settings)
    with new_reader(settings) as reader:
        marks = reader.watermarks()
        start = {p: lo for p, (lo, _hi) in marks.items()}
        end = {p: hi for p, (_lo, hi) in marks.items()}
        read = fold_log(reader, fold, start, end)
        skus = sorted(fold.availability)
        full_scan = sample is None
        if sample is not None and sample < len(skus):
            skus = sorted(random.Random(seed).sample(skus, sample))
        result = _compare(settings, fold, skus, full_scan=full_scan, cache=cache,
                          tables=tables, require_cache=require_cache)
        rechecked = 0
        suspects = sorted({d.key for d in result.drift()})
        if suspects and settle > 0:
            # The worker may not have written what the log already holds: give it time,
            # extend the fold to the new log end, and look at those keys again.
            time.sleep(settle)
            later = {p: hi for p, (_lo, hi) in reader.watermarks().items()}
            read += fold_log(reader, fold, end, later)
            suspect_skus = sorted({fold.stock[k.encode()]["platform_sku"]
                                   if k.encode() in fold.stock else k for k in suspects})
            again = _compare(settings, fold, suspect_skus, full_scan=False, cache=cache,
                             tables=tables, require_cache=require_cache)
            unsettled = {d.key for d in result.drift()}
            kept = [d for d in result.differences if d.key not in unsettled]
            result.differences = kept + again.differences
            rechecked = len(suspect_skus)
    drift = result.drift()
    table = Table(title=f"stockflow verify: {read} log records, {len(fold.availability)} "
                        f"platform SKUs, {len(fold.stock)} supplier SKUs")
    for col in ("store", "checked", "drift", "ahead (newer than the log)", "absent"):
        table.add_column(col)
    by_store = Counter(d.store for d in drift)
    ahead = Counter(d.store for d in result.differences if d.kind == cmp.AHEAD)
    absent = Counter(d.store for d in result.differences if d.kind == "absent")
    for store, checked in result.checked.items():
        table.add_row(store, str(checked), str(by_store[store]), str(ahead[store]),
                      str(absent[store]))
    console.print(table)
    if rechecked:
        console.print(f"re-checked {rechecked} platform SKUs after {settle:.0f}s", highlight=False)
    for d in drift[:show]:
        console.print(f"  {d.describe()}", highlight=False, markup=False)
    if drift:
        console.print(f"[red]DRIFT[/]: {len(drift)} differences "
                      f"({dict(Counter(d.kind for d in drift))}) in {time.monotonic() - t0:.1f}s;"
                      " see docs/runbook.md")
        raise typer.Exit(1)
    console.print(f"[green]OK[/]: no drift ({time.monotonic() - t0:.1f}s)")


def register(app: typer.Typer) -> None:
    """Add `stockflow verify`."""
    app.command("verify")(verify)
