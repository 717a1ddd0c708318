"""`stockflow inventory get SKU`: availability of one platform SKU across suppliers."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console

from pipeline.shell.views import availability_table

console = Console()

inventory_app = typer.Typer(help="Read current inventory.", no_args_is_help=True)


@inventory_app.command("get")
def get(
    platform_sku: Annotated[str, typer.Argument(metavar="SKU", help="the platform SKU")],
    keyspace: Annotated[str | None, typer.Option(
        help="keyspace (default: settings.cassandra_keyspace)")] = None,
    cache: Annotated[bool, typer.Option(
        "--cache", help="read Redis first; Cassandra only on a miss, then fill Redis")] = False,
) -> None:
    """Print the availability of a platform SKU across suppliers, read from Cassandra."""
    from connectors.cassandra.cluster import ClusterConfig, connect
    from connectors.cassandra.read import read_availability
    from pipeline.settings import get_settings

    settings = get_settings()
    if cache:
        from connectors.redis.read_through import cached_inventory_get

        cached = cached_inventory_get(settings, platform_sku, keyspace)
        if cached is None:
            console.print(f"no supplier has reported platform SKU {platform_sku!r}",
                          markup=False, highlight=False)
            raise typer.Exit(1)
        console.print(availability_table(cached, cached["source"]))
        return
    cluster, session = connect(ClusterConfig.from_settings(settings))
    try:
        availability = read_availability(session, platform_sku,
                                         keyspace or settings.cassandra_keyspace)
    finally:
        cluster.shutdown()
    if availability is None:
        console.print(f"no supplier has reported platform SKU {platform_sku!r}", markup=False,
                      highlight=False)
        raise typer.Exit(1)
    console.print(availability_table(availability, "cassandra"))


def register(app: typer.Typer) -> None:
    """Add `stockflow inventory ...`."""
    app.add_typer(inventory_app, name="inventory")
