"""Overlapping batches (settings.batch_overlap): under load the runtime hands out the next poll
while an agent still waits for its stores, and every commit, abort and rebalance first waits
for every batch handed out. What is relied on: one batch at a time per agent, in order; idle
agents first; no commit before every batch is done; a failed batch is never committed."""

from __future__ import annotations

import asyncio
import threading
import time
from types import SimpleNamespace
from typing import Any

import pytest

from topologies.runtime.batches import Batch
from topologies.runtime.txn import CallDeadlines, hand_out_overlapped
from topologies.runtime.worker import BatchRuntime


def _msg(topic: str, offset: int) -> Any:
    return SimpleNamespace(topic=lambda: topic, partition=lambda: 0, offset=lambda: offset)


class Route:
    """An agent's channel: records what it was handed; the test finishes the batches."""

    def __init__(self, name: str, log: list[Any]) -> None:
        self.name, self.log = name, log
        self.batches: list[Batch] = []

    async def put(self, batch: Batch) -> None:
        self.log.append((self.name, [m.offset() for m in batch.records]))
        self.batches.append(batch)


def _send(*_args: Any) -> None:
    return None


def test_hand_out_returns_before_the_batches_are_done_and_keeps_one_per_agent() -> None:
    async def scenario() -> list[Any]:
        log: list[Any] = []
        routes = {"updates": Route("updates", log), "deltas": Route("deltas", log)}
        inflight: dict[str, asyncio.Future[Any]] = {}
        await hand_out_overlapped(routes, [_msg("updates", 1)], _send, inflight)  # type: ignore[arg-type]
        assert not inflight["updates"].done()  # returned while the agent still works
        # The next poll: deltas (agent idle) and updates (agent busy). Deltas go first; the
        # next updates batch waits for the previous one.
        second = asyncio.ensure_future(hand_out_overlapped(
            routes, [_msg("updates", 2), _msg("deltas", 7)], _send, inflight))  # type: ignore[arg-type]
        await asyncio.sleep(0.05)
        assert log == [("updates", [1]), ("deltas", [7])]
        assert not second.done()
        log.append("updates 1 done")
        routes["updates"].batches[0].done.set_result(1)
        await second
        return log

    assert asyncio.run(scenario()) == [("updates", [1]), ("deltas", [7]), "updates 1 done",
                                       ("updates", [2])]


def test_hand_out_raises_the_error_of_the_agents_previous_batch() -> None:
    async def scenario() -> None:
        log: list[Any] = []
        routes = {"updates": Route("updates", log)}
        inflight: dict[str, asyncio.Future[Any]] = {}
        await hand_out_overlapped(routes, [_msg("updates", 1)], _send, inflight)  # type: ignore[arg-type]
        routes["updates"].batches[0].done.set_exception(RuntimeError("cassandra said no"))
        with pytest.raises(RuntimeError, match="cassandra said no"):
            await hand_out_overlapped(routes, [_msg("updates", 2)], _send, inflight)  # type: ignore[arg-type]
        assert [b.records[0].offset() for b in routes["updates"].batches] == [1]

    asyncio.run(scenario())


def _runtime() -> BatchRuntime:
    rt = BatchRuntime.__new__(BatchRuntime)
    rt._inflight = {}
    rt._commit_max_delay_s = 0.5
    rt.last_commit = time.monotonic()
    rt.deadlines = CallDeadlines(15.0, lambda *_: None)
    return rt


def test_settle_waits_for_every_batch_then_raises_the_first_error() -> None:
    async def scenario() -> list[str]:
        rt = _runtime()
        loop = asyncio.get_running_loop()
        failed, slow = loop.create_future(), loop.create_future()
        rt._inflight = {"a": failed, "b": slow}
        failed.set_exception(RuntimeError("boom"))
        finished: list[str] = []

        def finish() -> None:
            finished.append("slow")
            slow.set_result(1)

        loop.call_later(0.05, finish)
        with pytest.raises(RuntimeError, match="boom"):
            await rt._settle()
        assert slow.done()  # the error came only after every batch had finished
        assert rt._inflight == {}
        return finished

    assert asyncio.run(scenario()) == ["slow"]


def test_settle_counts_a_batch_not_done_in_time_as_failed() -> None:
    async def scenario() -> bool:
        rt = _runtime()
        rt._inflight = {"a": asyncio.get_running_loop().create_future()}
        return await rt._settle(raise_errors=False, timeout_s=0.05)

    assert asyncio.run(scenario()) is False


def test_a_due_commit_is_put_off_under_load_while_a_batch_runs_up_to_the_max_delay() -> None:
    async def scenario() -> list[bool]:
        rt = _runtime()
        running = asyncio.get_running_loop().create_future()
        rt._inflight = {"updates": running}
        decisions = [rt._keep_overlapping(busy=False),  # keeps up: commit at once
                     rt._keep_overlapping(busy=True),   # loaded, running: go on polling
                     rt._keep_overlapping(busy=True)]   # still running, within the delay
        rt.last_commit = time.monotonic() - 0.6
        decisions.append(rt._keep_overlapping(busy=True))  # past the max delay: commit
        rt.last_commit = time.monotonic()
        running.set_result(1)
        decisions.append(rt._keep_overlapping(busy=True))  # nothing running: commit
        return decisions

    assert asyncio.run(scenario()) == [False, True, True, False, False]


def _revoking(events: list[Any], batch: asyncio.Future[Any]) -> BatchRuntime:
    """A runtime with an open transaction, one batch handed out, and a revoke to come."""
    rt = _runtime()
    rt._event_loop = asyncio.get_running_loop()
    rt.lanes, rt.lane_topics, rt.tables, rt.tables_by_topic = {}, {}, [], {}
    rt.positions, rt.processed, rt.committed, rt.assignment = {("u", 0): 5}, {}, {}, set()
    rt.in_txn = True
    rt._inflight = {"u": batch}
    rt._commit_or_abort = lambda: events.append("commit")  # type: ignore[method-assign]
    rt._abort_and_rewind = lambda: events.append("abort")  # type: ignore[method-assign]
    return rt


async def _revoke_on_kafka_thread(rt: BatchRuntime) -> None:
    callback = threading.Thread(target=rt._on_revoke_body, args=([],))
    started = time.monotonic()
    callback.start()
    while callback.is_alive() and time.monotonic() - started < 10:
        await asyncio.sleep(0.01)


def test_revoke_waits_for_the_running_batch_then_commits() -> None:
    """The revoke callback runs on the Kafka thread inside consume() while the event loop
    runs the batches: it waits for them before it commits."""
    events: list[Any] = []

    async def scenario() -> None:
        running = asyncio.get_running_loop().create_future()
        rt = _revoking(events, running)

        def finish() -> None:
            events.append("batch done")
            running.set_result(1)

        asyncio.get_running_loop().call_later(0.1, finish)
        await _revoke_on_kafka_thread(rt)

    asyncio.run(scenario())
    assert events == ["batch done", "commit"]


def test_revoke_after_a_failed_batch_aborts_instead_of_committing() -> None:
    events: list[Any] = []

    async def scenario() -> None:
        failed = asyncio.get_running_loop().create_future()
        failed.set_exception(RuntimeError("half a batch"))
        await _revoke_on_kafka_thread(_revoking(events, failed))

    asyncio.run(scenario())
    assert events == ["abort"]
