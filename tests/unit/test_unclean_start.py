"""After a crash the worker discards local table state so it is rebuilt from the changelogs."""

from __future__ import annotations

from pathlib import Path

from pipeline.commands.pipeline import discard_unclean_state


def _tables(tmp_path: Path) -> Path:
    tabledir = tmp_path / "v1" / "tables"
    (tabledir / "stock-0.db").mkdir(parents=True)
    return tabledir


def test_unclean_start_discards_tables(tmp_path: Path) -> None:
    tabledir = _tables(tmp_path)
    assert discard_unclean_state(tabledir, tmp_path / "clean-shutdown", exactly_once=True)
    assert not tabledir.exists()


def test_clean_start_keeps_tables_and_consumes_marker(tmp_path: Path) -> None:
    tabledir = _tables(tmp_path)
    marker = tmp_path / "clean-shutdown"
    marker.touch()
    assert not discard_unclean_state(tabledir, marker, exactly_once=True)
    assert tabledir.exists()
    assert not marker.exists()  # a crash during this run will count as unclean


def test_at_least_once_keeps_tables(tmp_path: Path) -> None:
    tabledir = _tables(tmp_path)
    assert not discard_unclean_state(tabledir, tmp_path / "clean-shutdown", exactly_once=False)
    assert tabledir.exists()
