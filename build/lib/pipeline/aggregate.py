"""Fold StockUpdates into the Availability of one platform SKU and derive its InventoryChange.

One entry per supplier, guarded by version: an update whose version is not newer than the
stored entry of the same supplier SKU is a replay and changes nothing. The total counts ACTIVE
suppliers only; the best supplier is the ACTIVE one with the most stock (ties: shorter lead
time, unknown lead time last, then the lower supplier_id).

`fold_update` never mutates its input. It returns the *same* availability object when nothing
changed, so the agent stores the result only when `result is not avail`.
"""

from __future__ import annotations

from typing import Any

ACTIVE = "ACTIVE"
_SNAPSHOT_CAUSES = frozenset({"SNAPSHOT", "RESYNC"})


def empty_availability(platform_sku: str) -> dict[str, Any]:
    """The Availability of a platform SKU no supplier has reported yet."""
    return {"platform_sku": platform_sku, "total": 0, "best_supplier": None, "suppliers": {}}


def _rank(item: tuple[str, dict[str, Any]]) -> tuple[int, int, int, str]:
    supplier_id, entry = item
    lead_time = entry.get("lead_time_days")
    # Sort ascending: most stock first, then known and shorter lead time, then supplier_id.
    return (-entry["quantity"], lead_time is None, lead_time or 0, supplier_id)


def total_available(suppliers: dict[str, dict[str, Any]]) -> int:
    """Sum of the quantities of the ACTIVE suppliers."""
    return sum(e["quantity"] for e in suppliers.values() if e["status"] == ACTIVE)


def best_supplier(suppliers: dict[str, dict[str, Any]]) -> str | None:
    """The ACTIVE supplier with the most stock (> 0), ties broken by lead time then id."""
    candidates = [
        item
        for item in suppliers.items()
        if item[1]["status"] == ACTIVE and item[1]["quantity"] > 0
    ]
    if not candidates:
        return None
    return min(candidates, key=_rank)[0]


def fold_update(
    avail: dict[str, Any] | None, update: dict[str, Any], *, now_ms: int
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """Apply one StockUpdate; return (availability, InventoryChange or None if nothing changed)."""
    current = avail if avail is not None else empty_availability(update["platform_sku"])
    supplier_id = update["supplier_id"]
    entry = current["suppliers"].get(supplier_id)
    # A different supplier SKU in the entry means the catalog was remapped: versions of two
    # SKUs are not comparable, the newer mapping wins.
    if (
        entry is not None
        and entry["sku"] == update["sku"]
        and update["version"] <= entry["version"]
    ):
        return current, None

    new_entry = {
        "sku": update["sku"],
        "quantity": update["quantity_after"],
        "version": update["version"],
        "status": update["status"],
        "lead_time_days": update.get("lead_time_days"),
        "updated_at": now_ms,
        # When the supplier's feed last stated its whole stock: a confirmed reservation stops
        # counting against availability once a snapshot observed after it arrives.
        "snapshot_at": update["observed_at"] if update["cause"] in _SNAPSHOT_CAUSES
        else (entry.get("snapshot_at") if entry is not None else None),
    }
    suppliers = dict(current["suppliers"])
    suppliers[supplier_id] = new_entry
    total = total_available(suppliers)
    new_avail = {
        "platform_sku": current["platform_sku"],
        "total": total,
        "best_supplier": best_supplier(suppliers) if total > 0 else None,
        "suppliers": suppliers,
    }
    quantity_before = entry["quantity"] if entry is not None else 0
    status_before = entry["status"] if entry is not None else ACTIVE
    lead_before = entry.get("lead_time_days") if entry is not None else None
    if (quantity_before == new_entry["quantity"] and status_before == new_entry["status"]
            and lead_before == new_entry["lead_time_days"]):
        # Newer version, same published stock and lead time: remember the version, tell
        # no one.
        return new_avail, None

    change = {
        "platform_sku": current["platform_sku"],
        "supplier_id": supplier_id,
        "sku": update["sku"],
        "quantity_before": quantity_before,
        "quantity_after": new_entry["quantity"],
        "version": update["version"],
        "total_available": total,
        "best_supplier": new_avail["best_supplier"],
        "status": update["status"],
        "cause": update["cause"],
        "event_id": update["event_id"],
        "observed_at": update["observed_at"],
        "produced_at": update["produced_at"],
        "changed_at": now_ms,
        # Carried so the Redis cache ranks the best supplier exactly like this fold does.
        "lead_time_days": new_entry["lead_time_days"],
        # The reservation side: set on RESERVATION changes only (pipeline/reservations.py).
        "available_to_promise": None, "held": None, "confirmed_pending": None,
        "reservation_sequence": None, "reservation_id": None, "reservation_outcome": None,
    }
    return new_avail, change


def availability_view(avail: dict[str, Any]) -> dict[str, Any]:
    """A JSON-ready view of one Availability: totals first, suppliers sorted by id."""
    return {
        "platform_sku": avail["platform_sku"],
        "total": avail["total"],
        "best_supplier": avail["best_supplier"],
        "suppliers": [
            {
                "supplier_id": supplier_id,
                "sku": entry["sku"],
                "quantity": entry["quantity"],
                "status": entry["status"],
                "lead_time_days": entry.get("lead_time_days"),
                "version": entry["version"],
                "updated_at": entry["updated_at"],
            }
            for supplier_id, entry in sorted(avail["suppliers"].items())
        ],
    }
