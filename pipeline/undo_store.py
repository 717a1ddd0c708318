"""A RocksDB table store with an undo log, so a crashed exactly-once worker keeps its state.

Faust writes a table's RocksDB store as each event is processed, before the Kafka transaction
holding the matching changelog record commits. A worker killed between two commits leaves
local state *ahead* of the committed changelog. Without more information the only safe
restart is to delete the stores and restore every key from the changelogs, which takes
minutes at a million keys.

This store keeps that information. Before the first write of a key in a commit window it
appends the key's previous value to the partition's log `<tabledir>/<table>-<partition>.undo`,
and before the first write of the window the partition's persisted changelog offset (the
offset the store is known to hold everything up to). After a commit (see
`pipeline/transactions.py`), the partitions whose transactions it committed get their
persisted offsets written and their logs emptied; the others keep theirs. At an
unclean start `roll_back` puts the previous values back and rewinds the persisted offsets,
so the store equals the last committed state and Faust's recovery reads only the committed
changelog records after it: the writes of a transaction that did commit are read again,
those of one that aborted are gone.

A record reaches the file (a write(2)) before the RocksDB write it covers, so a killed
process never leaves a RocksDB write without its undo record. Neither is fsynced: after a
machine crash (a new boot id) the worker discards the stores instead (pipeline/local_state.py).
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from faust.stores.rocksdb import Store as RocksDBStore
from faust.streams import current_event

SCHEME = "stockflow-rocksdb"  # the store URL scheme: `stockflow-rocksdb://`
MAGIC = b"stockflow-undo v1\n"
SUFFIX = ".undo"
OFFSET_KEY = RocksDBStore.offset_key
_ENTRY = b"E"  # E partition:u32 keylen:u32 key vallen:i32 value (vallen -1: key was absent)
_OFFSET = b"P"  # P partition:u32 offset:i64 (-1: no persisted offset)


class UndoLogError(Exception):
    """The undo log cannot be read: the store must be restored from its changelog."""


def undo_path(tabledir: Path, table: str, partition: int) -> Path:
    """Where the undo log of one partition's store lives (next to `<table>-<partition>.db`).

    One log per partition: a commit may commit the transactions of some partitions and not
    others (a partition with nothing to commit), so each log is emptied on its own."""
    return Path(tabledir) / f"{table}-{partition}{SUFFIX}"


def undo_marker(tabledir: Path, table: str) -> Path:
    """Present once the table's stores are written through UndoLoggedStore."""
    return Path(tabledir) / f"{table}.undo-logged"


def encode_entry(partition: int, key: bytes, old: bytes | None) -> bytes:
    """One undo record: the value `key` had in `partition` before this window's first write."""
    if old is None:
        return _ENTRY + struct.pack(">II", partition, len(key)) + key + struct.pack(">i", -1)
    return (_ENTRY + struct.pack(">II", partition, len(key)) + key
            + struct.pack(">i", len(old)) + old)


def encode_offset(partition: int, offset: int | None) -> bytes:
    """The persisted offset a partition's store had before this window's first write."""
    return _OFFSET + struct.pack(">Iq", partition, -1 if offset is None else offset)


def decode(data: bytes) -> Iterator[tuple[bytes, int, Any, Any]]:
    """The records of an undo log: ('E', partition, key, old) and ('P', partition, offset, None).

    A torn last record (the process died while writing it) is skipped: the RocksDB write it
    would have covered never happened.
    """
    if not data:
        return  # emptied after a commit, killed before the header was written again
    if not data.startswith(MAGIC):
        raise UndoLogError("not a stockflow undo log")
    pos, end = len(MAGIC), len(data)
    while pos < end:
        kind = data[pos:pos + 1]
        if kind == _OFFSET:
            if pos + 13 > end:
                return
            partition, offset = struct.unpack_from(">Iq", data, pos + 1)
            pos += 13
            yield _OFFSET, partition, (None if offset < 0 else offset), None
        elif kind == _ENTRY:
            if pos + 9 > end:
                return
            partition, klen = struct.unpack_from(">II", data, pos + 1)
            kstart = pos + 9
            if kstart + klen + 4 > end:
                return
            key = data[kstart:kstart + klen]
            (vlen,) = struct.unpack_from(">i", data, kstart + klen)
            vstart = kstart + klen + 4
            if vlen < 0:
                old = None
                pos = vstart
            else:
                if vstart + vlen > end:
                    return
                old = data[vstart:vstart + vlen]
                pos = vstart + vlen
            yield _ENTRY, partition, key, old
        else:
            raise UndoLogError(f"unknown undo record {kind!r} at byte {pos}")


