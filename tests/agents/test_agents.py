"""The agents, driven through Faust's test_context with the memory store."""

from __future__ import annotations

import time
from typing import Any
from unittest.mock import AsyncMock, patch

import pytest

from pipeline.app import settings
from schemas.codec import codec_for

pytestmark = pytest.mark.skipif(settings.store != "memory://",
                                reason="pipeline.app was imported before tests/agents/conftest")

from topologies import aggregate as aggregate_mod  # noqa: E402
from topologies import process_deltas as pd  # noqa: E402

NOW = int(time.time() * 1000)


def delta(**kw: Any) -> dict[str, Any]:
    base = {"supplier_id": "acme", "sku": "A-1", "event_id": "e1", "sequence": 1,
            "kind": "SNAPSHOT", "quantity": 10, "observed_at": NOW, "received_at": NOW}
    return {**base, **kw}


def encoded(**kw: Any) -> tuple[bytes, bytes]:
    d = delta(**kw)
    return f"{d['supplier_id']}|{d['sku']}".encode(), codec_for("SupplierDelta").encode(d)


class Sent:
    """Captures what an agent sends to each topic."""

    def __init__(self) -> None:
        self.records: dict[str, list[Any]] = {}

    def patch(self, name: str, topic: Any) -> Any:
        async def send(*, key: Any = None, value: Any = None, **_: Any) -> None:
            self.records.setdefault(name, []).append((key, value))
        return patch.object(topic, "send", AsyncMock(side_effect=send))


@pytest.fixture
def sent() -> Any:
    s = Sent()
    with s.patch("updates", pd.stock_updates_topic), s.patch("dead", pd.deadletter_topic), \
            s.patch("resync", pd.resync_topic), s.patch("changes", aggregate_mod.changes_topic):
        yield s
    pd.stock.data.clear()
    aggregate_mod.availability.data.clear()


async def test_snapshot_then_adjustment_updates_table_and_emits(sent: Sent) -> None:
    async with pd.process_deltas.test_context() as agent:
        for kw in ({}, {"event_id": "e2", "sequence": 2, "kind": "ADJUSTMENT", "quantity": -3}):
            key, value = encoded(**kw)
            await agent.put(value=value, key=key)
    state = pd.stock[b"acme|A-1"]
    assert (state["quantity"], state["version"]) == (7, 2)
    assert state["recent_events"].keys() == {"e1", "e2"}
    updates = [v for _, v in sent.records["updates"]]
    assert [(u["quantity_before"], u["quantity_after"], u["version"]) for u in updates] == \
        [(0, 10, 1), (10, 7, 2)]
    assert all(k == b"A-1" for k, _ in sent.records["updates"])


async def test_duplicate_stale_and_noop_emit_nothing(sent: Sent) -> None:
    async with pd.process_deltas.test_context() as agent:
        outcomes = []
        for kw in ({"sequence": 5}, {"sequence": 5},  # duplicate event_id
                   {"event_id": "old", "sequence": 3, "quantity": 99},  # stale snapshot
                   {"event_id": "same", "sequence": 6}):  # same quantity: no-op
            key, value = encoded(**kw)
            await agent.put(value=value, key=key)
            outcomes.append(pd.stock[b"acme|A-1"]["version"])
    assert len(sent.records["updates"]) == 1
    assert pd.stock[b"acme|A-1"]["quantity"] == 10
    assert outcomes == [5, 5, 5, 6]  # the no-op still advances the version


async def test_malformed_records_are_dead_lettered_and_stream_goes_on(sent: Sent) -> None:
    good_key, good = encoded()
    bad_key, bad_sku = encoded(event_id="e9", sku="bad|sku")
    async with pd.process_deltas.test_context() as agent:
        await agent.put(value=b"\x00garbage", key=b"acme|X")
        await agent.put(value=bad_sku, key=bad_key)
        await agent.put(value=good, key=good_key)
    reasons = [v["reason"] for _, v in sent.records["dead"]]
    assert reasons == ["decode_error", "bad_sku"]
    assert sent.records["dead"][0][1]["original"] == b"\x00garbage"
    assert sent.records["dead"][1][1]["event_id"] == "e9"
    assert pd.stock[b"acme|A-1"]["quantity"] == 10


async def test_gap_requests_resync(sent: Sent) -> None:
    async with pd.process_deltas.test_context() as agent:
        for kw in ({}, {"event_id": "e5", "sequence": 5, "kind": "ADJUSTMENT", "quantity": 2}):
            key, value = encoded(**kw)
            await agent.put(value=value, key=key)
    (_, resync), = sent.records["resync"]
    assert (resync["expected_sequence"], resync["received_sequence"]) == (2, 5)
    assert pd.stock[b"acme|A-1"]["suspect"] is True


class MemorySink:
    def __init__(self) -> None:
        self.batches: list[list[dict[str, Any]]] = []

    async def start(self) -> None: ...

    async def write_batch(self, updates: list[dict[str, Any]]) -> int:
        self.batches.append(list(updates))
        return len(updates)

    async def close(self) -> None: ...


def stock_update(supplier: str, qty_after: int, version: int, before: int = 0) -> dict[str, Any]:
    return {"platform_sku": "P-1", "supplier_id": supplier, "sku": f"{supplier}-sku",
            "quantity_before": before, "quantity_after": qty_after, "version": version,
            "status": "ACTIVE", "cause": "SNAPSHOT", "event_id": f"{supplier}-{version}",
            "observed_at": NOW, "received_at": NOW, "produced_at": NOW, "price": None,
            "currency": None, "lead_time_days": None, "clamped": False, "suspect": False}


async def test_aggregate_writes_sink_before_emitting_changes(sent: Sent) -> None:
    sink = MemorySink()
    order: list[str] = []
    real_write = sink.write_batch

    async def write(updates: list[dict[str, Any]]) -> int:
        assert "changes" not in sent.records or len(sent.records["changes"]) == len(order)
        order.append("sink")
        return await real_write(updates)

    sink.write_batch = write  # type: ignore[method-assign]
    aggregate_mod.set_sink(sink)
    try:
        async with aggregate_mod.aggregate.test_context() as agent:
            await agent.put(value=stock_update("acme", 5, 1), key=b"P-1")
            await agent.put(value=stock_update("bolt", 3, 7), key=b"P-1")
            await agent.put(value=stock_update("acme", 9, 0), key=b"P-1")  # older: ignored
    finally:
        aggregate_mod.set_sink(None)
    written = [u for b in sink.batches for u in b]
    assert [(u["supplier_id"], u["version"]) for u in written] == [("acme", 1), ("bolt", 7)]
    changes = [v for _, v in sent.records["changes"]]
    assert [(c["supplier_id"], c["total_available"]) for c in changes] == \
        [("acme", 5), ("bolt", 8)]
    avail = aggregate_mod.availability[b"P-1"]
    assert avail["total"] == 8 and avail["best_supplier"] == "acme"
