"""Unit tests of the event_id dedup table logic and its TTL."""

from __future__ import annotations

from pipeline.dedup import expired, is_duplicate, seen_key

TTL = 60_000


def test_seen_key_is_scoped_by_supplier() -> None:
    assert seen_key("s1", "e-1") == "s1|e-1"
    assert seen_key("s1", "e-1") != seen_key("s2", "e-1")
    # event_ids may contain '|'; supplier ids never do, so the first '|' splits the key.
    assert seen_key("s1", "a|b").split("|", 1) == ["s1", "a|b"]


def test_unseen_event_is_not_a_duplicate() -> None:
    assert not is_duplicate(None, 1_000, TTL)


def test_seen_event_within_ttl_is_a_duplicate() -> None:
    assert is_duplicate(1_000, 1_000, TTL)
    assert is_duplicate(1_000, 1_000 + TTL - 1, TTL)


def test_entry_older_than_ttl_counts_as_absent_before_any_sweep() -> None:
    assert not is_duplicate(1_000, 1_000 + TTL, TTL)
    assert not is_duplicate(1_000, 1_000 + 10 * TTL, TTL)


def test_entry_from_the_future_is_still_a_duplicate() -> None:
    # A replay driven by record timestamps may check with an earlier clock than it wrote.
    assert is_duplicate(5_000, 1_000, TTL)


def test_sweeper_and_lookup_agree_on_the_boundary() -> None:
    for now in range(1_000 + TTL - 2, 1_000 + TTL + 3):
        assert expired(1_000, now, TTL) is (not is_duplicate(1_000, now, TTL))
    assert not expired(1_000, 1_000 + TTL - 1, TTL)
    assert expired(1_000, 1_000 + TTL, TTL)
