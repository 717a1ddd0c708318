"""What the peer baselines do per event: stockflow's own decode, validate, dedup and decide.

The Quix Streams app (bench/peer_quix.py, in its own venv) and the confluent-kafka loop
(bench/peer_loop.py) both call `DeltaStep`, so they run exactly the worker's rules on the
same records: `schemas.codec` (single-object Avro), `pipeline.validate.validate_delta`,
the event_id memory in the key's state, `pipeline.apply.decide`, a StockUpdate per
effective change, a ResyncRequest per gap and a DeadLetter per bad record. Only stockflow's
framework-free modules are imported here (plus faust through `schemas.codec`, which the
Quix venv therefore installs), never the worker's app, tables or tests.

`Progress` records what each peer reports: events, wall and process CPU time from its first
event, and (time, count) samples for the same 10-90 % window rate the topology phase uses.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.harness import window_rate
from pipeline import dedup
from pipeline.apply import decide
from pipeline.errors import SchemaError, ValidationError
from pipeline.validate import DECODE_ERROR, dead_letter, validate_delta
from schemas.codec import codec_for

# The dedup memory as the worker keeps it in the StockState: the packed `recent_ids`
# (pipeline/dedup.py event_hash/seen_at/remember) where stockflow has it, else the
# `recent_events` map of event_id -> first seen (topologies/process_deltas.py, newest 32).
PACKED_MEMORY = hasattr(dedup, "event_hash")
RECENT_EVENTS_MAX = 32

UPDATE = "update"
RESYNC = "resync"
DEAD_LETTER = "dead_letter"
RECORD_OF = {UPDATE: "StockUpdate", RESYNC: "ResyncRequest", DEAD_LETTER: "DeadLetter"}
GUARANTEES = ("exactly_once", "at_least_once")

Emit = tuple[str, bytes | None, dict[str, Any]]  # kind, Kafka key, record


@dataclass(frozen=True, slots=True)
class StepResult:
    """One delta handled: its outcome, the key's new state (None: untouched), what to send."""

    outcome: str
    state: dict[str, Any] | None
    emits: list[Emit]


def remember(recent: dict[str, int], event_id: str, now_ms: int,
             ttl_ms: int) -> dict[str, int]:
    """The map memory after accepting event_id: TTL-pruned, newest RECENT_EVENTS_MAX kept."""
    kept = {e: t for e, t in recent.items() if not dedup.expired(t, now_ms, ttl_ms)}
    kept[event_id] = now_ms
    if len(kept) > RECENT_EVENTS_MAX:
        kept = dict(sorted(kept.items(), key=lambda item: item[1])[-RECENT_EVENTS_MAX:])
    return kept


def memory_field() -> str:
    """The StockState field that holds the dedup memory."""
    return "recent_ids" if PACKED_MEMORY else "recent_events"


def memory_seen_at(state: dict[str, Any] | None, event_id: str) -> int | None:
    """When the key's dedup memory first saw event_id (None: not in it)."""
    if not state:
        return None
    if PACKED_MEMORY:
        packed = state.get("recent_ids") or b""
        return dedup.seen_at(packed, dedup.event_hash(event_id)) if packed else None
    return (state.get("recent_events") or {}).get(event_id)


def memory_after(state: dict[str, Any] | None, event_id: str, now_ms: int,
                 ttl_ms: int) -> Any:
    """The key's dedup memory once event_id is accepted."""
    if PACKED_MEMORY:
        packed = (state.get("recent_ids") or b"") if state else b""
        return dedup.remember(packed, dedup.event_hash(event_id), now_ms, ttl_ms)
    return remember((state.get("recent_events") or {}) if state else {}, event_id, now_ms,
                    ttl_ms)


