"""`stockflow demo` runs the pipeline and stops all of it on Ctrl-C, SIGTERM or SIGHUP."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from bench.pipeline_env import ROOT, PipelineEnv, free_port
from tests.conftest import wait_for

pytestmark = pytest.mark.integration

CHILDREN = ("worker", "simulator", "connectors", "api")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie has exited; only its parent has not collected it yet.
    with contextlib.suppress(OSError):
        if Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1].startswith("Z"):
            return False
    return True


def _stuck_report(demo_pid: int, pids: dict[str, int], output: str) -> str:
    """What a demo that does not stop is doing: its output, every live process's Python
    stacks (py-spy, from the dev extra) and the tail of each child's log."""
    parts = [output]
    for name, pid in [("demo", demo_pid), *pids.items()]:
        if not _alive(pid):
            parts.append(f"--- {name} ({pid}) has exited")
            continue
        dump = subprocess.run([str(Path(sys.executable).with_name("py-spy")), "dump",
                               "--pid", str(pid)], capture_output=True, text=True,
                              timeout=60, check=False)
        parts.append(f"--- {name} ({pid}) stacks:\n{dump.stdout}{dump.stderr}")
    log_dir = ROOT / ".stockflow" / "stack" / "demo"
    for name in pids:
        log = log_dir / f"{name}.log"
        if log.exists():
            parts.append(f"--- {log} (tail):\n{log.read_text(errors='replace')[-3000:]}")
    return "\n".join(parts)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_signal_stops_the_demo_and_its_children(tmp_path: Path, sig: signal.Signals) -> None:
    env = PipelineEnv(tmp_path, extra_env={
        "STOCKFLOW_CONNECTORS_METRICS_PORT": str(free_port()),
        "STOCKFLOW_API_PORT": str(free_port())})
    demo = subprocess.Popen([sys.executable, "-m", "pipeline.shell.cli", "demo",
                             "--interval", "0.5"],
                            env=env.env, cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    output: list[str] = []
    reader = threading.Thread(target=lambda: output.extend(iter(demo.stdout.readline, "")),
                              daemon=True)  # type: ignore[union-attr]
    reader.start()
    pids: dict[str, int] = {}
    try:
        def started() -> bool:
            for line in list(output):
                if m := re.search(r"started (\w+) \(pid (\d+)", line):
                    pids[m[1]] = int(m[2])
            assert demo.poll() is None, "demo exited early:\n" + "".join(output)
            return set(pids) == set(CHILDREN)

        wait_for(started, timeout=240, message="the demo to start its children")
        assert all(_alive(pid) for pid in pids.values())

        os.kill(demo.pid, sig)
        try:
            # The demo gives its children 30 s together, then kills what is left.
            code = demo.wait(timeout=60)
        except subprocess.TimeoutExpired:
            pytest.fail("the demo did not stop within 60 s of the signal:\n"
                        + _stuck_report(demo.pid, pids, "".join(output)))
        reader.join(timeout=10)  # all of its output, a traceback included, for the message
        assert code == 0, "".join(output)
        wait_for(lambda: not any(_alive(pid) for pid in pids.values()), timeout=30,
                 message="the demo's children to stop")
        assert "demo stopped" in "".join(output)
        # Every child stopped on its SIGTERM (the worker commits what it did), none was killed.
        assert "killed" not in "".join(output), _stuck_report(demo.pid, pids, "".join(output))
    finally:
        for pid in [demo.pid, *pids.values()]:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
        demo.wait(timeout=30)
        env.cleanup()


LIBRDKAFKA_LINE = re.compile(r"^%\d\|\d+\.\d+\|")  # "%3|1764563000.123|FAIL|rdkafka#..."


def test_the_demo_terminal_shows_one_short_screen_and_no_client_logs(tmp_path: Path) -> None:
    """`make demo`'s terminal for a minute: the summary, the live view, no librdkafka lines."""
    env = PipelineEnv(tmp_path, extra_env={
        "STOCKFLOW_CONNECTORS_METRICS_PORT": str(free_port()),
        "STOCKFLOW_API_PORT": str(free_port())})
    try:
        demo = subprocess.run(
            [sys.executable, "-m", "pipeline.shell.cli", "demo", "--duration", "60",
             "--interval", "2"], env=env.env, cwd=ROOT, capture_output=True, text=True,
            timeout=400, start_new_session=True)
    finally:
        env.cleanup()
    out = demo.stdout + demo.stderr
    assert demo.returncode == 0, out
    lines = out.splitlines()
    offending = [line for line in lines if LIBRDKAFKA_LINE.match(line)
                 or "rdkafka" in line or "Connection refused" in line]
    assert offending == [], "\n".join(offending[:20])
    # One short screen before the live view: the stack, the set-up, what runs and where.
    start = next(i for i, line in enumerate(lines) if "stockflow demo is running" in line)
    assert start <= 6, out
    summary = "\n".join(lines[start:start + 10])
    for name in CHILDREN:
        assert f"started {name} (pid" in summary, summary
    assert f":{env.settings.api_port}/" in summary
    assert f":{env.settings.metrics_port}/metrics" in summary
    assert "Ctrl-C" in summary
    assert "demo stopped" in out
    assert not [line for line in lines[:start] if line.startswith("  topic ")], out
    # No log lines (the JSON of production logging) on the demo's screen.
    assert not [line for line in lines if line.lstrip().startswith('{"')], out
