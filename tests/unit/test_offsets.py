"""The commit step passes every gap (transaction markers) and never passes an unacked record."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from types import SimpleNamespace
from typing import Any

import pytest
from faust.transport.consumer import Consumer
from faust.types import TP
from intervaltree import IntervalTree

from pipeline.offsets import _new_offset, next_commit

TP0 = TP("app.inventory.stock-updates", 0)


def fake_consumer(committed: int | None = None) -> Any:
    return SimpleNamespace(_acked=defaultdict(list), _acked_index=defaultdict(set),
                           _gap=defaultdict(IntervalTree),
                           _committed_offset=defaultdict(lambda: committed))


def deliver(consumer: Any, offsets: list[int], read_from: int | None) -> None:
    """Deliver and ack records the way Faust's drain loop and Consumer.ack do."""
    r_offset = read_from
    for offset in offsets:
        if r_offset and offset - r_offset > 1:
            asyncio.run(Consumer._add_gap(consumer, TP0, r_offset + 1, offset))
        r_offset = offset
        consumer._acked[TP0].append(offset)
        consumer._acked_index[TP0].add(offset)


@pytest.mark.parametrize(("offsets", "committed", "expected"), [
    ([], None, (None, [])),
    ([5, 6, 7], None, (8, [])),
    ([10, 11, 13], 10, (12, [13])),  # 12 not acked yet: stop before it
    ([11, 12], 10, (13, [])),  # one missing offset at the head: a marker after a seek
    ([12, 13], 10, (None, [12, 13])),  # more than one missing at the head: wait
    ([7, 8, 10, 11], 10, (12, [])),  # stale offsets below the committed one are dropped
    ([3, 4, 4, 5, 5, 6], 3, (7, [])),  # duplicates do not stop the run
])
def test_next_commit(offsets: list[int], committed: int | None,
                     expected: tuple[int | None, list[int]]) -> None:
    assert next_commit(offsets, committed) == expected


def test_one_commit_passes_every_transaction_marker() -> None:
    # Data records around markers at 3, 7 and 11, as a transactional writer leaves them.
    consumer = fake_consumer(committed=1)
    deliver(consumer, [1, 2, 4, 5, 6, 8, 9, 10, 12], read_from=1)
    assert _new_offset(consumer, TP0) == 13
    assert consumer._acked[TP0] == []
    assert not consumer._gap[TP0]
    assert not consumer._acked_index[TP0]


def test_commit_stops_at_an_unacked_record_and_resumes() -> None:
    consumer = fake_consumer(committed=1)
    deliver(consumer, [1, 2, 4], read_from=1)
    deliver(consumer, [6, 8], read_from=4)  # 5 (a marker) is a gap; 7 is not acked yet
    consumer._acked[TP0].remove(8)  # a record whose unit has not finished: not acked
    consumer._acked_index[TP0].discard(8)
    assert _new_offset(consumer, TP0) == 7
    consumer._committed_offset[TP0] = 7
    # Record 8 follows marker 7; nothing is committed past 8 until it is acked.
    assert _new_offset(consumer, TP0) is None
    consumer._acked[TP0].append(8)
    assert _new_offset(consumer, TP0) == 9


def test_kept_offsets_do_not_grow_under_steady_markers() -> None:
    consumer = fake_consumer(committed=100)
    offset, committed = 100, 100
    for _ in range(1000):  # a record then a marker, 1000 times, one commit every 10 records
        deliver(consumer, [offset], read_from=offset - 2 if offset > 100 else 100)
        offset += 2
        if offset % 20 == 0:
            new = _new_offset(consumer, TP0)
            # Up to the last record: its marker is recorded when the next record arrives.
            assert new == offset - 1
            committed = consumer._committed_offset[TP0] = new
    assert committed == 2099
    assert consumer._acked[TP0] == []


def test_uncommitted_offsets_reach_from_the_committed_to_the_highest_acked_offset() -> None:
    from pipeline.offsets import UncommittedOffsetsCollector, uncommitted_offsets

    consumer = fake_consumer()
    consumer._committed_offset[TP0] = 10
    consumer._acked[TP0] = [8, 10, 11, 11, 14]  # a stale offset, a duplicate, markers 12-13
    assert uncommitted_offsets(consumer) == {(TP0.topic, 0): 5}
    consumer._acked[TP0] = [8]  # only stale offsets: nothing past the committed one
    assert uncommitted_offsets(consumer) == {(TP0.topic, 0): 0}
    consumer._acked[TP0] = [11, 12]
    [family] = UncommittedOffsetsCollector(SimpleNamespace(_consumer=consumer)).collect()
    assert [(s.labels, s.value) for s in family.samples] == [
        ({"topic": TP0.topic, "partition": "0"}, 3.0)]
    # Before the worker made its consumer there is nothing to report (and none is made).
    [family] = UncommittedOffsetsCollector(SimpleNamespace(_consumer=None)).collect()
    assert family.samples == []
