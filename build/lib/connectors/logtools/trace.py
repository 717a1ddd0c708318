"""Follow one event through stockflow: its place in the log, the decision, where it went.

The worker's decisions are a pure function of the log: per Kafka key, in partition order, with
the record's Kafka timestamp as the clock (pipeline/step.py). So `trace` finds the event in
inventory.deltas, replays the events of its key up to it through the same step the agent
runs, and reports the outcome (applied, noop, duplicate, stale or
dead-lettered with its reason). It then checks the evidence the outcome leaves: the record on
inventory.deadletter, the Cassandra rows (availability_by_sku version, change_history row of
that version) and the Redis version of that supplier, and whether the worker's group has
committed past the event at all.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from connectors.logtools.log_reader import LogRecord
from pipeline.errors import SchemaError, StockflowError
from pipeline.kafka import nonempty_partitions, read_to_end
from pipeline.log import get_logger
from pipeline.settings import Settings
from pipeline.step import RawRecord, StepContext, StepOutputs, apply_deltas, event_time_ms
from pipeline.topics import DEADLETTER, DELTAS
from pipeline.validate import KEY_SEPARATOR, validate_delta

log = get_logger(__name__)

PlatformSkuOf = Callable[[str, str], str]


class TraceError(StockflowError):
    """The log, Cassandra or Redis could not be read while tracing an event."""


@dataclass
class Occurrence:
    """One appearance of the event_id in the log and what the worker made of it."""

    topic: str
    partition: int
    offset: int
    timestamp_ms: int
    key: str | None
    outcome: str = "unknown"  # applied, noop, duplicate, stale, invalid:<reason>
    detail: str = ""
    delta: dict[str, Any] | None = None
    platform_sku: str | None = None
    processed: bool | None = None  # the worker's group committed past this offset
    dead_letter: dict[str, Any] | None = None
    cassandra: dict[str, Any] = field(default_factory=dict)
    redis: dict[str, Any] = field(default_factory=dict)


@dataclass
class TraceReport:
    """Everything trace found about one event_id."""

    event_id: str
    occurrences: list[Occurrence] = field(default_factory=list)
    scanned_partitions: list[int] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def key_partition(key: bytes, partitions: int) -> int:
    """The partition of a key under the Java/aiokafka default partitioner (murmur2)."""
    from aiokafka.partitioner import murmur2

    return (murmur2(key) & 0x7FFFFFFF) % partitions


# --------------------------------------------------------------------------- replay (pure)

def replay_key(records: Iterable[LogRecord], *, targets: set[int], dedup_ttl_ms: int,
               platform_sku_of: PlatformSkuOf, codec: Any, topic: str = DELTAS.name,
               ) -> dict[int, tuple[str, str, dict[str, Any] | None, str | None]]:
    """Replay one key's records in partition order through the worker's own step
    (pipeline.step.apply_deltas), one record at a time.

    Returns, for each target offset, (outcome, detail, validated delta or None, platform_sku).
    """
    ctx = StepContext(platform_sku=platform_sku_of, dedup_ttl_ms=dedup_ttl_ms,
                      wall_clock_ms=lambda: int(time.time() * 1000))
    state: dict[str, Any] | None = None
    accepted_at: dict[str, int] = {}  # event_id -> offset it was accepted at
    out: dict[int, tuple[str, str, dict[str, Any] | None, str | None]] = {}
    for rec in records:
        step = StepOutputs(trail=[])
        before = state
        state = apply_deltas(state, [RawRecord(rec.key, rec.value, rec.timestamp_ms, topic,
                                               rec.partition, rec.offset)], ctx, step)
        _offset, outcome, update = step.trail[-1] if step.trail else (rec.offset, "unknown", None)
        delta: dict[str, Any] | None = None
        if not outcome.startswith("invalid:"):
            # The step accepted the record as a delta: decode it again for the report.
            delta = validate_delta(codec.decode(rec.value or b""), key=rec.key,
                                   now_ms=event_time_ms(rec.timestamp_ms, ctx.wall_clock_ms))
            if outcome in ("applied", "noop"):
                accepted_at.setdefault(delta["event_id"], rec.offset)
        if rec.offset not in targets:
            continue
        if outcome.startswith("invalid:"):
            detail = step.dead_letters[-1][1]["message"] if step.dead_letters else ""
            out[rec.offset] = (outcome, detail, None, None)
            continue
        assert delta is not None
        if outcome == "duplicate":
            first = accepted_at.get(delta["event_id"])
            detail = f"event_id already accepted at offset {first}" if first is not None \
                else "event_id already accepted"
        elif outcome == "stale":
            detail = f"sequence {delta['sequence']} <= version {before['version']}" \
                if before else "stale"
        elif outcome == "applied":
            upd = update or {}
            detail = (f"quantity {upd.get('quantity_before')} -> "
                      f"{upd.get('quantity_after')} at version {delta['sequence']}")
        else:
            detail = "state advanced to version " \
                     f"{delta['sequence']}; the published quantity did not change"
        if step.gaps:
            detail += "; sequence gap: resync requested"
        if step.clamped:
            detail += "; clamped at 0"
        out[rec.offset] = (outcome, detail, delta,
                           platform_sku_of(delta["supplier_id"], delta["sku"]))
    return out


# --------------------------------------------------------------------------- Kafka scans

def _consumer(settings: Settings) -> Any:
    from confluent_kafka import Consumer

    return Consumer({**settings.confluent_config(),
                     "group.id": f"stockflow-trace-{time.monotonic_ns()}",
                     "enable.auto.commit": False, "isolation.level": "read_committed",
                     "enable.partition.eof": True, "auto.offset.reset": "earliest"})


def scan(settings: Settings, topic: str, partitions: Iterable[int] | None = None, *,
         timeout_s: float = 120.0) -> Iterator[LogRecord]:
    """Every committed record of `topic` (or of some partitions), from the start to the end."""
    from confluent_kafka import KafkaException

    consumer = _consumer(settings)
    try:
        assignment = nonempty_partitions(consumer, topic, timeout_s=10)
        if assignment is None:
            raise TraceError(f"topic {topic} not found")
        if partitions is not None:
            wanted = set(partitions)
            assignment = [tp for tp in assignment if tp.partition in wanted]
        for msg in read_to_end(consumer, assignment, batch=500, timeout_s=timeout_s,
                               error=TraceError):
            _kind, ts = msg.timestamp()
            yield LogRecord(msg.partition(), msg.offset(), ts, msg.key(), msg.value() or b"")
    except KafkaException as exc:
        raise TraceError(f"cannot read {topic}: {exc}") from exc
    finally:
        consumer.close()


def committed_offsets(settings: Settings, topic: str, partitions: Iterable[int]) -> dict[int, int]:
    """The worker group's committed offset per partition (-1: nothing committed)."""
    from confluent_kafka import Consumer, KafkaException, TopicPartition

    consumer = Consumer({**settings.confluent_config(), "group.id": settings.app_id,
                         "enable.auto.commit": False})
    try:
        tps = consumer.committed([TopicPartition(topic, p) for p in partitions], timeout=10)
        return {tp.partition: tp.offset for tp in tps}
    except KafkaException as exc:
        raise TraceError(f"cannot read the committed offsets of {settings.app_id}: {exc}") \
            from exc
    finally:
        consumer.close()


