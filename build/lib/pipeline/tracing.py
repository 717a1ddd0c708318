"""OpenTelemetry tracing of supplier records, from the connector to the Redis write.

`configure(settings, service)` is called once by each entry point (worker, connectors). While
`ENABLED` is False (the default) nothing here creates a span or reads a header: agents and
connectors test `tracing.ENABLED` once per batch / request and take their untraced path.

A record's trace context travels in its Kafka headers as a W3C `traceparent`. Where a record
enters (a webhook request, a poll page, a CSV file) the connector opens a span; each record
sent gets a child span whose context goes into its headers. The sampled flag is decided
there, by `tracing_sample_ratio`. In the worker every agent batch that carries a recorded
record gets one batch span linked to those records' contexts, with child spans for the
Cassandra and Redis writes; and each recorded record gets, in its own trace, a span per
agent (and its Cassandra write, Redis write or dead letter), timed like its batch, whose
context goes into the headers of what the record caused (StockUpdate, InventoryChange,
DeadLetter). So one record's trace reads from the supplier to Redis.

Recorded whatever the ratio: dead letters (`tracing_always_sample_dead_letters`) and records
that waited in a topic longer than `tracing_slow_record_s`; their spans are forced through the
sampler with the `stockflow.sampled` attribute. Only recorded records' outputs carry a
traceparent on: at a low ratio the others cost the worker one header read and nothing else.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pipeline.errors import StockflowError

ENABLED = False
TRACEPARENT = "traceparent"
FORCE = "stockflow.sampled"  # attribute that makes the sampler record a span

_tracer: Any = None
_provider: Any = None
_always_dead_letters = True
_slow_ms = 0


class TracingError(StockflowError):
    """Tracing settings that cannot work (a file exporter without a file)."""


def configure(settings: Any, service: str) -> None:
    """Set up the tracer provider and exporter from settings; nothing when tracing is off."""
    global ENABLED, _tracer, _provider, _always_dead_letters, _slow_ms
    if not settings.tracing_enabled:
        ENABLED = False
        return
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor

    provider = TracerProvider(resource=Resource.create({"service.name": service}),
                              sampler=_sampler(settings.tracing_sample_ratio))
    if settings.tracing_exporter == "file":
        if settings.tracing_file is None:
            raise TracingError("STOCKFLOW_TRACING_EXPORTER=file needs STOCKFLOW_TRACING_FILE")
        # Written as each span ends: a file is for tests and one-machine debugging.
        exporter: Any = JsonLinesExporter(settings.tracing_file)  # SpanExporter's protocol
        provider.add_span_processor(SimpleSpanProcessor(exporter))
    else:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(
            OTLPSpanExporter(endpoint=settings.tracing_endpoint)))
    _provider = provider
    _tracer = provider.get_tracer("stockflow")
    _always_dead_letters = settings.tracing_always_sample_dead_letters
    _slow_ms = int(settings.tracing_slow_record_s * 1000)
    ENABLED = True


def shutdown() -> None:
    """Export what is buffered and stop (at the end of a process)."""
    global ENABLED, _tracer, _provider
    if _provider is not None:
        _provider.shutdown()
    ENABLED, _tracer, _provider = False, None, None


def _sampler(ratio: float) -> Any:
    from opentelemetry.sdk.trace.sampling import (
        Decision,
        ParentBased,
        Sampler,
        SamplingResult,
        TraceIdRatioBased,
    )
    from opentelemetry.trace import get_current_span

    class RecordSampler(Sampler):
        """The parent's decision (a ratio at the root), unless a span is forced."""

        def __init__(self) -> None:
            self._default = ParentBased(TraceIdRatioBased(ratio))

        def should_sample(self, parent_context: Any, trace_id: int, name: str,
                          kind: Any = None, attributes: Any = None, links: Any = None,
                          trace_state: Any = None) -> SamplingResult:
            if attributes and attributes.get(FORCE):
                parent = get_current_span(parent_context).get_span_context()
                return SamplingResult(Decision.RECORD_AND_SAMPLE, attributes,
                                      parent.trace_state if parent.is_valid else None)
            return self._default.should_sample(parent_context, trace_id, name, kind,
                                               attributes, links, trace_state)

        def get_description(self) -> str:
            return f"StockflowSampler{{ratio={ratio}}}"

    return RecordSampler()


# -- the traceparent header -------------------------------------------------------------------
def format_traceparent(span_context: Any) -> bytes:
    """The W3C traceparent of a span context."""
    return (f"00-{span_context.trace_id:032x}-{span_context.span_id:016x}-"
            f"{int(span_context.trace_flags):02x}").encode()


def parse_traceparent(value: bytes | str | None) -> Any:
    """The remote span context of a traceparent header; None when absent or malformed."""
    from opentelemetry.trace import SpanContext, TraceFlags

    if value is None:
        return None
    if isinstance(value, bytes):
        try:
            value = value.decode("ascii")
        except UnicodeDecodeError:
            return None
    parts = value.strip().split("-")
    if len(parts) < 4 or len(parts[0]) != 2 or parts[0] == "ff" or len(parts[1]) != 32 \
            or len(parts[2]) != 16 or len(parts[3]) != 2:
        return None
    try:
        trace_id, span_id, flags = int(parts[1], 16), int(parts[2], 16), int(parts[3], 16)
    except ValueError:
        return None
    if trace_id == 0 or span_id == 0:
        return None
    return SpanContext(trace_id, span_id, is_remote=True, trace_flags=TraceFlags(flags & 1))


