"""Avro encoders and trusted decoders generated per schema: fastavro's bytes and values, faster.

fastavro's writer resolves every union by trying each branch's validator and walks the parsed
schema on every call; for stockflow's flat records that is most of an encode (StockUpdate
8.7 us). Here each record schema becomes one straight-line Python function, generated once
from the schema (never from data) and compiled with exec, as `codec.wire_check` is.

Both directions are a fast path over fastavro, not a second implementation of its edge
cases: anything the generated code does not expect (a value of another type, a missing field
without a default, an int out of range, a varint longer than one byte where one is expected
to be short, a union or enum index it does not know) raises, and the caller then runs fastavro
itself, which gives the bytes, the value or the error it always gave. So the fast path only
has to be identical to fastavro on what it accepts, and that is what the tests check.

A strict decoder (`make_decoder(..., strict=True)`) also takes the place of `codec.wire_check`
for the bodies it accepts: it accepts only what the check accepts (varints of at most 9 bytes
for a long and 4 for an int, so never beyond 64 or 32 bits; lengths within the body; no byte
after it) and raises on the rest, which then goes through the check and fastavro as before.
It reads records without maps and arrays (the check bounds their block counts).

Supported: records (nested too) of string, bytes, int, long, boolean, enum, map and array,
and unions of null with one other type (to encode: with a primitive or an enum, the ones whose
fastavro validation is re-created here). A schema with anything else (float, double, fixed,
logical types, other unions) gets no generated function and stays with fastavro.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

Encoder = Callable[[Any], bytes]
Decoder = Callable[[bytes], dict[str, Any]]

_LONG_MIN = -(1 << 63)
_LONG_LIMIT = 1 << 63
_INT_MIN = -(1 << 31)
_INT_LIMIT = 1 << 31
_PRIMITIVES = frozenset({"string", "bytes", "int", "long", "boolean"})
_NAMED_KINDS = frozenset({"record", "error", "enum", "fixed"})


class Unsupported(Exception):
    """The schema uses a type the generator leaves to fastavro."""


class Fallback(Exception):
    """Raised by generated code: this value (or body) is left to fastavro."""



def _put_long_py(v: Any, write: Callable[[int], None]) -> int:
    """Writes the zigzag varint of a long, byte by byte; OverflowError outside 64 bits."""
    if not _LONG_MIN <= v < _LONG_LIMIT:
        raise OverflowError("long out of range")
    n = (v << 1) ^ (v >> 63)
    while n > 0x7F:
        write(n & 0x7F | 0x80)
        n >>= 7
    write(n)
    return 0


def _get_long_py(data: bytes, pos: int) -> tuple[int, int]:
    """The zigzag long at pos (up to 10 bytes, as fastavro reads it) and the position after."""
    b = data[pos]
    pos += 1
    n = b & 0x7F
    shift = 7
    while b & 0x80:
        if shift > 63:
            raise ValueError("long longer than 10 bytes")
        b = data[pos]
        pos += 1
        n |= (b & 0x7F) << shift
        shift += 7
    n &= 0xFFFFFFFFFFFFFFFF  # fastavro reads into 64 bits
    return (n >> 1) ^ -(n & 1), pos


# An Avro long is a Kafka varlong (zigzag, then 7 bits a byte), and aiokafka (under Faust)
# compiles both directions: 0.13 us per 6-byte long read, against 0.7 for the loop above.
# Its reader does not check the end of the buffer, so the decoder pads the body (see below).
try:
    from aiokafka.record._crecords.cutil import decode_varint_cython as _get_long
    from aiokafka.record._crecords.cutil import encode_varint_cython as _put_long
except ImportError:  # pragma: no cover - aiokafka without its compiled records
    _get_long = _get_long_py
    _put_long = _put_long_py


# The one-byte longs: _ZIGZAG[v] for v in -64..63 (negative from the end), and back.
_ZIGZAG = [(v << 1) ^ (v >> 63) for v in range(64)] + [(v << 1) ^ (v >> 63)
                                                       for v in range(-64, 0)]
_UNZIGZAG = tuple((b >> 1) ^ -(b & 1) for b in range(128))


def _zigzag_byte(i: int) -> int:
    return (i << 1) ^ (i >> 63)


class _Source:
    """Lines of generated Python with indentation, and fresh local names."""

    def __init__(self, named: dict[str, Any]) -> None:
        self.named = named
        self.lines: list[str] = []
        self.consts: dict[str, Any] = {}
        self.count = 0
        self.inlining: list[str] = []

    def line(self, depth: int, text: str) -> None:
        self.lines.append("    " * depth + text)

    def fresh(self, prefix: str) -> str:
        self.count += 1
        return f"{prefix}{self.count}"

    def const(self, value: Any) -> str:
        name = self.fresh("_k")
        self.consts[name] = value
        return name

    def resolve(self, schema: Any) -> Any:
        """A type with named references replaced by their definitions; raises Unsupported."""
        if isinstance(schema, str):
            if schema in _PRIMITIVES or schema == "null":
                return schema
            if schema in self.named:
                return self.named[schema]
            raise Unsupported(f"type {schema!r}")
        if isinstance(schema, dict) and "logicalType" in schema:
            raise Unsupported(f"logical type {schema['logicalType']!r}")
        return schema

    def named_scope(self, schema: Any) -> str | None:
        if isinstance(schema, dict) and schema.get("type") in _NAMED_KINDS:
            name = str(schema["name"])
            if name in self.inlining:
                raise Unsupported(f"recursive type {name!r}")
            return name
        return None


def _null_union(schema: list[Any]) -> tuple[int, Any]:
    """(index of null, the other branch) of a [null, T] or [T, null] union."""
    if len(schema) != 2 or "null" not in schema:
        raise Unsupported(f"union {schema!r}")
    null_index = schema.index("null")
    return null_index, schema[1 - null_index]


class _EncoderSource(_Source):
    def emit(self, schema: Any, value: str, depth: int) -> None:
        """Appends the Avro binary of the Python value named `value` to `out`."""
        schema = self.resolve(schema)
        if isinstance(schema, list):
            null_index, branch = _null_union(schema)
            branch = self.resolve(branch)
            kind = branch if isinstance(branch, str) else branch.get("type")
            if kind not in _PRIMITIVES and kind != "enum":
                raise Unsupported(f"union {schema!r}")
            self.line(depth, f"if {value} is None:")
            self.line(depth + 1, f"append({_zigzag_byte(null_index)})")
            self.line(depth, "else:")
            self.line(depth + 1, f"append({_zigzag_byte(1 - null_index)})")
            self.emit_branch(branch, value, depth + 1)
            return
        scope = self.named_scope(schema)
        if scope is not None:
            self.inlining.append(scope)
            self.emit_named(schema, value, depth)
            self.inlining.pop()
            return
        kind = schema if isinstance(schema, str) else schema["type"]
        if kind in ("int", "long"):
            # fastavro writes any int-like value as a long, even in an int field, with no
            # 32-bit check; outside one byte only a plain int in range takes the fast path.
            self.put_long(value, depth)
        elif kind == "string":
            self.string(value, depth)
        elif kind == "bytes":
            # fastavro takes any bytes-like value; others are left to it.
            self.line(depth, f"if {value}.__class__ is not bytes:")
            self.line(depth + 1, "raise Fallback")
            self.sized(value, depth)
        elif kind == "boolean":
            self.line(depth, f"append(1 if {value} else 0)")  # fastavro: truthiness
        elif kind == "map":
            self.blocks(schema, value, depth, is_map=True)
        elif kind == "array":
            self.blocks(schema, value, depth, is_map=False)
        else:
            raise Unsupported(f"type {kind!r}")

    def put_long(self, value: str, depth: int) -> None:
        # -64..63 index the zigzag table (from its end when negative); a float raises.
        self.line(depth, f"if -64 <= {value} < 64:")
        self.line(depth + 1, f"append(_ZIGZAG[{value}])")
        # A float, a numpy int, ...: fastavro's own conversion decides. An int beyond 64
        # bits is an OverflowError in _put_long, and fastavro's error follows.
        self.line(depth, f"elif {value}.__class__ is int:")
        self.line(depth + 1, f"_put_long({value}, append)")
        self.line(depth, "else:")
        self.line(depth + 1, "raise Fallback")

    def emit_branch(self, branch: Any, value: str, depth: int) -> None:
        """The non-null branch of a union, with the checks of fastavro's union validators."""
        kind = branch if isinstance(branch, str) else branch["type"]
        if kind in ("int", "long"):
            low, limit = (_INT_MIN, _INT_LIMIT) if kind == "int" else (_LONG_MIN, _LONG_LIMIT)
            # Not a bool, and in range: fastavro matches neither to an int branch.
            self.line(depth, f"if {value}.__class__ is not int or not {low} <= {value} "
                             f"< {limit}:")
            self.line(depth + 1, "raise Fallback")
            self.emit(kind, value, depth)
        elif kind == "boolean":
            self.line(depth, f"if {value}.__class__ is not bool:")
            self.line(depth + 1, "raise Fallback")
            self.emit(kind, value, depth)
        else:  # string (str.encode refuses non-str), bytes (checked), enum (by symbol)
            self.emit(branch, value, depth)

    def string(self, value: str, depth: int) -> None:
        encoded = self.fresh("s")
        # str.encode refuses anything but a str, as fastavro does; a lone surrogate raises.
        self.line(depth, f"{encoded} = _encode({value})")
        self.sized(encoded, depth)

    def sized(self, encoded: str, depth: int) -> None:
        size = self.fresh("n")
        self.line(depth, f"{size} = len({encoded})")
        self.line(depth, f"if {size} < 64:")
        self.line(depth + 1, f"append({size} << 1)")
        self.line(depth, "else:")
        self.line(depth + 1, f"_put_long({size}, append)")
        self.line(depth, f"out += {encoded}")

    def emit_named(self, schema: dict[str, Any], value: str, depth: int) -> None:
        kind = schema["type"]
        if kind in ("record", "error"):
            self.record(schema, value, depth)
        elif kind == "enum":
            symbols = schema["symbols"]
            # symbol -> its index's bytes; an unknown symbol is a KeyError, left to fastavro.
            table = self.const({symbol: _varint_bytes(index)
                                for index, symbol in enumerate(symbols)})
            self.line(depth, f"out += {table}[{value}]")
        else:
            raise Unsupported(f"type {kind!r}")

    def record(self, schema: dict[str, Any], value: str, depth: int) -> None:
        for field in schema["fields"]:
            item = self.fresh("v")
            name = repr(field["name"])
            if "default" in field:  # as fastavro: datum.get(name, default)
                self.line(depth, f"{item} = {value}.get({name}, {self.const(field['default'])})")
            else:  # missing: fastavro's error, or null for a nullable union
                self.line(depth, f"{item} = {value}[{name}]")
            self.emit(field["type"], item, depth)

    def blocks(self, schema: dict[str, Any], value: str, depth: int, *, is_map: bool) -> None:
        """As fastavro writes them: one block of every item, then 0; an empty one is 0."""
        size = self.fresh("n")
        self.line(depth, f"{size} = len({value})")
        self.line(depth, f"if {size}:")
        self.line(depth + 1, f"if {size} < 64:")
        self.line(depth + 2, f"append({size} << 1)")
        self.line(depth + 1, "else:")
        self.line(depth + 2, f"_put_long({size}, append)")
        item = self.fresh("x")
        if is_map:
            key = self.fresh("key")
            self.line(depth + 1, f"for {key}, {item} in {value}.items():")
            self.string(key, depth + 2)
            self.emit(schema["values"], item, depth + 2)
        else:
            self.line(depth + 1, f"for {item} in {value}:")
            self.emit(schema["items"], item, depth + 2)
        self.line(depth, "append(0)")

    def function(self, schema: dict[str, Any], header: bytes) -> str:
        self.line(0, "def encode(record):")
        # A dict subclass (a defaultdict would invent missing fields) is left to fastavro.
        self.line(1, "if record.__class__ is not dict:")
        self.line(2, "raise Fallback")
        self.line(1, f"out = bytearray({header!r})")
        self.line(1, "append = out.append")
        self.inlining.append(str(schema["name"]))
        self.record(schema, "record", 1)
        self.line(1, "return bytes(out)")
        return "\n".join(self.lines)