# --------------------------------------------------------------------------- the trace

def _mentions(value: bytes | None, event_id: bytes) -> bool:
    # Avro stores strings as raw UTF-8: a byte search skips decoding nearly every record.
    # A tombstone (null value) carries no event.
    return value is not None and event_id in value


def find_occurrences(settings: Settings, event_id: str, *, supplier: str | None,
                     sku: str | None, codec: Any,
                     report: TraceReport) -> dict[tuple[int, bytes | None], list[LogRecord]]:
    """Records of inventory.deltas that carry event_id, grouped by (partition, key)."""
    topic = settings.topic(DELTAS.name)
    partitions: list[int] | None = None
    if supplier and sku:
        partitions = [key_partition(f"{supplier}{KEY_SEPARATOR}{sku}".encode(),
                                    settings.partitions)]
    needle = event_id.encode()
    found: dict[tuple[int, bytes | None], list[LogRecord]] = {}
    seen_parts: set[int] = set()
    for rec in scan(settings, topic, partitions):
        seen_parts.add(rec.partition)
        if not _mentions(rec.value, needle):
            continue
        try:
            record = codec.decode(rec.value)
        except SchemaError:
            continue
        if not isinstance(record, dict) or record.get("event_id") != event_id:
            continue
        if supplier and record.get("supplier_id") != supplier:
            continue
        if sku and record.get("sku") != sku:
            continue
        found.setdefault((rec.partition, rec.key), []).append(rec)
    report.scanned_partitions = sorted(partitions if partitions is not None else seen_parts)
    return found


