"""Cassandra migrations for stockflow: keyspace, query-first tables, recorded schema version."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from connectors.cassandra.cluster import CassandraError, check_keyspace_name
from pipeline.log import get_logger

if TYPE_CHECKING:
    from cassandra.cluster import Session

log = get_logger(__name__)

# Parameter names recorded with a migration in schema_version.parameters.
STOCK_BUCKETS = "stock_buckets"


@dataclass(frozen=True)
class Migration:
    """One numbered, append-only schema change; its CQL takes {ks} and the parameters."""

    version: int
    description: str
    statements: tuple[str, ...]


# Append only: never edit a migration once released, add a new one.
MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        version=1,
        description="availability_by_sku, stock_by_supplier, change_history",
        statements=(
            # "Who has this platform SKU and how many": one partition per platform SKU, one row
            # per supplier. The catalog maps each (supplier, sku) to one platform SKU, and a
            # supplier offers a platform SKU through one of its SKUs.
            """CREATE TABLE IF NOT EXISTS {ks}.availability_by_sku (
                platform_sku text,
                supplier_id text,
                sku text,
                quantity bigint,
                version bigint,
                status text,
                lead_time_days int,
                price text,
                currency text,
                updated_at timestamp,
                PRIMARY KEY ((platform_sku), supplier_id)
            )""",
            # Supplier views and reconciliation: a supplier's SKUs spread over N buckets so a
            # supplier with a million SKUs is N partitions, not one huge one.
            """CREATE TABLE IF NOT EXISTS {ks}.stock_by_supplier (
                supplier_id text,
                bucket int,
                sku text,
                platform_sku text,
                quantity bigint,
                version bigint,
                status text,
                lead_time_days int,
                price text,
                currency text,
                updated_at timestamp,
                PRIMARY KEY ((supplier_id, bucket), sku)
            )""",
            # The audit trail: every applied change of one (supplier, sku), newest first.
            """CREATE TABLE IF NOT EXISTS {ks}.change_history (
                supplier_id text,
                sku text,
                version bigint,
                platform_sku text,
                quantity_before bigint,
                quantity_after bigint,
                status text,
                cause text,
                event_id text,
                observed_at timestamp,
                received_at timestamp,
                produced_at timestamp,
                price text,
                currency text,
                lead_time_days int,
                clamped boolean,
                suspect boolean,
                PRIMARY KEY ((supplier_id, sku), version)
            ) WITH CLUSTERING ORDER BY (version DESC)
              AND default_time_to_live = {history_ttl_s}""",
        ),
    ),
)

_SCHEMA_VERSION_TABLE = """CREATE TABLE IF NOT EXISTS {ks}.schema_version (
    version int PRIMARY KEY,
    description text,
    parameters map<text, text>,
    applied_at timestamp
)"""


@dataclass
class MigrationReport:
    """What `migrate` did: the keyspace, the versions it applied, notes for the operator."""

    keyspace: str
    applied: list[int] = field(default_factory=list)
    current_version: int = 0
    stock_buckets: int = 0
    notes: list[str] = field(default_factory=list)


def check_replication(replication: str) -> str:
    """Return the CQL replication map if it looks like one (operator input, not user input)."""
    text = replication.strip()
    if not (text.startswith("{") and text.endswith("}")) or ";" in text or "--" in text:
        raise CassandraError(
            f"replication must be a CQL map such as "
            f"{{'class': 'NetworkTopologyStrategy', 'dc1': 3}}, got {replication!r}")
    return text


def applied_versions(session: Session, keyspace: str) -> dict[int, dict[str, str]]:
    """The migrations recorded in `keyspace`: version -> parameters ({} if none yet)."""
    ks = check_keyspace_name(keyspace)
    if session.cluster.metadata.keyspaces.get(ks) is None:
        return {}
    if "schema_version" not in session.cluster.metadata.keyspaces[ks].tables:
        return {}
    rows = session.execute(f"SELECT version, parameters FROM {ks}.schema_version")
    return {_field(r, "version"): dict(_field(r, "parameters") or {}) for r in rows}


def recorded_stock_buckets(session: Session, keyspace: str) -> int | None:
    """The bucket count stock_by_supplier was created with, None before the first migrate."""
    for _version, params in sorted(applied_versions(session, keyspace).items()):
        if STOCK_BUCKETS in params:
            return int(params[STOCK_BUCKETS])
    return None


def migrate(
    session: Session,
    keyspace: str,
    *,
    replication: str,
    history_ttl_s: int,
    stock_buckets: int,
) -> MigrationReport:
    """Create the keyspace and apply the missing migrations; safe to run any number of times."""
    ks = check_keyspace_name(keyspace)
    repl = check_replication(replication)
    report = MigrationReport(keyspace=ks)
    session.execute(
        f"CREATE KEYSPACE IF NOT EXISTS {ks} WITH replication = {repl} AND durable_writes = true",
        timeout=60)
    note = _replication_note(session, ks, repl)
    if note:
        report.notes.append(note)
    session.execute(_SCHEMA_VERSION_TABLE.format(ks=ks), timeout=60)
    session.cluster.refresh_schema_metadata()
    done = applied_versions(session, ks)
    record = session.prepare(
        f"INSERT INTO {ks}.schema_version (version, description, parameters, applied_at) "
        "VALUES (?, ?, ?, ?) IF NOT EXISTS")
    for migration in MIGRATIONS:
        if migration.version in done:
            continue
        params = {"history_ttl_s": str(history_ttl_s)}
        if migration.version == 1:
            params[STOCK_BUCKETS] = str(stock_buckets)
        for statement in migration.statements:
            session.execute(statement.format(ks=ks, history_ttl_s=int(history_ttl_s)), timeout=60)
        session.execute(record, (migration.version, migration.description, params,
                                 int(time.time() * 1000)))
        report.applied.append(migration.version)
        log.info("cassandra.migration_applied", keyspace=ks, version=migration.version,
                 description=migration.description)
    session.cluster.refresh_schema_metadata()
    report.current_version = max(m.version for m in MIGRATIONS)
    report.stock_buckets = recorded_stock_buckets(session, ks) or stock_buckets
    if report.stock_buckets != stock_buckets:
        report.notes.append(
            f"stock_by_supplier keeps its {report.stock_buckets} buckets (recorded at the first "
            f"migrate); the setting {stock_buckets} is ignored: changing it needs a data move")
    ttl_note = _reconcile_history_ttl(session, ks, history_ttl_s)
    if ttl_note:
        report.notes.append(ttl_note)
    return report


def _reconcile_history_ttl(session: Session, ks: str, history_ttl_s: int) -> str | None:
    """Keep change_history's default TTL equal to the setting (it is a table option)."""
    table = session.cluster.metadata.keyspaces[ks].tables.get("change_history")
    if table is None:
        return None
    current = int(table.options.get("default_time_to_live", 0))
    if current == int(history_ttl_s):
        return None
    session.execute(
        f"ALTER TABLE {ks}.change_history WITH default_time_to_live = {int(history_ttl_s)}",
        timeout=60)
    return (f"change_history default TTL changed from {current}s to {int(history_ttl_s)}s "
            "(applies to rows written from now on)")


