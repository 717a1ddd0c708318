"""Reads of availability_by_sku: one platform SKU (CLI, verify) or all, paged (cache rebuild)."""

from __future__ import annotations

import calendar
import datetime as dt
import weakref
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

from connectors.cassandra_cluster import CassandraError, check_keyspace_name
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
