"""CSV drops over FTP/SFTP: full snapshot files diffed against the last one into deltas."""

from __future__ import annotations

import csv
import fnmatch
import io
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pipeline.errors import ValidationError
from pipeline.log import get_logger

from .base import Emitter, RecordMapper, Source, dead_letter, now_ms, stable_event_id
from .cursor_store import CursorStore
from .drop_folders import DropFolder, RemoteFile
from .metrics import CONNECTOR_DEAD_LETTERS, CONNECTOR_DELTAS, FILES_PROCESSED, LAST_POLL

log = get_logger(__name__)

# The fields whose change makes a new delta; the rest (timestamps) do not.
COMPARED = ("quantity", "price", "currency", "warehouse", "lead_time_days", "status")
UPLOAD_SUFFIXES = (".part", ".tmp", ".partial", ".filepart", ".uploading")


@dataclass(frozen=True)
class CsvOptions:
    """How a supplier's files look and when one is complete."""

    pattern: str = "*.csv"
    encodings: Sequence[str] = ("utf-8-sig", "latin-1")
    delimiter: str = ","
    stable_s: float = 2.0
    on_missing: str = "zero"  # zero | ignore: a SKU that left the snapshot
    # A file missing more than this share of the known SKUs is held as suspect (truncated?)
    # rather than zeroing them.
    max_missing_ratio: float = 0.5


def decode_text(data: bytes, encodings: Sequence[str]) -> tuple[str, str]:
    """The file's text and the encoding that read it (BOM-aware utf-8 first, then fallbacks)."""
    for encoding in encodings:
        try:
            return data.decode(encoding), encoding
        except UnicodeDecodeError:
            continue
    raise ValidationError("decode_error", f"not readable as any of {list(encodings)}")


