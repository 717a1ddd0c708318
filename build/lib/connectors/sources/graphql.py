"""GraphQL polling with Relay-style cursor pagination; the end cursor is stored durably."""

from __future__ import annotations

import functools
import hashlib
import json
import time
from dataclasses import dataclass
from typing import Any

from pipeline import tracing
from pipeline.log import get_logger

from .base import Emitter, RecordMapper, Source, dead_letter, map_one, now_ms, raw_bytes, safe_text
from .cursor_store import CursorStore
from .http_client import ResponseTooLarge, SupplierHttp
from .metrics import CONNECTOR_DEAD_LETTERS, CONNECTOR_DELTAS, LAST_POLL, PAGINATION_STOPPED
from .rest import PAGE_TOKEN_MAX, PageError
from .retry import RetryableError

log = get_logger(__name__)

DEFAULT_QUERY = """
query Inventory($supplierId: String!, $after: String, $first: Int!) {
  inventory(supplierId: $supplierId, after: $after, first: $first) {
    edges { cursor node { sku onHand version price currency updatedAt status warehouse } }
    pageInfo { hasNextPage endCursor }
  }
}
"""


@dataclass(frozen=True)
class GraphqlOptions:
    url: str
    query: str = DEFAULT_QUERY
    connection_path: str = "inventory"  # under `data`
    page_size: int = 100
    max_pages_per_poll: int = 1000
    variables: tuple[tuple[str, str], ...] = ()  # extra fixed variables, e.g. supplierId


