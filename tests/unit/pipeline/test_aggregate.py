"""Unit tests of folding StockUpdates into per-platform-SKU availability."""

from __future__ import annotations

from typing import Any

from pipeline.aggregate import availability_view, best_supplier, fold_update
from schemas.codec import codec_for

NOW = 1_760_000_000_000


def update(
    supplier_id: str,
    after: int,
    version: int,
    *,
    before: int = 0,
    status: str = "ACTIVE",
    lead_time_days: int | None = None,
    sku: str | None = None,
    cause: str = "SNAPSHOT",
) -> dict[str, Any]:
    return {
        "platform_sku": "P-1",
        "supplier_id": supplier_id,
        "sku": sku or f"{supplier_id}-sku",
        "quantity_before": before,
        "quantity_after": after,
        "version": version,
        "status": status,
        "cause": cause,
        "event_id": f"{supplier_id}-{version}",
        "observed_at": NOW - 500,
        "received_at": NOW - 400,
        "produced_at": NOW - 300,
        "price": None,
        "currency": None,
        "lead_time_days": lead_time_days,
        "clamped": False,
        "suspect": False,
    }


def fold(*updates: dict[str, Any]) -> tuple[dict[str, Any], list[dict[str, Any] | None]]:
    avail: dict[str, Any] | None = None
    changes = []
    for u in updates:
        avail, change = fold_update(avail, u, now_ms=NOW)
        changes.append(change)
    assert avail is not None
    return avail, changes


def roundtrip(name: str, record: dict[str, Any]) -> None:
    codec = codec_for(name)
    assert codec.decode(codec.encode(record)) == record


def test_first_update_creates_availability_and_change() -> None:
    avail, (change,) = fold(update("s1", 5, 1, lead_time_days=3))
    assert avail == {
        "platform_sku": "P-1",
        "total": 5,
        "best_supplier": "s1",
        "suppliers": {
            "s1": {
                "sku": "s1-sku",
                "quantity": 5,
                "version": 1,
                "status": "ACTIVE",
                "lead_time_days": 3,
                "updated_at": NOW,
                "snapshot_at": NOW - 500,  # a SNAPSHOT: its observed_at
            }
        },
    }
    assert change == {
        "platform_sku": "P-1",
        "supplier_id": "s1",
        "sku": "s1-sku",
        "quantity_before": 0,
        "quantity_after": 5,
        "version": 1,
        "total_available": 5,
        "best_supplier": "s1",
        "status": "ACTIVE",
        "cause": "SNAPSHOT",
        "event_id": "s1-1",
        "observed_at": NOW - 500,
        "produced_at": NOW - 300,
        "changed_at": NOW,
        "lead_time_days": 3,
        # A supplier change: the reservation side is not set (RESERVATION changes only).
        "available_to_promise": None, "held": None, "confirmed_pending": None,
        "reservation_sequence": None, "reservation_id": None, "reservation_outcome": None,
    }
    roundtrip("Availability", avail)
    assert change is not None
    roundtrip("InventoryChange", change)


def test_total_sums_active_suppliers() -> None:
    avail, changes = fold(update("s1", 5, 1), update("s2", 7, 1), update("s3", 0, 1))
    assert avail["total"] == 12
    assert [c["total_available"] for c in changes if c] == [5, 12]
    assert changes[2] is None  # s3 reporting 0 changes nothing


def test_quantity_before_comes_from_the_stored_entry() -> None:
    _, changes = fold(update("s1", 5, 1), update("s1", 9, 2, before=123))
    assert changes[1] is not None and changes[1]["quantity_before"] == 5


def test_older_or_equal_version_is_ignored() -> None:
    avail, _ = fold(update("s1", 5, 4))
    for version in (3, 4):
        same, change = fold_update(avail, update("s1", 99, version), now_ms=NOW + 1)
        assert same is avail and change is None


def test_other_suppliers_are_independent_of_versions() -> None:
    avail, changes = fold(update("s1", 5, 100), update("s2", 3, 1))
    assert changes[1] is not None and avail["total"] == 8


def test_discontinued_supplier_does_not_count() -> None:
    avail, changes = fold(
        update("s1", 5, 1),
        update("s2", 9, 1),
        update("s2", 0, 2, before=9, status="DISCONTINUED", cause="DISCONTINUED"),
    )
    assert avail["total"] == 5
    assert avail["best_supplier"] == "s1"
    assert avail["suppliers"]["s2"]["status"] == "DISCONTINUED"
    last = changes[2]
    assert last is not None
    assert (last["quantity_before"], last["quantity_after"], last["total_available"]) == (9, 0, 5)
    assert last["cause"] == "DISCONTINUED"


