"""The recorded OpenTelemetry spans of one event, for `stockflow trace`: from Jaeger or a span file.

Spans are found by their `stockflow.event_id` attribute; every span of the traces that hold
one is returned (the connector's request span, the worker's steps, the Cassandra and Redis
writes), as the plain dicts of `pipeline.tracing.span_to_dict`.
"""

from __future__ import annotations

import json
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.settings import Settings

SERVICES = ("stockflow-connectors", "stockflow-worker")
MAX_TRACES = 20  # an event id sent many times (redeliveries) has a trace each
MAX_LINE_BYTES = 1_000_000
LOOKBACK_S = 7 * 24 * 3600  # how far back Jaeger is searched


@dataclass
class SpanLookup:
    """What was found, where it was looked for, and why not when it could not be read."""

    source: str
    spans: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None


def find_spans(settings: Settings, event_id: str) -> SpanLookup:
    """The spans of the traces that carry `event_id`: from the span file when the settings
    export to one, else from Jaeger's query API at `tracing_query_url`."""
    if settings.tracing_exporter == "file" and settings.tracing_file is not None:
        return spans_from_file(settings.tracing_file, event_id)
    return spans_from_jaeger(settings.tracing_query_url, event_id)


def spans_from_file(path: Path, event_id: str) -> SpanLookup:
    """Two passes over a JSON-lines span file: the traces naming the event, then their spans."""
    source = str(path)
    if not path.is_file():
        return SpanLookup(source, error="no span file")
    needle = json.dumps(event_id)
    trace_ids: set[str] = set()
    try:
        for span in _read_lines(path, needle):
            if span.get("attributes", {}).get("stockflow.event_id") == event_id:
                trace_ids.add(span["trace_id"])
                if len(trace_ids) >= MAX_TRACES:
                    break
        if not trace_ids:
            return SpanLookup(source)
        spans = [s for s in _read_lines(path, None) if s.get("trace_id") in trace_ids]
    except OSError as exc:
        return SpanLookup(source, error=f"span file not readable: {exc}")
    return SpanLookup(source, spans=spans)


def _read_lines(path: Path, needle: str | None) -> Any:
    with path.open("rb") as f:
        for raw in f:
            if len(raw) > MAX_LINE_BYTES:
                continue
            line = raw.decode("utf-8", "replace")
            if needle is not None and needle not in line:
                continue  # most lines: no JSON decoding
            try:
                span = json.loads(line)
            except ValueError:
                continue  # a line cut by a crash
            if isinstance(span, dict) and "trace_id" in span:
                yield span


def _get_json(url: str, timeout: float = 5.0) -> Any:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(url, timeout=timeout) as response:
        return json.loads(response.read(20_000_000))


def spans_from_jaeger(base_url: str, event_id: str) -> SpanLookup:
    """Search each stockflow service for the tag, then read the whole traces found."""
    base = base_url.rstrip("/")
    tags = json.dumps({"stockflow.event_id": event_id})
    trace_ids: list[str] = []
    try:
        for service in SERVICES:
            now_us = int(time.time() * 1_000_000)
            query = urllib.parse.urlencode({"service": service, "tags": tags,
                                            "limit": MAX_TRACES, "end": now_us,
                                            "start": now_us - LOOKBACK_S * 1_000_000})
            for trace in _get_json(f"{base}/api/traces?{query}").get("data") or []:
                if trace["traceID"] not in trace_ids:
                    trace_ids.append(trace["traceID"])
        spans: list[dict[str, Any]] = []
        for trace_id in trace_ids[:MAX_TRACES]:
            for trace in _get_json(f"{base}/api/traces/{trace_id}").get("data") or []:
                spans.extend(jaeger_spans(trace))
    except (OSError, ValueError, KeyError) as exc:
        return SpanLookup(base, error=f"Jaeger at {base} not readable: {exc}")
    return SpanLookup(base, spans=spans)


def jaeger_spans(trace: dict[str, Any]) -> list[dict[str, Any]]:
    """One trace of Jaeger's query API (`/api/traces/ID`) as span dicts."""
    processes = trace.get("processes") or {}
    out = []
    for span in trace.get("spans") or []:
        parent = next((r["spanID"] for r in span.get("references") or []
                       if r.get("refType") == "CHILD_OF"), None)
        links = [{"trace_id": r["traceID"], "span_id": r["spanID"]}
                 for r in span.get("references") or [] if r.get("refType") == "FOLLOWS_FROM"]
        start_ns = int(span["startTime"]) * 1000
        out.append({
            "name": span["operationName"],
            "service": processes.get(span.get("processID"), {}).get("serviceName"),
            "trace_id": span["traceID"].rjust(32, "0"),
            "span_id": span["spanID"].rjust(16, "0"),
            "parent_span_id": parent.rjust(16, "0") if parent else None,
            "start_ns": start_ns,
            "end_ns": start_ns + int(span.get("duration", 0)) * 1000,
            "attributes": {t["key"]: t["value"] for t in span.get("tags") or []},
            "links": links,
        })
    return out


SHOWN = ("stockflow.outcome", "stockflow.dead_letter.reason", "stockflow.rows",
         "stockflow.changes", "http.response.status_code", "stockflow.file")


def timeline(spans: list[dict[str, Any]]) -> list[str]:
    """Each trace as an indented tree, offsets and durations in ms from the trace's start."""
    lines: list[str] = []
    by_trace: dict[str, list[dict[str, Any]]] = {}
    for span in spans:
        by_trace.setdefault(span["trace_id"], []).append(span)
    for trace_id, members in sorted(by_trace.items(),
                                    key=lambda t: min(s["start_ns"] for s in t[1])):
        t0 = min(s["start_ns"] for s in members)
        t1 = max(s["end_ns"] for s in members)
        lines.append(f"trace {trace_id}: {len(members)} spans, {(t1 - t0) / 1e6:.1f} ms")
        ids = {s["span_id"] for s in members}
        children: dict[str | None, list[dict[str, Any]]] = {}
        for span in members:
            parent = span["parent_span_id"] if span["parent_span_id"] in ids else None
            children.setdefault(parent, []).append(span)
        _walk(children, None, 0, t0, lines)
    return lines


def _walk(children: dict[str | None, list[dict[str, Any]]], parent: str | None, depth: int,
          t0: int, lines: list[str]) -> None:
    if depth > 64:  # a cycle in a hand-edited file
        return
    for span in sorted(children.get(parent, []), key=lambda s: s["start_ns"]):
        notes = " ".join(f"{k.removeprefix('stockflow.')}={span['attributes'][k]}"
                         for k in SHOWN if k in span["attributes"])
        lines.append(f"  {(span['start_ns'] - t0) / 1e6:>9.1f} ms  "
                     f"{(span['end_ns'] - span['start_ns']) / 1e6:>8.1f} ms  "
                     f"{'  ' * depth}{span['name']} [{span.get('service') or '?'}]"
                     + (f"  {notes}" if notes else ""))
        _walk(children, span["span_id"], depth + 1, t0, lines)
