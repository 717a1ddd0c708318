"""`stockflow simulate`: local supplier endpoints (REST, GraphQL, webhooks, FTP, SFTP), faults."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

console = Console()


def register(app: typer.Typer) -> None:
    @app.command("simulate")
    def simulate(
        config: Annotated[Path | None, typer.Option(
            "--config", "-c", help="YAML with a `simulator:` section "
                                   "(default: STOCKFLOW_SUPPLIERS_CONFIG)")] = None,
        duration: Annotated[float | None, typer.Option(
            help="stop after this many seconds (default: until Ctrl-C)")] = None,
        report_every: Annotated[float, typer.Option(help="seconds between status lines")] = 10,
    ) -> None:
        """Serve simulated suppliers whose stock keeps changing, with the configured faults."""
        from connectors.simulator.config import load_simulator_config
        from connectors.simulator.runner import Simulator
        from pipeline.log import get_logger
        from pipeline.settings import get_settings

        settings = get_settings()
        path = config or settings.suppliers_config
        sim_config = load_simulator_config(path)
        # Secrets named in the file are resolved here, at the entry point.
        sim = Simulator(sim_config, dict(os.environ), environment=settings.environment)
        log = get_logger("stockflow.simulate")

        async def main() -> None:
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, stop.set)
            await sim.start()
            table = Table(title=f"stockflow supplier simulator ({path})")
            for col in ("supplier", "feed", "SKUs", "changes/s", "endpoint"):
                table.add_column(col)
            host = sim_config.host
            for spec in sim_config.suppliers:
                endpoint = {
                    "rest": f"http://{host}:{sim.http_port}/v1/suppliers/{spec.id}/inventory",
                    "graphql": f"http://{host}:{sim.http_port}/graphql",
                    "webhook": f"-> {spec.webhook_url}",
                    "ftp": f"ftp://{spec.id}@{host}:{sim.ftp_port}/",
                    "sftp": f"sftp://{spec.id}@{host}:{sim.sftp_port}/",
                }[spec.feed]
                table.add_row(spec.id, spec.feed, str(spec.skus), f"{spec.changes_per_second:g}",
                              endpoint)
            console.print(table)
            deadline = loop.time() + duration if duration else None
            try:
                while not stop.is_set():
                    timeout = report_every if deadline is None else \
                        max(0.0, min(report_every, deadline - loop.time()))
                    try:
                        await asyncio.wait_for(stop.wait(), timeout)
                    except TimeoutError:
                        log.info("simulator status", suppliers=sim.report())
                    if deadline is not None and loop.time() >= deadline:
                        break
            finally:
                await sim.stop()

        asyncio.run(main())
