"""Case 1: three workers on 12 partitions; a fourth joins under load, one leaves cleanly, one
is SIGKILLed (and restarted), at random points, 5 rounds (1 in the trimmed suite)."""

from __future__ import annotations

import random
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from bench.pipeline_env import PipelineEnv
from tests.reliability.chaos import (
    ChaosWorker,
    Feeder,
    check_and_record,
    full,
    lag,
    stop_all,
    wait_converged,
    wait_for,
    workload,
)

PARTITIONS = 12


@pytest.fixture
def env(tmp_path: Path) -> Any:
    e = PipelineEnv(tmp_path, partitions=PARTITIONS,
                    extra_env={"STOCKFLOW_SINK_ENABLED": "false",
                               "STOCKFLOW_CACHE_ENABLED": "false"}).setup()
    yield e
    e.cleanup()


def test_workers_join_leave_and_die_under_load(env: PipelineEnv) -> None:
    rounds = 5 if full() else 1
    rng = random.Random(int(time.time()))
    valid, malformed = workload(31, 30_000)
    pool = [ChaosWorker(env, f"w{i}") for i in range(4 + rounds)]
    faults: list[str] = []
    try:
        running = pool[:3]
        for w in running:
            w.start()
        inputs = wait_for(lambda: running[0].events("runtime.started"), 120, "w0 started",
                          running)[0]["topics"]
        total = len(inputs) * PARTITIONS
        wait_for(lambda: sum(max(0, w.assigned()) for w in running) == total, 180,
                 "three workers to share the partitions", running)
        feeder = Feeder(env, valid, malformed, chunks=12 * rounds, pause_s=0.7)
        feeder.start()
        spare = pool[3:]
        for r in range(rounds):
            time.sleep(rng.uniform(0.2, 3.0))
            joining = spare.pop(0)
            joining.start()  # a fourth joins under load
            faults.append(f"r{r}: {joining.name} joins")
            wait_for(lambda j=joining: j.assigned() > 0, 180, f"{joining.name} assigned",
                     [*running, joining])
            running.append(joining)
            time.sleep(rng.uniform(0.2, 3.0))
            leaving = rng.choice(running)
            running.remove(leaving)
            assert leaving.stop(signal.SIGTERM) == 0, leaving.text()  # a clean leave
            faults.append(f"{leaving.name} SIGTERM")
            time.sleep(rng.uniform(0.2, 3.0))
            victim = rng.choice(running)
            victim.stop(signal.SIGKILL)  # dies with a transaction open
            faults.append(f"{victim.name} SIGKILL+restart")
            victim.start()  # static membership: takes its place back
            wait_for(lambda v=victim: len(v.events("runtime.partitions_assigned")) > 0 and
                     v.assigned() >= 0, 180, f"{victim.name} back", running)
        lag_at_end = lag(env)
        feeder.finish()
        converge_s = wait_converged(env, running)
        for w in running:
            assert w.running, w.text()
        check_and_record("1 worker churn", "; ".join(faults), env, valid, malformed,
                         converge_s=converge_s, lag_at_chaos_end=lag_at_end,
                         extra={"rounds": rounds, "workers": len(running)})
    finally:
        stop_all(pool)
