"""The small interface every supplier source implements, and the record mapping they share."""

from __future__ import annotations

import abc
import asyncio
import contextlib
import hashlib
import json
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any, Protocol

from pipeline.errors import ValidationError

SKU_MAX = 128
EVENT_ID_MAX = 128
QUANTITY_MAX = 1_000_000_000
_SKU_BAD = re.compile(r"[|\x00-\x1f\x7f]")
_CURRENCY = re.compile(r"^[A-Z]{3}$")

# Canonical SupplierDelta fields a supplier's record can be mapped from.
MAPPABLE_FIELDS = (
    "sku", "quantity", "sequence", "event_id", "observed_at", "kind", "price", "currency",
    "warehouse", "lead_time_days", "status",
)


def now_ms() -> int:
    """Wall-clock time in epoch milliseconds (the unit of every timestamp in the records)."""
    return time.time_ns() // 1_000_000


def stable_event_id(supplier_id: str, *parts: object) -> str:
    """An event id derived only from the supplier and the supplier's own identity of the event.

    A re-poll or a redelivery of the same supplier event yields the same id, so the pipeline's
    dedup makes it harmless. Long ids are hashed to stay within the schema's 128 characters.
    """
    raw = ":".join([supplier_id, *(str(p) for p in parts)])
    if len(raw) <= EVENT_ID_MAX:
        return raw
    return f"{supplier_id}:h:{hashlib.sha256(raw.encode()).hexdigest()[:48]}"


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
        by_norm = {self.normalise(a): a for a in available}
        out: dict[str, str] = {}
        for canonical, aliases in self.fields.items():
            for alias in aliases:
                hit = by_norm.get(self.normalise(alias))
                if hit is not None:
                    out[canonical] = hit
                    break
        return out


