"""One record's trace across processes: webhook request (connectors) to Redis write (worker).

Both processes append their spans to one JSON-lines file (STOCKFLOW_TRACING_EXPORTER=file),
which `stockflow trace` then reads like it reads Jaeger.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bench.pipeline_env import ROOT, PipelineEnv, free_port
from connectors.sources.webhook import SIGNATURE_HEADER, TIMESTAMP_HEADER, webhook_signature
from pipeline.shell.commands.pipeline import canonical_delta
from schemas.codec import codec_for
from tests.conftest import wait_for

pytestmark = pytest.mark.integration

SUPPLIER = "bolt-hooks"
SECRET = "trace-secret"


def read_spans(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.fixture
def traced(tmp_path: Path) -> Iterator[PipelineEnv]:
    pipeline = PipelineEnv(tmp_path, partitions=2, extra_env={
        "STOCKFLOW_TRACING_ENABLED": "true",
        "STOCKFLOW_TRACING_EXPORTER": "file",
        "STOCKFLOW_TRACING_FILE": str(tmp_path / "spans.jsonl"),
        "STOCKFLOW_TRACING_SAMPLE_RATIO": "1.0",
    })
    try:
        pipeline.setup()
        pipeline.start_worker()
        yield pipeline
    finally:
        pipeline.cleanup()


@pytest.fixture
def connectors(traced: PipelineEnv, tmp_path: Path) -> Iterator[int]:
    port = free_port()
    config = tmp_path / "suppliers.yaml"
    config.write_text(f"""
webhook_receiver: {{host: 127.0.0.1, port: {port}, tolerance_s: 300}}
suppliers:
  - id: {SUPPLIER}
    kind: webhook
    credentials: {{secret: {{env: BOLT_SECRET}}}}
    mapping: {{sku: sku, quantity: on_hand, sequence: version, event_id: id,
              observed_at: occurred_at}}
