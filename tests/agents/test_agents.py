"""The agents, each handed one batch as one event through its Faust channel (test_context)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest

from pipeline.dedup import entries, event_hash
from schemas.codec import codec_for
from tests.agents.records import Msg
from topologies import aggregate as aggregate_mod
from topologies import process_deltas as pd
from topologies import refresh_cache as cache_mod
from topologies.app import settings
from topologies.runtime import Batch

NOW = int(time.time() * 1000)
DELTAS = settings.topic("inventory.deltas")
UPDATES = settings.topic("inventory.stock-updates")


def delta(**kw: Any) -> dict[str, Any]:
    base = {"supplier_id": "acme", "sku": "A-1", "event_id": "e1", "sequence": 1,
            "kind": "SNAPSHOT", "quantity": 10, "observed_at": NOW, "received_at": NOW}
    return {**base, **kw}


def msgs(*deltas: dict[str, Any], start: int = 0) -> list[Msg]:
    out = []
    for i, kw in enumerate(deltas):
        d = delta(**kw)
        out.append(Msg(DELTAS, f"{d['supplier_id']}|{d['sku']}".encode(),
                       codec_for("SupplierDelta").encode(d), start + i))
    return out


class Sent:
    """What an agent sent, decoded per topic."""

    CODECS: ClassVar[dict[str, str]] = {
        "inventory.stock-updates": "StockUpdate", "inventory.deadletter": "DeadLetter",
        "inventory.resync": "ResyncRequest", "inventory.changes": "InventoryChange"}

    def __init__(self) -> None:
        self.records: dict[str, list[tuple[bytes | None, Any]]] = {}

    def __call__(self, topic: str, key: bytes | None, value: bytes,
                 partition: int | None) -> None:
        logical = topic.removeprefix(settings.topic_prefix)
        self.records.setdefault(logical, []).append(
            (key, codec_for(self.CODECS[logical]).decode(value)))

    def values(self, logical: str) -> list[Any]:
        return [v for _, v in self.records.get(logical, [])]


@pytest.fixture(autouse=True)
def tables(tmp_path: Path) -> Iterator[None]:
    for table in (pd.stock, aggregate_mod.availability):
        table.tabledir = tmp_path
        for p in range(settings.partitions):
            table.open_partition(p)
    yield
    for table in (pd.stock, aggregate_mod.availability):
        table.close_all()


async def run(agent: Any, topic: str, records: list[Msg], sent: Sent) -> Any:
    """Hand one batch to the agent as one event and wait until it is done."""
    batch = Batch(topic=topic, records=records, send=sent, now_ms=NOW)
    async with agent.test_context() as ctx:
        await ctx.put(batch)
    return await batch.done


async def test_snapshot_then_adjustment_updates_table_and_emits() -> None:
    sent = Sent()
    await run(pd.process_deltas, DELTAS, msgs(
        {}, {"event_id": "e2", "sequence": 2, "kind": "ADJUSTMENT", "quantity": -3}), sent)
    state = pd.stock.get_in(0, b"acme|A-1")
    assert (state["quantity"], state["version"]) == (7, 2)
    assert [h for h, _ in entries(state["recent_ids"])] == [event_hash("e1"), event_hash("e2")]
    updates = sent.values("inventory.stock-updates")
    assert [(u["quantity_before"], u["quantity_after"], u["version"]) for u in updates] == \
        [(0, 10, 1), (10, 7, 2)]
    assert all(k == b"A-1" for k, _ in sent.records["inventory.stock-updates"])


async def test_state_written_once_per_key_per_batch_and_committed_after() -> None:
    sent = Sent()
    await run(pd.process_deltas, DELTAS, msgs(
        *({"event_id": f"e{i}", "sequence": i, "quantity": i} for i in range(1, 50))), sent)
    (partition, rows), = list(pd.stock.changed())
    assert [k for k, _ in rows] == [b"acme|A-1"]  # 49 deltas, one value to commit
    assert codec_for("StockState").decode(rows[0][1])["version"] == 49
    pd.stock.persist(partition, rows, next_offset=1)
    assert not pd.stock.has_changes()
    pd.stock.close_all()
    pd.stock.open_partition(partition)  # what a restart reads from RocksDB
    assert pd.stock.get_in(partition, b"acme|A-1")["quantity"] == 49


async def test_uncommitted_values_are_dropped_on_abort() -> None:
    sent = Sent()
    await run(pd.process_deltas, DELTAS, msgs({}), sent)
    assert pd.stock.discard_uncommitted() == 1
    assert pd.stock.get_in(0, b"acme|A-1") is None


async def test_duplicate_stale_and_noop_emit_nothing() -> None:
    sent = Sent()
    out = await run(pd.process_deltas, DELTAS, msgs(
        {"sequence": 5}, {"sequence": 5},  # duplicate event_id
        {"event_id": "old", "sequence": 3, "quantity": 99},  # stale snapshot
        {"event_id": "same", "sequence": 6}), sent)  # same quantity: no-op
    assert out.outcomes == {"applied": 1, "duplicate": 1, "stale": 1, "noop": 1}
    assert len(sent.values("inventory.stock-updates")) == 1
    assert pd.stock.get_in(0, b"acme|A-1")["quantity"] == 10


async def test_malformed_records_are_dead_lettered_and_the_batch_goes_on() -> None:
    sent = Sent()
    good = msgs({}, start=2)
    bad_sku = msgs({"event_id": "e9", "sku": "bad|sku"}, start=1)
    garbage = [Msg(DELTAS, b"acme|X", b"\x00garbage", 0)]
    await run(pd.process_deltas, DELTAS, garbage + bad_sku + good, sent)
    dead = sent.values("inventory.deadletter")
    assert [d["reason"] for d in dead] == ["decode_error", "bad_sku"]
    assert dead[0]["original"] == b"\x00garbage" and dead[0]["source_offset"] == 0
    assert dead[1]["event_id"] == "e9"
    assert pd.stock.get_in(0, b"acme|A-1")["quantity"] == 10


async def test_gap_requests_resync() -> None:
    sent = Sent()
    await run(pd.process_deltas, DELTAS, msgs(
        {}, {"event_id": "e5", "sequence": 5, "kind": "ADJUSTMENT", "quantity": 2}), sent)
    (resync,) = sent.values("inventory.resync")
    assert (resync["expected_sequence"], resync["received_sequence"]) == (2, 5)
    assert pd.stock.get_in(0, b"acme|A-1")["suspect"] is True


class MemorySink:
    def __init__(self, sent: Sent) -> None:
        self.sent = sent
        self.batches: list[list[dict[str, Any]]] = []
        self.changes_seen_at_write: list[int] = []

    async def start(self) -> None: ...

    async def write_batch(self, updates: list[dict[str, Any]]) -> int:
        self.changes_seen_at_write.append(len(self.sent.values("inventory.changes")))
        self.batches.append(list(updates))
        return len(updates)

    async def close(self) -> None: ...


def stock_update(supplier: str, qty_after: int, version: int, offset: int) -> Msg:
    u = {"platform_sku": "P-1", "supplier_id": supplier, "sku": f"{supplier}-sku",
         "quantity_before": 0, "quantity_after": qty_after, "version": version,
         "status": "ACTIVE", "cause": "SNAPSHOT", "event_id": f"{supplier}-{version}",
         "observed_at": NOW, "received_at": NOW, "produced_at": NOW, "price": None,
         "currency": None, "lead_time_days": None, "clamped": False, "suspect": False}
    return Msg(UPDATES, b"P-1", codec_for("StockUpdate").encode(u), offset)


async def test_aggregate_writes_sink_before_emitting_changes() -> None:
    sent = Sent()
    sink = MemorySink(sent)
    aggregate_mod.set_sink(sink)
    try:
        await run(aggregate_mod.aggregate, UPDATES, [
            stock_update("acme", 5, 1, 0), stock_update("bolt", 3, 7, 1),
            stock_update("acme", 9, 0, 2)], sent)  # older version: ignored
    finally:
        aggregate_mod.set_sink(None)
    assert sink.changes_seen_at_write == [0]  # one sink batch, before any change was sent
    written = [u for b in sink.batches for u in b]
    assert [(u["supplier_id"], u["version"]) for u in written] == [("acme", 1), ("bolt", 7)]
    changes = sent.values("inventory.changes")
    assert [(c["supplier_id"], c["total_available"]) for c in changes] == \
        [("acme", 5), ("bolt", 8)]
    avail = aggregate_mod.availability.get_in(0, b"P-1")
    assert avail["total"] == 8 and avail["best_supplier"] == "acme"


class MemoryCache:
    """Records each cache write with what the sink and the change topic held at that moment."""

    def __init__(self, sink: MemorySink, sent: Sent) -> None:
        self.sink, self.sent = sink, sent
        self.writes: list[tuple[int, int, list[tuple[str, int]]]] = []

    async def apply_batch(self, changes: list[dict[str, Any]]) -> int:
        self.writes.append((len(self.sink.batches), len(self.sent.values("inventory.changes")),
                            [(c["supplier_id"], c["total_available"]) for c in changes]))
        return len(changes)

    async def close(self) -> None: ...


async def test_aggregate_writes_the_cache_inline_after_cassandra_and_before_the_changes(
        monkeypatch: pytest.MonkeyPatch) -> None:
    sent = Sent()
    sink = MemorySink(sent)
    cache = MemoryCache(sink, sent)
    monkeypatch.setattr(aggregate_mod, "CACHE_INLINE", True)
    aggregate_mod.set_sink(sink)
    cache_mod.set_cache(cache)
    try:
        await run(aggregate_mod.aggregate, UPDATES, [
            stock_update("acme", 5, 1, 0), stock_update("bolt", 3, 7, 1)], sent)
        # Written by the refresh_cache agent instead: the aggregate leaves Redis alone.
        monkeypatch.setattr(aggregate_mod, "CACHE_INLINE", False)
        await run(aggregate_mod.aggregate, UPDATES, [stock_update("acme", 2, 3, 2)], sent)
    finally:
        aggregate_mod.set_sink(None)
        cache_mod.set_cache(None)
    # One cache write: after the one Cassandra batch was acknowledged, before any change
    # record was sent, with the changes that batch made.
    assert cache.writes == [(1, 0, [("acme", 5), ("bolt", 8)])]
    assert [(c["supplier_id"], c["total_available"])
            for c in sent.values("inventory.changes")] == [("acme", 5), ("bolt", 8), ("acme", 5)]
