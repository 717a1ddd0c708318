"""Agent process_deltas: inventory.deltas -> validate, dedup, apply -> inventory.stock-updates.

One batch of raw records per event (topologies/runtime). The records are grouped by key
(`supplier_id|sku`, so per key in log order), each key's state is read once, the pure step
`pipeline.step.apply_deltas` runs over its records, and the state is written once. Outputs
(StockUpdates repartitioned by platform SKU, resync requests, dead letters) are encoded and
sent once each; counters are incremented once per batch.

validate, dedup and apply are one agent: the state they share is keyed like
inventory.deltas, so a Kafka hop between them would add cost and nothing else.
"""

from __future__ import annotations

import time
from typing import Any

from pipeline import metrics
from pipeline.app import app, avro_table, settings
from pipeline.catalog import Catalog
from pipeline.log import get_logger
from pipeline.step import INVALID, RawRecord, StepContext, StepOutputs, apply_deltas
from schemas.codec import codec_for
from topologies.runtime import InputBatches
from topologies.topics import DEADLETTER, DELTAS, RESYNC, STOCK_UPDATES

log = get_logger(__name__)

# Current state per (supplier, sku) with its dedup memory; RocksDB-backed with a changelog.
stock = avro_table("stock", "StockState", help="state per supplier_id|sku")
deltas = InputBatches(app, topic=settings.topic(DELTAS.name), table=stock)

STOCK_UPDATES_TOPIC = settings.topic(STOCK_UPDATES.name)
DEADLETTER_TOPIC = settings.topic(DEADLETTER.name)
RESYNC_TOPIC = settings.topic(RESYNC.name)

catalog = Catalog.from_file(settings.catalog_path) if settings.catalog_path else Catalog.empty()
context = StepContext(platform_sku=catalog.platform_sku,
                      dedup_ttl_ms=settings.dedup_ttl_s * 1000,
                      wall_clock_ms=lambda: int(time.time() * 1000))
_UPDATE = codec_for("StockUpdate")
_RESYNC = codec_for("ResyncRequest")
_DEAD_LETTER = codec_for("DeadLetter")


def handle_batch(records: list[Any], send: Any) -> StepOutputs:
    """Run the step over one batch of confluent-kafka messages and send what it emits."""
    groups: dict[tuple[int, bytes | None], list[RawRecord]] = {}
    for msg in records:
        key = msg.key()
        partition = msg.partition()
        rec = RawRecord(key, msg.value(), msg.timestamp()[1], msg.topic(), partition,
                        msg.offset())
        group = groups.get((partition, key))
        if group is None:
            groups[(partition, key)] = [rec]
        else:
            group.append(rec)
    out = StepOutputs()
    get_in, set_in = stock.get_in, stock.set_in
    for (partition, key), recs in groups.items():
        if key is None:
            apply_deltas(None, recs, context, out)  # no key, no state: validation rejects it
            continue
        state = get_in(partition, key)
        new = apply_deltas(state, recs, context, out)
        if new is not state:
            set_in(partition, key, new)
    encode_update = _UPDATE.encode
    for update in out.updates:
        platform_sku = update["platform_sku"].encode()
        send(STOCK_UPDATES_TOPIC, platform_sku, encode_update(update), None)
    for key, resync in out.resyncs:
        send(RESYNC_TOPIC, key, _RESYNC.encode(resync), None)
    for key, dl in out.dead_letters:
        send(DEADLETTER_TOPIC, key, _DEAD_LETTER.encode(dl), None)
    _count(out)
    return out


def _count(out: StepOutputs) -> None:
    outcomes = out.outcomes
    invalid = outcomes.get(INVALID, 0)
    valid = sum(outcomes.values()) - invalid
    if valid:
        metrics.EVENTS.labels("validate", "valid").inc(valid)
    if invalid:
        metrics.EVENTS.labels("validate", "invalid").inc(invalid)
        for reason, n in out.invalid_reasons.items():
            metrics.DEAD_LETTERS.labels(reason).inc(n)
            metrics.DROPPED.labels(f"invalid:{reason}").inc(n)
        for _key, dl in out.dead_letters:  # rare, and each one matters to on-call
            log.warning("delta.dead_lettered", reason=dl["reason"], detail=dl["message"],
                        topic=dl["source_topic"], partition=dl["source_partition"],
                        offset=dl["source_offset"], supplier=dl["supplier_id"],
                        event_id=dl["event_id"])
    for outcome, n in outcomes.items():
        if outcome == INVALID:
            continue
        metrics.EVENTS.labels("apply", outcome).inc(n)
        if outcome in ("duplicate", "stale"):
            metrics.DROPPED.labels(outcome).inc(n)
    now_s = time.time()
    for supplier in out.suppliers_seen:
        metrics.SUPPLIER_LAST_SEEN.labels(supplier).set(now_s)
    for supplier, n in out.gaps.items():
        metrics.GAPS.labels(supplier).inc(n)
    for supplier, n in out.clamped.items():
        metrics.CLAMPED.labels(supplier).inc(n)


@app.agent(deltas, name="process_deltas")
async def process_deltas(batches: Any) -> Any:
    """validate -> dedup -> apply, a batch at a time, per (supplier, sku) in order."""
    async for batch in batches:
        async with batch:
            batch.result = handle_batch(batch.records, batch.send)
        yield batch.result
