"""A RocksDB table store with an undo log, so a crashed exactly-once worker keeps its state.

Faust writes a table's RocksDB store as each event is processed, before the Kafka transaction
holding the matching changelog record commits. A worker killed between two commits leaves
local state *ahead* of the committed changelog. Without more information the only safe
restart is to delete the stores and restore every key from the changelogs, which takes
minutes at a million keys.

This store keeps that information. Before the first write of a key in a commit window it
appends the key's previous value to `<tabledir>/<table>.undo`, and before the first write
of a partition in the window the partition's persisted changelog offset (the offset the
store is known to hold everything up to). After every successful commit (see
`pipeline/transactions.py`) the persisted offsets are written and the log is emptied. At an
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
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from faust.stores.rocksdb import Store as RocksDBStore
from faust.streams import current_event

MAGIC = b"stockflow-undo v1\n"
SUFFIX = ".undo"
OFFSET_KEY = RocksDBStore.offset_key
_ENTRY = b"E"  # E partition:u32 keylen:u32 key vallen:i32 value (vallen -1: key was absent)
_OFFSET = b"P"  # P partition:u32 offset:i64 (-1: no persisted offset)


class UndoLogError(Exception):
    """The undo log cannot be read: the store must be restored from its changelog."""


def undo_path(tabledir: Path, table: str) -> Path:
    """Where a table's undo log lives (next to its `<table>-<partition>.db` stores)."""
    return Path(tabledir) / f"{table}{SUFFIX}"


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


def roll_back(tabledir: Path, table: str, open_db: Any = None) -> int:
    """Undo a table's uncommitted writes in its stores; returns how many keys were restored.

    `open_db(path)` opens a partition's RocksDB (default: rocksdict in raw mode, as Faust
    opens it). The log is emptied afterwards.
    """
    path = undo_path(tabledir, table)
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
        self._undo_fd: int | None = None
        self._undo_keys: set[tuple[int, bytes]] = set()
        self._undo_partitions: set[int] = set()

    # ------------------------------------------------------------------ the log
    def _undo_file(self) -> int:
        if self._undo_fd is None:
            path = undo_path(self.path, self.table_name)
            path.parent.mkdir(parents=True, exist_ok=True)
            if not path.exists() or path.stat().st_size == 0:
                _reset(path)
            self._undo_fd = os.open(path, os.O_WRONLY | os.O_APPEND)
        return self._undo_fd

    def _log(self, record: bytes) -> None:
        fd = self._undo_file()
        written = os.write(fd, record)
        if written != len(record):  # a short write on a regular file: disk full
            raise OSError(f"undo log: wrote {written} of {len(record)} bytes")

    def _before_write(self, partition: int, db: Any, key: bytes) -> None:
        if partition not in self._undo_partitions:
            raw = db.get(OFFSET_KEY)
            self._log(encode_offset(partition, int(raw) if raw is not None else None))
            self._undo_partitions.add(partition)
        if (partition, key) not in self._undo_keys:
            self._log(encode_entry(partition, key, db.get(key)))
            self._undo_keys.add((partition, key))

    def undo_checkpoint(self) -> None:
        """Everything written so far is committed: start an empty window."""
        if not self._undo_keys and not self._undo_partitions:
            return
        fd = self._undo_file()
        os.ftruncate(fd, 0)
        self._log(MAGIC)
        self._undo_keys.clear()
        self._undo_partitions.clear()

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
        if self._undo_fd is not None:
            os.close(self._undo_fd)
            self._undo_fd = None
        await super().stop()


def register() -> str:
    """Make `stockflow-rocksdb://` name this store in Faust's store registry."""
    from faust import stores

    stores.STORES.aliases.setdefault("stockflow-rocksdb", f"{__name__}:UndoLoggedStore")
    return "stockflow-rocksdb://"
