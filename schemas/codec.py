"""Avro single-object encoding for stockflow records, and the Faust codecs that wrap it.

Wire format (Avro specification, "Single-object encoding"): the two marker bytes `C3 01`, the
8-byte little-endian CRC-64-AVRO fingerprint of the writer schema's Parsing Canonical Form,
then the Avro binary body. A reader looks the writer schema up by fingerprint and resolves it
to its own reader schema, so producers and consumers can evolve independently (add a field
with a default, and old records still read).
"""

from __future__ import annotations

import io
import json
import struct
from functools import cache
from importlib import resources
from typing import Any

import fastavro
from fastavro.schema import to_parsing_canonical_form
from faust.serializers import codecs

from pipeline.errors import SchemaError

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


class WriterSchemas:
    """Known writer schemas by fingerprint: the current ones plus any registered older ones."""

    def __init__(self) -> None:
        self._by_fingerprint: dict[bytes, Any] = {}

    def register(self, schema: dict[str, Any] | Any) -> bytes:
        parsed = fastavro.parse_schema(schema) if isinstance(schema, dict) \
            else schema
        fp = fingerprint(parsed)
        self._by_fingerprint[fp] = parsed
        return fp

    def get(self, fp: bytes) -> Any | None:
        return self._by_fingerprint.get(fp)


WRITER_SCHEMAS = WriterSchemas()
for _name in SCHEMA_FILES:
    WRITER_SCHEMAS.register(load_schema(_name))
# Earlier versions of a record, kept so records already on a topic still decode (resolved to
# the current schema; fields added since take their defaults).
OLDER_SCHEMA_FILES = ("inventory_change.v1.avsc",  # before lead_time_days
                      "stock_state.v1.avsc")  # before lead_time_days
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

    def encode(self, record: dict[str, Any]) -> bytes:
        buf = io.BytesIO()
        buf.write(self.header)
        try:
            fastavro.schemaless_writer(buf, self.schema, record)
        except (ValueError, TypeError, KeyError, AttributeError, OverflowError) as exc:
            raise SchemaError(f"cannot encode {self.name}: {exc}") from exc
        return buf.getvalue()

    def decode(self, data: bytes) -> dict[str, Any]:
        if len(data) < HEADER_SIZE or data[:2] != MARKER:
            raise SchemaError(f"not an Avro single-object {self.name}: bad marker")
        fp = bytes(data[2:HEADER_SIZE])
        if fp == self.fingerprint:
            writer = self.schema
            reader = None
        else:
            writer = self.writers.get(fp)
            if writer is None:
                raise SchemaError(f"unknown writer schema fingerprint {fp.hex()} for {self.name}")
            reader = self.schema
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


class FaustAvroCodec(codecs.Codec):
    """A Faust codec: `value_serializer="avro:SupplierDelta"` on a topic or table."""

    def __init__(self, record_name: str, **kwargs: Any) -> None:
        self.record_name = record_name
        super().__init__(record_name=record_name, **kwargs)

    def _dumps(self, obj: Any) -> bytes:
        return codec_for(self.record_name).encode(obj)

    def _loads(self, data: bytes) -> Any:
        return codec_for(self.record_name).decode(data)


def faust_codec_name(record_name: str) -> str:
    """Register (once) and return the Faust serializer name of a record type."""
    name = f"avro-{record_name}"
    if name not in codecs.codecs:
        codecs.register(name, FaustAvroCodec(record_name))
    return name
