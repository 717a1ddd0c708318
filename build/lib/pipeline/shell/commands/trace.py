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
    """Find EVENT_ID in inventory.deltas and tell what the pipeline did with it; with the
    timings of its recorded OpenTelemetry trace when there is one (Jaeger or the span file)."""
    from connectors.logtools.trace import summary, trace_event
    from connectors.logtools.trace_spans import find_spans, timeline
    from pipeline.errors import StockflowError
    from pipeline.settings import get_settings

    settings = get_settings()
    lookup = find_spans(settings, event_id)
    try:
        report = trace_event(settings, event_id, supplier=supplier, sku=sku,
                             check_sinks=sinks)
    except StockflowError as exc:
        console.print(f"[red]trace failed:[/] {exc}", highlight=False)
        if lookup.spans:  # the timings still tell where the event went
            for line in timeline(lookup.spans):
                console.print(line, highlight=False, markup=False, soft_wrap=True)
        raise typer.Exit(2) from exc
    if as_json:
        print(json.dumps({**asdict(report), "spans": lookup.spans,
                          "spans_source": lookup.source, "spans_error": lookup.error},
                         default=str, indent=2))
    else:
        console.print(f"event_id {report.event_id}: {len(report.occurrences)} occurrence(s) "
                      f"in partitions scanned {report.scanned_partitions}", highlight=False)
        for occ in report.occurrences:
            for line in summary(occ):
                console.print(line, highlight=False, markup=False)
        for note in report.notes:
            console.print(f"note: {note}", highlight=False, markup=False)
        if lookup.spans:
            console.print(f"recorded trace ({lookup.source}):", highlight=False, markup=False)
            for line in timeline(lookup.spans):
                console.print(line, highlight=False, markup=False, soft_wrap=True)
        elif lookup.error and settings.tracing_enabled:
            console.print(f"no recorded trace: {lookup.error}", highlight=False, markup=False)
    if not report.occurrences:
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.command("trace")(trace)
