"""The small interface every supplier source implements, and the record mapping they share."""

from __future__ import annotations

import abc
import asyncio
import contextlib
import functools
import hashlib
import json
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any, Protocol

from pipeline.errors import ValidationError
from pipeline.validate import dead_letter as build_dead_letter

SKU_MAX = 128
EVENT_ID_MAX = 128
WAREHOUSE_MAX = 128
QUANTITY_MAX = 1_000_000_000
SEQUENCE_MAX = 2**63 - 1  # an Avro long
LEAD_TIME_MAX = 365
PRICE_MAX = Decimal(1_000_000_000)
# A supplier's clock may run ahead of ours by at most this much; later timestamps are clamped
# to now + MAX_CLOCK_SKEW_MS, so one item dated 2100 cannot hide every later update (a
# cursor or a sequence derived from it would otherwise jump past them).
MAX_CLOCK_SKEW_MS = 60_000
# Longest number or timestamp text parsed at all: Decimal and int() of a long or huge-exponent
# literal ("1e1000000") cost unbounded CPU on the event loop every feed shares.
NUMBER_TEXT_MAX = 40
TIMESTAMP_TEXT_MAX = 64
RECORD_FIELDS_MAX = 1000
_TIMESTAMP_MS_MAX = 253_402_300_799_999  # 9999-12-31T23:59:59.999Z
_SKU_BAD = re.compile(r"[|\x00-\x1f\x7f]")
_CURRENCY = re.compile(r"^[A-Z]{3}$")
# Plain decimal or scientific notation in ASCII digits (\d would accept any Unicode digit).
_NUMBER = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]{1,3})?")

# Canonical SupplierDelta fields a supplier's record can be mapped from.
MAPPABLE_FIELDS = (
    "sku", "quantity", "sequence", "event_id", "observed_at", "kind", "price", "currency",
    "warehouse", "lead_time_days", "status",
)


def now_ms() -> int:
    """Wall-clock time in epoch milliseconds (the unit of every timestamp in the records)."""
    return time.time_ns() // 1_000_000


def safe_text(value: object, limit: int) -> str:
    """`value` as text that always encodes as UTF-8 (lone surrogates escaped), cut to `limit`."""
    text = value if isinstance(value, str) else str(value)
    if len(text) > limit:
        text = text[:limit]
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def stable_event_id(supplier_id: str, *parts: object) -> str:
    """An event id derived only from the supplier and the supplier's own identity of the event.

    A re-poll or a redelivery of the same supplier event yields the same id, so the pipeline's
    dedup makes it harmless. Long ids are hashed to stay within the schema's 128 characters.
    """
    raw = ":".join([supplier_id, *(str(p) for p in parts)])
    if len(raw) <= EVENT_ID_MAX and raw.isprintable():
        return raw
    # surrogatepass: a lone surrogate in a supplier's id still hashes to the same id each time.
    digest = hashlib.sha256(raw.encode("utf-8", "surrogatepass")).hexdigest()[:48]
    return f"{supplier_id}:h:{digest}"


@dataclass(frozen=True)
class Units:
    """How a supplier's numbers and timestamps translate to the canonical ones."""

    quantity_multiplier: int = 1
    price_divisor: int = 1
    timestamp: str = "auto"  # auto | iso | s | ms | us
    default_currency: str | None = None
    status_map: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class FieldMapping:
    """Canonical field -> the supplier's field name(s); several names are aliases."""

    fields: Mapping[str, Sequence[str]]

    @staticmethod
    def normalise(name: str) -> str:
        """Header-insensitive form: case, surrounding spaces, and space/_/- runs do not matter."""
        return re.sub(r"[\s_\-]+", "_", name.strip().lstrip("\ufeff").casefold()).strip("_")

    def resolve(self, available: Sequence[str]) -> dict[str, str]:
        """Map canonical fields to the actual names present in `available` (e.g. a CSV header)."""
        by_norm = {self.normalise(a): a for a in available if isinstance(a, str)}
        out: dict[str, str] = {}
        for canonical, aliases in self.fields.items():
            for alias in aliases:
                hit = by_norm.get(self.normalise(alias))
                if hit is not None:
                    out[canonical] = hit
                    break
        return out


