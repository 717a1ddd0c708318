"""The replay loop's throttle (`stockflow replay --max-rate`), with a fake log and fold."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

from connectors.logtools.log_reader import LogRecord
from connectors.logtools.runner import Replay, ReplayWindow


class FakeReader:
    def __init__(self, batches: int, size: int) -> None:
        self.batches, self.size = batches, size

    def read(self, start: dict[int, int], end: dict[int, int]) -> Iterator[list[LogRecord]]:
        for b in range(self.batches):
            yield [LogRecord(0, b * self.size + i, 0, b"k", b"v") for i in range(self.size)]


class FakeFold:
    stats = SimpleNamespace(invalid=0, stale=0, duplicate=0)

    def apply(self, *_: Any) -> Any:
        return SimpleNamespace(update=None, change=None)


def _run(max_rate: float | None) -> tuple[float, int]:
    replay = Replay(FakeReader(batches=4, size=10), FakeFold(),  # type: ignore[arg-type]
                    fold_start={0: 0}, fold_end={0: 40},
                    window=ReplayWindow({0: 0}, {0: 40}), max_rate=max_rate)
    t0 = time.monotonic()
    progress = asyncio.run(replay.run())
    return time.monotonic() - t0, progress.read


def test_max_rate_holds_the_replay_to_that_many_records_per_second() -> None:
    seconds, read = _run(max_rate=100)
    assert read == 40
    # Batch 4 may start only when 30 records / 100 per s = 0.3 s have passed.
    assert seconds >= 0.3

