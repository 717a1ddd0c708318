"""Cassandra sink logic without Cassandra: coalescing, buckets, backoff, errors, the window."""

from __future__ import annotations

import ast
import asyncio
import random
import threading
import zlib
from typing import Any

import pytest
from cassandra import InvalidRequest, OperationTimedOut, WriteTimeout
from cassandra.cluster import NoHostAvailable
from cassandra.cqltypes import BooleanType, DateType, Int32Type, LongType, UTF8Type
from cassandra.protocol import ColumnMetadata
from cassandra.query import BatchStatement, BatchType, BoundStatement, PreparedStatement
from hypothesis import given, settings
from hypothesis import strategies as st

from connectors.cassandra.cluster import CassandraError, check_keyspace_name
from connectors.cassandra.schema import check_replication
from connectors.cassandra.sink import (
    _AVAILABILITY_COLUMNS,
    _HISTORY_COLUMNS,
    _STOCK_COLUMNS,
    CassandraSink,
    PreparedInsert,
    RowBatch,
    _OutageLog,
    backoff_delay,
    check_update,
    coalesce,
    group_by_partition,
    group_by_replica,
    insert_cql,
    is_retryable,
    routing_key,
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


# --- grouping per partition ----------------------------------------------------------------


def test_group_by_partition_never_mixes_partitions_and_respects_the_cap() -> None:
    rows = [("a", 1, "x"), ("b", 1, "y"), ("a", 1, "z"), ("a", 2, "w"), ("a", 1, "v")]
    assert group_by_partition(rows, 2, 2) == [
        [("a", 1, "x"), ("a", 1, "z")], [("a", 1, "v")], [("b", 1, "y")], [("a", 2, "w")]]
    assert group_by_partition(rows, 1, 50) == [
        [("a", 1, "x"), ("a", 1, "z"), ("a", 2, "w"), ("a", 1, "v")], [("b", 1, "y")]]
    with pytest.raises(ValueError):
        group_by_partition(rows, 1, 0)


@settings(max_examples=200, deadline=None)
@given(rows=st.lists(st.tuples(st.sampled_from("abc"), st.integers(0, 2), st.integers()),
                     max_size=120),
       key_columns=st.integers(1, 2), cap=st.integers(1, 7))
def test_group_by_partition_keeps_every_row_once_in_a_chunk_of_its_own_partition(
        rows: list[tuple[str, int, int]], key_columns: int, cap: int) -> None:
    chunks = group_by_partition(rows, key_columns, cap)
    assert sorted(row for chunk in chunks for row in chunk) == sorted(rows)
    for chunk in chunks:
        assert 1 <= len(chunk) <= cap
        assert len({row[:key_columns] for row in chunk}) == 1
    # A partition is split only where the cap forces it.
    for key in {row[:key_columns] for row in rows}:
        count = sum(row[:key_columns] == key for row in rows)
        assert sum(chunk[0][:key_columns] == key for chunk in chunks) == -(-count // cap)


# --- binding: the same bytes and routing key as the driver's own bind -----------------------


def prepared_statement(table: str, columns: tuple[str, ...], types: list[Any],
                       partition: int) -> PreparedStatement:
    meta = [ColumnMetadata("ks", table, name, kind)
            for name, kind in zip((*columns, "[timestamp]"), types, strict=True)]
    return PreparedStatement(meta, f"id-{table}".encode(), list(range(partition)),
                             f"INSERT INTO ks.{table}", "ks", 5, [], None)


T, I32, I64, B, TS = UTF8Type, Int32Type, LongType, BooleanType, DateType
TABLE_TYPES = {
    "availability_by_sku": [T, T, T, I64, I64, T, I32, T, T, TS, I64],
    "stock_by_supplier": [T, I32, T, T, I64, I64, T, I32, T, T, TS, I64],
    "change_history": [T, T, I64, T, I64, I64, T, T, T, TS, TS, TS, T, T, I32, B, B, I64],
}


class PreparingSession:
    """Prepares statements locally with the column types of the real tables."""

    def prepare(self, cql: str) -> PreparedStatement:
        for table, columns, partition in (
                ("availability_by_sku", _AVAILABILITY_COLUMNS, 1),
                ("stock_by_supplier", _STOCK_COLUMNS, 2),
                ("change_history", _HISTORY_COLUMNS, 2)):
            if f"ks.{table} " in cql:
                return prepared_statement(table, columns, TABLE_TYPES[table], partition)
        raise AssertionError(cql)


def real_inserts() -> dict[str, PreparedInsert]:
    session: Any = PreparingSession()
    return {table: PreparedInsert.prepare(session, "ks", table, columns, partition)
            for table, columns, partition in (
                ("availability_by_sku", _AVAILABILITY_COLUMNS, 1),
                ("stock_by_supplier", _STOCK_COLUMNS, 2),
                ("change_history", _HISTORY_COLUMNS, 2))}


def test_batches_bind_the_same_bytes_and_routing_key_as_the_driver() -> None:
    sink = CassandraSink(keyspace="ks", batch_rows=3, batch_scope="partition")
    inserts = real_inserts()
    sink._insert_availability = inserts["availability_by_sku"]
    sink._insert_stock = inserts["stock_by_supplier"]
    sink._insert_history = inserts["change_history"]
    sink._buckets = 4
    updates = [update(supplier=f"s{i % 2}", sku=f"ü-{i}", version=1_760_000_000_000_000 + i,
                      platform_sku=f"P{i % 3}", price="1.50" if i % 2 else None,
                      lead_time_days=i % 4 or None, suspect=bool(i % 5))
               for i in range(40)]
    requests = sink.requests_for(updates)
    assert sum(map(len, requests)) == 6 + 40 + 40  # 6 availability keys
    for request in requests:
        (insert,) = {row_insert for row_insert, _values in request.rows}  # one table
        rows = [values for _insert, values in request.rows]
        statement = request.statement()
        if len(rows) == 1:  # a row alone goes as itself
            assert isinstance(statement, BoundStatement)
            assert statement.values == rows[0] and statement.keyspace == "ks"
            assert statement.is_idempotent
            continue
        assert statement.batch_type == BatchType.UNLOGGED and statement.is_idempotent
        assert len(statement) == len(rows) <= 3
        sent = [values for _prepared, _id, values in statement._statements_and_parameters]
        assert {_id for _prepared, _id, _values in statement._statements_and_parameters} == {
            insert.query_id}
        # One partition per batch: every row has the batch's routing key.
        keys = {routing_key(values, insert.partition_columns) for values in sent}
        assert keys == {statement.routing_key}
        assert statement.keyspace == "ks"
    # The bytes are the driver's own bind of the same rows, in the same order.
    expected = [insert.statement.bind(params) for insert, table in zip(
        sink._inserts(), sink.rows_for(updates), strict=True) for params in table]
    got = [values for request in requests for _insert, values in request.rows]
    assert sorted(map(repr, got)) == sorted(repr(b.values) for b in expected)
    alone = [r.statement() for r in requests if len(r) == 1]
    assert alone and all(s.routing_key == next(
        b.routing_key for b in expected if b.values == s.values) for s in alone)


def test_the_compiled_bind_gives_the_drivers_bytes_for_every_value_the_sink_writes() -> None:
    insert = real_inserts()["change_history"]
    # Text, bigint, timestamp, int and boolean columns take the straight-line path...
    assert insert._fast_bind.__code__.co_filename == "<sink bind>"
    rows = [
        ("s", "ü-1", 2**63 - 1, "P", -(2**63), 0, "ACTIVE", "SNAPSHOT", "e", 0, -1, 2**40,
         "1.50", "EUR", -(2**31), True, False, 1_760_000_000_000_000),
        ("s", "k", 1, "P", 0, 5, "DISCONTINUED", "ADJUSTMENT", "e", 1, 2, 3, None, None, None,
         False, True, 0),
        # ...and what it does not take (a bool in a bigint column, a numpy-like int) goes to
        # the column's own serializer, with the same bytes as the driver's bind.
        ("s", "k", True, "P", 0, 5, "ACTIVE", "SNAPSHOT", "e", 1, 2, 3, None, None, 7, 1, 0, 9),
    ]
    for params in rows:
        expected = insert.statement.bind(params).values
        assert insert._fast_bind(params) == expected  # no fallback needed
        assert insert.bind(params) == expected


def test_a_value_the_column_type_cannot_take_is_a_type_error_naming_the_column() -> None:
    insert = real_inserts()["availability_by_sku"]
    params = ("P", "s", "k", "many", 1, "ACTIVE", None, None, None, 0, 1)
    with pytest.raises(TypeError, match="quantity"):
        insert.bind(params)
    with pytest.raises(TypeError):
        insert.bind(params[:-1])  # a missing value never shifts the others


def test_a_statement_whose_partition_key_is_not_leading_is_refused() -> None:
    class Session:
        def prepare(self, _cql: str) -> PreparedStatement:
            statement = prepared_statement("stock_by_supplier", _STOCK_COLUMNS,
                                           TABLE_TYPES["stock_by_supplier"], 2)
            statement.routing_key_indexes = [0, 2]
            return statement

    with pytest.raises(SinkError, match="partition key"):
        PreparedInsert.prepare(Session(), "ks", "stock_by_supplier",
                               _STOCK_COLUMNS, 2)


# --- the in-flight window against a fake driver session ------------------------------------


class FakeFuture:
    """Completes from another thread, like the driver's ResponseFuture."""

    def __init__(self, session: FakeSession, rows: list[tuple[bytes, tuple[Any, ...]]]) -> None:
        self.session, self.rows = session, rows

    def add_callbacks(self, callback: Any, errback: Any, callback_args: tuple[Any, ...] = (),
                      errback_args: tuple[Any, ...] = ()) -> None:
        def complete() -> None:
            exc = self.session.outcome(self.rows)
            if exc is HANG:
                return  # never answers (lost by the network, a stuck coordinator)
            with self.session.lock:
                self.session.in_flight -= 1
            if exc is None:
                self.session.written.extend(self.rows)
                callback(None, *callback_args)
            else:
                errback(exc, *errback_args)

        threading.Timer(self.session.rng.uniform(0, 0.002), complete).start()


HANG = TimeoutError("never answered")


def sent_rows(request: BoundStatement | BatchStatement) -> list[tuple[bytes, tuple[Any, ...]]]:
    """(query id, values) of each row of a request the sink sent."""
    if isinstance(request, BoundStatement):
        return [(request.prepared_statement.query_id, decoded(request.values))]
    assert request.batch_type == BatchType.UNLOGGED and len(request) > 1
    return [(query_id, decoded(values))
            for _prepared, query_id, values in request._statements_and_parameters]


class FakeSession:
    def __init__(self, fail: Any = None) -> None:
        self.lock = threading.Lock()
        self.in_flight = 0
        self.max_in_flight = 0
        self.calls = 0
        self.timeouts: set[Any] = set()
        self.written: list[tuple[bytes, tuple[Any, ...]]] = []
        self.requests: list[list[tuple[bytes, tuple[Any, ...]]]] = []
        self.rng = random.Random(1)
        self._fail = fail

    def outcome(self, rows: list[tuple[bytes, tuple[Any, ...]]]) -> BaseException | None:
        return self._fail(self.calls, rows) if self._fail else None

    def execute_async(self, request: Any, timeout: Any = "default") -> FakeFuture:
        rows = sent_rows(request)
        with self.lock:
            self.calls += 1
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            self.timeouts.add(timeout)
            self.requests.append(rows)
        return FakeFuture(self, rows)


def fake_insert(name: str, columns: tuple[str, ...], partition: int) -> PreparedInsert:
    # Values serialized as their repr: the fake session reads them back as given.
    statement = prepared_statement(name, columns, [UTF8Type] * (len(columns) + 1), partition)
    return PreparedInsert(statement, partition, keyspace="ks", query_id=statement.query_id,
                          serializers=[lambda value, _version: repr(value).encode()]
                          * (len(columns) + 1),
                          protocol_version=5)


def decoded(values: list[bytes | None]) -> tuple[Any, ...]:
    return tuple(None if v is None else ast.literal_eval(v.decode()) for v in values)


def fake_sink(session: FakeSession, max_in_flight: int, **kwargs: Any) -> CassandraSink:
    kwargs = {"retry_base_delay_s": 0.001, "max_retry_delay_s": 0.01, **kwargs}
    sink = CassandraSink(keyspace="ks", max_in_flight=max_in_flight, **kwargs)
    sink._session = session
    sink._insert_availability = fake_insert("availability", _AVAILABILITY_COLUMNS, 1)
    sink._insert_stock = fake_insert("stock", _STOCK_COLUMNS, 2)
    sink._insert_history = fake_insert("history", _HISTORY_COLUMNS, 2)
    sink._buckets = 16
    return sink


def expected_rows(sink: CassandraSink, updates: list[dict[str, Any]]) -> list[str]:
    return sorted(repr((stmt.query_id, params))
                  for stmt, params in sink.statements_for(updates))


PARTITION_COLUMNS = {b"id-availability": 1, b"id-stock": 2, b"id-history": 2}


async def test_rows_go_out_as_one_batch_per_partition_chunk_never_mixing_partitions() -> None:
    session = FakeSession()
    sink = fake_sink(session, max_in_flight=8, batch_rows=7, batch_scope="partition")
    # Three suppliers' bursts: many SKUs per (supplier, bucket) and several suppliers per
    # platform SKU, a few keys with several versions (history rows of one partition).
    updates = [update(supplier=f"s{i % 3}", sku=f"k{i % 150}", version=1 + i // 150,
                      platform_sku=f"P{i % 150 % 40}") for i in range(600)]
    rows = await sink.write_batch(updates)
    assert rows == len(sink.statements_for(updates))
    assert sorted(map(repr, session.written)) == expected_rows(sink, updates)
    sizes = []
    for request in session.requests:
        (table,) = {query_id for query_id, _values in request}
        keys = {values[:PARTITION_COLUMNS[table]] for _query_id, values in request}
        assert len(keys) == 1, f"a {table!r} batch mixes partitions: {keys}"
        assert 1 <= len(request) <= 7
        sizes.append(len(request))
    assert max(sizes) == 7  # partitions with more rows than the cap were split
    assert sink.stats.requests == len(session.requests) < rows / 3
    assert session.timeouts == {None}  # no per-request driver timer


async def test_window_never_exceeds_max_in_flight_and_writes_every_row() -> None:
    session = FakeSession()
    sink = fake_sink(session, max_in_flight=8)
    updates = [update(sku=f"k{i}", version=i + 1) for i in range(100)]
    assert await sink.write_batch(updates) == 300
    assert session.max_in_flight <= 8
    assert session.max_in_flight >= 2  # requests really overlapped
    assert len(session.written) == 300


async def test_transient_errors_are_retried_until_every_row_is_written() -> None:
    def fail(call: int, _rows: Any) -> BaseException | None:
        # The first 150 requests fail as during an outage, then the node is back.
        return NoHostAvailable("down", {}) if call <= 150 else None

    session = FakeSession(fail)
    sink = fake_sink(session, max_in_flight=16)
    updates = [update(sku=f"k{i}", version=1) for i in range(40)]
    assert await sink.write_batch(updates) == 120
    assert sorted(map(repr, session.written)) == expected_rows(sink, updates)
    assert sink.stats.retries > 0
    assert sink.stats.outages == 1


async def test_a_failed_batch_is_retried_whole() -> None:
    failed: list[list[Any]] = []

    def fail(call: int, rows: Any) -> BaseException | None:
        if call <= 3 and len(rows) > 1:
            failed.append(rows)
            return WriteTimeout("timeout", write_type=0)
        return None

    session = FakeSession(fail)
    sink = fake_sink(session, max_in_flight=2, batch_rows=10)
    updates = [update(supplier="s1", sku=f"k{i}", version=1, platform_sku="P") for i in range(30)]
    await sink.write_batch(updates)
    # Each failed request's rows went out again, together, in a later request.
    assert failed and all(rows in session.requests[session.requests.index(rows) + 1:]
                          for rows in failed)
    assert sorted(map(repr, session.written)) == expected_rows(sink, updates)


async def test_requests_that_never_answer_time_out_on_the_watchdog_and_are_retried() -> None:
    hung: set[int] = set()

    def fail(call: int, _rows: Any) -> BaseException | None:
        if call in (2, 5) and call not in hung:
            hung.add(call)
            return HANG
        return None

    session = FakeSession(fail)
    sink = fake_sink(session, max_in_flight=4, request_timeout_s=0.3, batch_rows=3)
    updates = [update(sku=f"k{i}", version=1) for i in range(10)]
    started = asyncio.get_running_loop().time()
    assert await asyncio.wait_for(sink.write_batch(updates), timeout=10) == 30
    assert asyncio.get_running_loop().time() - started >= 0.3
    assert sorted(map(repr, session.written)) == expected_rows(sink, updates)
    assert sink.stats.retries >= 1


async def test_a_request_cassandra_can_never_accept_raises_sink_error() -> None:
    session = FakeSession(lambda _call, _rows: InvalidRequest("Key length too long"))
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

    def execute_async(self, request: Any, timeout: Any = "default") -> Any:
        session = self
        rows = sent_rows(request)

        class Done:
            def add_callbacks(self, callback: Any, errback: Any,
                              callback_args: tuple[Any, ...] = (),
                              errback_args: tuple[Any, ...] = ()) -> None:
                session.written.extend(rows)
                callback(None, *callback_args)

        return Done()


async def test_inline_completions_neither_overrun_the_batch_nor_recurse_without_bound() -> None:
    session = InlineSession()
    sink = fake_sink(session, max_in_flight=64)
    updates = [update(sku=f"k{i}", version=1) for i in range(3000)]  # 9000 rows, all inline
    assert await sink.write_batch(updates) == 9000
    assert len(session.written) == 9000


def _sink_with_real_inserts(**kwargs: Any) -> CassandraSink:
    sink = CassandraSink(keyspace="ks", **kwargs)
    inserts = real_inserts()
    sink._insert_availability = inserts["availability_by_sku"]
    sink._insert_stock = inserts["stock_by_supplier"]
    sink._insert_history = inserts["change_history"]
    sink._buckets = 4
    return sink


def _many_updates(n: int) -> list[dict[str, Any]]:
    return [update(supplier=f"s{i % 3}", sku=f"ü-{i}", version=1_760_000_000_000_000 + i,
                   platform_sku=f"P{i % 7}", price="1.50" if i % 2 else None,
                   currency="EUR" if i % 2 else None, lead_time_days=i % 4 or None)
            for i in range(n)]


def test_routing_key_is_the_drivers_for_single_and_composite_partition_keys() -> None:
    sink = _sink_with_real_inserts(batch_scope="partition")
    for insert, rows in zip(sink._inserts(), sink.rows_for(_many_updates(3)), strict=True):
        for params in rows:
            expected = insert.statement.bind(params).routing_key
            assert routing_key(insert.bind(params), insert.partition_columns) == expected


def test_a_single_node_sends_rows_of_every_table_in_few_batches_binding_the_drivers_bytes(
) -> None:
    sink = _sink_with_real_inserts(batch_rows=50)
    updates = _many_updates(120)
    requests = sink.requests_for(updates)
    assert all(isinstance(r, RowBatch) for r in requests)
    # 21 (platform SKU, supplier) keys + 120 stock + 120 history rows: 261 rows in 8
    # requests (MIN_REQUESTS_PER_WRITE, so 33 rows each, under the cap of 50), where
    # partition batches took one request per partition (~260).
    assert [len(r) for r in requests] == [33] * 7 + [30]
    expected = sorted((insert.query_id, tuple(insert.statement.bind(params).values))
                      for insert, rows in zip(sink._inserts(), sink.rows_for(updates),
                                              strict=True) for params in rows)
    sent = []
    for request in requests:
        statement = request.statement()
        assert isinstance(statement, BatchStatement)
        assert statement.batch_type == BatchType.UNLOGGED and statement.is_idempotent
        assert statement.keyspace == "ks" and statement.routing_key
        sent.extend((query_id, tuple(values))
                    for _p, query_id, values in statement._statements_and_parameters)
    assert sorted(sent) == expected  # every row once, the bytes the driver would bind
    assert len({query_id for query_id, _values in sent}) == 3  # tables mixed in batches


def test_a_lone_row_goes_as_itself() -> None:
    sink = _sink_with_real_inserts(batch_rows=1)
    updates = _many_updates(1)
    expected = [insert.statement.bind(params) for insert, rows in zip(
        sink._inserts(), sink.rows_for(updates), strict=True) for params in rows]
    statements = [request.statement() for request in sink.requests_for(updates)]
    assert all(isinstance(s, BoundStatement) for s in statements)
    assert [(s.values, s.routing_key, s.keyspace) for s in statements] == [
        (b.values, b.routing_key, "ks") for b in expected]


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 200), cap=st.integers(1, 60), nodes=st.integers(1, 4),
       max_bytes=st.sampled_from([600, 4096, 32 * 1024]))
