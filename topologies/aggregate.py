"""Agent aggregate: inventory.stock-updates -> availability table -> Cassandra -> inventory.changes.

Batches of stock updates (repartitioned by platform SKU) are folded into the availability
table, written to Cassandra, and only after Cassandra acknowledged the batch are its
InventoryChange records sent: the cache, fed from inventory.changes, is never ahead of the
database. Under exactly-once the changelog writes, the change records and the input offsets
commit in one Kafka transaction; a crash before the commit replays the batch, and the
Cassandra writes are idempotent (USING TIMESTAMP = version), so both converge.
"""

from __future__ import annotations

import time
from typing import Any, Protocol

from pipeline import metrics
from pipeline.aggregate import fold_update
from pipeline.app import app, avro_table, settings
from pipeline.log import get_logger
from pipeline.transactions import commit_gate
from schemas.codec import faust_codec_name
from topologies.batching import take_events
from topologies.process_deltas import stock_updates_topic
from topologies.topics import CHANGES

log = get_logger(__name__)

changes_topic = app.topic(settings.topic(CHANGES.name), key_serializer="raw",
                          value_serializer=faust_codec_name("InventoryChange"),
                          partitions=settings.partitions)

availability = avro_table("availability", "Availability",
                          help="availability across suppliers per platform_sku")


class StockSink(Protocol):
    """What the agent needs of a sink: write a batch, return once it is durable."""

    async def start(self) -> None: ...

    async def write_batch(self, updates: list[dict[str, Any]]) -> int: ...

    async def close(self) -> None: ...


class _NoSink:
    async def start(self) -> None:
        return None

    async def write_batch(self, updates: list[dict[str, Any]]) -> int:
        return 0

    async def close(self) -> None:
        return None


_sink: StockSink | None = None


def set_sink(sink: StockSink | None) -> None:
    """Choose the sink (tests pass an in-memory one); None means the one from settings."""
    global _sink
    _sink = sink


async def _get_sink() -> StockSink:
    global _sink
    if _sink is None:
        if settings.sink_enabled:
            from connectors.cassandra_sink import CassandraSink

            sink: StockSink = CassandraSink.from_settings(settings)
        else:
            sink = _NoSink()
        await sink.start()
        _sink = sink
    return _sink


@app.agent(stock_updates_topic)
async def aggregate(stream: Any) -> Any:
    """Fold a batch into availability, write it to Cassandra, then emit its changes."""
    sink = await _get_sink()
    async for events in take_events(stream, settings.sink_batch_size,
                                    settings.sink_batch_within_s):
        # One unit per batch: folded, written, emitted and acked with no commit in between.
        async with commit_gate.unit():
            now = int(time.time() * 1000)
            updates: list[dict[str, Any]] = []
            changes: list[tuple[Any, dict[str, Any]]] = []
            for event in events:
                # Table writes go to the changelog partition of the *current* event; a batch
                # spans partitions, so make each event current while its key is written.
                stream._set_current_event(event)
                update = event.value
                key = update["platform_sku"].encode()
                old_avail = availability.get(key)
                new_avail, change = fold_update(old_avail, update, now_ms=now)
                if new_avail is not old_avail:
                    # Also when nothing published changed: keep the newer version and lead time.
                    availability[key] = new_avail
                if change is None:
                    metrics.EVENTS.labels("aggregate", "unchanged").inc()
                    continue
                updates.append(update)
                changes.append((event, change))
            if updates:
                await _write_then_emit(stream, sink, updates, changes)
            for event in events:
                await stream.ack(event)
        yield len(changes)


async def _write_then_emit(stream: Any, sink: StockSink, updates: list[dict[str, Any]],
                           changes: list[tuple[Any, dict[str, Any]]]) -> None:
    """Write a batch to the sink and, once it is acknowledged, send its change records."""
    t0 = time.perf_counter()
    await sink.write_batch(updates)
    metrics.SINK_LATENCY.labels("cassandra").observe(time.perf_counter() - t0)
    metrics.SINK_BATCH_SIZE.labels("cassandra").observe(len(updates))
    written_ms = time.time() * 1000
    fresh = metrics.FRESHNESS.labels("cassandra")
    for update in updates:
        fresh.observe(max(0.0, (written_ms - update["produced_at"]) / 1000))
    for event, change in changes:
        # Under exactly-once a record joins the transaction of its source event's
        # partition (pipeline/transactions.py): make that event current again.
        stream._set_current_event(event)
        await changes_topic.send(key=change["platform_sku"].encode(), value=change)
    metrics.EVENTS.labels("aggregate", "changed").inc(len(changes))
    metrics.CHANGES.inc(len(changes))