def roll_back(tabledir: Path, table: str, partition: int, open_db: Any = None) -> int:
    """Undo the uncommitted writes of one partition's store; returns the keys restored.

    `open_db(path)` opens a partition's RocksDB (default: rocksdict in raw mode, as Faust
    opens it). The log is emptied afterwards.
    """
    path = undo_path(tabledir, table, partition)
    records = list(decode(path.read_bytes()))
    if open_db is None:
        open_db = _open_rocksdict
    dbs: dict[int, Any] = {}
    restored = 0
    try:
        # Newest first: with one record per key and window the order only matters for the
        # offsets, but reverse order is the undo order in general.
        for kind, partition, a, b in reversed(records):
            db = dbs.get(partition)
            if db is None:
                db = dbs[partition] = open_db(Path(tabledir) / f"{table}-{partition}.db")
            if kind == _ENTRY:
                if b is None:
                    db.delete(a)
                else:
                    db.put(a, b)
                restored += 1
            elif a is None:
                db.delete(OFFSET_KEY)
            else:
                db.put(OFFSET_KEY, str(a).encode())
    finally:
        for db in dbs.values():
            db.close()
    _reset(path)
    return restored


def _open_rocksdict(path: Path) -> Any:
    from rocksdict import Options, Rdict

    return Rdict(str(path), options=Options(raw_mode=True))


def _reset(path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(MAGIC)
    os.replace(tmp, path)


class UndoLoggedStore(RocksDBStore):
    """Faust's RocksDB store, logging each key's previous value once per commit window."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._undo_fds: dict[int, int] = {}
        self._undo_keys: dict[int, set[bytes]] = {}  # partition -> keys logged this window

    # ------------------------------------------------------------------ the log
    def _undo_file(self, partition: int) -> int:
        fd = self._undo_fds.get(partition)
        if fd is None:
            path = undo_path(self.path, self.table_name, partition)
            path.parent.mkdir(parents=True, exist_ok=True)
            if not path.exists() or path.stat().st_size == 0:
                _reset(path)
            fd = self._undo_fds[partition] = os.open(path, os.O_WRONLY | os.O_APPEND)
        return fd

    def _log(self, partition: int, record: bytes) -> None:
        fd = self._undo_file(partition)
        written = os.write(fd, record)
        if written != len(record):  # a short write on a regular file: disk full
            raise OSError(f"undo log: wrote {written} of {len(record)} bytes")

    def _open_for_partition(self, partition: int) -> Any:
        # The table's marker says its stores are undo-logged: a partition without a log was
        # never written since (nothing to undo); without the marker a store may hold writes
        # of a version without undo logs (pipeline/local_state.py then discards it).
        marker = undo_marker(self.path, self.table_name)
        if not marker.exists():
            marker.parent.mkdir(parents=True, exist_ok=True)
            marker.touch()
        return super()._open_for_partition(partition)

    def _before_write(self, partition: int, db: Any, key: bytes) -> None:
        keys = self._undo_keys.get(partition)
        if keys is None:
            raw = db.get(OFFSET_KEY)
            self._log(partition, encode_offset(partition, int(raw) if raw is not None else None))
            keys = self._undo_keys[partition] = set()
        if key not in keys:
            self._log(partition, encode_entry(partition, key, db.get(key)))
            keys.add(key)

    def undo_checkpoint(self, partitions: Iterable[int]) -> None:
        """The writes to these partitions are committed: empty their logs."""
        for partition in partitions:
            if self._undo_keys.pop(partition, None) is None:
                continue
            fd = self._undo_file(partition)
            os.ftruncate(fd, 0)
            self._log(partition, MAGIC)

    # ------------------------------------------------------ Faust's write paths
    def _set(self, key: bytes, value: bytes | None) -> None:
        event = current_event()
        assert event is not None
        partition = event.message.partition
        db = self._db_for_partition(partition)
        self._before_write(partition, db, key)
        self._key_index[key] = partition
        db.put(key, value)

    def _del(self, key: bytes) -> None:
        for partition, db in list(self._dbs.items()):
            if db.get(key) is not None:
                self._before_write(partition, db, key)
                db.delete(key)

    async def stop(self) -> None:
        for fd in self._undo_fds.values():
            os.close(fd)
        self._undo_fds.clear()
        await super().stop()


def register() -> str:
    """Make `stockflow-rocksdb://` name this store in Faust's store registry."""
    from faust import stores

    stores.STORES.aliases.setdefault(SCHEME, f"{__name__}:UndoLoggedStore")
    return f"{SCHEME}://"
