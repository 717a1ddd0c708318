"""Case 5: the worker's state directory fills up (a small tmpfs mounted for it): the worker
stops with a clear error naming the failed RocksDB write, and once space returns a restarted
worker ends at the reference model's state with nothing lost or written twice."""

from __future__ import annotations

import contextlib
import os
import subprocess
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


@pytest.fixture
def state_dir(tmp_path: Path) -> Any:
    """A 64 MiB tmpfs for the worker's data dir (root only)."""
    mount = tmp_path / "state"
    mount.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(mount)],
                          capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


@pytest.fixture
def env(tmp_path: Path) -> Any:
    e = PipelineEnv(tmp_path, partitions=PARTITIONS,
                    extra_env={"STOCKFLOW_SINK_ENABLED": "false",
                               "STOCKFLOW_CACHE_ENABLED": "false"}).setup()
    yield e
    e.cleanup()


def fill(directory: Path) -> Path:
    """Write a file until the filesystem has no space left."""
    filler = directory / "filler"
    block = b"\0" * (1 << 20)
    with filler.open("wb") as fh, contextlib.suppress(OSError):
        while True:
            fh.write(block)
            fh.flush()
            os.fsync(fh.fileno())
    with contextlib.suppress(OSError), filler.open("ab") as fh:  # the last partial block
        while True:
            fh.write(b"\0" * 4096)
            fh.flush()
    return filler


def test_full_state_disk_stops_the_worker_clearly_and_loses_nothing(
        env: PipelineEnv, state_dir: Path) -> None:
    valid, malformed = workload(53, 20_000)
    worker = ChaosWorker(env, "worker", STOCKFLOW_DATA_DIR=str(state_dir / "worker"))
    try:
        worker.start()
        wait_for(lambda: worker.assigned() > 0, 120, "worker assigned", [worker])
        feeder = Feeder(env, valid, malformed, chunks=12, pause_s=0.5)
        feeder.send_chunk(0)
        feeder.sent_chunks = 1
        wait_for(lambda: lag(env) == 0, 120, "the first chunk processed", [worker])
        filler = fill(state_dir)
        full_at = time.monotonic()
        feeder.start()  # keeps sending while the disk is full
        # A commit's RocksDB write fails: the worker must stop, saying why.
        wait_for(lambda: not worker.running, 180, "the worker to stop on the full disk",
                 [worker])
        fatal = worker.events("runtime.fatal")
        assert fatal, worker.text()
        assert "writing committed table values to RocksDB" in fatal[0]["error"], fatal[0]
        assert "No space left on device" in fatal[0]["error"], fatal[0]
        lag_at_end = lag(env)
        worker.stop(9)
        filler.unlink()  # space returns
        worker.start()
        feeder.finish()
        converge_s = wait_converged(env, [worker])
        assert worker.running, worker.text()
        check_and_record("5 state disk full", "64 MiB tmpfs filled under load; space freed "
                         "after the worker stopped", env, valid, malformed,
                         converge_s=converge_s, lag_at_chaos_end=lag_at_end,
                         extra={"full_to_converged_s": round(time.monotonic() - full_at, 1)})
    finally:
        stop_all([worker])
