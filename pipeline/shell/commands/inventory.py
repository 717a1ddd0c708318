"""`stockflow inventory get SKU`: availability of one platform SKU across suppliers."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

console = Console()

inventory_app = typer.Typer(help="Read current inventory.", no_args_is_help=True)


def _millis(value: int | None) -> str:
    if value is None:
        return "-"
    return dt.datetime.fromtimestamp(value / 1000, dt.UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


def availability_table(availability: dict[str, Any], source: str) -> Table:
    """A rich table of one availability dict (as connectors.cassandra.read returns it)."""
    # Text, not str: a SKU is supplier data, and `[/oops]` is a valid SKU but broken markup.
    table = Table(title=Text(f"{availability['platform_sku']} ({source})"),
                  caption=Text(f"total available: {availability['total']}   best supplier: "
                               f"{availability['best_supplier'] or '-'}"))
    for col in ("supplier", "sku", "quantity", "status", "lead time (d)", "price", "version",
                "updated at (UTC)"):
        table.add_column(col, justify="right" if col in ("quantity", "version") else "left")
    for supplier_id, s in sorted(availability["suppliers"].items()):
        best = supplier_id == availability["best_supplier"]
        price = f"{s.get('price')} {s.get('currency') or ''}".strip() if s.get("price") else "-"
        lead = s.get("lead_time_days")
        cells = [supplier_id, s["sku"], str(s["quantity"]), s["status"],
                 "-" if lead is None else str(lead), price, str(s["version"]),
                 _millis(s.get("updated_at"))]
        table.add_row(*(Text(str(c)) for c in cells), style="bold green" if best else None)
    return table


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
        from pipeline.shell.commands.cache import cached_inventory_get

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
