"""`stockflow connectors ...`: run the supplier feeds of a suppliers YAML file into Kafka."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from pipeline.topics import DEADLETTER, DELTAS

console = Console()

connectors_app = typer.Typer(help="Supplier connectors: REST, webhook, FTP/SFTP CSV, GraphQL.",
                             no_args_is_help=True)

ConfigOption = Annotated[Path | None, typer.Option(
    "--config", "-c", help="suppliers YAML (default: STOCKFLOW_SUPPLIERS_CONFIG)")]


def _stop_on_signals(stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)


@connectors_app.command("check")
def check(config: ConfigOption = None) -> None:
    """Validate the suppliers file and list its feeds; errors name the line at fault."""
    from connectors.suppliers import load_suppliers
    from pipeline.settings import get_settings

    path = config or get_settings().suppliers_config
    parsed = load_suppliers(path)
    table = Table(title=Text(str(path)))
    for col in ("supplier", "kind", "endpoint", "every", "enabled"):
        table.add_column(col)
    for s in parsed.suppliers:
        endpoint = getattr(s, "endpoint", None) or f"POST /webhooks/{s.id}"
        # Text: a path or URL with brackets is not Rich markup.
        table.add_row(*(Text(c) for c in (s.id, s.kind, endpoint,
                                          f"{s.schedule.interval_s:g}s", str(s.enabled))))
    console.print(table)


@connectors_app.command("run")
def run(
    supplier: Annotated[str | None, typer.Option("--supplier", "-s",
                                                 help="run only this supplier")] = None,
    config: ConfigOption = None,
) -> None:
    """Poll and receive every enabled supplier feed until Ctrl-C; deltas go to inventory.deltas."""
    from prometheus_client import start_http_server

    from connectors.sources.cursor_store import CursorStore
    from connectors.sources.emitters import KafkaEmitter
    from connectors.sources.service import ConnectorService
    from connectors.suppliers import load_suppliers
    from pipeline import tracing
    from pipeline.log import get_logger
    from pipeline.settings import get_settings

    settings = get_settings()
    tracing.configure(settings, "stockflow-connectors")
    parsed = load_suppliers(config or settings.suppliers_config)
    store = CursorStore(settings.connectors_state_path)
    emitter = KafkaEmitter.create(settings.confluent_config(),
                                  deltas_topic=settings.topic(DELTAS.name),
                                  dead_letter_topic=settings.topic(DEADLETTER.name))
    # The entry point resolves the secrets the file names by environment variable; the
    # connectors themselves only ever receive the values.
    service = ConnectorService(parsed, emitter=emitter, store=store, environ=dict(os.environ),
                               environment=settings.environment, only=supplier)
    if settings.connectors_metrics_port:
        start_http_server(settings.connectors_metrics_port, addr=settings.bind_host)
    log = get_logger("stockflow.connectors")

    async def main() -> None:
        stop = asyncio.Event()
        _stop_on_signals(stop)
        await service.run(stop)

    log.info("connectors starting", config=str(config or settings.suppliers_config),
             state=str(settings.connectors_state_path),
             metrics_port=settings.connectors_metrics_port)
    try:
        asyncio.run(main())
    finally:
        emitter.close()
        store.close()
        tracing.shutdown()  # export the spans still buffered


def register(app: typer.Typer) -> None:
    app.add_typer(connectors_app, name="connectors")
