"""`stockflow db migrate` and `stockflow db status`: the Cassandra schema of stockflow."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console

console = Console()

db_app = typer.Typer(help="The Cassandra keyspace and tables of stockflow.", no_args_is_help=True)


@db_app.command("migrate")
def migrate(
    replication: Annotated[str | None, typer.Option(
        help="CQL replication map, e.g. \"{'class': 'NetworkTopologyStrategy', 'dc1': 3}\" "
             "(default: settings.cassandra_replication)")] = None,
    keyspace: Annotated[str | None, typer.Option(
        help="keyspace (default: settings.cassandra_keyspace)")] = None,
) -> None:
    """Create the keyspace and tables and apply missing migrations (idempotent)."""
    from connectors.cassandra.cluster import ClusterConfig, connect
    from connectors.cassandra.schema import migrate as apply_migrations
    from pipeline.settings import get_settings

    settings = get_settings()
    cluster, session = connect(ClusterConfig.from_settings(settings))
    try:
        report = apply_migrations(
            session, keyspace or settings.cassandra_keyspace,
            replication=replication or settings.cassandra_replication,
            history_ttl_s=settings.cassandra_history_ttl_s,
            stock_buckets=settings.cassandra_stock_buckets)
    finally:
        cluster.shutdown()
    applied = ", ".join(str(v) for v in report.applied) or "none (up to date)"
    console.print(f"keyspace [bold]{report.keyspace}[/]: schema version {report.current_version}; "
                  f"applied: {applied}; stock_by_supplier buckets: {report.stock_buckets}",
                  highlight=False)
    for note in report.notes:
        console.print(f"[yellow]note:[/] {note}", highlight=False)


@db_app.command("status")
def status(
    keyspace: Annotated[str | None, typer.Option(
        help="keyspace (default: settings.cassandra_keyspace)")] = None,
) -> None:
    """Print the migrations recorded in the keyspace; exit 1 when some are missing."""
    from connectors.cassandra.cluster import ClusterConfig, check_keyspace_name, connect
    from connectors.cassandra.schema import MIGRATIONS, applied_versions
    from pipeline.settings import get_settings

    settings = get_settings()
    ks = check_keyspace_name(keyspace or settings.cassandra_keyspace)
    cluster, session = connect(ClusterConfig.from_settings(settings))
    try:
        done = applied_versions(session, ks)
    finally:
        cluster.shutdown()
    missing = [m.version for m in MIGRATIONS if m.version not in done]
    for m in MIGRATIONS:
        mark = "[green]applied[/]" if m.version in done else "[red]missing[/]"
        console.print(f"{m.version:>3}  {mark}  {m.description}", highlight=False)
    if missing:
        console.print(f"run `stockflow db migrate` to apply {missing} to keyspace {ks}")
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    """Add `stockflow db ...`."""
    app.add_typer(db_app, name="db")
