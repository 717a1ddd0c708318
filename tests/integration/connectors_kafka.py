"""Test support for the connector tests: private topics, reading them back, folding deltas."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from connectors.sources.emitters import KafkaEmitter
from pipeline.settings import Settings
from schemas.codec import AvroCodec

DELTAS = "inventory.deltas"
DEAD = "inventory.deadletter"


@dataclass
class Topics:
    settings: Settings

    @property
    def deltas(self) -> str:
        return self.settings.topic(DELTAS)

    @property
    def dead(self) -> str:
        return self.settings.topic(DEAD)

    def emitter(self) -> KafkaEmitter:
        return KafkaEmitter.create(self.settings.confluent_config(), deltas_topic=self.deltas,
                                   dead_letter_topic=self.dead)

    def end_offsets(self, topic: str) -> int:
        """Sum of the high watermarks: how many records the topic holds."""
        consumer = Consumer({**self.settings.confluent_config(), "group.id": "probe"})
        try:
            meta = consumer.list_topics(topic, timeout=10).topics[topic]
            return sum(consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
                       for p in meta.partitions)
        finally:
            consumer.close()

    def read(self, topic: str, record: str) -> list[dict[str, Any]]:
        """Every record of `topic` up to its current end, decoded."""
        codec = AvroCodec(record)
        consumer = Consumer({**self.settings.confluent_config(),
                             "group.id": f"read-{uuid.uuid4().hex[:8]}",
                             "auto.offset.reset": "earliest", "enable.auto.commit": False})
        try:
            meta = consumer.list_topics(topic, timeout=10).topics[topic]
            ends = {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
                    for p in meta.partitions}
            todo = {p for p, end in ends.items() if end > 0}
            consumer.assign([TopicPartition(topic, p, 0) for p in todo])
            out: list[dict[str, Any]] = []
            misses = 0
            while todo:
                msg = consumer.poll(1.0)
                if msg is None:
                    misses += 1
                    assert misses < 30, f"could not read {topic} to its end"
                    continue
                if msg.error():
                    continue
                out.append(codec.decode(msg.value()))
                if msg.offset() + 1 >= ends[msg.partition()]:
                    todo.discard(msg.partition())
            return out
        finally:
            consumer.close()

    def deltas_read(self) -> list[dict[str, Any]]:
        return self.read(self.deltas, "SupplierDelta")

    def dead_read(self) -> list[dict[str, Any]]:
        return self.read(self.dead, "DeadLetter")


def private_topics(partitions: int = 2) -> Iterator[Topics]:
    """Create the two topics under a unique prefix; delete them afterwards."""
    settings = Settings(topic_prefix=f"t{uuid.uuid4().hex[:10]}.")
    topics = Topics(settings)
    admin = AdminClient(settings.confluent_config())
    names = [topics.deltas, topics.dead]
    for future in admin.create_topics([NewTopic(n, partitions, 1) for n in names]).values():
        future.result(30)
    try:
        yield topics
    finally:
        for future in admin.delete_topics(names).values():
            # Cleanup must not mask the test's outcome.
            with contextlib.suppress(Exception):
                future.result(30)


def fold(deltas: list[dict[str, Any]], supplier_id: str) -> dict[str, dict[str, Any]]:
    """Per SKU, the SNAPSHOT with the highest sequence: what the pipeline would hold."""
    state: dict[str, dict[str, Any]] = {}
    for d in deltas:
        if d["supplier_id"] != supplier_id:
            continue
        seen = state.get(d["sku"])
        if seen is None or d["sequence"] > seen["sequence"]:
            state[d["sku"]] = d
        elif d["sequence"] == seen["sequence"]:
            # Same version twice must be the same fact (a duplicate), never two facts.
            assert (d["event_id"], d["quantity"]) == (seen["event_id"], seen["quantity"]), (d, seen)
    return state


def quantities(state: dict[str, dict[str, Any]]) -> dict[str, int]:
    return {sku: d["quantity"] for sku, d in state.items()}


def truth_quantities(truth: dict[str, dict[str, Any]]) -> dict[str, int]:
    return {sku: t["quantity"] for sku, t in truth.items()}
