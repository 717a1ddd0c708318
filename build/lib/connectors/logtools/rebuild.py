"""Kafka-side pieces of a full rebuild: the worker's group, its table changelogs and stores.

The worker's tables (`stock`, `availability`) are RocksDB stores restored from their changelog
topics `<app_id>-<table>-changelog`. A rebuild writes the folded state into freshly created
changelogs (one record per key, in the partition the worker reads it from), deletes the local
stores so the worker restores from those changelogs, and sets the worker group's offsets to
the log position the fold ended at. None of this may happen while a worker runs: the group
must have no members.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from connectors.logtools.fold import LogFold
from connectors.logtools.log_reader import ReplayError
from pipeline.kafka import admin_client, has_code, nonempty_partitions, produce, read_to_end
from pipeline.settings import Settings
from pipeline.topics import CHANGES, DELTAS, STOCK_UPDATES
from schemas.codec import codec_for

TABLES = {"stock": "StockState", "availability": "Availability"}


def changelog_topic(settings: Settings, table: str) -> str:
    """Faust's changelog topic of a table: `<app_id>-<table>-changelog`."""
    return f"{settings.app_id}-{table}-changelog"


def table_store_dir(settings: Settings) -> Path:
    """Where the worker keeps its RocksDB tables (the batch runtime's, not Faust's tabledir)."""
    return settings.tables_dir


def worker_group_members(settings: Settings, timeout_s: float = 30.0) -> list[str]:
    """Members of the worker's consumer group (`app_id`); empty when no worker runs."""
    from confluent_kafka import KafkaError

    admin = admin_client(settings)
    futures = admin.describe_consumer_groups([settings.app_id], request_timeout=timeout_s)
    try:
        description = futures[settings.app_id].result()
    except Exception as exc:
        if has_code(exc, KafkaError.GROUP_ID_NOT_FOUND):
            return []
        raise ReplayError(f"cannot describe consumer group {settings.app_id}: {exc}") from exc
    return [f"{m.client_id}@{m.host}" for m in description.members]


def require_no_worker(settings: Settings) -> None:
    """Refuse while a worker is a member of the group: its tables would fight the rebuild."""
    members = worker_group_members(settings)
    if members:
        raise ReplayError(
            f"consumer group {settings.app_id!r} has {len(members)} active member(s) "
            f"({', '.join(members[:5])}): stop every stockflow worker of app_id "
            f"{settings.app_id!r} first, then rerun (a stopped worker with static membership "
            f"stays listed until its session times out, {settings.session_timeout_s:.0f} s)")


def read_changelog(settings: Settings, topic: str, record: str,
                   timeout_s: float = 60.0) -> dict[bytes, dict[str, Any]]:
    """The latest value per key of a table changelog (tombstones remove the key)."""
    from confluent_kafka import Consumer

    codec = codec_for(record)
    consumer = Consumer({**settings.confluent_config(), "group.id": f"{settings.app_id}-verify",
                         "enable.auto.commit": False, "enable.partition.eof": True,
                         "isolation.level": "read_committed"})
    out: dict[bytes, dict[str, Any]] = {}
    try:
        assignment = nonempty_partitions(consumer, topic, timeout_s)
        for msg in read_to_end(consumer, assignment or [], batch=5000, timeout_s=timeout_s,
                               error=ReplayError):
            key, value = msg.key() or b"", msg.value()
            if value is None:
                out.pop(key, None)
            else:
                out[key] = codec.decode(value)
    finally:
        consumer.close()
    return out


def recreate_changelogs(settings: Settings, timeout_s: float = 60.0) -> list[str]:
    """Delete the tables' changelog topics and create them empty (compacted, same partitions)."""
    from confluent_kafka import KafkaError
    from confluent_kafka.admin import NewTopic

    admin = admin_client(settings)
    names = [changelog_topic(settings, t) for t in TABLES]
    existing = set(admin.list_topics(timeout=timeout_s).topics)
    doomed = [n for n in names if n in existing]
    if doomed:
        for name, fut in admin.delete_topics(doomed, operation_timeout=timeout_s).items():
            try:
                fut.result()
            except Exception as exc:
                if not has_code(exc, KafkaError.UNKNOWN_TOPIC_OR_PART, KafkaError._UNKNOWN_TOPIC):
                    raise ReplayError(f"cannot delete {name}: {exc}") from exc
    deadline = time.monotonic() + timeout_s
    pending = list(names)
    while pending:
        # Deletion is asynchronous: a create right after it fails with "marked for deletion".
        new = [NewTopic(n, num_partitions=settings.partitions,
                        replication_factor=settings.kafka_replication_factor,
                        config={"cleanup.policy": "compact"}) for n in pending]
        errors = []
        for name, fut in admin.create_topics(new, operation_timeout=timeout_s).items():
            try:
                fut.result()
            except Exception as exc:
                if has_code(exc, KafkaError.TOPIC_ALREADY_EXISTS) and name not in doomed:
                    continue
                errors.append((name, exc))
        if errors and time.monotonic() > deadline:
            raise ReplayError(f"cannot recreate {[n for n, _ in errors]}: {errors[0][1]}")
        pending = [n for n, _ in errors]
        if pending:
            time.sleep(0.5)
    _wait_visible(settings, names, deadline)
    return names


