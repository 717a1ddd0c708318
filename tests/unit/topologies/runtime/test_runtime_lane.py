"""The rebalance callbacks hand a lane's partitions over: on assign the main consumer keeps them
assigned but paused and the lane starts reading them; on revoke the lane commits and lets go
before the main loop commits; on a lost assignment the lane aborts (nothing committed)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from confluent_kafka import TopicPartition

from topologies.runtime.txn import CallDeadlines
from topologies.runtime.worker import BatchRuntime


class FakeLane:
    def __init__(self, events: list[Any]) -> None:
        self.routes = {"commands": object()}
        self.events = events

    def assign(self, tps: set[tuple[str, int]]) -> None:
        self.events.append(("lane.assign", sorted(tps)))

    def release(self, tps: set[tuple[str, int]], *, commit: bool) -> None:
        self.events.append(("lane.release", sorted(tps), commit))


class FakeConsumer:
    def __init__(self, events: list[Any]) -> None:
        self.events = events

    def assign(self, partitions: list[Any]) -> None:
        self.events.append(("consumer.assign", sorted((p.topic, p.partition)
                                                      for p in partitions)))

    def pause(self, partitions: list[Any]) -> None:
        self.events.append(("consumer.pause", sorted((p.topic, p.partition)
                                                     for p in partitions)))


def _runtime(events: list[Any]) -> BatchRuntime:
    rt = BatchRuntime.__new__(BatchRuntime)
    rt.deadlines = CallDeadlines(15.0, lambda *_: None)
    rt._inflight = {}  # no batch running
    lane = FakeLane(events)
    rt.lanes = {"reservations": lane}  # type: ignore[dict-item]
    rt.lane_topics = {"commands": lane}  # type: ignore[dict-item]
    rt.consumer = FakeConsumer(events)
    rt.tables, rt.all_tables, rt.tables_by_topic = [], [], {}
    rt.assignment, rt.positions, rt.processed, rt.committed = set(), {}, {}, {}
    rt.rebalances, rt.ready, rt.rebalancing, rt.in_txn = 0, False, False, False
    rt.exactly_once = False
    rt._commit_or_abort = lambda: events.append("main.commit")  # type: ignore[method-assign]
    rt._abort_and_rewind_local = (  # type: ignore[method-assign]
        lambda: events.append("main.abort"))
    return rt


PARTITIONS = [TopicPartition("updates", 0), TopicPartition("commands", 0),
              TopicPartition("updates", 1), TopicPartition("commands", 1)]


def test_assign_pauses_the_lanes_partitions_and_hands_them_to_the_lane() -> None:
    events: list[Any] = []
    rt = _runtime(events)
    rt._on_assign_body(PARTITIONS)
    everything = sorted((p.topic, p.partition) for p in PARTITIONS)
    commands = [("commands", 0), ("commands", 1)]
    assert events == [("consumer.assign", everything), ("consumer.pause", commands),
                      ("lane.assign", commands)]
    assert rt.assignment == {("updates", 0), ("updates", 1)}  # the main loop's only
    assert rt.ready


def test_revoke_has_the_lane_commit_and_let_go_before_the_main_loop_commits() -> None:
    events: list[Any] = []
    rt = _runtime(events)
    rt._on_assign_body(PARTITIONS)
    events.clear()
    rt.in_txn = True
    rt._on_revoke_body(PARTITIONS)
    revoked = sorted((p.topic, p.partition) for p in PARTITIONS)
    assert events == [("lane.release", revoked, True), "main.commit"]
    assert rt.assignment == set()


def test_a_lost_assignment_has_the_lane_abort() -> None:
    events: list[Any] = []
    rt = _runtime(events)
    rt._on_assign_body(PARTITIONS)
    events.clear()
    rt._on_lost_body(PARTITIONS)
    lost = sorted((p.topic, p.partition) for p in PARTITIONS)
    assert events == [("lane.release", lost, False), "main.abort"]


def test_without_a_lane_the_assignment_is_left_to_librdkafka() -> None:
    events: list[Any] = []
    rt = _runtime(events)
    rt.lanes, rt.lane_topics = {}, {}
    rt._on_assign_body(PARTITIONS)
    assert events == []  # no assign/pause of our own: librdkafka assigns after the callback
    assert rt.assignment == {(p.topic, p.partition) for p in PARTITIONS}


def test_the_lane_is_used_only_under_exactly_once() -> None:
    from topologies.runtime.batches import InputBatches

    channel = InputBatches.__new__(InputBatches)  # its attributes only, no Faust app
    channel.topic_name, channel.table, channel.enabled = "commands", None, True
    channel.lane, channel.commit_first = "reservations", True
    for exactly_once, lane in ((True, True), (False, False)):
        rt = BatchRuntime.__new__(BatchRuntime)
        rt.app = SimpleNamespace(agents={"reserve": SimpleNamespace(channel=channel)})
        rt.settings = SimpleNamespace(tables_dir=None)
        rt.exactly_once = exactly_once
        rt.routes, rt.commit_first, rt.tables_by_topic = {}, set(), {}
        rt.lanes, rt.lane_topics = {}, {}
        rt.discover_routes()
        assert bool(rt.lanes) is lane
        # At-least-once: the topic stays in the main loop, decided and committed first.
        assert rt.commit_first == (set() if lane else {"commands"})