def parse_decimal(value: Any, code: str, what: str) -> Decimal:
    """A supplier number as a finite Decimal, in bounded time whatever the input.

    Only short plain or scientific literals with a 3-digit exponent at most are parsed:
    "Infinity", "NaN", "sNaN", "1e1000000", 5,000-digit strings and non-ASCII digits are
    refused before Decimal or int() ever sees them.
    """
    if isinstance(value, bool) or value is None or value == "":
        raise ValidationError(code, f"{what} missing or not a number: {value!r}")
    if isinstance(value, int):
        # JSON ints are already bounded by Python's 4,300-digit conversion limit.
        return Decimal(value)
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            raise ValidationError(code, f"{what} is not a finite number: {value!r}")
        return Decimal(repr(value))
    if not isinstance(value, str):
        raise ValidationError(code, f"{what} is not a number: {type(value).__name__}")
    text = value.strip()
    if len(text) > NUMBER_TEXT_MAX or not _NUMBER.fullmatch(text):
        raise ValidationError(code, f"{what} is not a number: {safe_text(text, 60)!r}")
    try:
        return Decimal(text)
    except InvalidOperation as exc:  # the regex should make this unreachable
        raise ValidationError(code, f"{what} is not a number: {text!r}") from exc


def _as_int(value: Any, code: str, what: str, *, low: int, high: int,
            range_code: str | None = None) -> int:
    """A whole number in [low, high]; the range is checked on the Decimal, before int()."""
    number = parse_decimal(value, code, what)
    if number != number.to_integral_value():
        raise ValidationError(code, f"{what} is not a whole number: {safe_text(value, 60)!r}")
    if not low <= number <= high:
        raise ValidationError(range_code or code,
                              f"{what} {safe_text(value, 60)!r} is outside {low}..{high}")
    return int(number)


def parse_timestamp_ms(value: Any, unit: str = "auto") -> int:
    """A supplier timestamp (ISO 8601 or epoch s/ms/us) as epoch milliseconds in 0..9999 AD."""
    if value is None or value == "":
        raise ValidationError("bad_timestamp", "timestamp missing")
    if isinstance(value, bool):
        raise ValidationError("bad_timestamp", f"not a timestamp: {value!r}")
    if isinstance(value, str) and len(value) > TIMESTAMP_TEXT_MAX:
        raise ValidationError("bad_timestamp", f"timestamp text longer than {TIMESTAMP_TEXT_MAX}")
    if isinstance(value, int | float) or (isinstance(value, str)
                                          and _NUMBER.fullmatch(value.strip())):
        number = parse_decimal(value, "bad_timestamp", "timestamp")
        if unit == "s" or (unit == "auto" and number < Decimal("1e11")):
            ms = number * 1000
        elif unit == "us" or (unit == "auto" and number >= Decimal("1e14")):
            ms = number / 1000
        else:
            ms = number
        if not 0 <= ms <= _TIMESTAMP_MS_MAX:
            raise ValidationError("bad_timestamp", f"timestamp {safe_text(value, 60)!r} is "
                                                   "outside 1970..9999")
        return int(ms)
    if isinstance(value, str):
        text = value.strip()
        if text.endswith(("Z", "z")):
            text = text[:-1] + "+00:00"
        try:
            parsed = datetime.fromisoformat(text)
            if parsed.tzinfo is None:
                parsed = parsed.replace(tzinfo=UTC)
            iso_ms = int(parsed.timestamp() * 1000)
        except (ValueError, OverflowError) as exc:
            raise ValidationError("bad_timestamp",
                                  f"not a timestamp: {safe_text(value, 60)!r}") from exc
        if not 0 <= iso_ms <= _TIMESTAMP_MS_MAX:
            raise ValidationError("bad_timestamp",
                                  f"timestamp {safe_text(value, 60)!r} is before 1970")
        return iso_ms
    raise ValidationError("bad_timestamp", f"not a timestamp: {type(value).__name__}")


def clamp_to_skew(ms: int, now: int) -> int:
    """A supplier timestamp no later than `now` + MAX_CLOCK_SKEW_MS."""
    return min(ms, now + MAX_CLOCK_SKEW_MS)


