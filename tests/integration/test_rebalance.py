"""Two workers of one app under load: partitions move between live workers (a worker joins, one
is SIGKILLed and restarted, one leaves with SIGTERM) and the end state is still exactly the
reference model's: every table value, one change per effective change, each change's
quantity_before and total_available consistent with the changes before it, every dead letter
once."""

from __future__ import annotations

import random
import signal
import threading
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from bench.pipeline_env import PipelineEnv
from bench.worker_process import Worker
from tests.integration.test_pipeline_e2e import assert_end_state, build_workload, send_all

pytestmark = pytest.mark.integration


def assert_change_chain(env: PipelineEnv) -> None:
    """Each change's quantity_before is its supplier's previous quantity_after, and its
    total_available the sum over the platform SKU's ACTIVE suppliers after it."""
    entries: dict[str, dict[str, tuple[int, str]]] = {}
    for _, c in env.read_topic("inventory.changes", "InventoryChange", idle_s=3.0):
        suppliers = entries.setdefault(c["platform_sku"], {})
        before = suppliers.get(c["supplier_id"], (0, "ACTIVE"))[0]
        assert c["quantity_before"] == before, c
        suppliers[c["supplier_id"]] = (c["quantity_after"], c["status"])
        total = sum(q for q, status in suppliers.values() if status == "ACTIVE")
        assert c["total_available"] == total, c


@pytest.fixture
def env(tmp_path: Path) -> Any:
    e = PipelineEnv(tmp_path, extra_env={"STOCKFLOW_SINK_ENABLED": "false",
                                         "STOCKFLOW_CACHE_ENABLED": "false"}).setup()
    yield e
    e.cleanup()


def test_partitions_move_between_live_workers_under_load(env: PipelineEnv) -> None:
    valid, malformed = build_workload(seed=23, target_events=9_000)
    a, b = Worker(env, "worker-a"), Worker(env, "worker-b")
    chunks = 16
    size = len(valid) // chunks + 1
    bad = len(malformed) // chunks + 1
    feeding = threading.Event()

    def send(i: int) -> None:
        send_all(env, valid[i * size:(i + 1) * size], malformed[i * bad:(i + 1) * bad],
                 random.Random(i))

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
                                   ("inventory.deltas", "inventory.stock-updates")),
                       300, "A to consume everything")
        assert a.proc is not None and a.proc.poll() is None, a.text()
        assert_end_state(env, valid, malformed)
        assert_change_chain(env)
        dead = env.read_topic("inventory.deadletter", "DeadLetter", idle_s=2.0)
        sources = Counter((d["source_partition"], d["source_offset"]) for _, d in dead)
        assert max(sources.values()) == 1  # no dead letter written twice
    finally:
        feeding.set()
        a.stop(signal.SIGKILL)
        b.stop(signal.SIGKILL)
