"""The `stockflow` command: one typer app; each area adds its sub-commands here."""

from __future__ import annotations

import sys
import time
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from pipeline.errors import StockflowError
from pipeline.log import configure_logging
from pipeline.settings import get_settings

app = typer.Typer(
    name="stockflow",
    help="Exact real-time multi-supplier inventory: feeds -> Kafka -> Faust -> Cassandra + Redis.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
stack_app = typer.Typer(help="The local Kafka + Cassandra + Redis stack (no container engine).",
                        no_args_is_help=True)
app.add_typer(stack_app, name="stack")

console = Console(stderr=False)
err_console = Console(stderr=True)


@app.callback()
def _root(
    json_logs: Annotated[bool | None, typer.Option(
        "--json-logs/--console-logs", help="Log format (default: JSON unless a terminal)")] = None,
) -> None:
    settings = get_settings()
    use_json = json_logs if json_logs is not None else settings.log_json
    if use_json is None and settings.environment == "production":
        use_json = True
    configure_logging(json=use_json, level=settings.log_level)


def _stack():
    from pipeline.shell.stack import LocalStack

    return LocalStack(get_settings())


def _cluster(brokers: int):
    from pipeline.shell.stack import KafkaCluster

    return KafkaCluster(get_settings(), brokers)


def print_status(brokers: int = 1) -> bool:
    """Print the stack's status table; True when every service is up."""
    rows = _cluster(brokers).status() if brokers > 1 else _stack().status()
    table = Table(title="stockflow local stack")
    for col in ("service", "state", "pid", "port", "version"):
        table.add_column(col)
    colors = {"up": "green", "starting": "yellow", "down": "red", "foreign": "magenta"}
    for r in rows:
        table.add_row(r.name, f"[{colors.get(r.state, 'white')}]{r.state}[/]",
                      str(r.pid or "-"), str(r.port), r.version)
    console.print(table)
    return all(r.state == "up" for r in rows)


def _services(service: list[str] | None) -> list[str]:
    from pipeline.shell.stack import SERVICES

    chosen = service or list(SERVICES)
    unknown = [s for s in chosen if s not in SERVICES]
    if unknown:
        raise typer.BadParameter(f"unknown service(s) {unknown}; choose from {list(SERVICES)}")
    return chosen


@stack_app.command("up")
def stack_up(
    service: Annotated[list[str] | None, typer.Argument(help="kafka, cassandra, redis")] = None,
    brokers: Annotated[int, typer.Option(
        help="N > 1: a separate N-broker KRaft cluster on its own ports (docs/stack.md)")] = 1,
) -> None:
    """Start Kafka, Cassandra and Redis (idempotent) and wait until each answers."""
    t0 = time.monotonic()
    ready = lambda s, v, dt: console.print(f"[green]✓[/] {s} {v} ready after {dt:.1f}s")  # noqa: E731
    with console.status("starting the local stack (first run resolves jars from Maven Central)..."):
        if brokers > 1:
            _cluster(brokers).up(on_ready=ready)
        else:
            _stack().up(_services(service), on_ready=ready)
    console.print(f"stack up in {time.monotonic() - t0:.1f}s")
    print_status(brokers)


@stack_app.command("down")
def stack_down(service: Annotated[list[str] | None, typer.Argument()] = None,
               brokers: Annotated[int, typer.Option(help="N > 1: the N-broker cluster")] = 1,
               ) -> None:
    """Stop exactly the processes `stack up` started."""
    stopped = _cluster(brokers).down() if brokers > 1 else _stack().down(_services(service))
    console.print(f"stopped: {', '.join(stopped) or 'nothing was running'}")


@stack_app.command("status")
def stack_status(
    brokers: Annotated[int, typer.Option(help="N > 1: the N-broker cluster")] = 1,
) -> None:
    """One row per service: state, pid, port, version. Exit 1 unless all are up."""
    if not print_status(brokers):
        raise typer.Exit(1)


@stack_app.command("stop-broker")
def stack_stop_broker(
    node: Annotated[int, typer.Argument(help="the node id, 1..N")],
    brokers: Annotated[int, typer.Option(help="the cluster's size")] = 3,
    kill: Annotated[bool, typer.Option(help="SIGKILL (a crash) instead of SIGTERM")] = False,
) -> None:
    """Stop one broker of the N-broker cluster (`stack up --brokers N` starts it again)."""
    import signal

    sig = signal.SIGKILL if kill else signal.SIGTERM
    stopped = _cluster(brokers).stop_broker(node, sig)
    console.print(f"kafka-{node}: {'stopped' if stopped else 'was not running'}")


@stack_app.command("logs")
def stack_logs(
    service: Annotated[str, typer.Argument(help="kafka, cassandra or redis")],
    lines: Annotated[int, typer.Option("-n", "--lines")] = 50,
    follow: Annotated[bool, typer.Option("-f", "--follow")] = False,
) -> None:
    """Print the end of a service's log (and follow it with -f)."""
    stack = _stack()
    _services([service])
    console.print(stack.tail(service, lines), markup=False, highlight=False)
    if follow:
        path = stack.log_file(service)
        with path.open() as fh:
            fh.seek(0, 2)
            try:
                while True:
                    line = fh.readline()
                    if line:
                        sys.stdout.write(line)
                        sys.stdout.flush()
                    else:
                        time.sleep(0.3)
            except KeyboardInterrupt:
                pass


def _register_commands() -> None:
    """Sub-commands that live next to their area (imported lazily inside their bodies)."""
    from pipeline.shell import commands

    commands.register(app)


def main() -> None:
    """Console-script entry point: clear errors instead of tracebacks for expected failures."""
    _register_commands()
    try:
        app()
    except StockflowError as exc:
        err_console.print(f"[red]error:[/] {exc}", markup=True, highlight=False)
        sys.exit(2)


if __name__ == "__main__":
    main()
