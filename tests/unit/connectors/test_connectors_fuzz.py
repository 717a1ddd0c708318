"""Seeded fuzzing of the four supplier entry points with hundreds of malformed kinds.

Each entry point (webhook, REST page, GraphQL page, CSV file) is driven through its real
code — aiohttp servers and clients on loopback, sqlite cursors, a local drop folder — with a
memory emitter instead of Kafka. Every malformed kind comes next to a good record, and each
test asserts: the kind was dead-lettered with one of its reasons (or refused with a 4xx),
nothing raised but the documented page-level `ConnectorError`s, the cursor moved past it,
and the good record was emitted. The kinds and counts are in docs/reliability.md.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import os
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from connectors.sources.base import FieldMapping, RecordMapper, now_ms
from connectors.sources.circuit_breaker import CircuitBreaker
from connectors.sources.csv_drop import CsvDropSource, CsvOptions
from connectors.sources.cursor_store import CursorStore
from connectors.sources.drop_folders import LocalFolder
from connectors.sources.emitters import MemoryEmitter
from connectors.sources.graphql import GraphqlOptions, GraphqlSource
from connectors.sources.http_client import SupplierHttp
from connectors.sources.rate_limit import TokenBucket
from connectors.sources.rest import RestOptions, RestSource
from connectors.sources.retry import Backoff
from connectors.sources.webhook import (
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    WebhookReceiver,
    WebhookSupplier,
    webhook_signature,
)
from pipeline.errors import ConnectorError
from tests.unit.connectors.connector_fuzz_kinds import (
    Kind,
    bad_record,
    good_record,
    kinds,
    shuffled,
)

SEED = 15
NAMES = {"sku": "item_code", "quantity": "qty", "sequence": "version",
         "observed_at": "updated_at", "price": "unit_price", "currency": "cur",
         "status": "state", "lead_time_days": "lead", "warehouse": "wh", "kind": "type",
         "event_id": "id"}
MAPPING = FieldMapping({k: [v] for k, v in NAMES.items()})
RESPONSE_CAP = 1024 * 1024
T0 = now_ms() - 10 * 24 * 3600 * 1000  # good records are dated from here, 1 s apart
TEXT_FIELDS = {"sku", "currency", "status", "warehouse", "kind", "event_id"}

pytestmark = pytest.mark.timeout(60)


def mapper(connector: str) -> RecordMapper:
    return RecordMapper("fuzz", connector, MAPPING)


def good(i: int) -> dict[str, Any]:
    return good_record(NAMES, sku=f"GOOD-{i}", quantity=i + 1, sequence=i + 1,
                       observed_ms=T0 + i * 1000, event_id=f"good-{i}")


def bad(kind: Kind, i: int) -> Any:
    return bad_record(kind, NAMES, sku=f"BAD-{i}", sequence=1, observed_ms=T0 + i * 1000 - 1,
                      event_id=f"bad-{i}")


def cursor_of(store: CursorStore, key: str) -> dict[str, Any]:
    cursor = store.get_cursor(key)
    assert cursor is not None, f"no cursor stored for {key}"
    return cursor


def check_one(kind: Kind, emitter: MemoryEmitter, before: tuple[int, int], i: int,
              tally: Counter[str]) -> None:
    """Exactly one new dead letter with one of the kind's reasons, and the good delta."""
    new_dead = emitter.dead_letters[before[1]:]
    new_deltas = emitter.deltas[before[0]:]
    assert [d["reason"] for d in new_dead] and all(
        d["reason"] in kind.reasons for d in new_dead), (kind.name, new_dead[:1])
    assert len(new_dead) == 1, (kind.name, [d["reason"] for d in new_dead])
    assert [d["sku"] for d in new_deltas] == [f"GOOD-{i}"], (kind.name, new_deltas)
    tally[kind.field] += 1


class ScriptedSupplier:
    """An HTTP supplier answering each request with the next scripted response."""

    def __init__(self) -> None:
        self.script: list[web.Response] = []
        self.port = 0
        self._runner: web.AppRunner | None = None

    def push(self, body: bytes | Any, *, headers: dict[str, str] | None = None,
             status: int = 200) -> None:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.script.append(web.Response(body=data, status=status, headers=headers or {},
                                        content_type="application/json"))

    async def handle(self, _request: web.Request) -> web.Response:
        assert self.script, "the source asked for more than the script holds"
        return self.script.pop(0)

    async def start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