def _varint_bytes(n: int) -> bytes:
    out = bytearray()
    _put_long_py(n, out.append)
    return bytes(out)


class _DecoderSource(_Source):
    def __init__(self, named: dict[str, Any], *, strict: bool = False) -> None:
        super().__init__(named)
        self.strict = strict

    def emit(self, schema: Any, target: str, depth: int) -> None:
        """Reads one value at pos into the local named `target`, moving pos past it."""
        schema = self.resolve(schema)
        if isinstance(schema, list):
            null_index, branch = _null_union(schema)
            index = self.fresh("i")
            self.line(depth, f"{index} = data[pos]")
            self.line(depth, "pos += 1")
            # Only the one-byte indexes 0 and 1; anything else is left to fastavro.
            self.line(depth, f"if {index} == {_zigzag_byte(null_index)}:")
            self.line(depth + 1, f"{target} = None")
            self.line(depth, f"elif {index} == {_zigzag_byte(1 - null_index)}:")
            self.emit(branch, target, depth + 1)
            self.line(depth, "else:")
            self.line(depth + 1, "raise Fallback")
            return
        scope = self.named_scope(schema)
        if scope is not None:
            self.inlining.append(scope)
            self.emit_named(schema, target, depth)
            self.inlining.pop()
            return
        kind = schema if isinstance(schema, str) else schema["type"]
        if kind in ("int", "long"):
            self.long(target, depth, 4 if kind == "int" else 9)
        elif kind in ("string", "bytes"):
            end = self.fresh("e")
            self.line(depth, "b = data[pos]")
            self.line(depth, "if not b & 0x81:")  # one byte, not negative
            self.line(depth + 1, "pos += 1")
            self.line(depth + 1, f"{end} = pos + (b >> 1)")
            self.line(depth, "else:")
            self.varint(end, depth + 1, 9)
            self.line(depth + 1, f"if {end} < 0:")
            self.line(depth + 2, "raise Fallback")
            self.line(depth + 1, f"{end} += pos")
            self.line(depth, f"if {end} > n:")  # a slice would quietly cut it short
            self.line(depth + 1, "raise Fallback")
            if kind == "string":  # invalid UTF-8 raises here, and fastavro's error follows
                self.line(depth, f"{target} = data[pos:{end}].decode()")
            else:
                self.line(depth, f"{target} = bytes(data[pos:{end}])")
            self.line(depth, f"pos = {end}")
        elif kind == "boolean":
            self.line(depth, "b = data[pos]")
            self.line(depth, "pos += 1")
            self.line(depth, "if b > 1:")
            self.line(depth + 1, "raise Fallback")
            self.line(depth, f"{target} = b == 1")
        elif kind == "map":
            self.blocks(schema, target, depth, is_map=True)
        elif kind == "array":
            self.blocks(schema, target, depth, is_map=False)
        else:
            raise Unsupported(f"type {kind!r}")

    def long(self, target: str, depth: int, max_bytes: int = 9) -> None:
        self.line(depth, "b = data[pos]")
        self.line(depth, "if b < 128:")
        self.line(depth + 1, f"{target} = _UNZIGZAG[b]")
        self.line(depth + 1, "pos += 1")
        self.line(depth, "else:")
        self.varint(target, depth + 1, max_bytes)

    def varint(self, target: str, depth: int, max_bytes: int) -> None:
        """A varint of more than one byte; strict: of at most max_bytes, else Fallback."""
        if not self.strict:
            self.line(depth, f"{target}, pos = _get_long(data, pos)")
            return
        # 9 bytes hold 63 bits and 4 hold 28: in range whatever they say. Longer ones (and
        # overlong encodings of small values) are left to the check's own rules.
        self.line(depth, f"{target}, end = _get_long(data, pos)")
        self.line(depth, f"if end - pos > {max_bytes}:")
        self.line(depth + 1, "raise Fallback")
        self.line(depth, "pos = end")

    def emit_named(self, schema: dict[str, Any], target: str, depth: int) -> None:
        kind = schema["type"]
        if kind in ("record", "error"):
            self.record(schema, target, depth)
        elif kind == "enum":
            # one-byte index -> symbol; any other byte is a KeyError, left to fastavro
            table = self.const({_zigzag_byte(index): symbol
                                for index, symbol in enumerate(schema["symbols"])
                                if _zigzag_byte(index) < 0x80})
            self.line(depth, f"{target} = {table}[data[pos]]")
            self.line(depth, "pos += 1")
        else:
            raise Unsupported(f"type {kind!r}")

    def record(self, schema: dict[str, Any], target: str, depth: int) -> None:
        items = []
        for field in schema["fields"]:
            local = self.fresh("v")
            self.emit(field["type"], local, depth)
            items.append(f"{field['name']!r}: {local}")
        self.line(depth, f"{target} = {{{', '.join(items)}}}")

    def blocks(self, schema: dict[str, Any], target: str, depth: int, *, is_map: bool) -> None:
        """Blocks of a count (negative: then a byte size) and items until a count of 0."""
        if self.strict:
            raise Unsupported("maps and arrays in a strict decoder")
        count = self.fresh("c")
        self.line(depth, f"{target} = {{}}" if is_map else f"{target} = []")
        self.long(count, depth)
        self.line(depth, f"while {count}:")
        self.line(depth + 1, f"if {count} < 0:")
        self.line(depth + 2, f"{count} = -{count}")
        self.line(depth + 2, "_, pos = _get_long(data, pos)")
        self.line(depth + 1, f"for _ in range({count}):")
        if is_map:
            key, item = self.fresh("key"), self.fresh("x")
            self.emit("string", key, depth + 2)
            self.emit(schema["values"], item, depth + 2)
            self.line(depth + 2, f"{target}[{key}] = {item}")
        else:
            item = self.fresh("x")
            self.emit(schema["items"], item, depth + 2)
            self.line(depth + 2, f"{target}.append({item})")
        self.long(count, depth + 1)

    def function(self, schema: dict[str, Any], start: int) -> str:
        self.line(0, "def decode(data):")
        self.line(1, "n = len(data)")
        # _get_long may read past a truncated body: the padding's zero bytes end any varint
        # there, and a body that ended early leaves pos beyond n.
        self.line(1, "data = data + _PADDING")
        self.line(1, f"pos = {start}")
        self.inlining.append(str(schema["name"]))
        self.record(schema, "record", 1)
        # Strict: a trailing byte is an error of the check's; otherwise ignored, as fastavro does.
        self.line(1, "if pos != n:" if self.strict else "if pos > n:")
        self.line(2, "raise Fallback")
        self.line(1, "return record")
        return "\n".join(self.lines)


