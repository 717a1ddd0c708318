"""The core pipeline on the real broker: a messy workload ends exactly where the reference model
says, malformed records are dead-lettered with their reason, one change per effective change,
and a SIGKILLed worker restarted mid-stream changes none of that."""

from __future__ import annotations

import json
import random
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from schemas.codec import codec_for
from tests.integration.pipeline_harness import PipelineEnv
from tests.unit.reference_model import reference_run

pytestmark = pytest.mark.integration

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


def assert_end_state(env: PipelineEnv, valid: list[dict[str, Any]],
                     malformed: list[tuple[bytes, bytes, str]]) -> None:
    ref = reference_run(valid, dedup_per_key=True)

    # Dead letters: every malformed record, with its reason, nothing else.
    dead = env.read_topic("inventory.deadletter", "DeadLetter", expect=len(malformed))
    assert Counter(d["reason"] for _, d in dead) == Counter(r for *_, r in malformed)
    assert {bytes(d["original"]) for _, d in dead} == {v for _, v, _ in malformed}

    # The stock table (its changelog) equals the reference states.
    changelog = env.read_changelog("stock", "StockState")
    expected_states = {f"{s}|{k}".encode(): v for (s, k), v in ref.states.items()}
    actual_states = {k: {"quantity": v["quantity"], "version": v["version"],
                         "status": v["status"], "suspect": v["suspect"],
                         "lead_time_days": v["lead_time_days"]}
                     for k, v in changelog.items()}
    assert actual_states == expected_states

    # The availability table equals the reference per platform SKU.
    avail = env.read_changelog("availability", "Availability")
    actual_avail = {k.decode(): {"total": v["total"], "suppliers": {
        s: e["quantity"] for s, e in v["suppliers"].items()}} for k, v in avail.items()}
    expected_avail = {p: {"total": a["total"], "suppliers": {
        s: e["quantity"] for s, e in a["suppliers"].items()}} for p, a in ref.availability.items()}
    assert actual_avail == expected_avail

    # Exactly one InventoryChange per effective change (read committed).
    changes = env.read_topic("inventory.changes", "InventoryChange", expect=len(ref.changes))
    seen = Counter((c["supplier_id"], c["sku"], c["version"]) for _, c in changes)
    assert max(seen.values()) == 1, [k for k, n in seen.items() if n > 1][:5]
    expected_changes = {(c["supplier_id"], c["sku"], c["version"]) for c in ref.changes}
    assert set(seen) == expected_changes


def wait_drained(env: PipelineEnv, timeout: float = 600) -> None:
    def drained() -> bool:
        return all(env.lag(t) == 0 for t in ("inventory.deltas", "inventory.stock-updates"))
    env.wait_until(drained, timeout, "the worker to consume everything")


@pytest.fixture
def env(tmp_path: Path) -> Any:
    e = PipelineEnv(tmp_path).setup()
    yield e
    e.cleanup()


def test_messy_workload_matches_reference_model(env: PipelineEnv) -> None:
    valid, malformed = build_workload(seed=7, target_events=20_000)
    assert len(valid) + len(malformed) >= 20_000
    env.start_worker()
    send_all(env, valid, malformed, random.Random(1))
    wait_drained(env)
    assert_end_state(env, valid, malformed)
    env.assert_worker_alive()


def test_sigkill_mid_stream_same_end_state(env: PipelineEnv) -> None:
    valid, malformed = build_workload(seed=11, target_events=8_000)
    env.start_worker()
    half = len(valid) // 2
    send_all(env, valid[:half], malformed[: len(malformed) // 2], random.Random(2))
    # Kill once the worker is visibly mid-way through the first half.
    env.wait_until(lambda: env.lag("inventory.deltas") < half * 0.8, 300, "worker progress")
    env.kill_worker()
    send_all(env, valid[half:], malformed[len(malformed) // 2:], random.Random(3))
    env.start_worker()
    wait_drained(env)
    assert_end_state(env, valid, malformed)
    # The restarted worker kept its RocksDB stores (they only ever hold committed state) and
    # caught them up from the changelogs past the offsets they recorded, instead of
    # discarding them and restoring every key.
    restarted = env.worker_logs[-1].read_text()
    assert "runtime.local_store_discarded" not in restarted
    first_assign = next(json.loads(line) for line in restarted.splitlines()
                        if '"runtime.partitions_assigned"' in line)
    keys = len(env.read_changelog("stock", "StockState"))
    assert first_assign["changelog_records_restored"] < keys / 2, (first_assign, keys)
