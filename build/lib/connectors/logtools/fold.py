"""LogFold: the worker's chain (validate, dedup, apply, aggregate) over raw log records, in memory.

It drives the worker's own pure steps (pipeline/step.py: `apply_deltas`, `fold_updates`) with
the same clock (the delta's Kafka timestamp), so the StockUpdates and InventoryChanges it
yields are the ones the worker wrote to Cassandra and Redis. One difference, on purpose: the
aggregate agent stamps `changed_at` (and the availability entry's `updated_at`) with the wall
clock of its batch; a replay cannot know that moment and uses the delta's Kafka timestamp
instead. Those two fields are processing time and are not compared by verify.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pipeline.apply import APPLIED, DUPLICATE, NOOP, STALE
from pipeline.catalog import Catalog
from pipeline.step import (
    INVALID,
    RawRecord,
    StepContext,
    StepOutputs,
    apply_deltas,
    event_time_ms,
    fold_updates,
)
from pipeline.topics import DELTAS
from pipeline.validate import delta_key


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
    _ctx: StepContext | None = field(default=None, repr=False)

    def apply(self, key: bytes | None, value: bytes | None, timestamp_ms: int,
              partition: int = 0) -> Step:
        """Fold one record of inventory.deltas; returns what the worker wrote for it."""
        stats = self.stats
        stats.records += 1
        now = event_time_ms(timestamp_ms, self.wall_clock_ms)
        ctx = self._context()
        out = StepOutputs()
        state_key = key
        state = self.stock.get(key) if key is not None else None
        new = apply_deltas(state, [RawRecord(key, value, timestamp_ms, DELTAS.name,
                                             partition, -1)], ctx, out)
        outcomes = out.outcomes
        if outcomes.get(INVALID):
            stats.invalid += 1  # the worker dead-lettered it; nothing reached a table
            return _NOTHING
        if outcomes.get(DUPLICATE):
            stats.duplicate += 1
            return _NOTHING
        if outcomes.get(STALE):
            stats.stale += 1
            return _NOTHING
        if new is not state and new is not None:
            if state_key is None:
                state_key = delta_key(out.updates[0]["supplier_id"], out.updates[0]["sku"]) \
                    if out.updates else None
            if state_key is not None:
                self.stock[state_key] = new
                self.stock_partition[state_key] = partition
        if outcomes.get(NOOP) or not out.updates:
            stats.noop += 1
            return _NOTHING
        assert outcomes.get(APPLIED)
        stats.applied += 1
        update = out.updates[0]
        platform_sku = update["platform_sku"]
        old = self.availability.get(platform_sku)
        fold_out = StepOutputs()
        new_avail = fold_updates(old, (update,), now, fold_out)
        if new_avail is not old and new_avail is not None:
            self.availability[platform_sku] = new_avail
        if not fold_out.changes:
            # The aggregate agent writes nothing to Cassandra for an update that changes no
            # published value; neither does a replay.
            return _NOTHING
        change = fold_out.changes[0]
        stats.changes += 1
        entry = (platform_sku, update["supplier_id"])
        self.rows[entry] = update
        self.changes[entry] = change
        return Step(update, change)

    def _context(self) -> StepContext:
        ctx = self._ctx
        if ctx is None:
            ctx = self._ctx = StepContext(platform_sku=self.catalog.platform_sku,
                                          dedup_ttl_ms=self.dedup_ttl_ms,
                                          wall_clock_ms=self.wall_clock_ms)
        return ctx

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
