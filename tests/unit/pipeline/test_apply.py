"""Unit tests of decide(): dedup, staleness, SNAPSHOT/ADJUSTMENT, gaps, clamping, status, no-ops."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from pipeline.apply import (
    APPLIED,
    DENSE_SEQUENCE_LIMIT,
    DUPLICATE,
    NOOP,
    STALE,
    Decision,
    decide,
    is_dense,
)
from schemas.codec import codec_for

NOW = 1_760_000_000_000
TTL = 7 * 24 * 3_600_000

Delta = dict[str, Any]


@pytest.fixture
def make_delta() -> Callable[..., Delta]:
    def make(**overrides: Any) -> Delta:
        delta: Delta = {
            "supplier_id": "acme",
            "sku": "SKU-1",
            "event_id": f"ev-{overrides.get('sequence', 1)}",
            "sequence": 1,
            "kind": "SNAPSHOT",
            "quantity": 10,
            "observed_at": NOW - 2_000,
            "price": "9.99",
            "currency": "EUR",
            "warehouse": None,
            "lead_time_days": 2,
            "status": "ACTIVE",
            "connector": "rest",
            "received_at": NOW - 1_000,
        }
        delta.update(overrides)
        return delta

    return make


def state(quantity: int, version: int, status: str = "ACTIVE", suspect: bool = False,
          lead_time_days: int | None = 2) -> Delta:
    return {
        "lead_time_days": lead_time_days,
        "quantity": quantity,
        "version": version,
        "updated_at": NOW - 60_000,
        "status": status,
        "platform_sku": "P-1",
        "suspect": suspect,
    }


def run(delta: Delta, current: Delta | None, seen_at: int | None = None) -> Decision:
    return decide(
        delta,
        current,
        seen_at,
        platform_sku="P-1",
        now_ms=NOW,
        produced_at_ms=NOW - 100,
        dedup_ttl_ms=TTL,
    )


def assert_encodable(decision: Decision) -> None:
    for name, record in (
        ("StockState", decision.state),
        ("StockUpdate", decision.update),
        ("ResyncRequest", decision.resync),
    ):
        if record is not None:
            codec = codec_for(name)
            decoded = codec.decode(codec.encode(record))
            # The agent may add fields of its own (e.g. the dedup memory of StockState).
            assert {k: decoded[k] for k in record} == record


def test_dense_and_sparse_sequences() -> None:
    assert DENSE_SEQUENCE_LIMIT == 10**12
    assert is_dense(1)
    assert is_dense(10**12 - 1)
    assert not is_dense(10**12)
    assert not is_dense(1_760_000_000_000_000)  # a source timestamp in microseconds


def test_first_snapshot_is_applied(make_delta: Callable[..., Delta]) -> None:
    d = run(make_delta(quantity=10), None)
    assert d.outcome == APPLIED
    assert d.remember_event
    assert d.state == {
        "quantity": 10,
        "version": 1,
        "updated_at": NOW,
        "status": "ACTIVE",
        "platform_sku": "P-1",
        "suspect": False,
        "lead_time_days": 2,
        "recent_ids": b"",
    }
    assert d.update == {
        "platform_sku": "P-1",
        "supplier_id": "acme",
        "sku": "SKU-1",
        "quantity_before": 0,
        "quantity_after": 10,
        "version": 1,
        "status": "ACTIVE",
        "cause": "SNAPSHOT",
        "event_id": "ev-1",
        "observed_at": NOW - 2_000,
        "received_at": NOW - 1_000,
        "produced_at": NOW - 100,
        "price": "9.99",
        "currency": "EUR",
        "lead_time_days": 2,
        "clamped": False,
        "suspect": False,
    }
    assert d.resync is None and not d.gap and not d.clamped
    assert_encodable(d)


def test_duplicate_event_id_within_ttl(make_delta: Callable[..., Delta]) -> None:
    d = run(make_delta(sequence=5), state(3, 4), seen_at=NOW - 1_000)
    assert d == Decision(DUPLICATE)
    assert d.state is None and d.update is None and not d.remember_event


def test_duplicate_after_ttl_falls_back_to_staleness(make_delta: Callable[..., Delta]) -> None:
    # Same event_id, seen long ago: no longer in the dedup window, but its version is old.
    d = run(make_delta(sequence=4), state(3, 4), seen_at=NOW - TTL)
    assert d.outcome == STALE
    # A re-issued event (same event_id, newer sequence) after the TTL is a new event.
    d = run(make_delta(sequence=5, quantity=8), state(3, 4), seen_at=NOW - TTL)
    assert d.outcome == APPLIED


def test_reissued_event_id_with_new_sequence_is_a_duplicate(
    make_delta: Callable[..., Delta],
) -> None:
    delta = make_delta(sequence=9, kind="ADJUSTMENT", quantity=5)
    assert run(delta, state(3, 4), seen_at=NOW - 10).outcome == DUPLICATE


@pytest.mark.parametrize("sequence", [1, 4])
def test_stale_when_sequence_not_above_version(
    make_delta: Callable[..., Delta], sequence: int
) -> None:
    for kind in ("SNAPSHOT", "ADJUSTMENT"):
        d = run(make_delta(sequence=sequence, kind=kind, quantity=1), state(3, 4))
        assert d == Decision(STALE)


def test_snapshot_sets_quantity_and_clears_suspect(make_delta: Callable[..., Delta]) -> None:
    d = run(make_delta(sequence=9, quantity=2), state(30, 4, suspect=True))
    assert d.outcome == APPLIED
    assert d.state is not None and d.state["quantity"] == 2 and not d.state["suspect"]
    assert d.update is not None
    assert (d.update["quantity_before"], d.update["quantity_after"]) == (30, 2)
    assert d.update["version"] == 9
    assert not d.gap and d.resync is None  # a snapshot needs no continuity


def test_adjustment_adds(make_delta: Callable[..., Delta]) -> None:
    d = run(make_delta(sequence=5, kind="ADJUSTMENT", quantity=-3), state(10, 4))
    assert d.outcome == APPLIED
    assert d.state is not None and d.state["quantity"] == 7 and d.state["version"] == 5
    assert d.update is not None and d.update["cause"] == "ADJUSTMENT"
    assert (d.update["quantity_before"], d.update["quantity_after"]) == (10, 7)
    assert not d.gap and not d.clamped and d.resync is None
    assert_encodable(d)


def test_adjustment_below_zero_is_clamped(make_delta: Callable[..., Delta]) -> None:
    d = run(make_delta(sequence=5, kind="ADJUSTMENT", quantity=-15), state(10, 4))
    assert d.outcome == APPLIED
    assert d.clamped
    assert d.state is not None and d.state["quantity"] == 0
    assert d.update is not None and d.update["clamped"] and d.update["quantity_after"] == 0


def test_clamp_that_changes_nothing_is_a_counted_noop(make_delta: Callable[..., Delta]) -> None:
    d = run(make_delta(sequence=5, kind="ADJUSTMENT", quantity=-1), state(0, 4))
    assert d.outcome == NOOP and d.clamped and d.update is None


def test_dense_gap_applies_marks_suspect_and_requests_resync(
    make_delta: Callable[..., Delta],
) -> None:
    d = run(make_delta(sequence=7, kind="ADJUSTMENT", quantity=2, event_id="ev-7"), state(10, 4))
    assert d.outcome == APPLIED
    assert d.gap
    assert d.state is not None and d.state["quantity"] == 12 and d.state["suspect"]
    assert d.update is not None and d.update["suspect"]
    assert d.resync == {
        "supplier_id": "acme",
        "sku": "SKU-1",
        "expected_sequence": 5,
        "received_sequence": 7,
        "event_id": "ev-7",
        "requested_at": NOW,
    }
    assert_encodable(d)


def test_suspect_carries_over_until_a_snapshot(make_delta: Callable[..., Delta]) -> None:
    d = run(make_delta(sequence=5, kind="ADJUSTMENT", quantity=1), state(10, 4, suspect=True))
    assert d.state is not None and d.state["suspect"] and not d.gap and d.resync is None


def test_sparse_sequences_have_no_gaps(make_delta: Callable[..., Delta]) -> None:
    t0 = 1_760_000_000_000_000
    d = run(make_delta(sequence=t0 + 5_000_000, kind="ADJUSTMENT", quantity=2), state(10, t0))
    assert d.outcome == APPLIED
    assert not d.gap and d.resync is None
    assert d.state is not None and not d.state["suspect"] and d.state["quantity"] == 12


def test_adjustment_without_state_starts_from_zero_and_is_suspect(
    make_delta: Callable[..., Delta],
) -> None:
    d = run(make_delta(sequence=3, kind="ADJUSTMENT", quantity=4, event_id="ev-3"), None)
    assert d.outcome == APPLIED
    assert d.state is not None and d.state["quantity"] == 4 and d.state["suspect"]
    assert d.resync is not None
    assert (d.resync["expected_sequence"], d.resync["received_sequence"]) == (1, 3)
    assert not d.gap  # no baseline is not a gap in the sequence
    d = run(make_delta(sequence=3, kind="ADJUSTMENT", quantity=-4, lead_time_days=None), None)
    assert d.outcome == NOOP and d.clamped and d.resync is not None


def test_unchanged_published_quantity_is_a_noop_that_advances_the_version(
    make_delta: Callable[..., Delta],
) -> None:
    d = run(make_delta(sequence=8, quantity=10), state(10, 4, suspect=True))
    assert d.outcome == NOOP
    assert d.update is None
    assert d.remember_event
    assert d.state is not None
    assert d.state["version"] == 8 and d.state["updated_at"] == NOW and not d.state["suspect"]
    # So an older event that arrives later is stale against the advanced version.
    assert run(make_delta(sequence=6, quantity=99), d.state).outcome == STALE


def test_zero_adjustment_is_a_noop(make_delta: Callable[..., Delta]) -> None:
    d = run(make_delta(sequence=5, kind="ADJUSTMENT", quantity=0), state(10, 4))
    assert d.outcome == NOOP and d.update is None


def test_first_snapshot_of_zero_is_a_noop(make_delta: Callable[..., Delta]) -> None:
    d = run(make_delta(quantity=0, lead_time_days=None), None)
    assert d.outcome == NOOP and d.update is None
    assert d.state is not None and d.state["version"] == 1


def test_a_lead_time_change_alone_is_applied(make_delta: Callable[..., Delta]) -> None:
    d = run(make_delta(sequence=5, quantity=10, lead_time_days=7), state(10, 4))
    assert d.outcome == APPLIED
    assert d.update is not None
    assert (d.update["quantity_before"], d.update["quantity_after"]) == (10, 10)
    assert d.update["lead_time_days"] == 7
    assert d.state is not None and d.state["lead_time_days"] == 7
    # A delta that carries no lead time clears it: also a change.
    d = run(make_delta(sequence=5, quantity=10, lead_time_days=None), state(10, 4))
    assert d.outcome == APPLIED
    # A state written before the field existed decodes with none.
    d = run(make_delta(sequence=5, quantity=10, lead_time_days=None),
            state(10, 4, lead_time_days=None))
    assert d.outcome == NOOP


def test_discontinued_publishes_zero(make_delta: Callable[..., Delta]) -> None:
    d = run(make_delta(sequence=5, quantity=10, status="DISCONTINUED"), state(10, 4))
    assert d.outcome == APPLIED
    assert d.state is not None and d.state["quantity"] == 10 and d.state["status"] == "DISCONTINUED"
    assert d.update is not None
    assert d.update["cause"] == "DISCONTINUED"
    assert (d.update["quantity_before"], d.update["quantity_after"]) == (10, 0)
    assert d.update["status"] == "DISCONTINUED"


def test_changes_while_discontinued_publish_nothing(make_delta: Callable[..., Delta]) -> None:
    current = state(10, 4, status="DISCONTINUED")
    d = run(make_delta(sequence=5, kind="ADJUSTMENT", quantity=5, status="DISCONTINUED"), current)
    assert d.outcome == NOOP
    assert d.state is not None and d.state["quantity"] == 15


def test_reactivation(make_delta: Callable[..., Delta]) -> None:
    current = state(10, 4, status="DISCONTINUED")
    d = run(make_delta(sequence=5, kind="ADJUSTMENT", quantity=2), current)
    assert d.outcome == APPLIED
    assert d.update is not None
    assert d.update["cause"] == "REACTIVATED"
    assert (d.update["quantity_before"], d.update["quantity_after"]) == (0, 12)
    assert d.update["status"] == "ACTIVE"


def test_reactivation_with_zero_stock_is_still_a_status_change(
    make_delta: Callable[..., Delta],
) -> None:
    d = run(make_delta(sequence=5, quantity=0), state(0, 4, status="DISCONTINUED"))
    assert d.outcome == APPLIED
    assert d.update is not None and d.update["cause"] == "REACTIVATED"


def test_first_event_discontinued_is_a_status_change(make_delta: Callable[..., Delta]) -> None:
    d = run(make_delta(quantity=3, status="DISCONTINUED"), None)
    assert d.outcome == APPLIED
    assert d.update is not None
    assert d.update["cause"] == "DISCONTINUED" and d.update["quantity_after"] == 0


def test_decide_does_not_mutate_its_inputs(make_delta: Callable[..., Delta]) -> None:
    delta = make_delta(sequence=7, kind="ADJUSTMENT", quantity=-50)
    current = state(10, 4)
    delta_copy, state_copy = dict(delta), dict(current)
    run(delta, current)
    assert delta == delta_copy and current == state_copy


def test_state_without_suspect_field_is_read_as_not_suspect(
    make_delta: Callable[..., Delta],
) -> None:
    current = state(10, 4)
    del current["suspect"]  # written by an older StockState schema
    d = run(make_delta(sequence=5, kind="ADJUSTMENT", quantity=1), current)
    assert d.state is not None and d.state["suspect"] is False
