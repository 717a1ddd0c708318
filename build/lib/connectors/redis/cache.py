"""Redis availability cache: version-guarded Lua writes per batch, cache-aside reads, rebuild."""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import itertools
import json
import re
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import resources
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar
from urllib.parse import quote, unquote

import redis.asyncio as aioredis
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ReadOnlyError, RedisError, TryAgainError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry

from pipeline.aggregate import best_supplier, total_available
from pipeline.backoff import backoff_delay
from pipeline.errors import SinkError
from pipeline.log import get_logger
from pipeline.metrics import (
    DROPPED,
    FRESHNESS,
    SINK_ERRORS,
    SINK_RETRIES,
    observe_many,
)

if TYPE_CHECKING:
    from pipeline.settings import Settings

log = get_logger(__name__)

SCRIPT: str = resources.files("connectors.redis").joinpath("cache.lua").read_text("utf-8")
SCRIPT_SHA: str = hashlib.sha1(SCRIPT.encode("utf-8")).hexdigest()
# Keys written by one script call: Redis runs a script alone, so this bounds how long a
# batch holds up a storefront's read (about 10 µs a key) while amortising the command.
KEYS_PER_CALL = 100

SUPPLIER_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")
STATUSES = frozenset({"ACTIVE", "DISCONTINUED"})
DEFAULT_TTL_S = 7 * 24 * 3600

# Connection loss, timeouts, a loading or read-only (failing over) server: all pass with time.
# BusyLoadingError subclasses ConnectionError in redis-py.
RETRYABLE: tuple[type[BaseException], ...] = (
    RedisConnectionError, RedisTimeoutError, ReadOnlyError, TryAgainError, OSError,
)

T = TypeVar("T")


class CacheError(SinkError):
    """Redis refused a cache operation (wrong key type, script error, unreachable on a read)."""


class NotCarried:
    """Marks a lead time the record does not carry: the script keeps the stored one."""

    def __repr__(self) -> str:
        return "NOT_CARRIED"


NOT_CARRIED = NotCarried()


class SupplierEntry(NamedTuple):
    """One supplier's availability of one platform SKU, as the Lua script takes it.

    A NamedTuple, immutable like a frozen dataclass: one is built per change the cache
    writes, and a frozen dataclass's __init__ cost 2.2 µs, a tenth of that here."""

    supplier_id: str
    version: int
    quantity: int
    status: str
    sku: str
    updated_at: int
    lead_time_days: int | NotCarried | None = NOT_CARRIED

    def script_args(self) -> tuple[str, ...]:
        """The 7 ARGV strings of this entry (versions as canonical decimal strings)."""
        if isinstance(self.lead_time_days, NotCarried):
            lead = "-"
        else:
            lead = "" if self.lead_time_days is None else str(int(self.lead_time_days))
        return (self.supplier_id, str(self.version), str(self.quantity), self.status, self.sku,
                str(self.updated_at), lead)


@dataclass(slots=True)
class RebuildStats:
    """What `rebuild_from_rows` did."""

    rows: int = 0
    keys: int = 0
    entries_written: int = 0


def availability_key(prefix: str, platform_sku: str) -> str:
    """The hash key of one platform SKU.

    The SKU is percent-encoded (UTF-8, only [A-Za-z0-9_.~-] kept): the mapping is injective,
    keys stay printable ASCII, and SKUs with braces cannot form a Redis Cluster hash tag.
    """
    if not platform_sku:
        raise CacheError("empty platform_sku")
    if _UNRESERVED.fullmatch(platform_sku):  # quote() would return it as it is
        return f"{prefix}avail:{platform_sku}"
    return f"{prefix}avail:{quote(platform_sku, safe='')}"


# What quote(safe='') never encodes (urllib's always-safe set).
_UNRESERVED = re.compile(r"[A-Za-z0-9_.~-]+")


def platform_sku_of(prefix: str, key: str) -> str:
    """Inverse of `availability_key`."""
    return unquote(key[len(f"{prefix}avail:"):])