@pytest.fixture
async def supplier() -> AsyncIterator[ScriptedSupplier]:
    server = ScriptedSupplier()
    await server.start()
    yield server
    await server.stop()


def http(connector: str) -> SupplierHttp:
    return SupplierHttp("fuzz", connector, limiter=TokenBucket(100_000, 100_000),
                        backoff=Backoff(0.001, 0.002, 1),
                        breaker=CircuitBreaker("fuzz", failure_threshold=10**9),
                        timeout_s=5, max_response_bytes=RESPONSE_CAP)


def gzip_bomb() -> tuple[bytes, dict[str, str]]:
    """A small gzip body that inflates past the response cap."""
    return gzip.compress(b" " * (RESPONSE_CAP * 8)), {"Content-Encoding": "gzip"}


# --- webhook ------------------------------------------------------------------------------

SECRET = b"fuzz-secret-0123456789"


async def test_webhook_fuzz() -> None:
    emitter = MemoryEmitter()
    receiver = WebhookReceiver({"fuzz": WebhookSupplier("fuzz", SECRET, mapper("webhook"))},
                               emitter, max_body_bytes=1_048_576, max_events=1000)
    port = await receiver.start("127.0.0.1", 0)
    url = f"http://127.0.0.1:{port}/webhooks/fuzz"
    tally: Counter[str] = Counter()
    refused: Counter[str] = Counter()

    async def post(session: aiohttp.ClientSession, body: bytes, *,
                   secret: bytes = SECRET) -> tuple[int, dict[str, Any]]:
        ts = int(time.time())
        headers = {TIMESTAMP_HEADER: str(ts),
                   SIGNATURE_HEADER: webhook_signature(secret, ts, body)}
        async with session.post(url, data=body, headers=headers) as resp:
            return resp.status, await resp.json()

    try:
        async with aiohttp.ClientSession() as session:
            for i, kind in enumerate(shuffled(SEED)):
                before = (len(emitter.deltas), len(emitter.dead_letters))
                body = json.dumps({"events": [bad(kind, i), good(i)]}).encode()
                status, answer = await post(session, body)
                assert (status, answer) == (200, {"accepted": 1, "dead_lettered": 1}), kind
                check_one(kind, emitter, before, i, tally)
            # Bodies that are not a batch of events at all.
            n = len(kinds())
            bodies: list[tuple[str, bytes, int, str | None]] = [
                ("not JSON", b"<html>", 200, "decode_error"),
                ("invalid UTF-8", b"\xff\xfe{", 200, "decode_error"),
                ("empty", b"", 200, "decode_error"),
                ("deep nesting", b"[" * 100_000, 200, "decode_error"),
                ("a list", b"[]", 200, "malformed_record"),
                ("events not a list", b'{"events": {}}', 200, "malformed_record"),
                ("no events", b"{}", 200, "malformed_record"),
                ("too many events", json.dumps({"events": [1] * 1001}).encode(), 413, None),
                ("over the body cap", b" " * 1_048_577, 413, None),
            ]
            for j, (name, body, expected, reason) in enumerate(bodies):
                before = (len(emitter.deltas), len(emitter.dead_letters))
                status, _ = await post(session, body)
                assert status == expected, name
                reasons = [d["reason"] for d in emitter.dead_letters[before[1]:]]
                assert reasons == ([reason] if reason else []), name
                refused[name] += 1
                # The next good event goes through.
                status, answer = await post(session, json.dumps(
                    {"events": [good(n + j)]}).encode())
                assert (status, answer["accepted"]) == (200, 1), name
            status, _ = await post(session, json.dumps({"events": [good(0)]}).encode(),
                                   secret=b"forged")
            assert status == 401
    finally:
        await receiver.stop()
    assert sum(tally.values()) >= 300
    WEBHOOK_TALLY.update(tally)


WEBHOOK_TALLY: Counter[str] = Counter()


# --- REST ---------------------------------------------------------------------------------

