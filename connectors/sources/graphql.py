"""GraphQL polling with Relay-style cursor pagination; the end cursor is stored durably."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from pipeline.errors import ConnectorError, ValidationError
from pipeline.log import get_logger

from .base import Emitter, RecordMapper, Source, dead_letter, now_ms, raw_bytes
from .cursor_store import CursorStore
from .http_client import SupplierHttp
from .metrics import CONNECTOR_DEAD_LETTERS, CONNECTOR_DELTAS, LAST_POLL
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
        emitted = 0
        while True:
            variables: dict[str, Any] = {"supplierId": self.supplier_id,
                                         **dict(self.options.variables),
                                         "after": after, "first": self.options.page_size}
            response = await self.http.request(
                "POST", self.options.url, json_body={"query": self.options.query,
                                                     "variables": variables})
            try:
                payload = json.loads(response.body)
            except ValueError as exc:
                raise ConnectorError(f"{self.options.url} sent a body that is not JSON") from exc
            if payload.get("errors"):
                # Resolver errors are the supplier's transient trouble as often as not.
                raise RetryableError(f"graphql errors: {payload['errors'][:3]}")
            connection = (payload.get("data") or {}).get(self.options.connection_path)
            if not isinstance(connection, dict):
                raise ConnectorError(
                    f"graphql: no connection at data.{self.options.connection_path}")
            edges = connection.get("edges") or []
            page_info = connection.get("pageInfo") or {}
            deltas, dead = self._map_edges(edges, after)
            await self.emitter.emit(deltas, dead)
            emitted += len(deltas)
            CONNECTOR_DELTAS.labels(self.supplier_id, self.kind).inc(len(deltas))
            for d in dead:
                CONNECTOR_DEAD_LETTERS.labels(self.supplier_id, self.kind, d["reason"]).inc()
            end = page_info.get("endCursor")
            if end:
                after = str(end)
                self.store.commit(self.key, cursor={"after": after})
            if not page_info.get("hasNextPage") or not edges:
                LAST_POLL.labels(self.supplier_id).set_to_current_time()
                return emitted

    def _map_edges(self, edges: list[Any], after: str | None) -> tuple[list[dict[str, Any]],
                                                                       list[dict[str, Any]]]:
        received = now_ms()
        deltas: dict[str, dict[str, Any]] = {}
        dead: list[dict[str, Any]] = []
        for index, edge in enumerate(edges):
            node = edge.get("node") if isinstance(edge, dict) else None
            try:
                delta = self.mapper.map(node if node is not None else edge, received_at=received)
            except ValidationError as exc:
                dead.append(dead_letter(
                    reason=exc.code, message=exc.message, original=raw_bytes(edge),
                    supplier_id=self.supplier_id, connector=self.kind,
                    context={"url": self.options.url, "after": after or "", "index": str(index)}))
                continue
            deltas.setdefault(delta["event_id"], delta)
        return list(deltas.values()), dead

    async def close(self) -> None:
        await self.http.close()
