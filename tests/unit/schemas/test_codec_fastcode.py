"""The generated Avro encoders and trusted decoders: fastavro's bytes, values and errors."""

from __future__ import annotations

import io
import json
from importlib import resources
from typing import Any

import fastavro
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.errors import SchemaError
from schemas import fastcode
from schemas.codec import (
    HEADER_SIZE,
    OLDER_SCHEMA_FILES,
    SCHEMA_FILES,
    AvroCodec,
    WriterSchemas,
    codec_for,
    schema_json,
)

LONG_MIN, LONG_MAX = -(1 << 63), (1 << 63) - 1
INT_MIN, INT_MAX = -(1 << 31), (1 << 31) - 1


def _all_schemas() -> list[tuple[str, dict[str, Any]]]:
    """Every record schema of stockflow: the current ones and the older versions kept."""
    schemas = [(name, schema_json(name)) for name in sorted(SCHEMA_FILES)]
    for filename in OLDER_SCHEMA_FILES:
        text = resources.files("schemas").joinpath(filename).read_text(encoding="utf-8")
        schema = json.loads(text)
        schemas.append((filename, schema))
    return schemas


SCHEMAS = _all_schemas()
IDS = [label for label, _ in SCHEMAS]


def _codec(schema: dict[str, Any]) -> AvroCodec:
    return AvroCodec(schema["name"], writers=WriterSchemas(), schema=schema)


# Lengths past 63 bytes and counts past 63 entries take the multi-byte varint paths.
_TEXT = st.text(max_size=80) | st.text(min_size=60, max_size=200)
_LONG = st.integers(LONG_MIN, LONG_MAX) | st.sampled_from(
    [0, -1, 63, -64, 64, -65, 8191, -8192, 1764567890123, -1764567890123, LONG_MIN, LONG_MAX])


def _values(schema: Any, named: dict[str, Any]) -> st.SearchStrategy[Any]:
    """Python values fastavro writes for an Avro type."""
    if isinstance(schema, str):
        if schema in named:
            return _values(named[schema], named)
        return {
            "null": st.none(),
            "string": _TEXT,
            "bytes": st.binary(max_size=80) | st.binary(min_size=60, max_size=200),
            "int": st.integers(INT_MIN, INT_MAX),
            "long": _LONG,
            "boolean": st.booleans(),
        }[schema]
    if isinstance(schema, list):
        return st.one_of(*[_values(branch, named) for branch in schema])
    kind = schema["type"]
    if kind == "record":
        required: dict[str, st.SearchStrategy[Any]] = {}
        optional: dict[str, st.SearchStrategy[Any]] = {}
        for field in schema["fields"]:
            values = _values(field["type"], named)
            # A field with a default may be left out: the writer takes the default.
            (optional if "default" in field else required)[field["name"]] = values
        return st.fixed_dictionaries(required, optional=optional)
    if kind == "enum":
        return st.sampled_from(schema["symbols"])
    if kind == "map":
        values = _values(schema["values"], named)
        return (st.dictionaries(_TEXT, values, max_size=4)
                | st.dictionaries(st.text(max_size=3), values, min_size=64, max_size=70))
    if kind == "array":
        return st.lists(_values(schema["items"], named), max_size=4)
    return _values(kind, named)


def _named_types(schema: Any, named: dict[str, Any], namespace: str = "") -> None:
    """Names of the named types a schema defines, with and without namespace."""
    if isinstance(schema, list):
        for branch in schema:
            _named_types(branch, named, namespace)
    elif isinstance(schema, dict):
        ns = schema.get("namespace", namespace)
        if schema.get("type") in ("record", "enum", "fixed"):
            named[schema["name"]] = schema
            named[f"{ns}.{schema['name']}" if ns else schema["name"]] = schema
        for field in schema.get("fields", []):
            _named_types(field["type"], named, ns)
        for key in ("values", "items"):
            if key in schema:
                _named_types(schema[key], named, ns)


def records(schema: dict[str, Any]) -> st.SearchStrategy[dict[str, Any]]:
    named: dict[str, Any] = {}
    _named_types(schema, named)
    return _values(schema, named)


def fastavro_encode(codec: AvroCodec, record: Any) -> bytes:
    buf = io.BytesIO()
    buf.write(codec.header)
    fastavro.schemaless_writer(buf, codec.schema, record)
    return buf.getvalue()


def fastavro_decode(codec: AvroCodec, data: bytes) -> Any:
    buf = io.BytesIO(data)
    buf.seek(HEADER_SIZE)
    return fastavro.schemaless_reader(buf, codec.schema, None)


