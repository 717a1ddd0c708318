"""REST polling: incremental by an `updated_since` cursor, paginated, with ETag and backoff."""

from __future__ import annotations

import functools
import hashlib
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pipeline import tracing
from pipeline.errors import ConnectorError
from pipeline.log import get_logger

from .base import (
    Emitter,
    RecordMapper,
    Source,
    dead_letter,
    map_one,
    now_ms,
    raw_bytes,
    safe_text,
)
from .cursor_store import CursorStore
from .http_client import ResponseTooLarge, SupplierHttp
from .metrics import CONNECTOR_DEAD_LETTERS, CONNECTOR_DELTAS, LAST_POLL, PAGINATION_STOPPED

log = get_logger(__name__)


@dataclass(frozen=True)
class RestOptions:
    """How a supplier's listing endpoint spells its cursor, pages and payload."""

    url: str
    cursor_param: str = "updated_since"
    cursor_format: str = "ms"  # ms | iso
    page_token_param: str = "page_token"
    limit_param: str = "limit"
    page_size: int = 100
    items_path: str = "items"
    next_page_path: str = "next_page_token"
    max_pages_per_poll: int = 1000


# Event ids (and dead-letter fingerprints) of items at or after the cursor remembered in the
# cursor, so the inclusive `updated_since` does not send them again; beyond this many the
# oldest are forgotten (a repeat is harmless, the pipeline's dedup drops it).
RECENT_KEYS_MAX = 2000
PAGE_TOKEN_MAX = 2048


class PageError(ConnectorError):
    """A whole page could not be read (not JSON, no item list, too large); dead-lettered."""

    def __init__(self, reason: str, message: str, original: bytes) -> None:
        super().__init__(message)
        self.reason = reason
        self.original = original


def _dig(payload: Any, path: str) -> Any:
    for part in path.split(".") if path else []:
        payload = payload.get(part) if isinstance(payload, Mapping) else None
    return payload