def _wait_visible(settings: Settings, names: list[str], deadline: float) -> None:
    """Wait until every partition of the new topics has a leader in the brokers' metadata:
    a worker started earlier would find them missing and stop."""
    admin = admin_client(settings)
    while True:
        topics = admin.list_topics(timeout=10).topics
        ready = all(
            n in topics and topics[n].error is None
            and len(topics[n].partitions) == settings.partitions
            and all(p.leader >= 0 and p.error is None for p in topics[n].partitions.values())
            for n in names)
        if ready:
            return
        if time.monotonic() > deadline:
            raise ReplayError(f"recreated changelog topics {names} are not visible yet")
        time.sleep(0.5)


def write_changelogs(settings: Settings, fold: LogFold, timeout_s: float = 120.0) -> dict[str, int]:
    """Produce the folded tables into their changelogs, each key in the worker's partition.

    `stock` is co-partitioned with inventory.deltas: a key goes to the partition it was read
    from. `availability` is keyed by platform SKU, in the partition of inventory.stock-updates
    the worker's producer picks for that key (murmur2, like the Java client and aiokafka).
    """
    from aiokafka.partitioner import DefaultPartitioner
    from confluent_kafka import Producer

    producer = Producer({**settings.confluent_config(), "acks": "all",
                         "enable.idempotence": True, "linger.ms": 20,
                         "compression.type": "lz4"})
    errors: list[Any] = []

    def on_delivery(err: Any, _msg: Any) -> None:
        if err is not None:
            errors.append(err)

    def send(topic: str, items: Iterable[tuple[bytes, bytes, int]]) -> int:
        n = 0
        for key, value, partition in items:
            produce(producer, topic, value, key, partition, on_delivery=on_delivery)
            n += 1
            if n % 10000 == 0:
                producer.poll(0)
        return n

    stock_codec, avail_codec = codec_for("StockState"), codec_for("Availability")
    counts = {
        "stock": send(changelog_topic(settings, "stock"), (
            (key, stock_codec.encode(state), fold.stock_partition[key])
            for key, state in fold.stock.items())),
    }
    partitioner = DefaultPartitioner()
    partitions = list(range(settings.partitions))
    counts["availability"] = send(changelog_topic(settings, "availability"), (
        (sku.encode(), avail_codec.encode(avail),
         partitioner(sku.encode(), partitions, partitions))
        for sku, avail in fold.availability.items()))
    if producer.flush(timeout_s) != 0 or errors:
        raise ReplayError(f"writing the changelogs failed: {errors[:3] or 'flush timed out'}")
    return counts


def set_worker_offsets(settings: Settings, deltas_end: dict[int, int],
                       timeout_s: float = 60.0) -> None:
    """Commit the worker group's positions: deltas where the fold ended, its other inputs at end.

    The folded tables already contain every stock update and change those inputs hold, so
    the worker must not fold them again.
    """
    from confluent_kafka import Consumer, ConsumerGroupTopicPartitions, TopicPartition

    admin = admin_client(settings)
    probe = Consumer({**settings.confluent_config(), "group.id": f"{settings.app_id}-replay"})
    try:
        offsets = [TopicPartition(settings.topic(DELTAS.name), p, o)
                   for p, o in sorted(deltas_end.items())]
        for spec in (STOCK_UPDATES, CHANGES):
            topic = settings.topic(spec.name)
            meta = probe.list_topics(topic, timeout=timeout_s).topics[topic]
            for p in sorted(meta.partitions):
                _lo, hi = probe.get_watermark_offsets(TopicPartition(topic, p), timeout=timeout_s)
                offsets.append(TopicPartition(topic, p, hi))
    finally:
        probe.close()
    request = ConsumerGroupTopicPartitions(settings.app_id, offsets)
    for fut in admin.alter_consumer_group_offsets([request],
                                                  request_timeout=timeout_s).values():
        try:
            result = fut.result()
        except Exception as exc:
            raise ReplayError(f"cannot set the offsets of group {settings.app_id}: {exc}") \
                from exc
        failed = [tp for tp in result.topic_partitions if tp.error is not None]
        if failed:
            raise ReplayError(f"cannot set offsets of group {settings.app_id}: {failed[0].error}")


def remove_table_store(settings: Settings) -> Path | None:
    """Delete the worker's local RocksDB tables (only the tables; other data_dir files stay)."""
    path = table_store_dir(settings)
    if path.exists():
        shutil.rmtree(path)
        return path
    return None
