"""`stockflow trace`'s span lookup: Jaeger's query API format and the timeline it prints."""

from __future__ import annotations

import json
from pathlib import Path

from connectors.logtools.trace_spans import jaeger_spans, spans_from_file, timeline

# The shape of GET /api/traces/<id> from Jaeger's query service (one trace, two services).
JAEGER_TRACE = {
    "traceID": "f6016b80a037e0a66e2715444f6f7628",
    "spans": [
        {"traceID": "f6016b80a037e0a66e2715444f6f7628", "spanID": "00000000000000a1",
         "operationName": "webhook receive", "references": [], "startTime": 1_000_000,
         "duration": 8700, "tags": [{"key": "stockflow.supplier_id", "type": "string",
                                     "value": "bolt-hooks"}], "processID": "p1"},
        {"traceID": "f6016b80a037e0a66e2715444f6f7628", "spanID": "b2",
         "operationName": "process_deltas",
         "references": [{"refType": "CHILD_OF", "traceID": "f6016b80a037e0a66e2715444f6f7628",
                         "spanID": "00000000000000a1"}],
         "startTime": 1_004_000, "duration": 500,
         "tags": [{"key": "stockflow.outcome", "type": "string", "value": "applied"}],
         "processID": "p2"},
    ],
    "processes": {"p1": {"serviceName": "stockflow-connectors"},
                  "p2": {"serviceName": "stockflow-worker"}},
}


def test_jaeger_trace_becomes_span_dicts_and_a_tree() -> None:
    spans = jaeger_spans(JAEGER_TRACE)
    assert [(s["name"], s["service"], s["parent_span_id"]) for s in spans] == [
        ("webhook receive", "stockflow-connectors", None),
        ("process_deltas", "stockflow-worker", "00000000000000a1")]
    assert spans[1]["span_id"] == "00000000000000b2"
    assert (spans[1]["start_ns"], spans[1]["end_ns"]) == (1_004_000_000, 1_004_500_000)
    lines = timeline(spans)
    assert lines[0] == "trace f6016b80a037e0a66e2715444f6f7628: 2 spans, 8.7 ms"
    assert lines[1].split() == ["0.0", "ms", "8.7", "ms", "webhook", "receive",
                                "[stockflow-connectors]"]
    assert lines[2].split()[:5] == ["4.0", "ms", "0.5", "ms", "process_deltas"]
    assert lines[2].index("process_deltas") > lines[1].index("webhook")  # nested
    assert lines[2].endswith("outcome=applied")


def test_span_file_lookup_takes_whole_traces_and_skips_damaged_lines(tmp_path: Path) -> None:
    path = tmp_path / "spans.jsonl"

    def span(trace: str, span_id: str, name: str, **attributes: str) -> str:
        return json.dumps({"name": name, "trace_id": trace, "span_id": span_id,
                           "parent_span_id": None, "start_ns": 1, "end_ns": 2,
                           "attributes": attributes, "links": []})

    path.write_text("\n".join([
        span("t1", "s1", "webhook receive"),
        span("t1", "s2", "process_deltas", **{"stockflow.event_id": "ev-1"}),
        '{"name": "cut by a crash", "trace_id": "t1"',
        span("t2", "s3", "process_deltas", **{"stockflow.event_id": "ev-2"}),
    ]) + "\n")
    found = spans_from_file(path, "ev-1")
    assert found.error is None
    assert [s["span_id"] for s in found.spans] == ["s1", "s2"]
    assert spans_from_file(path, "ev-3").spans == []
    assert spans_from_file(tmp_path, "ev-1").error == "no span file"