def headers_of(span_context: Any) -> list[tuple[str, bytes]] | None:
    """Kafka record headers carrying a span context (None for no context)."""
    if span_context is None:
        return None
    return [(TRACEPARENT, format_traceparent(span_context))]


def raw_traceparent(msg: Any) -> bytes | None:
    """The traceparent header of a confluent-kafka message as it came, or None."""
    headers = msg.headers()
    if not headers:
        return None
    for name, value in headers:
        if name == TRACEPARENT:
            return value if isinstance(value, bytes) else None
    return None


# The flags are a traceparent's last two hex digits and "sampled" is bit 0: an odd last digit.
_SAMPLED_LAST_DIGITS = frozenset(b"13579bdfBDF")


def context_of_message(msg: Any) -> Any:
    """The span context in a confluent-kafka message's headers, or None."""
    headers = msg.headers()
    if not headers:
        return None
    for name, value in headers:
        if name == TRACEPARENT:
            return parse_traceparent(value)
    return None


def _parent(span_context: Any) -> Any:
    from opentelemetry import trace

    if span_context is None:
        return None
    return trace.set_span_in_context(trace.NonRecordingSpan(span_context))


# -- connectors -------------------------------------------------------------------------------
@contextmanager
def receive_span(name: str, start_ns: int | None = None, **attributes: Any) -> Iterator[Any]:
    """The span of one received request, page or file; the current span while it runs.

    `start_ns`: when the receiving began (a page's request), if before the block. Yields the
    span (None when tracing is off) so the caller can add what it learns."""
    if not ENABLED:
        yield None
        return
    from opentelemetry.trace import SpanKind

    with _tracer.start_as_current_span(
            name, kind=SpanKind.CONSUMER, start_time=start_ns,
            attributes={f"stockflow.{k}": v for k, v in attributes.items()
                        if v is not None}) as span:
        yield span


def start_send_spans(topic: str, records: Sequence[dict[str, Any]],
                     record_type: str) -> list[Any]:
    """One producer span per record, children of the current span (the receive span).

    Dead letters are recorded whatever the ratio when the settings say so; their span is
    named after the reason, and it ends their trace."""
    from opentelemetry.trace import SpanKind

    spans = []
    dead = record_type == "DeadLetter"
    for record in records:
        attributes: dict[str, Any] = {"messaging.destination.name": topic}
        for field in ("event_id", "supplier_id", "sku"):
            value = record.get(field)
            if value is not None:
                attributes[f"stockflow.{field}"] = str(value)
        if dead:
            attributes["stockflow.dead_letter.reason"] = str(record.get("reason"))
            attributes["stockflow.dead_letter.detail"] = str(record.get("message"))[:500]
            if _always_dead_letters:
                attributes[FORCE] = True
            name = f"dead_letter {record.get('reason')}"
        else:
            name = f"{topic} send"
        spans.append(_tracer.start_span(name, kind=SpanKind.PRODUCER, attributes=attributes))
    return spans


def end_spans(spans: Sequence[Any], error: BaseException | None = None) -> None:
    """End producer spans once Kafka acknowledged (or refused) their records."""
    from opentelemetry.trace import StatusCode

    for span in spans:
        if error is not None:
            span.set_status(StatusCode.ERROR, f"{type(error).__name__}: {error}")
        span.end()


# -- worker -----------------------------------------------------------------------------------
Position = tuple[int, int]  # (partition, offset) of an input record


