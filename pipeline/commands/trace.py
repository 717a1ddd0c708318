"""`stockflow trace EVENT_ID`: what happened to one event (applied, stale, duplicate...)."""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Annotated

import typer
from rich.console import Console

console = Console()


def trace(
    event_id: Annotated[str, typer.Argument(help="the event_id of a SupplierDelta")],
    supplier: Annotated[str | None, typer.Option(help="only this supplier's events")] = None,
    sku: Annotated[str | None, typer.Option(
        help="with --supplier: read only the partition of supplier|sku")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the report as JSON")] = False,
    sinks: Annotated[bool, typer.Option(help="check Cassandra and Redis")] = True,
) -> None:
    """Find EVENT_ID in inventory.deltas and tell what the pipeline did with it."""
    from pipeline.errors import StockflowError
    from pipeline.settings import get_settings
    from pipeline.trace import summary, trace_event

    try:
        report = trace_event(get_settings(), event_id, supplier=supplier, sku=sku,
                             check_sinks=sinks)
    except StockflowError as exc:
        console.print(f"[red]trace failed:[/] {exc}", highlight=False)
        raise typer.Exit(2) from exc
    if as_json:
        print(json.dumps(asdict(report), default=str, indent=2))
    else:
        console.print(f"event_id {report.event_id}: {len(report.occurrences)} occurrence(s) "
                      f"in partitions scanned {report.scanned_partitions}", highlight=False)
        for occ in report.occurrences:
            for line in summary(occ):
                console.print(line, highlight=False, markup=False)
        for note in report.notes:
            console.print(f"note: {note}", highlight=False, markup=False)
    if not report.occurrences:
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.command("trace")(trace)
