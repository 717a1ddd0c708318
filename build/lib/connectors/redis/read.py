"""Bulk reads of the availability cache: SCAN + pipelined HGETALL over a small fixed pool."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import redis
from redis.exceptions import RedisError

from connectors.redis.cache import CacheError, availability_key, parse_hash, platform_sku_of

# One connection does the work (the reads are sequential); the second is slack for a
# connection being replaced. A blocking pool waits for a free connection instead of raising
# MaxConnectionsError, so no caller can open more than this.
DEFAULT_MAX_CONNECTIONS = 2


class AvailabilityHashReader:
    """Reads availability hashes in batches: every hash under the prefix, or given SKUs.

    Each batch is one pipeline of HGETALL (no transaction) on one pooled connection, so a
    million keys cost ~2,000 round trips and never more than `max_connections` sockets.
    """

    def __init__(self, url: str, key_prefix: str, *, batch: int = 500,
                 max_connections: int = DEFAULT_MAX_CONNECTIONS,
                 socket_timeout_s: float = 30.0, client_name: str | None = None) -> None:
        self.key_prefix = key_prefix
        self.batch = batch
        self.pool = redis.BlockingConnectionPool.from_url(
            url, max_connections=max_connections, timeout=socket_timeout_s,
            socket_timeout=socket_timeout_s, socket_connect_timeout=socket_timeout_s,
            decode_responses=True, client_name=client_name)
        self._redis = redis.Redis(connection_pool=self.pool)

    def close(self) -> None:
        self.pool.disconnect()

    def __enter__(self) -> AvailabilityHashReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def connections_opened(self) -> int:
        """Connections this reader's pool created so far (at most max_connections)."""
        return len(self.pool._connections)  # the pool keeps every connection it made

    def scan(self) -> Iterator[list[tuple[str, dict[str, Any] | None]]]:
        """Batches of (platform SKU, parsed hash) for every key under the prefix.

        SCAN may return a key twice and misses keys created while it runs (its guarantee
        covers keys present from start to end); a hash deleted between SCAN and HGETALL
        comes back as None.
        """
        cursor = 0
        pattern = f"{self.key_prefix}avail:*"
        while True:
            try:
                next_cursor, found = self._redis.scan(cursor=cursor, match=pattern,
                                                      count=self.batch)
            except RedisError as exc:
                raise CacheError(f"redis scan failed: {type(exc).__name__}: {exc}") from exc
            keys = [str(k) for k in found]  # decode_responses=True: already str
            if keys:
                skus = [platform_sku_of(self.key_prefix, k) for k in keys]
                yield list(zip(skus, self._hgetall(keys), strict=True))
            cursor = int(next_cursor)
            if cursor == 0:
                return

    def read(self, skus: Iterable[str]) -> Iterator[list[tuple[str, dict[str, Any] | None]]]:
        """Batches of (platform SKU, parsed hash or None when absent) for the given SKUs."""
        chunk: list[str] = []
        for sku in skus:
            chunk.append(sku)
            if len(chunk) >= self.batch:
                yield list(zip(chunk, self._hgetall([availability_key(self.key_prefix, s)
                                                     for s in chunk]), strict=True))
                chunk = []
        if chunk:
            yield list(zip(chunk, self._hgetall([availability_key(self.key_prefix, s)
                                                 for s in chunk]), strict=True))

    def _hgetall(self, keys: list[str]) -> list[dict[str, Any] | None]:
        try:
            with self._redis.pipeline(transaction=False) as pipe:
                for key in keys:
                    pipe.hgetall(key)
                results = pipe.execute()
        except RedisError as exc:
            raise CacheError(f"redis read failed: {type(exc).__name__}: {exc}") from exc
        return [parse_hash(platform_sku_of(self.key_prefix, k), fields) if fields else None
                for k, fields in zip(keys, results, strict=True)]
