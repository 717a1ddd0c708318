"""Webhook receiver against the simulator's real webhook sender, read back from Kafka."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from connectors.simulator.config import SimulatorConfig
from connectors.simulator.runner import Simulator
from connectors.sources.emitters import KafkaEmitter
from connectors.sources.service import build_webhook_receiver
from connectors.sources.webhook import SIGNATURE_HEADER, TIMESTAMP_HEADER, webhook_signature
from connectors.suppliers import parse_suppliers
from tests.integration.connectors_kafka import (
    Topics,
    fold,
    quantities,
    truth_quantities,
)

pytestmark = pytest.mark.integration

SUPPLIER = "bolt-hooks"
SECRET = "s3cret-for-tests"


@pytest.fixture
async def sim(tmp_path: Path) -> AsyncIterator[Simulator]:
    config = SimulatorConfig.model_validate({
        "drop_dir": str(tmp_path / "drops"), "suppliers": [
            {"id": SUPPLIER, "feed": "webhook", "skus": 200, "changes_per_second": 0,
             "secret": {"env": "BOLT_SECRET"},
             "faults": {"duplicate_rate": 0.2, "reorder": True, "malformed_rate": 0.02}},
        ]})
    simulator = Simulator(config, {"BOLT_SECRET": SECRET})
    await simulator.start(webhooks=False)
    yield simulator
    await simulator.stop()


def receiver_for(emitter: object, *, max_body_bytes: int = 1_048_576):
    config = parse_suppliers(f"""
webhook_receiver: {{max_body_bytes: {max_body_bytes}, tolerance_s: 300}}
suppliers:
  - id: {SUPPLIER}
    kind: webhook
    credentials: {{secret: {{env: BOLT_SECRET}}}}
    mapping:
      sku: sku
      quantity: on_hand
      sequence: version
      event_id: id
      observed_at: occurred_at
      price: price
      currency: currency
      status: status
