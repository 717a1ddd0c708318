"""After a commit only the partitions whose transactions committed are persisted and undone."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from faust.types import TP

from pipeline.transactions import after_commit


class FakeStore:
    def __init__(self) -> None:
        self.persisted: dict[TP, int] = {}
        self.checkpoints: list[list[int]] = []

    def set_persisted_offset(self, tp: TP, offset: int) -> None:
        self.persisted[tp] = offset

    def undo_checkpoint(self, partitions: list[int]) -> None:
        self.checkpoints.append(sorted(partitions))


def test_only_committed_partitions_are_persisted_and_checkpointed() -> None:
    store = FakeStore()
    changelog = "app-stock-changelog"
    table: Any = SimpleNamespace(data=store, partitions=4,
                                 changelog_topic=SimpleNamespace(get_topic_name=lambda: changelog))
    pending = {TP(changelog, 0): (store, 10), TP(changelog, 1): (store, 20)}
    tables: Any = SimpleNamespace(_pending_persisted_offsets=pending, values=lambda: [table])
    groups = {"app.inventory.deltas": 1, changelog: 1}
    app: Any = SimpleNamespace(tables=tables, conf=SimpleNamespace(topic_partitions=4),
                               assignor=SimpleNamespace(group_for_topic=groups.__getitem__))

    # Partition 1's transaction committed; partition 0 had no offsets, its stays open.
    after_commit(app, {TP("app.inventory.deltas", 1): 100})

    assert store.persisted == {TP(changelog, 1): 20}
    assert pending == {TP(changelog, 0): (store, 10)}  # persisted once its transaction commits
    assert store.checkpoints == [[1]]


def test_transactional_commits_reach_faust_stall_detector() -> None:
    from pipeline.transactions import note_commit_time

    tp0, tp1 = TP("app.inventory.deltas", 0), TP("app.inventory.deltas", 1)
    thread = SimpleNamespace(tp_last_committed_at={tp0: 5.0})
    note_commit_time(SimpleNamespace(_thread=thread), {tp1: 100}, now=42.0)

    # Only the partition that committed is stamped; a stalled one keeps its old time.
    assert thread.tp_last_committed_at == {tp0: 5.0, tp1: 42.0}
    # A consumer without Faust's aiokafka thread (another driver) is left alone.
    note_commit_time(SimpleNamespace(), {tp1: 100})
