"""Fuzz the worker's per-key step (`pipeline.step.apply_deltas`) with hostile raw records.

Each kind below is one malformed raw Kafka record (key, value bytes, timestamp): truncated or
corrupted Avro, wrong fingerprints, out-of-range numbers, bad UTF-8, huge strings, NaN-like
decimals, missing and oversized keys, and every business rule broken one at a time. Every kind
must become a dead letter with its expected reason, with no exception escaping, every encoded
dead letter under Kafka's 1,000,000-byte send limit (with its Kafka key too),
and a good record of the same key applied after all of them, through one key state. Seeded,
and bounded: the whole run takes a few seconds. docs/reliability.md ("Raw Kafka records") has
the table of kinds and counts.
"""

from __future__ import annotations

import random
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from pipeline import validate as v
from pipeline.apply import APPLIED, OUTCOMES
from pipeline.catalog import Catalog
from pipeline.step import INVALID, RawRecord, StepContext, StepOutputs, apply_deltas
from schemas.codec import HEADER_SIZE, MARKER, SCHEMA_FILES, codec_for, fingerprint, load_schema

SEED = 20261201
NOW = 1_764_547_200_000  # the Kafka timestamp of every record (2025-12-01), epoch ms
WALL_CLOCK = NOW + 1  # what a record without a Kafka timestamp is judged by
KAFKA_SEND_LIMIT = 1_000_000
TOPIC = "inventory.deltas"
PER_RECORD_BUDGET_S = 0.5  # bounded CPU per hostile record, generous for a loaded machine

DELTA = codec_for("SupplierDelta")
DEAD = codec_for("DeadLetter")

GOOD: dict[str, Any] = {
    "supplier_id": "acme-1", "sku": "SKU-1", "event_id": "ev-good", "sequence": 5,
    "kind": "SNAPSHOT", "quantity": 10, "observed_at": NOW - 1000, "price": "12.50",
    "currency": "EUR", "warehouse": "berlin", "lead_time_days": 3, "status": "ACTIVE",
    "connector": "rest", "received_at": NOW - 500,
}
KEY = b"acme-1|SKU-1"
DECODE = frozenset({v.DECODE_ERROR})


@dataclass(frozen=True)
class Kind:
    """One malformed raw record and the reasons it may be dead-lettered with."""

    category: str
    name: str
    key: bytes | None
    value: bytes | None
    expected: frozenset[str]
    timestamp_ms: int = NOW


# --- Avro body construction (independent of the codec, so it can write what it refuses) ----

def zigzag(value: int) -> bytes:
    n = value * 2 if value >= 0 else -value * 2 - 1
    out = bytearray()
    while True:
        if n < 0x80:
            out.append(n)
            return bytes(out)
        out.append((n & 0x7F) | 0x80)
        n >>= 7


def avro_bytes(data: bytes) -> bytes:
    return zigzag(len(data)) + data


def avro_string(text: str) -> bytes:
    return avro_bytes(text.encode("utf-8", "surrogatepass"))


def null_or(raw: bytes | None) -> bytes:
    return zigzag(0) if raw is None else zigzag(1) + raw


_ENUMS = {"kind": ("SNAPSHOT", "ADJUSTMENT"), "status": ("ACTIVE", "DISCONTINUED")}


def raw_fields(record: dict[str, Any]) -> dict[str, bytes]:
    """The Avro encoding of each SupplierDelta field, in schema order."""
    r = record
    return {
        "supplier_id": avro_string(r["supplier_id"]), "sku": avro_string(r["sku"]),
        "event_id": avro_string(r["event_id"]), "sequence": zigzag(r["sequence"]),
        "kind": zigzag(_ENUMS["kind"].index(r["kind"])), "quantity": zigzag(r["quantity"]),
        "observed_at": zigzag(r["observed_at"]),
        "price": null_or(None if r["price"] is None else avro_string(r["price"])),
        "currency": null_or(None if r["currency"] is None else avro_string(r["currency"])),
        "warehouse": null_or(None if r["warehouse"] is None else avro_string(r["warehouse"])),
        "lead_time_days": null_or(
            None if r["lead_time_days"] is None else zigzag(r["lead_time_days"])),
        "status": zigzag(_ENUMS["status"].index(r["status"])),
        "connector": avro_string(r["connector"]), "received_at": zigzag(r["received_at"]),
    }


