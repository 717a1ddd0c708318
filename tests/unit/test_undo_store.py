"""The undo log of the exactly-once table store: records, torn tails, roll back on RocksDB."""

from __future__ import annotations

from pathlib import Path

import pytest
from rocksdict import Options, Rdict

from pipeline.local_state import prepare_local_state
from pipeline.undo_store import (
    MAGIC,
    OFFSET_KEY,
    UndoLogError,
    decode,
    encode_entry,
    encode_offset,
    roll_back,
    undo_marker,
    undo_path,
)


def _db(path: Path) -> Rdict:
    return Rdict(str(path), options=Options(raw_mode=True))


def test_records_round_trip_and_a_torn_tail_is_ignored() -> None:
    log = MAGIC + encode_offset(2, 41) + encode_entry(2, b"k1", b"old") \
        + encode_entry(2, b"k2", None) + encode_offset(3, None)
    assert list(decode(log)) == [(b"P", 2, 41, None), (b"E", 2, b"k1", b"old"),
                                 (b"E", 2, b"k2", None), (b"P", 3, None, None)]
    torn = MAGIC + encode_entry(1, b"k", b"value")[:-2]
    assert list(decode(torn)) == []
    assert list(decode(b"")) == []  # emptied after a commit
    with pytest.raises(UndoLogError):
        list(decode(b"garbage"))


def _committed_then_uncommitted(tabledir: Path) -> None:
    """A store that committed {a: 1, b: 2} at changelog offset 10, then wrote a, c (no commit)."""
    tabledir.mkdir(parents=True)
    db = _db(tabledir / "stock-0.db")
    db[b"a"], db[b"b"], db[OFFSET_KEY] = b"1", b"2", b"10"
    undo_marker(tabledir, "stock").touch()
    undo_path(tabledir, "stock", 0).write_bytes(
        MAGIC + encode_offset(0, 10) + encode_entry(0, b"a", b"1") + encode_entry(0, b"c", None))
    db[b"a"], db[b"c"], db[OFFSET_KEY] = b"9", b"9", b"12"
    db.close()


def test_roll_back_restores_values_offsets_and_empties_the_log(tmp_path: Path) -> None:
    tabledir = tmp_path / "tables"
    _committed_then_uncommitted(tabledir)
    assert roll_back(tabledir, "stock", 0) == 2
    db = _db(tabledir / "stock-0.db")
    try:
        assert dict(db.items()) == {b"a": b"1", b"b": b"2", OFFSET_KEY: b"10"}
    finally:
        db.close()
    assert undo_path(tabledir, "stock", 0).read_bytes() == MAGIC
    assert roll_back(tabledir, "stock", 0) == 0  # idempotent


def test_an_unclean_exactly_once_start_rolls_back_instead_of_discarding(tmp_path: Path) -> None:
    tabledir = tmp_path / "v1" / "tables"
    _committed_then_uncommitted(tabledir)
    decision = prepare_local_state(tmp_path, tabledir, app_id="app", topic_ids={},
                                   exactly_once=True, undo_logs=True)
    assert (decision.action, decision.keys_restored) == ("rolled_back", 2)
    assert (tabledir / "stock-0.db").exists()


def test_a_table_written_without_undo_logs_is_discarded_after_an_unclean_stop(
        tmp_path: Path) -> None:
    tabledir = tmp_path / "v1" / "tables"
    _committed_then_uncommitted(tabledir)
    undo_marker(tabledir, "stock").unlink()
    decision = prepare_local_state(tmp_path, tabledir, app_id="app", topic_ids={},
                                   exactly_once=True, undo_logs=True)
    assert decision.action == "discarded"
    assert "without undo logs" in decision.reason
    assert not tabledir.exists()


def test_an_undo_logged_partition_without_a_log_has_nothing_to_undo(tmp_path: Path) -> None:
    tabledir = tmp_path / "v1" / "tables"
    _committed_then_uncommitted(tabledir)
    other = _db(tabledir / "stock-1.db")  # opened, never written: no log of its own
    other[b"z"] = b"1"
    other.close()
    decision = prepare_local_state(tmp_path, tabledir, app_id="app", topic_ids={},
                                   exactly_once=True, undo_logs=True)
    assert (decision.action, decision.keys_restored) == ("rolled_back", 2)
