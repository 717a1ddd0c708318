"""Which source offset a commit may advance to (a Faust patch).

Faust keeps, per source partition, the offsets the agents acked and the "gaps" -- offsets
that hold no record for the consumer: transaction markers, aborted records, compacted
keys. A commit advances the partition over the run of consecutive offsets that starts at
its committed offset. Faust's own version of that step (`Consumer._new_offset`) has two
faults that stockflow's inputs hit:

- **Each gap counts the next record twice.** A gap is stored with the record after it
  included, and that record is acked too. Faust stops the run at the duplicate, so one
  commit passes at most one gap. inventory.stock-updates and inventory.changes are written
  in transactions: every commit of a writer leaves a marker in each partition it wrote.
  Once a partition gets more markers per second than its reader commits per second, as a
  hot partition under load with a slow Cassandra, its committed offset falls further and
  further behind what was processed. Nothing is lost, but the lag grows without bound,
  the reader's transaction stays open until the broker aborts it and fences the worker,
  and a restart processes the whole stretch again.
- **Stale offsets stay.** The duplicate left behind is below the next committed offset, is
  never removed, and is sorted and scanned on every commit from then on.

`next_commit` is the step without those faults: duplicates and offsets below the committed
one are dropped, and the run passes every gap. Everything else is unchanged: a commit still
waits while more than one offset at the head is missing (a record not acked yet), and one
missing offset at the head is still passed -- right after a seek to the committed offset
that is a marker or a removed record, never a record in flight, because stockflow's agents
ack each partition's records in order and commit between units of work only
(pipeline/transactions.py, CommitGate).
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator
from typing import Any

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

UNCOMMITTED = "stockflow_uncommitted_offsets"


def next_commit(offsets: list[int], committed: int | None) -> tuple[int | None, list[int]]:
    """The offset to commit next, and the offsets to keep for later commits.

    `offsets`: sorted, duplicates allowed: acked records and gap offsets of one partition.
    `committed`: the partition's committed offset (the next one to read), None before the
    first commit. Returns (None, kept) when nothing can be committed yet.
    """
    start = bisect_left(offsets, committed) if committed is not None else 0
    if start == len(offsets):
        return None, []
    first = offsets[start]
    if committed is not None and first - committed > 1:
        return None, offsets[start:]  # an offset at the head is still in flight
    nxt = first
    i = start
    n = len(offsets)
    while i < n and offsets[i] <= nxt:
        if offsets[i] == nxt:
            nxt += 1
        i += 1
    return nxt, offsets[i:]


def _new_offset(self: Any, tp: Any) -> int | None:
    """Drop-in for faust.transport.consumer.Consumer._new_offset, built on next_commit."""
    acked: list[int] = self._acked[tp]
    if not acked:
        return None
    acked.sort()
    gap = self._gap[tp]
    if gap:
        # Gap offsets up to the highest acked one count as done: a gap is recorded when the
        # record after it arrives, and records of a partition are acked in order.
        top = acked[-1] + 1
        spans = gap.overlap(0, top)
        if spans:
            for span in spans:
                acked.extend(range(span.begin, min(span.end, top)))
            gap.chop(0, top)
            acked.sort()
    offset, kept = next_commit(acked, self._committed_offset[tp])
    done = len(acked) - len(kept)
    if done:
        self._acked_index[tp].difference_update(acked[:done])
        del acked[:done]
    return offset


def uncommitted_offsets(consumer: Any) -> dict[tuple[str, int], int]:
    """Per source partition: how far the agents' finished (acked) records reach past the
    committed offset, in offsets (records and the markers between them). A few commit
    intervals' worth while commits keep up; grows for as long as a partition is processed
    but its commits fall behind."""
    committed = dict(consumer._committed_offset)  # copies: the event loop mutates them
    out = {}
    for tp, acked in list(consumer._acked.items()):
        offsets = list(acked)
        floor = committed.get(tp)
        if floor is None:
            floor = min(offsets, default=0)
        top = max(offsets, default=floor - 1)
        out[(tp.topic, tp.partition)] = max(0, top + 1 - floor)
    return out


class UncommittedOffsetsCollector(Collector):
    """Exports uncommitted_offsets() of the worker's consumer when Prometheus scrapes."""

    def __init__(self, app: Any) -> None:
        self.app = app

    def _family(self) -> GaugeMetricFamily:
        return GaugeMetricFamily(
            UNCOMMITTED, "offsets the agents processed past the committed offset, per source "
            "partition", labels=["topic", "partition"])

    def describe(self) -> Iterator[GaugeMetricFamily]:
        yield self._family()

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = self._family()
        consumer = self.app._consumer  # not app.consumer: that would create one here
        if consumer is not None:
            for (topic, partition), count in sorted(uncommitted_offsets(consumer).items()):
                family.add_metric([topic, str(partition)], count)
        yield family


def install() -> None:
    """Use next_commit for every Faust consumer in this process (before the worker starts)."""
    from faust.transport import consumer

    consumer.Consumer._new_offset = _new_offset  # type: ignore[method-assign]