def body(record: dict[str, Any] | None = None, /, **raw: bytes) -> bytes:
    """A single-object SupplierDelta of record (GOOD by default), some fields' bytes replaced."""
    fields = raw_fields(record if record is not None else GOOD)
    fields.update(raw)
    return DELTA.header + b"".join(fields.values())


def delta(**overrides: Any) -> bytes:
    """A well-formed SupplierDelta of GOOD with some values changed (may break a rule)."""
    return body({**GOOD, **overrides})


def key_of(**overrides: Any) -> bytes:
    record = {**GOOD, **overrides}
    return f"{record['supplier_id']}|{record['sku']}".encode("utf-8", "surrogatepass")


# --- the kinds ----------------------------------------------------------------------------

def decode_kinds(rng: random.Random) -> Iterator[Kind]:
    good = body()
    yield Kind("framing", "value null (tombstone)", KEY, None, DECODE)
    yield Kind("framing", "value empty", KEY, b"", DECODE)
    for n in range(1, HEADER_SIZE):
        yield Kind("framing", f"value of {n} header bytes only", KEY, good[:n], DECODE)
    yield Kind("framing", "header only", KEY, good[:HEADER_SIZE], DECODE)
    for marker in (b"\x00\x00", b"\xc3\x00", b"\x01\xc3", b"\x00\x01", b"{\"", b"\xff\xff"):
        yield Kind("framing", f"marker {marker.hex()}", KEY, marker + good[2:], DECODE)
    yield Kind("framing", "JSON instead of Avro", KEY, b'{"supplier_id": "acme-1"}', DECODE)
    yield Kind("framing", "Confluent wire format (magic 0, schema id)", KEY,
               b"\x00\x00\x00\x00\x01" + good[HEADER_SIZE:], DECODE)
    yield Kind("framing", "plain text", KEY, b"acme-1,SKU-1,10", DECODE)
    yield Kind("framing", "1 MB of zeros", KEY, bytes(1_000_000), DECODE)
    yield Kind("framing", "1 MB of 0xff", KEY, b"\xff" * 1_000_000, DECODE)

    for i in range(12):
        fp = rng.randbytes(8)
        yield Kind("fingerprint", f"random fingerprint #{i}", KEY,
                   MARKER + fp + good[HEADER_SIZE:], DECODE)
    for name in sorted(SCHEMA_FILES):
        if name == "SupplierDelta":
            continue
        fp = fingerprint(load_schema(name))
        yield Kind("fingerprint", f"fingerprint of {name}", KEY,
                   MARKER + fp + good[HEADER_SIZE:], DECODE)
    yield Kind("fingerprint", "fingerprint byte-swapped", KEY,
               MARKER + DELTA.fingerprint[::-1] + good[HEADER_SIZE:], DECODE)
    yield Kind("fingerprint", "fingerprint with one bit flipped", KEY,
               MARKER + bytes([DELTA.fingerprint[0] ^ 1]) + DELTA.fingerprint[1:]
               + good[HEADER_SIZE:], DECODE)

    for cut in range(HEADER_SIZE + 1, len(good)):
        yield Kind("truncated", f"body cut at byte {cut} of {len(good)}", KEY, good[:cut], DECODE)
    for extra in (b"\x00", b"\x02", b"\xff", b"\x00" * 100, rng.randbytes(1000)):
        yield Kind("trailing", f"{len(extra)} trailing bytes {extra[:2].hex()}", KEY,
                   good + extra, DECODE)

    for field in ("kind", "status"):
        for index in (-1, -2, 2, 3, 2**31, 2**62):
            yield Kind("enum index", f"{field} index {index}", KEY,
                       body(**{field: zigzag(index)}), DECODE)
    payloads = raw_fields({**GOOD, "warehouse": "berlin"})
    for field in ("price", "currency", "warehouse", "lead_time_days"):
        payload = payloads[field][1:]  # the value after branch index 1 (one byte, 0x02)
        for index in (-1, 2, 3, 2**40):
            # -1 with the value after it: fastavro alone read it as branch 1.
            yield Kind("union index", f"{field} branch {index}", KEY,
                       body(**{field: zigzag(index) + payload}), DECODE)
    for field in ("sequence", "quantity", "observed_at", "received_at"):
        for label, raw in (("2^63", zigzag(2**63)), ("2^64", zigzag(2**64)),
                           ("-2^63-1", zigzag(-(2**63) - 1)), ("2^70", zigzag(2**70)),
                           ("11-byte varint", b"\xff" * 10 + b"\x01"),
                           ("unterminated varint", b"\xff" * 9)):
            yield Kind("long range", f"{field} {label}", KEY, body(**{field: raw}), DECODE)
    for label, value in (("2^31", 2**31), ("-2^31-1", -(2**31) - 1), ("2^40", 2**40)):
        yield Kind("int range", f"lead_time_days {label}", KEY,
                   body(lead_time_days=zigzag(1) + zigzag(value)), DECODE)
    yield Kind("int range", "lead_time_days 6-byte varint", KEY,
               body(lead_time_days=zigzag(1) + b"\x80" * 5 + b"\x01"), DECODE)

    strings = ("supplier_id", "sku", "event_id", "connector")
    for field in strings:
        for label, raw in (
            ("length -1", zigzag(-1)),
            ("length -2^40", zigzag(-(2**40))),
            ("length 2^40", zigzag(2**40) + b"x"),
            ("length past the end", zigzag(200) + b"x"),
            ("invalid UTF-8 0xff", avro_bytes(b"a\xffb")),
            ("UTF-8 surrogate", avro_bytes(b"a\xed\xa0\x80b")),
            ("overlong UTF-8 NUL", avro_bytes(b"a\xc0\x80b")),
            ("truncated UTF-8", avro_bytes(b"ab\xe2\x82")),
            ("latin-1 text", avro_bytes("Größe".encode("latin-1"))),
        ):
            yield Kind("string bytes", f"{field} {label}", KEY, body(**{field: raw}), DECODE)
    for field in ("price", "currency", "warehouse"):
        for label, raw in (("invalid UTF-8", avro_bytes(b"\xff1")),
                           ("length past the end", zigzag(500) + b"1")):
            yield Kind("string bytes", f"{field} {label}", KEY,
                       body(**{field: zigzag(1) + raw}), DECODE)


