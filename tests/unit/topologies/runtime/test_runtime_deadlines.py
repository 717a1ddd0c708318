"""Every blocking librdkafka call of the runtime runs under its own deadline: a call that never
returns (send_offsets_to_transaction after the group coordinator's broker died) ends the
process within its timeout plus the margin, and a worker stopped by a fatal error aborts
instead of committing."""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace
from typing import Any

import pytest

from topologies.runtime import worker
from topologies.runtime.txn import CallDeadlines, ChangelogOffsets
from topologies.runtime.worker import BatchRuntime


def test_only_a_call_past_its_timeout_plus_the_margin_is_overdue() -> None:
    deadlines = CallDeadlines(margin_s=15.0, on_overdue=lambda *_: None)
    assert deadlines.overdue() is None
    with deadlines.call("send_offsets_to_transaction", 20.0):
        started = time.monotonic()
        assert deadlines.overdue(started + 34.0) is None
        call, seconds = deadlines.overdue(started + 36.0) or ("", 0.0)
        assert call == "send_offsets_to_transaction" and 35.0 < seconds < 37.0
    assert deadlines.overdue(time.monotonic() + 1000) is None  # returned: nothing under way


def test_a_rebalance_callback_has_no_deadline_but_its_calls_have_theirs() -> None:
    deadlines = CallDeadlines(margin_s=1.0, on_overdue=lambda *_: None)
    with deadlines.call("consume", 0.02), deadlines.call("on_assign", None):
        later = time.monotonic() + 600  # a long restore between Kafka calls is no hang
        assert deadlines.overdue(later) is None
        with deadlines.call("get_watermark_offsets", 30.0):
            assert deadlines.overdue(later) == ("get_watermark_offsets", pytest.approx(600, 1))
        assert deadlines.overdue(later) is None


def test_time_the_process_was_suspended_does_not_count() -> None:
    deadlines = CallDeadlines(margin_s=15.0, on_overdue=lambda *_: None)
    with deadlines.call("consume", 0.02):
        resumed = time.monotonic() + 30  # SIGSTOPped for 30 s, then SIGCONT
        assert deadlines.overdue(resumed) is not None
        deadlines.resumed_after(30.0)
        assert deadlines.overdue(resumed) is None
        assert deadlines.overdue(resumed + 16) is not None  # stuck after the resume


def _runtime(margin_s: float) -> tuple[BatchRuntime, list[int]]:
    rt = BatchRuntime.__new__(BatchRuntime)
    rt.settings = SimpleNamespace()
    rt._inflight = {}  # no batch running
    rt.exactly_once = True
    rt.tables, rt.positions, rt.committed, rt.in_txn = [], {}, {}, False
    rt.commits, rt.aborts, rt.last_commit = 0, 0, 0.0
    rt._changelog_next = ChangelogOffsets()
    rt._fatal = None
    exits: list[int] = []
    rt._exit = exits.append  # type: ignore[method-assign]
    rt.deadlines = CallDeadlines(margin_s, rt._on_call_stuck, tick_s=0.02)
    return rt, exits


class _Producer:
    """Records the transactional calls; send_offsets_to_transaction can be made to block as
    librdkafka 2.16 does once its group coordinator is gone (timeout ignored)."""

    def __init__(self, block_offsets: threading.Event | None = None) -> None:
        self.calls: list[str] = []
        self.block_offsets = block_offsets

    def send_offsets_to_transaction(self, offsets: Any, metadata: Any, timeout: float) -> None:
        self.calls.append("send_offsets_to_transaction")
        if self.block_offsets is not None:
            self.block_offsets.wait(30)

    def commit_transaction(self, timeout: float) -> None:
        self.calls.append("commit_transaction")

    def abort_transaction(self, timeout: float) -> None:
        self.calls.append("abort_transaction")

    def poll(self, timeout: float) -> int:
        return 0

    def flush(self, timeout: float) -> int:
        self.calls.append("flush")
        return 0


