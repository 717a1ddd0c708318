"""API keys by hash, per-key rate limits and the stream's resume history, without a server."""

from __future__ import annotations

import asyncio

import pytest

from connectors.api.keys import DEMO_KEY, ApiKeyError, ApiKeys, RateLimiter, hash_key
from connectors.api.stream import StreamHub


def test_keys_are_matched_by_their_hash_only() -> None:
    keys = ApiKeys.from_entries((f"shop:{hash_key('s3cret')}",), development=False)
    assert keys.client("s3cret") == "shop"
    assert keys.client(hash_key("s3cret")) is None  # the stored hash is not a key
    assert keys.client(None) is None and keys.client("x" * 1000) is None
    assert ApiKeys.from_entries((), development=True).client(DEMO_KEY) == "demo"
    assert ApiKeys.from_entries((), development=False).client(DEMO_KEY) is None
    with pytest.raises(ApiKeyError, match="64 hex"):
        ApiKeys.from_entries(("shop:plaintext",), development=False)


def test_rate_limit_is_a_token_bucket_per_key() -> None:
    limiter = RateLimiter(rate=2.0, burst=3)
    assert [limiter.take("a", now=0.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limiter.take("a", now=0.0) == pytest.approx(0.5)
    assert limiter.take("b", now=0.0) == 0.0  # another key has its own bucket
    assert limiter.take("a", now=0.5) == 0.0  # refilled one token


def test_stream_resumes_after_an_id_or_says_it_cannot() -> None:
    async def scenario() -> None:
        hub = StreamHub(capacity=3)
        for i in range(5):
            hub.publish("A" if i % 2 == 0 else "B", {"n": i})
        # History holds events 3, 4, 5 (n = 2, 3, 4).
        assert hub.since(hub.event_id(3), frozenset({"A"})) == [(hub.event_id(5), {"n": 4})]
        assert [e for _, e in hub.since(hub.event_id(2), None) or []] == [
            {"n": 2}, {"n": 3}, {"n": 4}]
        assert hub.since(hub.event_id(1), None) is None  # too old
        assert hub.since("otherboot-4", None) is None
        assert hub.since(None, None) is None
        sub = hub.subscribe(frozenset({"B"}))
        hub.publish("A", {"n": 5})
        hub.publish("B", {"n": 6})
        assert sub.queue.get_nowait() == (hub.event_id(7), {"n": 6})
        assert sub.queue.empty()

    asyncio.run(scenario())


def test_guard_answers_401_and_429_before_the_app() -> None:
    from types import SimpleNamespace

    from connectors.api.app import Guard

    reached: list[str] = []

    async def app(scope: dict, receive: object, send: object) -> None:
        reached.append(scope["state"]["client"])
        await send({"type": "http.response.start", "status": 200, "headers": []})  # type: ignore[operator]
        await send({"type": "http.response.body", "body": b"{}"})  # type: ignore[operator]

    api = SimpleNamespace(keys=ApiKeys.from_entries((f"shop:{hash_key('k')}",),
                                                    development=False),
                          limiter=RateLimiter(rate=0.001, burst=1))
    guard = Guard(app, api)  # type: ignore[arg-type]

    async def call(headers: list[tuple[bytes, bytes]], query: bytes = b"") -> tuple[int, dict]:
        sent: list[dict] = []

        async def send(message: dict) -> None:
            sent.append(message)

        async def receive() -> dict:
            return {"type": "http.request", "body": b""}

        await guard({"type": "http", "path": "/v1/inventory", "headers": headers,
                     "query_string": query, "method": "GET"}, receive, send)
        return sent[0]["status"], dict(sent[0]["headers"])

    async def scenario() -> None:
        assert (await call([(b"x-api-key", b"wrong")]))[0] == 401
        assert (await call([(b"authorization", b"Bearer k")]))[0] == 200
        status, headers = await call([], query=b"api_key=k")
        assert status == 429 and int(headers[b"retry-after"]) >= 1
        assert reached == ["shop"]

    asyncio.run(scenario())
