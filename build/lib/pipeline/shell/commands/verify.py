"""`stockflow verify`: refold the log, compare it with Cassandra, Redis and the worker's tables."""

from __future__ import annotations

import json
import sys
import time
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from pipeline.errors import StockflowError
from pipeline.log import get_logger

if TYPE_CHECKING:
    from rich.progress import Progress as RichProgressBar
    from rich.progress import TaskID

    from connectors.logtools.verification import Progress

console = Console()
log = get_logger(__name__)


class BarProgress:
    """A rich progress bar per phase on stderr (a terminal)."""

    def __init__(self) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

        self.bar: RichProgressBar = Progress(
            TextColumn("{task.description:<22}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[rate]:>10}"), TimeElapsedColumn(),
            console=Console(stderr=True))
        self.task: TaskID | None = None
        self.done = 0
        self.shown = 0.0
        self.started = 0.0

    def start(self, phase: str, total: int | None) -> None:
        if self.task is None and not self.bar.live.is_started:
            self.bar.start()
        self.task = self.bar.add_task(phase, total=total, rate="")
        self.done, self.started = 0, time.monotonic()

    def advance(self, n: int = 1) -> None:
        self.done += n
        now = time.monotonic()
        if now - self.shown > 0.2:  # a redraw per key would cost more than the key
            self.shown = now
            self._show(now)

    def _show(self, now: float) -> None:
        if self.task is not None:
            rate = self.done / max(now - self.started, 1e-6)
            self.bar.update(self.task, completed=self.done, rate=f"{rate:,.0f}/s")

    def finish(self) -> None:
        self._show(time.monotonic())
        if self.task is not None:
            # A total read before the phase is an estimate (SKUs added meanwhile).
            self.bar.update(self.task, total=self.done)

    def close(self) -> None:
        if self.bar.live.is_started:
            self.bar.stop()


class LogProgress:
    """A log line per phase every `every_s` seconds and at its end (not a terminal: cron)."""

    def __init__(self, every_s: float = 10.0) -> None:
        self.every_s = every_s
        self.phase = ""
        self.total: int | None = None
        self.done = 0
        self.started = self.last = 0.0

    def start(self, phase: str, total: int | None) -> None:
        self.phase, self.total, self.done = phase, total, 0
        self.started = self.last = time.monotonic()

    def advance(self, n: int = 1) -> None:
        self.done += n
        now = time.monotonic()
        if now - self.last >= self.every_s:
            self.last = now
            self._line("verify.progress", now)

    def finish(self) -> None:
        self._line("verify.phase_done", time.monotonic())

    def _line(self, event: str, now: float) -> None:
        elapsed = now - self.started
        log.info(event, phase=self.phase, done=self.done, total=self.total,
                 seconds=round(elapsed, 1), per_s=round(self.done / max(elapsed, 1e-6)))

    def close(self) -> None:
        pass


def _print(report: dict[str, Any], show: int) -> None:
    table = Table(title=f"stockflow verify: {report['log_records']} log records, "
                        f"{report['platform_skus']} platform SKUs, "
                        f"{report['supplier_skus']} supplier SKUs")
    for col in ("store", "checked", "drift", "ahead (newer than the log)", "absent"):
        table.add_column(col)
    for store, s in report["stores"].items():
        table.add_row(store, str(s["checked"]), str(s["drift"]), str(s["ahead"]),
                      str(s["absent"]))
    console.print(table)
    phases = ", ".join(f"{k} {t:.1f}s" for k, t in report["phases_s"].items())
    console.print(f"{phases}; connections {report['connections']}", highlight=False)
    if report["rechecked"]:
        console.print(f"re-checked {report['rechecked']} keys after {report['settle_s']:.0f}s",
                      highlight=False)
    from connectors.logtools.compare import Difference

    for d in report["differences"][:show]:
        diff = Difference(d["store"], d["key"], d["entry"], d["kind"], d["expected"], d["found"])
        # One line per difference, never wrapped: grep and tests read them.
        console.print(f"  {diff.describe()}", highlight=False, markup=False, soft_wrap=True)
    hidden = len(report["differences"]) - show + report["differences_not_listed"]
    if hidden > 0:
        console.print(f"  ... and {hidden} more (--show N, --json)", highlight=False)
    if report["drift"]:
        console.print(f"[red]DRIFT[/]: {report['drift']} differences "
                      f"({report['drift_by_kind']}) in {report['seconds']:.1f}s;"
                      " see docs/runbook.md")
    else:
        console.print(f"[green]OK[/]: no drift ({report['seconds']:.1f}s)")


def verify(
    sample: Annotated[int | None, typer.Option(
        "--sample", min=1, help="check N random platform SKUs instead of all")] = None,
    settle: Annotated[float, typer.Option(
        help="seconds to wait before re-checking differences the worker may still be "
             "writing (0: no re-check)")] = 10.0,
    cache: Annotated[bool, typer.Option("--cache/--no-cache", help="compare Redis")] = True,
    tables: Annotated[bool, typer.Option(
        "--tables/--no-tables", help="compare the worker's tables (their changelogs)")] = True,
    require_cache: Annotated[bool, typer.Option(
        "--require-cache", help="an absent Redis hash is drift (default: a cache miss)")]
    = False,
    show: Annotated[int, typer.Option(help="differences to print")] = 20,
    seed: Annotated[int | None, typer.Option(help="random seed of --sample")] = None,
    as_json: Annotated[bool, typer.Option(
        "--json", help="print the report as JSON on stdout, no progress")] = False,
    max_listed: Annotated[int, typer.Option(
        "--max-listed", min=0, help="differences listed in the report (all are counted)")]
    = 10_000,
) -> None:
    """Recompute state from inventory.deltas and compare; exit 1 on drift, 2 on error.

    Drift: an entry older than the log says (after a re-check), missing, unexpected, or with
    the same version but other values. A store ahead of the folded log (the worker wrote it
    after the log was read) is not drift. The stores are streamed in fixed-size batches.
    """
    from connectors.logtools.verification import NoProgress, verify_stores
    from pipeline.settings import get_settings

    progress: Progress
    progress = NoProgress() if as_json else (
        BarProgress() if sys.stderr.isatty() else LogProgress())
    try:
        report = verify_stores(get_settings(), progress, sample=sample, seed=seed,
                               settle=settle, max_listed=max_listed, cache=cache,
                               tables=tables, require_cache=require_cache)
    except StockflowError as exc:
        if not as_json:
            raise  # the CLI prints "error: ..." and exits 2
        print(json.dumps({"status": "error", "error": str(exc)}))
        raise typer.Exit(2) from exc
    finally:
        close = getattr(progress, "close", None)
        if close is not None:
            close()
    if as_json:
        print(json.dumps(report, default=str))
    else:
        _print(report, show)
    if report["drift"]:
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    """Add `stockflow verify`."""
    app.command("verify")(verify)