class RestSource(Source):
    """Walks `updated_since=<cursor>` page by page; the cursor is inclusive (`>=`).

    An item updated in the same millisecond as the cursor comes again on the next poll;
    its event id was remembered with the cursor, so it is not sent twice. After each page
    Kafka acknowledged, the next page token is stored, so a restart resumes the walk
    mid-way; after the last page the cursor moves to the newest `updated_at` seen — never
    past the time the page was received, so an item dated in the future cannot hide later
    updates. Bad items are dead-lettered and the cursor moves past them too; a page that
    cannot be read at all is dead-lettered once and the poll fails (retried next time).
    """

    kind = "rest"

    def __init__(self, supplier_id: str, *, options: RestOptions, http: SupplierHttp,
                 mapper: RecordMapper, emitter: Emitter, store: CursorStore,
                 interval_s: float = 5.0) -> None:
        super().__init__(supplier_id, interval_s=interval_s)
        self.options = options
        self.http = http
        self.mapper = mapper
        self.emitter = emitter
        self.store = store
        self.key = f"rest:{supplier_id}"
        self.log = log.bind(supplier=supplier_id, connector=self.kind)

    def _cursor_value(self, ms: int) -> str:
        if self.options.cursor_format == "iso":
            return datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat().replace("+00:00", "Z")
        return str(ms)

    async def poll_once(self) -> int:
        state = self.store.get_cursor(self.key) or {}
        since = int(state.get("updated_since", 0))
        token: str | None = state.get("page_token")
        newest = int(state.get("newest", since))
        # key -> cursor candidate (None: undated) of items at or after the cursor; those the
        # last walk left are not sent again (within a walk, every record counts).
        recent: dict[str, int | None] = dict(state.get("recent") or {})
        sent_before = frozenset(recent)
        tokens_seen: set[str] = {token} if token else set()
        emitted = 0
        pages = 0
        while True:
            params = {self.options.cursor_param: self._cursor_value(since),
                      self.options.limit_param: str(self.options.page_size)}
            if token:
                params[self.options.page_token_param] = token
            headers = {}
            # An ETag belongs to one query; only the first page of the same cursor may reuse it.
            if token is None and state.get("etag") and state.get("etag_since") == since:
                headers["If-None-Match"] = state["etag"]
            started_ns = time.time_ns()  # the page's span starts with its request
            try:
                response = await self.http.request("GET", self.options.url, params=params,
                                                   headers=headers)
            except ResponseTooLarge as exc:
                await self._page_failed(state, PageError("response_too_large", str(exc),
                                                         exc.head), token)
                raise
            if response.status == 304:
                LAST_POLL.labels(self.supplier_id).set_to_current_time()
                return emitted
            pages += 1
            try:
                payload, items = self._read_page(response.body)
            except PageError as exc:
                await self._page_failed(state, exc, token)
                raise
            deltas, dead, seen = self._map_page(items, page=token or "first",
                                                skip=sent_before)
            with tracing.receive_span("rest page", started_ns, connector=self.kind,
                                      supplier_id=self.supplier_id, page=token or "first"):
                await self.emitter.emit(deltas, dead)
            emitted += len(deltas)
            CONNECTOR_DELTAS.labels(self.supplier_id, self.kind).inc(len(deltas))
            for d in dead:
                CONNECTOR_DEAD_LETTERS.labels(self.supplier_id, self.kind, d["reason"]).inc()
            recent.update(seen)
            newest = max([newest, *(ts for ts in seen.values() if ts is not None)])
            next_token = self._next_token(payload, tokens_seen, pages)
            if next_token is not None:
                token = next_token
                tokens_seen.add(token)
                state = {"updated_since": since, "page_token": token, "newest": newest,
                         "recent": _recent_at(recent, since)}
                self.store.commit(self.key, cursor=state)
                continue
            etag = response.headers.get("ETag")
            state = {"updated_since": newest, "page_token": None, "newest": newest,
                     "recent": _recent_at(recent, newest)}
            if etag and newest == since and token is None:
                state.update(etag=etag, etag_since=since)
            self.store.commit(self.key, cursor=state)
            LAST_POLL.labels(self.supplier_id).set_to_current_time()
            return emitted

    def _read_page(self, body: bytes) -> tuple[Any, list[Any]]:
        try:
            payload = json.loads(body)
        except (ValueError, RecursionError) as exc:
            raise PageError("decode_error", f"{self.options.url} sent a body that is not JSON: "
                                            f"{safe_text(exc, 200)}", body) from exc
        items = _dig(payload, self.options.items_path)
        if not isinstance(items, list):
            raise PageError("malformed_page", f"{self.options.url}: no list at "
                                              f"{self.options.items_path!r}", body)
        return payload, items

    def _next_token(self, payload: Any, seen: set[str], pages: int) -> str | None:
        """The next page token, or None to end the walk (last page, or a loop)."""
        raw = _dig(payload, self.options.next_page_path)
        if raw is None or raw == "" or raw is False:
            return None
        token = safe_text(raw, PAGE_TOKEN_MAX + 1)
        if not isinstance(raw, str | int) or isinstance(raw, bool) or \
                len(token) > PAGE_TOKEN_MAX:
            reason = "bad_token"
        elif token in seen:
            reason = "repeated_token"
        elif pages >= self.options.max_pages_per_poll:
            # Not a supplier fault: the walk resumes from the stored token next poll.
            PAGINATION_STOPPED.labels(self.supplier_id, self.kind, "page_limit").inc()
            self.log.info("page limit of one poll reached", pages=pages)
            return None
        else:
            return token
        PAGINATION_STOPPED.labels(self.supplier_id, self.kind, reason).inc()
        self.log.warning("supplier pagination stopped", reason=reason, pages=pages,
                         token=safe_text(token, 80))
        return None

    async def _page_failed(self, state: dict[str, Any], exc: PageError,
                           token: str | None) -> None:
        """Dead-letter a page that cannot be read, once per distinct body at this cursor."""
        fingerprint = hashlib.sha256(exc.original[:65_536]).hexdigest()[:32]
        if state.get("bad_page") == fingerprint:
            return
        dead = dead_letter(reason=exc.reason, message=str(exc), original=exc.original,
                           supplier_id=self.supplier_id, connector=self.kind,
                           context={"url": self.options.url, "page": token or "first"})
        await self.emitter.emit([], [dead])
        CONNECTOR_DEAD_LETTERS.labels(self.supplier_id, self.kind, exc.reason).inc()
        self.store.commit(self.key, cursor={**state, "bad_page": fingerprint})

    def _map_page(self, items: list[Any], *, page: str, skip: frozenset[str],
                  ) -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, int | None]]:
        """Deltas and dead letters of one page, leaving out the keys in `skip` (sent before);
        and every item's key with its cursor candidate (None when it has no usable date)."""
        received = now_ms()
        deltas: dict[str, dict[str, Any]] = {}
        dead: list[dict[str, Any]] = []
        seen: dict[str, int | None] = {}
        for index, item in enumerate(items):
            original = raw_bytes(item)
            delta, bad = map_one(self.mapper, item, original=functools.partial(bytes, original),
                                 context={"url": self.options.url, "page": page,
                                          "index": str(index)}, received_at=received)
            if delta is not None:
                key = delta["event_id"]
                # Never past the time the page came: a future date must not move the cursor.
                candidate: int | None = min(delta["observed_at"], received)
            else:
                key = "dl:" + hashlib.sha256(original).hexdigest()[:24]
                stamp = self.mapper.observed_at_of(item)
                candidate = min(stamp, received) if stamp is not None else None
            seen[key] = candidate
            if key in skip:
                continue
            if delta is not None:
                # A supplier repeating an item within a page: send it once.
                deltas.setdefault(key, delta)
            elif bad is not None:
                dead.append(bad)
        return list(deltas.values()), dead, seen

    async def close(self) -> None:
        await self.http.close()


def _recent_at(recent: Mapping[str, int | None], cursor: int) -> dict[str, int | None]:
    """The keys still at or after `cursor` (undated dead letters too), newest kept."""
    kept = [(k, ts) for k, ts in recent.items() if ts is None or ts >= cursor]
    return dict(kept[-RECENT_KEYS_MAX:])
