"""The simulator's HTTP side: a REST inventory listing and a GraphQL API, with faults."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
from collections.abc import Mapping
from typing import Any

from aiohttp import web
from graphql import build_schema, graphql

from .catalog import Item, SimulatedSupplier, iso_ms
from .faults import FaultInjector

GRAPHQL_SDL = """
scalar Long
type Query {
  inventory(supplierId: String!, after: String, first: Int = 100): InventoryConnection!
}
type InventoryConnection { edges: [InventoryEdge!]!, pageInfo: PageInfo! }
type InventoryEdge { cursor: String!, node: StockItem! }
type PageInfo { hasNextPage: Boolean!, endCursor: String }
type StockItem {
  sku: String!
  onHand: Int
  version: Long!
  price: String
  currency: String
  updatedAt: String!
  status: String
  warehouse: String
}
"""


def rest_item(item: Item) -> dict[str, Any]:
    """How the simulated REST suppliers spell an item (mapped by the supplier config)."""
    return {"item_code": item.sku, "qty": item.quantity, "version": item.version,
            "unit_price": item.price, "currency": item.currency,
            "updated_at": iso_ms(item.updated_at), "status": item.status,
            "warehouse": item.warehouse}


def rest_junk(n: int) -> dict[str, Any]:
    """A malformed REST item: never a real SKU, never valid."""
    return [{"item_code": "", "qty": 1, "version": 1, "updated_at": iso_ms(0)},
            {"item_code": f"JUNK|{n}", "qty": 3, "version": 1, "updated_at": iso_ms(0)},
            {"item_code": f"JUNK-{n}", "qty": "lots", "version": 1, "updated_at": iso_ms(0)},
            {"item_code": f"JUNK-{n}", "qty": -4, "version": 1, "updated_at": iso_ms(0)}][n % 4]


def graphql_node(item: Item) -> dict[str, Any]:
    return {"sku": item.sku, "onHand": item.quantity, "version": item.version,
            "price": item.price, "currency": item.currency, "updatedAt": iso_ms(item.updated_at),
            "status": item.status, "warehouse": item.warehouse}


def _token(payload: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(payload).encode()).decode()


def _untoken(token: str) -> dict[str, Any]:
    decoded: dict[str, Any] = json.loads(base64.urlsafe_b64decode(token.encode()))
    return decoded


class SupplierHttpApi:
    """`GET /v1/suppliers/{id}/inventory` and `POST /graphql` for the simulated suppliers."""

    def __init__(self, suppliers: Mapping[str, SimulatedSupplier],
                 faults: Mapping[str, FaultInjector], *,
                 tokens: Mapping[str, str] | None = None) -> None:
        self.suppliers = suppliers
        self.faults = faults
        self.tokens = dict(tokens or {})
        self.requests: dict[str, int] = {}
        self.schema = build_schema(GRAPHQL_SDL)
        self._runner: web.AppRunner | None = None
        self.port: int | None = None

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/v1/suppliers/{supplier_id}/inventory", self.rest_inventory)
        app.router.add_post("/graphql", self.graphql)
        return app

    async def _faulted(self, request: web.Request, supplier_id: str) -> web.Response | None:
        """Apply the supplier's request faults; a response here replaces the real one."""
        self.requests[supplier_id] = self.requests.get(supplier_id, 0) + 1
        faults = self.faults.get(supplier_id)
        if faults is None:
            return None
        if faults.is_down():
            # An outage drops the connection without an answer, like a dead host would.
            if request.transport is not None:
                request.transport.close()
            raise asyncio.CancelledError
        delay = faults.delay()
        if delay:
            await asyncio.sleep(delay)
        status = faults.status()
        if status is not None:
            headers = {"Retry-After": "1"} if status == 429 else {}
            return web.json_response({"error": "simulated"}, status=status, headers=headers)
        return None

    def _authorised(self, request: web.Request, supplier_id: str) -> bool:
        token = self.tokens.get(supplier_id)
        return token is None or request.headers.get("Authorization") == f"Bearer {token}"

    async def rest_inventory(self, request: web.Request) -> web.StreamResponse:
        supplier_id = request.match_info["supplier_id"]
        supplier = self.suppliers.get(supplier_id)
        if supplier is None:
            return web.json_response({"error": "unknown supplier"}, status=404)
        if not self._authorised(request, supplier_id):
            return web.json_response({"error": "unauthorised"}, status=401)
        faulted = await self._faulted(request, supplier_id)
        if faulted is not None:
            return faulted
        try:
            since = int(request.query.get("updated_since", "0"))
            limit = max(1, min(1000, int(request.query.get("limit", "100"))))
            token = request.query.get("page_token")
            after = _untoken(token) if token else None
        except (ValueError, TypeError):
            return web.json_response({"error": "bad query"}, status=400)
        if after is not None:
            since = after["s"]
        items = [i for i in supplier.by_update() if i.updated_at >= since]
        if after is not None:
            items = [i for i in items if (i.updated_at, i.sku) > (after["u"], after["k"])]
        page, more = items[:limit], len(items) > limit
        next_token = _token({"s": since, "u": page[-1].updated_at, "k": page[-1].sku}) \
            if more else None
        records = [rest_item(i) for i in page]
        faults = self.faults.get(supplier_id)
        if faults is not None:
            records = faults.mangle(records, rest_junk)
        body = json.dumps({"items": records, "next_page_token": next_token}).encode()
        etag = f'"{hashlib.sha1(body).hexdigest()}"'
        if request.headers.get("If-None-Match") == etag:
            return web.Response(status=304, headers={"ETag": etag})
        return web.Response(body=body, content_type="application/json", headers={"ETag": etag})

    async def graphql(self, request: web.Request) -> web.Response:
        try:
            payload = await request.json()
            variables = payload.get("variables") or {}
            supplier_id = str(variables.get("supplierId", ""))
        except (ValueError, AttributeError):
            return web.json_response({"errors": [{"message": "bad request"}]}, status=400)
        supplier = self.suppliers.get(supplier_id)
        if supplier is None:
            return web.json_response({"errors": [{"message": "unknown supplier"}]}, status=404)
        if not self._authorised(request, supplier_id):
            return web.json_response({"errors": [{"message": "unauthorised"}]}, status=401)
        faulted = await self._faulted(request, supplier_id)
        if faulted is not None:
            return faulted
        result = await graphql(self.schema, payload.get("query", ""), root_value=self,
                               variable_values=variables)
        body: dict[str, Any] = {"data": result.data}
        if result.errors:
            body["errors"] = [{"message": e.message} for e in result.errors]
        return web.json_response(body)

    def inventory(self, _info: Any, supplierId: str, after: str | None = None,
                  first: int = 100) -> dict[str, Any]:
        """The `inventory` field: items changed after the cursor, in change order."""
        supplier = self.suppliers[supplierId]
        revision = int(after) if after else 0
        items = [i for i in supplier.by_revision() if i.revision > revision]
        first = max(1, min(1000, first))
        page, more = items[:first], len(items) > first
        edges: list[dict[str, Any]] = [{"cursor": str(i.revision), "node": graphql_node(i)}
                                       for i in page]
        faults = self.faults.get(supplierId)
        if faults is not None:
            edges = faults.mangle(edges, lambda n: {
                "cursor": str(revision),
                "node": {"sku": f"JUNK|{n}", "onHand": None, "version": 1, "updatedAt": iso_ms(0)},
            })
        end = str(page[-1].revision) if page else after
        return {"edges": edges, "pageInfo": {"hasNextPage": more, "endCursor": end}}

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> int:
        self._runner = web.AppRunner(self.app(), access_log=None, handler_cancellation=True)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        server = site._server
        sockets = getattr(server, "sockets", None) or []
        self.port = sockets[0].getsockname()[1] if sockets else port
        return self.port

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
