"""A poll's records of a commit-first topic (reservation commands) are handled and committed
before the poll's other records, so a hold's decision does not wait for their store writes."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from topologies.runtime.worker import BatchRuntime


def _msg(topic: str, offset: int) -> Any:
    return SimpleNamespace(topic=lambda: topic, partition=lambda: 0, offset=lambda: offset)


def _one_poll(commit_first: set[str], msgs: list[Any]) -> list[Any]:
    """What one iteration of the runtime's loop does with one poll, in order."""
    rt = BatchRuntime.__new__(BatchRuntime)
    rt.settings = SimpleNamespace(batch_max_records=100, batch_max_wait_s=0.01)
    rt.commit_first = commit_first
    rt._stopping = False
    rt._inflight = {}
    events: list[Any] = []
    polls = [msgs]

    async def blocking(fn: Any, *args: Any) -> Any:
        return fn(*args)

    def poll(_max: int, _wait: float) -> list[Any]:
        if not polls:
            rt._stopping = True
            return []
        return polls.pop()

    async def process(batch: list[Any]) -> None:
        events.append(sorted({m.topic() for m in batch}))

    rt._blocking = blocking  # type: ignore[method-assign]
    rt._poll = poll  # type: ignore[method-assign]
    rt._process = process  # type: ignore[method-assign]
    rt._commit_or_abort = lambda: events.append("commit")  # type: ignore[method-assign]
    rt._commit_due = lambda busy: False  # type: ignore[method-assign]
    import asyncio

    asyncio.run(rt._run())
    return events


def test_commands_are_decided_and_committed_before_the_polls_supplier_records() -> None:
    msgs = [_msg("deltas", 1), _msg("commands", 7), _msg("updates", 3), _msg("commands", 8)]
    assert _one_poll({"commands"}, msgs) == [["commands"], "commit", ["deltas", "updates"]]


def test_without_commit_first_topics_a_poll_is_one_batch_round() -> None:
    msgs = [_msg("deltas", 1), _msg("commands", 7)]
    assert _one_poll(set(), msgs) == [["commands", "deltas"]]


def test_a_poll_of_only_commands_is_committed_at_once() -> None:
    assert _one_poll({"commands"}, [_msg("commands", 1)]) == [["commands"], "commit"]
