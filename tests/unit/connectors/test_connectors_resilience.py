"""Rate limit, backoff with jitter, circuit breaker and the durable cursor store."""

from __future__ import annotations

import random
import time
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from connectors.sources.circuit_breaker import CircuitBreaker, CircuitOpenError
from connectors.sources.cursor_store import CursorStore
from connectors.sources.rate_limit import TokenBucket
from connectors.sources.retry import Backoff


async def test_the_token_bucket_holds_the_rate_after_the_burst() -> None:
    bucket = TokenBucket(rate=20, burst=2)
    started = time.monotonic()
    for _ in range(8):
        await bucket.acquire()
    # 2 from the burst, 6 more at 20/s: at least 0.3 s.
    assert time.monotonic() - started >= 0.28


def test_backoff_is_jittered_exponential_capped_and_honours_retry_after() -> None:
    backoff = Backoff(base_s=0.5, cap_s=4, max_attempts=6)
    rng = random.Random(1)
    for attempt in range(1, 8):
        ceiling = min(4, 0.5 * 2 ** (attempt - 1))
        delays = [backoff.delay(attempt, rng=rng) for _ in range(200)]
        assert all(0 <= d <= ceiling for d in delays)
        assert max(delays) > ceiling * 0.8  # spread over the whole range, not fixed
    assert backoff.delay(1, retry_after=3, rng=rng) >= 3
    assert backoff.delay(1, retry_after=100, rng=rng) <= 4


def test_the_breaker_opens_after_repeated_failures_and_probes_after_the_timeout() -> None:
    now = [0.0]
    breaker = CircuitBreaker("unit-breaker", failure_threshold=3, reset_timeout_s=10,
                             clock=lambda: now[0])
    opened = REGISTRY.get_sample_value("stockflow_connector_circuit_opened_total",
                                       {"supplier": "unit-breaker"}) or 0
    for _ in range(3):
        breaker.before_call()
        breaker.record_failure()
    assert breaker.state == "open"
    assert REGISTRY.get_sample_value("stockflow_connector_circuit_state",
                                     {"supplier": "unit-breaker"}) == 2
    assert REGISTRY.get_sample_value("stockflow_connector_circuit_opened_total",
                                     {"supplier": "unit-breaker"}) == opened + 1
    with pytest.raises(CircuitOpenError):
        breaker.before_call()
    now[0] = 10.5
    breaker.before_call()
    assert breaker.state == "half_open"
    breaker.record_failure()  # the probe failed: open again, for another timeout
    assert breaker.state == "open"
    with pytest.raises(CircuitOpenError):
        breaker.before_call()
    now[0] = 21
    breaker.before_call()
    breaker.record_success()
    assert breaker.state == "closed" and breaker.failures == 0


def test_the_cursor_store_survives_reopening_and_commits_atomically(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite"
    store = CursorStore(path)
    store.commit("ftp:x", cursor={"last": ["a", 1]}, upserts={"A": {"quantity": 1},
                                                              "B": {"quantity": 2}})
    store.close()
    reopened = CursorStore(path)
    assert reopened.get_cursor("ftp:x") == {"last": ["a", 1]}
    assert reopened.snapshot("ftp:x") == {"A": {"quantity": 1}, "B": {"quantity": 2}}

    class Unserialisable:
        pass

    with pytest.raises(TypeError):
        reopened.commit("ftp:x", cursor={"last": ["b", 2]},
                        upserts={"A": {"quantity": 5}, "C": {"bad": Unserialisable()}})
    # Nothing of the failed commit is visible: not the cursor, not the first upsert.
    assert reopened.get_cursor("ftp:x") == {"last": ["a", 1]}
    assert reopened.snapshot("ftp:x")["A"] == {"quantity": 1}
    assert reopened.get_cursor("rest:other") is None
