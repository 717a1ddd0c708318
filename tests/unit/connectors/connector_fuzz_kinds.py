"""Malformed supplier values, one kind each, with the dead-letter reasons they must get.

A kind is one field of an otherwise valid record set to one bad value (or a record that is
not a record at all). The suppliers' spellings differ per entry point; `FIELDS` maps the
canonical field to each spelling used by the fuzz suite's mappings.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

# Field -> the reasons a bad value of it may be dead-lettered with.
REASONS: dict[str, frozenset[str]] = {
    "sku": frozenset({"bad_sku"}),
    "quantity": frozenset({"bad_quantity", "quantity_out_of_range"}),
    "sequence": frozenset({"bad_sequence"}),
    "observed_at": frozenset({"bad_timestamp"}),
    "price": frozenset({"bad_price"}),
    "currency": frozenset({"bad_currency"}),
    "status": frozenset({"bad_status"}),
    "lead_time_days": frozenset({"bad_lead_time"}),
    "warehouse": frozenset({"bad_warehouse"}),
    "kind": frozenset({"bad_kind"}),
    "event_id": frozenset({"bad_event_id"}),
    "record": frozenset({"malformed_record", "bad_sku"}),
}

# Not a number in any field: non-finite, non-ASCII digits, huge exponents, wrong types.
BAD_NUMBERS: list[Any] = [
    "lots", "NaN", "nan", "-NaN", "sNaN", "Infinity", "-Infinity", "inf", "+inf", "1e1000000",
    "-1e1000000", "1e-1000000", "9" * 5000, "1" * 41, "0x10", "0b1", "0o7", "1_000", "1,000",
    "1.2.3", "--1", "+-1", "1e", "e1", ".", "+", "-", "\u0661\u0662\u0663", "\uff11\uff12",
    "1 2", "12abc", "\u221e", "1e+", "1e5e5", "\ud800", "1\x00", [], {}, True, False, [1],
    {"v": 1}, float("nan"), float("inf"), float("-inf"), [[[[1]]]], "1e99999999999",
]
# Numbers that parse but are out of range or not whole, per field.
OUT_OF_RANGE: dict[str, list[Any]] = {
    "quantity": [-1, 10**12, 2**64, -(2**64), "1e10", 1e10, 1.5, "1.5", "0.1", 2**63],
    "sequence": [-1, 2**63, 2**64, 1.5, "1e19", "-0.5"],
    "observed_at": [-1, 1e300, 10**20, "10000-01-01T00:00:00Z", "2024-13-01T00:00:00Z",
                    "2024-05-01T10:00:00+25:00", "-0.5", "yesterday", "x" * 100],
    "price": ["-1", -0.01, "1e30", 10**20, "1e10"],
    "lead_time_days": [-1, 366, 1.5, 10**12],
}
# Not a valid value of any text field: wrong types, control and format characters, floods.
BAD_TEXT: list[Any] = [
    [], {}, True, False, 1.5, float("nan"), [1], {"a": 1}, "\ud800", "\x00", "x\x07",
    "\u200b", "x" * 100_000, "\x1b[31m",
]
TEXT_SPECIFIC: dict[str, list[Any]] = {
    # (Text is stripped first: "A\n" is the SKU "A", "\u2028" alone is no SKU.)
    "sku": ["", " ", "A|B", "x" * 129, "\u2028", 10**200, None, "|", "A\x7f"],
    "currency": ["euro", "EU", "E1R", "123", "\u20ac\u20ac\u20ac", "\u00c0BC"],
    "status": ["maybe", "deleted", "0"],
    "kind": ["DELTA", "snap"],
    "warehouse": ["x" * 129],
}
EVENT_ID_BAD: list[Any] = [[], {}, True, 1.5, float("nan"), [1], {"a": 1}, "x" * 100_000]
RECORDS_NOT_RECORDS: list[Any] = [
    [], "record", 1, None, True, [[[[]]]], {f"k{i}": i for i in range(2000)}, {},
]


@dataclass(frozen=True)
class Kind:
    """One malformation: `field` set to `value` (field "record": the record is `value`)."""

    name: str
    field: str
    value: Any

    @property
    def reasons(self) -> frozenset[str]:
        return REASONS[self.field]


def kinds() -> list[Kind]:
    """Every kind, each once, in a fixed order."""
    out: list[Kind] = []
    for field in ("quantity", "sequence", "observed_at", "price", "lead_time_days"):
        for i, value in enumerate(BAD_NUMBERS):
            out.append(Kind(f"{field}:number:{i}", field, value))
        for i, value in enumerate(OUT_OF_RANGE[field]):
            out.append(Kind(f"{field}:range:{i}", field, value))
    for field in ("sku", "currency", "status", "warehouse", "kind"):
        for i, value in enumerate(BAD_TEXT):
            out.append(Kind(f"{field}:text:{i}", field, value))
        for i, value in enumerate(TEXT_SPECIFIC.get(field, [])):
            out.append(Kind(f"{field}:specific:{i}", field, value))
    for i, value in enumerate(EVENT_ID_BAD):
        out.append(Kind(f"event_id:{i}", "event_id", value))
    for i, value in enumerate(RECORDS_NOT_RECORDS):
        out.append(Kind(f"record:{i}", "record", value))
    return out


def shuffled(seed: int) -> list[Kind]:
    """The kinds in a seeded order (the order a feed meets them must not matter)."""
    order = kinds()
    random.Random(seed).shuffle(order)
    return order


def good_record(names: dict[str, str], *, sku: str, quantity: int, sequence: int,
                observed_ms: int, event_id: str) -> dict[str, Any]:
    """A valid record in a supplier's spelling (`names`: canonical -> supplier field)."""
    canonical = {"sku": sku, "quantity": quantity, "sequence": sequence,
                 "observed_at": observed_ms, "price": "9.50", "currency": "EUR",
                 "status": "active", "lead_time_days": 3, "warehouse": "north",
                 "kind": "SNAPSHOT", "event_id": event_id}
    return {names[k]: v for k, v in canonical.items() if k in names}


def bad_record(kind: Kind, names: dict[str, str], *, sku: str, sequence: int,
               observed_ms: int, event_id: str) -> Any:
    """A record that is valid except for `kind` (or not a record at all)."""
    if kind.field == "record":
        return kind.value
    record = good_record(names, sku=sku, quantity=1, sequence=sequence,
                         observed_ms=observed_ms, event_id=event_id)
    if kind.value is None:
        record.pop(names[kind.field], None)
    else:
        record[names[kind.field]] = kind.value
    return record
