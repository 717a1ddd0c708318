"""Cassandra sink: coalesced, idempotent (USING TIMESTAMP = version), bounded in-flight writes."""

from __future__ import annotations

import asyncio
import contextlib
import random
import struct
import threading
import time
import zlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from connectors.cassandra.cluster import ClusterConfig, build_cluster, check_keyspace_name
from pipeline import backoff
from pipeline.errors import SinkError
from pipeline.log import get_logger
from pipeline.metrics import SINK_ERRORS, SINK_RETRIES

if TYPE_CHECKING:
    from cassandra.cluster import Cluster, ResponseFuture, Session
    from cassandra.query import BatchStatement, BoundStatement, PreparedStatement

    from pipeline.settings import Settings

log = get_logger(__name__)

# One row to write: a prepared statement and its bound values (the last one is the write
# timestamp). Values are bound by the driver, never formatted into CQL.
Statement = tuple["PreparedStatement", tuple[Any, ...]]

DEFAULT_BATCH_ROWS = 50

_AVAILABILITY_COLUMNS = ("platform_sku", "supplier_id", "sku", "quantity", "version", "status",
                         "lead_time_days", "price", "currency", "updated_at")
_STOCK_COLUMNS = ("supplier_id", "bucket", "sku", "platform_sku", "quantity", "version",
                  "status", "lead_time_days", "price", "currency", "updated_at")
_HISTORY_COLUMNS = ("supplier_id", "sku", "version", "platform_sku", "quantity_before",
                    "quantity_after", "status", "cause", "event_id", "observed_at",
                    "received_at", "produced_at", "price", "currency", "lead_time_days",
                    "clamped", "suspect")
# How many leading columns of each INSERT form the table's partition key (checked against the
# prepared statement's routing key at start): rows are grouped into batches by these values.
_AVAILABILITY_PARTITION = 1  # (platform_sku)
_STOCK_PARTITION = 2  # (supplier_id, bucket)
_HISTORY_PARTITION = 2  # (supplier_id, sku)


def insert_cql(keyspace: str, table: str, columns: Sequence[str]) -> str:
    """INSERT with one bind marker per column and the write timestamp bound last."""
    return (f"INSERT INTO {check_keyspace_name(keyspace)}.{table} ({', '.join(columns)}) "
            f"VALUES ({', '.join('?' for _ in columns)}) USING TIMESTAMP ?")


def stock_bucket(sku: str, buckets: int) -> int:
    """The stock_by_supplier bucket of a SKU: CRC-32 of its UTF-8 bytes mod N (stable)."""
    return zlib.crc32(sku.encode("utf-8")) % buckets


def write_timestamp(update: Mapping[str, Any]) -> int:
    """The Cassandra write timestamp of an update: its version.

    Cassandra keeps, per cell, the value with the highest write timestamp, whatever order the
    writes arrive in. Versions increase strictly per (supplier, sku), so a replayed, retried or
    reordered older write can never overwrite a newer one, and a replay writes identical cells.
    """
    return int(update["version"])


def coalesce(updates: Iterable[Mapping[str, Any]],
             key: Callable[[Mapping[str, Any]], tuple[str, ...]]) -> list[Mapping[str, Any]]:
    """The update with the highest version per key, in first-seen key order (later wins ties)."""
    latest: dict[tuple[str, ...], Mapping[str, Any]] = {}
    for update in updates:
        k = key(update)
        current = latest.get(k)
        if current is None or update["version"] >= current["version"]:
            latest[k] = update
    return list(latest.values())


def _availability_key(u: Mapping[str, Any]) -> tuple[str, ...]:
    return (u["platform_sku"], u["supplier_id"])


def _stock_key(u: Mapping[str, Any]) -> tuple[str, ...]:
    return (u["supplier_id"], u["sku"])


def _history_key(u: Mapping[str, Any]) -> tuple[str, ...]:
    return (u["supplier_id"], u["sku"], str(u["version"]))


_KEY_FIELDS = ("platform_sku", "supplier_id", "sku")


def check_update(update: Mapping[str, Any]) -> None:
    """Reject an update the tables cannot key (validation upstream should make this unreachable)."""
    for name in _KEY_FIELDS:
        value = update.get(name)
        if not isinstance(value, str) or not value:
            raise SinkError(f"StockUpdate {name}={value!r} cannot key a Cassandra row "
                            f"(event_id={update.get('event_id')!r})")
    if not isinstance(update.get("version"), int) or isinstance(update.get("version"), bool):
        raise SinkError(f"StockUpdate version={update.get('version')!r} is not an integer "
                        f"(event_id={update.get('event_id')!r})")


