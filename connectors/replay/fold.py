"""LogFold: the worker's chain (validate, dedup, apply, aggregate) over raw log records, in memory.

It makes the decisions `topologies/process_deltas.py` and `topologies/aggregate.py` make, with
the same pure functions and the same clock (the delta's Kafka timestamp), so the StockUpdates
and InventoryChanges it yields are the ones the worker wrote to Cassandra and Redis. One
difference, on purpose: the aggregate agent stamps `changed_at` (and the availability entry's
`updated_at`) with the wall clock when it processes a batch; a replay cannot know that moment
and uses the delta's Kafka timestamp instead. Those two fields are processing time and are not
compared by verify.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pipeline.aggregate import fold_update
from pipeline.apply import DUPLICATE, STALE, decide
from pipeline.catalog import Catalog
from pipeline.dedup import expired
from pipeline.errors import SchemaError, ValidationError
from pipeline.validate import delta_key, validate_delta
from schemas.codec import codec_for

# The worker keeps this many accepted event_ids per (supplier, sku) (process_deltas.py).
RECENT_EVENTS_MAX = 32


def remember_event(recent: dict[str, int], event_id: str, now: int, ttl_ms: int,
                   limit: int = RECENT_EVENTS_MAX) -> dict[str, int]:
    """The dedup memory after accepting event_id, as the worker computes it (TTL, newest kept)."""
    kept = {e: t for e, t in recent.items() if not expired(t, now, ttl_ms)}
    kept[event_id] = now
    if len(kept) > limit:
        kept = dict(sorted(kept.items(), key=lambda item: item[1])[-limit:])
    return kept


def event_time_ms(timestamp_ms: int, wall_clock_ms: Callable[[], int]) -> int:
    """The clock the worker uses for a delta: its Kafka timestamp.

    Faust hands the timestamp over as float seconds and the worker turns it back with
    `int(ts * 1000)`; doing the same float round trip here reproduces its value to the
    millisecond (a plain `timestamp_ms` would differ by one for some timestamps).
    """
    if timestamp_ms <= 0:
        return wall_clock_ms()
    return int((timestamp_ms / 1000.0) * 1000)


@dataclass(slots=True)
class FoldStats:
    """What a fold saw, by outcome."""

    records: int = 0
    invalid: int = 0
    duplicate: int = 0
    stale: int = 0
    noop: int = 0
    applied: int = 0
    changes: int = 0


@dataclass(slots=True)
class Step:
    """What one log record did: the StockUpdate the sink writes and the change the cache gets."""

    update: dict[str, Any] | None = None
    change: dict[str, Any] | None = None


_NOTHING = Step()


@dataclass
class LogFold:
    """State of the worker's tables rebuilt from the log, record by record.

    `stock` is the `stock` table (key `supplier_id|sku` bytes -> StockState); `availability`
    the `availability` table (platform SKU -> Availability); `rows` the last StockUpdate
    written per availability_by_sku row (platform SKU, supplier) and `changes` the last
    InventoryChange per Redis entry: what Cassandra and Redis must hold.
    `stock_partition` remembers the log partition of each key (the changelog partition).
    """

    catalog: Catalog = field(default_factory=Catalog.empty)
    dedup_ttl_ms: int = 7 * 24 * 3600 * 1000
    wall_clock_ms: Callable[[], int] = field(default=lambda: 0)
    stock: dict[bytes, dict[str, Any]] = field(default_factory=dict)
    stock_partition: dict[bytes, int] = field(default_factory=dict)
    availability: dict[str, dict[str, Any]] = field(default_factory=dict)
    rows: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    changes: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    stats: FoldStats = field(default_factory=FoldStats)

    def apply(self, key: bytes | None, value: bytes | None, timestamp_ms: int,
              partition: int = 0) -> Step:
        """Fold one record of inventory.deltas; returns what the worker wrote for it."""
        stats = self.stats
        stats.records += 1
        now = event_time_ms(timestamp_ms, self.wall_clock_ms)
        try:
            record = codec_for("SupplierDelta").decode(value or b"")
            delta = validate_delta(record, key=key, now_ms=now)
        except (SchemaError, ValidationError):
            stats.invalid += 1  # the worker dead-lettered it; nothing reached a table
            return _NOTHING
        supplier, sku = delta["supplier_id"], delta["sku"]
        state_key = key if key is not None else delta_key(supplier, sku)
        event_id = delta["event_id"]
        state = self.stock.get(state_key)
        recent: dict[str, int] = (state.get("recent_events") or {}) if state else {}
        decision = decide(
            delta, state, recent.get(event_id),
            platform_sku=self.catalog.platform_sku(supplier, sku), now_ms=now,
            produced_at_ms=now, dedup_ttl_ms=self.dedup_ttl_ms,
        )
        if decision.outcome == DUPLICATE:
            stats.duplicate += 1
            return _NOTHING
        if decision.outcome == STALE:
            stats.stale += 1
            return _NOTHING
        if decision.state is not None:
            new_state = dict(decision.state)
            new_state["recent_events"] = (
                remember_event(recent, event_id, now, self.dedup_ttl_ms)
                if decision.remember_event else recent)
            self.stock[state_key] = new_state
            self.stock_partition[state_key] = partition
        update = decision.update
        if update is None:
            stats.noop += 1
            return _NOTHING
        stats.applied += 1
        platform_sku = update["platform_sku"]
        old = self.availability.get(platform_sku)
        new, change = fold_update(old, update, now_ms=now)
        if new is not old:
            self.availability[platform_sku] = new
        if change is None:
            # The aggregate agent writes nothing to Cassandra for an update that changes no
            # published value; neither does a replay.
            return _NOTHING
        stats.changes += 1
        entry = (platform_sku, update["supplier_id"])
        self.rows[entry] = update
        self.changes[entry] = change
        return Step(update, change)

    def expected_rows(self, platform_sku: str) -> dict[str, dict[str, Any]]:
        """The availability_by_sku rows of one platform SKU by supplier, as Cassandra holds them."""
        avail = self.availability.get(platform_sku)
        if avail is None:
            return {}
        out = {}
        for supplier_id in avail["suppliers"]:
            update = self.rows.get((platform_sku, supplier_id))
            if update is not None:
                out[supplier_id] = cassandra_row(update)
        return out


def cassandra_row(update: dict[str, Any]) -> dict[str, Any]:
    """The availability_by_sku row the sink writes for a StockUpdate (cassandra_read shape)."""
    return {
        "platform_sku": update["platform_sku"], "supplier_id": update["supplier_id"],
        "sku": update["sku"], "quantity": update["quantity_after"],
        "version": update["version"], "status": update["status"],
        "lead_time_days": update.get("lead_time_days"), "price": update.get("price"),
        "currency": update.get("currency"), "updated_at": update["observed_at"],
    }