@pytest.mark.parametrize(("label", "schema"), SCHEMAS, ids=IDS)
def test_every_schema_has_a_generated_encoder_and_decoder(label: str,
                                                           schema: dict[str, Any]) -> None:
    parsed = fastavro.parse_schema(schema)
    assert fastcode.make_encoder(parsed) is not None, label
    assert fastcode.make_decoder(parsed) is not None, label


@pytest.mark.parametrize(("label", "schema"), SCHEMAS, ids=IDS)
@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                   HealthCheck.data_too_large])
@given(data=st.data())
def test_same_bytes_and_values_as_fastavro(label: str, schema: dict[str, Any],
                                           data: st.DataObject) -> None:
    codec = _codec(schema)
    encode = fastcode.make_encoder(codec.schema, codec.header)
    decode = fastcode.make_decoder(codec.schema, HEADER_SIZE)
    assert encode is not None and decode is not None
    record = data.draw(records(schema))
    try:
        expected = fastavro_encode(codec, record)
    except Exception as exc:  # e.g. a left-out bytes field whose default "" fastavro refuses
        with pytest.raises(Exception):  # noqa: B017 - the generated code must not accept it
            encode(record)
        with pytest.raises(SchemaError, match=rf"^cannot encode {schema['name']}: ") as raised:
            codec.encode(record)
        assert str(raised.value) == f"cannot encode {schema['name']}: {exc}"
        return
    # The generated function itself, not the codec's fallback to fastavro.
    assert encode(record) == expected
    assert codec.encode(record) == expected
    value = fastavro_decode(codec, expected)
    assert decode(expected) == value
    assert list(decode(expected)) == list(value)  # same field order
    assert codec.decode_trusted(expected) == value
    assert codec.decode(expected) == value


def _stock_update(**fields: Any) -> dict[str, Any]:
    record = {
        "platform_sku": "P-1", "supplier_id": "acme", "sku": "k", "quantity_before": 0,
        "quantity_after": 3, "version": 2, "status": "ACTIVE", "cause": "SNAPSHOT",
        "event_id": "e", "observed_at": 1764567890123, "received_at": 2, "produced_at": 3,
        "price": "12.50", "currency": None, "lead_time_days": 4, "clamped": False,
        "suspect": True,
    }
    record.update(fields)
    return record


@pytest.mark.parametrize("value", [LONG_MIN, LONG_MAX, -1, 0, 63, 64, -64, -65, 1 << 40])
def test_longs_to_the_ends_of_their_range(value: int) -> None:
    codec = codec_for("StockUpdate")
    encode = fastcode.make_encoder(codec.schema, codec.header)
    assert encode is not None
    record = _stock_update(quantity_before=value, version=value, observed_at=value)
    data = fastavro_encode(codec, record)
    assert encode(record) == data
    assert codec.decode_trusted(data) == fastavro_decode(codec, data) == record


@pytest.mark.parametrize(("change", "message"), [
    ({"quantity_after": None}, "integer is required"),  # wrong type
    ({"platform_sku": 5}, "must be string"),
    ({"status": "LOST"}, "'LOST' is not in list"),  # unknown enum symbol
    ({"event_id": "a\ud800b"}, "surrogates not allowed"),  # lone surrogate
    ({"price": b"1.00"}, "do not match"),  # a union branch of another type
    ({"lead_time_days": True}, "do not match"),  # fastavro's union takes no bool as an int
    ({"lead_time_days": 1 << 31}, "do not match"),  # beyond 32 bits in an int union
    ({"version": 1 << 63}, "too large"),  # beyond 64 bits
])
def test_bad_values_are_schema_errors_with_fastavros_message(change: dict[str, Any],
                                                             message: str) -> None:
    codec = codec_for("StockUpdate")
    record = _stock_update(**change)
    with pytest.raises(SchemaError, match=rf"^cannot encode StockUpdate: .*{message}"):
        codec.encode(record)
    encode = fastcode.make_encoder(codec.schema, codec.header)
    assert encode is not None
    with pytest.raises(Exception):  # noqa: B017 - refused by the generated code too
        encode(record)


def test_missing_required_field_is_a_schema_error() -> None:
    codec = codec_for("StockUpdate")
    record = _stock_update()
    del record["sku"]
    with pytest.raises(SchemaError, match=r"^cannot encode StockUpdate: no value and no default"):
        codec.encode(record)


