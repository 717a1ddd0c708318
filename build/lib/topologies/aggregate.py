"""Agent aggregate: inventory.stock-updates -> availability table -> Cassandra -> inventory.changes.

One batch per event (topologies/runtime). The StockUpdates are grouped by platform SKU, each
availability is read once, folded by the pure step `pipeline.step.fold_updates` and written
once; the updates that changed something are written to Cassandra in one sink batch; only
after Cassandra acknowledged it are their changes written to Redis (`cache_writer` inline,
the default) and their InventoryChange records sent: the cache is never ahead of the
database. Under exactly-once the changelog writes, the change records and the input offsets
commit in one Kafka transaction; a batch processed again after a crash writes the same
Cassandra cells (USING TIMESTAMP = version) and the same Redis entries (version-guarded).

The repartition by platform SKU (inventory.stock-updates) stays: the suppliers of one
platform SKU arrive on different partitions of inventory.deltas, and one writer per platform
SKU -- this agent, on the partition that owns the SKU -- is what keeps its total exact.
"""

from __future__ import annotations

import time
from collections.abc import Container
from typing import Any, Protocol

from pipeline import metrics, tracing
from pipeline.errors import SchemaError
from pipeline.log import get_logger
from pipeline.step import StepOutputs, fold_updates
from pipeline.topics import CHANGES, STOCK_UPDATES
from schemas.codec import codec_for
from topologies.app import app, avro_table, settings
from topologies.refresh_cache import ChangeCache, get_cache, write_changes
from topologies.runtime import InputBatches

log = get_logger(__name__)

availability = avro_table("availability", "Availability",
                          help="availability across suppliers per platform_sku")
stock_updates = InputBatches(app, topic=settings.topic(STOCK_UPDATES.name), table=availability)
CHANGES_TOPIC = settings.topic(CHANGES.name)
CACHE_INLINE = settings.cache_writer == "inline"
_UPDATE = codec_for("StockUpdate")
_CHANGE = codec_for("InventoryChange")


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
            from connectors.cassandra.sink import CassandraSink

            sink: StockSink = CassandraSink.from_settings(settings)
        else:
            sink = _NoSink()
        await sink.start()
        _sink = sink
    return _sink


def fold_batch(records: list[Any], now_ms: int, origins: dict[int, Any] | None = None,
               recorded: Container[int] = (),
               ) -> tuple[list[dict[str, Any]], StepOutputs]:
    """Fold a batch into the availability table; returns the updates that changed something
    (to write to Cassandra) and the outputs with their changes, in the same order.

    `origins` (tracing on) gets, by id(update), the message of each update whose message's id
    is in `recorded` (the records being traced)."""
    groups: dict[tuple[int, bytes], list[dict[str, Any]]] = {}
    decode = _UPDATE.decode_trusted  # written by process_deltas, in this schema
    for msg in records:
        try:
            update = decode(msg.value() or b"")
        except SchemaError as exc:
            # Written by stockflow after validation: a bug upstream, counted and logged.
            metrics.DROPPED.labels("aggregate:undecodable").inc()
            log.error("aggregate.undecodable_update", error=str(exc), topic=msg.topic(),
                      partition=msg.partition(), offset=msg.offset())
            continue
        if recorded and origins is not None and id(msg) in recorded:
            origins[id(update)] = msg
        group_key = (msg.partition(), update["platform_sku"].encode())
        group = groups.get(group_key)
        if group is None:
            groups[group_key] = [update]
        else:
            group.append(update)
    out = StepOutputs()
    written: list[dict[str, Any]] = []
    get_in, set_in = availability.get_in, availability.set_in
    for (partition, key), updates in groups.items():
        old = get_in(partition, key)
        for update in updates:
            before = len(out.changes)
            new = fold_updates(old, (update,), now_ms, out)
            if new is not old:
                # Also when nothing published changed: keep the newer version and lead time.
                set_in(partition, key, new)
                old = new
            if len(out.changes) > before:
                written.append(update)
    return written, out


