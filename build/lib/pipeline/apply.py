"""Apply one validated SupplierDelta to its (supplier, sku) StockState: dedup, staleness, apply.

Sequences. `sequence` is the per-(supplier, sku) version. Values below `DENSE_SEQUENCE_LIMIT`
(10**12) are a supplier's own counter: dense, each event is the previous one plus one, so a
jump of more than one on an ADJUSTMENT is a gap (an adjustment was lost). Values at or above
it are the source timestamp in microseconds of a supplier that has no counter (10**12 us is
1970-01-12, so every real timestamp is above it): sparse, gaps cannot be detected.

Rules, in order:
1. `event_id` seen within the dedup TTL -> "duplicate" (nothing changes).
2. `sequence <= state.version` -> "stale" (nothing changes).
3. SNAPSHOT sets the quantity and clears `suspect`. ADJUSTMENT adds its signed quantity; with
   no prior state it starts from 0, is `suspect` and asks for a resync; on a dense gap it
   applies, sets `suspect` and asks for a resync (expected version+1). A result below 0 is
   clamped to 0. `suspect` otherwise carries over until a SNAPSHOT.
4. The state stores the supplier's quantity; the *published* quantity is 0 while the status is
   DISCONTINUED. A missing state publishes (0, ACTIVE, no lead time). The lead time is the
   newest accepted delta's `lead_time_days` (null when it carries none).
5. If the published (quantity, status, lead time) is unchanged the outcome is "noop": the
   state still advances (version, updated_at) so older events stay stale, but no StockUpdate
   is emitted. Otherwise "applied" with one StockUpdate. Both remember the event_id.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from pipeline.dedup import is_duplicate

DENSE_SEQUENCE_LIMIT = 10**12

APPLIED = "applied"
NOOP = "noop"
DUPLICATE = "duplicate"
STALE = "stale"
OUTCOMES: tuple[str, ...] = (APPLIED, NOOP, DUPLICATE, STALE)

ACTIVE = "ACTIVE"
DISCONTINUED = "DISCONTINUED"

# The sequence a supplier's first event is expected to carry: the `expected_sequence` of the
# resync requested when an ADJUSTMENT arrives for a (supplier, sku) with no state.
FIRST_SEQUENCE = 1


class Decision(NamedTuple):
    """What applying one delta does: the new state, what to emit, and what to count.

    A NamedTuple (immutable, one per event): a frozen dataclass's __init__ costs ~2 us."""

    outcome: str
    state: dict[str, Any] | None = None  # new StockState; None when the table is untouched
    update: dict[str, Any] | None = None  # StockUpdate, only when outcome is "applied"
    resync: dict[str, Any] | None = None  # ResyncRequest for inventory.resync
    gap: bool = False  # a dense sequence skipped at least one ADJUSTMENT
    clamped: bool = False  # the quantity would have gone below zero
    remember_event: bool = False  # store the event_id in the dedup table (applied, noop)


_DUPLICATE = Decision(DUPLICATE)
_STALE = Decision(STALE)


def is_dense(sequence: int) -> bool:
    """True for a supplier counter (gaps detectable), False for a microsecond timestamp."""
    return sequence < DENSE_SEQUENCE_LIMIT


def published_quantity(quantity: int, status: str) -> int:
    """The quantity the platform may sell: 0 while the supplier's SKU is discontinued."""
    return 0 if status == DISCONTINUED else quantity


def _resync(delta: dict[str, Any], expected: int, now_ms: int) -> dict[str, Any]:
    return {
        "supplier_id": delta["supplier_id"],
        "sku": delta["sku"],
        "expected_sequence": expected,
        "received_sequence": delta["sequence"],
        "event_id": delta["event_id"],
        "requested_at": now_ms,
    }


def _cause(kind: str, status_before: str, status_after: str) -> str:
    if status_after == DISCONTINUED and status_before != DISCONTINUED:
        return DISCONTINUED
    if status_after == ACTIVE and status_before == DISCONTINUED:
        return "REACTIVATED"
    return kind


def decide(
    delta: dict[str, Any],
    state: dict[str, Any] | None,
    seen_at_ms: int | None,
    *,
    platform_sku: str,
    now_ms: int,
    produced_at_ms: int,
    dedup_ttl_ms: int,
) -> Decision:
    """Decide what one validated delta does to its (supplier, sku) state; see the module rules."""
    if is_duplicate(seen_at_ms, now_ms, dedup_ttl_ms):
        return _DUPLICATE
    sequence: int = delta["sequence"]
    if state is not None and sequence <= state["version"]:
        return _STALE

    if state is None:
        quantity_before, status_before, suspect_before = 0, ACTIVE, False
        lead_before = None
    else:
        quantity_before, status_before = state["quantity"], state["status"]
        suspect_before = state.get("suspect", False)
        lead_before = state.get("lead_time_days")

    resync = None
    gap = False
    if delta["kind"] == "SNAPSHOT":
        quantity = delta["quantity"]
        suspect = False
    elif state is None:
        # No baseline to adjust: start from 0 and ask the supplier for a snapshot.
        quantity = delta["quantity"]
        suspect = True
        resync = _resync(delta, FIRST_SEQUENCE, now_ms)
    else:
        quantity = quantity_before + delta["quantity"]
        suspect = suspect_before
        if is_dense(sequence) and sequence > state["version"] + 1:
            gap = True
            suspect = True
            resync = _resync(delta, state["version"] + 1, now_ms)

    clamped = quantity < 0
    if clamped:
        quantity = 0

    status: str = delta["status"]
    new_state = {
        "quantity": quantity,
        "version": sequence,
        "updated_at": now_ms,
        "status": status,
        "platform_sku": platform_sku,
        "suspect": suspect,
        "lead_time_days": delta.get("lead_time_days"),
        # The dedup memory as it was; the step adds this event to it (pipeline/dedup.py).
        "recent_ids": state.get("recent_ids", b"") if state is not None else b"",
    }
    published_before = published_quantity(quantity_before, status_before)
    published_after = published_quantity(quantity, status)
    if (published_before == published_after and status_before == status
            and lead_before == new_state["lead_time_days"]):
        return Decision(
            NOOP, state=new_state, resync=resync, gap=gap, clamped=clamped, remember_event=True
        )

    update = {
        "platform_sku": platform_sku,
        "supplier_id": delta["supplier_id"],
        "sku": delta["sku"],
        "quantity_before": published_before,
        "quantity_after": published_after,
        "version": sequence,
        "status": status,
        "cause": _cause(delta["kind"], status_before, status),
        "event_id": delta["event_id"],
        "observed_at": delta["observed_at"],
        "received_at": delta["received_at"],
        "produced_at": produced_at_ms,
        "price": delta.get("price"),
        "currency": delta.get("currency"),
        "lead_time_days": delta.get("lead_time_days"),
        "clamped": clamped,
        "suspect": suspect,
    }
    return Decision(
        APPLIED,
        state=new_state,
        update=update,
        resync=resync,
        gap=gap,
        clamped=clamped,
        remember_event=True,
    )