def test_values_fastavro_converts_take_its_path_and_bytes() -> None:
    # A float in a long field, a bytearray for bytes, a dict subclass: fastavro writes them,
    # the generated code leaves them to it, and the bytes are fastavro's.
    codec = codec_for("StockUpdate")
    record = _stock_update(quantity_after=3.0, version=True)
    assert codec.encode(record) == fastavro_encode(codec, record)

    class Record(dict[str, Any]):
        pass

    assert codec.encode(Record(_stock_update())) == fastavro_encode(codec, _stock_update())
    dead = codec_for("DeadLetter")
    letter: dict[str, Any] = {"reason": "r", "message": "m", "original": bytearray(b"\x00\xff"),
              "original_key": None, "source_topic": "t", "source_partition": 0,
              "source_offset": 7, "context": {}, "failed_at": 1}
    assert dead.encode(letter) == fastavro_encode(dead, letter)


def test_truncated_or_invalid_bodies_are_schema_errors_on_the_trusted_path() -> None:
    codec = codec_for("StockUpdate")
    data = codec.encode(_stock_update(platform_sku="é" * 40))
    decode = fastcode.make_decoder(codec.schema, HEADER_SIZE)
    assert decode is not None
    for end in range(HEADER_SIZE, len(data)):
        with pytest.raises(Exception):  # noqa: B017 - the generated decoder refuses it
            decode(data[:end])
        with pytest.raises(SchemaError, match=r"^cannot decode StockUpdate: "):
            codec.decode_trusted(data[:end])
    invalid = data.replace("é".encode(), b"\xff\xfe", 1)  # not UTF-8, same length
    with pytest.raises(SchemaError, match=r"^cannot decode StockUpdate: "):
        codec.decode_trusted(invalid)
    with pytest.raises(SchemaError, match=r"^cannot decode StockUpdate: "):
        codec.decode(invalid)


def test_unusual_bodies_read_as_fastavro_reads_them() -> None:
    # Not what stockflow writes, but the trusted path reads them as it did: a long in more
    # bytes than it needs, an enum index from the end, trailing bytes ignored.
    codec = codec_for("StockState")
    body = (b"\x86\x00"  # quantity 3 in two bytes
            b"\x04\x06"  # version 2, updated_at 3
            b"\x01"  # status -1: fastavro takes the last symbol
            b"\x02P"  # platform_sku
            b"\x00"  # suspect
            b"\x00"  # lead_time_days null
            b"\x00"  # recent_ids empty
            b"junk")
    data = codec.header + body
    assert codec.decode_trusted(data) == fastavro_decode(codec, data)
    assert codec.decode_trusted(data)["status"] == "DISCONTINUED"


@pytest.mark.parametrize("field_type", [
    "double", "float", {"type": "fixed", "name": "F", "size": 2}, ["string", "long"],
    {"type": "long", "logicalType": "timestamp-millis"},
])
def test_unsupported_types_leave_the_codec_to_fastavro(field_type: Any) -> None:
    schema = {"type": "record", "name": "Other", "namespace": "stockflow",
              "fields": [{"name": "a", "type": field_type}]}
    parsed = fastavro.parse_schema(schema)
    assert fastcode.make_encoder(parsed) is None
    assert fastcode.make_decoder(parsed) is None
    codec = _codec(schema)
    with pytest.raises(SchemaError, match=r"^cannot encode Other: "):
        codec.encode({})


def test_a_union_of_null_and_a_map_is_written_by_fastavro_and_read_by_the_generated_code() -> None:
    # Writing it would need fastavro's union validation of a map; reading needs none.
    schema = {"type": "record", "name": "Other", "namespace": "stockflow",
              "fields": [{"name": "a", "type": ["null", {"type": "map", "values": "long"}]}]}
    parsed = fastavro.parse_schema(schema)
    assert fastcode.make_encoder(parsed) is None
    decode = fastcode.make_decoder(parsed, HEADER_SIZE)
    assert decode is not None
    codec = _codec(schema)
    record: dict[str, Any]
    for record in ({"a": None}, {"a": {}}, {"a": {"x": -1, "y": 1 << 40}}):
        data = codec.encode(record)
        assert data == fastavro_encode(codec, record)
        assert decode(data) == codec.decode_trusted(data) == record


# Edits that make a body one the wire check refuses, or reads differently: a byte changed,
# inserted or removed, the body cut or extended, an overlong varint (a continuation byte).
_EDITS = st.lists(st.tuples(st.sampled_from(["set", "insert", "delete", "cut", "append"]),
                            st.integers(0, 400),
                            st.sampled_from([0x00, 0x01, 0x02, 0x7F, 0x80, 0x81, 0xFF])
                            | st.integers(0, 255)),
                  max_size=3)