def _replication_note(session: Session, ks: str, repl: str) -> str | None:
    """Tell the operator when the keyspace exists with another replication (never altered here)."""
    row = session.execute(
        "SELECT replication FROM system_schema.keyspaces WHERE keyspace_name = %s", (ks,)).one()
    if row is None:
        return None
    current = {str(k): str(v) for k, v in dict(_field(row, "replication")).items()}
    wanted = _replication_map(repl)
    if wanted is None or _normalise(current) == _normalise(wanted):
        return None
    return (f"keyspace {ks} exists with replication {current}, not {wanted}; migrate does not "
            "change it: run ALTER KEYSPACE and a full repair deliberately")


def _replication_map(repl: str) -> dict[str, str] | None:
    """Parse the CQL replication map literal (simple maps of quoted strings and numbers)."""
    import ast

    try:
        parsed = ast.literal_eval(repl)
    except (ValueError, SyntaxError):
        return None
    if not isinstance(parsed, dict):
        return None
    return {str(k): str(v) for k, v in parsed.items()}


def _normalise(repl: dict[str, str]) -> dict[str, str]:
    out = dict(repl)
    cls = out.get("class", "")
    out["class"] = cls.rsplit(".", 1)[-1]
    return out


def _field(row: Any, name: str) -> Any:
    """A column of a row from any row factory (named tuple or dict)."""
    if isinstance(row, dict):
        return row[name]
    return getattr(row, name)