async def test_rest_fuzz(supplier: ScriptedSupplier, tmp_path: Path) -> None:
    emitter = MemoryEmitter()
    store = CursorStore(tmp_path / "state.sqlite")
    source = RestSource("fuzz", options=RestOptions(url=f"http://127.0.0.1:{supplier.port}/items"),
                        http=http("rest"), mapper=mapper("rest"), emitter=emitter, store=store)
    tally: Counter[str] = Counter()
    try:
        for i, kind in enumerate(shuffled(SEED)):
            before = (len(emitter.deltas), len(emitter.dead_letters))
            supplier.push({"items": [bad(kind, i), good(i)], "next_page_token": None})
            await source.poll_once()
            check_one(kind, emitter, before, i, tally)
            # The cursor moved on to the good item (never stuck before the bad one).
            assert cursor_of(store, source.key)["updated_since"] == T0 + i * 1000, kind
        n = len(kinds())
        bomb, bomb_headers = gzip_bomb()
        pages: list[tuple[str, bytes, dict[str, str], str]] = [
            ("not JSON", b"<html>", {}, "decode_error"),
            ("invalid UTF-8", b"\xff\xfe", {}, "decode_error"),
            ("deep nesting", b"[" * 100_000, {}, "decode_error"),
            ("a list", b"[]", {}, "malformed_page"),
            ("items not a list", b'{"items": {}}', {}, "malformed_page"),
            ("no items", b"{}", {}, "malformed_page"),
            ("gzip bomb", bomb, bomb_headers, "response_too_large"),
            ("over the response cap", b" " * (RESPONSE_CAP + 1), {}, "response_too_large"),
        ]
        for j, (name, body, headers, reason) in enumerate(pages):
            dead_before = len(emitter.dead_letters)
            supplier.push(body, headers=headers)
            with pytest.raises(ConnectorError):  # the poll fails, logged by Source.run
                await source.poll_once()
            assert [d["reason"] for d in emitter.dead_letters[dead_before:]] == [reason], name
            supplier.push({"items": [good(n + j)]})
            deltas = len(emitter.deltas)
            await source.poll_once()
            assert [d["sku"] for d in emitter.deltas[deltas:]] == [f"GOOD-{n + j}"], name
        # A token that comes again, and tokens that are no tokens, end the walk.
        for j, token in enumerate(["again", {"t": 1}, "t" * 5000]):
            k = n + len(pages) + 2 * j
            supplier.push({"items": [good(k)], "next_page_token": "again"})
            supplier.push({"items": [good(k + 1)], "next_page_token": token})
            if token != "again":
                supplier.push({"items": [], "next_page_token": token})
            await source.poll_once()
            cursor = cursor_of(store, source.key)
            assert cursor["page_token"] is None and cursor["updated_since"] == T0 + (k + 1) * 1000
            supplier.script.clear()
    finally:
        await source.close()
        store.close()
    assert sum(tally.values()) >= 300


# --- GraphQL ------------------------------------------------------------------------------

def connection(edges: list[Any], end: Any, more: bool = False) -> dict[str, Any]:
    return {"data": {"inventory": {"edges": edges,
                                   "pageInfo": {"hasNextPage": more, "endCursor": end}}}}


async def test_graphql_fuzz(supplier: ScriptedSupplier, tmp_path: Path) -> None:
    emitter = MemoryEmitter()
    store = CursorStore(tmp_path / "state.sqlite")
    source = GraphqlSource("fuzz", options=GraphqlOptions(
        url=f"http://127.0.0.1:{supplier.port}/graphql"), http=http("graphql"),
        mapper=mapper("graphql"), emitter=emitter, store=store)
    tally: Counter[str] = Counter()
    try:
        for i, kind in enumerate(shuffled(SEED)):
            before = (len(emitter.deltas), len(emitter.dead_letters))
            supplier.push(connection([{"cursor": f"{i}a", "node": bad(kind, i)},
                                      {"cursor": f"{i}b", "node": good(i)}], f"c{i}"))
            await source.poll_once()
            check_one(kind, emitter, before, i, tally)
            assert store.get_cursor(source.key) == {"after": f"c{i}"}, kind
        n = len(kinds())
        bomb, bomb_headers = gzip_bomb()
        pages: list[tuple[str, bytes, dict[str, str], str]] = [
            ("not JSON", b"<html>", {}, "decode_error"),
            ("deep nesting", b"[" * 100_000, {}, "decode_error"),
            ("a list", b"[]", {}, "malformed_page"),
            ("no connection", b'{"data": {}}', {}, "malformed_page"),
            ("edges not a list", json.dumps(connection({}, "x")).encode(), {},  # type: ignore[arg-type]
             "malformed_page"),
            ("gzip bomb", bomb, bomb_headers, "response_too_large"),
        ]
        for j, (name, body, headers, reason) in enumerate(pages):
            dead_before = len(emitter.dead_letters)
            supplier.push(body, headers=headers)
            with pytest.raises(ConnectorError):
                await source.poll_once()
            assert [d["reason"] for d in emitter.dead_letters[dead_before:]] == [reason], name
            supplier.push(connection([{"node": good(n + j)}], f"p{j}"))
            deltas = len(emitter.deltas)
            await source.poll_once()
            assert [d["sku"] for d in emitter.deltas[deltas:]] == [f"GOOD-{n + j}"], name
        # Partial data with errors: the data is used, the errors dead-lettered.
        k = n + len(pages)
        dead_before = len(emitter.dead_letters)
        supplier.push({**connection([{"node": good(k)}], "partial"),
                       "errors": [{"message": "one resolver failed"}]})
        await source.poll_once()
        assert emitter.deltas[-1]["sku"] == f"GOOD-{k}"
        assert [d["reason"] for d in emitter.dead_letters[dead_before:]] == ["graphql_error"]
        # An end cursor given again while the supplier says there is more ends the walk.
        supplier.push(connection([{"node": good(k + 1)}], "loop", more=True))
        supplier.push(connection([{"node": good(k + 2)}], "loop", more=True))
        await source.poll_once()
        assert store.get_cursor(source.key) == {"after": "loop"}
        assert supplier.script == []
    finally:
        await source.close()
        store.close()
    assert sum(tally.values()) >= 300


