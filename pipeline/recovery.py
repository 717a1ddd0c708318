"""Exact end of table recovery for exactly-once changelogs (a Faust patch).

Faust restores a table by reading each changelog partition until it has applied the record
at the partition's "highwater", which it takes as the end offset - 1. Under exactly-once
every changelog partition ends with a transaction marker, so that offset holds no record and
is never reached. Faust then waits for two consecutive empty 5-second polls of its changelog
queue and, if the consumer's position is past the highwater, declares the partition done
(`detect_aborted_tx`). That costs every exactly-once start 10 s or more, and it is a race:
the position counts records the consumer has *fetched*, not records recovery has *applied*.
On a busy machine a cold start could end "recovered" with most of a table never read -- a
worker then processing against empty tables.

This patch makes the end exact instead: the highwater of each changelog partition is the
offset of its last committed record (read_committed, found by reading the partition's tail),
-1 when it has none. Recovery ends right after applying that record, with no timeout, and
Faust's empty-poll shortcut is switched off (the poll timeout becomes RECOVERY_POLL_S, long
enough never to fire while records are on their way).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Iterable, Mapping
from typing import Any

from pipeline.log import get_logger

log = get_logger(__name__)

RECOVERY_POLL_S = 3600.0
_FAUST_POLL_S = 5.0
_TAIL_WINDOW = 256


class _AsyncioWithoutEmptyPollShortcut:
    """asyncio, except that Faust's 5 s changelog-queue poll in recovery is RECOVERY_POLL_S."""

    def __getattr__(self, name: str) -> Any:
        return getattr(asyncio, name)

    @staticmethod
    async def wait_for(aw: Awaitable[Any], timeout: float | None) -> Any:
        if timeout == _FAUST_POLL_S:
            timeout = RECOVERY_POLL_S
        return await asyncio.wait_for(aw, timeout=timeout)


def last_record_offsets(config: Mapping[str, Any],
                        partitions: Iterable[tuple[str, int]],
                        timeout_s: float = 30.0) -> dict[tuple[str, int], int]:
    """Offset of the last committed record of each (topic, partition); -1 when none.

    Reads the partitions' tails with a read_committed consumer, widening a partition's window
    until a record is found or the whole partition was read (a tail of aborted records and
    transaction markers only).
    """
    from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

    consumer = Consumer({**config, "group.id": "stockflow-recovery-probe",
                         "enable.auto.commit": False, "enable.partition.eof": True,
                         "isolation.level": "read_committed", "fetch.wait.max.ms": 10})
    last: dict[tuple[str, int], int] = {}
    try:
        bounds = {}
        for topic, partition in partitions:
            bounds[(topic, partition)] = consumer.get_watermark_offsets(
                TopicPartition(topic, partition), timeout=timeout_s, cached=False)
            last[(topic, partition)] = -1
        window = _TAIL_WINDOW
        todo = {key for key, (low, high) in bounds.items() if high > low}
        while todo:
            starts = {key: max(bounds[key][0], bounds[key][1] - window) for key in todo}
            consumer.assign([TopicPartition(t, p, o) for (t, p), o in starts.items()])
            pending = set(todo)
            deadline = time.monotonic() + timeout_s
            while pending:
                if time.monotonic() > deadline:
                    raise KafkaException(f"no end of {sorted(pending)} within {timeout_s}s")
                # consume() waits for its count or its timeout: keep the timeout short.
                for msg in consumer.consume(1000, 0.1):
                    key = (str(msg.topic()), int(msg.partition() or 0))
                    err = msg.error()
                    if err is None:
                        last[key] = max(last[key], msg.offset() or 0)
                    elif err.code() == KafkaError._PARTITION_EOF:
                        pending.discard(key)
                    else:
                        raise KafkaException(err)
            # Found a record, or read from the partition's start: done with it.
            todo = {key for key in todo if last[key] < 0 and starts[key] > bounds[key][0]}
            window *= 16
    finally:
        consumer.close()
    return last


def install(kafka_config: Mapping[str, Any]) -> None:
    """Patch faust.tables.recovery (once, before the worker starts)."""
    from faust.tables import recovery

    if getattr(recovery.Recovery, "_stockflow_exact_highwaters", False):
        return
    recovery.asyncio = _AsyncioWithoutEmptyPollShortcut()  # type: ignore[assignment]
    config = dict(kafka_config)

    async def _build_highwaters(self: Any, consumer: Any, tps: Any, destination: Any,
                                title: str) -> None:
        by_tp = {(tp.topic, tp.partition): tp for tp in tps}
        last = await asyncio.to_thread(last_record_offsets, config, sorted(by_tp))
        highwaters = {by_tp[key]: offset for key, offset in last.items()}
        self.log.info("Highwater (last committed record) for %s changelog partitions:\n%s",
                      title, self._highwater_logtable(highwaters, title=title))
        destination.clear()
        destination.update(highwaters)

    cls: Any = recovery.Recovery
    cls._build_highwaters = _build_highwaters
    cls._stockflow_exact_highwaters = True
