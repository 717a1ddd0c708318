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
from itertools import accumulate
from typing import Any

from pipeline import metrics, tracing
from pipeline.catalog import Catalog
from pipeline.log import get_logger
from pipeline.step import INVALID, RawRecord, StepContext, StepOutputs, apply_deltas
from pipeline.topics import DEADLETTER, DELTAS, RESYNC, STOCK_UPDATES
from schemas.codec import codec_for
from topologies.app import app, avro_table, settings
from topologies.runtime import InputBatches

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


def handle_batch(records: list[Any], send: Any,
                 trace: tracing.BatchTrace | None = None) -> StepOutputs:
    """Run the step over one batch of confluent-kafka messages and send what it emits.

    With a `trace` (tracing on), each output carries the trace context of its record."""
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
    if trace is not None:
        out.trail = []  # what became of each record, for its span
    get_in, set_in = stock.get_in, stock.set_in
    for (partition, key), recs in groups.items():
        if key is None:
            apply_deltas(None, recs, context, out)  # no key, no state: validation rejects it
            continue
        state = get_in(partition, key)
        new = apply_deltas(state, recs, context, out)
        if new is not state:
            set_in(partition, key, new)
    if trace is not None:
        _send_traced(trace, groups, out, send)
        _count(out)
        return out
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


def _send_traced(trace: tracing.BatchTrace, groups: dict[tuple[int, bytes | None],
                                                         list[RawRecord]],
                 out: StepOutputs, send: Any) -> None:
    """The sends of `handle_batch`; a recorded record's outputs carry its span's context, and
    a dead letter's trace ends in a span named after its reason.

    Only the recorded records are visited (through the groups of their keys): at a low ratio
    nearly every record is not, and costs nothing here. Unrecorded records' outputs carry no
    header."""
    assert out.trail is not None
    headers_for: dict[int, Any] = {}  # id(output record) -> its Kafka headers
    now_ns = time.time_ns()
    wanted, headers_of = trace.wanted, tracing.headers_of
    invalid = INVALID + ":"
    if trace.wanted_keys:
        # Where each group's records sit in the trail (one entry per record, group order).
        starts = [0, *accumulate(map(len, groups.values()))]
        index_of = dict(zip(groups, range(len(groups)), strict=True))
        trail = out.trail
        for group_key in trace.wanted_keys:
            i = index_of.get(group_key)
            if i is None:
                continue
            partition = group_key[0]
            for rec, (_offset, outcome, update) in zip(groups[group_key],
                                                      trail[starts[i]:starts[i + 1]],
                                                      strict=True):
                pos = (partition, rec.offset)
                if pos not in wanted or outcome.startswith(invalid):
                    continue  # dead letters: below
                attributes: dict[str, Any] = {"stockflow.outcome": outcome}
                if update is not None:
                    attributes.update({
                        "stockflow.event_id": update["event_id"],
                        "stockflow.supplier_id": update["supplier_id"],
                        "stockflow.sku": update["sku"],
                        "stockflow.platform_sku": update["platform_sku"],
                        "stockflow.version": update["version"]})
                context = trace.record(pos, attributes=attributes, end_ns=now_ns)
                if update is not None:
                    headers_for[id(update)] = headers_of(context)
    force_dead = tracing.dead_letters_recorded()
    for _key, dl in out.dead_letters:
        pos = (dl["source_partition"], dl["source_offset"])
        if not (force_dead or pos in wanted):
            continue
        reason = dl["reason"]
        context = trace.record(pos, attributes={
            "stockflow.outcome": INVALID, "stockflow.event_id": dl["event_id"],
            "stockflow.supplier_id": dl["supplier_id"]},
            steps=[(f"dead_letter {reason}", now_ns, now_ns, {
                "stockflow.dead_letter.reason": reason,
                "stockflow.dead_letter.detail": dl["message"][:500]})],
            force=True, end_ns=now_ns)
        headers_for[id(dl)] = headers_of(context)
    headers_get = headers_for.get
    encode_update = _UPDATE.encode
    for update in out.updates:
        send(STOCK_UPDATES_TOPIC, update["platform_sku"].encode(), encode_update(update),
             None, headers_get(id(update)))
    for key, resync in out.resyncs:
        send(RESYNC_TOPIC, key, _RESYNC.encode(resync), None)
    for dl_key, dl in out.dead_letters:
        send(DEADLETTER_TOPIC, dl_key, _DEAD_LETTER.encode(dl), None, headers_get(id(dl)))
    trace.finish()


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
            trace = tracing.batch_trace("process_deltas", batch.topic, batch.records,
                                        batch.now_ms) if tracing.ENABLED else None
            batch.result = handle_batch(batch.records, batch.send, trace)
        yield batch.result
