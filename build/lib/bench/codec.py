"""Micro-benchmark of the Avro codec per record type: fastavro alone against the generated code.

    python -m bench.codec [--number 2000] [--repeat 15]

Prints microseconds per call of encode, decode_trusted and decode (the strict path), with
the codec's generated functions switched off (fastavro alone, as before) and on: the best of
--repeat runs of --number calls, the two timed in turn so that they see the same load.
"""

from __future__ import annotations

import argparse
import timeit
from collections.abc import Callable
from functools import partial
from typing import Any

from schemas.codec import AvroCodec

NOW_MS = 1_764_567_890_123

RECORDS: dict[str, dict[str, Any]] = {
    "SupplierDelta": {
        "supplier_id": "acme-eu", "sku": "SKU-0042-XL", "event_id": "acme-eu:8f1c2a9b41d7",
        "sequence": 1_764_567_890_123_456, "kind": "SNAPSHOT", "quantity": 125,
        "observed_at": NOW_MS, "price": "12.50", "currency": "EUR", "warehouse": None,
        "lead_time_days": 3, "status": "ACTIVE", "connector": "rest",
        "received_at": NOW_MS + 40,
    },
    "StockUpdate": {
        "platform_sku": "P-0042-XL", "supplier_id": "acme-eu", "sku": "SKU-0042-XL",
        "quantity_before": 120, "quantity_after": 125, "version": 1_764_567_890_123_456,
        "status": "ACTIVE", "cause": "SNAPSHOT", "event_id": "acme-eu:8f1c2a9b41d7",
        "observed_at": NOW_MS, "received_at": NOW_MS + 40, "produced_at": NOW_MS + 41,
        "price": "12.50", "currency": "EUR", "lead_time_days": 3, "clamped": False,
        "suspect": False,
    },
    "InventoryChange": {
        "platform_sku": "P-0042-XL", "supplier_id": "acme-eu", "sku": "SKU-0042-XL",
        "quantity_before": 120, "quantity_after": 125, "version": 1_764_567_890_123_456,
        "total_available": 310, "best_supplier": "acme-eu", "status": "ACTIVE",
        "cause": "SNAPSHOT", "event_id": "acme-eu:8f1c2a9b41d7", "observed_at": NOW_MS,
        "produced_at": NOW_MS + 41, "changed_at": NOW_MS + 60, "lead_time_days": 3,
    },
    "StockState": {
        "quantity": 125, "version": 1_764_567_890_123_456, "updated_at": NOW_MS + 41,
        "status": "ACTIVE", "platform_sku": "P-0042-XL", "suspect": False,
        "lead_time_days": 3, "recent_ids": bytes(range(16)) * 8,
    },
    "Availability": {
        "platform_sku": "P-0042-XL", "total": 310, "best_supplier": "acme-eu",
        "suppliers": {
            supplier: {"sku": f"SKU-0042-{supplier}", "quantity": 100 + i,
                       "version": 1_764_567_890_123_456 + i, "status": "ACTIVE",
                       "lead_time_days": i or None, "updated_at": NOW_MS + i,
                       "snapshot_at": NOW_MS if i else None}
            for i, supplier in enumerate(("acme-eu", "globex", "initech"))
        },
    },
    "DeadLetter": {
        "reason": "bad_sku", "message": "sku has a '|'", "original": b"\xc3\x01" + bytes(80),
        "original_key": b"acme|x|y", "source_topic": "inventory.deltas",
        "source_partition": 3, "source_offset": 120_345, "source_timestamp": NOW_MS,
        "supplier_id": "acme", "event_id": "e-1", "context": {"file": "a.csv", "row": "17"},
        "failed_at": NOW_MS + 5,
    },
}


def per_call_us(old: Callable[[], Any], new: Callable[[], Any], number: int,
                repeat: int) -> tuple[float, float]:
    """Best time per call of each, the two timed in turn so both see the same load."""
    best_old = best_new = float("inf")
    for _ in range(repeat):
        best_old = min(best_old, timeit.timeit(old, number=number))
        best_new = min(best_new, timeit.timeit(new, number=number))
    return best_old / number * 1e6, best_new / number * 1e6


def fastavro_only(name: str) -> AvroCodec:
    """The codec as it was: every call through fastavro."""
    codec = AvroCodec(name)
    codec._fast_encode = None
    codec._fast_decode = None
    return codec


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--number", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=15)
    args = parser.parse_args()
    print(f"{'record':<16}{'op':<16}{'fastavro us':>12}{'generated us':>14}{'speed-up':>10}")
    for name, record in RECORDS.items():
        before, after = fastavro_only(name), AvroCodec(name)
        data = before.encode(record)
        if after.encode(record) != data or after.decode_trusted(data) != before.decode(data):
            raise SystemExit(f"{name}: the generated code differs from fastavro")
        for op in ("encode", "decode_trusted", "decode"):
            arg = record if op == "encode" else data
            old, new = per_call_us(partial(getattr(before, op), arg),
                                   partial(getattr(after, op), arg), args.number, args.repeat)
            print(f"{name:<16}{op:<16}{old:>12.2f}{new:>14.2f}{old / new:>9.1f}x")


if __name__ == "__main__":
    main()