def test_best_supplier_most_stock_then_lead_time_then_id() -> None:
    def entry(quantity: int, lead: int | None, status: str = "ACTIVE") -> dict[str, Any]:
        return {"quantity": quantity, "status": status, "lead_time_days": lead}

    assert best_supplier({"a": entry(5, 9), "b": entry(7, 9)}) == "b"
    assert best_supplier({"a": entry(5, 9), "b": entry(5, 2)}) == "b"
    assert best_supplier({"b": entry(5, 2), "a": entry(5, 2)}) == "a"
    assert best_supplier({"a": entry(5, None), "b": entry(5, 30)}) == "b"
    assert best_supplier({"a": entry(5, None), "b": entry(5, None)}) == "a"
    assert best_supplier({"a": entry(50, 1, "DISCONTINUED"), "b": entry(1, 90)}) == "b"
    assert best_supplier({"a": entry(0, 1), "b": entry(0, 1)}) is None
    assert best_supplier({}) is None


def test_best_supplier_none_when_total_zero() -> None:
    avail, changes = fold(update("s1", 5, 1), update("s1", 0, 2, before=5, cause="ADJUSTMENT"))
    assert avail["total"] == 0 and avail["best_supplier"] is None
    assert changes[1] is not None and changes[1]["best_supplier"] is None


def test_newer_version_with_same_published_stock_is_kept_but_not_announced() -> None:
    avail, _ = fold(update("s1", 5, 1, lead_time_days=3))
    new_avail, change = fold_update(avail, update("s1", 5, 2, lead_time_days=3), now_ms=NOW)
    assert change is None
    assert new_avail is not avail
    assert new_avail["suppliers"]["s1"]["version"] == 2


def test_a_lead_time_change_alone_is_announced_and_can_move_the_best_supplier() -> None:
    avail, _ = fold(update("s1", 5, 1, lead_time_days=3))
    avail, _ = fold_update(avail, update("s2", 5, 1, lead_time_days=2), now_ms=NOW)
    assert avail["best_supplier"] == "s2"
    new_avail, change = fold_update(avail, update("s1", 5, 2, lead_time_days=1), now_ms=NOW)
    assert change is not None
    assert (change["quantity_before"], change["quantity_after"]) == (5, 5)
    assert change["lead_time_days"] == 1
    assert change["best_supplier"] == new_avail["best_supplier"] == "s1"
    assert new_avail["suppliers"]["s1"]["lead_time_days"] == 1


def test_remapped_supplier_sku_replaces_the_entry() -> None:
    avail, _ = fold(update("s1", 5, 1_000, sku="old"))
    new_avail, change = fold_update(avail, update("s1", 2, 3, sku="new"), now_ms=NOW)
    assert change is not None and new_avail["suppliers"]["s1"]["sku"] == "new"


def test_fold_does_not_mutate_its_input() -> None:
    avail, _ = fold(update("s1", 5, 1))
    snapshot = {**avail, "suppliers": {k: dict(v) for k, v in avail["suppliers"].items()}}
    fold_update(avail, update("s2", 3, 1), now_ms=NOW)
    assert avail == snapshot


def test_availability_view() -> None:
    avail, _ = fold(update("s2", 3, 7, lead_time_days=1), update("s1", 5, 4))
    view = availability_view(avail)
    assert view["platform_sku"] == "P-1"
    assert view["total"] == 8 and view["best_supplier"] == "s1"
    assert [s["supplier_id"] for s in view["suppliers"]] == ["s1", "s2"]
    assert view["suppliers"][1] == {
        "supplier_id": "s2",
        "sku": "s2-sku",
        "quantity": 3,
        "status": "ACTIVE",
        "lead_time_days": 1,
        "version": 7,
        "updated_at": NOW,
    }


def test_change_carries_the_lead_time_of_the_entry() -> None:
    _, changes = fold(update("s1", 5, 1, lead_time_days=7), update("s1", 6, 2))
    assert changes[0] is not None and changes[0]["lead_time_days"] == 7
    # A later update without a lead time publishes "unknown", as the folded entry holds.
    assert changes[1] is not None and changes[1]["lead_time_days"] is None


def test_change_written_before_lead_time_days_existed_still_decodes() -> None:
    import json
    from importlib import resources

    from schemas.codec import AvroCodec, WriterSchemas

    _, changes = fold(update("s1", 5, 1, lead_time_days=2))
    assert changes[0] is not None
    old = json.loads(resources.files("schemas").joinpath(
        "inventory_change.v1.avsc").read_text(encoding="utf-8"))
    # An encoder of the old schema only (its own writer registry), as an old producer was.
    old_bytes = AvroCodec("InventoryChange", schema=old, writers=WriterSchemas()).encode(
        {k: v for k, v in changes[0].items() if k != "lead_time_days"})
    decoded = codec_for("InventoryChange").decode(old_bytes)
    assert decoded == {**changes[0], "lead_time_days": None}


def test_cache_ranks_best_supplier_like_the_fold() -> None:
    from connectors.redis.cache import entry_from_change

    # Equal stock: the shorter known lead time wins in the fold; the cache entry must carry it.
    avail, changes = fold(update("s1", 5, 1, lead_time_days=9),
                          update("s2", 5, 1, lead_time_days=2))
    assert avail["best_supplier"] == "s2"
    assert [entry_from_change(c).script_args()[-1] for c in changes if c] == ["9", "2"]
