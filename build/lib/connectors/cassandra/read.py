"""Reads of availability_by_sku: one platform SKU, many, or all paged (cache rebuild, verify)."""

from __future__ import annotations

import calendar
import datetime as dt
import itertools
import queue
import threading
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from connectors.cassandra.cluster import CassandraError, check_keyspace_name
from pipeline.aggregate import best_supplier, total_available

if TYPE_CHECKING:
    from cassandra.cluster import Session
    from cassandra.query import PreparedStatement

AVAILABILITY_COLUMNS = ("platform_sku", "supplier_id", "sku", "quantity", "version", "status",
                        "lead_time_days", "price", "currency", "updated_at")

_prepared: weakref.WeakKeyDictionary[Session, dict[str, PreparedStatement]] = (
    weakref.WeakKeyDictionary())


def _prepare(session: Session, cql: str) -> PreparedStatement:
    """Prepare once per session (a prepare is a round trip)."""
    cache = _prepared.setdefault(session, {})
    statement = cache.get(cql)
    if statement is None:
        statement = cache[cql] = session.prepare(cql)
    return statement


def epoch_millis(value: Any) -> int | None:
    """A CQL timestamp as read by the driver (naive UTC datetime) in epoch milliseconds."""
    if value is None:
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, dt.datetime):
        if value.tzinfo is not None:
            value = value.astimezone(dt.UTC).replace(tzinfo=None)
        return calendar.timegm(value.timetuple()) * 1000 + value.microsecond // 1000
    raise TypeError(f"not a timestamp: {value!r}")


def row_as_dict(row: Any, columns: tuple[str, ...] = AVAILABILITY_COLUMNS) -> dict[str, Any]:
    """One availability_by_sku row as a plain dict (any row factory), updated_at in epoch ms."""
    if isinstance(row, Mapping):
        out = {c: row[c] for c in columns}
    else:
        out = {c: getattr(row, c) for c in columns}
    if "updated_at" in out:
        out["updated_at"] = epoch_millis(out["updated_at"])
    return out


def summarize(platform_sku: str, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Availability of one platform SKU (schemas/availability.avsc shape, plus price/currency).

    Total and best supplier are computed by pipeline.aggregate, as the aggregate agent does.
    """
    suppliers: dict[str, dict[str, Any]] = {}
    for r in rows:
        suppliers[r["supplier_id"]] = {
            "sku": r["sku"], "quantity": r["quantity"], "version": r["version"],
            "status": r["status"], "lead_time_days": r["lead_time_days"],
            "updated_at": r["updated_at"], "price": r["price"], "currency": r["currency"],
        }
    total = total_available(suppliers)
    return {
        "platform_sku": platform_sku,
        "total": total,
        "best_supplier": best_supplier(suppliers) if total > 0 else None,
        "suppliers": suppliers,
    }


def read_availability(session: Session, platform_sku: str,
                      keyspace: str | None = None) -> dict[str, Any] | None:
    """Availability of one platform SKU across suppliers (one partition), None if unknown."""
    ks = check_keyspace_name(keyspace or session.keyspace or "")
    statement = _prepare(session, f"SELECT {', '.join(AVAILABILITY_COLUMNS)} "
                                  f"FROM {ks}.availability_by_sku WHERE platform_sku = ?")
    try:
        rows = [row_as_dict(r) for r in session.execute(statement, (platform_sku,))]
    except Exception as exc:
        raise CassandraError(f"reading availability of {platform_sku!r} failed: {exc}") from exc
    return summarize(platform_sku, rows) if rows else None


def iter_availability(session: Session, keyspace: str,
                      fetch_size: int = 1000) -> Iterator[dict[str, Any]]:
    """Every availability_by_sku row as a dict, paged (rows of one platform SKU are adjacent)."""
    ks = check_keyspace_name(keyspace)
    statement = _prepare(session, f"SELECT {', '.join(AVAILABILITY_COLUMNS)} "
                                  f"FROM {ks}.availability_by_sku")
    bound = statement.bind(())
    bound.fetch_size = fetch_size
    for row in session.execute(bound):
        yield row_as_dict(row)


def iter_sku_availability(session: Session, keyspace: str,
                          fetch_size: int = 1000) -> Iterator[dict[str, Any]]:
    """Every platform SKU's availability (as read_availability returns it), paged."""
    current: str | None = None
    rows: list[dict[str, Any]] = []
    for row in iter_availability(session, keyspace, fetch_size):
        if row["platform_sku"] != current and rows:
            yield summarize(rows[0]["platform_sku"], rows)
            rows = []
        current = row["platform_sku"]
        rows.append(row)
    if rows:
        yield summarize(rows[0]["platform_sku"], rows)


# Murmur3Partitioner tokens: (-2**63, 2**63 - 1]; -2**63 itself is never a token.
MIN_TOKEN = -(2**63)
MAX_TOKEN = 2**63 - 1


def token_ranges(splits: int) -> list[tuple[int, int]]:
    """The token ring cut into `splits` contiguous ranges (start, end], covering all of it."""
    step = (MAX_TOKEN - MIN_TOKEN) // splits
    bounds = [MIN_TOKEN + i * step for i in range(splits)] + [MAX_TOKEN]
    return list(itertools.pairwise(bounds))


def scan_sku_availability(session: Session, keyspace: str, *, fetch_size: int = 1000,
                          splits: int = 8, concurrency: int = 2,
                          on_rows: Callable[[int], None] | None = None,
                          ) -> Iterator[dict[str, Any]]:
    """Every platform SKU's availability, read as `splits` token ranges, `concurrency` at once.

    Each range is one paged query (fetch_size rows a page) in its own reader thread; the
    caller consumes while the readers fetch. At most `concurrency` pages are in flight and
    `2 * concurrency` chunks (of at most ~fetch_size rows) wait in the queue, so memory does
    not depend on the table's size. Rows of one partition share a token, so a partition
    never spans two ranges. `on_rows(n)` counts rows as they are consumed.
    """
    ks = check_keyspace_name(keyspace)
    statement = _prepare(session, f"SELECT {', '.join(AVAILABILITY_COLUMNS)} "
                                  f"FROM {ks}.availability_by_sku "
                                  "WHERE token(platform_sku) > ? AND token(platform_sku) <= ?")
    ranges: queue.SimpleQueue[tuple[int, int]] = queue.SimpleQueue()
    for r in token_ranges(splits):
        ranges.put(r)
    chunks: queue.Queue[list[dict[str, Any]] | BaseException | None] = queue.Queue(
        maxsize=2 * concurrency)
    stop = threading.Event()

    def put(item: list[dict[str, Any]] | BaseException | None) -> bool:
        while not stop.is_set():
            try:
                chunks.put(item, timeout=0.2)
                return True
            except queue.Full:
                continue
        return False

    def read_ranges() -> None:
        try:
            while not stop.is_set():
                try:
                    start, end = ranges.get_nowait()
                except queue.Empty:
                    break
                bound = statement.bind((start, end))
                bound.fetch_size = fetch_size
                # One chunk = whole partitions of about a page: a partition's rows stay together.
                chunk: list[dict[str, Any]] = []
                for row in session.execute(bound):
                    row_dict = row_as_dict(row)
                    if len(chunk) >= fetch_size and \
                            row_dict["platform_sku"] != chunk[-1]["platform_sku"]:
                        if not put(chunk):
                            return
                        chunk = []
                    chunk.append(row_dict)
                if chunk and not put(chunk):
                    return
        except Exception as exc:  # handed to the consumer, which raises it
            put(CassandraError(f"scanning availability_by_sku failed: {exc}"))
        finally:
            put(None)

    threads = [threading.Thread(target=read_ranges, name=f"cassandra-scan-{i}", daemon=True)
               for i in range(max(1, concurrency))]
    for t in threads:
        t.start()
    running = len(threads)
    try:
        while running:
            item = chunks.get()
            if item is None:
                running -= 1
                continue
            if isinstance(item, BaseException):
                raise item
            if on_rows is not None:
                on_rows(len(item))
            for platform_sku, rows in _by_partition(item):
                yield summarize(platform_sku, rows)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=30)


