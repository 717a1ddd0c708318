"""Redis cache writes (version-guarded, one pipeline a batch) and the agent refresh_cache.

Who writes Redis is `settings.cache_writer`: `inline` (default), the aggregate agent right
after Cassandra acknowledged a batch, through `write_changes`; `agent`, the refresh_cache
agent from inventory.changes. Both write the same InventoryChange records with the same
version guard, so they end in the same hashes (docs/cache.md).
"""

from __future__ import annotations

import time
from typing import Any, Protocol

from pipeline import metrics, tracing
from pipeline.errors import SchemaError
from pipeline.log import get_logger
from pipeline.topics import CHANGES
from schemas.codec import codec_for
from topologies.app import app, settings
from topologies.runtime import InputBatches

log = get_logger(__name__)

# Not subscribed when the aggregate agent writes the cache inline.
changes = InputBatches(app, topic=settings.topic(CHANGES.name),
                       enabled=settings.cache_writer == "agent")
_CHANGE = codec_for("InventoryChange")


class ChangeCache(Protocol):
    """What the agent needs of a cache writer."""

    async def apply_batch(self, changes: list[dict[str, Any]]) -> int: ...

    async def close(self) -> None: ...


_cache: ChangeCache | None = None


def set_cache(cache: ChangeCache | None) -> None:
    """Choose the cache writer (tests pass an in-memory one); None means Redis from settings."""
    global _cache
    _cache = cache


def get_cache() -> ChangeCache | None:
    """The cache writer: the one set by `set_cache`, else Redis from settings (or None)."""
    global _cache
    if _cache is None and settings.cache_enabled:
        from connectors.redis.cache import RedisCache

        _cache = RedisCache.from_settings(settings)
    return _cache


def decode_changes(records: list[Any]) -> list[dict[str, Any]]:
    """The InventoryChange records of a batch (an undecodable one is counted and skipped)."""
    decoded = []
    for msg in records:
        try:
            decoded.append(_CHANGE.decode_trusted(msg.value() or b""))
        except SchemaError as exc:
            metrics.DROPPED.labels("cache:undecodable").inc()
            log.error("cache.undecodable_change", error=str(exc), topic=msg.topic(),
                      partition=msg.partition(), offset=msg.offset())
    return decoded


def _trace_cache_write(trace: tracing.BatchTrace, records: list[Any],
                       decoded: list[dict[str, Any]], started_ns: int) -> None:
    """The Redis write in the batch's trace and in each recorded change's own trace."""
    written_ns = time.time_ns()
    trace.child("redis.write", started_ns, written_ns, **{"db.system": "redis",
                "stockflow.changes": len(decoded)})
    # Decoded in record order; an undecodable record (never expected) loses the attributes.
    paired = len(decoded) == len(records)
    for index in trace.wanted_msgs.values():  # the recorded records only
        msg = records[index]
        pos = (msg.partition(), msg.offset())
        attributes: dict[str, Any] = {}
        if paired:
            change = decoded[index]
            attributes = {"stockflow.event_id": change["event_id"],
                          "stockflow.platform_sku": change["platform_sku"],
                          "stockflow.supplier_id": change["supplier_id"],
                          "stockflow.version": change["version"]}
        trace.record(pos, attributes=attributes,
                     steps=[("redis.write", started_ns, written_ns,
                             {"db.system": "redis", "stockflow.changes": len(decoded)})],
                     end_ns=written_ns)
    trace.finish()


async def write_changes(cache: ChangeCache, decoded: list[dict[str, Any]]) -> None:
    """Write a batch of changes to the cache; returns once it has them (retrying meanwhile)."""
    t0 = time.perf_counter()
    await cache.apply_batch(decoded)
    metrics.SINK_LATENCY.labels("redis").observe(time.perf_counter() - t0)
    metrics.SINK_BATCH_SIZE.labels("redis").observe(len(decoded))
    metrics.EVENTS.labels("cache", "written").inc(len(decoded))


@app.agent(changes, name="refresh_cache")
async def refresh_cache(batches: Any) -> Any:
    """Write each batch of changes to Redis; done only once Redis has them."""
    async for batch in batches:
        async with batch:
            cache = get_cache()
            batch.result = 0
            if cache is not None:
                trace = tracing.batch_trace("refresh_cache", batch.topic, batch.records,
                                            batch.now_ms) if tracing.ENABLED else None
                decoded = decode_changes(batch.records)
                started_ns = time.time_ns()
                # A RESERVATION change repeats a supplier entry unchanged: nothing to write
                # (the reserved units reach Redis through the API, docs/api.md).
                await write_changes(cache, [c for c in decoded if c["cause"] != "RESERVATION"])
                if trace is not None:
                    _trace_cache_write(trace, batch.records, decoded, started_ns)
                batch.result = len(decoded)
        yield batch.result
