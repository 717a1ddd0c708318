"""The webhook receiver's HTTP contract, with a memory emitter (no broker)."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator

import aiohttp
import pytest

from connectors.sources.base import FieldMapping, RecordMapper
from connectors.sources.emitters import MemoryEmitter
from connectors.sources.webhook import (
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    WebhookReceiver,
    WebhookSupplier,
    webhook_signature,
)

SECRET = b"k"
MAPPING = FieldMapping({"sku": ["sku"], "quantity": ["on_hand"], "sequence": ["version"],
                        "event_id": ["id"]})


async def _receiver(emitter: MemoryEmitter) -> WebhookReceiver:
    receiver = WebhookReceiver(
        {"bolt": WebhookSupplier("bolt", SECRET, RecordMapper("bolt", "webhook", MAPPING))},
        emitter, max_body_bytes=2048, tolerance_s=60)
    await receiver.start("127.0.0.1", 0)
    return receiver


@pytest.fixture
async def emitter_and_port() -> AsyncIterator[tuple[MemoryEmitter, int, WebhookReceiver]]:
    emitter = MemoryEmitter()
    receiver = await _receiver(emitter)
    assert receiver.port is not None
    yield emitter, receiver.port, receiver
    await receiver.stop()


async def post(port: int, body: bytes, *, secret: bytes = SECRET, ts: int | None = None,
               supplier: str = "bolt") -> tuple[int, dict[str, object]]:
    ts = int(time.time()) if ts is None else ts
    headers = {TIMESTAMP_HEADER: str(ts), SIGNATURE_HEADER: webhook_signature(secret, ts, body)}
    async with aiohttp.ClientSession() as s, s.post(
            f"http://127.0.0.1:{port}/webhooks/{supplier}", data=body, headers=headers) as r:
        return r.status, await r.json()


BODY = json.dumps({"events": [{"id": "e1", "sku": "A", "version": 1, "on_hand": 3},
                              {"id": "e2", "sku": "A|B", "version": 1, "on_hand": 3}]}).encode()


async def test_a_signed_request_is_accepted_with_bad_events_dead_lettered(
        emitter_and_port: tuple[MemoryEmitter, int, WebhookReceiver]) -> None:
    emitter, port, _ = emitter_and_port
    assert await post(port, BODY) == (200, {"accepted": 1, "dead_lettered": 1})
    assert [d["event_id"] for d in emitter.deltas] == ["bolt:e1"]
    assert emitter.dead_letters[0]["reason"] == "bad_sku"
    assert json.loads(emitter.dead_letters[0]["original"])["id"] == "e2"


@pytest.mark.parametrize(("secret", "age", "status"), [
    (b"forged", 0, 401), (SECRET, 61, 401), (SECRET, -61, 401)])
async def test_forged_or_expired_requests_are_refused_with_nothing_emitted(
        emitter_and_port: tuple[MemoryEmitter, int, WebhookReceiver], secret: bytes,
        age: int, status: int) -> None:
    emitter, port, _ = emitter_and_port
    code, _ = await post(port, BODY, secret=secret, ts=int(time.time()) - age)
    assert code == status
    assert emitter.calls == 0


async def test_too_large_unknown_and_unparseable_requests(
        emitter_and_port: tuple[MemoryEmitter, int, WebhookReceiver]) -> None:
    emitter, port, _ = emitter_and_port
    assert (await post(port, b"x" * 4096))[0] == 413
    assert (await post(port, BODY, supplier="nobody"))[0] == 404
    assert emitter.calls == 0
    status, answer = await post(port, b"{not json")
    assert (status, answer) == (200, {"accepted": 0, "dead_lettered": 1})
    assert emitter.dead_letters[0]["reason"] == "decode_error"


async def test_no_2xx_unless_the_events_were_acknowledged() -> None:
    failing = MemoryEmitter(fail_after=0)
    receiver = await _receiver(failing)
    try:
        assert receiver.port is not None
        assert (await post(receiver.port, BODY))[0] == 503
    finally:
        await receiver.stop()