def group_by_partition(rows: Iterable[tuple[Any, ...]], key_columns: int,
                       max_rows: int) -> list[list[tuple[Any, ...]]]:
    """Rows split into chunks of one partition each, at most `max_rows` rows per chunk.

    The partition of a row is its first `key_columns` values; chunks come in first-seen
    partition order. An unlogged batch is cheap only when it holds one partition: the
    coordinator then applies it as one mutation, where a batch across partitions makes it
    fan out and wait for every replica set.
    """
    if max_rows < 1:
        raise ValueError("max_rows must be >= 1")
    partitions: dict[tuple[Any, ...], list[tuple[Any, ...]]] = {}
    for params in rows:
        key = params[:key_columns]
        group = partitions.get(key)
        if group is None:
            partitions[key] = [params]
        else:
            group.append(params)
    chunks: list[list[tuple[Any, ...]]] = []
    for group in partitions.values():
        if len(group) <= max_rows:
            chunks.append(group)
        else:
            chunks.extend(group[i:i + max_rows] for i in range(0, len(group), max_rows))
    return chunks


Serializer = Callable[[Any, int], bytes]


_INT64 = struct.Struct(">q")


def _serializer(cqltype: Any) -> Serializer:
    """The column type's serializer, with a fast path where the driver's is slow for the
    values the sink writes (same bytes; anything else goes to the driver's)."""
    from cassandra.cqltypes import DateType

    generic: Serializer = cqltype.serialize
    if isinstance(cqltype, type) and issubclass(cqltype, DateType):
        pack = _INT64.pack

        def timestamp(value: Any, protocol_version: int) -> bytes:
            # DateType.serialize tries a datetime, then a date, before an int (two caught
            # AttributeErrors: 2.3 µs, against 0.1 µs here); the sink's are epoch-ms ints.
            if type(value) is int:
                return pack(value)
            return generic(value, protocol_version)

        return timestamp
    return generic


def _kind(cqltype: Any) -> str:
    """How `_compile_bind` serializes a column type: s text, q bigint or timestamp (the sink's
    epoch-ms ints), i int, b boolean, g the column's own serializer."""
    from cassandra.cqltypes import BooleanType, DateType, Int32Type, LongType, UTF8Type

    if not isinstance(cqltype, type):
        return "g"
    for base, kind in ((UTF8Type, "s"), (LongType, "q"), (DateType, "q"), (Int32Type, "i"),
                       (BooleanType, "b")):
        if issubclass(cqltype, base):
            return kind
    return "g"


_INT32 = struct.Struct(">i")


def _compile_bind(kinds: Sequence[str], serializers: Sequence[Serializer],
                  protocol_version: int) -> Callable[[Sequence[Any]], list[bytes | None]]:
    """`bind(params)` for one INSERT as straight-line code: the driver's bytes for the values
    the sink writes (str, int, bool, None), each column's own serializer for anything else.

    One call per row instead of one per value: a change_history row (18 values) binds in
    1.7 µs against 4.5 with a serializer call per value. The source is built from the
    column types alone, never from data."""
    names = [f"v{i}" for i in range(len(kinds))]
    lines = ["def bind(params):"]
    if names:
        lines.append(f"    {', '.join(names)}, = params")
    lines.append("    return [")
    for i, (kind, v) in enumerate(zip(kinds, names, strict=True)):
        generic = f"_g{i}({v}, _pv)"
        if kind == "s":
            fast = f"{v}.encode() if {v}.__class__ is str else {generic}"
        elif kind == "q":
            fast = f"_q({v}) if {v}.__class__ is int else {generic}"
        elif kind == "i":
            fast = f"_i({v}) if {v}.__class__ is int else {generic}"
        elif kind == "b":
            fast = f"(_T if {v} else _F) if {v}.__class__ is bool else {generic}"
        else:
            fast = generic
        lines.append(f"        None if {v} is None else ({fast}),")
    lines.append("    ]")
    env: dict[str, Any] = {"_q": _INT64.pack, "_i": _INT32.pack, "_T": b"\x01", "_F": b"\x00",
                           "_pv": protocol_version, "str": str, "int": int, "bool": bool,
                           "__builtins__": {}}
    env.update({f"_g{i}": serialize for i, serialize in enumerate(serializers)})
    exec(compile("\n".join(lines), "<sink bind>", "exec"), env)  # source: see the docstring
    bind: Callable[[Sequence[Any]], list[bytes | None]] = env["bind"]
    return bind