def dead_letters_for(settings: Settings, event_id: str,
                     codec: Any) -> dict[tuple[int, int], dict[str, Any]]:
    """DeadLetter records of inventory.deltas records carrying event_id, by (partition, offset)."""
    deltas_topic = settings.topic(DELTAS.name)
    needle = event_id.encode()
    out: dict[tuple[int, int], dict[str, Any]] = {}
    for rec in scan(settings, settings.topic(DEADLETTER.name)):
        if not _mentions(rec.value, needle):
            continue
        try:
            dl = codec.decode(rec.value)
        except SchemaError:
            continue
        if dl.get("source_topic") == deltas_topic:
            out[(dl["source_partition"], dl["source_offset"])] = {
                "reason": dl["reason"], "message": dl["message"], "failed_at": dl["failed_at"],
                "deadletter_partition": rec.partition, "deadletter_offset": rec.offset}
    return out


def check_cassandra(session: Any, keyspace: str, occ: Occurrence) -> dict[str, Any]:
    """availability_by_sku and change_history evidence of an applied delta."""
    delta = occ.delta or {}
    sequence = delta["sequence"]
    row = session.execute(
        f'SELECT version, quantity, status FROM "{keyspace}".availability_by_sku '
        "WHERE platform_sku = %s AND supplier_id = %s", (occ.platform_sku, delta["supplier_id"]),
    ).one()
    hist = session.execute(
        f'SELECT event_id, quantity_after FROM "{keyspace}".change_history '
        "WHERE supplier_id = %s AND sku = %s AND version = %s",
        (delta["supplier_id"], delta["sku"], sequence),
    ).one()
    version = None if row is None else int(_col(row, "version"))
    return {
        "availability_version": version,
        "availability_quantity": None if row is None else _col(row, "quantity"),
        "written": version is not None and version >= sequence,
        "superseded": version is not None and version > sequence,
        "history_row": hist is not None and _col(hist, "event_id") == delta["event_id"],
    }


def _col(row: Any, name: str) -> Any:
    return row[name] if isinstance(row, dict) else getattr(row, name)


def check_redis(client: Any, prefix: str, occ: Occurrence) -> dict[str, Any]:
    """The Redis version of the delta's supplier in its platform SKU's hash."""
    from connectors.redis.cache import availability_key

    delta = occ.delta or {}
    raw = client.hget(availability_key(prefix, occ.platform_sku or ""),
                      f"v:{delta['supplier_id']}")
    version = int(raw) if raw is not None else None
    return {"version": version, "cached": version is not None and version >= delta["sequence"]}