class RecordMapper:
    """Turns one supplier record (a JSON object or a CSV row) into a canonical SupplierDelta.

    Raises ValidationError with a dead-letter reason code when the record cannot be mapped.
    """

    def __init__(self, supplier_id: str, connector: str, mapping: FieldMapping,
                 units: Units | None = None, *, default_kind: str = "SNAPSHOT") -> None:
        self.supplier_id = supplier_id
        self.connector = connector
        self.mapping = mapping
        self.units = units or Units()
        self.default_kind = default_kind

    def map(self, record: Mapping[str, Any], *, names: Mapping[str, str] | None = None,
            received_at: int | None = None, sequence: int | None = None,
            event_id_parts: Sequence[object] | None = None) -> dict[str, Any]:
        """Map `record`; `names` is a pre-resolved canonical->actual key map (CSV header).

        `sequence` and `event_id_parts` override what the record carries (CSV snapshots, where
        the file, not the row, is the supplier's version).
        """
        if not isinstance(record, Mapping):
            raise ValidationError("malformed_record", f"not an object: {type(record).__name__}")
        if names is None and len(record) > RECORD_FIELDS_MAX:
            raise ValidationError("malformed_record", f"more than {RECORD_FIELDS_MAX} fields")
        keys = names if names is not None else self.mapping.resolve(list(record.keys()))

        def get(canonical: str) -> Any:
            actual = keys.get(canonical)
            value = record.get(actual) if actual is not None else None
            if isinstance(value, str):
                value = value.strip()
                return value if value != "" else None
            return value

        sku = get("sku")
        if not isinstance(sku, str | int) or isinstance(sku, bool):
            raise ValidationError("bad_sku", f"sku missing or not a string: "
                                             f"{safe_text(repr(sku), 60)}")
        sku = str(sku) if not isinstance(sku, int) or abs(sku) < 10**SKU_MAX else ""
        if not is_valid_sku(sku):
            raise ValidationError("bad_sku", f"sku {safe_text(sku, 40)!r} breaks the SKU rules")

        kind_raw = get("kind")
        kind = safe_text(kind_raw, 16).upper() if kind_raw is not None else self.default_kind
        if kind not in ("SNAPSHOT", "ADJUSTMENT"):
            raise ValidationError("bad_kind", f"kind {safe_text(kind_raw, 40)!r} is not "
                                              "SNAPSHOT/ADJUSTMENT")

        # Bounded before the multiplier, and again after it.
        quantity = _as_int(get("quantity"), "bad_quantity", "quantity", low=-QUANTITY_MAX,
                           high=QUANTITY_MAX, range_code="quantity_out_of_range") \
            * self.units.quantity_multiplier
        if abs(quantity) > QUANTITY_MAX or (kind == "SNAPSHOT" and quantity < 0):
            raise ValidationError("quantity_out_of_range", f"quantity {quantity} out of range")

        observed_raw = get("observed_at")
        received = received_at if received_at is not None else now_ms()
        observed_at = clamp_to_skew(parse_timestamp_ms(observed_raw, self.units.timestamp),
                                    received) if observed_raw is not None else received

        if sequence is None:
            seq_raw = get("sequence")
            # A supplier without a version counter: its source timestamp in microseconds
            # (clamped above, so a far-future date cannot make later updates stale).
            sequence = _as_int(seq_raw, "bad_sequence", "sequence", low=0, high=SEQUENCE_MAX) \
                if seq_raw is not None else observed_at * 1000
        if not 0 <= sequence <= SEQUENCE_MAX:
            raise ValidationError("bad_sequence", f"sequence {sequence} is outside 0..2^63-1")

        if event_id_parts is None:
            supplier_event = get("event_id")
            if supplier_event is not None and (not isinstance(supplier_event, str | int)
                                               or isinstance(supplier_event, bool)):
                raise ValidationError("bad_event_id", "event id is not a string")
            if isinstance(supplier_event, str) and len(supplier_event) > 4 * EVENT_ID_MAX:
                raise ValidationError("bad_event_id", "event id longer than "
                                                      f"{4 * EVENT_ID_MAX} characters")
            if isinstance(supplier_event, int) and not 0 <= supplier_event <= SEQUENCE_MAX:
                raise ValidationError("bad_event_id", "event id out of range")
            event_id_parts = [supplier_event] if supplier_event is not None \
                else [sku, sequence]
        event_id = stable_event_id(self.supplier_id, *event_id_parts)

        price = self._price(get("price"))
        currency = get("currency")
        if currency is None:
            currency = self.units.default_currency if price is not None else None
        if currency is not None:
            if not isinstance(currency, str):
                raise ValidationError("bad_currency", f"currency is not a string: "
                                                      f"{safe_text(repr(currency), 40)}")
            currency = safe_text(currency, 8).upper()
            if not _CURRENCY.match(currency):
                raise ValidationError("bad_currency", f"currency {currency!r} is not ISO 4217")
        lead = get("lead_time_days")
        lead_time = _as_int(lead, "bad_lead_time", "lead_time_days", low=0,
                            high=LEAD_TIME_MAX) if lead is not None else None
        warehouse = get("warehouse")
        if warehouse is not None:
            if not isinstance(warehouse, str | int) or isinstance(warehouse, bool):
                raise ValidationError("bad_warehouse", "warehouse is not a string")
            warehouse = str(warehouse) if isinstance(warehouse, str) \
                or abs(warehouse) < 10**WAREHOUSE_MAX else ""
            if not 1 <= len(warehouse) <= WAREHOUSE_MAX or not warehouse.isprintable():
                raise ValidationError("bad_warehouse", f"warehouse {safe_text(warehouse, 40)!r}"
                                                       f" is not 1..{WAREHOUSE_MAX} printable "
                                                       "characters")
        return {
            "supplier_id": self.supplier_id,
            "sku": sku,
            "event_id": event_id,
            "sequence": sequence,
            "kind": kind,
            "quantity": quantity,
            "observed_at": observed_at,
            "price": price,
            "currency": currency,
            "warehouse": warehouse,
            "lead_time_days": lead_time,
            "status": self._status(get("status")),
            "connector": self.connector,
            "received_at": received,
        }

    def observed_at_of(self, record: Any) -> int | None:
        """The record's own timestamp in ms, if it has a readable one (for a cursor to move
        past a record that could not be mapped); never raises."""
        try:
            if not isinstance(record, Mapping):
                return None
            names = list(record.keys())[:RECORD_FIELDS_MAX]
            actual = self.mapping.resolve(names).get("observed_at")
            value = record.get(actual) if actual is not None else None
            return parse_timestamp_ms(value, self.units.timestamp) if value is not None \
                else None
        except Exception:  # whatever it is, it is not a usable timestamp
            return None

    def _price(self, value: Any) -> str | None:
        if value is None:
            return None
        price = parse_decimal(value, "bad_price", "price")
        if price < 0 or price > PRICE_MAX * self.units.price_divisor:
            raise ValidationError("bad_price", f"price {safe_text(value, 60)!r} is outside "
                                               f"0..{PRICE_MAX}")
        if self.units.price_divisor != 1:
            price = price / Decimal(self.units.price_divisor)
        return format(price.quantize(Decimal("0.0001")).normalize(), "f")

    def _status(self, value: Any) -> str:
        if value is None:
            return "ACTIVE"
        if not isinstance(value, str | int) or isinstance(value, bool):
            raise ValidationError("bad_status", "status is not a string")
        text = safe_text(value, 64).strip()
        mapped = self.units.status_map.get(text.casefold(), text.upper())
        if mapped not in ("ACTIVE", "DISCONTINUED"):
            raise ValidationError("bad_status", f"status {text!r} is not known")
        return mapped


