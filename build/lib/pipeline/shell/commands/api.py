"""`stockflow api`: the public HTTP API (FastAPI on uvicorn)."""

from __future__ import annotations

from typing import Annotated

import typer


def api(
    host: Annotated[str | None, typer.Option(help="default: STOCKFLOW_API_HOST")] = None,
    port: Annotated[int | None, typer.Option(help="default: STOCKFLOW_API_PORT")] = None,
) -> None:
    """Serve /v1 (inventory, reservations, stream), the live page at / and /docs."""
    import uvicorn

    from connectors.api.app import create_app
    from pipeline import gc_tuning
    from pipeline.settings import get_settings

    settings = get_settings()
    app = create_app(settings)
    gc_tuning.tune(settings.gc_young_threshold)
    # uvloop and httptools when installed (they are, off Windows); no access log and no
    # proxy-header rewriting (nothing reads the client's address): CPU per request is what
    # limits one API process.
    uvicorn.run(app, host=host or settings.api_host,
                port=port if port is not None else settings.api_port,
                loop="auto", http="auto", log_level="warning", access_log=False,
                proxy_headers=False)


def register(app: typer.Typer) -> None:
    app.command("api")(api)
