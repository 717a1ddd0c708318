"""A small, deliberately plain reference model of the stockflow event semantics, for tests.

It replays valid SupplierDelta dicts in arrival order with the rules of docs/contract.md,
written as directly as possible and sharing no code with `pipeline/`:

- an event_id a supplier already had accepted is a duplicate (the model never forgets: use it
  with a dedup TTL longer than the test);
- a sequence not above the stored version is stale;
- SNAPSHOT sets the quantity and clears suspect; ADJUSTMENT adds, starting from 0 (suspect)
  when there is no state, and marks suspect on a dense gap (sequence < 10**12 and not
  version + 1); quantities below 0 become 0;
- the published quantity is 0 while DISCONTINUED; a key with no state publishes (0, ACTIVE);
- a change of published (quantity, status) is an effective change: one InventoryChange.

Callers pass only deltas that pass validation (drop the malformed ones first).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

DENSE_LIMIT = 10**12

Key = tuple[str, str]
PlatformSkuOf = Callable[[str, str], str]


@dataclass
class ReferenceResult:
    """Everything the reference model derives from one arrival order."""

    # (supplier_id, sku) -> {"quantity", "version", "status", "suspect"}; quantity as stored
    # (the supplier's quantity, even while discontinued).
    states: dict[Key, dict[str, Any]] = field(default_factory=dict)
    # platform_sku -> {"total", "best_supplier", "suppliers": {supplier_id: {"sku", "quantity",
    # "status", "lead_time_days"}}}; a supplier appears once it had an effective change.
    availability: dict[str, dict[str, Any]] = field(default_factory=dict)
    # One dict per effective change, in arrival order. total_available and best_supplier are
    # only comparable with a run that folds updates in the same global order (one partition).
    changes: list[dict[str, Any]] = field(default_factory=list)
    # (supplier_id, event_id) of every accepted event (applied or no-op), in order.
    accepted: list[tuple[str, str]] = field(default_factory=list)
    # applied, noop, duplicate, stale, gap, clamped, resync
    counts: Counter[str] = field(default_factory=Counter)


def _identity(supplier_id: str, sku: str) -> str:
    return sku


def _published(quantity: int, status: str) -> int:
    if status == "DISCONTINUED":
        return 0
    return quantity


def _best(suppliers: dict[str, dict[str, Any]]) -> str | None:
    best_id = None
    best_rank = None
    for supplier_id, entry in suppliers.items():
        if entry["status"] != "ACTIVE" or entry["quantity"] <= 0:
            continue
        lead = entry["lead_time_days"]
        unknown_lead = 1 if lead is None else 0
        rank = (-entry["quantity"], unknown_lead, lead if lead is not None else 0, supplier_id)
        if best_rank is None or rank < best_rank:
            best_id, best_rank = supplier_id, rank
    return best_id


def reference_run(
    deltas_in_arrival_order: Iterable[dict[str, Any]],
    *,
    platform_sku_of: PlatformSkuOf = _identity,
    dedup_per_key: bool = False,
    dedup_limit: int | None = None,
) -> ReferenceResult:
    """Replay deltas in arrival order and return states, availability, changes and counts.

    An event_id is unique per supplier (the contract); dedup_per_key=True scopes the dedup
    memory per (supplier, sku) instead, for a pipeline that keeps it in the stock entry, and
    dedup_limit keeps only that many of a key's newest accepted ids.
    """
    result = ReferenceResult()
    accepted_ids: set[tuple[str, ...]] = set()
    recent_per_key: dict[tuple[str, str], list[tuple[str, ...]]] = {}

    for d in deltas_in_arrival_order:
        supplier_id, sku, sequence = d["supplier_id"], d["sku"], d["sequence"]
        key = (supplier_id, sku)
        status = d.get("status") or "ACTIVE"

        dedup_id = (*key, d["event_id"]) if dedup_per_key else (supplier_id, d["event_id"])
        if dedup_id in accepted_ids:
            result.counts["duplicate"] += 1
            continue
        old = result.states.get(key)
        if old is not None and sequence <= old["version"]:
            result.counts["stale"] += 1
            continue
        accepted_ids.add(dedup_id)
        if dedup_per_key and dedup_limit is not None:
            recent = recent_per_key.setdefault(key, [])
            recent.append(dedup_id)
            if len(recent) > dedup_limit:
                accepted_ids.discard(recent.pop(0))
        result.accepted.append((supplier_id, d["event_id"]))

        if d["kind"] == "SNAPSHOT":
            quantity = d["quantity"]
            suspect = False
        elif old is None:
            quantity = d["quantity"]
            suspect = True
            result.counts["resync"] += 1
        else:
            quantity = old["quantity"] + d["quantity"]
            suspect = old["suspect"]
            if sequence < DENSE_LIMIT and sequence != old["version"] + 1:
                suspect = True
                result.counts["gap"] += 1
                result.counts["resync"] += 1
        if quantity < 0:
            quantity = 0
            result.counts["clamped"] += 1

        lead = d.get("lead_time_days")
        result.states[key] = {
            "quantity": quantity,
            "version": sequence,
            "status": status,
            "suspect": suspect,
            "lead_time_days": lead,
        }

        # Published: (quantity, status, lead time); a change of any of them is effective.
        if old is None:
            before = (0, "ACTIVE", None)
        else:
            before = (_published(old["quantity"], old["status"]), old["status"],
                      old["lead_time_days"])
        after = (_published(quantity, status), status, lead)
        if before == after:
            result.counts["noop"] += 1
            continue
        result.counts["applied"] += 1

        if status == "DISCONTINUED" and before[1] != "DISCONTINUED":
            cause = "DISCONTINUED"
        elif status == "ACTIVE" and before[1] == "DISCONTINUED":
            cause = "REACTIVATED"
        else:
            cause = d["kind"]

        platform_sku = platform_sku_of(supplier_id, sku)
        avail = result.availability.setdefault(
            platform_sku, {"total": 0, "best_supplier": None, "suppliers": {}}
        )
        avail["suppliers"][supplier_id] = {
            "sku": sku,
            "quantity": after[0],
            "status": status,
            "lead_time_days": d.get("lead_time_days"),
        }
        avail["total"] = sum(
            e["quantity"] for e in avail["suppliers"].values() if e["status"] == "ACTIVE"
        )
        avail["best_supplier"] = _best(avail["suppliers"])
        result.changes.append(
            {
                "platform_sku": platform_sku,
                "supplier_id": supplier_id,
                "sku": sku,
                "version": sequence,
                "quantity_before": before[0],
                "quantity_after": after[0],
                "status": status,
                "cause": cause,
                "event_id": d["event_id"],
                "total_available": avail["total"],
                "best_supplier": avail["best_supplier"],
            }
        )
    return result


def reference_state(
    deltas_in_arrival_order: Iterable[dict[str, Any]], *, dedup_per_key: bool = False
) -> dict[Key, dict[str, Any]]:
    """(supplier_id, sku) -> {"quantity", "version", "status"} after the deltas."""
    run = reference_run(deltas_in_arrival_order, dedup_per_key=dedup_per_key)
    return {
        key: {"quantity": s["quantity"], "version": s["version"], "status": s["status"]}
        for key, s in run.states.items()
    }


def reference_availability(
    deltas_in_arrival_order: Iterable[dict[str, Any]],
    *,
    platform_sku_of: PlatformSkuOf = _identity,
    dedup_per_key: bool = False,
) -> dict[str, dict[str, Any]]:
    """platform_sku -> {"total", "best_supplier", "suppliers"} after the deltas."""
    run = reference_run(
        deltas_in_arrival_order, platform_sku_of=platform_sku_of, dedup_per_key=dedup_per_key
    )
    return run.availability
