"""Avro single-object encoding for stockflow records.

Wire format (Avro specification, "Single-object encoding"): the two marker bytes `C3 01`, the
8-byte little-endian CRC-64-AVRO fingerprint of the writer schema's Parsing Canonical Form,
then the Avro binary body. A reader looks the writer schema up by fingerprint and resolves it
to its own reader schema, so producers and consumers can evolve independently (add a field
with a default, and old records still read).

Decoding is strict: before fastavro reads a body, `wire_check` walks it by the writer schema
and refuses what fastavro would otherwise turn into a value (a negative enum or union index
picks a symbol from the end, a varint beyond 64 bits wraps: status -1 read as DISCONTINUED,
quantity 2^64 as 0), an int beyond 32 bits, a boolean byte other than 0 or 1, and any length
or block count larger than the bytes left. Every failure is a SchemaError.
"""

from __future__ import annotations

import io
import json
import re
import struct
from collections.abc import Callable
from functools import cache
from importlib import resources
from typing import Any

import fastavro
from fastavro.schema import to_parsing_canonical_form

from schemas import fastcode
from schemas.errors import SchemaError

MARKER = b"\xc3\x01"
HEADER_SIZE = 10

# Record name -> .avsc file in this package.
SCHEMA_FILES = {
    "SupplierDelta": "supplier_delta.avsc",
    "StockUpdate": "stock_update.avsc",
    "InventoryChange": "inventory_change.avsc",
    "DeadLetter": "dead_letter.avsc",
    "ResyncRequest": "resync_request.avsc",
    "StockState": "stock_state.avsc",
    "Availability": "availability.avsc",
    "ReservationCommand": "reservation_command.avsc",
    "ReservationDecision": "reservation_decision.avsc",
    "ReservationState": "reservation_state.avsc",
    "Order": "order.avsc",
}

_EMPTY = 0xC15D213AA4D7A795


def _crc64_table() -> list[int]:
    table = []
    for i in range(256):
        fp = i
        for _ in range(8):
            fp = (fp >> 1) ^ (_EMPTY & -(fp & 1))
        table.append(fp)
    return table


_TABLE = _crc64_table()


def crc64_avro(data: bytes) -> int:
    """The Rabin CRC-64 fingerprint the Avro specification defines ("CRC-64-AVRO")."""
    fp = _EMPTY
    for byte in data:
        fp = (fp >> 8) ^ _TABLE[(fp ^ byte) & 0xFF]
    return fp


def fingerprint(parsed_schema: Any) -> bytes:
    """The 8-byte little-endian fingerprint of a parsed schema, as written in the header."""
    canonical = to_parsing_canonical_form(parsed_schema)
    return struct.pack("<Q", crc64_avro(canonical.encode("utf-8")))


@cache
def schema_json(name: str) -> dict[str, Any]:
    """The JSON of a stockflow record schema, read from the package once."""
    try:
        filename = SCHEMA_FILES[name]
    except KeyError as exc:
        raise SchemaError(f"unknown record {name!r}; known: {sorted(SCHEMA_FILES)}") from exc
    text = resources.files("schemas").joinpath(filename).read_text(encoding="utf-8")
    return json.loads(text)


@cache
def load_schema(name: str) -> Any:
    """The parsed (fastavro) schema of a stockflow record; parsed once per process."""
    return fastavro.parse_schema(schema_json(name))


# --- strict wire check --------------------------------------------------------------------
# One Python function per writer schema, generated once: a walk over the body that keeps no
# values, with the one-byte varint inlined. It costs 2.3 us per SupplierDelta next to
# fastavro's 7.4 us; the same walk as one closure per field took 14 us.

WireCheck = Callable[[bytes, int], int]  # (data, position) -> position after the value

_UINT64_LIMIT = 1 << 64


def _long(data: bytes, pos: int) -> tuple[int, int]:
    """The zigzag-decoded long at pos and the position after it, refusing overlong ones."""
    result = 0
    shift = 0
    for _ in range(10):
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            if result >= _UINT64_LIMIT:  # fastavro would wrap it: 2^64 read as 0
                raise SchemaError("long out of range")
            return (result >> 1) ^ -(result & 1), pos
        shift += 7
    raise SchemaError("long longer than 10 bytes")


def _fail(message: str) -> None:
    raise SchemaError(message)


# A varint of up to 10 (long) or 5 (int) bytes: continuation bytes, then a final one.
_LONG_BYTES = re.compile(rb"[\x80-\xff]{0,9}[\x00-\x7f]")
_INT_BYTES = re.compile(rb"[\x80-\xff]{0,4}[\x00-\x7f]")


