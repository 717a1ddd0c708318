"""Agent process_deltas: inventory.deltas -> validate -> dedup -> apply -> inventory.stock-updates.

validate, dedup and apply are three pure step modules but one agent: the state they share is
keyed `supplier_id|sku`, co-partitioned with inventory.deltas, so a Kafka hop between them
would add cost and nothing else.

The dedup memory (event_id -> first seen) lives in the same `stock` table entry as the
quantity: the newest RECENT_EVENTS_MAX accepted event_ids of that (supplier, sku) within the
dedup TTL. One table write per event instead of two, and expiry happens on write, inside the
event's own partition. A duplicate older than that memory is still rejected, as stale, by
the version check: correctness never depends on the event_id memory, only the reason does.
"""

from __future__ import annotations

import time
from typing import Any

from pipeline import metrics
from pipeline.app import app, avro_table, settings
from pipeline.apply import decide
from pipeline.catalog import Catalog
from pipeline.dedup import expired
from pipeline.errors import SchemaError, ValidationError
from pipeline.log import get_logger
from pipeline.transactions import commit_gate
from pipeline.validate import DECODE_ERROR, dead_letter, validate_delta
from schemas.codec import codec_for, faust_codec_name
from topologies.topics import DEADLETTER, DELTAS, RESYNC, STOCK_UPDATES

log = get_logger(__name__)

deltas_topic = app.topic(settings.topic(DELTAS.name), key_serializer="raw",
                         value_serializer="raw", partitions=settings.partitions)
deadletter_topic = app.topic(settings.topic(DEADLETTER.name), key_serializer="raw",
                             value_serializer=faust_codec_name("DeadLetter"),
                             partitions=settings.partitions)
resync_topic = app.topic(settings.topic(RESYNC.name), key_serializer="raw",
                         value_serializer=faust_codec_name("ResyncRequest"),
                         partitions=settings.partitions)
stock_updates_topic = app.topic(settings.topic(STOCK_UPDATES.name), key_serializer="raw",
                                value_serializer=faust_codec_name("StockUpdate"),
                                partitions=settings.partitions)

# Current state per (supplier, sku) with its dedup memory; RocksDB-backed with a changelog.
stock = avro_table("stock", "StockState", help="state per supplier_id|sku")
RECENT_EVENTS_MAX = 32

catalog = Catalog.from_file(settings.catalog_path) if settings.catalog_path else Catalog.empty()
delta_codec = codec_for("SupplierDelta")
DEDUP_TTL_MS = settings.dedup_ttl_s * 1000


def _now_ms() -> int:
    return int(time.time() * 1000)


async def _dead_letter(event: Any, reason: str, message: str, now: int,
                       record: dict[str, Any] | None = None) -> None:
    msg = event.message
    dl = dead_letter(
        reason=reason, message=message, original=event.value or b"", original_key=event.key,
        source_topic=msg.topic, source_partition=msg.partition, source_offset=msg.offset,
        source_timestamp=int(msg.timestamp * 1000) if msg.timestamp else None, now_ms=now,
        supplier_id=(record or {}).get("supplier_id") if isinstance(record, dict) else None,
        event_id=(record or {}).get("event_id") if isinstance(record, dict) else None,
    )
    await deadletter_topic.send(key=event.key, value=dl)
    metrics.EVENTS.labels("validate", "invalid").inc()
    metrics.DEAD_LETTERS.labels(reason).inc()
    metrics.DROPPED.labels(f"invalid:{reason}").inc()
    log.warning("delta.dead_lettered", reason=reason, detail=message, topic=msg.topic,
                partition=msg.partition, offset=msg.offset,
                supplier=dl["supplier_id"], event_id=dl["event_id"],
                sku=record.get("sku") if isinstance(record, dict) else None)


def _remember(recent: dict[str, int], event_id: str, now: int) -> dict[str, int]:
    """The dedup memory after accepting event_id: TTL-pruned, newest RECENT_EVENTS_MAX kept."""
    kept = {e: t for e, t in recent.items() if not expired(t, now, DEDUP_TTL_MS)}
    kept[event_id] = now
    if len(kept) > RECENT_EVENTS_MAX:
        kept = dict(sorted(kept.items(), key=lambda item: item[1])[-RECENT_EVENTS_MAX:])
    return kept


def _event_time_ms(event: Any) -> int:
    """The delta's Kafka timestamp: validation and dedup judge time by it, not by the wall
    clock, so a replay of the log makes exactly the decisions the first run made."""
    ts = event.message.timestamp
    return int(ts * 1000) if ts else _now_ms()


async def handle_delta(event: Any) -> str:
    """Process one delta event; returns the outcome (for tests and metrics)."""
    now = _event_time_ms(event)
    record: dict[str, Any] | None = None
    try:
        record = delta_codec.decode(event.value or b"")
    except SchemaError as exc:
        await _dead_letter(event, DECODE_ERROR, str(exc), now)
        return f"invalid:{DECODE_ERROR}"
    try:
        delta = validate_delta(record, key=event.key, now_ms=now)
    except ValidationError as exc:
        await _dead_letter(event, exc.code, exc.message, now, record)
        return f"invalid:{exc.code}"
    metrics.EVENTS.labels("validate", "valid").inc()

    supplier, sku = delta["supplier_id"], delta["sku"]
    key = event.key if event.key is not None else f"{supplier}|{sku}".encode()
    event_id = delta["event_id"]
    produced_at = now
    state = stock.get(key)
    recent: dict[str, int] = state.get("recent_events") or {} if state else {}
    decision = decide(
        delta, state, recent.get(event_id),
        platform_sku=catalog.platform_sku(supplier, sku), now_ms=now,
        produced_at_ms=produced_at, dedup_ttl_ms=DEDUP_TTL_MS,
    )
    outcome = decision.outcome
    metrics.EVENTS.labels("apply", outcome).inc()
    if outcome in ("duplicate", "stale"):
        metrics.DROPPED.labels(outcome).inc()
        return outcome
    metrics.SUPPLIER_LAST_SEEN.labels(supplier).set(_now_ms() / 1000)
    if decision.state is not None:
        new_state = dict(decision.state)
        new_state["recent_events"] = _remember(recent, event_id, now) \
            if decision.remember_event else recent
        stock[key] = new_state
    if decision.resync is not None:
        metrics.GAPS.labels(supplier).inc()
        await resync_topic.send(key=key, value=decision.resync)
    if decision.clamped:
        metrics.CLAMPED.labels(supplier).inc()
    if decision.update is not None:
        update = decision.update
        await stock_updates_topic.send(key=update["platform_sku"].encode(), value=update)
    return outcome


@app.agent(deltas_topic)
async def process_deltas(stream: Any) -> Any:
    """validate -> dedup -> apply, one event at a time, per (supplier, sku) in order."""
    async for event in stream.events():
        # One unit per event: handled and acked with no commit in between.
        async with commit_gate.unit():
            outcome = await handle_delta(event)
            await stream.ack(event)
        yield outcome
