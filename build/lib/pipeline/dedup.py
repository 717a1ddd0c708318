"""The dedup memory of one (supplier, sku): the newest accepted event_ids, hashed and packed.

A StockState carries `recent_ids`: up to RECENT_EVENTS_MAX entries of 16 bytes, the 8-byte
BLAKE2b digest of an accepted event_id and the time (epoch ms, the delta's Kafka timestamp) it
was first accepted, little-endian, oldest first. The memory only decides the *reason* a
redelivery is dropped: any redelivery of an accepted event carries a sequence at or below the
state's version and is rejected as stale by the version check anyway. So the memory is small
(at most 128 bytes a key) and never decoded into objects; an entry older than the TTL counts
as absent and is pruned on the next write. Use the same clock for writing and checking (the
Kafka timestamp of the delta keeps a replay deterministic).
"""

from __future__ import annotations

import hashlib
import struct

RECENT_EVENTS_MAX = 8
_ENTRY = struct.Struct("<QQ")
ENTRY_SIZE = _ENTRY.size
# A whole memory of n entries in one unpack, (digest, ms, digest, ms, ...), for n <= the max.
_MEMORY = tuple(struct.Struct("<" + "QQ" * n) for n in range(RECENT_EVENTS_MAX + 1))


def event_hash(event_id: str) -> int:
    """The 64-bit digest of an event_id that the memory stores (collisions: 2^-64 a pair)."""
    digest = hashlib.blake2b(event_id.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "little")


def expired(seen_at_ms: int, now_ms: int, ttl_ms: int) -> bool:
    """True when an entry written at seen_at_ms is at least ttl_ms old."""
    return now_ms - seen_at_ms >= ttl_ms


def is_duplicate(seen_at_ms: int | None, now_ms: int, ttl_ms: int) -> bool:
    """True when the event was seen and its entry has not expired."""
    return seen_at_ms is not None and not expired(seen_at_ms, now_ms, ttl_ms)


def seen_at(recent: bytes, digest: int) -> int | None:
    """When the event with this digest was accepted, or None if the memory lacks it."""
    for h, t in _ENTRY.iter_unpack(recent):
        if h == digest:
            return t
    return None


def remember(recent: bytes, digest: int, now_ms: int, ttl_ms: int,
             limit: int = RECENT_EVENTS_MAX) -> bytes:
    """The memory after accepting the event: expired entries and the oldest beyond `limit`
    dropped, the new entry last."""
    if not recent:  # the common case of a key's first event
        return _ENTRY.pack(digest, now_ms)
    oldest = now_ms - ttl_ms  # an entry at or before this has expired
    count, rest = divmod(len(recent), ENTRY_SIZE)
    if count < len(_MEMORY) and not rest:
        flat = _MEMORY[count].unpack(recent)
        if min(flat[1::2]) > oldest and digest not in flat[0::2]:
            # The common case of a key's later events: nothing to prune, so the bytes are
            # kept as they are, less the oldest entries beyond the limit (about half the
            # cost of unpacking and re-packing every entry).
            return recent[max(0, count + 1 - limit) * ENTRY_SIZE:] + _ENTRY.pack(digest, now_ms)
    kept = [e for e in _ENTRY.iter_unpack(recent) if e[1] > oldest and e[0] != digest]
    if len(kept) >= limit:
        kept = kept[len(kept) - limit + 1:]
    kept.append((digest, now_ms))
    return b"".join([_ENTRY.pack(h, t) for h, t in kept])


def entries(recent: bytes) -> list[tuple[int, int]]:
    """The (digest, first seen ms) entries of a memory, oldest first (for tools and tests)."""
    return [_ENTRY.unpack_from(recent, i)
            for i in range(0, len(recent) - ENTRY_SIZE + 1, ENTRY_SIZE)]