def _by_partition(rows: list[dict[str, Any]]) -> Iterator[tuple[str, list[dict[str, Any]]]]:
    current: list[dict[str, Any]] = []
    for row in rows:
        if current and row["platform_sku"] != current[0]["platform_sku"]:
            yield current[0]["platform_sku"], current
            current = []
        current.append(row)
    if current:
        yield current[0]["platform_sku"], current


def read_many_availability(session: Session, keyspace: str, platform_skus: Iterable[str],
                           *, concurrency: int = 16,
                           ) -> Iterator[tuple[str, dict[str, Any] | None]]:
    """(platform SKU, availability or None) for each SKU, at most `concurrency` queries at once.

    Results come in the order of `platform_skus`; the SKUs are consumed lazily, so the input
    can be a generator over millions of SKUs.
    """
    from cassandra.concurrent import execute_concurrent_with_args

    ks = check_keyspace_name(keyspace)
    statement = _prepare(session, f"SELECT {', '.join(AVAILABILITY_COLUMNS)} "
                                  f"FROM {ks}.availability_by_sku WHERE platform_sku = ?")
    it = iter(platform_skus)
    while True:
        # Slices keep the SKUs held at once bounded; the driver keeps `concurrency` in flight.
        chunk = [sku for _, sku in zip(range(50 * concurrency), it, strict=False)]
        if not chunk:
            return
        try:
            results = execute_concurrent_with_args(
                session, statement, [(s,) for s in chunk], concurrency=concurrency,
                raise_on_first_error=True, results_generator=True)
            for sku, (ok, result) in zip(chunk, results, strict=True):
                if not ok:
                    raise result
                rows = [row_as_dict(r) for r in result]
                yield sku, (summarize(sku, rows) if rows else None)
        except CassandraError:
            raise
        except Exception as exc:
            raise CassandraError(f"reading availability failed: {exc}") from exc


def estimated_platform_skus(session: Any, keyspace: str) -> int | None:
    """Cassandra's own estimate of the platform SKUs in availability_by_sku (None when it has
    none yet): a progress bar's total, never a count to rely on."""
    try:
        rows = session.execute(
            "SELECT partitions_count FROM system.size_estimates "
            "WHERE keyspace_name = %s AND table_name = 'availability_by_sku'", (keyspace,))
        total = sum(int(r.partitions_count or 0) for r in rows)
    except Exception:  # an estimate is optional: the bar then just counts
        return None
    return total or None
