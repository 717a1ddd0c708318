"""When the worker keeps its local RocksDB stores and when it restores from the changelogs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline.local_state import (
    CLEAN_MARKER,
    IDENTITY_FILE,
    mark_clean_stop,
    prepare_local_state,
    stale_reason,
)

IDS = {"app-stock-changelog": "id-s", "app-availability-changelog": "id-a"}


def _tables(tmp_path: Path) -> Path:
    tabledir = tmp_path / "v1" / "tables"
    (tabledir / "stock-0.db").mkdir(parents=True)
    return tabledir


def _start(tmp_path: Path, tabledir: Path, *, ids: dict[str, str | None] = IDS,
           app_id: str = "app", exactly_once: bool = True) -> str | None:
    """The reason the stores were discarded, None when they were kept."""
    decision = prepare_local_state(tmp_path, tabledir, app_id=app_id, topic_ids=ids,
                                   exactly_once=exactly_once)
    assert decision.action in ("kept", "discarded", "none")
    return decision.reason if decision.action == "discarded" else None


def test_unclean_start_discards_tables(tmp_path: Path) -> None:
    tabledir = _tables(tmp_path)
    assert _start(tmp_path, tabledir) == "the last run did not stop cleanly (exactly-once)"
    assert not tabledir.exists()


def test_clean_start_keeps_tables_and_consumes_marker(tmp_path: Path) -> None:
    tabledir = _tables(tmp_path)
    mark_clean_stop(tmp_path)
    assert _start(tmp_path, tabledir) is None
    assert tabledir.exists()
    assert not (tmp_path / CLEAN_MARKER).exists()  # a crash during this run counts as unclean
    recorded = json.loads((tmp_path / IDENTITY_FILE).read_text())
    assert (recorded["app_id"], recorded["changelogs"]) == ("app", IDS)


def test_at_least_once_keeps_tables_after_a_crash(tmp_path: Path) -> None:
    tabledir = _tables(tmp_path)
    assert _start(tmp_path, tabledir, exactly_once=False) is None
    assert tabledir.exists()


def test_recreated_changelog_discards_tables_even_after_a_clean_stop(tmp_path: Path) -> None:
    tabledir = _tables(tmp_path)
    mark_clean_stop(tmp_path)
    _start(tmp_path, tabledir, exactly_once=False)
    mark_clean_stop(tmp_path)
    reason = _start(tmp_path, tabledir, ids={**IDS, "app-stock-changelog": "id-new"},
                    exactly_once=False)
    assert reason == "changelog topic app-stock-changelog was recreated"
    assert not tabledir.exists()


def test_state_of_another_app_id_is_discarded(tmp_path: Path) -> None:
    tabledir = _tables(tmp_path)
    mark_clean_stop(tmp_path)
    _start(tmp_path, tabledir, app_id="other")
    mark_clean_stop(tmp_path)
    assert _start(tmp_path, tabledir) == "data dir belonged to app id 'other'"
    assert not tabledir.exists()


def test_topic_unknown_at_the_last_start_proves_nothing() -> None:
    recorded = {"app_id": "app", "changelogs": {"app-stock-changelog": None}}
    assert stale_reason(recorded, "app", {"app-stock-changelog": "id-s"}) is None
    assert stale_reason(None, "app", IDS) is None
    gone = {"app_id": "app", "changelogs": IDS}
    assert stale_reason(gone, "app", {**IDS, "app-stock-changelog": None}) == \
        "changelog topic app-stock-changelog was deleted"


def test_unreadable_identity_trusts_nothing(tmp_path: Path) -> None:
    tabledir = _tables(tmp_path)
    mark_clean_stop(tmp_path)
    (tmp_path / IDENTITY_FILE).write_text("{not json")
    assert _start(tmp_path, tabledir) is not None
    assert not tabledir.exists()


def test_unclean_stop_before_a_machine_restart_discards_even_with_undo_logs(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from pipeline import local_state

    tabledir = _tables(tmp_path)
    (tabledir.parent / "tables" / "stock-0.undo").write_bytes(b"")
    (tabledir.parent / "tables" / "stock.undo-logged").touch()
    monkeypatch.setattr(local_state, "boot_id", lambda: "boot-1")
    mark_clean_stop(tmp_path)
    assert prepare_local_state(tmp_path, tabledir, app_id="app", topic_ids=IDS,
                               exactly_once=True, undo_logs=True).action == "rolled_back"
    monkeypatch.setattr(local_state, "boot_id", lambda: "boot-2")
    decision = prepare_local_state(tmp_path, tabledir, app_id="app", topic_ids=IDS,
                                   exactly_once=True, undo_logs=True)
    assert decision.action == "discarded"
    assert "machine restarted" in decision.reason