class PreparedInsert:
    """A prepared INSERT that binds rows straight to bytes (RowBatch sends them).

    `PreparedStatement.bind` costs ~16-23 µs a row here (a ColDesc tuple and an encryption
    policy lookup per value, routing-key checks); serializing with the column types the
    statement was prepared with, in code compiled per statement (`_compile_bind`), costs
    ~1.7 µs and gives the same bytes. Values are still bound, never formatted into CQL.
    """

    def __init__(self, statement: Any, partition_columns: int, *, keyspace: str, query_id: bytes,
                 serializers: Sequence[Serializer], protocol_version: int,
                 names: Sequence[str] = (), kinds: Sequence[str] | None = None) -> None:
        self.statement = statement
        self.partition_columns = partition_columns
        self.keyspace = keyspace
        self.query_id = query_id
        self._serializers = tuple(serializers)
        self._protocol_version = protocol_version
        self._names = tuple(names)  # column names, for error messages
        self._fast_bind = _compile_bind(kinds or ["g"] * len(self._serializers),
                                        self._serializers, protocol_version)

    @classmethod
    def prepare(cls, session: Session, keyspace: str, table: str, columns: Sequence[str],
                partition_columns: int) -> PreparedInsert:
        """Prepare the INSERT of `columns` (+ the write timestamp) into `keyspace.table`."""
        statement = session.prepare(insert_cql(keyspace, table, columns))
        # USING TIMESTAMP makes every write idempotent: safe to retry anywhere.
        statement.is_idempotent = True
        meta = statement.column_metadata
        if len(meta) != len(columns) + 1:
            raise SinkError(f"{keyspace}.{table}: prepared {len(meta)} bind markers, "
                            f"expected {len(columns) + 1}")
        # Rows are grouped by their leading values: they must be the table's partition key.
        if list(statement.routing_key_indexes or ()) != list(range(partition_columns)):
            raise SinkError(f"{keyspace}.{table}: partition key is not the first "
                            f"{partition_columns} column(s) of the INSERT; run `stockflow db "
                            "migrate` or fix the sink's column order")
        return cls(statement, partition_columns, keyspace=meta[0].keyspace_name,
                   query_id=statement.query_id,
                   serializers=[_serializer(column.type) for column in meta],
                   protocol_version=statement.protocol_version,
                   names=[column.name for column in meta],
                   kinds=[_kind(column.type) for column in meta])

    def bind(self, params: Sequence[Any]) -> list[bytes | None]:
        """The row's values serialized as the prepared statement's column types."""
        try:
            return self._fast_bind(params)
        except Exception:  # the per-value path below gives the same bytes or the precise error
            pass
        version = self._protocol_version
        try:
            return [None if value is None else serialize(value, version)
                    for serialize, value in zip(self._serializers, params, strict=True)]
        except (TypeError, ValueError, AttributeError, OverflowError, struct.error) as exc:
            raise TypeError(self._describe(params, exc)) from exc

    def _describe(self, params: Sequence[Any], exc: BaseException) -> str:
        if len(params) != len(self._serializers):
            return f"{len(params)} values for {len(self._serializers)} bind markers"
        for index, (serialize, value) in enumerate(zip(self._serializers, params, strict=True)):
            try:
                if value is not None:
                    serialize(value, self._protocol_version)
            except Exception as error:
                name = self._names[index] if index < len(self._names) else str(index)
                return (f"invalid value for column {name!r}: {type(value).__name__} "
                        f"{value!r:.80} ({error})")
        return str(exc)


# Cassandra refuses a batch above batch_size_fail_threshold (50 KiB by default); a replica
# batch stops well below it. Values bytes plus a per-row allowance for the mutation framing.
REPLICA_BATCH_MAX_BYTES = 32 * 1024
# A small write batch is still spread over this many requests. Cassandra applies the rows of
# one request one after the other: a 90-row write batch in two 50-row requests took ~48 ms
# here, in eight of 12 rows 3.7 ms, at less Cassandra CPU per row (bench.cassandra_sink
# --batch 30 --batch-rows 50 vs 12: 1,872 vs 23,977 rows/s); large write batches keep
# `cassandra_batch_rows` per request.
MIN_REQUESTS_PER_WRITE = 8
MIN_ROWS_PER_REQUEST = 8  # below this a request's own cost outweighs the parallelism
# Cassandra measures a batch by its cells (batch_size_fail_threshold, 50 KiB by default): a
# cell's value plus its timestamp, TTL and deletion time (16 bytes), and a row's liveness and
# clustering. A row's bound values plus these allowances is an upper bound: with 64 bytes a
# row and nothing per cell, the history rows of a 120-row batch measured 51 KiB and Cassandra
# refused the batch ("Batch too large").
_ROW_OVERHEAD_BYTES = 32
_CELL_OVERHEAD_BYTES = 16


