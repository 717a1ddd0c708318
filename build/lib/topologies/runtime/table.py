"""BatchTable: a Faust table whose values stay decoded in memory and are written once a commit.

Installed as the app's `conf.Table` (topologies/runtime/__init__.py), so `app.Table(...)`
declares it and Faust names its changelog topic (`<app id>-<table>-changelog`). Faust's own
store, changelog sends and recovery are not used; the batch runtime drives this class:

- Reads and writes name the partition (the input partition the key arrived on): a value
  read once is kept decoded (bounded by `cache_keys`; clean entries are evicted, least
  recently written first),
  a value written is marked dirty.
- At a commit (`changed()`), every dirty key is encoded once; the runtime sends those bytes
  to the changelog inside the Kafka transaction, and only after the transaction committed
  are they written to RocksDB, with the changelog offset, in one WriteBatch per partition
  (`persist`). RocksDB therefore only ever holds committed state: a crash or an aborted
  transaction needs no undo, the uncommitted values are simply dropped (`discard_uncommitted`).
- When a partition is assigned, its RocksDB is opened and caught up from the changelog after
  the offset it recorded (`restore`); when revoked, it is closed.
"""

from __future__ import annotations

import shutil
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from faust.tables.table import Table as FaustTable

from pipeline.errors import StockflowError
from schemas.codec import codec_for

# The RocksDB key holding the next changelog offset the partition has not applied. Table keys
# are validated ids (printable, no control characters), so none starts with NUL.
OFFSET_KEY = b"\x00changelog-next-offset"
_OFFSET = struct.Struct("<q")


class TableError(StockflowError):
    """A table was used in a way the batch runtime does not support."""


@dataclass(slots=True)
class PartitionState:
    """One assigned partition of a table: its decoded values, what changed, its RocksDB."""

    db: Any  # rocksdict.Rdict
    path: Path
    next_offset: int  # the next changelog offset not applied to db
    values: dict[bytes, Any] = field(default_factory=dict)
    dirty: set[bytes] = field(default_factory=set)