def _skip_long(data: bytes, pos: int) -> int:
    match = _LONG_BYTES.match(data, pos)
    if match is None:
        _fail("long longer than 10 bytes" if len(data) - pos >= 10 else "truncated long")
    end = match.end()  # type: ignore[union-attr]
    if end - pos == 10 and data[end - 1] > 1:  # beyond 64 bits: fastavro would wrap it
        _fail("long out of range")
    return end


def _skip_int(data: bytes, pos: int) -> int:
    match = _INT_BYTES.match(data, pos)
    if match is None:
        _fail("int longer than 5 bytes" if len(data) - pos >= 5 else "truncated int")
    end = match.end()  # type: ignore[union-attr]
    if end - pos == 5 and data[end - 1] > 0x0F:  # beyond 32 bits
        _fail("int out of range")
    return end


class _CheckWriter:
    """Writes the source of a wire check; every read of data[pos] may raise IndexError."""

    def __init__(self, named: dict[str, Any]) -> None:
        self.named = named
        self.lines: list[str] = []
        self.inlining: list[str] = []  # named types being written, outermost first
        self.loops = 0

    def line(self, depth: int, text: str) -> None:
        self.lines.append("    " * depth + text)

    def varint(self, depth: int) -> None:
        """Sets v to the varint at pos and moves pos past it."""
        self.line(depth, "b = data[pos]")
        self.line(depth, "if b < 128:")
        self.line(depth + 1, "v = (b >> 1) ^ -(b & 1)")
        self.line(depth + 1, "pos += 1")
        self.line(depth, "else:")
        self.line(depth + 1, "v, pos = _long(data, pos)")

    def length(self, depth: int) -> None:
        self.varint(depth)
        self.line(depth, "if v < 0 or v > n - pos:")
        self.line(depth + 1, "_fail(f'length {v} with {n - pos} bytes left')")
        self.line(depth, "pos += v")

    def emit(self, schema: Any, depth: int) -> None:
        if isinstance(schema, list):  # a union
            self.varint(depth)
            for index, branch in enumerate(schema):
                self.line(depth, f"{'if' if index == 0 else 'elif'} v == {index}:")
                self.line(depth + 1, "pass")
                self.emit(branch, depth + 1)
            self.line(depth, "else:")
            self.line(depth + 1, f"_fail(f'union branch {{v}} is not one of {len(schema)}')")
            return
        if isinstance(schema, dict) and schema["type"] in _NAMED_KINDS:
            name = schema["name"]
            if name in self.inlining:  # none of stockflow's records holds itself
                raise SchemaError(f"recursive type {name!r} is not supported")
            self.inlining.append(name)
            self.emit_named(schema, depth)
            self.inlining.pop()
            return
        kind = schema if isinstance(schema, str) else schema["type"]
        if kind == "null":
            return
        if kind == "boolean":
            self.line(depth, "if data[pos] > 1:")
            self.line(depth + 1, "_fail(f'boolean byte {data[pos]} is not 0 or 1')")
            self.line(depth, "pos += 1")
        elif kind in ("int", "long"):
            self.line(depth, "if data[pos] < 128:")
            self.line(depth + 1, "pos += 1")
            self.line(depth, "else:")
            self.line(depth + 1, f"pos = _skip_{kind}(data, pos)")
        elif kind in ("float", "double"):
            self.line(depth, f"pos += {4 if kind == 'float' else 8}")
            self.line(depth, "if pos > n:")
            self.line(depth + 1, f"_fail('truncated {kind}')")
        elif kind in ("bytes", "string"):  # fastavro itself refuses invalid UTF-8
            self.length(depth)
        elif kind in ("array", "map"):
            self.blocks(schema, depth)
        elif isinstance(schema, str) and schema in self.named:
            self.emit(self.named[schema], depth)
        else:
            raise SchemaError(f"unsupported Avro type {kind!r}")

    def emit_named(self, schema: dict[str, Any], depth: int) -> None:
        kind = schema["type"]
        if kind in ("record", "error"):
            for field in schema["fields"]:
                self.emit(field["type"], depth)
        elif kind == "enum":
            symbols = len(schema["symbols"])
            self.varint(depth)
            self.line(depth, f"if v < 0 or v >= {symbols}:")  # fastavro reads -1 as the last
            self.line(depth + 1, f"_fail(f'enum index {{v}} is not one of {symbols} symbols')")
        else:  # fixed
            self.line(depth, f"pos += {int(schema['size'])}")
            self.line(depth, "if pos > n:")
            self.line(depth + 1, "_fail('truncated fixed')")

    def blocks(self, schema: dict[str, Any], depth: int) -> None:
        """Blocks of a count (negative: followed by a byte size) and items; 0 ends them."""
        self.loops += 1
        count, budget = f"c{self.loops}", f"budget{self.loops}"
        # No item is smaller than one byte in the schemas this reads; the budget bounds the
        # work on any input even if one were.
        self.line(depth, f"{budget} = n - pos")
        self.line(depth, "while True:")
        self.varint(depth + 1)
        self.line(depth + 1, "if v == 0:")
        self.line(depth + 2, "break")
        self.line(depth + 1, f"{count} = v")
        self.line(depth + 1, f"if {count} < 0:")
        self.line(depth + 2, f"{count} = -{count}")
        self.varint(depth + 2)
        self.line(depth + 2, "if v < 0:")
        self.line(depth + 3, "_fail(f'negative block size {v}')")
        self.line(depth + 1, f"{budget} -= {count}")
        self.line(depth + 1, f"if {budget} < 0 or {count} > n - pos:")
        self.line(depth + 2, f"_fail(f'block of {{{count}}} items with {{n - pos}} bytes left')")
        self.line(depth + 1, f"for _ in range({count}):")
        self.line(depth + 2, "pass")
        if schema["type"] == "map":
            self.length(depth + 2)
            self.emit(schema["values"], depth + 2)
        else:
            self.emit(schema["items"], depth + 2)

    def function(self, name: str, schema: Any) -> str:
        self.line(0, f"def {name}(data, pos):")
        self.line(1, "n = len(data)")
        self.line(1, "try:")
        self.line(2, "pass")
        self.emit(schema, 2)
        self.line(1, "except IndexError:")
        self.line(2, "_fail('truncated')")
        self.line(1, "return pos")
        return "\n".join(self.lines)