def _named(parsed_schema: Any) -> dict[str, Any]:
    if not isinstance(parsed_schema, dict) or parsed_schema.get("type") != "record":
        raise Unsupported("not a record schema")
    named: dict[str, Any] = parsed_schema.get("__named_schemas", {})
    return named


def _compile(source: _Source, text: str, name: str) -> Any:
    env: dict[str, Any] = {"Fallback": Fallback, "_put_long": _put_long,
                           "_get_long": _get_long, "_encode": str.encode,
                           "_PADDING": bytes(10), "_ZIGZAG": _ZIGZAG, "_UNZIGZAG": _UNZIGZAG,
                           "len": len, "__builtins__": __builtins__}
    env.update(source.consts)
    # The source is built from the schema alone, never from data.
    exec(compile(text, f"<fastcode {name}>", "exec"), env)
    return env[name]


def make_encoder(parsed_schema: Any, header: bytes = b"") -> Encoder | None:
    """`encode(record) -> header + body` as fastavro writes it, or None if unsupported.

    The function raises on anything it does not take; the caller then uses fastavro."""
    try:
        source = _EncoderSource(_named(parsed_schema))
        text = source.function(parsed_schema, header)
    except Unsupported:
        return None
    encoder: Encoder = _compile(source, text, "encode")
    return encoder


def make_decoder(parsed_schema: Any, start: int = 0, *, strict: bool = False) -> Decoder | None:
    """`decode(data)` of the body at `start`, as fastavro reads it with writer == reader
    schema, or None if unsupported. It raises on anything it does not take (a truncated or
    unusual body); the caller then uses fastavro. Bytes after the body are ignored, as
    fastavro's schemaless_reader ignores them; `strict`: see the module doc."""
    try:
        source = _DecoderSource(_named(parsed_schema), strict=strict)
        text = source.function(parsed_schema, start)
    except Unsupported:
        return None
    decoder: Decoder = _compile(source, text, "decode")
    return decoder