class RowBatch:
    """Bound rows sent as one request and retried whole: rows of one partition of one table
    (`batch_scope` partition), or of any of the sink's tables whose partitions have the same
    replicas (`batch_scope` replica, see `group_by_replica`)."""

    __slots__ = ("nbytes", "rows")

    def __init__(self) -> None:
        self.rows: list[tuple[PreparedInsert, list[bytes | None]]] = []
        self.nbytes = 0

    def __len__(self) -> int:
        return len(self.rows)

    def add(self, insert: PreparedInsert, values: list[bytes | None], nbytes: int) -> None:
        self.rows.append((insert, values))
        self.nbytes += nbytes

    def statement(self) -> BoundStatement | BatchStatement:
        """The request: the row itself when alone, else one UNLOGGED batch (bound values
        added as they are: BatchStatement.add would run PreparedStatement.bind again)."""
        from cassandra.query import BatchStatement, BatchType, BoundStatement

        insert, values = self.rows[0]
        if len(self.rows) == 1:
            bound = BoundStatement(insert.statement)
            bound.values = values  # routing key and idempotence come with the statement
            return bound
        batch = BatchStatement(BatchType.UNLOGGED)
        batch.is_idempotent = True
        add = batch._add_statement_and_params
        for row_insert, row_values in self.rows:
            add(True, row_insert.query_id, row_values)
        # Token-aware routing: the first row's partition, whose replicas hold every row.
        batch.routing_key = values[:insert.partition_columns]
        batch.keyspace = insert.keyspace
        return batch


def routing_key(values: Sequence[bytes | None], columns: int) -> bytes:
    """The partition key bytes the partitioner hashes (the driver's composite encoding)."""
    if columns == 1:
        return values[0] or b""
    return b"".join(struct.pack(">H", len(part or b"")) + (part or b"") + b"\x00"
                    for part in values[:columns])


