"""Cassandra sink logic without Cassandra: coalescing, buckets, backoff, errors, the window."""

from __future__ import annotations

import asyncio
import random
import threading
import zlib
from typing import Any

import pytest
from cassandra import InvalidRequest, OperationTimedOut, WriteTimeout
from cassandra.cluster import NoHostAvailable

from connectors.cassandra_cluster import CassandraError, check_keyspace_name
from connectors.cassandra_schema import check_replication
from connectors.cassandra_sink import (
    CassandraSink,
    _OutageLog,
    backoff_delay,
    check_update,
    coalesce,
    insert_cql,
    is_retryable,
    stock_bucket,
)
from pipeline.errors import SinkError


def update(supplier: str = "s1", sku: str = "k1", version: int = 1, quantity: int = 5,
           platform_sku: str | None = None, **extra: Any) -> dict[str, Any]:
    base = {
        "platform_sku": f"P-{sku}" if platform_sku is None else platform_sku,
        "supplier_id": supplier, "sku": sku,
        "quantity_before": 0, "quantity_after": quantity, "version": version,
        "status": "ACTIVE", "cause": "SNAPSHOT", "event_id": f"{supplier}:{sku}:{version}",
        "observed_at": 1_700_000_000_000, "received_at": 1_700_000_000_000,
        "produced_at": 1_700_000_000_000, "price": None, "currency": None,
        "lead_time_days": None, "clamped": False, "suspect": False,
    }
    base.update(extra)
    return base


def test_coalesce_keeps_highest_version_per_key_whatever_the_order() -> None:
    updates = [update(version=3, quantity=30), update(version=7, quantity=70),
               update(version=5, quantity=50), update(sku="k2", version=1, quantity=1)]
    latest = coalesce(updates, lambda u: (u["supplier_id"], u["sku"]))
    assert [(u["sku"], u["version"], u["quantity_after"]) for u in latest] == [
        ("k1", 7, 70), ("k2", 1, 1)]


def test_coalesce_later_duplicate_wins_a_tie() -> None:
    first, replay = update(version=4, event_id="a"), update(version=4, event_id="b")
    assert coalesce([first, replay], lambda u: (u["sku"],)) == [replay]


def test_stock_bucket_is_crc32_of_utf8_and_in_range() -> None:
    for sku in ("k1", "ünïcødé-🚀", "x" * 128, "'; DROP TABLE x; --"):
        assert stock_bucket(sku, 64) == zlib.crc32(sku.encode()) % 64
        assert 0 <= stock_bucket(sku, 7) < 7
    # Known value: a bucket must never change between releases or processes.
    assert stock_bucket("SKU-1", 64) == 52
    assert stock_bucket("ü", 64) == 21


def test_insert_cql_binds_every_value() -> None:
    cql = insert_cql("stockflow", "availability_by_sku", ("platform_sku", "quantity"))
    assert cql == ("INSERT INTO stockflow.availability_by_sku (platform_sku, quantity) "
                   "VALUES (?, ?) USING TIMESTAMP ?")


@pytest.mark.parametrize("name", ["", "1abc", "a-b", "a;b", "a" * 49, "ks\"x"])
def test_keyspace_names_outside_the_identifier_rule_are_rejected(name: str) -> None:
    with pytest.raises(CassandraError):
        check_keyspace_name(name)


def test_replication_must_be_a_map() -> None:
    assert check_replication(" {'class': 'SimpleStrategy', 'replication_factor': 1} ")
    for bad in ("SimpleStrategy", "{'class': 'x'}; DROP KEYSPACE y", "{'a': 1} -- x"):
        with pytest.raises(CassandraError):
            check_replication(bad)


@pytest.mark.parametrize("field,value", [("platform_sku", ""), ("supplier_id", None),
                                         ("sku", 5), ("version", "7"), ("version", True)])
def test_updates_that_cannot_key_a_row_are_rejected(field: str, value: Any) -> None:
    with pytest.raises(SinkError):
        check_update(update(**{field: value}))


def test_backoff_grows_exponentially_with_jitter_and_is_capped() -> None:
    rng = random.Random(7)
    for attempt in range(12):
        ceiling = min(2.0, 0.05 * 2 ** attempt)
        for _ in range(50):
            assert ceiling / 2 <= backoff_delay(attempt, 0.05, 2.0, rng) <= ceiling
    assert backoff_delay(10_000, 0.05, 2.0, rng) <= 2.0


def test_transient_errors_are_retryable_and_bad_requests_are_not() -> None:
    assert is_retryable(NoHostAvailable("down", {}))
    assert is_retryable(OperationTimedOut("slow"))
    assert is_retryable(WriteTimeout("timeout", write_type=0))
    assert not is_retryable(InvalidRequest("bad"))
    assert not is_retryable(TypeError("not an int"))


