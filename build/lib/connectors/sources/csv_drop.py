"""CSV drops over FTP/SFTP: full snapshot files diffed against the last one into deltas."""

from __future__ import annotations

import asyncio
import csv
import fnmatch
import io
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pipeline import tracing
from pipeline.errors import ValidationError
from pipeline.log import get_logger

from .base import (
    Emitter,
    RecordMapper,
    Source,
    dead_letter,
    map_one,
    now_ms,
    safe_text,
    stable_event_id,
)
from .cursor_store import CursorStore
from .drop_folders import DropFolder, RemoteFile
from .metrics import CONNECTOR_DEAD_LETTERS, CONNECTOR_DELTAS, FILES_PROCESSED, LAST_POLL

log = get_logger(__name__)

# The fields whose change makes a new delta; the rest (timestamps) do not.
COMPARED = ("quantity", "price", "currency", "warehouse", "lead_time_days", "status")
UPLOAD_SUFFIXES = (".part", ".tmp", ".partial", ".filepart", ".uploading")
FUTURE_FILES_MAX = 100
# `# rows: 1500` (or `#row_count=1500`, `# count 1500`) as the last line: how many data rows
# the supplier wrote, so a cut file is known to be cut.
TRAILER = re.compile(r"#\s*(?:rows|row_count|row count|records|count)\s*[:=]?\s*([0-9]{1,9})\s*",
                     re.IGNORECASE)


@dataclass(frozen=True)
class CsvOptions:
    """How a supplier's files look and when one is complete."""

    pattern: str = "*.csv"
    # One encoding, strictly: a file it cannot decode is dead-lettered whole. (A latin-1
    # fallback decodes any bytes, so one stray byte renamed SKUs and zeroed the real ones.)
    encoding: str = "utf-8-sig"
    delimiter: str = ","
    stable_s: float = 2.0
    on_missing: str = "zero"  # zero | ignore: a SKU that left the snapshot
    # A file missing more than this share of the known SKUs is held as suspect (truncated?)
    # rather than zeroing them.
    max_missing_ratio: float = 0.05
    # The last line must be a row-count trailer (`# rows: N`); one present is always checked.
    require_trailer: bool = False
    # A last row without a line end was probably cut mid-upload: dead-lettered, not applied.
    require_final_newline: bool = True
    max_file_bytes: int = 64 * 1024 * 1024


class FileRejected(Exception):
    """A whole file is refused: dead-lettered with `reason`, nothing of it applied."""

    def __init__(self, reason: str, message: str, row: int = 0) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.row = row  # 1 for the header; 0 for the file as a whole


def decode_text(data: bytes, encoding: str) -> str:
    """The file's text in its one configured encoding (`utf-8-sig` strips a BOM)."""
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as exc:
        raise ValidationError("decode_error", f"not valid {encoding} at byte {exc.start}: "
                                              f"{exc.reason}") from exc
    except LookupError as exc:
        raise ValidationError("decode_error", f"unknown encoding {encoding!r}") from exc