# --- CSV ----------------------------------------------------------------------------------

COLUMNS = list(NAMES.values())


def csv_good(i: int) -> dict[str, Any]:
    """The good row of file i: one SKU whose quantity and version change with every file
    (a snapshot file holds every SKU, so a changing SKU set would look like a cut file)."""
    return {**good(i), NAMES["sku"]: "GOOD"}


def csv_cell(kind: Kind) -> str | None:
    """The kind as CSV text, or None where CSV cannot carry it (every cell is text)."""
    value = kind.value
    if kind.field == "record" or isinstance(value, bool | list | dict):
        return None
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if kind.field in TEXT_FIELDS:
        # A number is valid text; only the 201-digit SKU stays malformed.
        return str(value) if kind.field == "sku" and len(str(value)) > 128 else None
    return repr(value) if isinstance(value, float) else str(value)


def csv_kinds() -> list[tuple[str, frozenset[str], Callable[[int], bytes]]]:
    """(name, reasons, file maker) per CSV kind: cells, rows and whole files."""
    out: list[tuple[str, frozenset[str], Callable[[int], bytes]]] = []
    seen: set[tuple[str, str]] = set()
    for kind in shuffled(SEED):
        cell = csv_cell(kind)
        if cell is None or (kind.field, cell) in seen:
            continue
        seen.add((kind.field, cell))
        reasons = kind.reasons
        if cell.encode("utf-8", "surrogatepass") != cell.encode("utf-8", "replace"):
            reasons = frozenset({"decode_error"})  # not UTF-8: the whole file is refused

        def make(i: int, kind: Kind = kind, cell: str = cell) -> bytes:
            row = {**csv_good(i), NAMES["sku"]: f"BAD-{i}"}
            row[NAMES[kind.field]] = cell
            return csv_file([row, csv_good(i)])

        out.append((f"cell {kind.name}", reasons, make))
    width = len(COLUMNS)
    for cols in [*range(1, width), *range(width + 1, width + 6)]:
        def short(i: int, cols: int = cols) -> bytes:
            row = [f"BAD-{i}", *["1"] * (cols - 1)]
            return csv_file([csv_good(i)], extra_rows=[row])

        out.append((f"row of {cols} columns", frozenset({"bad_row"}), short))
    for field in ("qty", "unit_price", "cur", "state", "wh", "lead"):
        def conflicting(i: int, field: str = field) -> bytes:
            other = {"qty": 999, "unit_price": "1.25", "cur": "USD", "state": "discontinued",
                     "wh": "south", "lead": 9}[field]
            return csv_file([csv_good(i), {**csv_good(i), field: other}])

        out.append((f"conflicting duplicate ({field})", frozenset({"duplicate_sku"}),
                    conflicting))

    def cut(i: int) -> bytes:
        whole = csv_file([csv_good(i), {**csv_good(i), NAMES["sku"]: f"CUT-{i}"}])
        return whole.rstrip(b"\r\n")[:-2]

    out.append(("last row cut mid-upload", frozenset({"truncated_row"}), cut))
    files: list[tuple[str, str, Callable[[int], bytes]]] = [
        ("0xFF byte", "decode_error", lambda i: csv_file([csv_good(i)]) + b"\xff\n"),
        ("lone continuation byte", "decode_error", lambda i: b"\x80" + csv_file([csv_good(i)])),
        ("overlong encoding", "decode_error", lambda i: csv_file([csv_good(i)]) + b"\xc0\xaf\n"),
        ("cut multi-byte sequence", "decode_error",
         lambda i: csv_file([csv_good(i)]) + b"\xe2\x82"),
        ("UTF-16", "decode_error", lambda i: csv_file([csv_good(i)]).decode().encode("utf-16")),
        ("surrogate bytes", "decode_error", lambda i: csv_file([csv_good(i)]) + b"\xed\xa0\x80\n"),
        ("latin-1 text", "decode_error", lambda i: "Caf\u00e9\n".encode("latin-1")
         + csv_file([csv_good(i)])),
        ("binary", "decode_error", lambda i: bytes(range(256)) * 4),
        ("empty file", "bad_header", lambda i: b""),
        ("only a BOM", "bad_header", lambda i: b"\xef\xbb\xbf"),
        ("header without sku", "bad_header", lambda i: b"qty,version\n1,1\n"),
        ("header without quantity", "bad_header", lambda i: b"item_code,version\nA,1\n"),
        ("no header, only rows", "bad_header", lambda i: b"A,1,2\nB,3,4\n"),
        ("trailer says more rows", "truncated_file",
         lambda i: csv_file([csv_good(i)]) + b"# rows: 2\n"),
        ("trailer says fewer rows", "truncated_file",
         lambda i: csv_file([csv_good(i)]) + b"# rows: 0\n"),
        ("trailer says many rows", "truncated_file",
         lambda i: csv_file([csv_good(i)]) + b"#row_count=999999\n"),
        ("over the file cap", "file_too_large",
         lambda i: csv_file([csv_good(i)]) + b" " * 300_000),
    ]
    for name, reason, maker in files:
        out.append((f"file: {name}", frozenset({reason}), maker))
    return out


