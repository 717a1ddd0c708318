"""Unit tests of the dedup memory (hashed, packed event_ids per key) and its TTL."""

from __future__ import annotations

from pipeline.dedup import (
    ENTRY_SIZE,
    RECENT_EVENTS_MAX,
    entries,
    event_hash,
    expired,
    is_duplicate,
    remember,
    seen_at,
)

TTL = 60_000


def test_memory_remembers_and_finds_events() -> None:
    recent = b""
    for i in range(3):
        recent = remember(recent, event_hash(f"e{i}"), 1_000 + i, TTL)
    assert seen_at(recent, event_hash("e1")) == 1_001
    assert seen_at(recent, event_hash("nope")) is None
    assert len(recent) == 3 * ENTRY_SIZE


def test_memory_is_bounded_and_keeps_the_newest() -> None:
    recent = b""
    for i in range(RECENT_EVENTS_MAX + 5):
        recent = remember(recent, event_hash(f"e{i}"), 1_000 + i, TTL)
    assert len(recent) == RECENT_EVENTS_MAX * ENTRY_SIZE
    assert seen_at(recent, event_hash("e0")) is None
    assert seen_at(recent, event_hash(f"e{RECENT_EVENTS_MAX + 4}")) == 1_000 + RECENT_EVENTS_MAX + 4


def test_expired_entries_are_pruned_on_write_and_a_repeat_moves_last() -> None:
    recent = remember(b"", event_hash("old"), 1_000, TTL)
    recent = remember(recent, event_hash("a"), 2_000, TTL)
    recent = remember(recent, event_hash("a"), 1_000 + TTL, TTL)
    assert [h for h, _ in entries(recent)] == [event_hash("a")]


def test_hash_is_stable_across_processes() -> None:
    # Not Python's hash(): a restarted worker and a replay must find the same entries.
    assert event_hash("e-1") == 0x9F0DF14B49867331  # BLAKE2b-64 of "e-1", little-endian
    assert event_hash("e-1") != event_hash("e-2")


def test_unseen_event_is_not_a_duplicate() -> None:
    assert not is_duplicate(None, 1_000, TTL)


def test_seen_event_within_ttl_is_a_duplicate() -> None:
    assert is_duplicate(1_000, 1_000, TTL)
    assert is_duplicate(1_000, 1_000 + TTL - 1, TTL)


def test_entry_older_than_ttl_counts_as_absent_before_it_is_pruned() -> None:
    assert not is_duplicate(1_000, 1_000 + TTL, TTL)
    assert not is_duplicate(1_000, 1_000 + 10 * TTL, TTL)


def test_entry_from_the_future_is_still_a_duplicate() -> None:
    # A replay driven by record timestamps may check with an earlier clock than it wrote.
    assert is_duplicate(5_000, 1_000, TTL)


def test_pruning_and_lookup_agree_on_the_boundary() -> None:
    for now in range(1_000 + TTL - 2, 1_000 + TTL + 3):
        assert expired(1_000, now, TTL) is (not is_duplicate(1_000, now, TTL))
    assert not expired(1_000, 1_000 + TTL - 1, TTL)
    assert expired(1_000, 1_000 + TTL, TTL)


def _remember_by_entries(recent: bytes, digest: int, now_ms: int, ttl_ms: int,
                         limit: int = RECENT_EVENTS_MAX) -> bytes:
    # The rule entry by entry, as remember() states it: the reference for its fast path.
    kept = [(h, t) for h, t in entries(recent) if now_ms - t < ttl_ms and h != digest]
    kept = kept[max(0, len(kept) - limit + 1):]
    return b"".join(h.to_bytes(8, "little") + t.to_bytes(8, "little")
                    for h, t in [*kept, (digest, now_ms)])


def test_remember_keeps_the_rule_on_every_path() -> None:
    # Full, partly expired, repeated and out-of-order memories, against the rule itself.
    import random

    rng = random.Random(5)
    digests = [event_hash(f"e{i}") for i in range(12)]
    for _ in range(3000):
        digest, now = rng.choice(digests), rng.randrange(TTL, 4 * TTL)
        # Times on both sides of the TTL's boundary, and anywhere.
        times = (now - TTL, now - TTL + 1, rng.randrange(0, 3 * TTL))
        recent = b"".join(d.to_bytes(8, "little") + rng.choice(times).to_bytes(8, "little")
                          for d in rng.sample(digests, rng.randrange(0, RECENT_EVENTS_MAX + 1)))
        limit = rng.choice((1, 2, RECENT_EVENTS_MAX))
        assert remember(recent, digest, now, TTL, limit) == \
            _remember_by_entries(recent, digest, now, TTL, limit), (recent.hex(), digest, now)
