"""The topic registry, part of the contract the worker and the connectors share: every stockflow
topic declared once, with partitions, key, value record and config."""

from __future__ import annotations

from dataclasses import dataclass, field

from pipeline.errors import StockflowError
from pipeline.kafka import admin_client, has_code
from pipeline.log import get_logger
from pipeline.settings import Settings

log = get_logger(__name__)

DAY_MS = 24 * 3600 * 1000


@dataclass(frozen=True)
class TopicSpec:
    """One topic: its logical name, key, value record and broker configuration."""

    name: str
    key: str
    value_record: str
    doc: str
    cleanup_policy: str = "delete"
    retention_ms: int | None = 7 * DAY_MS
    internal: bool = False
    extra_config: dict[str, str] = field(default_factory=dict)

    def partitions(self, settings: Settings) -> int:
        # Every topic that is joined by key with a table has the same partition count.
        return settings.partitions

    def config(self, settings: Settings) -> dict[str, str]:
        retention = settings.deltas_retention_ms if self.name == DELTAS.name else self.retention_ms
        conf = {"cleanup.policy": self.cleanup_policy, **self.extra_config}
        if retention is not None and "delete" in self.cleanup_policy:
            conf["retention.ms"] = str(retention)
        return conf


DELTAS = TopicSpec(
    "inventory.deltas", key="supplier_id|sku", value_record="SupplierDelta",
    doc="The persisted log of supplier facts; retention long enough to replay (default forever).",
    retention_ms=-1,
)
DEADLETTER = TopicSpec(
    "inventory.deadletter", key="the original key", value_record="DeadLetter",
    doc="Records stockflow rejected, with a reason code and the original bytes.",
    retention_ms=30 * DAY_MS,
)
RESYNC = TopicSpec(
    "inventory.resync", key="supplier_id|sku", value_record="ResyncRequest",
    doc="Gaps in a supplier's dense sequence: connectors answer with a SNAPSHOT.",
)
STOCK_UPDATES = TopicSpec(
    "inventory.stock-updates", key="platform_sku", value_record="StockUpdate",
    doc="Internal: effective changes per (supplier, sku), repartitioned by platform SKU.",
    internal=True,
)
CHANGES = TopicSpec(
    "inventory.changes", key="platform_sku", value_record="InventoryChange",
    doc="Public: one record per effective availability change, after Cassandra acknowledged it.",
    retention_ms=7 * DAY_MS,
)

RESERVATION_COMMANDS = TopicSpec(
    "reservations.commands", key="platform_sku", value_record="ReservationCommand",
    doc="Hold, confirm and release requests from the API, co-partitioned with "
        "inventory.stock-updates (same key, same partition count); ticks name a partition.",
)
RESERVATION_DECISIONS = TopicSpec(
    "reservations.decisions", key="platform_sku", value_record="ReservationDecision",
    doc="Public: every reservation decision and so every change of available-to-promise.",
)
ORDERS = TopicSpec(
    "reservations.orders", key="supplier_id", value_record="Order",
    doc="Public: confirmed reservations for the supplier that ships them.",
    retention_ms=30 * DAY_MS,
)

TOPICS: tuple[TopicSpec, ...] = (DELTAS, DEADLETTER, RESYNC, STOCK_UPDATES, CHANGES,
                                 RESERVATION_COMMANDS, RESERVATION_DECISIONS, ORDERS)


def replication(settings: Settings, brokers: int) -> tuple[int, dict[str, str]]:
    """The replication factor and min.insync.replicas config a new topic gets on a cluster of
    `brokers` live brokers: the settings, capped at what the cluster allows (a single-broker
    development stack still works with production settings)."""
    factor = max(1, min(settings.kafka_replication_factor, brokers))
    if factor < settings.kafka_replication_factor:
        log.warning("topics.replication_capped", wanted=settings.kafka_replication_factor,
                    brokers=brokers)
    config: dict[str, str] = {}
    if settings.kafka_min_insync_replicas is not None:
        config["min.insync.replicas"] = str(min(settings.kafka_min_insync_replicas, factor))
    return factor, config


def create_topics(settings: Settings, specs: tuple[TopicSpec, ...] = TOPICS,
                  timeout: float = 30.0) -> list[tuple[str, str]]:
    """Create missing topics and bring existing ones to their declared config. Idempotent.

    Returns (physical topic name, action) pairs; action is "created", "updated" or "ok".
    Partitions are never changed on an existing topic: that would move keys between
    partitions and break the per (supplier, sku) order; a mismatch is reported instead.
    """
    from confluent_kafka import KafkaError
    from confluent_kafka.admin import (
        AlterConfigOpType,
        ConfigEntry,
        ConfigResource,
        NewTopic,
    )

    admin = admin_client(settings)
    metadata = admin.list_topics(timeout=timeout)
    existing = metadata.topics
    factor, replica_config = replication(settings, len(metadata.brokers))
    results: list[tuple[str, str]] = []
    to_create = []
    for spec in specs:
        name = settings.topic(spec.name)
        if name not in existing:
            to_create.append(NewTopic(
                name, num_partitions=spec.partitions(settings),
                replication_factor=factor,
                config={**spec.config(settings), **replica_config}))
    if to_create:
        for name, fut in admin.create_topics(to_create, operation_timeout=timeout).items():
            try:
                fut.result()
            except Exception as exc:
                if not has_code(exc, KafkaError.TOPIC_ALREADY_EXISTS):
                    raise StockflowError(f"cannot create topic {name}: {exc}") from exc
            results.append((name, "created"))
    created = {n for n, _ in results}
    mismatched: list[str] = []
    for spec in specs:
        name = settings.topic(spec.name)
        if name in created:
            continue
        meta = existing[name]
        if len(meta.partitions) != spec.partitions(settings):
            mismatched.append(f"{name} has {len(meta.partitions)} partitions, "
                              f"declared {spec.partitions(settings)}")
        resource = ConfigResource(ConfigResource.Type.TOPIC, name)
        current = admin.describe_configs([resource])[resource].result(timeout=timeout)
        wanted = {**spec.config(settings), **replica_config}
        diff = {k: v for k, v in wanted.items() if k not in current or current[k].value != v}
        if diff:
            entries = [ConfigEntry(k, v, incremental_operation=AlterConfigOpType.SET)
                       for k, v in diff.items()]
            res = ConfigResource(ConfigResource.Type.TOPIC, name, incremental_configs=entries)
            admin.incremental_alter_configs([res])[res].result(timeout=timeout)
            results.append((name, "updated"))
        else:
            results.append((name, "ok"))
    if mismatched:
        # Tables are co-partitioned with their source topics: the worker cannot run like this.
        raise StockflowError(
            "; ".join(mismatched) + ". A topic auto-created by a producer that ran before "
            "`stockflow topics create` gets the broker's default partition count. Set "
            "STOCKFLOW_PARTITIONS to match, or delete the topic (its data is lost) and run "
            "`stockflow topics create` again.")
    return results
