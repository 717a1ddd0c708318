"""The event_id dedup table logic: which (supplier, event_id) was seen, and when it expires.

The table `seen_events` maps `seen_key(supplier_id, event_id)` to the time (epoch ms) the event
was applied. An entry older than the TTL counts as absent even before the sweeper deletes it,
so the TTL is exact whatever the sweep interval. Use the same clock for writing and checking
(the Kafka timestamp of the delta keeps a replay deterministic).
"""

from __future__ import annotations

from pipeline.validate import KEY_SEPARATOR


def seen_key(supplier_id: str, event_id: str) -> str:
    """Table key of one supplier event; unambiguous because a supplier_id never contains '|'."""
    return f"{supplier_id}{KEY_SEPARATOR}{event_id}"


def expired(seen_at_ms: int, now_ms: int, ttl_ms: int) -> bool:
    """True when an entry written at seen_at_ms is at least ttl_ms old: the sweeper deletes it."""
    return now_ms - seen_at_ms >= ttl_ms


def is_duplicate(seen_at_ms: int | None, now_ms: int, ttl_ms: int) -> bool:
    """True when the event was seen and its entry has not expired."""
    return seen_at_ms is not None and not expired(seen_at_ms, now_ms, ttl_ms)