class BatchTrace:
    """The spans of one agent batch; made only while tracing is on (`batch_trace`)."""

    def __init__(self, agent: str, topic: str, records: Sequence[Any], now_ms: int) -> None:
        self.agent = agent
        self.topic = topic
        self.start_ns = time.time_ns()
        self.size = len(records)
        # The traceparent each record carried, as bytes: only the recorded ones (sampled,
        # slow, dead letters) are parsed, when their span is made.
        self.incoming: dict[Position, bytes] = {}
        self.wanted: set[Position] = set()
        # (partition, key) of the recorded records: where process_deltas finds their outputs.
        self.wanted_keys: set[tuple[int, bytes | None]] = set()
        # id(message) -> its index in the batch, for the recorded records.
        self.wanted_msgs: dict[int, int] = {}
        slow_ms = _slow_ms
        incoming, wanted = self.incoming, self.wanted
        # Inlined: this loop runs for every record of every batch while tracing is on.
        for index, msg in enumerate(records):
            headers = msg.headers()
            if headers:
                for name, value in headers:
                    if name == TRACEPARENT and isinstance(value, bytes):
                        pos = (msg.partition(), msg.offset())
                        incoming[pos] = value
                        if value and value[-1] in _SAMPLED_LAST_DIGITS:
                            wanted.add(pos)
                            self.wanted_keys.add((pos[0], msg.key()))
                            self.wanted_msgs[id(msg)] = index
                        break
            if slow_ms and now_ms - msg.timestamp()[1] > slow_ms:
                wanted.add((msg.partition(), msg.offset()))
                self.wanted_keys.add((msg.partition(), msg.key()))
                self.wanted_msgs[id(msg)] = index
        self.links: list[Any] = []
        self.children: list[tuple[str, int, int, dict[str, Any]]] = []

    def is_recorded(self, pos: Position, force: bool = False) -> bool:
        """Whether `record` would make spans for this record (callers skip building its
        attributes otherwise)."""
        return force or pos in self.wanted

    def child(self, name: str, start_ns: int, end_ns: int, **attributes: Any) -> None:
        """A child span of the batch span (a Cassandra or Redis write of the whole batch)."""
        self.children.append((name, start_ns, end_ns, attributes))

    def record(self, pos: Position, *, attributes: dict[str, Any],
               steps: Sequence[tuple[str, int, int, dict[str, Any]]] = (),
               force: bool = False, end_ns: int | None = None) -> Any:
        """Record one input record's span (and its `steps`, nested) in the record's trace.

        Returns the context to put in the headers of what the record caused: the innermost
        new span; None when the record is not recorded (its outputs carry no header)."""
        if not (force or pos in self.wanted):
            return None
        incoming = parse_traceparent(self.incoming.get(pos))
        from opentelemetry import trace
        from opentelemetry.trace import SpanKind

        attrs = {k: v for k, v in attributes.items() if v is not None}
        attrs.update({FORCE: True, "messaging.source.name": self.topic,
                      "messaging.kafka.partition": pos[0], "messaging.kafka.offset": pos[1]})
        span = _tracer.start_span(self.agent, context=_parent(incoming),
                                  kind=SpanKind.CONSUMER, attributes=attrs,
                                  start_time=self.start_ns)
        ctx = span.get_span_context()
        # The batch span links to the context the record carried (its own span if none).
        self.links.append(incoming if incoming is not None else ctx)
        parent = trace.set_span_in_context(span)
        inner = []
        for name, start, end, step_attrs in steps:
            step = _tracer.start_span(name, context=parent, start_time=start,
                                      attributes={FORCE: True, **step_attrs})
            inner.append((step, end))
            ctx = step.get_span_context()
            parent = trace.set_span_in_context(step)
        for step, end in reversed(inner):
            step.end(end_time=end)
        span.end(end_time=end_ns if end_ns is not None else time.time_ns())
        return ctx

    def finish(self) -> None:
        """The batch span, linked to every recorded record; none if no record was recorded."""
        if not self.links:
            return
        from opentelemetry import trace
        from opentelemetry.trace import Link

        span = _tracer.start_span(
            f"{self.agent} batch", start_time=self.start_ns,
            links=[Link(c) for c in self.links],
            attributes={FORCE: True, "messaging.source.name": self.topic,
                        "messaging.batch.message_count": self.size,
                        "stockflow.recorded_records": len(self.links)})
        parent = trace.set_span_in_context(span)
        for name, start, end, attributes in self.children:
            _tracer.start_span(name, context=parent, start_time=start,
                               attributes={FORCE: True, **attributes}).end(end_time=end)
        span.end()


def batch_trace(agent: str, topic: str, records: Sequence[Any], now_ms: int) -> BatchTrace:
    """The trace of one batch; call only when `ENABLED` (checked once per batch)."""
    return BatchTrace(agent, topic, records, now_ms)


def dead_letters_recorded() -> bool:
    return _always_dead_letters


# -- a file of spans ----------------------------------------------------------------------------
class JsonLinesExporter:
    """A span exporter that appends one JSON object per span to a file."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()

    def export(self, spans: Sequence[Any]) -> Any:
        from opentelemetry.sdk.trace.export import SpanExportResult

        data = "".join(json.dumps(span_to_dict(s), separators=(",", ":")) + "\n"
                       for s in spans).encode()
        # One O_APPEND write: processes sharing the file never interleave within a line.
        with self._lock:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                os.write(fd, data)
            finally:
                os.close(fd)
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        return None

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True


def span_to_dict(span: Any) -> dict[str, Any]:
    """A finished span as plain data (the file exporter's line, `stockflow trace`'s input)."""
    ctx = span.get_span_context()
    return {
        "name": span.name,
        "service": span.resource.attributes.get("service.name"),
        "trace_id": f"{ctx.trace_id:032x}",
        "span_id": f"{ctx.span_id:016x}",
        "parent_span_id": f"{span.parent.span_id:016x}" if span.parent else None,
        "start_ns": span.start_time,
        "end_ns": span.end_time,
        "attributes": {k: v for k, v in (span.attributes or {}).items() if k != FORCE},
        "links": [{"trace_id": f"{link.context.trace_id:032x}",
                   "span_id": f"{link.context.span_id:016x}"} for link in span.links],
        "status": span.status.status_code.name,
    }