def parse_timestamp_ms(value: Any, unit: str = "auto") -> int:
    """A supplier timestamp (ISO 8601 or epoch s/ms/us) as epoch milliseconds."""
    if value is None or value == "":
        raise ValidationError("bad_timestamp", "timestamp missing")
    if isinstance(value, bool):
        raise ValidationError("bad_timestamp", f"not a timestamp: {value!r}")
    if isinstance(value, int | float) or (isinstance(value, str) and _is_number(value)):
        number = float(value)
        if unit == "s" or (unit == "auto" and number < 1e11):
            return int(number * 1000)
        if unit == "us" or (unit == "auto" and number >= 1e14):
            return int(number // 1000)
        return int(number)
    if isinstance(value, str):
        text = value.strip()
        if text.endswith("Z"):
            text = text[:-1] + "+00:00"
        try:
            parsed = datetime.fromisoformat(text)
        except ValueError as exc:
            raise ValidationError("bad_timestamp", f"not a timestamp: {value!r}") from exc
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=UTC)
        return int(parsed.timestamp() * 1000)
    raise ValidationError("bad_timestamp", f"not a timestamp: {value!r}")


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _as_int(value: Any, code: str, what: str) -> int:
    if isinstance(value, bool) or value is None or value == "":
        raise ValidationError(code, f"{what} missing or not an integer: {value!r}")
    if isinstance(value, int):
        return value
    try:
        number = Decimal(str(value).strip())
    except InvalidOperation as exc:
        raise ValidationError(code, f"{what} is not a number: {value!r}") from exc
    if number != number.to_integral_value():
        raise ValidationError(code, f"{what} is not a whole number: {value!r}")
    return int(number)


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
            raise ValidationError("bad_sku", f"sku missing or not a string: {sku!r}")
        sku = str(sku)
        if not 1 <= len(sku) <= SKU_MAX or _SKU_BAD.search(sku) or not sku.isprintable():
            raise ValidationError("bad_sku", f"sku {sku[:40]!r} breaks the SKU rules")

        kind_raw = get("kind")
        kind = str(kind_raw).upper() if kind_raw is not None else self.default_kind
        if kind not in ("SNAPSHOT", "ADJUSTMENT"):
            raise ValidationError("bad_kind", f"kind {kind_raw!r} is not SNAPSHOT/ADJUSTMENT")

        quantity = _as_int(get("quantity"), "bad_quantity", "quantity") \
            * self.units.quantity_multiplier
        if abs(quantity) > QUANTITY_MAX or (kind == "SNAPSHOT" and quantity < 0):
            raise ValidationError("quantity_out_of_range", f"quantity {quantity} out of range")

        observed_raw = get("observed_at")
        received = received_at if received_at is not None else now_ms()
        observed_at = parse_timestamp_ms(observed_raw, self.units.timestamp) \
            if observed_raw is not None else received

        if sequence is None:
            seq_raw = get("sequence")
            # A supplier without a version counter: its source timestamp in microseconds.
            sequence = _as_int(seq_raw, "bad_sequence", "sequence") if seq_raw is not None \
                else observed_at * 1000
        if sequence < 0:
            raise ValidationError("bad_sequence", f"sequence {sequence} is negative")

        if event_id_parts is None:
            supplier_event = get("event_id")
            event_id_parts = [supplier_event] if supplier_event is not None \
                else [sku, sequence]
        event_id = stable_event_id(self.supplier_id, *event_id_parts)

        price = self._price(get("price"))
        currency = get("currency") or (self.units.default_currency if price is not None else None)
        if currency is not None:
            currency = str(currency).upper()
            if not _CURRENCY.match(currency):
                raise ValidationError("bad_currency", f"currency {currency!r} is not ISO 4217")
        lead = get("lead_time_days")
        lead_time = _as_int(lead, "bad_lead_time", "lead_time_days") if lead is not None else None
        warehouse = get("warehouse")
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
            "warehouse": str(warehouse) if warehouse is not None else None,
            "lead_time_days": lead_time,
            "status": self._status(get("status")),
            "connector": self.connector,
            "received_at": received,
        }

    def _price(self, value: Any) -> str | None:
        if value is None:
            return None
        try:
            price = Decimal(str(value).strip())
        except InvalidOperation as exc:
            raise ValidationError("bad_price", f"price is not a decimal: {value!r}") from exc
        if not price.is_finite() or price < 0:
            raise ValidationError("bad_price", f"price {value!r} out of range")
        if self.units.price_divisor != 1:
            price = price / Decimal(self.units.price_divisor)
        return format(price.quantize(Decimal("0.0001")).normalize(), "f")

    def _status(self, value: Any) -> str:
        if value is None:
            return "ACTIVE"
        text = str(value).strip()
        mapped = self.units.status_map.get(text.casefold(), text.upper())
        if mapped not in ("ACTIVE", "DISCONTINUED"):
            raise ValidationError("bad_status", f"status {value!r} is not known")
        return mapped


def dead_letter(*, reason: str, message: str, original: bytes, supplier_id: str,
                connector: str, context: Mapping[str, str] | None = None,
                sku: str | None = None, event_id: str | None = None) -> dict[str, Any]:
    """A DeadLetter record for input a connector could not turn into a delta.

    There is no source Kafka record yet, so the source is named `supplier:<connector>` with
    partition and offset -1; the file, row or request is in `context`.
    """
    ctx = {"connector": connector, **(context or {})}
    return {
        "reason": reason,
        "message": message[:1000],
        "original": original[:65536],
        "original_key": f"{supplier_id}|{sku}".encode() if sku else None,
        "source_topic": f"supplier:{connector}",
        "source_partition": -1,
        "source_offset": -1,
        "source_timestamp": None,
        "supplier_id": supplier_id,
        "event_id": event_id,
        "context": {k: str(v) for k, v in ctx.items()},
        "failed_at": now_ms(),
    }


def raw_bytes(record: Any) -> bytes:
    """The original bytes of a JSON record for a dead letter."""
    try:
        return json.dumps(record, sort_keys=True, default=str).encode()
    except (TypeError, ValueError):
        return repr(record).encode()


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
