"""Two workers of one app under load: partitions move between live workers (a worker joins, one
is SIGKILLed and restarted, one leaves with SIGTERM) and the end state is still exactly the
reference model's: every table value, one change per effective change, each change's
quantity_before and total_available consistent with the changes before it, every dead letter
once; and every reservation command sent meanwhile (consumed by the workers' reservation
lanes) has exactly one committed decision, no hold granted twice."""

from __future__ import annotations

import random
import signal
import threading
import time
import uuid
from collections import Counter
from typing import Any

import pytest

from bench.pipeline_env import PipelineEnv
from bench.worker_process import Worker
from schemas.codec import codec_for
from tests.integration.test_pipeline_e2e import assert_end_state, build_workload, send_all

pytestmark = pytest.mark.integration


def assert_change_chain(env: PipelineEnv) -> list[dict[str, Any]]:
    """Each supplier change's quantity_before is its supplier's previous quantity_after, and
    its total_available the sum over the platform SKU's ACTIVE suppliers after it; a
    RESERVATION change repeats a supplier's entry unchanged. Returns those."""
    entries: dict[str, dict[str, tuple[int, str]]] = {}
    reservations = []
    for _, c in env.read_topic("inventory.changes", "InventoryChange", idle_s=3.0):
        if c["cause"] == "RESERVATION":
            # (The entry it repeats is the one the reservation agent saw, possibly of a
            # supplier change still in the other loop's open transaction.)
            assert c["quantity_after"] == c["quantity_before"], c
            reservations.append(c)
            continue
        suppliers = entries.setdefault(c["platform_sku"], {})
        before = suppliers.get(c["supplier_id"], (0, "ACTIVE"))[0]
        assert c["quantity_before"] == before, c
        suppliers[c["supplier_id"]] = (c["quantity_after"], c["status"])
        total = sum(q for q, status in suppliers.values() if status == "ACTIVE")
        assert c["total_available"] == total, c
    return reservations


def send_holds(env: PipelineEnv, run: str, first: int, count: int) -> list[str]:
    """HOLD commands of one unit on SKUs the workload supplies; their command ids."""
    from confluent_kafka import Producer

    command = codec_for("ReservationCommand")
    producer = Producer({**env.settings.confluent_config(), "partitioner": "murmur2_random",
                         "enable.idempotence": True})
    ids = []
    for i in range(first, first + count):
        sku = f"SKU-{i % 40:05d}"
        cid = f"{run}-{i}"
        producer.produce(env.topic("reservations.commands"), command.encode({
            "command_id": cid, "kind": "HOLD", "platform_sku": sku, "reservation_id": cid,
            "quantity": 1, "ttl_ms": 600_000, "idempotency_key": f"key-{cid}",
            "requested_at": int(time.time() * 1000)}), sku.encode())
        ids.append(cid)
    assert producer.flush(60) == 0
    return ids


def test_partitions_move_between_live_workers_under_load(kafka_only_env: PipelineEnv) -> None:
    env = kafka_only_env
    valid, malformed = build_workload(seed=23, target_events=9_000)
    a, b = Worker(env, "worker-a"), Worker(env, "worker-b")
    chunks = 16
    size = len(valid) // chunks + 1
    bad = len(malformed) // chunks + 1
    feeding = threading.Event()
    run = uuid.uuid4().hex[:8]
    holds: list[str] = []

    def send(i: int) -> None:
        send_all(env, valid[i * size:(i + 1) * size], malformed[i * bad:(i + 1) * bad],
                 random.Random(i))
        holds.extend(send_holds(env, run, i * 40, 40))

    def feed() -> None:  # keep records coming while the group changes
        for i in range(1, chunks):
            send(i)
            feeding.wait(0.5)

    try:
        a.start()
        send(0)
        env.wait_until(lambda: a.events("runtime.partitions_assigned"), 120, "A assigned")
        total = a.events("runtime.partitions_assigned")[0]["partitions"]  # every input's
        feeder = threading.Thread(target=feed)
        feeder.start()
        b.start()  # rebalance: B joins
        env.wait_until(lambda: any(e["partitions"] < total for e in
                                   a.events("runtime.partitions_assigned")), 120,
                       "A to hand partitions to B")
        a.stop(signal.SIGKILL)  # A dies with a transaction open ...
        a.start()  # ... and, static membership, takes its place back at once
        env.wait_until(lambda: len(a.events("runtime.partitions_assigned")) >= 3, 120,
                       "A restarted and assigned")
        feeder.join()
        assert b.stop(signal.SIGTERM) == 0, b.text()  # a clean leave under load
        (stopped,) = b.events("runtime.stopped")
        assert stopped["commits"] > 0, b.text()  # B did take part
        env.wait_until(lambda: a.events("runtime.partitions_assigned")[-1]["partitions"]
                       == total, 120, "A to take B's partitions")
        env.wait_until(lambda: all(env.lag(t) == 0 for t in
                                   ("inventory.deltas", "inventory.stock-updates",
                                    "reservations.commands")),
                       300, "A to consume everything")
        assert a.proc is not None and a.proc.poll() is None, a.text()
        assert_end_state(env, valid, malformed)
        reservation_changes = assert_change_chain(env)
        dead = env.read_topic("inventory.deadletter", "DeadLetter", idle_s=2.0)
        sources = Counter((d["source_partition"], d["source_offset"]) for _, d in dead)
        assert max(sources.values()) == 1  # no dead letter written twice
        decisions = [d for _, d in env.read_topic("reservations.decisions",
                                                  "ReservationDecision", idle_s=2.0)
                     if (d["command_id"] or "").startswith(run)]
        per_command = Counter(d["command_id"] for d in decisions)
        assert set(per_command) == set(holds)  # none lost ...
        assert max(per_command.values()) == 1  # ... none decided twice
        granted = [d["reservation_id"] for d in decisions if d["outcome"] == "GRANTED"]
        assert granted and len(granted) == len(set(granted))
        # Every grant is one InventoryChange too, none lost or written twice by the kill.
        assert sorted(c["reservation_id"] for c in reservation_changes
                      if c["reservation_outcome"] == "GRANTED"
                      and c["reservation_id"].startswith(run)) == sorted(granted)
        lane = [e for w in (a, b) for e in w.events("lane.partitions_assigned")]
        assert lane, "the commands were not read by the reservation lane"
    finally:
        feeding.set()
        a.stop(signal.SIGKILL)
        b.stop(signal.SIGKILL)
