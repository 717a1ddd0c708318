"""Mapping supplier records to SupplierDelta: aliases, units, timestamps, stable event ids."""

from __future__ import annotations

import pytest

from connectors.sources.base import (
    FieldMapping,
    RecordMapper,
    Units,
    parse_timestamp_ms,
    stable_event_id,
)
from connectors.sources.csv_drop import decode_text
from pipeline.errors import ValidationError
from schemas.codec import codec_for

MAPPING = FieldMapping({"sku": ["item_code", "sku"], "quantity": ["qty"],
                        "sequence": ["version"], "observed_at": ["updated_at"],
                        "price": ["unit_price"], "currency": ["currency"],
                        "status": ["status"]})


def mapper(**units: object) -> RecordMapper:
    return RecordMapper("acme", "rest", MAPPING, Units(**units))  # type: ignore[arg-type]


def test_a_mapped_record_is_a_valid_supplier_delta() -> None:
    delta = mapper().map({"item_code": "A-1", "qty": "12", "version": 7,
                          "updated_at": "2024-05-01T10:00:00.250Z", "unit_price": "9.5",
                          "currency": "eur", "status": "active"}, received_at=1_800_000_000_000)
    assert delta == {
        "supplier_id": "acme", "sku": "A-1", "event_id": "acme:A-1:7", "sequence": 7,
        "kind": "SNAPSHOT", "quantity": 12, "observed_at": 1714557600250, "price": "9.5",
        "currency": "EUR", "warehouse": None, "lead_time_days": None, "status": "ACTIVE",
        "connector": "rest", "received_at": 1_800_000_000_000,
    }
    assert codec_for("SupplierDelta").decode(codec_for("SupplierDelta").encode(delta)) == delta


def test_the_event_id_is_the_same_on_every_re_poll() -> None:
    record = {"item_code": "A-1", "qty": 1, "version": 3, "updated_at": 1714557600000}
    first = mapper().map(record, received_at=1)
    again = mapper().map(dict(record), received_at=2)
    assert first["event_id"] == again["event_id"]
    assert first["event_id"] != mapper().map({**record, "version": 4})["event_id"]


def test_without_a_version_the_sequence_is_the_source_time_in_microseconds() -> None:
    m = RecordMapper("acme", "rest", FieldMapping({"sku": ["sku"], "quantity": ["q"],
                                                   "observed_at": ["t"]}))
    delta = m.map({"sku": "A", "q": 1, "t": 1714557600123})
    assert delta["sequence"] == 1714557600123 * 1000


def test_long_event_ids_are_hashed_within_the_schema_limit() -> None:
    long_id = stable_event_id("s" * 64, "k" * 128, 10**15)
    assert len(long_id) <= 128 and long_id == stable_event_id("s" * 64, "k" * 128, 10**15)


def test_units_scale_quantities_and_prices_and_map_statuses() -> None:
    delta = mapper(quantity_multiplier=12, price_divisor=100,
                   status_map={"eol": "DISCONTINUED"}).map(
        {"sku": "B", "qty": 2, "version": 1, "updated_at": 0, "unit_price": "1250",
         "status": "EOL"})
    assert (delta["quantity"], delta["price"], delta["status"]) == (24, "12.5", "DISCONTINUED")


@pytest.mark.parametrize(("record", "code"), [
    ({"qty": 1}, "bad_sku"),
    ({"item_code": "A|B", "qty": 1}, "bad_sku"),
    ({"item_code": "A\x07", "qty": 1}, "bad_sku"),
    ({"item_code": "A", "qty": "lots"}, "bad_quantity"),
    ({"item_code": "A", "qty": 1.5}, "bad_quantity"),
    ({"item_code": "A", "qty": -1}, "quantity_out_of_range"),
    ({"item_code": "A", "qty": 10**12}, "quantity_out_of_range"),
    ({"item_code": "A", "qty": 1, "unit_price": "cheap"}, "bad_price"),
    ({"item_code": "A", "qty": 1, "currency": "euro"}, "bad_currency"),
    ({"item_code": "A", "qty": 1, "updated_at": "yesterday"}, "bad_timestamp"),
    ({"item_code": "A", "qty": 1, "status": "maybe"}, "bad_status"),
])
def test_bad_records_raise_with_a_dead_letter_reason(record: dict[str, object],
                                                      code: str) -> None:
    with pytest.raises(ValidationError) as caught:
        mapper().map({"version": 1, **record})
    assert caught.value.code == code


def test_headers_match_whatever_the_case_spacing_or_alias() -> None:
    mapping = FieldMapping({"sku": ["item code", "sku"], "quantity": ["qty on hand"]})
    assert mapping.resolve(["\ufeffItem_Code", "  QTY-ON  HAND "]) == {
        "sku": "\ufeffItem_Code", "quantity": "  QTY-ON  HAND "}


@pytest.mark.parametrize(("value", "unit", "expected"), [
    ("2024-05-01T10:00:00Z", "auto", 1714557600000),
    ("2024-05-01T12:00:00+02:00", "auto", 1714557600000),
    (1714557600, "auto", 1714557600000),
    (1714557600000, "auto", 1714557600000),
    (1714557600000000, "auto", 1714557600000),
    ("1714557600", "s", 1714557600000),
])
def test_timestamps_in_any_supplier_unit(value: object, unit: str, expected: int) -> None:
    assert parse_timestamp_ms(value, unit) == expected


def test_text_decoding_is_strict_in_the_one_configured_encoding() -> None:
    assert decode_text(b"\xef\xbb\xbfsku;qty", "utf-8-sig") == "sku;qty"
    assert decode_text("Café".encode("latin-1"), "latin-1") == "Café"
    # No fallback: one stray byte in a UTF-8 file is a decode error, not latin-1 text.
    with pytest.raises(ValidationError) as caught:
        decode_text("Café".encode("latin-1"), "utf-8-sig")
    assert caught.value.code == "decode_error"
