"""API keys (only their SHA-256 is configured) and per-key token-bucket rate limits."""

from __future__ import annotations

import hashlib
import hmac
import math
import time
from dataclasses import dataclass, field

from pipeline.errors import StockflowError

# Accepted only when STOCKFLOW_ENVIRONMENT=development and no key is configured (the demo).
DEMO_KEY = "demo-key"


class ApiKeyError(StockflowError):
    """The API key settings cannot be used."""


def hash_key(key: str) -> str:
    """The hex SHA-256 of an API key: what settings hold (`name:hash`)."""
    return hashlib.sha256(key.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class ApiKeys:
    """The configured keys by hash; `client(key)` is the name of a key, or None."""

    by_hash: dict[str, str]

    @classmethod
    def from_entries(cls, entries: tuple[str, ...], *, development: bool) -> ApiKeys:
        by_hash: dict[str, str] = {}
        for entry in entries:
            name, sep, digest = entry.partition(":")
            digest = digest.strip().lower()
            if not sep or not name or len(digest) != 64 \
                    or any(c not in "0123456789abcdef" for c in digest):
                raise ApiKeyError(f"STOCKFLOW_API_KEYS entry {name or entry[:8]!r} is not "
                                  "name:<64 hex digits of the key's SHA-256>")
            by_hash[digest] = name
        if not by_hash and development:
            by_hash[hash_key(DEMO_KEY)] = "demo"
        return cls(by_hash)

    def client(self, key: str | None) -> str | None:
        if not key or len(key) > 256:
            return None
        digest = hash_key(key)
        for known, name in self.by_hash.items():
            if hmac.compare_digest(known, digest):
                return name
        return None


@dataclass(slots=True)
class RateLimiter:
    """A token bucket per client: `rate` requests/s on average, bursts of `burst`."""

    rate: float
    burst: int
    buckets: dict[str, tuple[float, float]] = field(default_factory=dict)  # tokens, at

    def take(self, client: str, now: float | None = None) -> float:
        """0 when the request may go; otherwise the seconds until it may (Retry-After)."""
        now = time.monotonic() if now is None else now
        tokens, at = self.buckets.get(client, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - at) * self.rate)
        if tokens >= 1.0:
            self.buckets[client] = (tokens - 1.0, now)
            return 0.0
        self.buckets[client] = (tokens, now)
        return max(0.001, (1.0 - tokens) / self.rate)


def retry_after_header(seconds: float) -> str:
    return str(max(1, math.ceil(seconds)))
