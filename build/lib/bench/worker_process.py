"""`stockflow worker` processes of an isolated pipeline (bench/pipeline_env.py): started,
signalled (SIGKILL, SIGTERM, SIGSTOP/SIGCONT) and read back from their JSON logs."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.pipeline_env import ROOT, PipelineEnv, free_port
from pipeline.topics import DELTAS, STOCK_UPDATES

# Where the reliability suite records each case's outcome (read by bench/scaling.py).
RESULTS = ROOT / ".stockflow" / "reliability" / "results.jsonl"


class Worker:
    """One `stockflow worker` process of the env's app with its own data dir and ports."""

    def __init__(self, env: PipelineEnv, name: str) -> None:
        self.env = env
        self.name = name
        self.logs: list[Path] = []
        self.proc: subprocess.Popen[bytes] | None = None
        self.environ = {**env.env, "STOCKFLOW_DATA_DIR": str(env.tmp_path / name),
                        "STOCKFLOW_METRICS_PORT": str(free_port()),
                        "STOCKFLOW_WEB_PORT": str(free_port())}

    def start(self) -> None:
        log = self.env.tmp_path / f"{self.name}-{len(self.logs)}.log"
        self.logs.append(log)
        with log.open("wb") as fh:
            self.proc = subprocess.Popen([sys.executable, "-m", "pipeline.shell.cli", "worker"],
                                         env=self.environ, cwd=ROOT, stdout=fh,
                                         stderr=subprocess.STDOUT, start_new_session=True)

    def stop(self, sig: int) -> int | None:
        if self.proc is None:
            return None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, sig)
        try:
            code = self.proc.wait(timeout=90)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
            code = None  # did not stop in time
        self.proc = None
        return code

    def events(self, name: str) -> list[dict[str, Any]]:
        out = []
        for log in self.logs:
            for line in log.read_text(errors="replace").splitlines():
                if f'"{name}"' in line and line.startswith("{"):
                    with contextlib.suppress(json.JSONDecodeError):
                        out.append(json.loads(line))
        return out

    def text(self) -> str:
        return "\n".join(p.read_text(errors="replace")[-3000:] for p in self.logs)


class ChaosWorker(Worker):
    """A worker process that can also be paused and resumed (SIGSTOP/SIGCONT)."""

    def __init__(self, env: PipelineEnv, name: str, **extra_env: str) -> None:
        super().__init__(env, name)
        self.environ.update(extra_env)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, sig)

    def full_text(self) -> str:
        return "\n".join(p.read_text(errors="replace") for p in self.logs)

    def assigned(self) -> int:
        """How many partitions the worker holds after its latest assignment."""
        events = self.events("runtime.partitions_assigned")
        return events[-1]["partitions"] if events else -1


def wait_for(predicate: Callable[[], Any], timeout: float, message: str,
             workers: list[ChaosWorker] | None = None) -> Any:
    """Poll until true or the deadline; the workers' log tails in the failure message."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(0.3)
    tails = "\n".join(f"--- {w.name}\n{w.text()[-2000:]}" for w in workers or [])
    raise AssertionError(f"timed out after {timeout}s: {message}; last={last!r}\n{tails}")


def lag(env: PipelineEnv) -> int:
    return sum(env.lag(t) for t in (DELTAS.name, STOCK_UPDATES.name))
