"""Pure parts of the Redis cache: key encoding, change/row conversion, hash parsing."""

from __future__ import annotations

from datetime import UTC, datetime
from urllib.parse import quote

import pytest
from hypothesis import given
from hypothesis import strategies as st

from connectors.redis.cache import (
    CacheError,
    _from_rows,
    availability_key,
    entry_from_change,
    entry_from_row,
    parse_hash,
    platform_sku_of,
)

PRINTABLE = st.text(st.characters(blacklist_categories=("Cs", "Cc")), min_size=1, max_size=40)


def change(**over: object) -> dict[str, object]:
    base: dict[str, object] = {
        "platform_sku": "P-1", "supplier_id": "sup-a", "sku": "A 1", "quantity_before": 0,
        "quantity_after": 7, "version": 3, "total_available": 7, "best_supplier": "sup-a",
        "status": "ACTIVE", "cause": "SNAPSHOT", "event_id": "e1",
        "observed_at": 1_700_000_000_123, "produced_at": 2, "changed_at": 1_700_000_000_999,
    }
    base.update(over)
    return base


@given(PRINTABLE)
def test_key_round_trips_and_is_printable_ascii_without_hash_tags(sku: str) -> None:
    key = availability_key("stockflow:", sku)
    assert key.startswith("stockflow:avail:")
    assert key.isascii() and key.isprintable()
    assert "{" not in key and "}" not in key and " " not in key
    assert platform_sku_of("stockflow:", key) == sku


@given(PRINTABLE, PRINTABLE)
def test_distinct_skus_get_distinct_keys(a: str, b: str) -> None:
    if a != b:
        assert availability_key("p:", a) != availability_key("p:", b)


@given(st.one_of(PRINTABLE, st.text("AZaz09_.~-\n%", min_size=1, max_size=12)))
def test_key_is_the_percent_encoding_of_the_sku_also_on_the_unquoted_path(sku: str) -> None:
    # Keys already in Redis were written with quote(): the path that skips it for SKUs
    # quote() leaves as they are must give the very same key.
    assert availability_key("p:", sku) == f"p:avail:{quote(sku, safe='')}"


def test_already_encoded_looking_sku_does_not_collide() -> None:
    assert availability_key("p:", "a b") != availability_key("p:", "a%20b")


def test_empty_sku_is_refused() -> None:
    with pytest.raises(CacheError):
        availability_key("p:", "")


def test_entry_from_change_zeroes_discontinued_quantity() -> None:
    e = entry_from_change(change(status="DISCONTINUED", quantity_after=5))
    assert (e.quantity, e.status) == (0, "DISCONTINUED")
    e = entry_from_change(change())
    # A change without the field (written before InventoryChange had lead_time_days): "-"
    # tells the script to keep the stored one.
    assert e.script_args() == ("sup-a", "3", "7", "ACTIVE", "A 1", "1700000000123", "-")
    assert entry_from_change(change(lead_time_days=None)).script_args()[-1] == ""
    assert entry_from_change(change(lead_time_days=4)).script_args()[-1] == "4"


def test_version_beyond_double_precision_is_sent_exactly() -> None:
    e = entry_from_change(change(version=2**62 + 1))
    assert e.script_args()[1] == str(2**62 + 1)


def test_entry_from_row_accepts_driver_style_rows_and_datetimes() -> None:
    class Row:
        supplier_id = "s1"
        sku = "x"
        quantity = 4
        version = 9
        status = "ACTIVE"
        updated_at = datetime(2026, 1, 1, tzinfo=UTC).replace(tzinfo=None)

    e = entry_from_row(Row())
    assert (e.supplier_id, e.quantity, e.version) == ("s1", 4, 9)
    assert e.updated_at == int(datetime(2026, 1, 1, tzinfo=UTC).timestamp() * 1000)


def test_rows_fold_like_the_aggregate_total_of_active_and_best_tie_to_smallest_id() -> None:
    rows = [
        {"supplier_id": "b", "sku": "1", "quantity": 5, "version": 1, "status": "ACTIVE",
         "updated_at": 10},
        {"supplier_id": "a", "sku": "2", "quantity": 5, "version": 1, "status": "ACTIVE",
         "updated_at": 30},
        {"supplier_id": "c", "sku": "3", "quantity": 50, "version": 1,
         "status": "DISCONTINUED", "updated_at": 20},
    ]
    got = _from_rows("P", rows)
    assert got["total"] == 10
    assert got["best_supplier"] == "a"
    assert got["updated_at"] == 30
    assert got["complete"] is True
    assert got["suppliers"]["c"]["quantity"] == 0


def test_rows_fold_best_prefers_known_shorter_lead_time_on_equal_stock() -> None:
    rows = [
        {"supplier_id": "a", "sku": "1", "quantity": 5, "version": 1, "status": "ACTIVE",
         "updated_at": 1, "lead_time_days": None},
        {"supplier_id": "b", "sku": "2", "quantity": 5, "version": 1, "status": "ACTIVE",
         "updated_at": 1, "lead_time_days": 9},
        {"supplier_id": "c", "sku": "3", "quantity": 5, "version": 1, "status": "ACTIVE",
         "updated_at": 1, "lead_time_days": 3},
    ]
    got = _from_rows("P", rows)
    assert got["best_supplier"] == "c"
    assert got["suppliers"]["a"]["lead_time_days"] is None
    assert got["suppliers"]["b"]["lead_time_days"] == 9


def test_parse_hash_without_suppliers_or_best() -> None:
    got = parse_hash("P", {"total": "0", "updated_at": "5"})
    assert got == {"platform_sku": "P", "total": 0, "best_supplier": None, "updated_at": 5,
                   "complete": False, "suppliers": {}}
