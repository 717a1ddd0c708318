"""The core pipeline on the real broker: a messy workload ends exactly where the reference model
says, malformed records are dead-lettered with their reason, one change per effective change,
and a SIGKILLed worker restarted mid-stream changes none of that."""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from bench.messy_workload import build_workload, send_all
from bench.pipeline_env import PipelineEnv
from tests.unit.reference_model import reference_run

pytestmark = pytest.mark.integration

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

    # Exactly one InventoryChange per effective change (read committed); the RESERVATION
    # changes of holds, when a test sends any, are checked by that test.
    changes = env.read_topic("inventory.changes", "InventoryChange", expect=len(ref.changes))
    seen = Counter((c["supplier_id"], c["sku"], c["version"]) for _, c in changes
                   if c["cause"] != "RESERVATION")
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