_NAMED_KINDS = frozenset({"record", "error", "enum", "fixed"})


def wire_check(parsed_schema: Any) -> WireCheck:
    """The strict check of a body written with this (parsed) schema; SchemaError on failure."""
    named = parsed_schema.get("__named_schemas", {}) if isinstance(parsed_schema, dict) else {}
    env: dict[str, Any] = {"_long": _long, "_skip_long": _skip_long, "_skip_int": _skip_int,
                           "_fail": _fail}
    # The source is built from the schema alone, never from data.
    exec(_CheckWriter(named).function("check", parsed_schema), env)
    check: WireCheck = env["check"]
    return check


class WriterSchemas:
    """Known writer schemas by fingerprint: the current ones plus any registered older ones."""

    def __init__(self) -> None:
        self._by_fingerprint: dict[bytes, Any] = {}
        self._checks: dict[bytes, WireCheck] = {}

    def register(self, schema: dict[str, Any] | Any) -> bytes:
        parsed = fastavro.parse_schema(schema) if isinstance(schema, dict) \
            else schema
        fp = fingerprint(parsed)
        self._by_fingerprint[fp] = parsed
        self._checks[fp] = wire_check(parsed)
        return fp

    def get(self, fp: bytes) -> Any | None:
        return self._by_fingerprint.get(fp)

    def check(self, fp: bytes) -> WireCheck | None:
        """The strict wire check of a registered writer schema."""
        return self._checks.get(fp)


WRITER_SCHEMAS = WriterSchemas()
for _name in SCHEMA_FILES:
    WRITER_SCHEMAS.register(load_schema(_name))
# Earlier versions of a record, kept so records already on a topic still decode (resolved to
# the current schema; fields added since take their defaults).
OLDER_SCHEMA_FILES = ("inventory_change.v1.avsc",  # before lead_time_days
                      "inventory_change.v2.avsc",  # before RESERVATION changes
                      "stock_state.v1.avsc",  # before lead_time_days
                      "stock_state.v2.avsc",  # event_ids in full, before recent_ids
                      "availability.v1.avsc")  # before snapshot_at
for _file in OLDER_SCHEMA_FILES:
    WRITER_SCHEMAS.register(
        json.loads(resources.files("schemas").joinpath(_file).read_text(encoding="utf-8")))


