"""Positions in inventory.deltas and a batched reader that never joins the worker's group.

The reader assigns partitions by hand (`assign`, no `subscribe`) and never commits: its
`group.id` (`<app_id>-replay`) exists only because librdkafka wants one. The live worker's
consumer group and its offsets are untouched.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from pipeline.errors import ConfigurationError, StockflowError


class ReplayError(StockflowError):
    """The log cannot be read or a replay position is not valid."""


@dataclass(frozen=True)
class Position:
    """Where a replay starts or stops: `beginning`, `end`, a time, or offsets per partition."""

    kind: str  # "beginning" | "end" | "time" | "offsets"
    time_ms: int | None = None
    offsets: dict[int, int] = field(default_factory=dict)

    def describe(self) -> str:
        if self.kind == "time":
            assert self.time_ms is not None
            return dt.datetime.fromtimestamp(self.time_ms / 1000, dt.UTC).isoformat()
        if self.kind == "offsets":
            return ",".join(f"{p}:{o}" for p, o in sorted(self.offsets.items()))
        return self.kind


_OFFSETS = re.compile(r"^\s*\d+\s*:\s*\d+\s*(,\s*\d+\s*:\s*\d+\s*)*$")


def parse_position(text: str) -> Position:
    """`beginning`, `end`, an ISO 8601 time (UTC if no offset), epoch ms, or `p:o,p:o`."""
    value = text.strip()
    if value.lower() in ("beginning", "earliest", "start"):
        return Position("beginning")
    if value.lower() in ("end", "latest", "now"):
        return Position("end")
    if _OFFSETS.match(value):
        offsets: dict[int, int] = {}
        for part in value.split(","):
            p, _, o = part.partition(":")
            offsets[int(p)] = int(o)
        return Position("offsets", offsets=offsets)
    if value.isdigit():
        return Position("time", time_ms=int(value))
    try:
        when = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError as exc:
        raise ConfigurationError(
            f"position {text!r}: expected 'beginning', 'end', an ISO time such as "
            "2025-01-31T12:00:00Z, epoch milliseconds, or partition:offset[,partition:offset]"
        ) from exc
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return Position("time", time_ms=int(when.timestamp() * 1000))


@dataclass(frozen=True, slots=True)
class LogRecord:
    """One record of the log, as the fold needs it."""

    partition: int
    offset: int
    timestamp_ms: int
    key: bytes | None
    value: bytes | None


class LogReader:
    """Reads one topic between offsets, in batches, with a manual assignment."""

    def __init__(self, config: dict[str, Any], topic: str, *, group_id: str,
                 batch_size: int = 5000, timeout_s: float = 30.0) -> None:
        from confluent_kafka import Consumer

        self.topic = topic
        self.batch_size = batch_size
        self.timeout_s = timeout_s
        self._consumer = Consumer({
            **config,
            "group.id": group_id,
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "enable.partition.eof": True,
            # The worker reads deltas read_committed (exactly-once); read what it read.
            "isolation.level": "read_committed",
            "fetch.max.bytes": 64 * 1024 * 1024,
            "max.partition.fetch.bytes": 8 * 1024 * 1024,
            "queued.max.messages.kbytes": 256 * 1024,
        })

    def close(self) -> None:
        self._consumer.close()

    def __enter__(self) -> LogReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def partitions(self) -> list[int]:
        meta = self._consumer.list_topics(self.topic, timeout=self.timeout_s)
        topic = meta.topics.get(self.topic)
        if topic is None or topic.error is not None or not topic.partitions:
            raise ReplayError(f"topic {self.topic} does not exist "
                              f"({topic.error if topic is not None else 'no metadata'})")
        return sorted(topic.partitions)

    def watermarks(self) -> dict[int, tuple[int, int]]:
        """(low, high) offsets per partition."""
        from confluent_kafka import TopicPartition

        return {p: self._consumer.get_watermark_offsets(TopicPartition(self.topic, p),
                                                        timeout=self.timeout_s)
                for p in self.partitions()}

    def resolve(self, position: Position, marks: dict[int, tuple[int, int]]) -> dict[int, int]:
        """The offset per partition of a position (a time: the first record at or after it)."""
        if position.kind == "beginning":
            return {p: lo for p, (lo, _hi) in marks.items()}
        if position.kind == "end":
            return {p: hi for p, (_lo, hi) in marks.items()}
        if position.kind == "offsets":
            unknown = set(position.offsets) - set(marks)
            if unknown:
                raise ReplayError(f"{self.topic} has no partition {sorted(unknown)}")
            # Partitions not named are not replayed: they start at their end.
            return {p: min(max(position.offsets.get(p, hi), lo), hi)
                    for p, (lo, hi) in marks.items()}
        from confluent_kafka import TopicPartition

        assert position.time_ms is not None
        found = self._consumer.offsets_for_times(
            [TopicPartition(self.topic, p, position.time_ms) for p in marks],
            timeout=self.timeout_s)
        out = {}
        for tp in found:
            lo, hi = marks[tp.partition]
            # -1: no record at or after that time in this partition.
            out[tp.partition] = hi if tp.offset < 0 else min(max(tp.offset, lo), hi)
        return out

    def read(self, start: dict[int, int], end: dict[int, int]) -> Iterator[list[LogRecord]]:
        """Batches of records from start (inclusive) to end (exclusive) of every partition."""
        from confluent_kafka import KafkaError, TopicPartition

        todo = {p for p in start if start[p] < end[p]}
        if not todo:
            return
        self._consumer.assign([TopicPartition(self.topic, p, start[p]) for p in sorted(todo)])
        try:
            while todo:
                messages = self._consumer.consume(self.batch_size, 1.0)
                batch: list[LogRecord] = []
                for msg in messages:
                    p = msg.partition()
                    err = msg.error()
                    if err is not None:
                        if err.code() == KafkaError._PARTITION_EOF:
                            # The end of what is readable now (the last stable offset under
                            # read_committed; past the snapshot end, or short of it only when
                            # an open transaction holds the rest back): this partition is done.
                            todo.discard(p)
                            continue
                        raise ReplayError(f"reading {self.topic}[{p}]: {err}")
                    if p not in todo:
                        continue
                    offset = msg.offset() or 0  # a data message always has an offset
                    if offset >= end[p]:
                        todo.discard(p)
                        self._consumer.pause([TopicPartition(self.topic, p)])
                        continue
                    _kind, ts = msg.timestamp()
                    batch.append(LogRecord(p, offset, ts, msg.key(), msg.value()))
                    if offset >= end[p] - 1:
                        todo.discard(p)
                        self._consumer.pause([TopicPartition(self.topic, p)])
                if batch:
                    yield batch
        finally:
            self._consumer.unassign()