class BatchTable(FaustTable):
    """A Faust table read and written per partition by the batch runtime (see module doc)."""

    def __init__(self, app: Any, *, record: str | None = None, cache_keys: int = 100_000,
                 **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self.record = record or ""
        self.cache_keys = cache_keys
        self._codec = codec_for(record) if record else None
        self._parts: dict[int, PartitionState] = {}
        self.tabledir: Path | None = None

    # -- declaration ---------------------------------------------------------------------
    @property
    def codec(self) -> Any:
        if self._codec is None:
            raise TableError(f"table {self.name} has no value record")
        return self._codec

    @property
    def changelog_name(self) -> str:
        return self.changelog_topic.get_topic_name()

    def _new_store(self) -> Any:
        raise TableError(f"table {self.name} is read and written per partition "
                         "(get_in/set_in); Faust's store is not used")

    # -- values ----------------------------------------------------------------------------
    def get_in(self, partition: int, key: bytes) -> Any | None:
        """The decoded value of key in an assigned partition, or None."""
        part = self._parts.get(partition)
        if part is None:
            raise TableError(f"table {self.name}: partition {partition} is not assigned")
        values = part.values
        value = values.get(key)
        if value is not None:
            return value
        raw = part.db.get(key)
        if raw is None:
            return None
        value = self.codec.decode_trusted(raw)
        values[key] = value
        if len(values) > self.cache_keys:
            self._evict(part)
        return value

    def set_in(self, partition: int, key: bytes, value: Any) -> None:
        """Set key's value; it reaches the changelog and RocksDB at the next commit."""
        part = self._parts.get(partition)
        if part is None:
            raise TableError(f"table {self.name}: partition {partition} is not assigned")
        values = part.values
        values.pop(key, None)  # to the end: eviction takes the least recently written first
        values[key] = value
        part.dirty.add(key)

    def _evict(self, part: PartitionState) -> None:
        # Least recently written (or loaded) first; dirty values stay until their commit.
        # A table written by one loop can be read by another's agent (the reservation lane
        # reads `availability`) while its commit runs on a Kafka thread: both may evict at
        # once, so a key already gone is no error.
        target = int(self.cache_keys * 0.8)
        values, dirty = part.values, part.dirty
        for key in list(values):
            if len(values) <= target:
                break
            if key not in dirty:
                values.pop(key, None)

    # -- commit --------------------------------------------------------------------------
    def has_changes(self) -> bool:
        return any(p.dirty for p in self._parts.values())

    def changed(self) -> Iterator[tuple[int, list[tuple[bytes, bytes]]]]:
        """(partition, [(key, encoded value)]) of every dirty key, each encoded once."""
        encode = self.codec.encode
        for partition, part in self._parts.items():
            if part.dirty:
                values = part.values
                yield partition, [(key, encode(values[key])) for key in part.dirty]

    def persist(self, partition: int, rows: list[tuple[bytes, bytes]], next_offset: int) -> None:
        """After the transaction committed: write the rows and the changelog offset at once."""
        from rocksdict import WriteBatch

        part = self._parts.get(partition)
        if part is None:  # revoked meanwhile: the next owner restores from the changelog
            return
        batch = WriteBatch(raw_mode=True)
        for key, raw in rows:
            batch.put(key, raw)
        if next_offset > part.next_offset:
            part.next_offset = next_offset
        batch.put(OFFSET_KEY, _OFFSET.pack(part.next_offset))
        part.db.write(batch)
        part.dirty.difference_update(key for key, _ in rows)
        if len(part.values) > self.cache_keys:  # new keys never pass through get_in's load
            self._evict(part)

    def discard_uncommitted(self) -> int:
        """Drop every value not committed (an aborted transaction); returns how many."""
        dropped = 0
        for part in self._parts.values():
            for key in part.dirty:
                part.values.pop(key, None)
                dropped += 1
            part.dirty.clear()
        return dropped

    # -- partitions --------------------------------------------------------------------------
    def assigned(self) -> list[int]:
        return sorted(self._parts)

    def keys_estimate(self) -> int:
        total = 0
        for part in self._parts.values():
            value = part.db.property_int_value("rocksdb.estimate-num-keys")
            total += int(value or 0)
        return total

    def partition_path(self, partition: int) -> Path:
        if self.tabledir is None:
            raise TableError(f"table {self.name}: no table directory set")
        return self.tabledir / self.name / f"{partition}.db"

    def open_partition(self, partition: int) -> int:
        """Open the partition's RocksDB; returns the next changelog offset it has not applied."""
        from rocksdict import Rdict

        if partition in self._parts:
            return self._parts[partition].next_offset
        path = self.partition_path(partition)
        path.parent.mkdir(parents=True, exist_ok=True)
        db = Rdict(str(path), options=_options())
        raw = db.get(OFFSET_KEY)
        next_offset = _OFFSET.unpack(raw)[0] if raw is not None else 0
        self._parts[partition] = PartitionState(db=db, path=path, next_offset=next_offset)
        return next_offset

    def reset_partition(self, partition: int) -> None:
        """Delete the partition's local store (its changelog no longer continues it)."""
        self.close_partition(partition)
        path = self.partition_path(partition)
        shutil.rmtree(path, ignore_errors=True)

    def apply_changelog(self, partition: int, records: list[tuple[bytes, bytes]],
                        next_offset: int) -> None:
        """Restore: write changelog records straight to RocksDB (they are committed)."""
        from rocksdict import WriteBatch

        part = self._parts[partition]
        batch = WriteBatch(raw_mode=True)
        for key, raw in records:
            batch.put(key, raw)
            part.values.pop(key, None)
        part.next_offset = next_offset
        batch.put(OFFSET_KEY, _OFFSET.pack(next_offset))
        part.db.write(batch)

    def close_partition(self, partition: int) -> None:
        part = self._parts.pop(partition, None)
        if part is not None:
            part.db.close()

    def close_all(self) -> None:
        for partition in list(self._parts):
            self.close_partition(partition)


# One memory budget for every partition store of the process: RocksDB's default is a 64 MB
# memtable (and its own block cache) per database, and a worker opens one per table and
# partition (12 at 4 partitions): 1M keys reached 2 GB of RSS before this. Values read often
# stay decoded in the table's own cache; RocksDB's budget is for the rest.
ROCKSDB_MEMORY_BYTES = 64 * 2**20
_shared: dict[str, Any] = {}


def _options() -> Any:
    from rocksdict import BlockBasedOptions, Cache, Options, WriteBufferManager

    if "cache" not in _shared:
        cache = Cache(ROCKSDB_MEMORY_BYTES)
        _shared["cache"] = cache
        # Memtables are charged to the same cache, so the budget covers both.
        _shared["buffers"] = WriteBufferManager.new_write_buffer_manager_with_cache(
            ROCKSDB_MEMORY_BYTES // 2, False, cache)
    options = Options(raw_mode=True)
    options.create_if_missing(True)
    table_options = BlockBasedOptions()
    table_options.set_block_cache(_shared["cache"])
    options.set_block_based_table_factory(table_options)
    options.set_write_buffer_manager(_shared["buffers"])
    options.set_write_buffer_size(8 * 2**20)
    return options


def table_factory(cache_keys: int) -> Callable[..., BatchTable]:
    """The `conf.Table` class of an app whose tables keep `cache_keys` decoded values."""

    class Table(BatchTable):
        def __init__(self, app: Any, **kwargs: Any) -> None:
            kwargs.setdefault("cache_keys", cache_keys)
            super().__init__(app, **kwargs)

    return Table
