"""A worker stopped (SIGTERM) while its runtime is still starting: it finishes or abandons the
start, closes what it opened and exits 0, within the time a supervisor or the demo gives it."""

from __future__ import annotations

import signal
import time

import pytest

from bench.pipeline_env import PipelineEnv
from bench.worker_process import Worker

pytestmark = pytest.mark.integration

STARTING = "BatchRuntime]: Starting"  # mode logs it just before the runtime's on_start


@pytest.mark.parametrize("after_s", [0.0, 0.3, 0.6, 1.0])
def test_sigterm_during_start_exits_cleanly(kafka_only_env: PipelineEnv, after_s: float) -> None:
    env = kafka_only_env
    # The start creates topics, initialises the transactional producers (the worker's and
    # the reservation lane's: about a second) and subscribes; the delays land in each.
    worker = Worker(env, "w")
    worker.start()
    env.wait_until(lambda: STARTING in worker.text(), 120, "the runtime to begin starting")
    time.sleep(after_s)
    started = time.monotonic()
    code = worker.stop(signal.SIGTERM)
    took = time.monotonic() - started
    log = worker.text()
    assert code == 0, log
    assert took < 30, f"took {took:.1f}s to stop:\n{log}"
    assert worker.events("runtime.stopped"), log
    assert "cannot schedule new futures" not in log, log