def _epoch_ms(value: Any) -> int:
    if value is None:
        return 0
    if isinstance(value, datetime):
        if value.tzinfo is None:  # the Cassandra driver returns naive UTC datetimes
            value = value.replace(tzinfo=UTC)
        return int(value.timestamp() * 1000)
    return int(value)


def _field(row: Any, name: str, default: Any = None) -> Any:
    if isinstance(row, Mapping):
        return row.get(name, default)
    return getattr(row, name, default)


def _status(value: Any) -> str:
    status = str(getattr(value, "name", value) or "ACTIVE").upper()
    return status if status in STATUSES else "ACTIVE"


def entry_from_change(change: Mapping[str, Any]) -> SupplierEntry:
    """The cache entry an InventoryChange carries (quantity 0 when discontinued)."""
    status = change["status"]
    if status.__class__ is not str or status not in STATUSES:  # the usual case is canonical
        status = _status(status)
    quantity = int(change["quantity_after"]) if status == "ACTIVE" else 0
    # A record written before InventoryChange had `lead_time_days` keeps the stored lead time.
    lead = change.get("lead_time_days", NOT_CARRIED)
    # observed_at, not changed_at: the Cassandra sink stores observed_at as the row's
    # updated_at, so a rebuild from Cassandra gives back the very same `t:` fields.
    observed = change["observed_at"]
    return SupplierEntry(str(change["supplier_id"]), int(change["version"]), quantity, status,
                         str(change["sku"]),
                         observed if observed.__class__ is int else _epoch_ms(observed), lead)


def entry_from_row(row: Any) -> SupplierEntry:
    """The cache entry of one `availability_by_sku` row (a mapping or a driver Row)."""
    status = _status(_field(row, "status"))
    quantity = int(_field(row, "quantity") or 0) if status == "ACTIVE" else 0
    lead = _field(row, "lead_time_days")
    return SupplierEntry(str(_field(row, "supplier_id")), int(_field(row, "version")), quantity,
                         status, str(_field(row, "sku") or ""),
                         _epoch_ms(_field(row, "updated_at")),
                         None if lead is None else int(lead))


def parse_hash(platform_sku: str, fields: Mapping[str, str]) -> dict[str, Any]:
    """An availability dict (shaped like the Availability record) from a cache hash."""
    suppliers: dict[str, dict[str, Any]] = {}
    for name, value in fields.items():
        if name.startswith("q:"):
            sid = name[2:]
            suppliers[sid] = {
                "sku": fields.get(f"k:{sid}", ""),
                "quantity": int(value),
                "version": int(fields.get(f"v:{sid}", "0")),
                "status": fields.get(f"s:{sid}", "ACTIVE"),
                "lead_time_days": int(fields[f"l:{sid}"]) if f"l:{sid}" in fields else None,
                "updated_at": int(fields.get(f"t:{sid}", "0")),
            }
    return {
        "platform_sku": platform_sku,
        "total": int(fields.get("total", "0")),
        "best_supplier": fields.get("best"),
        "updated_at": int(fields.get("updated_at", "0")),
        "complete": fields.get("complete") == "1",
        "suppliers": dict(sorted(suppliers.items())),
    }


