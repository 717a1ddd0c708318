"""The stack's Kafka probe prints nothing while the broker is not ready (`make demo`'s screen)."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[4]
# As LocalStack.probe calls it: an exception means "not ready yet".
PROBE = """
import sys
from pipeline.settings import Settings
from pipeline.shell.stack import _probe_kafka
try:
    version = _probe_kafka(Settings(), port=int(sys.argv[1]))
except Exception:
    version = None
print("probe:", version)
"""


def _probe_output(port: int) -> str:
    result = subprocess.run([sys.executable, "-c", PROBE, str(port)], cwd=ROOT,
                            capture_output=True, text=True, timeout=60)
    return result.stdout + result.stderr


@pytest.fixture
def not_kafka() -> Iterator[int]:
    """A port that accepts connections and closes them: a broker that is not serving yet."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    server.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                continue
            conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    stop.set()
    thread.join(timeout=5)
    server.close()


def test_closed_port_probe_prints_nothing() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed once the block ends
    out = _probe_output(port)
    assert out.strip() == "probe: None", out


def test_broker_not_serving_yet_probe_prints_nothing(not_kafka: int) -> None:
    out = _probe_output(not_kafka)
    assert "probe: None" in out
    # librdkafka's own log lines look like "%3|1764563000.123|FAIL|rdkafka#producer-1| ...".
    assert [line for line in out.splitlines() if line != "probe: None"] == [], out
