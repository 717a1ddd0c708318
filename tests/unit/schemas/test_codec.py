"""The Avro codec: schemas parsed once with fastavro's hint, same bytes, strict decoding."""

from __future__ import annotations

import json
from importlib import resources

import fastavro
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.errors import SchemaError
from schemas.codec import (
    HEADER_SIZE,
    SCHEMA_FILES,
    AvroCodec,
    codec_for,
    fingerprint,
    load_schema,
    schema_json,
)


@pytest.mark.parametrize("name", sorted(SCHEMA_FILES))
def test_parsed_schema_carries_fastavro_hint(name: str) -> None:
    # Without the hint fastavro parses the schema again on every encode and decode
    # (the schema-per-call cost: 16.8 -> 7.0 us per SupplierDelta decode).
    assert load_schema(name).get("__fastavro_parsed") is True
    assert codec_for(name).schema.get("__fastavro_parsed") is True


@pytest.mark.parametrize("name", sorted(SCHEMA_FILES))
def test_fingerprint_independent_of_hint(name: str) -> None:
    plain = fastavro.parse_schema(schema_json(name), _write_hint=False)
    assert fingerprint(plain) == fingerprint(load_schema(name))


def test_bytes_equal_to_unhinted_writer() -> None:
    record = {
        "supplier_id": "s1", "sku": "A-1", "event_id": "e1", "sequence": 7, "kind": "SNAPSHOT",
        "quantity": 3, "observed_at": 1_700_000_000_000, "price": "1.5", "currency": "EUR",
        "warehouse": None, "lead_time_days": 2, "status": "ACTIVE", "connector": "rest",
        "received_at": 1_700_000_000_001,
    }
    unhinted = AvroCodec("SupplierDelta",
                         schema=schema_json("SupplierDelta"))  # hinted since the fix
    plain = fastavro.parse_schema(schema_json("SupplierDelta"), _write_hint=False)
    import io

    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, plain, record)
    assert codec_for("SupplierDelta").encode(record) == unhinted.header + buf.getvalue()
    assert codec_for("SupplierDelta").decode(unhinted.encode(record)) == record


# --- strict decoding: malformed bodies are SchemaErrors, never values ---------------------

DELTA = {
    "supplier_id": "s1", "sku": "A-1", "event_id": "e1", "sequence": 7, "kind": "SNAPSHOT",
    "quantity": 3, "observed_at": 1_700_000_000_000, "price": "1.5", "currency": "EUR",
    "warehouse": None, "lead_time_days": 2, "status": "ACTIVE", "connector": "rest",
    "received_at": 1_700_000_000_001,
}


def zigzag(value: int) -> bytes:
    """Avro's varint of a signed value, for any size (also beyond 64 bits)."""
    n = value * 2 if value >= 0 else -value * 2 - 1
    out = bytearray()
    while True:
        if n < 0x80:
            out.append(n)
            return bytes(out)
        out.append((n & 0x7F) | 0x80)
        n >>= 7


def avro_string(text: str) -> bytes:
    data = text.encode()
    return zigzag(len(data)) + data


def delta_body(**fields: bytes) -> bytes:
    """A SupplierDelta single-object record with some fields' raw encodings replaced."""
    parts = {
        "supplier_id": avro_string("s1"), "sku": avro_string("A-1"), "event_id": avro_string("e1"),
        "sequence": zigzag(7), "kind": zigzag(0), "quantity": zigzag(3),
        "observed_at": zigzag(1_700_000_000_000), "price": zigzag(1) + avro_string("1.5"),
        "currency": zigzag(1) + avro_string("EUR"), "warehouse": zigzag(0),
        "lead_time_days": zigzag(1) + zigzag(2), "status": zigzag(0),
        "connector": avro_string("rest"), "received_at": zigzag(1_700_000_000_001),
    }
    parts.update(fields)
    return codec_for("SupplierDelta").header + b"".join(parts.values())


def test_reference_body_is_what_the_codec_writes() -> None:
    assert delta_body() == codec_for("SupplierDelta").encode(DELTA)
    assert codec_for("SupplierDelta").decode(delta_body()) == DELTA


@pytest.mark.parametrize(
    ("fields", "fragment"),
    [
        ({"kind": zigzag(-1)}, "enum index -1"),  # fastavro: the last symbol, ADJUSTMENT
        ({"status": zigzag(-1)}, "enum index -1"),  # fastavro: DISCONTINUED
        ({"status": zigzag(-2)}, "enum index -2"),
        ({"kind": zigzag(2)}, "enum index 2"),
        ({"status": zigzag(2**40)}, "enum index"),
        ({"price": zigzag(-1) + avro_string("1.5")}, "union branch -1"),  # fastavro: string
        ({"warehouse": zigzag(2)}, "union branch 2"),
        ({"quantity": zigzag(2**63)}, "long out of range"),  # fastavro: 0
        ({"quantity": zigzag(2**64)}, "long"),  # fastavro: 0
        ({"quantity": zigzag(-(2**63) - 1)}, "long out of range"),  # fastavro: -1
        ({"sequence": b"\xff" * 10 + b"\x01"}, "long longer than 10 bytes"),
        ({"quantity": zigzag(2**70)}, "long"),
        ({"lead_time_days": zigzag(1) + zigzag(2**31)}, "int out of range"),
        ({"lead_time_days": zigzag(1) + zigzag(-(2**31) - 1)}, "int out of range"),
        ({"lead_time_days": zigzag(1) + b"\x80\x80\x80\x80\x80\x01"}, "int longer"),
        ({"sku": zigzag(-1)}, "length -1"),
        ({"sku": zigzag(2**40) + b"A-1"}, "length 1099511627776"),
        ({"connector": zigzag(100) + b"rest"}, "length 100"),
        ({"received_at": b"\x80"}, "truncated"),
        ({"received_at": b""}, "truncated"),
    ],
)
def test_malformed_body_is_a_schema_error(fields: dict[str, bytes], fragment: str) -> None:
    with pytest.raises(SchemaError, match=fragment):
        codec_for("SupplierDelta").decode(delta_body(**fields))


