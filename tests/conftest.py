"""Shared fixtures: unique names per test so parallel tests never see each other."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable

import pytest

# The local stack's addresses unless the environment points elsewhere.
KAFKA = os.environ.get("STOCKFLOW_KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092")
CASSANDRA_HOST = "127.0.0.1"
REDIS_URL = "redis://127.0.0.1:6379/0"


@pytest.fixture
def unique() -> str:
    """A short unique token for topic prefixes, keyspaces and key prefixes."""
    return "t" + uuid.uuid4().hex[:10]


def wait_for(predicate: Callable[[], object], timeout: float, interval: float = 0.2,
             message: str = "condition") -> object:
    """Poll predicate until it returns a truthy value or the deadline passes."""
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {message}; last={last!r}")
