"""LogFold against the worker's own helpers and rules (no broker)."""

from __future__ import annotations

from connectors.logtools.fold import LogFold, event_time_ms
from connectors.logtools.log_reader import parse_position
from connectors.logtools.runner import ReplayWindow, coalesce_updates
from schemas.codec import codec_for

TTL = 7 * 24 * 3600 * 1000


def _delta(seq: int, kind: str, qty: int, ts: int, sku: str = "k1", event_id: str | None = None,
           supplier: str = "s1") -> tuple[bytes, bytes, int]:
    record = {"supplier_id": supplier, "sku": sku, "event_id": event_id or f"e{seq}",
              "sequence": seq, "kind": kind, "quantity": qty, "observed_at": ts - 10,
              "price": None, "currency": None, "warehouse": None, "lead_time_days": None,
              "status": "ACTIVE", "connector": "t", "received_at": ts - 5}
    return f"{supplier}|{sku}".encode(), codec_for("SupplierDelta").encode(record), ts


def test_event_time_is_the_kafka_timestamp() -> None:
    for ts in (1_700_000_000_001, 1_795_737_094_041, 1_699_999_999_999):
        assert event_time_ms(ts, lambda: 0) == ts
    assert event_time_ms(0, lambda: 42) == 42


def test_fold_and_worker_agent_decide_alike() -> None:
    """The replay fold and the worker's agent are drivers of the same step."""
    import inspect

    from topologies import process_deltas

    src = inspect.getsource(process_deltas) + inspect.getsource(LogFold)
    assert src.count("apply_deltas(") >= 2 and "decide(" not in src


def test_fold_applies_drops_and_changes_like_the_worker() -> None:
    fold = LogFold(dedup_ttl_ms=TTL)
    now = 1_800_000_000_000
    steps = [fold.apply(*_delta(1, "SNAPSHOT", 10, now)),
             fold.apply(*_delta(2, "ADJUSTMENT", -3, now + 1)),
             fold.apply(*_delta(2, "ADJUSTMENT", -3, now + 2)),  # duplicate event id
             fold.apply(*_delta(1, "SNAPSHOT", 99, now + 3, event_id="x")),  # stale
             fold.apply(*_delta(3, "SNAPSHOT", 4, now + 4)),
             fold.apply(b"s1|k1", b"garbage", now + 5)]
    assert [s.update is not None for s in steps] == [True, True, False, False, True, False]
    assert (fold.stats.duplicate, fold.stats.stale, fold.stats.invalid) == (1, 1, 1)
    assert fold.stock[b"s1|k1"]["quantity"] == 4
    assert fold.availability["k1"]["total"] == 4
    assert fold.expected_rows("k1")["s1"]["quantity"] == 4


def test_window_and_coalescing() -> None:
    window = ReplayWindow({0: 5}, {0: 10}, suppliers=frozenset({"s1"}))
    update = {"supplier_id": "s1", "sku": "a", "platform_sku": "A", "version": 1}
    assert window.selects(0, 5, update) and not window.selects(0, 10, update)
    assert not window.selects(0, 6, {**update, "supplier_id": "s2"})
    assert not window.selects(1, 6, update)
    assert coalesce_updates([update, {**update, "version": 3}, {**update, "version": 2}]) == \
        [{**update, "version": 3}]


def test_positions() -> None:
    assert parse_position("beginning").kind == "beginning"
    assert parse_position("0:5,2:7").offsets == {0: 5, 2: 7}
    assert parse_position("2025-01-01T00:00:00Z").time_ms == 1_735_689_600_000
    assert parse_position("2025-01-01T00:00:00").time_ms == 1_735_689_600_000
    assert parse_position("1735689600000").time_ms == 1_735_689_600_000
