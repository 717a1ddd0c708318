"""The messy workload of the end-to-end test, the reliability suite and the scaling benchmark:
valid deltas with duplicates, reordering, stale snapshots and gaps, plus malformed records."""

from __future__ import annotations

import random
import time
from typing import Any

from bench.pipeline_env import PipelineEnv
from schemas.codec import codec_for

SUPPLIERS = ("acme", "bolt", "crane", "delta-co")
SKUS_PER_SUPPLIER = 600  # 2,400 (supplier, sku) keys; SKUs shared so platform SKUs aggregate


def build_workload(seed: int, target_events: int) -> tuple[list[dict[str, Any]],
                                                             list[tuple[bytes, bytes, str]]]:
    """Valid deltas in arrival order with duplicates, reordering, stale snapshots and gaps,
    plus ~1% malformed records as (key, value bytes, expected reason)."""
    rng = random.Random(seed)
    now = int(time.time() * 1000)
    per_key: list[list[dict[str, Any]]] = []
    counter = 0
    keys = [(s, f"SKU-{i:05d}") for s in SUPPLIERS for i in range(SKUS_PER_SUPPLIER)]
    events_per_key = max(3, target_events // len(keys))
    for supplier, sku in keys:
        seq = 0
        events: list[dict[str, Any]] = []
        for n in range(events_per_key):
            seq += 1
            if n > 0 and rng.random() < 0.05:
                seq += 1  # a lost adjustment: the next dense sequence jumps (a gap)
            kind = "SNAPSHOT" if n == 0 or rng.random() < 0.3 else "ADJUSTMENT"
            qty = rng.randint(0, 500) if kind == "SNAPSHOT" else rng.randint(-60, 40)
            counter += 1
            events.append({
                "supplier_id": supplier, "sku": sku, "event_id": f"{supplier}-{counter}",
                "sequence": seq, "kind": kind, "quantity": qty, "observed_at": now,
                "received_at": now, "status": "DISCONTINUED" if rng.random() < 0.01
                else "ACTIVE", "connector": "test",
            })
        arrival = list(events)
        # Reordering: swap neighbours now and then (the later one then arrives stale/out of order).
        for i in range(len(arrival) - 1):
            if rng.random() < 0.1:
                arrival[i], arrival[i + 1] = arrival[i + 1], arrival[i]
        # Redeliveries: the same event again, later.
        for e in rng.sample(events, k=max(1, len(events) // 5)):
            arrival.insert(rng.randint(arrival.index(e) + 1, len(arrival)), dict(e))
        # Stale snapshots: an old version re-sent under a new event_id.
        if rng.random() < 0.3:
            counter += 1
            arrival.append({**events[0], "event_id": f"{supplier}-{counter}",
                            "quantity": 999})
        per_key.append(arrival)
    # Interleave keys while keeping each key's arrival order.
    valid: list[dict[str, Any]] = []
    cursors = [0] * len(per_key)
    live = list(range(len(per_key)))
    while live:
        k = rng.choice(live)
        valid.append(per_key[k][cursors[k]])
        cursors[k] += 1
        if cursors[k] == len(per_key[k]):
            live.remove(k)

    codec = codec_for("SupplierDelta")
    malformed: list[tuple[bytes, bytes, str]] = []
    for i in range(max(1, len(valid) // 100)):
        supplier = rng.choice(SUPPLIERS)
        base = {**valid[rng.randrange(len(valid))], "event_id": f"bad-{i}"}
        match i % 4:
            case 0:
                malformed.append((f"{supplier}|junk".encode(), rng.randbytes(20), "decode_error"))
            case 1:
                bad = {**base, "kind": "SNAPSHOT", "quantity": -5}
                malformed.append((f"{bad['supplier_id']}|{bad['sku']}".encode(),
                                  codec.encode(bad), "negative_snapshot"))
            case 2:
                bad = {**base, "supplier_id": "bad supplier!"}
                malformed.append((f"{bad['supplier_id']}|{bad['sku']}".encode(),
                                  codec.encode(bad), "bad_supplier_id"))
            case 3:
                bad = {**base, "observed_at": now + 24 * 3600 * 1000}
                malformed.append((f"{bad['supplier_id']}|{bad['sku']}".encode(),
                                  codec.encode(bad), "timestamp_in_future"))
    return valid, malformed


def send_all(env: PipelineEnv, valid: list[dict[str, Any]],
             malformed: list[tuple[bytes, bytes, str]], rng: random.Random) -> None:
    """Send valid deltas in arrival order with malformed records mixed in."""
    codec = codec_for("SupplierDelta")
    slots = sorted(rng.sample(range(len(valid)), k=len(malformed)))
    bad_at = dict(zip(slots, malformed, strict=True))
    with env.producer() as producer:
        for i, d in enumerate(valid):
            producer.produce(d, value=codec.encode(d))
            if i in bad_at:
                key, value, _reason = bad_at[i]
                producer.produce({}, key=key, value=value)
        producer.flush(120)
