"""Durable cursors and CSV snapshots of the supplier sources: one sqlite file, atomic commits.

A source stores its cursor only after Kafka acknowledged what it emitted, so a restart
resumes exactly there: at worst it re-emits the last page, with the same event ids.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from pipeline.errors import ConnectorError

_SCHEMA = """
CREATE TABLE IF NOT EXISTS cursors (
    source TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS snapshot_rows (
    source TEXT NOT NULL,
    sku TEXT NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY (source, sku)
);
"""


class CursorStore:
    """Cursors (a JSON value per source) and snapshots (a JSON value per source and SKU)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            # isolation_level=None: transactions are explicit, so a commit is one BEGIN..COMMIT.
            self._db = sqlite3.connect(self.path, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            # FULL: a committed cursor survives a power cut, not only a process crash.
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(_SCHEMA)
        except sqlite3.Error as exc:
            raise ConnectorError(f"cannot open the connector state {self.path}: {exc}") from exc

    def get_cursor(self, source: str) -> dict[str, Any] | None:
        row = self._db.execute("SELECT value FROM cursors WHERE source = ?", (source,)).fetchone()
        return json.loads(row[0]) if row else None

    def set_cursor(self, source: str, value: Mapping[str, Any]) -> None:
        self.commit(source, cursor=value)

    def snapshot(self, source: str) -> dict[str, dict[str, Any]]:
        rows = self._db.execute("SELECT sku, value FROM snapshot_rows WHERE source = ?",
                                (source,))
        return {sku: json.loads(value) for sku, value in rows}

    def commit(self, source: str, *, cursor: Mapping[str, Any] | None = None,
               upserts: Mapping[str, Mapping[str, Any]] | None = None,
               deletes: Iterable[str] = ()) -> None:
        """Write the cursor and the snapshot changes of `source` in one transaction."""
        try:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                if upserts:
                    self._db.executemany(
                        "INSERT OR REPLACE INTO snapshot_rows (source, sku, value) VALUES (?,?,?)",
                        [(source, sku, json.dumps(v, sort_keys=True))
                         for sku, v in upserts.items()],
                    )
                self._db.executemany("DELETE FROM snapshot_rows WHERE source = ? AND sku = ?",
                                     [(source, sku) for sku in deletes])
                if cursor is not None:
                    self._db.execute(
                        "INSERT OR REPLACE INTO cursors (source, value) VALUES (?, ?)",
                        (source, json.dumps(dict(cursor), sort_keys=True)),
                    )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            raise ConnectorError(f"cannot write the connector state {self.path}: {exc}") from exc

    def close(self) -> None:
        self._db.close()