def _edited(data: bytes, edits: list[tuple[str, int, int]]) -> bytes:
    body = bytearray(data[HEADER_SIZE:])
    for op, at, byte in edits:
        at = at % (len(body) + 1)
        if op == "set" and at < len(body):
            body[at] = byte
        elif op == "insert":
            body.insert(at, byte)
        elif op == "delete" and at < len(body):
            del body[at]
        elif op == "cut":
            del body[at:]
        elif op == "append":
            body.append(byte)
    return data[:HEADER_SIZE] + bytes(body)


@pytest.mark.parametrize(("label", "schema"), SCHEMAS, ids=IDS)
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_the_strict_decoder_reads_only_what_the_wire_check_accepts(
        label: str, schema: dict[str, Any], data: st.DataObject) -> None:
    codec = _codec(schema)
    strict = fastcode.make_decoder(codec.schema, HEADER_SIZE, strict=True)
    if strict is None:  # maps and arrays: the check and the decoder, as before
        assert any(t in json.dumps(schema) for t in ('"map"', '"array"')), label
        return
    try:
        body = fastavro_encode(codec, data.draw(records(schema)))
    except Exception:  # a record fastavro refuses to write: nothing to read
        return
    # Bodies unedited and edited: whatever the strict decoder reads, the check accepts and
    # fastavro reads as the same value (it refuses a 10-byte long, a valid one included).
    for candidate in (body, _edited(body, data.draw(_EDITS))):
        try:
            value = strict(candidate)
        except Exception:  # refused: the check and fastavro decide
            continue
        assert codec._check(candidate, HEADER_SIZE) == len(candidate), candidate.hex()
        assert value == fastavro_decode(codec, candidate), candidate.hex()
        assert codec.decode(candidate) == value


def test_a_supplier_delta_as_connectors_write_it_takes_the_one_pass_path() -> None:
    codec = codec_for("SupplierDelta")
    delta = {"supplier_id": "acme", "sku": "A-1", "event_id": "e-1", "sequence": 1764567890123456,
             "kind": "ADJUSTMENT", "quantity": -3, "observed_at": 1764567890123,
             "price": "12.50", "currency": "EUR", "warehouse": "w" * 70, "lead_time_days": 300,
             "status": "ACTIVE", "connector": "csv", "received_at": 1764567890124}
    data = codec.encode(delta)
    assert codec._strict_decode is not None
    assert codec._strict_decode(data) == codec.decode(data) == fastavro_decode(codec, data)
    for end in range(HEADER_SIZE, len(data)):  # cut anywhere: refused by both
        with pytest.raises(Exception):  # noqa: B017 - the strict decoder refuses it
            codec._strict_decode(data[:end])
        with pytest.raises(SchemaError, match=r"^cannot decode SupplierDelta: "):
            codec.decode(data[:end])
    with pytest.raises(SchemaError, match="1 trailing bytes"):
        codec.decode(data + b"\x00")


@pytest.mark.parametrize(("body", "error"), [
    (b"\x02\x02\x00", None),
    (b"\xfe\xff\xff\xff\x0f\x02\x00", None),  # int 2^31-1 in 5 bytes: in range
    (b"\xfe\xff\xff\xff\x1f\x02\x00", "int out of range"),  # 2^32-1 in 5 bytes
    (b"\x02\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01\x00", None),  # long min in 10 bytes
    (b"\x02\xff\xff\xff\xff\xff\xff\xff\xff\xff\x02\x00", "long out of range"),  # 2^64 wraps
    (b"\x02" + b"\x82" + b"\x80" * 9 + b"\x00\x00", "long longer than 10 bytes"),
    (b"\x02\x02" + b"\x82" + b"\x80" * 9 + b"\x00x", "long longer than 10 bytes"),  # a length
    (b"\x02\x02\x00\x00", "1 trailing bytes"),
])
def test_the_one_pass_path_refuses_what_the_wire_check_refuses(body: bytes,
                                                                error: str | None) -> None:
    codec = _codec({"type": "record", "name": "Ranges", "fields": [
        {"name": "i", "type": "int"}, {"name": "l", "type": "long"},
        {"name": "s", "type": "string"}]})
    data = codec.header + body
    if error is None:
        assert codec.decode(data) == fastavro_decode(codec, data)
    else:
        with pytest.raises(SchemaError, match=error):
            codec.decode(data)
