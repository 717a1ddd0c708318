"""Case 4: a worker paused with SIGSTOP past its session timeout while the group moves its
partitions to another worker, then resumed: it must be fenced (its open transaction aborted,
its partitions lost) and the writes it attempts late must change nothing."""

from __future__ import annotations

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
    lag,
    stop_all,
    wait_converged,
    wait_for,
    workload,
)

PARTITIONS = 4
SESSION_TIMEOUT_S = 6.0  # the smallest the settings allow: the pause outlives it sooner


@pytest.fixture
def env(tmp_path: Path) -> Any:
    e = PipelineEnv(tmp_path, partitions=PARTITIONS,
                    extra_env={"STOCKFLOW_SINK_ENABLED": "false",
                               "STOCKFLOW_CACHE_ENABLED": "false",
                               "STOCKFLOW_SESSION_TIMEOUT_S": str(SESSION_TIMEOUT_S)}).setup()
    yield e
    e.cleanup()


def test_paused_worker_is_fenced_and_its_late_writes_change_nothing(env: PipelineEnv) -> None:
    valid, malformed = workload(41, 20_000)
    a, b = ChaosWorker(env, "zombie"), ChaosWorker(env, "survivor")
    workers = [a, b]
    try:
        a.start()
        inputs = wait_for(lambda: a.events("runtime.started"), 120, "A started",
                          workers)[0]["topics"]
        total = len(inputs) * PARTITIONS
        b.start()
        wait_for(lambda: a.assigned() + b.assigned() == total and min(
            a.assigned(), b.assigned()) > 0, 120, "A and B to share the partitions", workers)
        feeder = Feeder(env, valid, malformed, chunks=16, pause_s=0.8)
        feeder.start()
        wait_for(lambda: feeder.sent_chunks >= 3, 120, "load", workers)
        a.signal(signal.SIGSTOP)  # frozen mid-stream, likely with a transaction open
        paused_at = time.monotonic()
        # The group drops A once its session times out and hands everything to B.
        wait_for(lambda: b.assigned() == total, 120, "B to take A's partitions", workers)
        takeover_s = time.monotonic() - paused_at
        wait_for(lambda: feeder.sent_chunks >= 8, 120, "more load for B", workers)
        events_before = len(a.events("runtime.partitions_lost")) + \
            len(a.events("runtime.commit_failed"))
        a.signal(signal.SIGCONT)  # the zombie wakes up and tries to go on
        fenced = wait_for(
            lambda: len(a.events("runtime.partitions_lost")) +
            len(a.events("runtime.commit_failed")) > events_before or not a.running,
            120, "A to learn it was fenced", workers)
        assert fenced
        lag_at_end = lag(env)
        feeder.finish()
        converge_s = wait_converged(env, workers)
        assert b.running, b.text()
        check_and_record("4 zombie (SIGSTOP)", f"A paused {takeover_s:.0f}s until B took over, "
                         "then resumed", env, valid, malformed, converge_s=converge_s,
                         lag_at_chaos_end=lag_at_end,
                         extra={"a_alive_after": a.running,
                                "a_lost": len(a.events("runtime.partitions_lost")),
                                "a_commit_failed": len(a.events("runtime.commit_failed"))})
    finally:
        stop_all(workers)