class DeltaStep:
    """stockflow's per-delta rule over one key's state, with no framework around it."""

    def __init__(self, source_topic: str, dedup_ttl_ms: int) -> None:
        self.source_topic = source_topic
        self.dedup_ttl_ms = dedup_ttl_ms
        self.delta_codec = codec_for("SupplierDelta")

    def __call__(self, value: bytes | None, key: bytes | None, timestamp_ms: int,
                 state: dict[str, Any] | None, partition: int, offset: int) -> StepResult:
        # The Kafka timestamp is the clock, as in the worker (a replay decides the same).
        now = timestamp_ms
        try:
            record = self.delta_codec.decode(value or b"")
        except SchemaError as exc:
            return self._invalid(DECODE_ERROR, str(exc), value, key, partition, offset, now,
                                 None)
        try:
            delta = validate_delta(record, key=key, now_ms=now)
        except ValidationError as exc:
            return self._invalid(exc.code, exc.message, value, key, partition, offset, now,
                                 record)
        event_id = delta["event_id"]
        # No catalog in the benchmark: the platform SKU is the supplier's SKU, as the
        # worker's empty catalog maps it.
        decision = decide(delta, state, memory_seen_at(state, event_id),
                          platform_sku=delta["sku"], now_ms=now, produced_at_ms=now,
                          dedup_ttl_ms=self.dedup_ttl_ms)
        new_state = None
        if decision.state is not None:
            new_state = dict(decision.state)
            field_name = memory_field()
            if decision.remember_event:
                new_state[field_name] = memory_after(state, event_id, now, self.dedup_ttl_ms)
            elif state and field_name in state:
                new_state[field_name] = state[field_name]
        emits: list[Emit] = []
        row_key = key if key is not None else f"{delta['supplier_id']}|{delta['sku']}".encode()
        if decision.resync is not None:
            emits.append((RESYNC, row_key, decision.resync))
        if decision.update is not None:
            emits.append((UPDATE, decision.update["platform_sku"].encode(), decision.update))
        return StepResult(decision.outcome, new_state, emits)

    def _invalid(self, reason: str, message: str, value: bytes | None, key: bytes | None,
                 partition: int, offset: int, now: int, record: Any) -> StepResult:
        rec = record if isinstance(record, dict) else {}
        supplier, event_id = rec.get("supplier_id"), rec.get("event_id")
        dl = dead_letter(reason=reason, message=message, original=value or b"",
                         original_key=key, source_topic=self.source_topic,
                         source_partition=partition, source_offset=offset,
                         source_timestamp=now, now_ms=now,
                         supplier_id=supplier if isinstance(supplier, str) else None,
                         event_id=event_id if isinstance(event_id, str) else None)
        return StepResult("invalid", None, [(DEAD_LETTER, key, dl)])


@dataclass
class Progress:
    """Events handled by a peer, timed from its first event (start-up and group join left out)."""

    total: int
    every: int = 250
    count: int = 0
    outcomes: dict[str, int] = field(default_factory=dict)
    samples: list[tuple[float, float]] = field(default_factory=list)
    t_first: float | None = None
    cpu_first: float = 0.0

    def add(self, outcome: str) -> None:
        if self.t_first is None:
            self.t_first, self.cpu_first = time.perf_counter(), time.process_time()
            self.samples.append((self.t_first, 0.0))
        self.count += 1
        self.outcomes[outcome] = self.outcomes.get(outcome, 0) + 1
        if self.count % self.every == 0:
            self.samples.append((time.perf_counter(), float(self.count)))

    def result(self, **extra: Any) -> dict[str, Any]:
        """The peer's report; CPU is the whole process's (every thread, librdkafka's too)."""
        t_last, cpu_last = time.perf_counter(), time.process_time()
        if self.t_first is None:
            return {"events": 0, "outcomes": {}, **extra}
        self.samples.append((t_last, float(self.count)))
        seconds = t_last - self.t_first
        try:
            steady = window_rate(self.samples, self.total)
        except ValueError:  # stopped before 90 % of the input
            steady = None
        return {"events": self.count, "seconds": seconds,
                "rate_steady": steady,
                "rate_overall": self.count / seconds if seconds > 0 else None,
                "cpu_us_per_event": (cpu_last - self.cpu_first) * 1e6 / self.count,
                "outcomes": dict(self.outcomes), **extra}


def write_result(path: Path, result: dict[str, Any]) -> None:
    """Write atomically: the bench polls for the file and must never read half of it."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=1))
    tmp.replace(path)