""")
    return build_webhook_receiver(config, config.suppliers, emitter=emitter,  # type: ignore[arg-type]
                                  environ={"BOLT_SECRET": SECRET})


async def test_webhooks_with_faults_converge_and_survive_a_receiver_restart(
        sim: Simulator, topics: Topics) -> None:
    emitter = topics.emitter()
    receiver = receiver_for(emitter)
    port = await receiver.start("127.0.0.1", 0)
    sender = sim.start_webhooks(SUPPLIER, f"http://127.0.0.1:{port}/webhooks/{SUPPLIER}")
    try:
        supplier = sim.supplier(SUPPLIER)
        supplier.step(150)
        await sender.drain(60)
        # The receiver goes down mid-feed; the supplier keeps changing and redelivering.
        await receiver.stop()
        supplier.step(150)
        failed_before = sender.attempts
        receiver = receiver_for(emitter)
        await receiver.start("127.0.0.1", port)
        supplier.step(100)
        await sender.drain(60)
        assert sender.attempts > failed_before
    finally:
        await receiver.stop()
        emitter.close()

    injected = sim.faults[SUPPLIER].injected
    assert injected["duplicate"] > 0 and injected["reorder"] > 0 and injected["malformed"] > 0
    produced = topics.deltas_read()
    state = fold(produced, SUPPLIER)
    truth = sim.truth(SUPPLIER)
    assert quantities(state) == truth_quantities(truth)
    assert {s: d["sequence"] for s, d in state.items()} == {s: t["version"]
                                                            for s, t in truth.items()}
    # Redeliveries carry the supplier's event ids: a duplicate is the same event, never a new one.
    by_id = {d["event_id"]: (d["sku"], d["sequence"], d["quantity"]) for d in produced}
    assert all(by_id[d["event_id"]] == (d["sku"], d["sequence"], d["quantity"])
               for d in produced)
    assert len(produced) > len(by_id)  # duplicates did arrive, and were harmless
    dead = topics.dead_read()
    assert len({d["original"] for d in dead}) == injected["malformed"]
    assert {d["reason"] for d in dead} <= {"bad_sku", "bad_quantity"}
    assert all(d["supplier_id"] == SUPPLIER and d["context"]["connector"] == "webhook"
               for d in dead)


def _event_body() -> bytes:
    return json.dumps({"events": [{"id": "evt-x", "sku": "BOLT-000001", "version": 99,
                                   "on_hand": 5, "occurred_at": "2024-01-01T00:00:00Z"}]}).encode()


async def _post(port: int, body: bytes, headers: dict[str, str]) -> int:
    async with aiohttp.ClientSession() as session, session.post(
            f"http://127.0.0.1:{port}/webhooks/{SUPPLIER}", data=body,
            headers={"Content-Type": "application/json", **headers}) as resp:
        return resp.status


def _signed(secret: str, timestamp: int, body: bytes) -> dict[str, str]:
    return {TIMESTAMP_HEADER: str(timestamp),
            SIGNATURE_HEADER: webhook_signature(secret.encode(), timestamp, body)}


async def test_forged_or_expired_signatures_get_401_and_produce_nothing(
        topics: Topics) -> None:
    emitter = topics.emitter()
    receiver = receiver_for(emitter, max_body_bytes=4096)
    port = await receiver.start("127.0.0.1", 0)
    body = _event_body()
    now = int(time.time())
    try:
        assert await _post(port, body, _signed("wrong-secret", now, body)) == 401
        assert await _post(port, body, _signed(SECRET, now - 3600, body)) == 401  # expired
        assert await _post(port, body, _signed(SECRET, now + 3600, body)) == 401  # future
        assert await _post(port, body, {}) == 401  # unsigned
        tampered = body.replace(b'"on_hand": 5', b'"on_hand": 9')
        assert await _post(port, tampered, _signed(SECRET, now, body)) == 401
        # The signature covers the timestamp: an old request re-stamped does not verify.
        old = _signed(SECRET, now - 3600, body)
        assert await _post(port, body, {**old, TIMESTAMP_HEADER: str(now)}) == 401
        big = json.dumps({"events": [], "pad": "x" * 8192}).encode()
        assert await _post(port, big, _signed(SECRET, now, big)) == 413
        assert topics.end_offsets(topics.deltas) == 0
        assert topics.end_offsets(topics.dead) == 0

        # The same request, properly signed, is acknowledged only once it is in Kafka.
        assert await _post(port, body, _signed(SECRET, now, body)) == 200
        assert topics.end_offsets(topics.deltas) == 1
        # A redelivery is answered 2xx again and carries the same event id.
        assert await _post(port, body, _signed(SECRET, int(time.time()), body)) == 200
        ids = {d["event_id"] for d in topics.deltas_read()}
        assert ids == {f"{SUPPLIER}:evt-x"}
    finally:
        await receiver.stop()
        emitter.close()


async def test_webhook_is_not_acknowledged_when_kafka_does_not_acknowledge(
        topics: Topics) -> None:
    # A broker nobody listens on: the produce times out, so the supplier must redeliver.
    # Its producer is never closed: log_level 2 keeps its background thread's connection
    # failures out of later tests' output.
    unreachable = {"bootstrap.servers": "127.0.0.1:1", "message.timeout.ms": 1500,
                   "log_level": 2}
    emitter = KafkaEmitter.create(unreachable, deltas_topic=topics.deltas,
                                  dead_letter_topic=topics.dead)
    receiver = receiver_for(emitter)
    port = await receiver.start("127.0.0.1", 0)
    body = _event_body()
    try:
        assert await _post(port, body, _signed(SECRET, int(time.time()), body)) == 503
    finally:
        await receiver.stop()
        emitter.deltas._closed.set()  # nothing will ever be acknowledged; do not flush
        emitter.dead_letters._closed.set()


async def test_hostile_events_become_dead_letters_that_kafka_accepts(topics: Topics) -> None:
    emitter = topics.emitter()
    receiver = receiver_for(emitter)
    port = await receiver.start("127.0.0.1", 0)
    good = {"id": "evt-good", "sku": "BOLT-000001", "version": 7, "on_hand": 5,
            "occurred_at": "2024-01-01T00:00:00Z"}
    hostile = [
        ({**good, "id": "h1", "on_hand": "Infinity"}, "bad_quantity"),
        ({**good, "id": "h2", "on_hand": "1e1000000"}, "bad_quantity"),
        ({**good, "id": "h3", "version": 2**64}, "bad_sequence"),
        ({**good, "id": "h4", "price": "1e30"}, "bad_price"),
        ({**good, "id": "h5", "occurred_at": "nan"}, "bad_timestamp"),
        ({**good, "id": "h6", "status": "\ud800"}, "bad_status"),
        ({**good, "id": "h7", "sku": "S" * 350 * 1024}, "bad_sku"),  # 350 KiB
    ]
    body = json.dumps({"events": [e for e, _ in hostile] + [good]}).encode()
    started = time.perf_counter()
    try:
        async with aiohttp.ClientSession() as session, session.post(
                f"http://127.0.0.1:{port}/webhooks/{SUPPLIER}", data=body,
                headers=_signed(SECRET, int(time.time()), body)) as resp:
            assert (resp.status, await resp.json()) == (
                200, {"accepted": 1, "dead_lettered": len(hostile)})
    finally:
        await receiver.stop()
        emitter.close()
    assert time.perf_counter() - started < 10.0  # no 27 s of parsing on the loop
    assert [d["event_id"] for d in topics.deltas_read()] == [f"{SUPPLIER}:evt-good"]
    dead = sorted(topics.dead_read(), key=lambda d: d["context"]["index"])
    assert [d["reason"] for d in dead] == [reason for _, reason in hostile]
    huge = dead[-1]
    # Cut to 64 KiB, not dropped; keyed by the supplier, not by the 350 KiB SKU.
    assert len(huge["original"]) == 65_536 and huge["context"]["original_truncated"] == "true"
    assert int(huge["context"]["original_size"]) > 350 * 1024
    assert huge["original_key"] is None