def rule_kinds() -> Iterator[Kind]:
    def rule(category: str, name: str, reason: str, *, key: bytes | None = None,
             **overrides: Any) -> Kind:
        return Kind(category, name, key if key is not None else key_of(**overrides),
                    delta(**overrides), frozenset({reason}))

    value: Any  # each loop below draws its own type of value

    for name, value in (("empty", ""), ("65 chars", "x" * 65), ("space", "acme 1"),
                        ("pipe", "acme|1"), ("accent", "acmé"), ("slash", "a/b"),
                        ("newline", "acme\n"), ("Arabic digits", "\u0661\u0662"), ("NUL", "a\x00"),
                        ("64 KiB", "a" * 65536), ("emoji", "📦")):
        yield rule("supplier_id", f"supplier_id {name}", v.BAD_SUPPLIER_ID, supplier_id=value)
    for name, value in (
        ("empty", ""), ("129 chars", "x" * 129), ("350 KiB", "S" * (350 * 1024)),
        ("pipe", "a|b"), ("leading space", " a"), ("trailing space", "a "),
        ("tab", "a\tb"), ("NUL", "a\x00"), ("newline", "a\nb"), ("CR", "a\rb"),
        ("DEL", "a\x7f"), ("zero width space", "a\u200bb"), ("NBSP", "a\u00a0b"),
        ("line separator", "a\u2028b"), ("paragraph separator", "a\u2029b"),
        ("BOM", "\ufeffa"), ("RTL override", "a\u202eb"),
        ("private use", "a\ue000"), ("unassigned", "a\U000e0fff"), ("escape", "a\x1b[31m"),
        ("only spaces", "   "),
    ):
        yield rule("sku", f"sku {name}", v.BAD_SKU, sku=value)
    for name, value in (("empty", ""), ("129 chars", "e" * 129), ("NUL", "e\x00"),
                        ("CRLF", "e\r\n"), ("64 KiB", "e" * 65536)):
        yield rule("event_id", f"event_id {name}", v.BAD_EVENT_ID, event_id=value)

    yield Kind("key", "no key", None, delta(), frozenset({v.MISSING_KEY}))
    for name, key in (
        ("empty key", b""), ("other sku", b"acme-1|SKU-2"), ("other supplier", b"beta|SKU-1"),
        ("no separator", b"acme-1SKU-1"), ("sku only", b"SKU-1"), ("trailing space", KEY + b" "),
        ("trailing NUL", KEY + b"\x00"), ("upper case", KEY.upper()),
        ("invalid UTF-8", b"acme-1|\xff"), ("latin-1", "acme-1|Größe".encode("latin-1")),
        ("520 KB key", KEY + b"K" * 520_000), ("999 KB key", b"k" * 999_000),
        ("key is the value", delta()), ("UTF-16", KEY.decode().encode("utf-16")),
    ):
        yield Kind("key", name, key, delta(), frozenset({v.KEY_MISMATCH}))

    limit = v.DEFAULT_LIMITS
    future_us = (NOW + limit.max_future_ms) * 1000
    for name, value in (("0", 0), ("-1", -1), ("-2^63", -(2**63)), ("2^63-1", 2**63 - 1),
                        ("skew + 1 us", future_us + 1),
                        ("one hour ahead", future_us + 3_600_000_000),
                        ("year 2100 in us", 4_102_444_800_000_000),
                        ("ns instead of us", NOW * 1_000_000)):
        yield rule("sequence", f"sequence {name}", v.BAD_SEQUENCE, sequence=value)

    for name, value in (("-1", -1), ("-10^9", -(10**9)), ("-2^63", -(2**63))):
        yield rule("quantity", f"SNAPSHOT quantity {name}", v.NEGATIVE_SNAPSHOT, quantity=value)
    for name, value in (("10^9+1", 10**9 + 1), ("2^63-1", 2**63 - 1), ("2^32", 2**32)):
        yield rule("quantity", f"SNAPSHOT quantity {name}", v.QUANTITY_OUT_OF_RANGE,
                   quantity=value)
    for name, value in (("10^9+1", 10**9 + 1), ("-10^9-1", -(10**9) - 1), ("2^62", 2**62),
                        ("-2^63", -(2**63))):
        yield rule("quantity", f"ADJUSTMENT quantity {name}", v.QUANTITY_OUT_OF_RANGE,
                   kind="ADJUSTMENT", quantity=value)

    for field in ("observed_at", "received_at"):
        for name, value in (("skew + 1 ms", NOW + limit.max_future_ms + 1),
                            ("year 2100", 4_102_444_800_000), ("2^63-1", 2**63 - 1),
                            ("microseconds", NOW * 1000)):
            yield rule("timestamps", f"{field} {name}", v.TIMESTAMP_IN_FUTURE, **{field: value})
        for name, value in (("0", 0), ("-1", -1), ("-2^63", -(2**63)),
                            ("seconds", NOW // 1000), ("1999-12-31", 946_684_799_999)):
            yield rule("timestamps", f"{field} {name}", v.TIMESTAMP_TOO_OLD, **{field: value})

    for value in ("NaN", "nan", "sNaN", "-NaN", "Infinity", "-Infinity", "inf", "Inf", "1e30",
                  "1e1000000", "1E5", "1e-5", "-1", "+1", "-0", "1.23456", "", " ", "1,5",
                  ".5", "5.", " 5", "5 ", "0x10", "1_000", "\u0661\u0662", "\uff11\uff12",
                  "½", "9" * 1000, "1000000000.0001", "99999999999", "1.2.3", "12.5€", "NaN12",
                  "\u0661.\u0665", "0.", "--1", "1e", "e1", "∞", "12,50", "12.50\n", "\x00"):
        yield rule("price", f"price {value[:24]!r}", v.BAD_PRICE, price=value)
    for value in ("AAA", "ZZZ", "XTS", "XXX", "DEM", "HRK", "eur", "Eur", "EU", "EURO", "E1R",
                  "ÉUR", "\uff25\uff35\uff32", "EUR\n", " EUR", "", "€", "E\x00R"):
        yield rule("currency", f"currency {value!r}", v.BAD_CURRENCY, currency=value)
    for value in (-1, 366, 2**31 - 1, -(2**31), 1000):
        yield rule("lead time", f"lead_time_days {value}", v.BAD_LEAD_TIME, lead_time_days=value)
    for name, value in (("empty", ""), ("129 chars", "w" * 129), ("NUL", "a\x00"),
                        ("100 KiB", "w" * 102_400), ("newline", "a\nb")):
        yield rule("warehouse", f"warehouse {name}", v.BAD_WAREHOUSE, warehouse=value)
    for name, value in (("empty", ""), ("65 chars", "c" * 65), ("newline", "c\n"),
                        ("NUL", "\x00")):
        yield rule("connector", f"connector {name}", v.BAD_CONNECTOR, connector=value)

    # Several rules broken at once: the first in the documented order wins.
    yield rule("first rule wins", "bad supplier_id and sku and quantity", v.BAD_SUPPLIER_ID,
               supplier_id="bad id", sku="a|b", quantity=-5)
    yield Kind("first rule wins", "bad sku and no key", None, delta(sku="a|b"),
               frozenset({v.BAD_SKU}))
    yield Kind("first rule wins", "no key and bad price", None, delta(price="NaN"),
               frozenset({v.MISSING_KEY}))
    yield rule("first rule wins", "future sequence and future observed_at", v.BAD_SEQUENCE,
               sequence=2**63 - 1, observed_at=2**63 - 1)


def clock_kinds() -> Iterator[Kind]:
    # The record's own Kafka timestamp is the clock: a good record is judged by it.
    for name, ts in (("Kafka time 2000-01-01", 946_684_800_000),
                     ("Kafka time 1970 + 1 ms", 1)):
        yield Kind("Kafka timestamp", f"{name}, observed_at now", KEY, delta(),
                   frozenset({v.TIMESTAMP_IN_FUTURE}), timestamp_ms=ts)
    for name, ts in (("no Kafka time (-1)", -1), ("no Kafka time (0)", 0)):
        yield Kind("Kafka timestamp", f"{name}, sequence 2^63-1", KEY, delta(sequence=2**63 - 1),
                   frozenset({v.BAD_SEQUENCE}), timestamp_ms=ts)


def all_kinds() -> list[Kind]:
    rng = random.Random(SEED)
    return [*decode_kinds(rng), *rule_kinds(), *clock_kinds()]


# --- the worker's handling of one raw record ------------------------------------------------

@dataclass
class Handled:
    outcome: str  # "invalid:<reason>", or what the per-key step made of a valid record
    dead_letters: list[tuple[bytes | None, dict[str, Any]]]
    updates: list[dict[str, Any]]


class Worker:
    """The worker's rule for one key, `pipeline.step.apply_deltas`, one raw record at a time."""

    def __init__(self) -> None:
        self.state: dict[str, Any] | None = None
        self.ctx = StepContext(platform_sku=Catalog.empty().platform_sku,
                               dedup_ttl_ms=7 * 24 * 3600 * 1000,
                               wall_clock_ms=lambda: WALL_CLOCK)

    def handle(self, key: bytes | None, value: bytes | None, timestamp_ms: int,
               offset: int) -> Handled:
        out = StepOutputs()
        rec = RawRecord(key=key, value=value, timestamp_ms=timestamp_ms, topic=TOPIC,
                        partition=0, offset=offset)
        self.state = apply_deltas(self.state, [rec], self.ctx, out)
        if out.invalid_reasons:
            (reason,) = out.invalid_reasons
            outcome = f"{INVALID}:{reason}"
        else:
            (outcome,) = out.outcomes
        return Handled(outcome, out.dead_letters, out.updates)


# --- the test -------------------------------------------------------------------------------

def run(kinds: list[Kind], handle: Callable[..., Handled]) -> dict[str, Any]:
    """Feed every kind; the failures, the largest dead letter (value; with its Kafka key) etc."""
    failures: list[str] = []
    largest = 0
    largest_with_key = 0
    too_big_with_key: list[str] = []
    slowest = 0.0
    reasons: Counter[str] = Counter()
    for offset, kind in enumerate(kinds):
        started = time.perf_counter()
        try:
            handled = handle(kind.key, kind.value, kind.timestamp_ms, offset)
            letters = [(k, DEAD.encode(letter)) for k, letter in handled.dead_letters]
        except Exception as exc:  # the point of the test: nothing escapes
            failures.append(f"{kind.name}: uncaught {type(exc).__name__}: {exc}"[:300])
            continue
        elapsed = time.perf_counter() - started
        slowest = max(slowest, elapsed)
        reason = handled.outcome.removeprefix(f"{INVALID}:")
        reasons[reason] += 1
        if reason not in kind.expected:
            failures.append(f"{kind.name}: {handled.outcome}, expected {sorted(kind.expected)}")
        if len(letters) != (0 if reason == handled.outcome else 1):
            failures.append(f"{kind.name}: {handled.outcome} with {len(letters)} dead letters")
        for dl_key, encoded in letters:
            largest = max(largest, len(encoded))
            if len(encoded) >= KAFKA_SEND_LIMIT:
                failures.append(f"{kind.name}: dead letter of {len(encoded)} bytes")
            with_key = len(encoded) + len(dl_key or b"")
            largest_with_key = max(largest_with_key, with_key)
            if with_key >= KAFKA_SEND_LIMIT:
                too_big_with_key.append(f"{kind.name}: {with_key} bytes with its key")
            decoded = DEAD.decode(encoded)
            if decoded["reason"] != reason or decoded["source_offset"] != offset:
                failures.append(f"{kind.name}: dead letter says {decoded['reason']}")
            if kind.value and not decoded["original"]:
                failures.append(f"{kind.name}: original dropped")
        if elapsed > PER_RECORD_BUDGET_S:
            failures.append(f"{kind.name}: took {elapsed:.2f} s")
    return {"failures": failures, "largest": largest, "largest_with_key": largest_with_key,
            "too_big_with_key": too_big_with_key, "slowest": slowest, "reasons": reasons}


def test_hostile_raw_records_become_dead_letters_and_the_next_good_one_is_accepted() -> None:
    started = time.perf_counter()
    kinds = all_kinds()
    names = [k.name for k in kinds]
    assert len(set(names)) == len(names), "every kind is distinct"
    assert len(kinds) >= 300

    worker = Worker()  # one worker state through all of them: the key's state
    result = run(kinds, worker.handle)
    assert result["failures"] == []
    assert 0 < result["largest"] < KAFKA_SEND_LIMIT
    # Every reason a raw Avro record can have is exercised (bad_type, missing_field and
    # bad_enum cannot come out of the Avro decoder: its schema guarantees types and symbols).
    reachable = set(v.REASON_CODES) - {v.BAD_TYPE, v.MISSING_FIELD, v.BAD_ENUM}
    assert set(result["reasons"]) == reachable
    assert worker.state is None  # none of them touched the key's state

    # After all of them, the key's next good record is accepted and applied.
    good = worker.handle(KEY, body(), NOW, len(kinds))
    assert good.outcome == APPLIED and good.dead_letters == []
    assert [u["quantity_after"] for u in good.updates] == [GOOD["quantity"]]
    assert worker.state is not None and worker.state["quantity"] == GOOD["quantity"]
    assert time.perf_counter() - started < 30


def test_dead_letter_with_its_kafka_key_fits_one_send() -> None:
    # Kafka's limit is on the whole record, key included.
    result = run(all_kinds(), Worker().handle)
    assert result["too_big_with_key"] == []
    assert result["largest_with_key"] < KAFKA_SEND_LIMIT


def test_random_corruptions_never_escape() -> None:
    # Seeded byte flips, cuts and splices of valid records: each is accepted (it may still be
    # a valid record) or dead-lettered with a known reason, and nothing else happens.
    rng = random.Random(SEED + 1)
    good = body()
    kinds: list[Kind] = []
    every_reason = frozenset({*OUTCOMES, *v.REASON_CODES})
    for i in range(2000):
        data = bytearray(good)
        for _ in range(rng.randint(1, 6)):
            data[rng.randrange(HEADER_SIZE, len(data))] = rng.randrange(256)
        if rng.random() < 0.2:
            data = data[: rng.randrange(len(data) + 1)]
        if rng.random() < 0.1:
            data += rng.randbytes(rng.randint(1, 64))
        kinds.append(Kind("random", f"random #{i}", KEY, bytes(data), every_reason))
    result = run(kinds, Worker().handle)
    assert result["failures"] == []
    assert result["reasons"]["decode_error"] > 0