def test_a_send_offsets_that_never_returns_ends_the_worker_past_its_deadline(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(worker, "OFFSETS_TIMEOUT_S", 0.2)
    rt, exits = _runtime(margin_s=0.3)
    release = threading.Event()
    exited = threading.Event()
    rt._exit = lambda code: (exits.append(code), exited.set(), release.set())  # type: ignore
    rt.producer = _Producer(block_offsets=release)
    rt.consumer = SimpleNamespace(consumer_group_metadata=lambda: object())
    rt.positions, rt.in_txn = {("inventory.deltas", 0): 42}, True
    rt.deadlines.start()
    started = time.monotonic()
    try:
        thread = threading.Thread(target=rt._commit)
        thread.start()
        assert exited.wait(10), "the stuck call did not end the worker"
        elapsed = time.monotonic() - started
        thread.join(10)
    finally:
        release.set()
        rt.deadlines.stop()
    assert exits == [worker.EXIT_STUCK]
    assert 0.5 <= elapsed < 2.0  # its timeout (0.2 s) plus the margin (0.3 s), not later


def test_a_commit_that_returns_in_time_is_left_alone() -> None:
    rt, exits = _runtime(margin_s=0.5)
    rt.producer = _Producer()
    rt.consumer = SimpleNamespace(consumer_group_metadata=lambda: object())
    rt.positions, rt.in_txn = {("inventory.deltas", 0): 42}, True
    rt.deadlines.start()
    try:
        rt._commit()
        time.sleep(0.1)  # give the watchdog a few ticks: it must find nothing
    finally:
        rt.deadlines.stop()
    assert rt.producer.calls == ["send_offsets_to_transaction", "commit_transaction"]
    assert rt.committed == {("inventory.deltas", 0): 42} and exits == []


def test_a_worker_stopped_by_a_fatal_error_aborts_instead_of_committing() -> None:
    rt, exits = _runtime(margin_s=1.0)
    rt.producer = _Producer()
    closed: list[str] = []
    rt.consumer = SimpleNamespace(consumer_group_metadata=lambda: object(),
                                  close=lambda: closed.append("consumer"))
    rt.restorer = SimpleNamespace(close=lambda: closed.append("restorer"))
    discarded: list[int] = []
    rt.tables = [SimpleNamespace(has_changes=lambda: True,  # type: ignore[list-item]
                                 changelog_name="app-stock-changelog", changed=lambda: [],
                                 discard_uncommitted=lambda: discarded.append(1) or 1,
                                 close_all=lambda: closed.append("tables"))]
    rt.all_tables, rt.lanes = rt.tables, {}
    rt.positions, rt.in_txn = {("inventory.deltas", 0): 42}, True
    rt._fatal = worker.FatalRuntimeError("fatal consumer error: FENCED_INSTANCE_ID")
    rt._close()
    # No offsets of a fenced member sent, nothing committed: the open transaction is aborted
    # and the restarted worker processes those records again.
    assert rt.producer.calls == ["abort_transaction", "flush"]
    assert rt.positions == {} and not rt.in_txn and discarded == [1]
    assert closed == ["consumer", "restorer", "tables"] and rt.committed == {} and exits == []


def test_a_changelog_partition_whose_leader_the_client_forgot_is_found_again() -> None:
    # The restore consumer kept a partition led by a broker it dropped while that broker was
    # down: librdkafka answers _UNKNOWN_PARTITION until its metadata is refreshed (5 min).
    from confluent_kafka import KafkaError, KafkaException

    rt, _ = _runtime(margin_s=1.0)
    asked: list[str] = []

    class Restorer:
        def get_watermark_offsets(self, tp: Any, timeout: float) -> tuple[int, int]:
            if not asked:
                raise KafkaException(KafkaError(KafkaError._UNKNOWN_PARTITION))
            return (0, 10)

        def list_topics(self, topic: str, timeout: float) -> Any:
            asked.append(topic)

    rt.restorer = Restorer()
    assert rt._watermarks("app-stock-changelog", 3) == (0, 10)
    assert asked == ["app-stock-changelog"]


def test_a_watermark_request_that_timed_out_refreshes_the_metadata_too() -> None:
    # A request queued for a leader that was just SIGKILLed times out: the leader has moved.
    from confluent_kafka import KafkaError, KafkaException

    rt, _ = _runtime(margin_s=1.0)
    asked: list[str] = []

    class Restorer:
        def get_watermark_offsets(self, tp: Any, timeout: float) -> tuple[int, int]:
            if not asked:
                raise KafkaException(KafkaError(KafkaError._TIMED_OUT))
            return (5, 7)

        def list_topics(self, topic: str, timeout: float) -> Any:
            asked.append(topic)

    rt.restorer = Restorer()
    assert rt._watermarks("app-stock-changelog", 0) == (5, 7) and len(asked) == 1


def _lost_runtime() -> tuple[BatchRuntime, _Producer]:
    rt, _ = _runtime(margin_s=1.0)
    rt.rebalancing, rt.ready = False, True
    rt.tables_by_topic, rt.processed = {}, {("inventory.deltas", 0): 42}
    rt.lanes = {}
    rt.assignment = {("inventory.deltas", 0)}
    rt.positions, rt.in_txn = {("inventory.deltas", 0): 42}, True
    old = _Producer()
    rt.producer = old
    return rt, old


def test_a_worker_that_lost_its_partitions_gets_a_new_producer() -> None:
    # The old producer may keep the lost coordinator's dropped broker as the group's
    # coordinator: its next send_offsets_to_transaction would never return.
    rt, old = _lost_runtime()
    new = _Producer()
    rt._new_producer = lambda: new  # type: ignore[method-assign]
    rt._on_lost_body([SimpleNamespace(topic="inventory.deltas", partition=0)])
    assert old.calls == ["abort_transaction"] and rt.producer is new
    assert not rt.in_txn and rt.positions == {} and rt.assignment == set()


def test_a_producer_that_cannot_be_replaced_now_is_kept() -> None:
    from confluent_kafka import KafkaError, KafkaException

    rt, old = _lost_runtime()

    def unavailable() -> Any:
        raise KafkaException(KafkaError(KafkaError._TIMED_OUT, "init_transactions timed out"))

    rt._new_producer = unavailable  # type: ignore[method-assign]
    rt._on_lost_body([SimpleNamespace(topic="inventory.deltas", partition=0)])
    assert rt.producer is old and old.calls == ["abort_transaction"]