class CsvDropSource(Source):
    """Polls a drop folder; processes the newest complete snapshot file not yet processed.

    A file counts as complete when it has no upload suffix (.part, .tmp, ...) and its size and
    mtime are unchanged across polls at least `stable_s` apart. Older unprocessed snapshots
    are superseded by a newer full one. Each file is diffed against the stored snapshot; the
    changed rows become SNAPSHOT deltas with the file's sequence, and the new snapshot and
    the "last file" cursor are committed together after Kafka acknowledged them, so a
    restart re-reads the same file into the same event ids.
    """

    def __init__(self, supplier_id: str, *, connector: str, folder: DropFolder,
                 mapper: RecordMapper, emitter: Emitter, store: CursorStore,
                 options: CsvOptions | None = None, interval_s: float = 5.0) -> None:
        super().__init__(supplier_id, interval_s=interval_s)
        self.kind = connector
        self.folder = folder
        self.mapper = mapper
        self.emitter = emitter
        self.store = store
        self.options = options or CsvOptions()
        self.key = f"{connector}:{supplier_id}"
        # name -> (size, mtime, first time this (size, mtime) was seen): the upload detector.
        self._observed: dict[str, tuple[int, float, float]] = {}

    def _candidate(self, f: RemoteFile) -> bool:
        name = f.name
        return (not name.startswith(".") and not name.lower().endswith(UPLOAD_SUFFIXES)
                and fnmatch.fnmatch(name, self.options.pattern))

    def _stable(self, f: RemoteFile, now: float) -> bool:
        seen = self._observed.get(f.name)
        if seen is None or seen[:2] != (f.size, f.mtime):
            self._observed[f.name] = (f.size, f.mtime, now)
            return False
        return now - seen[2] >= self.options.stable_s

    async def poll_once(self) -> int:
        state = self.store.get_cursor(self.key) or {}
        last = tuple(state["last"]) if state.get("last") else None  # (mtime, name, size)
        listing = [f for f in await self.folder.list() if self._candidate(f)]
        now = time.monotonic()
        self._observed = {k: v for k, v in self._observed.items()
                          if k in {f.name for f in listing}}
        fresh = [f for f in listing
                 if last is None or (f.mtime, f.name) > (last[0], last[1])
                 or (f.name == last[1] and (f.mtime, f.size) != (last[0], last[2]))]
        stable = [f for f in fresh if self._stable(f, now)]
        if not stable:
            LAST_POLL.labels(self.supplier_id).set_to_current_time()
            return 0
        newest = max(stable, key=lambda f: (f.mtime, f.name))
        skipped = [f.name for f in stable if f is not newest and (f.mtime, f.name) <
                   (newest.mtime, newest.name)]
        if skipped:
            log.info("older snapshots superseded", supplier=self.supplier_id, files=skipped)
        emitted = await self.process(newest, state)
        LAST_POLL.labels(self.supplier_id).set_to_current_time()
        return emitted

    async def process(self, f: RemoteFile, state: dict[str, Any]) -> int:
        data = await self.folder.read(f.name)
        if len(data) != f.size:
            # Grew or shrank since the listing: still being written after all.
            self._observed.pop(f.name, None)
            log.info("file changed while reading, will retry", supplier=self.supplier_id,
                     file=f.name)
            return 0
        sequence = max(int(f.mtime * 1_000_000), int(state.get("sequence", 0)) + 1)
        previous = self.store.snapshot(self.key)
        rows, dead = self._parse(f.name, data, sequence)
        deltas: list[dict[str, Any]] = []
        upserts: dict[str, dict[str, Any]] = {}
        for sku, delta in rows.items():
            values = {k: delta[k] for k in COMPARED}
            if previous.get(sku) != values:
                deltas.append(delta)
                upserts[sku] = values
        missing = [sku for sku, v in previous.items()
                   if sku not in rows and v.get("quantity") != 0]
        if previous and len(missing) > self.options.max_missing_ratio * len(previous):
            log.warning("snapshot file lacks too many known SKUs; held as suspect",
                        supplier=self.supplier_id, file=f.name, missing=len(missing),
                        known=len(previous))
            deltas, upserts = [], {}
            dead = [*dead, self._dead("suspect_snapshot",
                                      f"{len(missing)} of {len(previous)} known SKUs missing",
                                      data[:4096], f.name, 0)]
        elif self.options.on_missing == "zero":
            bad_skus = {d["original_key"].decode().split("|", 1)[1] for d in dead
                        if d.get("original_key")}
            received = now_ms()
            for sku, values in previous.items():
                if sku in rows or sku in bad_skus or values.get("quantity") == 0:
                    continue
                gone = {**values, "quantity": 0}
                deltas.append({
                    "supplier_id": self.supplier_id, "sku": sku,
                    "event_id": stable_event_id(self.supplier_id, sku, sequence),
                    "sequence": sequence,
                    "kind": "SNAPSHOT", "observed_at": int(f.mtime * 1000),
                    "connector": self.kind, "received_at": received, **gone,
                })
                upserts[sku] = gone
        await self.emitter.emit(deltas, dead)
        self.store.commit(self.key, cursor={"last": [f.mtime, f.name, f.size],
                                            "sequence": sequence}, upserts=upserts)
        CONNECTOR_DELTAS.labels(self.supplier_id, self.kind).inc(len(deltas))
        for d in dead:
            CONNECTOR_DEAD_LETTERS.labels(self.supplier_id, self.kind, d["reason"]).inc()
        FILES_PROCESSED.labels(self.supplier_id, self.kind).inc()
        log.info("snapshot file processed", supplier=self.supplier_id, connector=self.kind,
                 file=f.name, rows=len(rows), deltas=len(deltas), dead_letters=len(dead))
        return len(deltas)

    def _dead(self, reason: str, message: str, original: bytes, file: str, row: int,
              sku: str | None = None) -> dict[str, Any]:
        return dead_letter(reason=reason, message=message, original=original,
                           supplier_id=self.supplier_id, connector=self.kind, sku=sku,
                           context={"file": file, "row": str(row)})

    def _parse(self, name: str, data: bytes, sequence: int) -> tuple[dict[str, dict[str, Any]],
                                                                     list[dict[str, Any]]]:
        dead: list[dict[str, Any]] = []
        try:
            text, _encoding = decode_text(data, self.options.encodings)
        except ValidationError as exc:
            return {}, [self._dead(exc.code, exc.message, data, name, 0)]
        reader = csv.reader(io.StringIO(text, newline=""), delimiter=self.options.delimiter)
        try:
            header = next(reader)
        except (StopIteration, csv.Error):
            return {}, [self._dead("bad_header", "file has no header row", data[:4096], name, 1)]
        names = self.mapper.mapping.resolve(header)
        missing = [f for f in ("sku", "quantity") if f not in names]
        if missing:
            return {}, [self._dead("bad_header", f"header lacks {missing}: {header}",
                                   data[:4096], name, 1)]
        sku_index = header.index(names["sku"])
        use_file_sequence = "sequence" not in names
        rows: dict[str, dict[str, Any]] = {}
        received = now_ms()
        line = 1
        while True:
            try:
                row = next(reader)
            except StopIteration:
                break
            except csv.Error as exc:
                dead.append(self._dead("bad_row", f"unreadable CSV: {exc}", b"", name,
                                       reader.line_num))
                continue
            line = reader.line_num
            if not row or all(not cell.strip() for cell in row):
                continue
            original = _row_bytes(row, self.options.delimiter)
            sku_hint = row[sku_index].strip() if len(row) > sku_index else None
            if len(row) != len(header):
                dead.append(self._dead("bad_row", f"{len(row)} columns, header has "
                                       f"{len(header)}", original, name, line,
                                       sku=sku_hint or None))
                continue
            record = dict(zip(header, row, strict=True))
            try:
                delta = self.mapper.map(
                    record, names=names, received_at=received,
                    sequence=sequence if use_file_sequence else None)
            except ValidationError as exc:
                ok_sku = sku_hint if exc.code != "bad_sku" else None
                dead.append(self._dead(exc.code, exc.message, original, name, line,
                                       sku=ok_sku or None))
                continue
            if not delta.get("observed_at") or "observed_at" not in names:
                delta["observed_at"] = int(sequence // 1000) if use_file_sequence \
                    else delta["observed_at"]
            seen = rows.get(delta["sku"])
            if seen is not None:
                if any(seen[k] != delta[k] for k in COMPARED):
                    dead.append(self._dead("duplicate_sku", "conflicts with an earlier row of "
                                           "the same SKU (kept the first)", original, name, line,
                                           sku=delta["sku"]))
                continue
            rows[delta["sku"]] = delta
        return rows, dead


def _row_bytes(row: list[str], delimiter: str) -> bytes:
    buf = io.StringIO()
    csv.writer(buf, delimiter=delimiter).writerow(row)
    return buf.getvalue().encode("utf-8")
