"""`stockflow top`: a live terminal view of a running pipeline, from its Prometheus endpoints.

Scrapes the worker's /metrics (and the connectors' when they run) every interval and shows
rates per stage, consumer lag, freshness quantiles over the last interval, dead letters, sink
health and the age of each supplier's last update.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Annotated, Any

import typer

Labels = frozenset[tuple[str, str]]
CIRCUIT = {0: "closed", 1: "half-open", 2: "open"}


@dataclass
class Scrape:
    """All samples of one or more endpoints at one moment: {(name, labels): value}."""

    at: float
    samples: dict[tuple[str, Labels], float] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)

    def series(self, name: str) -> dict[Labels, float]:
        return {labels: v for (n, labels), v in self.samples.items() if n == name}


def parse_samples(text: str) -> dict[tuple[str, Labels], float]:
    """Prometheus text exposition -> {(sample name, labels): value}."""
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[tuple[str, Labels], float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = float(s.value)
    return out


def scrape(urls: list[str], timeout_s: float = 3.0) -> Scrape:
    """Read every endpoint; an unreachable one is noted, not fatal."""
    import urllib.error
    import urllib.request

    result = Scrape(at=time.time())
    for url in urls:
        try:
            with urllib.request.urlopen(url, timeout=timeout_s) as resp:
                result.samples.update(parse_samples(resp.read().decode()))
        except (urllib.error.URLError, OSError, ValueError) as exc:
            result.errors.append(f"{url}: {exc}")
    return result


def label(labels: Labels, name: str) -> str:
    return dict(labels).get(name, "")


def rate(prev: Scrape | None, cur: Scrape, name: str, labels: Labels) -> float | None:
    """Per-second increase of a counter between two scrapes (None without a previous one)."""
    if prev is None or cur.at <= prev.at:
        return None
    before = prev.samples.get((name, labels))
    after = cur.samples.get((name, labels), 0.0)
    if before is None or after < before:  # new series or a restarted process
        before = 0.0
    return (after - before) / (cur.at - prev.at)


def bucket_quantile(q: float, buckets: list[tuple[float, float]]) -> float | None:
    """PromQL's histogram_quantile over cumulative (upper bound, count) buckets."""
    buckets = sorted(buckets)
    if not buckets or buckets[-1][1] <= 0:
        return None
    total = buckets[-1][1]
    rank = q * total
    prev_bound, prev_count = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if math.isinf(bound):
                return prev_bound
            if count == prev_count:
                return bound
            return prev_bound + (bound - prev_bound) * (rank - prev_count) / (count - prev_count)
        prev_bound, prev_count = bound, count
    return prev_bound


def histogram_buckets(cur: Scrape, prev: Scrape | None, name: str,
                      match: dict[str, str]) -> list[tuple[float, float]]:
    """The buckets of one histogram series: increases since prev when there are any."""
    def pick(s: Scrape) -> dict[float, float]:
        out: dict[float, float] = {}
        for labels, v in s.series(f"{name}_bucket").items():
            d = dict(labels)
            if all(d.get(k) == val for k, val in match.items()):
                le = float(d["le"])
                out[le] = out.get(le, 0.0) + v
        return out

    now = pick(cur)
    if prev is not None:
        before = pick(prev)
        delta = {le: now[le] - before.get(le, 0.0) for le in now}
        if delta and max(delta.values()) > 0 and min(delta.values()) >= 0:
            return sorted(delta.items())
    return sorted(now.items())


def _fmt_rate(value: float | None) -> str:
    return "-" if value is None else f"{value:,.1f}/s"


def _fmt_s(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value * 1000:.0f} ms" if value < 1 else f"{value:.2f} s"


def _fmt_age(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.1f}h"