class AvroCodec:
    """Encode/decode one record type in Avro single-object encoding.

    `decode` accepts any registered writer schema and resolves it to this codec's reader
    schema; it raises SchemaError on anything that is not a well-formed record.
    """

    def __init__(self, name: str, *, writers: WriterSchemas = WRITER_SCHEMAS,
                 schema: dict[str, Any] | None = None) -> None:
        self.name = name
        self.schema = fastavro.parse_schema(schema) if schema is not None \
            else load_schema(name)
        self.fingerprint = fingerprint(self.schema)
        self.header = MARKER + self.fingerprint
        self.writers = writers
        if writers.get(self.fingerprint) is None:
            writers.register(self.schema)
        self._check = wire_check(self.schema)
        # Generated per schema (schemas/fastcode.py): fastavro's bytes and values at a third
        # of the cost; None where the schema has a type they leave to fastavro.
        self._fast_encode = fastcode.make_encoder(self.schema, self.header)
        self._fast_decode = fastcode.make_decoder(self.schema, HEADER_SIZE)
        # The same, reading only bodies the strict wire check accepts: one pass instead of
        # the check's and then the decoder's (SupplierDelta 4.7 -> 2.6 us).
        self._strict_decode = fastcode.make_decoder(self.schema, HEADER_SIZE, strict=True)

    def encode(self, record: dict[str, Any]) -> bytes:
        if self._fast_encode is not None:
            try:
                return self._fast_encode(record)
            except Exception:  # a value it does not take: fastavro decides,
                pass  # with the same bytes or the same error as it always gave
        buf = io.BytesIO()
        buf.write(self.header)
        try:
            fastavro.schemaless_writer(buf, self.schema, record)
        except (ValueError, TypeError, KeyError, AttributeError, OverflowError) as exc:
            raise SchemaError(f"cannot encode {self.name}: {exc}") from exc
        return buf.getvalue()

    def decode_trusted(self, data: bytes) -> dict[str, Any]:
        """Decode a record stockflow itself wrote in this codec's schema (its internal topics
        and table changelogs): fastavro alone, without the strict wire check that guards
        untrusted input. Anything else goes through `decode`."""
        if data[2:HEADER_SIZE] != self.fingerprint or data[:2] != MARKER:
            return self.decode(data)
        if self._fast_decode is not None:
            try:
                return self._fast_decode(data)
            except Exception:  # a body it does not take: fastavro's answer
                pass
        buf = io.BytesIO(data)
        buf.seek(HEADER_SIZE)
        try:
            record = fastavro.schemaless_reader(buf, self.schema, None)
        except Exception as exc:
            raise SchemaError(f"cannot decode {self.name}: {type(exc).__name__}: {exc}") from exc
        if not isinstance(record, dict):
            raise SchemaError(f"cannot decode {self.name}: not a record")
        return record

    def decode(self, data: bytes) -> dict[str, Any]:
        if len(data) < HEADER_SIZE or data[:2] != MARKER:
            raise SchemaError(f"not an Avro single-object {self.name}: bad marker")
        fp = bytes(data[2:HEADER_SIZE])
        if fp == self.fingerprint and self._strict_decode is not None:
            try:
                return self._strict_decode(data)
            except Exception:  # anything unusual: the check and fastavro decide, as before
                pass
        check: WireCheck | None
        if fp == self.fingerprint:
            writer = self.schema
            reader = None
            check = self._check
        else:
            writer = self.writers.get(fp)
            check = self.writers.check(fp)
            if writer is None or check is None:
                raise SchemaError(f"unknown writer schema fingerprint {fp.hex()} for {self.name}")
            reader = self.schema
        try:
            # Strict first: fastavro alone reads some malformed bodies as values.
            end = check(data, HEADER_SIZE)
        except SchemaError as exc:
            raise SchemaError(f"cannot decode {self.name}: {exc}") from None
        if end != len(data):
            raise SchemaError(f"cannot decode {self.name}: {len(data) - end} trailing bytes")
        if reader is None and self._fast_decode is not None:
            # The check passed, so the body is one fastavro reads as this same value.
            try:
                return self._fast_decode(data)
            except Exception:  # e.g. invalid UTF-8: fastavro's error follows
                pass
        buf = io.BytesIO(data)
        buf.seek(HEADER_SIZE)
        try:
            record = fastavro.schemaless_reader(buf, writer, reader)
        except Exception as exc:  # fastavro raises many types on truncated/garbled input
            raise SchemaError(f"cannot decode {self.name}: {type(exc).__name__}: {exc}") from exc
        if buf.tell() != len(data):
            raise SchemaError(f"cannot decode {self.name}: {len(data) - buf.tell()} trailing bytes")
        if not isinstance(record, dict):
            raise SchemaError(f"cannot decode {self.name}: not a record")
        return record


@cache
def codec_for(name: str) -> AvroCodec:
    """The process-wide codec of a record type."""
    return AvroCodec(name)