def rows_per_request(total_rows: int, max_rows: int) -> int:
    """Rows per replica batch for a write of `total_rows`: at most `max_rows`, and few enough
    that the write makes at least MIN_REQUESTS_PER_WRITE requests (which run concurrently),
    but not fewer than MIN_ROWS_PER_REQUEST."""
    spread = max(MIN_ROWS_PER_REQUEST, -(-total_rows // MIN_REQUESTS_PER_WRITE))
    return max(1, min(max_rows, spread))


def group_by_replica(rows: Iterable[tuple[PreparedInsert, tuple[Any, ...]]],
                     replicas_of: Callable[[PreparedInsert, list[bytes | None]], Any] | None,
                     max_rows: int, max_bytes: int = REPLICA_BATCH_MAX_BYTES,
                     ) -> list[RowBatch]:
    """Rows bound and packed into batches of one replica set each, at most `max_rows` rows
    and about `max_bytes` of values per batch. `replicas_of` None: one replica set (a
    single-node cluster).

    An unlogged batch of one partition is one mutation, but at ~1.3 rows per partition per
    batch (every change_history row is its own partition) the driver's per-request CPU is
    what limits the sink. Rows grouped by replica set make a batch the coordinator
    (token-aware: one of those replicas) applies locally, partition by partition, with no
    fan-out to other replica sets; 50-100 rows then cost one request."""
    if max_rows < 1:
        raise ValueError("max_rows must be >= 1")
    open_batches: dict[Any, RowBatch] = {}
    done: list[RowBatch] = []
    for insert, params in rows:
        values = insert.bind(params)
        nbytes = (_ROW_OVERHEAD_BYTES + _CELL_OVERHEAD_BYTES * len(values)
                  + sum(len(v) for v in values if v is not None))
        group = None if replicas_of is None else replicas_of(insert, values)
        batch = open_batches.get(group)
        if batch is not None and (len(batch) >= max_rows or batch.nbytes + nbytes > max_bytes):
            done.append(batch)
            batch = None
        if batch is None:
            batch = open_batches[group] = RowBatch()
        batch.add(insert, values, nbytes)
    done.extend(open_batches.values())
    return done


def is_retryable(exc: BaseException) -> bool:
    """True for errors that may pass (node down, timeouts, overload); False for a wrong request."""
    from cassandra import AuthenticationFailed, InvalidRequest, Unauthorized
    from cassandra.protocol import ConfigurationException, SyntaxException

    fatal = (InvalidRequest, Unauthorized, AuthenticationFailed, SyntaxException,
             ConfigurationException, TypeError, ValueError, KeyError, struct.error)
    return not isinstance(exc, fatal)


def backoff_delay(attempt: int, base_s: float, cap_s: float,
                  rng: random.Random | None = None) -> float:
    """The sink's retry delay: `pipeline.backoff.backoff_delay` with equal jitter.

    In [d/2, d] for d = min(cap, base * 2**attempt), attempt 0-based (0 = first retry).
    Equal jitter keeps a retry loop that runs forever from spinning on near-zero waits.
    """
    return backoff.backoff_delay(attempt, base_s=base_s, cap_s=cap_s, jitter="equal", rng=rng)


@dataclass
class SinkStats:
    """Counters of one sink since start (for metrics and tests)."""

    batches: int = 0
    updates: int = 0
    rows_written: int = 0
    requests: int = 0
    retries: int = 0
    outages: int = 0


_MAX_INLINE_SENDS = 32


class _Future(Protocol):
    """What the window needs of the driver's ResponseFuture."""

    def add_callbacks(self, callback: Callable[..., Any], errback: Callable[..., Any],
                      callback_args: tuple[Any, ...] = ...,
                      errback_args: tuple[Any, ...] = ...) -> Any: ...


class _InFlightWindow:
    """Keeps up to `limit` requests in flight over `items`, like the driver's execute_concurrent.

    The next request is sent from the driver's completion callback, so a request costs no
    hop through the asyncio loop: the loop is woken once, when the window has drained. The
    first error stops new sends (when a node is down every request fails at once, and chaining
    from synchronous errbacks would recurse); the caller retries the failed and unsent items.

    Requests are sent without a driver timeout: the driver arms a timer per request and wakes
    its reactor thread to do it, which cost ~40 µs of CPU a request here. One watchdog per
    window replaces it: when no request completed for `timeout_s`, the ones still out count as
    timed out (and are retried; a late answer is ignored).
    """

    def __init__(self, send: Callable[[Any], _Future], items: Sequence[Any], limit: int,
                 timeout_s: float, loop: asyncio.AbstractEventLoop) -> None:
        self._send_request = send
        self._items = items
        self._limit = limit
        self._timeout_s = timeout_s
        self._loop = loop
        self._lock = threading.Lock()
        self._next = 0
        self._out: set[int] = set()  # indexes sent and not completed
        self._starting = True
        self._stopped = False
        self._finished = False
        self._last_progress = time.monotonic()
        self._watchdog: asyncio.TimerHandle | None = None
        self._failures: list[tuple[Any, BaseException]] = []
        self._local = threading.local()
        self.done: asyncio.Future[tuple[list[tuple[Any, BaseException]], list[Any]]]
        self.done = loop.create_future()

    def start(self) -> None:
        """Send the first `limit` requests (call from the event loop's thread)."""
        self._watchdog = self._loop.call_later(self._timeout_s, self._watch)
        for _ in range(min(self._limit, len(self._items))):
            with self._lock:
                # Completions chain sends from the driver's threads meanwhile: re-check.
                if self._stopped or self._next >= len(self._items):
                    break
                index = self._next
                self._next += 1
                self._out.add(index)
            self._send(index)
        with self._lock:
            self._starting = False
            finish = not self._out and not self._finished
            self._finished = self._finished or finish
        if finish:
            self._finish()

    def stop(self) -> None:
        """Send nothing more (the writer was cancelled); in-flight requests complete."""
        with self._lock:
            self._stopped = True
        self.close()

    def close(self) -> None:
        """Drop the watchdog (call from the event loop's thread once `done` resolved)."""
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None

    def _watch(self) -> None:
        from cassandra import OperationTimedOut

        with self._lock:
            if self._finished:
                return
            idle = time.monotonic() - self._last_progress
            expired = sorted(self._out) if idle >= self._timeout_s else []
        if not expired:
            self._watchdog = self._loop.call_later(max(self._timeout_s - idle, 0.001),
                                                   self._watch)
            return
        self._watchdog = None
        for index in expired:
            self._complete(index, OperationTimedOut(
                f"no answer from Cassandra for {self._timeout_s:g} s (request_timeout_s)"))

    def _send(self, index: int) -> None:
        # A future that completed before add_callbacks runs its callback inline, which sends
        # the next request inline: past a few levels, hand the send to the event loop instead
        # of recursing.
        depth = getattr(self._local, "depth", 0)
        if depth >= _MAX_INLINE_SENDS:
            try:
                self._loop.call_soon_threadsafe(self._send, index)
            except RuntimeError as exc:  # the loop closed: nobody is waiting any more
                self._complete(index, exc)
            return
        self._local.depth = depth + 1
        try:
            try:
                future = self._send_request(self._items[index])
            except Exception as exc:  # encoding errors and a shut-down session raise here
                self._complete(index, exc)
                return
            future.add_callbacks(self._on_success, self._on_error,
                                 callback_args=(index,), errback_args=(index,))
        finally:
            self._local.depth = depth

    def _on_success(self, _rows: Any, index: int) -> None:
        self._complete(index, None)

    def _on_error(self, exc: BaseException, index: int) -> None:
        self._complete(index, exc)

    def _complete(self, index: int, exc: BaseException | None) -> None:
        with self._lock:
            if index not in self._out:  # answered after the watchdog gave up on it
                return
            self._out.discard(index)
            self._last_progress = time.monotonic()
            if exc is not None:
                self._failures.append((self._items[index], exc))
                self._stopped = True
            if not self._stopped and self._next < len(self._items):
                chained: int | None = self._next
                self._out.add(self._next)
                self._next += 1
                finish = False
            else:
                chained = None
                finish = not self._out and not self._starting and not self._finished
                self._finished = self._finished or finish
        if chained is not None:
            self._send(chained)
        elif finish:
            self._finish()

    def _finish(self) -> None:
        outcome = (self._failures, list(self._items[self._next:]))
        with contextlib.suppress(RuntimeError):  # the loop closed: nobody is waiting any more
            self._loop.call_soon_threadsafe(_resolve, self.done, outcome)


def _resolve(future: asyncio.Future[Any], outcome: Any) -> None:
    if not future.done():
        future.set_result(outcome)


class _OutageLog:
    """Logs a failing write at once, then at most once per interval, and the recovery."""

    def __init__(self, interval_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._interval_s = interval_s
        self._clock = clock
        self._since: float | None = None
        self._last_logged = 0.0
        self._failed_rounds = 0

    def failed(self, exc: BaseException, pending: int, attempt: int, delay_s: float) -> bool:
        """Record one failed round; True when this round was logged."""
        now = self._clock()
        first = self._since is None
        if first:
            self._since = now
        self._failed_rounds += 1
        if not first and now - self._last_logged < self._interval_s:
            return False
        self._last_logged = now
        assert self._since is not None
        log.warning("cassandra.write_retrying", error=type(exc).__name__, detail=str(exc)[:300],
                    pending_rows=pending, attempt=attempt, retry_in_s=round(delay_s, 3),
                    failing_for_s=round(now - self._since, 1))
        return True

    def succeeded(self) -> bool:
        """Record a fully written batch; True when it ended a failure streak (logged)."""
        if self._since is None:
            return False
        log.info("cassandra.write_recovered", failing_for_s=round(self._clock() - self._since, 1),
                 failed_rounds=self._failed_rounds)
        self._since = None
        self._failed_rounds = 0
        return True


class CassandraSink:
    """Writes StockUpdate batches to availability_by_sku, stock_by_supplier and change_history.

    Lifecycle: `await start()` (connect, read the schema's bucket count, prepare), then
    `await write_batch(updates)` per batch, `await close()`. write_batch returns only when
    Cassandra acknowledged every row; on transient errors it retries forever with backoff,
    which is the backpressure: the caller (the aggregate agent) simply waits.
    """

    def __init__(
        self,
        *,
        contact_points: Sequence[str] = ("127.0.0.1",),
        port: int = 9042,
        keyspace: str = "stockflow",
        username: str | None = None,
        password: str | None = None,
        local_dc: str | None = None,
        consistency: str = "LOCAL_QUORUM",
        max_in_flight: int = 128,
        batch_rows: int = DEFAULT_BATCH_ROWS,
        batch_scope: str = "replica",
        retry_base_delay_s: float = 0.05,
        max_retry_delay_s: float = 5.0,
        request_timeout_s: float = 10.0,
        reconnect_max_delay_s: float = 5.0,
        outage_log_interval_s: float = 10.0,
        cluster_config: ClusterConfig | None = None,
    ) -> None:
        if max_in_flight < 1:
            raise ValueError("max_in_flight must be >= 1")
        if batch_rows < 1:
            raise ValueError("batch_rows must be >= 1")
        if batch_scope not in ("replica", "partition"):
            raise ValueError("batch_scope must be 'replica' or 'partition'")
        self.keyspace = check_keyspace_name(keyspace)
        self._config = cluster_config or ClusterConfig(
            contact_points=tuple(contact_points), port=port, username=username,
            password=password, local_dc=local_dc, consistency=consistency,
            request_timeout_s=request_timeout_s, reconnect_max_delay_s=reconnect_max_delay_s)
        self.max_in_flight = max_in_flight
        self.batch_rows = batch_rows
        self.batch_scope = batch_scope
        self._replica_cache: dict[bytes, Any] = {}
        self._retry_base_delay_s = retry_base_delay_s
        self._max_retry_delay_s = max_retry_delay_s
        self._request_timeout_s = request_timeout_s
        self._outage_log = _OutageLog(outage_log_interval_s)
        self._cluster: Cluster | None = None
        self._session: Session | None = None
        self._insert_availability: PreparedInsert | None = None
        self._insert_stock: PreparedInsert | None = None
        self._insert_history: PreparedInsert | None = None
        self._buckets = 0
        self._write_lock = asyncio.Lock()
        self.stats = SinkStats()

    @classmethod
    def from_settings(cls, settings: Settings, **overrides: Any) -> CassandraSink:
        """A sink configured from stockflow settings; keyword overrides win (tests, bench)."""
        kwargs: dict[str, Any] = {
            "keyspace": settings.cassandra_keyspace,
            "max_in_flight": settings.cassandra_max_in_flight,
            "batch_rows": settings.cassandra_batch_rows,
            "batch_scope": settings.cassandra_batch_scope,
            "retry_base_delay_s": settings.cassandra_retry_base_delay_s,
            "max_retry_delay_s": settings.cassandra_max_retry_delay_s,
            "request_timeout_s": settings.cassandra_request_timeout_s,
            "outage_log_interval_s": settings.cassandra_outage_log_interval_s,
            "cluster_config": ClusterConfig.from_settings(settings),
        }
        kwargs.update(overrides)
        return cls(**kwargs)

    @property
    def session(self) -> Session:
        """The driver session (after start); readers may share it."""
        if self._session is None:
            raise SinkError("CassandraSink.start() was not awaited")
        return self._session

    @property
    def stock_buckets(self) -> int:
        """The bucket count of stock_by_supplier, as recorded by the migration."""
        return self._buckets

    async def start(self) -> None:
        """Connect (retrying while Cassandra is unreachable) and prepare the statements."""
        if self._session is not None:
            return
        attempt = 0
        while True:
            try:
                cluster, session = await asyncio.to_thread(self._connect)
                break
            except SinkError:
                raise
            except Exception as exc:
                if not is_retryable(exc):
                    raise SinkError(f"cannot connect to Cassandra: {exc}") from exc
                delay = backoff_delay(attempt, self._retry_base_delay_s * 10,
                                      self._max_retry_delay_s)
                self._outage_log.failed(exc, pending=0, attempt=attempt, delay_s=delay)
                attempt += 1
                await asyncio.sleep(delay)
        self._outage_log.succeeded()
        self._cluster, self._session = cluster, session
        log.info("cassandra.sink_started", keyspace=self.keyspace, buckets=self._buckets,
                 max_in_flight=self.max_in_flight, batch_rows=self.batch_rows,
                 batch_scope=self.batch_scope)

    def _connect(self) -> tuple[Cluster, Session]:
        from cassandra import InvalidRequest

        from connectors.cassandra.schema import recorded_stock_buckets

        cluster = build_cluster(self._config)
        try:
            session = cluster.connect()
            buckets = recorded_stock_buckets(session, self.keyspace)
            if buckets is None:
                raise SinkError(f"keyspace {self.keyspace} has no stockflow schema: "
                                "run `stockflow db migrate` first")
            self._buckets = buckets
            prepared = [
                PreparedInsert.prepare(session, self.keyspace, table, columns, partition)
                for table, columns, partition in (
                    ("availability_by_sku", _AVAILABILITY_COLUMNS, _AVAILABILITY_PARTITION),
                    ("stock_by_supplier", _STOCK_COLUMNS, _STOCK_PARTITION),
                    ("change_history", _HISTORY_COLUMNS, _HISTORY_PARTITION))]
        except InvalidRequest as exc:
            cluster.shutdown()
            raise SinkError(f"Cassandra rejected the sink's statements: {exc}") from exc
        except BaseException:
            cluster.shutdown()
            raise
        self._insert_availability, self._insert_stock, self._insert_history = prepared
        return cluster, session

    def _inserts(self) -> tuple[PreparedInsert, PreparedInsert, PreparedInsert]:
        if self._insert_availability is None or self._insert_stock is None \
                or self._insert_history is None:
            raise SinkError("CassandraSink.start() was not awaited")
        return self._insert_availability, self._insert_stock, self._insert_history

    def rows_for(self, updates: Sequence[Mapping[str, Any]]) -> tuple[
            list[tuple[Any, ...]], list[tuple[Any, ...]], list[tuple[Any, ...]]]:
        """The rows of a batch per table (availability, stock, history), values in bind order.

        Latest state per key in the two state tables, every change in the history.
        """
        for update in updates:
            check_update(update)
        buckets = self._buckets
        availability = [(
            u["platform_sku"], u["supplier_id"], u["sku"], u["quantity_after"],
            u["version"], u["status"], u.get("lead_time_days"), u.get("price"),
            u.get("currency"), u["observed_at"], write_timestamp(u))
            for u in coalesce(updates, _availability_key)]
        stock = [(
            u["supplier_id"], stock_bucket(u["sku"], buckets), u["sku"], u["platform_sku"],
            u["quantity_after"], u["version"], u["status"], u.get("lead_time_days"),
            u.get("price"), u.get("currency"), u["observed_at"], write_timestamp(u))
            for u in coalesce(updates, _stock_key)]
        # Every change goes to the audit trail; exact duplicates (a replay inside one batch)
        # are the same row and written once.
        history = [(
            u["supplier_id"], u["sku"], u["version"], u["platform_sku"],
            u["quantity_before"], u["quantity_after"], u["status"], u["cause"],
            u["event_id"], u["observed_at"], u["received_at"], u["produced_at"],
            u.get("price"), u.get("currency"), u.get("lead_time_days"),
            bool(u.get("clamped", False)), bool(u.get("suspect", False)),
            write_timestamp(u))
            for u in coalesce(updates, _history_key)]
        return availability, stock, history

    def statements_for(self, updates: Sequence[Mapping[str, Any]]) -> list[Statement]:
        """The rows of a batch, one (prepared statement, values) each (raw baselines, tests)."""
        inserts = self._inserts()
        return [(insert.statement, params)
                for insert, rows in zip(inserts, self.rows_for(updates), strict=True)
                for params in rows]

    def requests_for(self, updates: Sequence[Mapping[str, Any]]) -> list[RowBatch]:
        """The requests of a batch: rows of all three tables grouped by replica set
        (`batch_scope` replica, the default), or per table by partition; `batch_rows` each."""
        inserts = self._inserts()
        tables = self.rows_for(updates)
        if self.batch_scope == "replica":
            per_request = rows_per_request(sum(len(rows) for rows in tables), self.batch_rows)
            return list(group_by_replica(
                ((insert, params) for insert, rows in zip(inserts, tables, strict=True)
                 for params in rows), self._replicas_of(), per_request))
        requests = []
        for insert, rows in zip(inserts, tables, strict=True):
            for chunk in group_by_partition(rows, insert.partition_columns, self.batch_rows):
                batch = RowBatch()
                for params in chunk:
                    batch.add(insert, insert.bind(params), 0)
                requests.append(batch)
        return requests

    def _replicas_of(self) -> Callable[[PreparedInsert, list[bytes | None]], Any] | None:
        """How to find a row's replica set; None when every partition has the same one."""
        cluster = self._cluster
        token_map = cluster.metadata.token_map if cluster is not None else None
        if token_map is None or len(cluster.metadata.all_hosts()) <= 1:  # type: ignore[union-attr]
            return None
        cache = self._replica_cache
        if len(cache) > 100_000:  # a bound on memory; the ring rarely changes
            cache.clear()
        token_of = token_map.token_class.from_key
        get_replicas = token_map.get_replicas

        def replicas_of(insert: PreparedInsert, values: list[bytes | None]) -> Any:
            key = routing_key(values, insert.partition_columns)
            found = cache.get(key)
            if found is None:
                hosts = get_replicas(insert.keyspace, token_of(key))
                found = cache[key] = tuple(sorted(str(h.host_id) for h in hosts))
            return found

        return replicas_of

    async def write_batch(self, updates: Sequence[Mapping[str, Any]]) -> int:
        """Write a batch of StockUpdates; returns the rows written once Cassandra acked them all.

        The rows go out as one unlogged batch per partition chunk, up to `max_in_flight` at
        once. Transient errors are retried forever (with backoff, logged once per interval),
        a failed batch whole; only a request Cassandra can never accept raises SinkError.
        """
        if not updates:
            return 0
        requests = self.requests_for(updates)
        async with self._write_lock:  # one batch at a time keeps in-flight <= max_in_flight
            await self._write(requests)
        rows = sum(map(len, requests))
        self.stats.batches += 1
        self.stats.updates += len(updates)
        self.stats.rows_written += rows
        self.stats.requests += len(requests)
        return rows

    def _execute(self, request: RowBatch) -> ResponseFuture:
        # No driver timeout: the window's watchdog times the requests out (see _InFlightWindow).
        return self.session.execute_async(request.statement(), timeout=None)

    async def _write(self, requests: Sequence[RowBatch]) -> None:
        loop = asyncio.get_running_loop()
        pending: Sequence[RowBatch] = requests
        attempt = 0
        while True:
            window = _InFlightWindow(self._execute, pending, self.max_in_flight,
                                     self._request_timeout_s, loop)
            window.start()
            try:
                failures, unsent = await window.done
            except asyncio.CancelledError:
                window.stop()
                raise
            window.close()
            if not failures and not unsent:
                if self._outage_log.succeeded():
                    self.stats.outages += 1
                return
            for _request, exc in failures:
                if not is_retryable(exc):
                    raise SinkError(f"Cassandra rejected a write: {exc}") from exc
            written = len(pending) - len(failures) - len(unsent)
            pending = [request for request, _exc in failures] + unsent
            attempt = 0 if written > 0 else attempt + 1
            delay = backoff_delay(attempt, self._retry_base_delay_s, self._max_retry_delay_s)
            self.stats.retries += 1
            SINK_RETRIES.labels("cassandra").inc()
            for _request, exc in failures:
                SINK_ERRORS.labels("cassandra", type(exc).__name__).inc()
            self._outage_log.failed(failures[0][1], pending=sum(map(len, pending)),
                                    attempt=attempt, delay_s=delay)
            await asyncio.sleep(delay)

    async def close(self) -> None:
        """Wait for a batch being written, then shut the driver down."""
        async with self._write_lock:
            cluster, self._cluster, self._session = self._cluster, None, None
        if cluster is not None:
            await asyncio.to_thread(cluster.shutdown)
            log.info("cassandra.sink_closed", keyspace=self.keyspace, **vars(self.stats))