def test_replica_batches_hold_one_replica_set_within_the_caps_and_every_row_once(
        n: int, cap: int, nodes: int, max_bytes: int) -> None:
    sink = _sink_with_real_inserts(batch_rows=cap)
    inserts = sink._inserts()
    rows = [(insert, params) for insert, table in zip(inserts, sink.rows_for(
        _many_updates(n)), strict=True) for params in table]

    def replicas_of(insert: PreparedInsert, values: list[bytes | None]) -> int:
        return zlib.crc32(routing_key(values, insert.partition_columns)) % nodes

    batches = group_by_replica(rows, replicas_of, cap, max_bytes)
    seen = []
    for batch in batches:
        assert 1 <= len(batch) <= cap
        assert len({replicas_of(i, v) for i, v in batch.rows}) == 1
        assert len(batch) == 1 or batch.nbytes <= max_bytes
        seen.extend((i.query_id, tuple(v)) for i, v in batch.rows)
    assert sorted(seen) == sorted((i.query_id, tuple(i.bind(p))) for i, p in rows)


async def test_replica_batches_are_written_and_retried_whole() -> None:
    def fail(call: int, rows: Any) -> BaseException | None:
        return WriteTimeout("timed out", write_type=0) if call % 3 == 0 else None

    session = FakeSession(fail)
    sink = fake_sink(session, max_in_flight=4, batch_rows=20)
    updates = [update(supplier=f"s{i % 3}", sku=f"k{i}", platform_sku=f"P{i % 9}")
               for i in range(150)]
    rows = await sink.write_batch(updates)
    assert rows == len(sink.statements_for(updates))
    assert sorted(map(repr, session.written)) == expected_rows(sink, updates)
    assert sink.stats.requests == -(-rows // 20)


def test_cassandra_batch_warnings_are_counted_once_logged_and_other_warnings_kept(
        caplog: pytest.LogCaptureFixture) -> None:
    import logging

    from connectors.cassandra.cluster import ClusterConfig, build_cluster
    from pipeline.metrics import CASSANDRA_BATCH_WARNINGS

    build_cluster(ClusterConfig()).shutdown()  # installs the filter (no connection made)
    driver = logging.getLogger("cassandra.protocol")
    before = CASSANDRA_BATCH_WARNINGS._value.get()
    with caplog.at_level(logging.WARNING, logger="cassandra.protocol"):
        for size in (11853, 20299):
            driver.warning("Server warning: %s", f"Batch for [ks.change_history] is of size "
                           f"{size}, exceeding specified threshold of 5120 by {size - 5120}.")
        driver.warning("Server warning: %s", "Unlogged batch covering 17 partitions detected")
        driver.warning("Server warning: %s", "Aggregation query used without partition key")
    assert CASSANDRA_BATCH_WARNINGS._value.get() - before == 3
    assert [r.getMessage() for r in caplog.records if r.name == "cassandra.protocol"] == [
        "Server warning: Aggregation query used without partition key"]


def test_timestamps_bind_like_the_driver_as_ints_datetimes_and_dates() -> None:
    import datetime as dt

    insert = real_inserts()["change_history"]
    base = list(next(iter(_sink_with_real_inserts(batch_scope="partition").rows_for(
        _many_updates(1))[2])))
    observed = _HISTORY_COLUMNS.index("observed_at")
    for value in (1_760_000_000_123, dt.datetime(2026, 12, 1, 8, 0, 1, 250_000),
                  dt.date(2026, 12, 1), 1_760_000_000_123.0):
        params = (*base[:observed], value, *base[observed + 1:])
        assert insert.bind(params) == insert.statement.bind(params).values, value
    with pytest.raises(TypeError, match="observed_at"):
        insert.bind((*base[:observed], "yesterday", *base[observed + 1:]))


def test_a_small_write_is_spread_over_several_requests_a_large_one_keeps_the_cap() -> None:
    from connectors.cassandra.sink import MIN_REQUESTS_PER_WRITE, rows_per_request

    assert rows_per_request(90, 50) == 12  # 8 requests of <= 12 rows, not 2 of 50
    assert rows_per_request(3, 50) == 8  # a tiny write is one request
    assert rows_per_request(40, 50) == 8  # not 8 requests of 5 rows
    assert rows_per_request(40, 4) == 4  # the cap still holds
    assert rows_per_request(1500, 50) == 50
    assert rows_per_request(400, 50) == 50
    sink = _sink_with_real_inserts(batch_rows=50)
    updates = _many_updates(30)  # 90 rows over the three tables
    requests = sink.requests_for(updates)
    assert len(requests) >= MIN_REQUESTS_PER_WRITE
    assert max(len(r) for r in requests) <= 12
    assert sum(len(r) for r in requests) == len(sink.statements_for(updates))