def is_valid_sku(sku: object) -> bool:
    """The SKU rules of the SupplierDelta schema: 1..128 printable characters, no '|'."""
    return (isinstance(sku, str) and 1 <= len(sku) <= SKU_MAX and not _SKU_BAD.search(sku)
            and sku.isprintable())


def dead_letter(*, reason: str, message: str, original: bytes, supplier_id: str,
                connector: str, context: Mapping[str, object] | None = None,
                sku: str | None = None, event_id: str | None = None) -> dict[str, Any]:
    """A DeadLetter record for input a connector could not turn into a delta, built by the
    worker's builder (pipeline/validate.py), so both are bounded the same way.

    There is no source Kafka record yet, so the source is named `supplier:<connector>` with
    partition and offset -1; the file, row or request is in `context`. Whatever the input,
    the record encodes and stays far below Kafka's message limit: an oversized original is
    cut to its first 64 KiB (its full size is in `context.original_size`), never dropped,
    and the key carries the SKU only when it is a valid one.
    """
    ctx = {"connector": connector, **(context or {})}
    key_sku = sku if is_valid_sku(sku) else None
    return build_dead_letter(
        reason=reason, message=message, original=original,
        original_key=f"{supplier_id}|{key_sku}".encode() if key_sku else None,
        source_topic=f"supplier:{connector}", source_partition=-1, source_offset=-1,
        source_timestamp=None, now_ms=now_ms(), supplier_id=supplier_id, event_id=event_id,
        context={str(k): str(v) for k, v in ctx.items()})


