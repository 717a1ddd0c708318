"""The replay: fold the log from its beginning, write the window's updates through the sinks.

State before a window is needed to decide what a delta inside it does (a stale check, an
ADJUSTMENT's base), so the fold always starts at the beginning of the log and only the
updates of deltas inside the window (and the filters) are written. The sinks are the
worker's: `CassandraSink.write_batch` (USING TIMESTAMP = version) then
`RedisCache.apply_batch` (Lua compare-and-set on the version), in that order per batch so the
cache is never ahead of the database. Re-writing what is already there is a no-op.

Reading and folding the next batch (in a thread) overlaps the writes of the current one.
A stop request is honoured between batches: the batch being written is finished and the
checkpoint records how far writes are durable, so a rerun continues from there.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from connectors.logtools.fold import LogFold
from connectors.logtools.log_reader import LogReader, LogRecord
from pipeline.log import get_logger

log = get_logger(__name__)


class UpdateSink(Protocol):
    """The Cassandra sink as the replay uses it."""

    async def write_batch(self, updates: Sequence[dict[str, Any]]) -> int: ...


class ChangeCache(Protocol):
    """The Redis cache as the replay uses it."""

    async def apply_batch(self, changes: list[dict[str, Any]]) -> int: ...


@dataclass(frozen=True)
class ReplayWindow:
    """Which folded updates are written: offsets [write_from, write_to) per partition + filters."""

    write_from: dict[int, int]
    write_to: dict[int, int]
    suppliers: frozenset[str] = frozenset()
    skus: frozenset[str] = frozenset()

    def selects(self, partition: int, offset: int, update: dict[str, Any]) -> bool:
        if not self.write_from.get(partition, 0) <= offset < self.write_to.get(partition, 0):
            return False
        if self.suppliers and update["supplier_id"] not in self.suppliers:
            return False
        return not self.skus or update["sku"] in self.skus or update["platform_sku"] in self.skus


@dataclass
class Checkpoint:
    """How far an interrupted replay's writes are durable, per partition (JSON file)."""

    path: Path
    plan_id: str
    fold_end: dict[int, int]
    written: dict[int, int] = field(default_factory=dict)

    @classmethod
    def load(cls, path: Path, plan_id: str) -> Checkpoint | None:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        if data.get("plan_id") != plan_id:
            return None
        return cls(path, plan_id, {int(p): int(o) for p, o in data["fold_end"].items()},
                   {int(p): int(o) for p, o in data["written"].items()})

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"plan_id": self.plan_id, "fold_end": self.fold_end,
                                   "written": self.written, "saved_at": time.time()}),
                       encoding="utf-8")
        os.replace(tmp, self.path)  # atomic: a crash leaves the old or the new file

    def delete(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


def plan_id(**parts: Any) -> str:
    """A stable id of a replay's parameters: the same command finds its own checkpoint."""
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass
class ReplayProgress:
    """Counters for the progress bar and the summary."""

    read: int = 0
    total: int = 0
    selected: int = 0
    updates_written: int = 0
    changes_written: int = 0
    rows_written: int = 0
    keys_written: int = 0
    batches: int = 0
    interrupted: bool = False
    started: float = field(default_factory=time.monotonic)
    touched: set[tuple[str, str]] = field(default_factory=set)


@dataclass
class _Folded:
    updates: list[dict[str, Any]]
    changes: list[dict[str, Any]]
    next_offsets: dict[int, int]
    records: int


def coalesce_updates(updates: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The newest update per (supplier, sku), for a replay that skips the full history."""
    latest: dict[tuple[str, str], dict[str, Any]] = {}
    for u in updates:
        k = (u["supplier_id"], u["sku"])
        held = latest.get(k)
        if held is None or u["version"] >= held["version"]:
            latest[k] = u
    return list(latest.values())


class Replay:
    """One replay run: fold [fold_start, fold_end), write what the window selects."""

    def __init__(self, reader: LogReader, fold: LogFold, *, fold_start: dict[int, int],
                 fold_end: dict[int, int], window: ReplayWindow,
                 sink: UpdateSink | None = None, cache: ChangeCache | None = None,
                 history: bool = True, checkpoint: Checkpoint | None = None,
                 dry_run: bool = False, max_rate: float | None = None) -> None:
        self.reader = reader
        self.fold = fold
        self.fold_start = fold_start
        self.fold_end = fold_end
        self.window = window
        self.sink = sink
        self.cache = cache
        self.history = history
        self.checkpoint = checkpoint
        self.dry_run = dry_run
        self.max_rate = max_rate  # log records per second, None: as fast as it goes
        self.resume = dict(checkpoint.written) if checkpoint else {}
        self.progress = ReplayProgress(
            total=sum(max(0, fold_end[p] - fold_start.get(p, 0)) for p in fold_end))
        self.stop_requested = False

    def request_stop(self) -> None:
        """Stop after the batch being written (Ctrl-C)."""
        self.stop_requested = True

    def _fold_batch(self, records: list[LogRecord]) -> _Folded:
        updates: list[dict[str, Any]] = []
        changes: list[dict[str, Any]] = []
        next_offsets: dict[int, int] = {}
        window, fold, resume = self.window, self.fold, self.resume
        touched = self.progress.touched
        for r in records:
            step = fold.apply(r.key, r.value, r.timestamp_ms, r.partition)
            next_offsets[r.partition] = r.offset + 1
            update = step.update
            if update is None or not window.selects(r.partition, r.offset, update):
                continue
            if r.offset < resume.get(r.partition, -1):
                continue  # written by the interrupted run this one continues
            updates.append(update)
            if step.change is not None:
                changes.append(step.change)
            if self.dry_run:
                touched.add((update["platform_sku"], update["supplier_id"]))
        return _Folded(updates, changes, next_offsets, len(records))

    def _next_folded(self, batches: Iterator[list[LogRecord]]) -> _Folded | None:
        records = next(batches, None)
        return None if records is None else self._fold_batch(records)

    async def _write(self, folded: _Folded) -> None:
        if self.dry_run:
            return
        if self.sink is not None and folded.updates:
            updates = folded.updates if self.history else coalesce_updates(folded.updates)
            self.progress.rows_written += await self.sink.write_batch(updates)
        # After Cassandra acknowledged: the cache is never ahead of the database.
        if self.cache is not None and folded.changes:
            self.progress.keys_written += await self.cache.apply_batch(folded.changes)
        self.progress.updates_written += len(folded.updates)
        self.progress.changes_written += len(folded.changes)

    def _record_written(self, folded: _Folded) -> None:
        if self.checkpoint is None or self.dry_run:
            return
        self.checkpoint.written.update(folded.next_offsets)
        self.checkpoint.save()

    async def run(self, on_batch: Callable[[ReplayProgress], None] | None = None) -> ReplayProgress:
        """Fold and write until the end or a stop request; returns the counters."""
        progress = self.progress
        batches = self.reader.read(self.fold_start, self.fold_end)
        pending: tuple[asyncio.Task[None], _Folded] | None = None
        started = time.monotonic()
        try:
            while True:
                if self.max_rate:
                    # Throttle (a live Cassandra): never ahead of max_rate records per second.
                    ahead = progress.read / self.max_rate - (time.monotonic() - started)
                    if ahead > 0:
                        await asyncio.sleep(ahead)
                folded = await asyncio.to_thread(self._next_folded, batches)
                if pending is not None:
                    await pending[0]
                    self._record_written(pending[1])
                    pending = None
                if folded is None:
                    break
                progress.read += folded.records
                progress.selected += len(folded.updates)
                progress.batches += 1
                if on_batch is not None:
                    on_batch(progress)
                if self.stop_requested:
                    # This batch is folded but not written: the checkpoint stops before it.
                    progress.interrupted = True
                    break
                pending = (asyncio.create_task(self._write(folded)), folded)
            if pending is not None:
                await pending[0]
                self._record_written(pending[1])
        finally:
            if pending is not None and not pending[0].done():
                # Cancelled from outside: let the write finish, never leave a batch half sent.
                with contextlib.suppress(BaseException):
                    await asyncio.shield(pending[0])
            with contextlib.suppress(Exception):
                batches.close()  # type: ignore[attr-defined]
        if self.checkpoint is not None and not self.dry_run and not progress.interrupted:
            self.checkpoint.delete()
        log.info("replay.finished", read=progress.read, selected=progress.selected,
                 updates_written=progress.updates_written,
                 changes_written=progress.changes_written, interrupted=progress.interrupted,
                 invalid=self.fold.stats.invalid, stale=self.fold.stats.stale,
                 duplicate=self.fold.stats.duplicate)
        return progress


def new_fold(settings: Any) -> LogFold:
    """A LogFold configured like the worker (catalog, dedup TTL)."""
    from pipeline.catalog import Catalog

    catalog = Catalog.from_file(settings.catalog_path) if settings.catalog_path \
        else Catalog.empty()
    return LogFold(catalog=catalog, dedup_ttl_ms=settings.dedup_ttl_s * 1000,
                   wall_clock_ms=lambda: int(time.time() * 1000))


def new_reader(settings: Any, batch_size: int = 5000) -> LogReader:
    """A reader of inventory.deltas in the replay's own group (never the worker's)."""
    from pipeline.topics import DELTAS

    return LogReader(settings.confluent_config(), settings.topic(DELTAS.name),
                     group_id=f"{settings.app_id}-replay", batch_size=batch_size)


def fold_log(reader: LogReader, fold: LogFold, start: dict[int, int],
             end: dict[int, int]) -> int:
    """Fold [start, end) without writing anything (verify); returns the records read."""
    n = 0
    for batch in reader.read(start, end):
        for r in batch:
            fold.apply(r.key, r.value, r.timestamp_ms, r.partition)
        n += len(batch)
    return n