def csv_file(rows: list[dict[str, Any]], extra_rows: list[list[str]] | None = None) -> bytes:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\r\n")
    writer.writerow(COLUMNS)
    for row in rows:
        writer.writerow([str(row.get(c, "")) for c in COLUMNS])
    for extra in extra_rows or []:
        writer.writerow(extra)
    return buf.getvalue().encode("utf-8", "surrogatepass")


async def test_csv_fuzz(tmp_path: Path) -> None:
    drops = tmp_path / "drops"
    drops.mkdir()
    emitter = MemoryEmitter()
    store = CursorStore(tmp_path / "state.sqlite")
    source = CsvDropSource("fuzz", connector="local", folder=LocalFolder(drops),
                           mapper=mapper("local"), emitter=emitter, store=store,
                           options=CsvOptions(stable_s=0, max_file_bytes=256 * 1024))
    all_kinds = csv_kinds()
    assert len(all_kinds) >= 300
    tally: Counter[str] = Counter()
    mtime = time.time() - len(all_kinds) * 2 - 10
    previous: Path | None = None
    for i, (name, reasons, make) in enumerate(all_kinds):
        path = drops / f"s{i:04d}.csv"
        path.write_bytes(make(i))
        mtime += 1
        os.utime(path, (mtime, mtime))
        if previous is not None:
            previous.unlink()
        previous = path
        before = (len(emitter.deltas), len(emitter.dead_letters))
        await source.poll_once()  # sees the file
        await source.poll_once()  # finds it unchanged, reads it
        assert cursor_of(store, source.key)["last"][1] == path.name, name  # moved on
        new_dead = emitter.dead_letters[before[1]:]
        assert len(new_dead) == 1 and new_dead[0]["reason"] in reasons, \
            (name, [d["reason"] for d in new_dead])
        assert new_dead[0]["context"]["file"] == path.name
        new_deltas = [d["sku"] for d in emitter.deltas[before[0]:]]
        if name.startswith("file: ") or reasons == frozenset({"decode_error"}):
            assert new_deltas == [], name  # nothing of a refused file is applied
            # ... and the next good file is.
            mtime += 1
            path.unlink()
            path = drops / f"s{i:04d}b.csv"
            path.write_bytes(csv_file([csv_good(i)]))
            os.utime(path, (mtime, mtime))
            previous = path
            await source.poll_once()
            await source.poll_once()
            new_deltas = [d["sku"] for d in emitter.deltas[before[0]:]]
        assert new_deltas == ["GOOD"], (name, new_deltas)
        assert emitter.deltas[-1]["quantity"] == i + 1
        tally[name.split(":")[0].split(" ")[0]] += 1
    store.close()
    assert sum(tally.values()) >= 300
