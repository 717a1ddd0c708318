"""`stockflow worker`, `stockflow produce FILE.jsonl` and `stockflow topics create`."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from pipeline.topics import DELTAS

console = Console()

topics_app = typer.Typer(help="Kafka topics of stockflow (declared in pipeline/topics.py).",
                         no_args_is_help=True)

DELTA_DEFAULTS: dict[str, Any] = {
    "price": None, "currency": None, "warehouse": None, "lead_time_days": None,
    "status": "ACTIVE", "connector": "cli",
}


def canonical_delta(obj: dict[str, Any], now_ms: int) -> dict[str, Any]:
    """A SupplierDelta dict from a JSON object: defaults filled, nothing else changed."""
    delta = {**DELTA_DEFAULTS, **obj}
    delta.setdefault("received_at", now_ms)
    delta.setdefault("observed_at", now_ms)
    return delta


def worker() -> None:
    """Run the stockflow worker: validate, dedup, apply, aggregate, sink, cache."""
    from topologies.run import run_worker

    run_worker()


def produce(
    file: Annotated[Path, typer.Argument(help="JSON lines, one SupplierDelta each ('-' = stdin)")],
    topic: Annotated[str, typer.Option(help="logical topic")] = DELTAS.name,
) -> None:
    """Send canonical events from JSON lines to inventory.deltas (for demos and tests)."""
    from rich.progress import Progress

    from connectors.delta_producer import DeltaProducer
    from pipeline.errors import SchemaError
    from pipeline.settings import get_settings

    settings = get_settings()
    lines = sys.stdin.read().splitlines() if str(file) == "-" else \
        file.read_text(encoding="utf-8").splitlines()
    now = int(time.time() * 1000)
    sent = bad = 0
    with DeltaProducer(settings.confluent_config(), settings.topic(topic)) as producer, \
            Progress(console=console, transient=True) as progress:
        task = progress.add_task("producing", total=len(lines))
        for n, line in enumerate(lines, 1):
            progress.advance(task)
            if not line.strip():
                continue
            try:
                producer.produce(canonical_delta(json.loads(line), now))
                sent += 1
            except (json.JSONDecodeError, SchemaError, KeyError, TypeError) as exc:
                bad += 1
                console.print(f"[red]line {n}:[/] {exc}", highlight=False)
    console.print(f"sent {sent} events to {settings.topic(topic)}"
                  + (f", {bad} lines rejected" if bad else ""))
    if bad:
        raise typer.Exit(1)


@topics_app.command("create")
def topics_create() -> None:
    """Create the topics and bring their configs up to date (idempotent)."""
    from pipeline.settings import get_settings
    from pipeline.topics import create_topics

    for name, action in create_topics(get_settings()):
        console.print(f"{action:8} {name}")


@topics_app.command("list")
def topics_list() -> None:
    """The declared topics: key, value record, retention."""
    from pipeline.settings import get_settings
    from pipeline.topics import TOPICS

    settings = get_settings()
    for spec in TOPICS:
        conf = spec.config(settings)
        console.print(f"{settings.topic(spec.name):28} key={spec.key:18} "
                      f"value={spec.value_record:16} {conf}", highlight=False)


def register(app: typer.Typer) -> None:
    app.command("worker")(worker)
    app.command("produce")(produce)
    app.add_typer(topics_app, name="topics")