def render(cur: Scrape, prev: Scrape | None, *, stale_after_s: float = 900) -> Any:
    """The whole view as one rich renderable."""
    from rich.console import Group
    from rich.table import Table

    stages = Table(title="events per stage", expand=True)
    for col in ("stage", "outcome", "rate", "total"):
        stages.add_column(col, justify="right" if col in ("rate", "total") else "left")
    for labels, total in sorted(cur.series("stockflow_events_total").items(),
                                key=lambda kv: (label(kv[0], "stage"), label(kv[0], "outcome"))):
        stages.add_row(label(labels, "stage"), label(labels, "outcome"),
                       _fmt_rate(rate(prev, cur, "stockflow_events_total", labels)),
                       f"{total:,.0f}")

    lag = Table(title="consumer lag", expand=True)
    for col in ("topic", "partitions", "lag", "max partition lag"):
        lag.add_column(col, justify="left" if col == "topic" else "right")
    per_topic: dict[str, list[float]] = {}
    for labels, v in cur.series("stockflow_consumer_lag").items():
        per_topic.setdefault(label(labels, "topic"), []).append(v)
    for topic, values in sorted(per_topic.items()):
        lag.add_row(topic, str(len(values)), f"{sum(values):,.0f}", f"{max(values):,.0f}")

    fresh = Table(title="freshness (produce -> write)", expand=True)
    for col in ("stage", "p50", "p99", "count"):
        fresh.add_column(col, justify="left" if col == "stage" else "right")
    for labels, count in sorted(cur.series("stockflow_freshness_seconds_count").items(),
                                key=lambda kv: label(kv[0], "stage")):
        stage = label(labels, "stage")
        buckets = histogram_buckets(cur, prev, "stockflow_freshness_seconds", {"stage": stage})
        fresh.add_row(stage, _fmt_s(bucket_quantile(0.5, buckets)),
                      _fmt_s(bucket_quantile(0.99, buckets)), f"{count:,.0f}")

    dead = Table(title="dead letters and drops", expand=True)
    for col in ("reason", "rate", "total"):
        dead.add_column(col, justify="left" if col == "reason" else "right")
    for labels, total in sorted(cur.series("stockflow_dropped_total").items(),
                                key=lambda kv: label(kv[0], "reason")):
        dead.add_row(label(labels, "reason"),
                     _fmt_rate(rate(prev, cur, "stockflow_dropped_total", labels)),
                     f"{total:,.0f}")

    sinks = Table(title="sinks", expand=True)
    for col in ("sink", "batches", "p99 batch", "retries", "errors"):
        sinks.add_column(col, justify="left" if col == "sink" else "right")
    retries = cur.series("stockflow_sink_retries_total")
    errors = cur.series("stockflow_sink_errors_total")
    for labels, count in sorted(cur.series("stockflow_sink_batch_seconds_count").items(),
                                key=lambda kv: label(kv[0], "sink")):
        sink = label(labels, "sink")
        buckets = histogram_buckets(cur, prev, "stockflow_sink_batch_seconds", {"sink": sink})
        n_err = sum(v for lab, v in errors.items() if label(lab, "sink") == sink)
        sinks.add_row(sink, f"{count:,.0f}", _fmt_s(bucket_quantile(0.99, buckets)),
                      f"{retries.get(frozenset({('sink', sink)}), 0):,.0f}", f"{n_err:,.0f}")

    feeds = Table(title="suppliers' feeds", expand=True)
    for col in ("supplier", "last event", "last poll", "circuit"):
        feeds.add_column(col, justify="left" if col == "supplier" else "right")
    last_event = {label(k, "supplier"): v for k, v in
                  cur.series("stockflow_supplier_last_event_timestamp_seconds").items()}
    last_poll = {label(k, "supplier"): v for k, v in
                 cur.series("stockflow_connector_last_success_timestamp_seconds").items()}
    circuit = {label(k, "supplier"): v for k, v in
               cur.series("stockflow_connector_circuit_state").items()}
    for supplier in sorted(set(last_event) | set(last_poll) | set(circuit)):
        def age(ts: float | None) -> str:
            if ts is None:
                return "-"
            seconds = max(0.0, cur.at - ts)
            text = _fmt_age(seconds)
            return f"[red]{text}[/]" if seconds > stale_after_s else text
        state = circuit.get(supplier)
        feeds.add_row(supplier, age(last_event.get(supplier)), age(last_poll.get(supplier)),
                      "-" if state is None else CIRCUIT.get(int(state), str(state)))

    ready = cur.samples.get(("stockflow_worker_ready", frozenset()))
    header = (f"stockflow top  {time.strftime('%H:%M:%S', time.localtime(cur.at))}  worker "
              + ("[green]ready[/]" if ready == 1 else "[yellow]not ready[/]" if ready == 0
                 else "[red]no metrics[/]"))
    parts: list[Any] = [header, stages, lag, fresh, dead, sinks, feeds]
    parts += [f"[red]{e}[/]" for e in cur.errors]
    return Group(*parts)


def top(
    url: Annotated[list[str] | None, typer.Option(
        help="metrics endpoint(s); default: the worker's and the connectors' ports")] = None,
    interval: Annotated[float, typer.Option(min=0.2, help="seconds between scrapes")] = 2.0,
    once: Annotated[bool, typer.Option(help="print one view (two scrapes apart) and exit")] = False,
    stale_after: Annotated[float, typer.Option(
        help="seconds after which a supplier's feed shows red")] = 900.0,
) -> None:
    """A live view of the running pipeline: rates, lag, freshness, dead letters, feed ages."""
    from rich.console import Console
    from rich.live import Live

    from pipeline.settings import get_settings

    settings = get_settings()
    urls = url or [f"http://127.0.0.1:{settings.metrics_port}/metrics",
                   f"http://127.0.0.1:{settings.connectors_metrics_port}/metrics"]
    console = Console()
    prev = scrape(urls)
    if not url:
        # The connectors may not run: drop a default endpoint that does not answer.
        urls = [u for u in urls if not any(e.startswith(u) for e in prev.errors)] or urls[:1]
        prev.errors = [e for e in prev.errors if any(e.startswith(u) for u in urls)]
    if once:
        time.sleep(interval)
        console.print(render(scrape(urls), prev, stale_after_s=stale_after))
        return
    with Live(render(prev, None, stale_after_s=stale_after), console=console,
              refresh_per_second=4, screen=False) as live:
        try:
            while True:
                time.sleep(interval)
                cur = scrape(urls)
                live.update(render(cur, prev, stale_after_s=stale_after))
                prev = cur
        except KeyboardInterrupt:
            pass


def register(app: typer.Typer) -> None:
    app.command("top")(top)
