"""Terminal views shared by the commands: rich tables of stockflow records."""

from __future__ import annotations

import datetime as dt
from typing import Any

from rich.table import Table
from rich.text import Text


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