def raw_bytes(record: Any) -> bytes:
    """The original bytes of a JSON record for a dead letter (as large as the request or page
    it came in, which are capped; the dead letter keeps the first 64 KiB and the size)."""
    try:
        text = json.dumps(record, sort_keys=True, default=str)
    except (TypeError, ValueError, RecursionError):
        text = repr(record)
    return text.encode("utf-8", "backslashreplace")


def map_one(mapper: RecordMapper, record: Any, *, original: Callable[[], bytes],
            context: Mapping[str, object], sku: str | None = None,
            **kwargs: Any) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """Map one supplier record: (delta, None), or (None, a dead letter with its reason).

    Never raises for bad input: a rule broken is the rule's reason code; any other
    exception from the mapping is `mapping_error`, and a delta the SupplierDelta schema
    cannot encode is `unencodable`, so one record never stalls its feed. `sku` is the
    record's SKU as the caller read it (a CSV cell), for the dead letter's key.
    """
    sku_hint: str | None = None
    try:
        delta = mapper.map(record, **kwargs)
        sku_hint = delta["sku"]
        delta_codec().encode(delta)
        return delta, None
    except ValidationError as exc:
        reason, message = exc.code, exc.message
    except Exception as exc:  # any bad record is data, not a crash
        reason = "mapping_error" if sku_hint is None else "unencodable"
        message = f"{type(exc).__name__}: {safe_text(exc, 400)}"
    if sku_hint is None and reason != "bad_sku":
        sku_hint = sku
    return None, dead_letter(reason=reason, message=message, original=original(),
                             supplier_id=mapper.supplier_id, connector=mapper.connector,
                             context=context, sku=sku_hint)


@functools.cache
def delta_codec() -> Any:
    """The SupplierDelta codec (parsed once)."""
    from schemas.codec import codec_for

    return codec_for("SupplierDelta")


class Emitter(Protocol):
    """Where a source puts its output; `emit` returns only once Kafka acknowledged all of it."""

    async def emit(self, deltas: list[dict[str, Any]],
                   dead_letters: list[dict[str, Any]]) -> None: ...


class Source(abc.ABC):
    """One supplier feed. Pollers implement `poll_once`; push feeds override `run`."""

    kind: str = "abstract"

    def __init__(self, supplier_id: str, *, interval_s: float = 5.0) -> None:
        self.supplier_id = supplier_id
        self.interval_s = interval_s

    @abc.abstractmethod
    async def poll_once(self) -> int:
        """Fetch what is new, emit it, store the cursor; return the number of deltas emitted."""

    async def run(self, stop: asyncio.Event) -> None:
        """Poll on the schedule until `stop` is set; a failed poll is logged and retried."""
        from pipeline.log import get_logger

        log = get_logger(__name__).bind(supplier=self.supplier_id, connector=self.kind)
        while not stop.is_set():
            try:
                await self.poll_once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a feed failure must not stop the other feeds
                log.warning("poll failed", error=f"{type(exc).__name__}: {exc}")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=self.interval_s)

    async def close(self) -> None:  # noqa: B027 - optional hook, most sources hold nothing
        """Release connections; the default has none."""