class GraphqlSource(Source):
    """Walks the connection `after` the stored cursor; the supplier orders it by change, so
    the end cursor of the last page is where the next poll starts."""

    kind = "graphql"

    def __init__(self, supplier_id: str, *, options: GraphqlOptions, http: SupplierHttp,
                 mapper: RecordMapper, emitter: Emitter, store: CursorStore,
                 interval_s: float = 5.0) -> None:
        super().__init__(supplier_id, interval_s=interval_s)
        self.options = options
        self.http = http
        self.mapper = mapper
        self.emitter = emitter
        self.store = store
        self.key = f"graphql:{supplier_id}"

    async def poll_once(self) -> int:
        state = self.store.get_cursor(self.key) or {}
        after: str | None = state.get("after")
        cursors_seen: set[str] = {after} if after else set()
        emitted = 0
        pages = 0
        while True:
            variables: dict[str, Any] = {"supplierId": self.supplier_id,
                                         **dict(self.options.variables),
                                         "after": after, "first": self.options.page_size}
            started_ns = time.time_ns()  # the page's span starts with its request
            try:
                response = await self.http.request(
                    "POST", self.options.url, json_body={"query": self.options.query,
                                                         "variables": variables})
            except ResponseTooLarge as exc:
                await self._page_failed(state, "response_too_large", str(exc), exc.head, after)
                raise
            pages += 1
            payload = self._read(response.body)
            if isinstance(payload, PageError):
                await self._page_failed(state, payload.reason, str(payload), payload.original,
                                        after)
                raise payload
            errors, connection = payload
            if connection is None:
                # Resolver errors are the supplier's transient trouble as often as not.
                raise RetryableError(f"graphql errors: {safe_text(errors[:3], 500)}")
            edges = connection.get("edges")
            page_info = connection.get("pageInfo")
            if not isinstance(edges, list) or not isinstance(page_info, dict):
                error = PageError("malformed_page", "graphql: edges is not a list or pageInfo "
                                                    "not an object", response.body)
                await self._page_failed(state, error.reason, str(error), error.original, after)
                raise error
            deltas, dead = self._map_edges(edges, after)
            if errors:
                # Partial data: what came is used, the errors are kept for the operator.
                dead.append(dead_letter(
                    reason="graphql_error", message=safe_text(errors[:3], 1000),
                    original=raw_bytes(errors), supplier_id=self.supplier_id,
                    connector=self.kind, context={"url": self.options.url,
                                                  "after": after or ""}))
            with tracing.receive_span("graphql page", started_ns, connector=self.kind,
                                      supplier_id=self.supplier_id, page=after or "first"):
                await self.emitter.emit(deltas, dead)
            emitted += len(deltas)
            CONNECTOR_DELTAS.labels(self.supplier_id, self.kind).inc(len(deltas))
            for d in dead:
                CONNECTOR_DEAD_LETTERS.labels(self.supplier_id, self.kind, d["reason"]).inc()
            more = page_info.get("hasNextPage") is True and bool(edges)
            # A cursor given again is a loop only when the supplier says there is more.
            end = self._end_cursor(page_info.get("endCursor"),
                                   cursors_seen if more else set(), pages)
            if end is not None and end != after:
                after = end
                cursors_seen.add(end)
                state = {"after": after}
                self.store.commit(self.key, cursor=state)
            if more and end is not None and pages >= self.options.max_pages_per_poll:
                # Not a supplier fault: the next poll resumes from the stored cursor.
                PAGINATION_STOPPED.labels(self.supplier_id, self.kind, "page_limit").inc()
                more = False
            if end is None or not more:
                LAST_POLL.labels(self.supplier_id).set_to_current_time()
                return emitted

    def _read(self, body: bytes) -> tuple[list[Any], dict[str, Any] | None] | PageError:
        """(errors, the connection or None), or the PageError of a body that is not one."""
        try:
            payload = json.loads(body)
        except (ValueError, RecursionError) as exc:
            return PageError("decode_error", f"{self.options.url} sent a body that is not "
                                             f"JSON: {safe_text(exc, 200)}", body)
        if not isinstance(payload, dict):
            return PageError("malformed_page", "graphql: the response is not an object", body)
        errors = payload.get("errors") or []
        if not isinstance(errors, list):
            errors = [errors]
        data = payload.get("data")
        connection = data.get(self.options.connection_path) if isinstance(data, dict) else None
        if isinstance(connection, dict):
            return errors, connection
        if errors:
            return errors, None
        return PageError("malformed_page", "graphql: no connection at "
                                           f"data.{self.options.connection_path}", body)

    def _end_cursor(self, raw: Any, seen: set[str], pages: int) -> str | None:
        """The cursor to store and continue from, or None (none given, or a loop)."""
        if raw is None or raw == "":
            return None
        if not isinstance(raw, str | int) or isinstance(raw, bool) or \
                len(str(raw)) > PAGE_TOKEN_MAX:
            reason = "bad_token"
        elif str(raw) in seen:
            reason = "repeated_token"
        else:
            return safe_text(raw, PAGE_TOKEN_MAX)
        PAGINATION_STOPPED.labels(self.supplier_id, self.kind, reason).inc()
        log.warning("supplier pagination stopped", supplier=self.supplier_id,
                    connector=self.kind, reason=reason, pages=pages,
                    cursor=safe_text(raw, 80))
        return None

    async def _page_failed(self, state: dict[str, Any], reason: str, message: str,
                           original: bytes, after: str | None) -> None:
        """Dead-letter a response that cannot be read, once per distinct body at this cursor."""
        fingerprint = hashlib.sha256(original[:65_536]).hexdigest()[:32]
        if state.get("bad_page") == fingerprint:
            return
        await self.emitter.emit([], [dead_letter(
            reason=reason, message=message, original=original, supplier_id=self.supplier_id,
            connector=self.kind, context={"url": self.options.url, "after": after or ""})])
        CONNECTOR_DEAD_LETTERS.labels(self.supplier_id, self.kind, reason).inc()
        state["bad_page"] = fingerprint
        self.store.commit(self.key, cursor=state)

    def _map_edges(self, edges: list[Any], after: str | None) -> tuple[list[dict[str, Any]],
                                                                       list[dict[str, Any]]]:
        received = now_ms()
        deltas: dict[str, dict[str, Any]] = {}
        dead: list[dict[str, Any]] = []
        for index, edge in enumerate(edges):
            node = edge.get("node") if isinstance(edge, dict) else None
            original = raw_bytes(edge)
            delta, bad = map_one(self.mapper, node if node is not None else edge,
                                 original=functools.partial(bytes, original),
                                 context={"url": self.options.url, "after": after or "",
                                          "index": str(index)}, received_at=received)
            if delta is not None:
                deltas.setdefault(delta["event_id"], delta)
            elif bad is not None:
                dead.append(bad)
        return list(deltas.values()), dead

    async def close(self) -> None:
        await self.http.close()
