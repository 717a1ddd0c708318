"""Agents with tracing off read no header and make no span; on, recorded records' outputs carry
their trace."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pipeline import tracing
from pipeline.settings import Settings
from tests.agents.test_agents import DELTAS, Msg, Sent, msgs, run, tables  # noqa: F401
from topologies import process_deltas as pd
from topologies.app import settings

TRACE_ID = "0af7651916cd43dd8448eb211c80319c"


class HeaderMsg(Msg):
    """A consumed record with Kafka headers; `headers()` raises when reading is forbidden."""

    def __init__(self, base: Msg, headers: list[tuple[str, bytes]] | None,
                 forbid: bool = False) -> None:
        super().__init__(base._t, base._k, base._v, base._o, base._p, base._ts)
        self._h, self._forbid = headers, forbid

    def headers(self) -> list[tuple[str, bytes]] | None:
        if self._forbid:
            raise AssertionError("headers read with tracing off")
        return self._h


class SentWithHeaders(Sent):
    def __init__(self) -> None:
        super().__init__()
        self.headers: dict[str, list[Any]] = {}

    def __call__(self, topic: str, key: bytes | None, value: bytes,  # type: ignore[override]
                 partition: int | None, *rest: Any) -> None:
        super().__call__(topic, key, value, partition)
        logical = topic.removeprefix(settings.topic_prefix)
        self.headers.setdefault(logical, []).append(rest[0] if rest else "no headers argument")


@pytest.fixture
def spans_file(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "spans.jsonl"
    tracing.configure(Settings(tracing_enabled=True, tracing_exporter="file",
                               tracing_file=path, tracing_sample_ratio=0.0), "test-worker")
    yield path
    tracing.shutdown()


async def test_tracing_off_reads_no_header_and_sends_without_headers() -> None:
    assert not tracing.ENABLED
    sent = SentWithHeaders()
    good, bad = msgs({}, {"event_id": "e9", "sku": "bad|sku"})
    records = [HeaderMsg(m, [("traceparent", b"00-" + TRACE_ID.encode() + b"-b7ad6b7169203331-01")],
                         forbid=True) for m in (good, bad)]
    await run(pd.process_deltas, DELTAS, records, sent)
    assert sent.headers == {"inventory.stock-updates": ["no headers argument"],
                            "inventory.deadletter": ["no headers argument"]}


async def test_outputs_carry_their_records_trace_and_a_dead_letter_is_forced(
        spans_file: Path) -> None:
    sent = SentWithHeaders()
    good, unsampled_good, bad = msgs({}, {"event_id": "e2", "sku": "A-2"},
                                     {"event_id": "e9", "sku": "bad|sku"})
    records = [
        HeaderMsg(good, [("traceparent", f"00-{TRACE_ID}-b7ad6b7169203331-01".encode())]),
        HeaderMsg(unsampled_good, [("traceparent", f"00-{'1' * 32}-{'2' * 16}-00".encode())]),
        HeaderMsg(bad, [("traceparent", f"00-{'3' * 32}-{'4' * 16}-00".encode())]),
    ]
    await run(pd.process_deltas, DELTAS, records, sent)
    (h_sampled, h_unsampled) = sent.headers["inventory.stock-updates"]
    (h_dead,) = sent.headers["inventory.deadletter"]
    sampled = tracing.parse_traceparent(dict(h_sampled)["traceparent"])
    assert f"{sampled.trace_id:032x}" == TRACE_ID and sampled.trace_flags.sampled
    assert f"{sampled.span_id:016x}" != "b7ad6b7169203331"  # a new span: process_deltas
    # Not sampled and not a dead letter: nothing recorded, and its output carries no header
    # (at a low ratio nearly every record: no work for them here or downstream).
    assert h_unsampled is None
    dead = tracing.parse_traceparent(dict(h_dead)["traceparent"])
    assert f"{dead.trace_id:032x}" == "3" * 32 and dead.trace_flags.sampled
    spans = [json.loads(line) for line in spans_file.read_text().splitlines()]
    by_trace: dict[str, list[str]] = {}
    for span in spans:
        by_trace.setdefault(span["trace_id"], []).append(span["name"])
    assert sorted(by_trace[TRACE_ID]) == ["process_deltas"]
    assert "1" * 32 not in by_trace
    assert sorted(by_trace["3" * 32]) == ["dead_letter bad_sku", "process_deltas"]
    (batch,) = [s for s in spans if s["name"] == "process_deltas batch"]
    assert {link["trace_id"] for link in batch["links"]} == {TRACE_ID, "3" * 32}
    assert batch["attributes"]["messaging.batch.message_count"] == 3