class RedisCache:
    """Writes InventoryChange batches into per-platform-SKU hashes through the CAS script.

    One pipeline per batch; `apply_batch` retries with capped exponential backoff and full
    jitter until Redis takes the batch, so a change is never lost while Redis is away.
    """

    def __init__(
        self,
        url: str,
        *,
        key_prefix: str = "stockflow:",
        ttl_s: int | None = DEFAULT_TTL_S,
        max_retry_delay_s: float = 5.0,
        initial_retry_delay_s: float = 0.05,
        socket_timeout_s: float = 5.0,
    ) -> None:
        self.key_prefix = key_prefix
        self.ttl_ms = int(ttl_s * 1000) if ttl_s else 0
        self.max_retry_delay_s = max_retry_delay_s
        self.initial_retry_delay_s = initial_retry_delay_s
        # The client's own retries are off: the backoff loop here owns retrying, so a long
        # outage is one loop with one policy instead of nested ones.
        self._redis: aioredis.Redis = aioredis.Redis.from_url(
            url,
            decode_responses=True,
            socket_timeout=socket_timeout_s,
            socket_connect_timeout=socket_timeout_s,
            retry=Retry(NoBackoff(), 0),
            health_check_interval=30,
        )

    @classmethod
    def from_settings(cls, settings: Settings) -> RedisCache:
        """A cache configured from the `# --- Redis cache` settings."""
        return cls(
            settings.redis_url.get_secret_value(),
            key_prefix=settings.redis_cache_key_prefix,
            ttl_s=settings.redis_cache_ttl_s,
            max_retry_delay_s=settings.redis_cache_max_retry_delay_s,
            initial_retry_delay_s=settings.redis_cache_initial_retry_delay_s,
            socket_timeout_s=settings.redis_cache_socket_timeout_s,
        )

    @property
    def client(self) -> aioredis.Redis:
        """The underlying redis.asyncio client (benchmarks, tests)."""
        return self._redis

    def key(self, platform_sku: str) -> str:
        """The hash key of one platform SKU under this cache's prefix."""
        return availability_key(self.key_prefix, platform_sku)

    async def __aenter__(self) -> RedisCache:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the connection pool."""
        await self._redis.aclose()

    # --- write path ------------------------------------------------------------------------

    async def apply_batch(self, changes: list[dict[str, Any]]) -> int:
        """Write a batch of InventoryChange dicts; returns the number of keys written.

        Within the batch only the newest version per (platform SKU, supplier) is sent, and all
        suppliers of one platform SKU go in one script call. Returns once Redis took the
        batch (retrying while it is unreachable); raises CacheError only for errors that
        waiting cannot fix.
        """
        if not changes:
            return 0
        # platform_sku -> supplier_id -> (entry, produced_at of every change folded into it)
        grouped: dict[str, dict[str, tuple[SupplierEntry, list[int]]]] = {}
        for change in changes:
            try:
                platform_sku = str(change["platform_sku"])
                entry = entry_from_change(change)
                if not platform_sku or not SUPPLIER_ID.fullmatch(entry.supplier_id):
                    raise ValueError("bad platform_sku or supplier_id")
            except (KeyError, TypeError, ValueError) as exc:
                # inventory.changes is produced by stockflow after validation: this is a bug
                # upstream, counted and logged rather than stopping the cache for every SKU.
                DROPPED.labels(reason="cache:invalid_change").inc()
                log.error("cache.invalid_change", error=str(exc),
                          event_id=change.get("event_id") if isinstance(change, Mapping) else None)
                continue
            produced = [_epoch_ms(change.get("produced_at"))]
            per_key = grouped.setdefault(platform_sku, {})
            held = per_key.get(entry.supplier_id)
            if held is None:
                per_key[entry.supplier_id] = (entry, produced)
            elif entry.version > held[0].version:
                per_key[entry.supplier_id] = (entry, held[1] + produced)
            else:
                held[1].extend(produced)
        if not grouped:
            return 0
        calls = [(sku, list(per_key.values())) for sku, per_key in grouped.items()]
        results = await self._with_retry(
            "apply_batch",
            lambda: self._run_scripts(
                [(self.key(sku), [e for e, _ in folded], False) for sku, folded in calls]
            ),
        )
        now_ms = time.time() * 1000
        keys_written = 0
        ages: list[float] = []
        for (_, folded), flags in zip(calls, results, strict=True):
            if any(flags):
                keys_written += 1
            for (_, produced), flag in zip(folded, flags, strict=True):
                if flag:
                    ages.extend(max(0.0, (now_ms - ms) / 1000.0) for ms in produced if ms > 0)
        observe_many(FRESHNESS.labels(stage="redis"), ages)
        return keys_written

    async def fill(self, platform_sku: str, rows: Iterable[Any]) -> int:
        """Cache-aside fill from Cassandra rows of one platform SKU (one attempt, no retry).

        Goes through the same version guard, so a fill racing a newer change never
        overwrites it. Marks the hash complete. Returns the number of entries written.
        """
        entries = [entry_from_row(r) for r in rows]
        if not entries:
            return 0
        (flags,) = await self._run_scripts([(self.key(platform_sku), entries, True)])
        return sum(flags)

    async def fill_many(self, groups: Sequence[tuple[str, Sequence[Any]]]) -> int:
        """Fill many platform SKUs in one pipeline, retrying while Redis is away."""
        calls = [(self.key(sku), [entry_from_row(r) for r in rows], True)
                 for sku, rows in groups if rows]
        if not calls:
            return 0
        results = await self._with_retry("fill_many", lambda: self._run_scripts(calls))
        return sum(sum(flags) for flags in results)

    async def _run_scripts(
        self, calls: Sequence[tuple[str, Sequence[SupplierEntry], bool]]
    ) -> list[list[int]]:
        """One pipeline of EVALSHA calls, each writing up to KEYS_PER_CALL keys; returns the
        written flags per call, in order. SCRIPT LOAD and rerun when the server lost it."""
        commands: list[tuple[list[str], bool]] = []
        for complete, run in itertools.groupby(calls, key=lambda call: call[2]):
            keys: list[str] = []
            for call in run:
                if len(keys) == KEYS_PER_CALL:
                    commands.append((keys, complete))
                    keys = []
                keys.append(call[0])
            commands.append((keys, complete))
        groups = [[e.script_args() for e in entries] for _key, entries, _complete in calls]
        ttl = str(self.ttl_ms)
        for _ in range(3):
            async with self._redis.pipeline(transaction=False) as pipe:
                start = 0
                for keys, complete in commands:
                    # One JSON argument for all the keys' groups (cjson in the script): a
                    # handful of arguments a command instead of 7 a supplier entry.
                    payload = json.dumps(groups[start:start + len(keys)], ensure_ascii=False,
                                         separators=(",", ":"))
                    pipe.evalsha(SCRIPT_SHA, len(keys), *keys, ttl,
                                 "1" if complete else "0", payload)
                    start += len(keys)
                results = await pipe.execute(raise_on_error=False)
            if any(isinstance(r, NoScriptError) for r in results):
                # A restarted or flushed server forgot the script. Rerunning every call is
                # safe: the version guard makes the calls that did run no-ops.
                await self._redis.script_load(SCRIPT)
                continue
            for r in results:
                if isinstance(r, RETRYABLE):
                    raise r
                if isinstance(r, BaseException):
                    raise CacheError(f"cache script failed: {r}") from r
            # One string per call: per key its flags ('0'/'1' per entry), keys split by ','.
            return [[1 if c == "1" else 0 for c in flags]
                    for r in results
                    for flags in (r.decode() if isinstance(r, bytes) else r).split(",")]
        raise CacheError("the cache script kept disappearing from Redis")

    async def _with_retry(self, operation: str, attempt: Callable[[], Awaitable[T]]) -> T:
        """Run `attempt` until it succeeds, sleeping with capped backoff and full jitter."""
        failures = 0
        while True:
            try:
                return await attempt()
            except RETRYABLE as exc:
                failures += 1
                SINK_RETRIES.labels(sink="redis").inc()
                SINK_ERRORS.labels(sink="redis", error=type(exc).__name__).inc()
                # `failures` is 1 at the first retry and is passed as the 0-based attempt
                # as it is, so the first retry waits up to 2 x initial_retry_delay_s.
                delay = backoff_delay(failures, base_s=self.initial_retry_delay_s,
                                      cap_s=self.max_retry_delay_s, jitter="full")
                log.warning("cache.redis_unavailable", operation=operation, attempt=failures,
                            retry_in_s=round(delay, 3), error=type(exc).__name__)
                await asyncio.sleep(delay)
            except RedisError as exc:
                SINK_ERRORS.labels(sink="redis", error=type(exc).__name__).inc()
                raise CacheError(f"redis {operation} failed: {exc}") from exc

    # --- read path -------------------------------------------------------------------------

    async def get(self, platform_sku: str) -> dict[str, Any] | None:
        """The cached availability of one platform SKU, or None when not cached.

        One attempt: raises CacheError when Redis is unreachable, so a reader can fall back
        to Cassandra instead of waiting.
        """
        try:
            # decode_responses=True: field names and values are str
            fields: dict[str, str] = await self._redis.hgetall(  # type: ignore[assignment]
                self.key(platform_sku))
        except RedisError as exc:
            raise CacheError(f"redis read failed: {type(exc).__name__}: {exc}") from exc
        if not fields:
            return None
        return parse_hash(platform_sku, fields)


# --- cache-aside read path -----------------------------------------------------------------

CassandraAvailabilityReader = Callable[[str], "Awaitable[Iterable[Any]] | Iterable[Any]"]
"""Reads the `availability_by_sku` rows of one platform SKU (sync or async)."""


def _from_rows(platform_sku: str, rows: Sequence[Any]) -> dict[str, Any]:
    """The availability dict of Cassandra rows, computed like the Lua script does."""
    fields: dict[str, str] = {"complete": "1"}
    updated_at = 0
    for e in (entry_from_row(r) for r in rows):
        for tag, value in zip("vqsktl", e.script_args()[1:], strict=True):
            if value != "":
                fields[f"{tag}:{e.supplier_id}"] = value
        updated_at = max(updated_at, e.updated_at)
    fields["updated_at"] = str(updated_at)
    parsed = parse_hash(platform_sku, fields)
    parsed["total"] = total_available(parsed["suppliers"])
    parsed["best_supplier"] = best_supplier(parsed["suppliers"]) if parsed["total"] > 0 else None
    return parsed


async def read_availability(
    cache: RedisCache, cassandra_reader: CassandraAvailabilityReader, platform_sku: str
) -> dict[str, Any] | None:
    """Storefront read: Redis first; on a miss Cassandra, then fill Redis version-guarded.

    A hash that the write path created after Redis lost its data (restart, TTL, eviction)
    holds only the suppliers that changed since, so it is not `complete` and counts as a
    miss. Returns the availability dict with `source` ("redis" or "cassandra"), or None when
    no supplier has the SKU. If Redis is unreachable the answer comes from Cassandra.
    """
    redis_ok = True
    try:
        cached = await cache.get(platform_sku)
    except CacheError as exc:
        log.warning("cache.read_fallback", platform_sku=platform_sku, error=str(exc))
        cached, redis_ok = None, False
    if cached is not None and cached["complete"]:
        return {**cached, "source": "redis"}
    result = cassandra_reader(platform_sku)
    rows = list(await result if inspect.isawaitable(result) else result)
    if not rows:
        return None
    if redis_ok:
        try:
            await cache.fill(platform_sku, rows)
            filled = await cache.get(platform_sku)
            if filled is not None:
                # Redis may hold newer versions than the rows just read: answer with them.
                return {**filled, "source": "cassandra"}
        except (CacheError, RedisError) as exc:
            log.warning("cache.fill_failed", platform_sku=platform_sku, error=str(exc))
    return {**_from_rows(platform_sku, rows), "source": "cassandra"}


# --- rebuild -------------------------------------------------------------------------------


def _partitions(rows: Iterator[Any]) -> Iterator[tuple[str, list[Any]]]:
    """Group consecutive rows by platform_sku (a table scan yields a partition's rows together)."""
    for sku, group in itertools.groupby(rows, key=lambda r: str(_field(r, "platform_sku"))):
        yield sku, list(group)


async def rebuild_from_rows(
    cache: RedisCache,
    rows: Iterable[Any],
    *,
    keys_per_pipeline: int = 500,
    on_progress: Callable[[int, int], None] | None = None,
) -> RebuildStats:
    """Refill the cache from `availability_by_sku` rows (e.g. `iter_availability`).

    The (blocking) row iterator is advanced in a worker thread so paging does not stall the
    event loop. Every fill is version-guarded, so running it while changes flow is safe.
    `on_progress(keys, rows)` is called after each pipeline.
    """
    stats = RebuildStats()
    partitions = _partitions(iter(rows))

    def next_chunk() -> list[tuple[str, list[Any]]]:
        return list(itertools.islice(partitions, keys_per_pipeline))

    while True:
        chunk = await asyncio.to_thread(next_chunk)
        if not chunk:
            return stats
        stats.entries_written += await cache.fill_many(chunk)
        stats.keys += len(chunk)
        stats.rows += sum(len(r) for _, r in chunk)
        if on_progress is not None:
            on_progress(stats.keys, stats.rows)