@app.agent(stock_updates, name="aggregate")
async def aggregate(batches: Any) -> Any:
    """Fold a batch into availability, write it to Cassandra, then emit its changes."""
    sink = await _get_sink()
    async for batch in batches:
        async with batch:
            if tracing.ENABLED:
                trace = tracing.batch_trace("aggregate", batch.topic, batch.records,
                                            batch.now_ms)
                batch.result = await _aggregate_traced(sink, batch, trace)
            else:
                written, out = fold_batch(batch.records, batch.now_ms)
                if out.unchanged_updates:
                    metrics.EVENTS.labels("aggregate", "unchanged").inc(out.unchanged_updates)
                if written:
                    await _write_then_emit(sink, written, out.changes, batch.send)
                batch.result = len(out.changes)
        yield batch.result


async def _aggregate_traced(sink: StockSink, batch: Any, trace: tracing.BatchTrace) -> int:
    """The agent's work on one batch with tracing on: each record's span ends with its
    Cassandra write (or with `unchanged`), and its InventoryChange carries that write's context."""
    origins: dict[int, Any] = {}
    written, out = fold_batch(batch.records, batch.now_ms, origins, trace.wanted_msgs)
    if out.unchanged_updates:
        metrics.EVENTS.labels("aggregate", "unchanged").inc(out.unchanged_updates)
    if written:
        await _write_then_emit(sink, written, out.changes, batch.send, trace, origins)
    changed = {id(update) for update in written}
    for key, msg in origins.items():  # the recorded records only
        if key not in changed:
            trace.record((msg.partition(), msg.offset()),
                         attributes={"stockflow.outcome": "unchanged"})
    trace.finish()
    return len(out.changes)


def _update_attributes(update: dict[str, Any]) -> dict[str, Any]:
    return {"stockflow.event_id": update["event_id"], "stockflow.supplier_id":
            update["supplier_id"], "stockflow.sku": update["sku"],
            "stockflow.platform_sku": update["platform_sku"], "stockflow.version":
            update["version"]}


async def _write_then_emit(sink: StockSink, updates: list[dict[str, Any]],
                           changes: list[dict[str, Any]], send: Any,
                           trace: tracing.BatchTrace | None = None,
                           origins: dict[int, Any] | None = None) -> None:
    """Write a batch to the sink and, once it is acknowledged, the cache (inline) and send
    its change records."""
    started_ns = time.time_ns()
    t0 = time.perf_counter()
    await sink.write_batch(updates)
    metrics.SINK_LATENCY.labels("cassandra").observe(time.perf_counter() - t0)
    metrics.SINK_BATCH_SIZE.labels("cassandra").observe(len(updates))
    written_s = time.time()
    metrics.observe_many(metrics.FRESHNESS.labels("cassandra"),
                         [max(0.0, written_s - update["produced_at"] / 1000)
                          for update in updates])
    cache: ChangeCache | None = get_cache() if CACHE_INLINE else None
    redis_started_ns = time.time_ns()
    if cache is not None:
        await write_changes(cache, changes)
    encode = _CHANGE.encode
    if trace is not None and origins is not None:
        written_ns = redis_started_ns
        trace.child("cassandra.write", started_ns, written_ns, **{"db.system": "cassandra",
                    "stockflow.rows": len(updates)})
        steps = [("cassandra.write", started_ns, written_ns,
                  {"db.system": "cassandra", "stockflow.rows": len(updates)})]
        if cache is not None:
            cached_ns = time.time_ns()
            trace.child("redis.write", redis_started_ns, cached_ns,
                        **{"db.system": "redis", "stockflow.changes": len(changes)})
            steps.append(("redis.write", redis_started_ns, cached_ns,
                          {"db.system": "redis", "stockflow.changes": len(changes)}))
            written_ns = cached_ns
        # updates and changes are parallel: each written update made exactly one change.
        for update, change in zip(updates, changes, strict=True):
            msg = origins.get(id(update))  # only the recorded records have one
            if msg is None:
                send(CHANGES_TOPIC, change["platform_sku"].encode(), encode(change), None)
                continue
            context = trace.record(
                (msg.partition(), msg.offset()),
                attributes={"stockflow.outcome": "changed", **_update_attributes(update)},
                steps=steps, end_ns=written_ns)
            send(CHANGES_TOPIC, change["platform_sku"].encode(), encode(change), None,
                 tracing.headers_of(context))
    else:
        for change in changes:
            send(CHANGES_TOPIC, change["platform_sku"].encode(), encode(change), None)
    metrics.EVENTS.labels("aggregate", "changed").inc(len(changes))
    metrics.CHANGES.inc(len(changes))
