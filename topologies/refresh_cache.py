"""Agent refresh_cache: inventory.changes -> Redis, version-guarded writes, one pipeline a batch."""

from __future__ import annotations

import time
from typing import Any, Protocol

from pipeline import metrics
from pipeline.app import app, settings
from pipeline.log import get_logger
from topologies.aggregate import changes_topic
from topologies.batching import take_events

log = get_logger(__name__)


class ChangeCache(Protocol):
    """What the agent needs of a cache writer."""

    async def apply_batch(self, changes: list[dict[str, Any]]) -> int: ...

    async def close(self) -> None: ...


_cache: ChangeCache | None = None


def set_cache(cache: ChangeCache | None) -> None:
    """Choose the cache writer (tests pass an in-memory one); None means Redis from settings."""
    global _cache
    _cache = cache


def _get_cache() -> ChangeCache | None:
    global _cache
    if _cache is None and settings.cache_enabled:
        from connectors.redis_cache import RedisCache

        _cache = RedisCache.from_settings(settings)
    return _cache


@app.agent(changes_topic)
async def refresh_cache(stream: Any) -> Any:
    """Write each batch of changes to Redis; returns only once Redis has them."""
    async for events in take_events(stream, settings.cache_batch_size,
                                    settings.cache_batch_within_s):
        changes = [event.value for event in events]
        cache = _get_cache()
        if cache is None:
            yield 0
            continue
        t0 = time.perf_counter()
        await cache.apply_batch(list(changes))
        metrics.SINK_LATENCY.labels("redis").observe(time.perf_counter() - t0)
        metrics.SINK_BATCH_SIZE.labels("redis").observe(len(changes))
        metrics.EVENTS.labels("cache", "written").inc(len(changes))
        yield len(changes)