@pytest.mark.parametrize(
    "fields",
    [
        {"quantity": zigzag(2**63 - 1)},
        {"quantity": zigzag(-(2**63))},
        {"lead_time_days": zigzag(1) + zigzag(2**31 - 1)},
        {"lead_time_days": zigzag(1) + zigzag(-(2**31))},
        {"quantity": b"\x86\x00"},  # not the shortest form, but a valid varint (3)
    ],
)
def test_edge_values_still_decode(fields: dict[str, bytes]) -> None:
    record = codec_for("SupplierDelta").decode(delta_body(**fields))
    assert set(record) == set(DELTA)


def test_boolean_byte_must_be_zero_or_one() -> None:
    codec = codec_for("StockState")
    state = {"quantity": 1, "version": 1, "updated_at": 1, "status": "ACTIVE",
             "platform_sku": "P", "suspect": True, "lead_time_days": None, "recent_ids": b""}
    data = bytearray(codec.encode(state))
    index = data.index(b"\x02P") + 2  # the boolean follows platform_sku
    assert data[index] == 1
    data[index] = 2
    with pytest.raises(SchemaError, match="boolean byte 2"):
        codec.decode(bytes(data))


def availability_body(blocks: bytes) -> bytes:
    codec = codec_for("Availability")
    return codec.header + avro_string("P-1") + zigzag(5) + zigzag(1) + avro_string("s1") + blocks


def supplier_entry() -> bytes:
    return (avro_string("A-1") + zigzag(5) + zigzag(1) + zigzag(0) + zigzag(0)
            + zigzag(1_700_000_000_000) + zigzag(0))  # snapshot_at: null


def test_map_blocks_negative_count_decodes_and_huge_count_is_refused() -> None:
    codec = codec_for("Availability")
    item = avro_string("s1") + supplier_entry()
    # A negative count is followed by the block's size in bytes (Avro's skippable blocks).
    sized = availability_body(zigzag(-1) + zigzag(len(item)) + item + zigzag(0))
    assert codec.decode(sized)["suppliers"]["s1"]["quantity"] == 5
    with pytest.raises(SchemaError, match="block of"):
        codec.decode(availability_body(zigzag(2**62) + item + zigzag(0)))
    with pytest.raises(SchemaError, match="negative block size"):
        codec.decode(availability_body(zigzag(-1) + zigzag(-5) + item + zigzag(0)))


def test_older_writer_schema_is_checked_too() -> None:
    codec = codec_for("InventoryChange")
    v1 = AvroCodec("InventoryChange", schema=json.loads(
        resources.files("schemas").joinpath("inventory_change.v1.avsc").read_text()))
    change = {
        "platform_sku": "P", "supplier_id": "s", "sku": "k", "quantity_before": 0,
        "quantity_after": 1, "version": 1, "total_available": 1, "best_supplier": None,
        "status": "ACTIVE", "cause": "SNAPSHOT", "event_id": "e", "observed_at": 1,
        "produced_at": 1, "changed_at": 1,
    }
    data = v1.encode(change)
    assert codec.decode(data)["lead_time_days"] is None  # resolved to the current schema
    index = len(v1.header) + len(avro_string("P") + avro_string("s") + avro_string("k")) + 5
    assert data[index:index + 2] == b"\x00\x00"  # best_supplier null, then status ACTIVE
    with pytest.raises(SchemaError, match="enum index -1"):
        codec.decode(data[:index + 1] + zigzag(-1) + data[index + 2:])


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_any_corruption_is_a_schema_error_or_a_record_that_encodes(data: st.DataObject) -> None:
    codec = codec_for("SupplierDelta")
    body = bytearray(codec.encode(DELTA))
    for _ in range(data.draw(st.integers(1, 4))):
        index = data.draw(st.integers(HEADER_SIZE, len(body) - 1))
        body[index] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(HEADER_SIZE, len(body)))
    try:
        record = codec.decode(bytes(body[:cut]))
    except SchemaError:
        return
    # Whatever decodes is a record the schema can hold: every enum a symbol, every long a long.
    assert codec.decode(codec.encode(record)) == record


def test_trusted_decode_equals_strict_decode_and_falls_back_for_other_writers() -> None:
    codec = codec_for("StockUpdate")
    record = {
        "platform_sku": "P", "supplier_id": "s", "sku": "k", "quantity_before": 0,
        "quantity_after": 3, "version": 2, "status": "ACTIVE", "cause": "SNAPSHOT",
        "event_id": "e", "observed_at": 1, "received_at": 2, "produced_at": 3, "price": None,
        "currency": None, "lead_time_days": None, "clamped": False, "suspect": False,
    }
    data = codec.encode(record)
    assert codec.decode_trusted(data) == codec.decode(data) == record
    with pytest.raises(SchemaError):
        codec.decode_trusted(b"\xc3\x01" + b"\x00" * 8)  # unknown writer: the strict path
