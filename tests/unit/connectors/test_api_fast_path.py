"""The API's fast path: plainly valid holds and reads answered without FastAPI, the rest passed on.

The Guard answers `POST /v1/reservations` and `GET /v1/inventory/{sku}` itself when the
request is one the route would accept as it is; any other request reaches the route with its
body intact, so FastAPI's validation (422 with the field) stays the one answer to bad input.
"""

from __future__ import annotations

import asyncio
import json
from types import SimpleNamespace
from typing import Any

from connectors.api.app import Guard
from connectors.api.keys import ApiKeys, RateLimiter, hash_key

KEY = "k"


class FakeApi:
    """The parts of `Api` the fast path calls: keys, limiter, command, availability."""

    def __init__(self) -> None:
        self.keys = ApiKeys.from_entries((f"shop:{hash_key(KEY)}",), development=False)
        self.limiter = RateLimiter(rate=1e6, burst=1_000_000)
        self.commands: list[tuple[Any, ...]] = []

    async def command(self, kind: str, sku: str, *, rid: str | None, quantity: int = 0,
                      ttl_ms: int = 0, idempotency_key: str | None = None) -> dict[str, Any]:
        self.commands.append((kind, sku, quantity, ttl_ms, idempotency_key))
        return {"outcome": "GRANTED", "replayed": False, "reservation_id": rid,
                "quantity": quantity, "expires_at": 123, "available": 9}

    async def availability(self, sku: str, strong: bool) -> dict[str, Any] | None:
        if sku == "NONE":
            return None
        return {"platform_sku": sku, "available": 9, "supplier_total": 10, "reserved": 1,
                "best_supplier": "s1", "suppliers": [], "source": "redis"}


def run(guard: Guard, method: str, path: str, headers: list[tuple[bytes, bytes]],
        chunks: list[bytes], query: bytes = b"") -> tuple[int, dict[bytes, bytes], bytes]:
    """One request through the Guard: (status, headers, body)."""
    sent: list[dict[str, Any]] = []
    messages = [{"type": "http.request", "body": c, "more_body": i < len(chunks) - 1}
                for i, c in enumerate(chunks)] or [{"type": "http.request", "body": b""}]

    async def receive() -> dict[str, Any]:
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "method": method, "path": path, "query_string": query,
             "headers": [(b"x-api-key", KEY.encode()), *headers]}
    asyncio.run(guard(scope, receive, send))
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return sent[0]["status"], dict(sent[0]["headers"]), body


def route() -> tuple[Any, list[bytes]]:
    """An inner app standing for FastAPI: records the body it was given, answers 299."""
    bodies: list[bytes] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body", False):
                break
        bodies.append(body)
        await send({"type": "http.response.start", "status": 299, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    return app, bodies


JSON = (b"content-type", b"application/json")


def test_a_plain_hold_is_answered_without_the_route() -> None:
    app, bodies = route()
    api = FakeApi()
    guard = Guard(app, api)  # type: ignore[arg-type]
    status, _, body = run(guard, "POST", "/v1/reservations",
                                [JSON, (b"idempotency-key", b"key-1")],
                                [b'{"platform_sku": "A-1",', b' "quantity": 2, "ttl_s": 60}'])
    assert status == 201 and bodies == []
    answer = json.loads(body)
    assert answer["status"] == "HELD" and answer["platform_sku"] == "A-1"
    assert answer["quantity"] == 2 and answer["available"] == 9
    assert api.commands == [("HOLD", "A-1", 2, 60_000, "shop:key-1")]


def test_anything_else_reaches_the_route_with_its_body() -> None:
    app, bodies = route()
    api = FakeApi()
    guard = Guard(app, api)  # type: ignore[arg-type]
    key = (b"idempotency-key", b"key-1")
    cases = [
        ([JSON, key], b'{"platform_sku": "A", "quantity": 0}'),  # out of range
        ([JSON, key], b'{"platform_sku": "A", "quantity": "2"}'),  # the route coerces
        ([JSON, key], b'{"platform_sku": "A", "quantity": true}'),
        ([JSON, key], b'{"platform_sku": "A|B"}'),  # not a SKU
        ([JSON, key], b'{"platform_sku": "A\\n"}'),
        ([JSON, key], b'{"platform_sku": "A", "ttl_s": 0}'),
        ([JSON, key], b'{"platform_sku": "A", "other": 1}'),  # unknown field
        ([JSON, key], b'["A"]'),
        ([JSON, key], b'{"platform_sku": "A"'),  # not JSON
        ([JSON], b'{"platform_sku": "A"}'),  # no Idempotency-Key
        ([JSON, (b"idempotency-key", b"a b")], b'{"platform_sku": "A"}'),
        ([JSON, key, key], b'{"platform_sku": "A"}'),  # two of them
        ([key], b'{"platform_sku": "A"}'),  # no content type
        ([(b"content-type", b"text/plain"), key], b'{"platform_sku": "A"}'),
        ([JSON, key], b'{"platform_sku": "' + b"A" * 5000 + b'"}'),  # longer than a hold
    ]
    for headers, raw in cases:
        status, _, _ = run(guard, "POST", "/v1/reservations", headers,
                           [raw[:7], raw[7:]])
        assert status == 299, raw[:60]
        assert bodies[-1] == raw, raw[:60]
    assert len(bodies) == len(cases) and api.commands == []
    # Other routes and methods are the route's too.
    assert run(guard, "PUT", "/v1/reservations", [JSON, key], [b"{}"])[0] == 299
    assert run(guard, "POST", "/v1/reservations/x/confirm", [JSON, key], [b""])[0] == 299


def test_a_plain_read_is_answered_without_the_route_with_its_etag() -> None:
    app, bodies = route()
    guard = Guard(app, FakeApi())  # type: ignore[arg-type]
    status, headers, body = run(guard, "GET", "/v1/inventory/A-1", [], [])
    assert status == 200 and json.loads(body)["available"] == 9
    etag = headers[b"etag"]
    assert run(guard, "GET", "/v1/inventory/A-1", [(b"if-none-match", etag)], [])[0] == 304
    assert run(guard, "GET", "/v1/inventory/A-1", [], [], query=b"consistency=eventual")[0] \
        == 200
    assert run(guard, "GET", "/v1/inventory/NONE", [], [])[0] == 404
    assert bodies == []
    # Strong reads, other parameters and paths the route's parameter cannot match: the route.
    for path, query in (("/v1/inventory/A-1", b"consistency=strong"),
                        ("/v1/inventory/A-1", b"consistency=bogus"),
                        ("/v1/inventory/a/b", b""), ("/v1/inventory/", b"")):
        assert run(guard, "GET", path, [], [], query=query)[0] == 299, (path, query)


def test_the_fast_path_still_needs_a_key() -> None:
    app, bodies = route()
    guard = Guard(app, SimpleNamespace(keys=FakeApi().keys,  # type: ignore[arg-type]
                                       limiter=RateLimiter(rate=1.0, burst=1)))
    scope_headers = [JSON, (b"idempotency-key", b"k1")]
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b'{"platform_sku": "A"}'}

    asyncio.run(guard({"type": "http", "method": "POST", "path": "/v1/reservations",
                       "query_string": b"", "headers": [(b"x-api-key", b"wrong"),
                                                        *scope_headers]}, receive, send))
    assert sent[0]["status"] == 401 and bodies == []