def trace_event(settings: Settings, event_id: str, *, supplier: str | None = None,
                sku: str | None = None, check_sinks: bool = True) -> TraceReport:
    """Find event_id in inventory.deltas and tell what happened to each of its occurrences."""
    # The worker's catalog and dedup TTL: trace replays exactly what the worker runs.
    from pipeline.catalog import Catalog
    from schemas.codec import codec_for

    catalog = Catalog.from_file(settings.catalog_path) if settings.catalog_path \
        else Catalog.empty()

    delta_codec = codec_for("SupplierDelta")
    report = TraceReport(event_id)
    topic = settings.topic(DELTAS.name)
    found = find_occurrences(settings, event_id, supplier=supplier, sku=sku, codec=delta_codec,
                             report=report)
    if not found:
        report.notes.append(f"event_id {event_id!r} not found in {topic} "
                            f"(partitions scanned: {report.scanned_partitions})")
        return report

    committed = committed_offsets(settings, topic, sorted({p for p, _ in found}))
    for (partition, key), hits in sorted(found.items(), key=lambda kv: kv[0][0]):
        targets = {h.offset for h in hits}
        last = max(targets)
        history = (r for r in scan(settings, topic, [partition])
                   if r.key == key and r.offset <= last)
        outcomes = replay_key(history, targets=targets,
                              dedup_ttl_ms=settings.dedup_ttl_s * 1000,
                              platform_sku_of=catalog.platform_sku, codec=delta_codec,
                              topic=topic)
        for hit in hits:
            outcome, detail, delta, platform_sku = outcomes.get(
                hit.offset, ("unknown", "not replayed", None, None))
            report.occurrences.append(Occurrence(
                topic=topic, partition=partition, offset=hit.offset,
                timestamp_ms=hit.timestamp_ms,
                key=key.decode(errors="replace") if key is not None else None,
                outcome=outcome, detail=detail, delta=delta, platform_sku=platform_sku,
                processed=committed.get(partition, -1) > hit.offset))

    if any(o.outcome.startswith("invalid:") for o in report.occurrences):
        letters = dead_letters_for(settings, event_id, codec_for("DeadLetter"))
        for occ in report.occurrences:
            occ.dead_letter = letters.get((occ.partition, occ.offset))
    if check_sinks and any(o.outcome == "applied" for o in report.occurrences):
        _check_sinks(settings, report)
    return report


def _check_sinks(settings: Settings, report: TraceReport) -> None:
    import redis

    from connectors.cassandra.cluster import ClusterConfig, connect

    applied = [o for o in report.occurrences if o.outcome == "applied"]
    try:
        cluster, session = connect(ClusterConfig.from_settings(settings))
    except StockflowError as exc:
        report.notes.append(f"Cassandra not checked: {exc}")
    else:
        try:
            for occ in applied:
                occ.cassandra = check_cassandra(session, settings.cassandra_keyspace, occ)
        except Exception as exc:  # the driver's errors have no common base worth naming
            report.notes.append(f"Cassandra not checked: {type(exc).__name__}: {exc}")
        finally:
            cluster.shutdown()
    client = redis.Redis.from_url(settings.redis_url.get_secret_value(), socket_timeout=5)
    try:
        for occ in applied:
            occ.redis = check_redis(client, settings.redis_cache_key_prefix, occ)
    except redis.RedisError as exc:
        report.notes.append(f"Redis not checked: {exc}")
    finally:
        client.close()


def summary(occ: Occurrence) -> list[str]:
    """Human lines about one occurrence (the CLI prints them)."""
    where = f"{occ.topic}[{occ.partition}]@{occ.offset}"
    lines = [f"{where} key={occ.key} outcome={occ.outcome}: {occ.detail}"]
    if occ.processed is False:
        lines.append("  not yet processed: the worker has not committed past this offset")
    if occ.dead_letter is not None:
        lines.append(f"  dead-lettered: reason={occ.dead_letter['reason']} "
                     f"({occ.dead_letter['message']})")
    elif occ.outcome.startswith("invalid:") and occ.processed:
        lines.append("  no dead-letter record found for it")
    if occ.cassandra:
        c = occ.cassandra
        state = "written" if c["written"] else "NOT written"
        if c["superseded"]:
            state += f" (since superseded by version {c['availability_version']})"
        lines.append(f"  Cassandra: {state}; availability_by_sku version="
                     f"{c['availability_version']}, change_history row="
                     f"{'yes' if c['history_row'] else 'no'}")
    if occ.redis:
        r = occ.redis
        lines.append(f"  Redis: {'cached' if r['cached'] else 'NOT cached'} "
                     f"(version {r['version']})")
    return lines
