"""Read-through of one platform SKU's availability: Redis first, Cassandra on a miss, then fill."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pipeline.settings import Settings


def _rows_of(availability: dict[str, Any] | None) -> list[dict[str, Any]]:
    """availability_by_sku rows back from connectors.cassandra.read's summary of them."""
    if availability is None:
        return []
    return [{"platform_sku": availability["platform_sku"], "supplier_id": sid, **entry}
            for sid, entry in availability["suppliers"].items()]


def cached_inventory_get(settings: Settings, platform_sku: str,
                         keyspace: str | None = None) -> dict[str, Any] | None:
    """`stockflow inventory get SKU --cache`: Redis first, Cassandra on a miss, then fill.

    Returns the availability dict (schemas/availability.avsc shape) with `source` ("redis" or
    "cassandra") and `complete`, or None when no supplier has the SKU. Cassandra is only
    connected on a miss.
    """
    from connectors.redis.cache import RedisCache, read_availability

    async def run() -> dict[str, Any] | None:
        cluster = None
        session = None

        async def read_cassandra(sku: str) -> list[dict[str, Any]]:
            nonlocal cluster, session
            from connectors.cassandra.cluster import ClusterConfig, connect
            from connectors.cassandra.read import read_availability as read_rows

            if session is None:
                cluster, session = await asyncio.to_thread(
                    connect, ClusterConfig.from_settings(settings))
            summary = await asyncio.to_thread(read_rows, session, sku,
                                              keyspace or settings.cassandra_keyspace)
            return _rows_of(summary)

        cache = RedisCache.from_settings(settings)
        try:
            return await read_availability(cache, read_cassandra, platform_sku)
        finally:
            await cache.close()
            if cluster is not None:
                cluster.shutdown()

    return asyncio.run(run())