class CsvDropSource(Source):
    """Polls a drop folder; processes the newest complete snapshot file not yet processed.

    A file counts as complete when it has no upload suffix (.part, .tmp, ...) and its size and
    mtime are unchanged across polls at least `stable_s` apart. Older unprocessed snapshots
    are superseded by a newer full one. Each file is diffed against the stored snapshot; the
    changed rows become SNAPSHOT deltas with the file's sequence, and the new snapshot and
    the "last file" cursor are committed together after Kafka acknowledged them, so a
    restart re-reads the same file into the same event ids.

    A file's time is its mtime, but never later than when it was listed: a file dated 2100
    must not make every later file look older than the last one read. A file that cannot
    be used whole (too large, not decodable, no header, cut short, missing too many SKUs)
    is dead-lettered as a file and passed over: the cursor moves on, the stored snapshot
    and the stock stay as they were.
    """

    def __init__(self, supplier_id: str, *, connector: str, folder: DropFolder,
                 mapper: RecordMapper, emitter: Emitter, store: CursorStore,
                 options: CsvOptions | None = None, interval_s: float = 5.0,
                 clock: Callable[[], float] = time.time) -> None:
        super().__init__(supplier_id, interval_s=interval_s)
        self.kind = connector
        self.folder = folder
        self.mapper = mapper
        self.emitter = emitter
        self.store = store
        self.options = options or CsvOptions()
        self.key = f"{connector}:{supplier_id}"
        self._clock = clock
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
        # (effective mtime, name, size[, raw mtime]): older states have no raw mtime.
        last = tuple(state["last"]) if state.get("last") else None
        listing = [f for f in await self.folder.list() if self._candidate(f)]
        now = time.monotonic()
        wall = self._clock()
        self._observed = {k: v for k, v in self._observed.items()
                          if k in {f.name for f in listing}}

        def effective(f: RemoteFile) -> float:
            return min(f.mtime, wall)

        # Files dated after their listing that were processed: their effective time keeps
        # moving with the clock, so only their identity says they were read.
        future = {tuple(x) for x in state.get("future", [])}

        def processed(f: RemoteFile) -> bool:
            return (f.name, f.size, f.mtime) in future or (last is not None and (
                f.name, f.size, f.mtime) == (last[1], last[2], last[3] if len(last) > 3
                                             else last[0]))

        fresh = [f for f in listing if not processed(f) and (
            last is None or (effective(f), f.name) > (last[0], last[1]) or f.name == last[1])]
        stable = [f for f in fresh if self._stable(f, now)]
        if not stable:
            LAST_POLL.labels(self.supplier_id).set_to_current_time()
            return 0
        newest = max(stable, key=lambda f: (effective(f), f.name))
        skipped = [f.name for f in stable if f is not newest]
        if skipped:
            log.info("older snapshots superseded", supplier=self.supplier_id, files=skipped)
        listed = {(f.name, f.size, f.mtime) for f in listing}
        kept = [list(x) for x in future if x in listed]
        if newest.mtime > effective(newest):
            log.warning("file dated in the future; its time is taken as now",
                        supplier=self.supplier_id, file=safe_text(newest.name, 200),
                        mtime=newest.mtime)
            kept = [*kept, [newest.name, newest.size, newest.mtime]][-FUTURE_FILES_MAX:]
        state = {**state, "future": kept}
        with tracing.receive_span("csv file", connector=self.kind, supplier_id=self.supplier_id,
                                  file=safe_text(newest.name, 200), size=newest.size):
            emitted = await self.process(newest, state, effective(newest))
        LAST_POLL.labels(self.supplier_id).set_to_current_time()
        return emitted

    async def process(self, f: RemoteFile, state: dict[str, Any],
                      mtime: float | None = None) -> int:
        """Read, check and diff one file; `mtime` is its effective time (default: its own)."""
        mtime = f.mtime if mtime is None else mtime
        sequence = max(int(mtime * 1_000_000), int(state.get("sequence", 0)) + 1)
        cursor = {"last": [mtime, f.name, f.size, f.mtime], "sequence": sequence,
                  "future": state.get("future", [])}
        if f.size > self.options.max_file_bytes:
            # Its head only, for the dead letter (which keeps 64 KiB of an original).
            head = await self.folder.read(f.name, limit=65_536)
            return await self._reject(f, cursor, FileRejected(
                "file_too_large", f"{f.size} bytes; at most {self.options.max_file_bytes}"),
                head)
        data = await self.folder.read(f.name, limit=self.options.max_file_bytes + 1)
        if len(data) > self.options.max_file_bytes:
            return await self._reject(f, cursor, FileRejected(
                "file_too_large", f"more than {self.options.max_file_bytes} bytes"), data)
        if len(data) != f.size:
            # Grew or shrank since the listing: still being written after all.
            self._observed.pop(f.name, None)
            log.info("file changed while reading, will retry", supplier=self.supplier_id,
                     file=f.name)
            return 0
        previous = self.store.snapshot(self.key)
        try:
            # In a thread: a large file must not hold the event loop every feed shares.
            rows, dead = await asyncio.to_thread(self._parse, f.name, data, sequence)
            self._check_complete(rows, dead, previous)
        except FileRejected as exc:
            return await self._reject(f, cursor, exc, data)
        deltas: list[dict[str, Any]] = []
        upserts: dict[str, dict[str, Any]] = {}
        for sku, delta in rows.items():
            values = {k: delta[k] for k in COMPARED}
            if previous.get(sku) != values:
                deltas.append(delta)
                upserts[sku] = values
        if self.options.on_missing == "zero":
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
                    "kind": "SNAPSHOT", "observed_at": int(mtime * 1000),
                    "connector": self.kind, "received_at": received, **gone,
                })
                upserts[sku] = gone
        await self.emitter.emit(deltas, dead)
        self.store.commit(self.key, cursor=cursor, upserts=upserts)
        CONNECTOR_DELTAS.labels(self.supplier_id, self.kind).inc(len(deltas))
        for d in dead:
            CONNECTOR_DEAD_LETTERS.labels(self.supplier_id, self.kind, d["reason"]).inc()
        FILES_PROCESSED.labels(self.supplier_id, self.kind).inc()
        log.info("snapshot file processed", supplier=self.supplier_id, connector=self.kind,
                 file=f.name, rows=len(rows), deltas=len(deltas), dead_letters=len(dead))
        return len(deltas)

    def _check_complete(self, rows: dict[str, Any], dead: list[dict[str, Any]],
                        previous: dict[str, dict[str, Any]]) -> None:
        """Raise FileRejected for a file that looks cut short: it must never zero stock."""
        bad_skus = {d["original_key"] for d in dead if d.get("original_key")}
        missing = [sku for sku, v in previous.items() if sku not in rows
                   and f"{self.supplier_id}|{sku}".encode() not in bad_skus
                   and v.get("quantity") != 0]
        known = sum(1 for v in previous.values() if v.get("quantity") != 0)
        if known and len(missing) > self.options.max_missing_ratio * known:
            raise FileRejected("suspect_snapshot",
                               f"{len(missing)} of {known} known SKUs missing")

    async def _reject(self, f: RemoteFile, cursor: dict[str, Any], exc: FileRejected,
                      data: bytes) -> int:
        log.warning("snapshot file rejected", supplier=self.supplier_id, connector=self.kind,
                    file=safe_text(f.name, 200), reason=exc.reason, detail=exc.message)
        dead = self._dead(exc.reason, exc.message, data, f.name, exc.row)
        dead["context"]["file_size"] = str(f.size)
        await self.emitter.emit([], [dead])
        self.store.commit(self.key, cursor=cursor)
        CONNECTOR_DEAD_LETTERS.labels(self.supplier_id, self.kind, exc.reason).inc()
        FILES_PROCESSED.labels(self.supplier_id, self.kind).inc()
        return 0

    def _dead(self, reason: str, message: str, original: bytes, file: str, row: int,
              sku: str | None = None) -> dict[str, Any]:
        return dead_letter(reason=reason, message=message, original=original,
                           supplier_id=self.supplier_id, connector=self.kind, sku=sku,
                           context={"file": file, "row": str(row)})

    def _parse(self, name: str, data: bytes, sequence: int) -> tuple[dict[str, dict[str, Any]],
                                                                     list[dict[str, Any]]]:
        """The file's rows by SKU and the dead letters of its bad rows; FileRejected when the
        file as a whole is unusable."""
        dead: list[dict[str, Any]] = []
        try:
            text = decode_text(data, self.options.encoding)
        except ValidationError as exc:
            raise FileRejected(exc.code, exc.message) from exc
        text, trailer = _split_trailer(text)
        if trailer is None and self.options.require_trailer:
            raise FileRejected("truncated_file", "no row-count trailer (`# rows: N`) at the "
                                                 "end: cut short?")
        cut_last_row = self.options.require_final_newline and text != "" and \
            not text.endswith(("\n", "\r")) and trailer is None
        reader = csv.reader(io.StringIO(text, newline=""), delimiter=self.options.delimiter)
        try:
            header = next(reader)
        except (StopIteration, csv.Error) as exc:
            raise FileRejected("bad_header", "file has no header row", 1) from exc
        names = self.mapper.mapping.resolve(header)
        missing = [f for f in ("sku", "quantity") if f not in names]
        if missing:
            raise FileRejected("bad_header", f"header lacks {missing}: "
                                             f"{safe_text(header, 400)}", 1)
        sku_index = header.index(names["sku"])
        use_file_sequence = "sequence" not in names
        rows: dict[str, dict[str, Any]] = {}
        received = now_ms()
        data_rows = 0
        pending: tuple[list[str], int] | None = None
        while True:
            try:
                row = next(reader)
            except StopIteration:
                break
            except csv.Error as exc:
                data_rows += 1
                dead.append(self._dead("bad_row", f"unreadable CSV: {exc}", b"", name,
                                       reader.line_num))
                continue
            if not row or all(not cell.strip() for cell in row):
                continue
            data_rows += 1
            # One row behind, so the last one is known as the last.
            if pending is not None:
                self._row(*pending, header, names, sku_index, use_file_sequence, sequence,
                          received, name, rows, dead)
            pending = (row, reader.line_num)
        if pending is not None:
            if cut_last_row:
                row, line = pending
                sku_hint = row[sku_index].strip() if len(row) > sku_index else None
                dead.append(self._dead("truncated_row", "the last row has no line end: the "
                                       "upload was probably cut", _row_bytes(row, self.options
                                                                             .delimiter),
                                       name, line, sku=sku_hint))
            else:
                self._row(*pending, header, names, sku_index, use_file_sequence, sequence,
                          received, name, rows, dead)
        if trailer is not None and trailer != data_rows:
            raise FileRejected("truncated_file", f"the trailer says {trailer} rows, the file "
                                                 f"has {data_rows}")
        return rows, dead

    def _row(self, row: list[str], line: int, header: list[str], names: dict[str, str],
             sku_index: int, use_file_sequence: bool, sequence: int, received: int,
             name: str, rows: dict[str, dict[str, Any]], dead: list[dict[str, Any]]) -> None:
        original = _row_bytes(row, self.options.delimiter)
        sku_hint = row[sku_index].strip() if len(row) > sku_index else None
        if len(row) != len(header):
            dead.append(self._dead("bad_row", f"{len(row)} columns, header has "
                                   f"{len(header)}", original, name, line, sku=sku_hint))
            return
        record = dict(zip(header, row, strict=True))
        delta, bad = map_one(self.mapper, record, original=lambda: original,
                             context={"file": name, "row": str(line)}, sku=sku_hint,
                             names=names, received_at=received,
                             sequence=sequence if use_file_sequence else None)
        if delta is None:
            if bad is not None:
                dead.append(bad)
            return
        if use_file_sequence or "observed_at" not in names:
            delta["observed_at"] = int(sequence // 1000) if use_file_sequence \
                else delta["observed_at"]
        seen = rows.get(delta["sku"])
        if seen is not None:
            if any(seen[k] != delta[k] for k in COMPARED):
                dead.append(self._dead("duplicate_sku", "conflicts with an earlier row of "
                                       "the same SKU (kept the first)", original, name, line,
                                       sku=delta["sku"]))
            return
        rows[delta["sku"]] = delta


def _split_trailer(text: str) -> tuple[str, int | None]:
    """The text without a final row-count trailer line, and the count it states."""
    body = text.rstrip("\r\n")
    cut = max(body.rfind("\n"), body.rfind("\r"))
    last = body[cut + 1:]
    match = TRAILER.fullmatch(last.strip())
    if match is None:
        return text, None
    return body[:cut + 1], int(match.group(1))


def _row_bytes(row: list[str], delimiter: str) -> bytes:
    buf = io.StringIO()
    csv.writer(buf, delimiter=delimiter).writerow(row)
    return buf.getvalue().encode("utf-8")