def test_outage_log_logs_first_failure_then_once_per_interval() -> None:
    now = [0.0]
    outage = _OutageLog(10.0, clock=lambda: now[0])
    logged = []
    for t in (0.0, 1.0, 5.0, 10.5, 12.0, 21.0):
        now[0] = t
        logged.append(outage.failed(OperationTimedOut("x"), pending=3, attempt=1, delay_s=0.1))
    assert logged == [True, False, False, True, False, True]
    assert outage.succeeded() is True
    assert outage.succeeded() is False


# --- the in-flight window against a fake driver session ------------------------------------


class FakeFuture:
    """Completes from another thread, like the driver's ResponseFuture."""

    def __init__(self, session: FakeSession, params: tuple[Any, ...]) -> None:
        self.session, self.params = session, params

    def add_callbacks(self, callback: Any, errback: Any, callback_args: tuple[Any, ...] = (),
                      errback_args: tuple[Any, ...] = ()) -> None:
        def complete() -> None:
            exc = self.session.outcome(self.params)
            with self.session.lock:
                self.session.in_flight -= 1
            if exc is None:
                self.session.written.append(self.params)
                callback(None, *callback_args)
            else:
                errback(exc, *errback_args)

        threading.Timer(self.session.rng.uniform(0, 0.002), complete).start()


class FakeSession:
    def __init__(self, fail: Any = None) -> None:
        self.lock = threading.Lock()
        self.in_flight = 0
        self.max_in_flight = 0
        self.calls = 0
        self.written: list[tuple[Any, ...]] = []
        self.rng = random.Random(1)
        self._fail = fail

    def outcome(self, params: tuple[Any, ...]) -> BaseException | None:
        return self._fail(self.calls, params) if self._fail else None

    def execute_async(self, statement: Any, params: tuple[Any, ...], timeout: float) -> FakeFuture:
        with self.lock:
            self.calls += 1
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        return FakeFuture(self, params)


def fake_sink(session: FakeSession, max_in_flight: int) -> CassandraSink:
    sink = CassandraSink(keyspace="ks", max_in_flight=max_in_flight, retry_base_delay_s=0.001,
                         max_retry_delay_s=0.01)
    sink._session = session
    sink._insert_availability = "availability"
    sink._insert_stock = "stock"
    sink._insert_history = "history"
    sink._buckets = 16
    return sink


async def test_window_never_exceeds_max_in_flight_and_writes_every_row() -> None:
    session = FakeSession()
    sink = fake_sink(session, max_in_flight=8)
    updates = [update(sku=f"k{i}", version=i + 1) for i in range(100)]
    assert await sink.write_batch(updates) == 300
    assert session.max_in_flight <= 8
    assert session.max_in_flight >= 2  # requests really overlapped
    assert len(session.written) == 300


async def test_transient_errors_are_retried_until_every_row_is_written() -> None:
    def fail(call: int, _params: Any) -> BaseException | None:
        # The first 150 requests fail as during an outage, then the node is back.
        return NoHostAvailable("down", {}) if call <= 150 else None

    session = FakeSession(fail)
    sink = fake_sink(session, max_in_flight=16)
    updates = [update(sku=f"k{i}", version=1) for i in range(40)]
    assert await sink.write_batch(updates) == 120
    assert sorted(map(repr, session.written)) == sorted(
        repr(params) for _stmt, params in sink.statements_for(updates))
    assert sink.stats.retries > 0
    assert sink.stats.outages == 1


async def test_a_request_cassandra_can_never_accept_raises_sink_error() -> None:
    session = FakeSession(lambda _call, _params: InvalidRequest("Key length too long"))
    sink = fake_sink(session, max_in_flight=4)
    with pytest.raises(SinkError) as info:
        await asyncio.wait_for(sink.write_batch([update()]), timeout=5)
    assert isinstance(info.value.__cause__, InvalidRequest)


async def test_an_encoding_error_raised_by_execute_async_is_fatal() -> None:
    session = FakeSession()

    def raise_type_error(*_args: Any, **_kwargs: Any) -> None:
        raise TypeError("received an invalid type")

    session.execute_async = raise_type_error  # type: ignore[assignment]
    sink = fake_sink(session, max_in_flight=4)
    with pytest.raises(SinkError):
        await asyncio.wait_for(sink.write_batch([update()]), timeout=5)


class InlineSession(FakeSession):
    """Every future is complete before add_callbacks: callbacks run inline, in this thread."""

    def execute_async(self, statement: Any, params: tuple[Any, ...], timeout: float) -> Any:
        session = self

        class Done:
            def add_callbacks(self, callback: Any, errback: Any,
                              callback_args: tuple[Any, ...] = (),
                              errback_args: tuple[Any, ...] = ()) -> None:
                session.written.append(params)
                callback(None, *callback_args)

        return Done()


async def test_inline_completions_neither_overrun_the_batch_nor_recurse_without_bound() -> None:
    session = InlineSession()
    sink = fake_sink(session, max_in_flight=64)
    updates = [update(sku=f"k{i}", version=1) for i in range(3000)]  # 9000 rows, all inline
    assert await sink.write_batch(updates) == 9000
    assert len(session.written) == 9000
