"""Business rules for an incoming SupplierDelta and the DeadLetter record built when one fails.

`validate_delta` is pure: it returns a normalised copy of the delta (every SupplierDelta field,
defaults filled, unknown keys dropped) or raises `ValidationError` whose `code` is one of
`REASON_CODES`. Records may come from Avro or from JSON (`stockflow produce`), so types are
checked too (`bool` is not an `int`, `5.0` is not a quantity).

The rules are checked in a fixed order (types, ids, key, enums, numbers, timestamps, optional
fields), so a record that breaks several rules always gets the same reason code.

`now_ms` is the reference clock for the future-timestamp and sparse-sequence rules. Pass the
Kafka timestamp of the record (not the wall clock) so that a replay of the log takes exactly the
same decisions.

`dead_letter` builds the DeadLetter of a rejected record. Its size is bounded
(`DEAD_LETTER_MAX_BYTES` encoded) whatever the input, so that it always fits under Kafka's
1,000,000-byte send limit: the original value and key are cut (never dropped) and the context
says so with their original sizes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from pipeline.errors import ValidationError

# --- reason codes (the `reason` of a DeadLetter) ------------------------------------------
DECODE_ERROR = "decode_error"  # the bytes are not a SupplierDelta (set by the agent)
BAD_TYPE = "bad_type"  # not a record, or a field of the wrong type
MISSING_FIELD = "missing_field"  # a required field is absent or null
BAD_SUPPLIER_ID = "bad_supplier_id"
BAD_SKU = "bad_sku"
BAD_EVENT_ID = "bad_event_id"
MISSING_KEY = "missing_key"  # the Kafka record has no key: per-key ordering is void
KEY_MISMATCH = "key_mismatch"  # the Kafka key is not supplier_id|sku
BAD_ENUM = "bad_enum"  # kind or status is not a known symbol
BAD_SEQUENCE = "bad_sequence"
NEGATIVE_SNAPSHOT = "negative_snapshot"
QUANTITY_OUT_OF_RANGE = "quantity_out_of_range"
TIMESTAMP_IN_FUTURE = "timestamp_in_future"
TIMESTAMP_TOO_OLD = "timestamp_too_old"
BAD_PRICE = "bad_price"
BAD_CURRENCY = "bad_currency"
BAD_LEAD_TIME = "bad_lead_time"
BAD_WAREHOUSE = "bad_warehouse"
BAD_CONNECTOR = "bad_connector"

REASON_CODES: tuple[str, ...] = (
    DECODE_ERROR,
    BAD_TYPE,
    MISSING_FIELD,
    BAD_SUPPLIER_ID,
    BAD_SKU,
    BAD_EVENT_ID,
    MISSING_KEY,
    KEY_MISMATCH,
    BAD_ENUM,
    BAD_SEQUENCE,
    NEGATIVE_SNAPSHOT,
    QUANTITY_OUT_OF_RANGE,
    TIMESTAMP_IN_FUTURE,
    TIMESTAMP_TOO_OLD,
    BAD_PRICE,
    BAD_CURRENCY,
    BAD_LEAD_TIME,
    BAD_WAREHOUSE,
    BAD_CONNECTOR,
)

DELTA_KINDS: frozenset[str] = frozenset({"SNAPSHOT", "ADJUSTMENT"})
STOCK_STATUSES: frozenset[str] = frozenset({"ACTIVE", "DISCONTINUED"})

KEY_SEPARATOR = "|"
AVRO_LONG_MAX = 2**63 - 1
_MESSAGE_VALUE_CHARS = 80  # how much of an offending value a message quotes

# --- DeadLetter bounds ----------------------------------------------------------------------
# Kafka refuses a record over 1,000,000 bytes (key and value) by default; a dead letter that
# cannot be sent used to fail the whole batch, and the record was then committed past. Every
# field is cut so the encoded DeadLetter stays under DEAD_LETTER_MAX_BYTES (the unit tests
# check the worst case), and its Kafka key (`dead_letter_key`) under DEAD_LETTER_KEY_MAX_BYTES.
DEAD_LETTER_ORIGINAL_MAX_BYTES = 64 * 1024
DEAD_LETTER_KEY_MAX_BYTES = 1024  # a valid key is at most 64 + 1 + 128 * 4 = 577 bytes
DEAD_LETTER_MAX_BYTES = 128 * 1024
_DEAD_LETTER_TEXT_CHARS = 256  # ids, topic, reason and context keys are cut to this
_DEAD_LETTER_MESSAGE_CHARS = 1000
_DEAD_LETTER_CONTEXT_VALUE_CHARS = 512
_DEAD_LETTER_CONTEXT_ENTRIES = 16  # from the caller; the truncation notes come on top


@dataclass(frozen=True, slots=True)
class ValidationLimits:
    """Bounds of the business rules; the defaults are the public contract."""

    max_quantity: int = 1_000_000_000
    max_future_ms: int = 5 * 60 * 1000
    min_observed_at_ms: int = 946_684_800_000  # 2000-01-01T00:00:00Z
    max_supplier_id_length: int = 64
    max_sku_length: int = 128
    max_event_id_length: int = 128
    max_price: Decimal = Decimal(1_000_000_000)
    max_price_decimals: int = 4
    max_lead_time_days: int = 365
    max_warehouse_length: int = 128
    max_connector_length: int = 64


DEFAULT_LIMITS = ValidationLimits()

_SUPPLIER_ID_RE = re.compile(r"[A-Za-z0-9._-]+")
# ISO 4217 list one (the active codes) as published 2024-06-25, plus XCG (in use since
# 2025-03-31). Not XTS (reserved for testing) nor XXX ("no currency"): a price needs a currency.
# A code withdrawn later stays here until its records are out of the log, so a replay decides
# as the first run did; changing this set is a contract change (docs/contract.md).
# fmt: off
ISO_4217_CURRENCIES: frozenset[str] = frozenset(
    {
        "AED", "AFN", "ALL", "AMD", "ANG", "AOA", "ARS", "AUD", "AWG", "AZN", "BAM", "BBD", "BDT",
        "BGN", "BHD", "BIF", "BMD", "BND", "BOB", "BOV", "BRL", "BSD", "BTN", "BWP", "BYN", "BZD",
        "CAD", "CDF", "CHE", "CHF", "CHW", "CLF", "CLP", "CNY", "COP", "COU", "CRC", "CUC", "CUP",
        "CVE", "CZK", "DJF", "DKK", "DOP", "DZD", "EGP", "ERN", "ETB", "EUR", "FJD", "FKP", "GBP",
        "GEL", "GHS", "GIP", "GMD", "GNF", "GTQ", "GYD", "HKD", "HNL", "HTG", "HUF", "IDR", "ILS",
        "INR", "IQD", "IRR", "ISK", "JMD", "JOD", "JPY", "KES", "KGS", "KHR", "KMF", "KPW", "KRW",
        "KWD", "KYD", "KZT", "LAK", "LBP", "LKR", "LRD", "LSL", "LYD", "MAD", "MDL", "MGA", "MKD",
        "MMK", "MNT", "MOP", "MRU", "MUR", "MVR", "MWK", "MXN", "MXV", "MYR", "MZN", "NAD", "NGN",
        "NIO", "NOK", "NPR", "NZD", "OMR", "PAB", "PEN", "PGK", "PHP", "PKR", "PLN", "PYG", "QAR",
        "RON", "RSD", "RUB", "RWF", "SAR", "SBD", "SCR", "SDG", "SEK", "SGD", "SHP", "SLE", "SOS",
        "SRD", "SSP", "STN", "SVC", "SYP", "SZL", "THB", "TJS", "TMT", "TND", "TOP", "TRY", "TTD",
        "TWD", "TZS", "UAH", "UGX", "USD", "USN", "UYI", "UYU", "UYW", "UZS", "VED", "VES", "VND",
        "VUV", "WST", "XAF", "XAG", "XAU", "XBA", "XBB", "XBC", "XBD", "XCD", "XCG", "XDR", "XOF",
        "XPD", "XPF", "XPT", "XSU", "XUA", "YER", "ZAR", "ZMW", "ZWG",
    }
)
# fmt: on
# Plain decimal notation only: no sign, no exponent, no "NaN"; [0-9] because \d is Unicode.
_PRICE_RE = re.compile(r"[0-9]+(?:\.[0-9]+)?")

# (field, default) in SupplierDelta order; _REQUIRED marks fields with no default.
_REQUIRED = object()
_DELTA_FIELDS: tuple[tuple[str, Any], ...] = (
    ("supplier_id", _REQUIRED),
    ("sku", _REQUIRED),
    ("event_id", _REQUIRED),
    ("sequence", _REQUIRED),
    ("kind", _REQUIRED),
    ("quantity", _REQUIRED),
    ("observed_at", _REQUIRED),
    ("price", None),
    ("currency", None),
    ("warehouse", None),
    ("lead_time_days", None),
    ("status", "ACTIVE"),
    ("connector", "unknown"),
    ("received_at", _REQUIRED),
)
_STRING_FIELDS = frozenset({"supplier_id", "sku", "event_id", "kind", "status", "connector"})
_INT_FIELDS = frozenset({"sequence", "quantity", "observed_at", "received_at"})


def delta_key(supplier_id: str, sku: str) -> bytes:
    """The Kafka key of a (supplier, sku): `supplier_id|sku` in UTF-8."""
    return f"{supplier_id}{KEY_SEPARATOR}{sku}".encode()


def _quote(value: Any) -> str:
    # repr escapes control characters and lone surrogates, so a message is always valid UTF-8.
    if isinstance(value, str) and len(value) > _MESSAGE_VALUE_CHARS:
        return repr(value[:_MESSAGE_VALUE_CHARS]) + f"... ({len(value)} chars)"
    text = repr(value)
    return text if len(text) <= _MESSAGE_VALUE_CHARS else text[:_MESSAGE_VALUE_CHARS] + "..."


def is_valid_supplier_id(value: object, limits: ValidationLimits = DEFAULT_LIMITS) -> bool:
    """True when value is a supplier id: [A-Za-z0-9._-], 1..max_supplier_id_length."""
    return (
        isinstance(value, str)
        and 0 < len(value) <= limits.max_supplier_id_length
        and _SUPPLIER_ID_RE.fullmatch(value) is not None
    )


def is_valid_sku(value: object, limits: ValidationLimits = DEFAULT_LIMITS) -> bool:
    """True when value is a SKU: printable, no '|', no surrounding whitespace, 1..max length."""
    # str.isprintable rejects every Unicode "Other" and "Separator" character except the ASCII
    # space: control characters, line/paragraph separators, NBSP, zero-width and unassigned
    # code points and lone surrogates. Quotes, CQL keywords and non-ASCII letters pass.
    return (
        isinstance(value, str)
        and 0 < len(value) <= limits.max_sku_length
        and value.isprintable()
        and KEY_SEPARATOR not in value
        and value.strip() == value
    )


def _is_printable_text(value: object, max_length: int) -> bool:
    return isinstance(value, str) and 0 < len(value) <= max_length and value.isprintable()


def _check_timestamp(name: str, value: int, now_ms: int, limits: ValidationLimits) -> None:
    if value > now_ms + limits.max_future_ms:
        raise ValidationError(
            TIMESTAMP_IN_FUTURE,
            f"{name} {value} is more than {limits.max_future_ms} ms after {now_ms}",
        )
    if value < limits.min_observed_at_ms:
        raise ValidationError(
            TIMESTAMP_TOO_OLD, f"{name} {value} is before {limits.min_observed_at_ms}"
        )


def _check_price(price: object, limits: ValidationLimits) -> None:
    if not isinstance(price, str) or _PRICE_RE.fullmatch(price) is None:
        raise ValidationError(
            BAD_PRICE, f"price {_quote(price)} is not a non-negative plain decimal string"
        )
    _, _, decimals = price.partition(".")
    if len(decimals) > limits.max_price_decimals:
        raise ValidationError(
            BAD_PRICE, f"price {_quote(price)} has more than {limits.max_price_decimals} decimals"
        )
    if Decimal(price) > limits.max_price:
        raise ValidationError(BAD_PRICE, f"price {_quote(price)} exceeds {limits.max_price}")


def _normalise_fields(delta: dict[str, Any], now_ms: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, default in _DELTA_FIELDS:
        value = delta.get(name)
        if value is None:
            if name == "received_at":
                # JSON producers may leave it out: stockflow receives the record now.
                value = now_ms
            elif default is _REQUIRED:
                raise ValidationError(MISSING_FIELD, f"required field {name!r} is missing")
            else:
                value = default
        elif name in _STRING_FIELDS and not isinstance(value, str):
            raise ValidationError(BAD_TYPE, f"{name} must be a string, got {type(value).__name__}")
        elif name in _INT_FIELDS and type(value) is not int:
            raise ValidationError(
                BAD_TYPE, f"{name} must be an integer, got {type(value).__name__}"
            )
        out[name] = value
    return out


def validate_delta(
    delta: dict[str, Any],
    *,
    key: bytes | None,
    now_ms: int,
    limits: ValidationLimits = DEFAULT_LIMITS,
) -> dict[str, Any]:
    """Return the normalised delta, or raise ValidationError for the first rule it breaks."""
    if not isinstance(delta, dict):
        raise ValidationError(
            BAD_TYPE, f"a SupplierDelta must be a record, got {type(delta).__name__}"
        )
    d = _normalise_fields(delta, now_ms)

    if not is_valid_supplier_id(d["supplier_id"], limits):
        raise ValidationError(
            BAD_SUPPLIER_ID,
            f"supplier_id {_quote(d['supplier_id'])} must match [A-Za-z0-9._-]"
            f"{{1,{limits.max_supplier_id_length}}}",
        )
    if not is_valid_sku(d["sku"], limits):
        raise ValidationError(
            BAD_SKU,
            f"sku {_quote(d['sku'])} must be 1..{limits.max_sku_length} printable characters, "
            f"no {KEY_SEPARATOR!r}, no leading or trailing whitespace",
        )
    if not _is_printable_text(d["event_id"], limits.max_event_id_length):
        raise ValidationError(
            BAD_EVENT_ID,
            f"event_id {_quote(d['event_id'])} must be 1..{limits.max_event_id_length} "
            "printable characters",
        )
    if key is None:
        # Without a key the producer's partitioner scatters one SKU's events over partitions:
        # their order, on which staleness and adjustments depend, is lost.
        raise ValidationError(
            MISSING_KEY, "the record has no Kafka key; it must be supplier_id|sku"
        )
    expected = delta_key(d["supplier_id"], d["sku"])
    if key != expected:
        raise ValidationError(
            KEY_MISMATCH, f"key {_quote(key)} is not supplier_id|sku {_quote(expected)}"
        )
    if d["kind"] not in DELTA_KINDS:
        raise ValidationError(
            BAD_ENUM, f"kind {_quote(d['kind'])} is not one of {sorted(DELTA_KINDS)}"
        )
    if d["status"] not in STOCK_STATUSES:
        raise ValidationError(
            BAD_ENUM, f"status {_quote(d['status'])} is not one of {sorted(STOCK_STATUSES)}"
        )

    sequence = d["sequence"]
    if not 1 <= sequence <= AVRO_LONG_MAX:
        raise ValidationError(BAD_SEQUENCE, f"sequence {sequence} must be between 1 and 2^63-1")
    # A sparse sequence is a timestamp in microseconds: one from the future would make every
    # later event of the SKU stale (2^63-1: for ever, and a replay would do it again). It gets
    # the clock skew observed_at gets. A dense counter (< 10^12) is always far below the bound:
    # the record's time is after 2000-01-01 (observed_at), 9.5 * 10^14 us.
    max_sequence = (now_ms + limits.max_future_ms) * 1000
    if sequence > max_sequence:
        raise ValidationError(
            BAD_SEQUENCE,
            f"sequence {sequence} is a timestamp in us more than {limits.max_future_ms} ms "
            f"after the record's time {now_ms} ms (at most {max_sequence})",
        )

    quantity = d["quantity"]
    if d["kind"] == "SNAPSHOT":
        if quantity < 0:
            raise ValidationError(NEGATIVE_SNAPSHOT, f"SNAPSHOT quantity {quantity} is negative")
        if quantity > limits.max_quantity:
            raise ValidationError(
                QUANTITY_OUT_OF_RANGE, f"SNAPSHOT quantity {quantity} exceeds {limits.max_quantity}"
            )
    elif abs(quantity) > limits.max_quantity:
        raise ValidationError(
            QUANTITY_OUT_OF_RANGE,
            f"ADJUSTMENT quantity {quantity} exceeds +/-{limits.max_quantity}",
        )

    _check_timestamp("observed_at", d["observed_at"], now_ms, limits)
    _check_timestamp("received_at", d["received_at"], now_ms, limits)

    if d["price"] is not None:
        _check_price(d["price"], limits)
    currency = d["currency"]
    if currency is not None and (
        not isinstance(currency, str) or currency not in ISO_4217_CURRENCIES
    ):
        raise ValidationError(
            BAD_CURRENCY, f"currency {_quote(currency)} is not an active ISO 4217 code"
        )
    lead_time = d["lead_time_days"]
    if lead_time is not None and (
        type(lead_time) is not int or not 0 <= lead_time <= limits.max_lead_time_days
    ):
        raise ValidationError(
            BAD_LEAD_TIME,
            f"lead_time_days {_quote(lead_time)} must be an integer 0..{limits.max_lead_time_days}",
        )
    warehouse = d["warehouse"]
    if warehouse is not None and not _is_printable_text(warehouse, limits.max_warehouse_length):
        raise ValidationError(
            BAD_WAREHOUSE,
            f"warehouse {_quote(warehouse)} must be 1..{limits.max_warehouse_length} "
            "printable characters",
        )
    if not _is_printable_text(d["connector"], limits.max_connector_length):
        raise ValidationError(
            BAD_CONNECTOR,
            f"connector {_quote(d['connector'])} must be 1..{limits.max_connector_length} "
            "printable characters",
        )
    return d


def _safe_text(value: str, limit: int) -> str:
    # A lone surrogate (possible from JSON) cannot be Avro-encoded as UTF-8: escape it.
    return value[:limit].encode("utf-8", "backslashreplace").decode("utf-8")[:limit]


def dead_letter_key(key: bytes | None) -> bytes | None:
    """The Kafka key of a dead letter: the original key, cut to DEAD_LETTER_KEY_MAX_BYTES."""
    return None if key is None else bytes(key[:DEAD_LETTER_KEY_MAX_BYTES])


def best_effort_ids(record: object) -> tuple[str | None, str | None]:
    """(supplier_id, event_id) of a record that failed validation, when they are strings."""
    if not isinstance(record, dict):
        return None, None
    supplier_id = record.get("supplier_id")
    event_id = record.get("event_id")
    return (
        supplier_id if isinstance(supplier_id, str) else None,
        event_id if isinstance(event_id, str) else None,
    )


def dead_letter(
    *,
    reason: str,
    message: str,
    original: bytes,
    original_key: bytes | None,
    source_topic: str,
    source_partition: int,
    source_offset: int,
    source_timestamp: int | None,
    now_ms: int,
    supplier_id: str | None = None,
    event_id: str | None = None,
    context: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Build a DeadLetter record; every field is cut and made encodable, so it stays bounded.

    An original value over DEAD_LETTER_ORIGINAL_MAX_BYTES or key over DEAD_LETTER_KEY_MAX_BYTES
    keeps its first bytes; the context then holds `original_truncated`/`original_size` (and
    `original_key_truncated`/`original_key_size`). Context beyond its first
    _DEAD_LETTER_CONTEXT_ENTRIES entries is counted in `context_dropped`.
    """
    notes: dict[str, str] = {}
    if len(original) > DEAD_LETTER_ORIGINAL_MAX_BYTES:
        notes["original_truncated"] = "true"
        notes["original_size"] = str(len(original))
    if original_key is not None and len(original_key) > DEAD_LETTER_KEY_MAX_BYTES:
        notes["original_key_truncated"] = "true"
        notes["original_key_size"] = str(len(original_key))
    entries = list((context or {}).items())
    if len(entries) > _DEAD_LETTER_CONTEXT_ENTRIES:
        notes["context_dropped"] = str(len(entries) - _DEAD_LETTER_CONTEXT_ENTRIES)
    kept = {
        _safe_text(str(k), _DEAD_LETTER_TEXT_CHARS): _safe_text(
            str(v), _DEAD_LETTER_CONTEXT_VALUE_CHARS
        )
        for k, v in entries[:_DEAD_LETTER_CONTEXT_ENTRIES]
    }
    return {
        "reason": _safe_text(reason, _DEAD_LETTER_TEXT_CHARS),
        "message": _safe_text(message, _DEAD_LETTER_MESSAGE_CHARS),
        "original": bytes(original[:DEAD_LETTER_ORIGINAL_MAX_BYTES]),
        "original_key": dead_letter_key(original_key),
        "source_topic": _safe_text(source_topic, _DEAD_LETTER_TEXT_CHARS),
        "source_partition": source_partition,
        "source_offset": source_offset,
        "source_timestamp": source_timestamp,
        "supplier_id": None
        if supplier_id is None
        else _safe_text(supplier_id, _DEAD_LETTER_TEXT_CHARS),
        "event_id": None if event_id is None else _safe_text(event_id, _DEAD_LETTER_TEXT_CHARS),
        "context": {**kept, **notes},  # the notes win over a caller's entry of the same name
        "failed_at": now_ms,
    }
