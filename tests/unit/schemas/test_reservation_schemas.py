"""Schema evolution of the records reservations added or changed: older values still decode."""

from __future__ import annotations

import json
from importlib import resources

from schemas.codec import AvroCodec, codec_for


def test_availability_written_before_snapshot_at_decodes_with_null() -> None:
    v1 = AvroCodec("Availability", schema=json.loads(
        resources.files("schemas").joinpath("availability.v1.avsc").read_text()))
    old = {"platform_sku": "P", "total": 3, "best_supplier": "s1", "suppliers": {"s1": {
        "sku": "A", "quantity": 3, "version": 1, "status": "ACTIVE", "lead_time_days": None,
        "updated_at": 5}}}
    data = v1.encode(old)
    current = codec_for("Availability")
    assert data[2:10] != current.fingerprint
    decoded = current.decode(data)
    assert decoded["suppliers"]["s1"]["snapshot_at"] is None
    assert current.decode_trusted(data) == decoded if hasattr(current, "decode_trusted") \
        else True


def test_reservation_state_round_trips_with_its_defaults() -> None:
    codec = codec_for("ReservationState")
    state = codec.decode(codec.encode({"platform_sku": "P"}))
    assert state == {"platform_sku": "P", "clock": 0, "sequence": 0, "holds": {},
                     "confirmed": {}, "answers": {}, "closed": {}, "deadlines": {}}


SUPPLIER_CHANGE = {
    "platform_sku": "P", "supplier_id": "s1", "sku": "A", "quantity_before": 0,
    "quantity_after": 3, "version": 7, "total_available": 3, "best_supplier": "s1",
    "status": "ACTIVE", "cause": "SNAPSHOT", "event_id": "e1", "observed_at": 1,
    "produced_at": 2, "changed_at": 3, "lead_time_days": None}
RESERVATION_FIELDS = ("available_to_promise", "held", "confirmed_pending",
                      "reservation_sequence", "reservation_id", "reservation_outcome")


def _v2() -> AvroCodec:
    return AvroCodec("InventoryChange", schema=json.loads(
        resources.files("schemas").joinpath("inventory_change.v2.avsc").read_text()))


def test_inventory_change_written_before_reservation_changes_decodes_with_nulls() -> None:
    data = _v2().encode(SUPPLIER_CHANGE)
    current = codec_for("InventoryChange")
    assert data[2:10] != current.fingerprint  # a different writer schema
    for decode in (current.decode, current.decode_trusted):
        decoded = decode(data)
        assert decoded == {**SUPPLIER_CHANGE, **dict.fromkeys(RESERVATION_FIELDS)}


def test_a_reservation_change_reads_as_an_unchanged_entry_to_an_older_consumer() -> None:
    """A consumer still on the previous schema reads a RESERVATION change as its enum's
    default cause with the supplier entry as it was (the same version): applied by version, it
    changes nothing. A current consumer reads the reservation side."""
    change = {**SUPPLIER_CHANGE, "quantity_before": 3, "cause": "RESERVATION",
              "event_id": "P:reservation:4", "available_to_promise": 1, "held": 2,
              "confirmed_pending": 0, "reservation_sequence": 4, "reservation_id": "r1",
              "reservation_outcome": "GRANTED"}
    data = codec_for("InventoryChange").encode(change)
    assert codec_for("InventoryChange").decode(data) == change
    old = _v2().decode(data)
    assert old == {**SUPPLIER_CHANGE, "quantity_before": 3, "cause": "SNAPSHOT",
                   "event_id": "P:reservation:4"}
    assert (old["version"], old["quantity_before"]) == (7, old["quantity_after"])