""")
    env = {**traced.env, "BOLT_SECRET": SECRET,
           "STOCKFLOW_CONNECTORS_METRICS_PORT": "0",
           "STOCKFLOW_CONNECTORS_STATE_FILE": str(tmp_path / "connectors.sqlite")}
    log = (tmp_path / "connectors.log").open("wb")
    proc = subprocess.Popen([sys.executable, "-m", "pipeline.shell.cli", "connectors", "run",
                             "--config", str(config)], env=env, cwd=ROOT, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        def up() -> bool:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as r:
                    return bool(r.status == 200)
            except OSError:
                return False
        wait_for(up, 60, message="webhook receiver up")
        yield port
    finally:
        proc.terminate()
        proc.wait(30)
        log.close()


def post(port: int, events: list[dict[str, Any]]) -> dict[str, Any]:
    body = json.dumps({"events": events}).encode()
    ts = int(time.time())
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/webhooks/{SUPPLIER}", data=body, method="POST",
        headers={TIMESTAMP_HEADER: str(ts),
                 SIGNATURE_HEADER: webhook_signature(SECRET.encode(), ts, body),
                 "Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        assert response.status == 200
        result: dict[str, Any] = json.loads(response.read())
    return result


def test_one_trace_from_the_webhook_request_to_the_redis_write(
        traced: PipelineEnv, connectors: int, tmp_path: Path) -> None:
    now = int(time.time() * 1000)
    accepted = post(connectors, [
        {"id": "ev-traced", "sku": "SKU-T1", "on_hand": 7, "version": 1, "occurred_at": now},
        # Refused by the connector itself: its trace ends in the connector's dead letter span.
        {"id": "ev-bad", "sku": "SKU-T2", "on_hand": "many", "version": 1, "occurred_at": now},
    ])
    assert accepted == {"accepted": 1, "dead_lettered": 1}
    worker_file = tmp_path / "spans.jsonl"
    event_id = f"{SUPPLIER}:ev-traced"  # the connector namespaces a supplier's event ids

    def redis_span() -> dict[str, Any] | None:
        # The aggregate agent writes Redis inline (cache_writer inline): the record's span
        # is aggregate -> cassandra.write -> redis.write.
        spans = {x["span_id"]: x for x in read_spans(worker_file)}
        for s in spans.values():
            write = spans.get(s["parent_span_id"]) if s["name"] == "redis.write" else None
            record = spans.get(write["parent_span_id"]) if write is not None else None
            if record is not None and record["name"] == "aggregate" \
                    and record["attributes"].get("stockflow.event_id") == event_id:
                return s
        return None

    wait_for(redis_span, 120, message="the worker's redis.write span of ev-traced")
    spans = read_spans(worker_file)
    receive = next(s for s in spans if s["name"] == "webhook receive")
    trace = [s for s in spans if s["trace_id"] == receive["trace_id"]]
    by_id = {s["span_id"]: s for s in trace}
    leaf = next(s for s in trace if s["name"] == "redis.write")
    chain = [leaf]
    while chain[-1]["parent_span_id"] is not None:
        chain.append(by_id[chain[-1]["parent_span_id"]])
    chain.reverse()
    deltas_topic = traced.topic("inventory.deltas")
    assert [s["name"] for s in chain] == [
        "webhook receive", f"{deltas_topic} send", "process_deltas", "aggregate",
        "cassandra.write", "redis.write"]
    assert [s["service"] for s in chain] == (["stockflow-connectors"] * 2
                                            + ["stockflow-worker"] * 4)
    starts = [s["start_ns"] for s in chain]
    assert starts == sorted(starts), "spans out of order"
    for span in chain[1:]:
        assert span["start_ns"] <= span["end_ns"]
    assert receive["attributes"]["stockflow.supplier_id"] == SUPPLIER
    for span in chain[1:]:
        if span["name"] not in ("cassandra.write", "redis.write"):
            assert span["attributes"]["stockflow.event_id"] == event_id, span
    assert chain[2]["attributes"]["stockflow.outcome"] == "applied"
    # Each agent's batch span (its own trace) links to the record's context.
    worker_spans = read_spans(worker_file)
    for agent, linked in (("process_deltas", chain[1]), ("aggregate", chain[2])):
        batch = next(s for s in worker_spans if s["name"] == f"{agent} batch"
                     and {"trace_id": linked["trace_id"], "span_id": linked["span_id"]}
                     in s["links"])
        children = {s["name"] for s in worker_spans if s["parent_span_id"] == batch["span_id"]}
        assert children == {"aggregate": {"cassandra.write", "redis.write"}}.get(agent, set())
    # The connector's dead letter: the request's trace ends in a span naming the reason.
    dead = [s for s in trace if s["name"].startswith("dead_letter ")]
    assert len(dead) == 1
    assert dead[0]["attributes"]["stockflow.dead_letter.reason"] in dead[0]["name"]
    assert not [s for s in trace if s["parent_span_id"] == dead[0]["span_id"]]
    # `stockflow trace` tells the log-based story and then the recorded timings.
    out = traced.cli("trace", event_id, "--no-sinks").stdout
    assert "applied" in out
    assert f"trace {receive['trace_id']}" in out
    lines = out[out.index(f"trace {receive['trace_id']}"):].splitlines()
    order = [next(i for i, line in enumerate(lines) if f"{name} [" in line)
             for name in ("webhook receive", "process_deltas", "aggregate",
                          "cassandra.write", "redis.write")]
    assert order == sorted(order), out


def test_a_worker_dead_letter_is_traced_even_when_not_sampled(
        traced: PipelineEnv, tmp_path: Path) -> None:
    """A record whose traceparent says 'not sampled' still gets its dead letter recorded."""
    from confluent_kafka import Producer

    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    delta = canonical_delta({"supplier_id": SUPPLIER, "sku": "SKU-D1", "quantity": 3,
                             "sequence": 1, "event_id": "ev-mismatch", "kind": "SNAPSHOT"},
                            int(time.time() * 1000))
    producer = Producer(traced.settings.confluent_config())
    producer.produce(traced.topic("inventory.deltas"), codec_for("SupplierDelta").encode(delta),
                     b"someone-else|SKU-D1",
                     headers=[("traceparent", f"00-{trace_id}-00f067aa0ba902b7-00".encode())])
    assert producer.flush(30) == 0
    worker_file = tmp_path / "spans.jsonl"

    def dead_span() -> dict[str, Any] | None:
        return next((s for s in read_spans(worker_file) if s["trace_id"] == trace_id
                     and s["name"].startswith("dead_letter ")), None)

    dead = wait_for(dead_span, 120, message="the dead letter's span")
    assert isinstance(dead, dict)
    assert dead["name"] == "dead_letter key_mismatch"
    assert dead["attributes"]["stockflow.dead_letter.reason"] == "key_mismatch"
    spans = [s for s in read_spans(worker_file) if s["trace_id"] == trace_id]
    record = next(s for s in spans if s["span_id"] == dead["parent_span_id"])
    assert record["name"] == "process_deltas"
    assert record["parent_span_id"] == "00f067aa0ba902b7"  # the context the record carried
    assert record["attributes"]["stockflow.event_id"] == "ev-mismatch"
    # It ends the trace: nothing follows the dead letter span.
    assert not [s for s in spans if s["parent_span_id"] == dead["span_id"]]
    assert max(s["end_ns"] for s in spans) == dead["end_ns"]


async def test_a_csv_file_is_one_span_and_each_record_sent_carries_its_child(
        topics: Any, tmp_path: Path) -> None:
    """The polled feeds' receive span: one per file, its records' send spans under it, and
    the traceparent on each Kafka record is that record's send span."""
    from confluent_kafka import Consumer, TopicPartition

    from connectors.sources.base import FieldMapping, RecordMapper
    from connectors.sources.csv_drop import CsvDropSource, CsvOptions
    from connectors.sources.cursor_store import CursorStore
    from connectors.sources.drop_folders import LocalFolder
    from pipeline import tracing
    from pipeline.settings import Settings

    spans_file = tmp_path / "spans.jsonl"
    drops = tmp_path / "drops"
    drops.mkdir()
    (drops / "s1.csv").write_bytes(b"sku,qty\nA,5\nB,7\n")
    emitter = topics.emitter()
    src = CsvDropSource("crate", connector="ftp", folder=LocalFolder(drops),
                        mapper=RecordMapper("crate", "ftp", FieldMapping(
                            {"sku": ["sku"], "quantity": ["qty"]})),
                        emitter=emitter, store=CursorStore(tmp_path / "state.sqlite"),
                        options=CsvOptions(stable_s=0))
    tracing.configure(Settings(tracing_enabled=True, tracing_exporter="file",
                               tracing_file=spans_file, tracing_sample_ratio=1.0),
                      "stockflow-connectors")
    try:
        emitted = await src.poll_once() + await src.poll_once()
    finally:
        tracing.shutdown()
        emitter.close()
    assert emitted == 2
    spans = read_spans(spans_file)
    (file_span,) = [s for s in spans if s["name"] == "csv file"]
    assert file_span["attributes"]["stockflow.file"] == "s1.csv"
    sends = {s["span_id"]: s for s in spans if s["name"] == f"{topics.deltas} send"}
    assert len(sends) == 2
    assert all(s["parent_span_id"] == file_span["span_id"] for s in sends.values())
    consumer = Consumer({**topics.settings.confluent_config(), "group.id": "trace-read",
                         "auto.offset.reset": "earliest"})
    try:
        meta = consumer.list_topics(topics.deltas, timeout=10).topics[topics.deltas]
        consumer.assign([TopicPartition(topics.deltas, p, 0) for p in meta.partitions])
        carried = []
        deadline = time.monotonic() + 30
        while len(carried) < 2 and time.monotonic() < deadline:
            msg = consumer.poll(1.0)
            if msg is not None and msg.error() is None:
                carried.append(tracing.parse_traceparent(dict(msg.headers() or [])
                                                         .get("traceparent")))
    finally:
        consumer.close()
    assert {f"{c.span_id:016x}" for c in carried} == set(sends)
    assert {f"{c.trace_id:032x}" for c in carried} == {file_span["trace_id"]}
