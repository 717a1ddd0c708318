"""The per-key rules of stockflow as two pure steps, the shape of a stateful map.

`apply_deltas(state, records of one supplier_id|sku key in log order, context, outputs)`
decodes, validates, dedups and applies each raw record of inventory.deltas and returns the
key's new StockState; `fold_updates(availability, StockUpdates of one platform SKU, now,
outputs)` folds them into the availability and returns it. What they emit (StockUpdates,
resync requests, dead letters, InventoryChanges, outcome counts) is appended to `outputs`, so
a driver can run a whole batch of keys into one `StepOutputs` and send it once.

The worker's agents (topologies/), the replay fold (connectors/logtools/fold.py), `stockflow
trace` and the property test are all drivers of these two functions: the rule exists once.
Nothing here does I/O or reads a clock: time is the delta's Kafka timestamp (so a replay makes
the decisions the first run made), or the `wall_clock_ms` the driver passes for a record that
has none.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from pipeline.aggregate import fold_update
from pipeline.apply import APPLIED, DUPLICATE, NOOP, STALE, decide
from pipeline.dedup import event_hash, remember, seen_at
from pipeline.errors import SchemaError, ValidationError
from pipeline.validate import (
    DECODE_ERROR,
    best_effort_ids,
    dead_letter,
    dead_letter_key,
    validate_delta,
)
from schemas.codec import codec_for

INVALID = "invalid"


class RawRecord(NamedTuple):
    """One record of inventory.deltas as the log holds it.

    A NamedTuple, immutable like a frozen dataclass: one is built per record, and a frozen
    dataclass's __init__ (object.__setattr__ per field) cost ten times as much."""

    key: bytes | None
    value: bytes | None
    timestamp_ms: int  # the Kafka timestamp (<= 0: none)
    topic: str
    partition: int
    offset: int


@dataclass(frozen=True, slots=True)
class StepContext:
    """What the rules need besides the state: the catalog, the dedup TTL and a fallback clock."""

    platform_sku: Callable[[str, str], str]  # (supplier_id, sku) -> platform SKU
    dedup_ttl_ms: int
    wall_clock_ms: Callable[[], int]


@dataclass(slots=True)
class StepOutputs:
    """Everything a batch of steps emits, in the order the records were processed."""

    updates: list[dict[str, Any]] = field(default_factory=list)  # StockUpdate
    resyncs: list[tuple[bytes, dict[str, Any]]] = field(default_factory=list)
    dead_letters: list[tuple[bytes | None, dict[str, Any]]] = field(default_factory=list)
    changes: list[dict[str, Any]] = field(default_factory=list)  # InventoryChange
    outcomes: dict[str, int] = field(default_factory=dict)  # applied/noop/duplicate/stale/...
    invalid_reasons: dict[str, int] = field(default_factory=dict)
    gaps: dict[str, int] = field(default_factory=dict)  # resyncs requested, per supplier_id
    dense_gaps: int = 0  # adjustments that skipped a dense sequence (a subset of the resyncs)
    clamped: dict[str, int] = field(default_factory=dict)  # per supplier_id
    suppliers_seen: set[str] = field(default_factory=set)
    # Per record (for trace and tests): (offset, outcome, update or None).
    trail: list[tuple[int, str, dict[str, Any] | None]] | None = None
    unchanged_updates: int = 0  # StockUpdates the availability already had

    def count(self, outcome: str, n: int = 1) -> None:
        self.outcomes[outcome] = self.outcomes.get(outcome, 0) + n


_DELTA = codec_for("SupplierDelta")


def event_time_ms(timestamp_ms: int, wall_clock_ms: Callable[[], int]) -> int:
    """The clock of a delta: its Kafka timestamp in ms; the wall clock only when it has none."""
    return timestamp_ms if timestamp_ms > 0 else wall_clock_ms()


def apply_deltas(state: dict[str, Any] | None, records: Iterable[RawRecord],
                 ctx: StepContext, out: StepOutputs) -> dict[str, Any] | None:
    """Apply the raw records of one key, in order, to its StockState; return the new state.

    The returned object is the input `state` itself when no record changed it.
    """
    for rec in records:
        now = event_time_ms(rec.timestamp_ms, ctx.wall_clock_ms)
        record: Any = None
        try:
            record = _DELTA.decode(rec.value or b"")
            delta = validate_delta(record, key=rec.key, now_ms=now)
        except SchemaError as exc:
            _dead_letter(out, rec, DECODE_ERROR, str(exc), now, None)
            continue
        except ValidationError as exc:
            _dead_letter(out, rec, exc.code, exc.message, now, record)
            continue
        supplier, sku = delta["supplier_id"], delta["sku"]
        digest = event_hash(delta["event_id"])
        recent: bytes = state.get("recent_ids", b"") if state is not None else b""
        decision = decide(
            delta, state, seen_at(recent, digest) if recent else None,
            platform_sku=ctx.platform_sku(supplier, sku), now_ms=now, produced_at_ms=now,
            dedup_ttl_ms=ctx.dedup_ttl_ms,
        )
        outcome = decision.outcome
        out.count(outcome)
        if outcome is DUPLICATE or outcome is STALE:
            if out.trail is not None:
                out.trail.append((rec.offset, outcome, None))
            continue
        out.suppliers_seen.add(supplier)
        new_state = decision.state
        if new_state is not None:
            new_state["recent_ids"] = remember(recent, digest, now, ctx.dedup_ttl_ms) \
                if decision.remember_event else recent
            state = new_state
        if decision.gap:
            out.dense_gaps += 1
        if decision.resync is not None:
            out.gaps[supplier] = out.gaps.get(supplier, 0) + 1
            out.resyncs.append((rec.key or b"", decision.resync))
        if decision.clamped:
            out.clamped[supplier] = out.clamped.get(supplier, 0) + 1
        if decision.update is not None:
            out.updates.append(decision.update)
        if out.trail is not None:
            out.trail.append((rec.offset, outcome, decision.update))
    return state


def _dead_letter(out: StepOutputs, rec: RawRecord, reason: str, message: str, now: int,
                 record: Any) -> None:
    supplier_id, event_id = best_effort_ids(record)
    # Keyed by the original key cut to a bound: key + value always fit one Kafka send.
    out.dead_letters.append((dead_letter_key(rec.key), dead_letter(
        reason=reason, message=message, original=rec.value or b"", original_key=rec.key,
        source_topic=rec.topic, source_partition=rec.partition, source_offset=rec.offset,
        source_timestamp=rec.timestamp_ms if rec.timestamp_ms > 0 else None, now_ms=now,
        supplier_id=supplier_id, event_id=event_id,
    )))
    out.count(INVALID)
    out.invalid_reasons[reason] = out.invalid_reasons.get(reason, 0) + 1
    if out.trail is not None:
        out.trail.append((rec.offset, f"{INVALID}:{reason}", None))


def fold_updates(avail: dict[str, Any] | None, updates: Iterable[dict[str, Any]], now_ms: int,
                 out: StepOutputs) -> dict[str, Any] | None:
    """Fold the StockUpdates of one platform SKU into its Availability; return the new one.

    Every effective change is appended to `out.changes`; the returned object is the input
    itself when nothing changed (not even a version).
    """
    for update in updates:
        new, change = fold_update(avail, update, now_ms=now_ms)
        avail = new
        if change is None:
            out.unchanged_updates += 1
        else:
            out.changes.append(change)
    return avail


__all__ = [
    "APPLIED", "DUPLICATE", "INVALID", "NOOP", "STALE", "RawRecord", "StepContext",
    "StepOutputs", "apply_deltas", "event_time_ms", "fold_updates",
]
