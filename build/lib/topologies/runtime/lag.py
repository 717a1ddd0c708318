"""Consumer lag per topic-partition of the worker's group, exported to Prometheus at scrape time.

The collector asks Kafka, when Prometheus scrapes, for the group's committed offsets and the
partitions' end offsets (read_committed: the last stable offset) and exports their difference.
It runs in the metrics server's thread with its own confluent-kafka client, so a slow broker
delays a scrape, never the Faust event loop, and nothing joins the worker's group (offsets are
only fetched, never committed).

On a topic written in transactions (inventory.stock-updates, inventory.changes) a partition at
rest shows a lag of 1: the commit marker after the last record has an offset too, and the
group's committed offset points at it until the next record arrives.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from pipeline import metrics
from pipeline.errors import StockflowError
from pipeline.log import get_logger
from pipeline.settings import Settings

log = get_logger(__name__)



class LagLookupError(StockflowError):
    """Kafka did not answer a committed-offset or watermark request."""


@dataclass(frozen=True, slots=True)
class PartitionLag:
    """Offsets of one topic-partition for one consumer group."""

    topic: str
    partition: int
    committed: int | None  # None: the group never committed on this partition
    end: int

    @property
    def lag(self) -> int:
        """Records not yet committed; from the start of the log when nothing was committed."""
        return max(0, self.end - (self.committed if self.committed is not None else 0))


def partition_lags(consumer: Any, group_topics: Sequence[str],
                   timeout_s: float) -> list[PartitionLag]:
    """Committed and end offsets of every partition of `group_topics` (confluent Consumer)."""
    from confluent_kafka import KafkaException, TopicPartition

    try:
        meta = consumer.list_topics(timeout=timeout_s).topics
        tps = [TopicPartition(topic, p) for topic in group_topics if topic in meta
               for p in sorted(meta[topic].partitions)]
        if not tps:
            return []
        committed = consumer.committed(tps, timeout=timeout_s)
        out = []
        for tp in committed:
            _low, high = consumer.get_watermark_offsets(TopicPartition(tp.topic, tp.partition),
                                                        timeout=timeout_s, cached=False)
            out.append(PartitionLag(tp.topic, tp.partition,
                                    tp.offset if tp.offset >= 0 else None, high))
        return out
    except KafkaException as exc:
        raise LagLookupError(f"cannot read offsets of {list(group_topics)}: {exc}") from exc


class ConsumerLagCollector(Collector):
    """A Prometheus collector: lag, committed and end offset per topic-partition of one group."""

    def __init__(self, kafka_config: dict[str, Any], group_id: str, topics: Iterable[str],
                 *, timeout_s: float = 5.0) -> None:
        self._config = {**kafka_config, "group.id": group_id, "enable.auto.commit": False,
                        "isolation.level": "read_committed"}
        self.group_id = group_id
        self.topics = tuple(topics)
        self._timeout_s = timeout_s
        self._consumer: Any = None
        # Prometheus may scrape from several threads; one client, one request at a time.
        self._lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: Settings) -> ConsumerLagCollector:
        """The collector for the worker's own group (the Faust app id) and input topics."""
        return cls(settings.confluent_config(), settings.app_id,
                   [settings.topic(t) for t in settings.worker_input_topics()])

    def _families(self) -> tuple[GaugeMetricFamily, GaugeMetricFamily, GaugeMetricFamily]:
        labels = ["group", "topic", "partition"]
        return (
            GaugeMetricFamily(metrics.CONSUMER_LAG_NAME,
                              "Records of an input partition not yet committed by the group",
                              labels=labels),
            GaugeMetricFamily(metrics.CONSUMER_COMMITTED_NAME,
                              "The group's committed offset (-1: none yet)", labels=labels),
            GaugeMetricFamily(metrics.CONSUMER_END_NAME,
                              "The partition's last stable offset", labels=labels),
        )

    def describe(self) -> Iterator[GaugeMetricFamily]:
        # Without this, registering would call collect() and query Kafka at import time.
        yield from self._families()

    def lags(self) -> list[PartitionLag]:
        """Look the offsets up now (raises LagLookupError)."""
        from confluent_kafka import Consumer

        with self._lock:
            if self._consumer is None:
                self._consumer = Consumer(self._config)
            return partition_lags(self._consumer, self.topics, self._timeout_s)

    def collect(self) -> Iterator[GaugeMetricFamily]:
        lag, committed, end = self._families()
        try:
            rows = self.lags()
        except LagLookupError as exc:
            metrics.LAG_SCRAPE_ERRORS.inc()
            log.warning("lag.lookup_failed", group=self.group_id, error=str(exc)[:300])
            rows = []
        for row in rows:
            labels = [self.group_id, row.topic, str(row.partition)]
            lag.add_metric(labels, row.lag)
            committed.add_metric(labels, row.committed if row.committed is not None else -1)
            end.add_metric(labels, row.end)
        yield lag
        yield committed
        yield end

    def close(self) -> None:
        """Close the Kafka client (the next scrape opens a new one)."""
        with self._lock:
            consumer, self._consumer = self._consumer, None
        if consumer is not None:
            consumer.close()


def install(settings: Settings, registry: Any = None) -> ConsumerLagCollector:
    """Register the worker's lag collector with the Prometheus registry (default: global)."""
    from prometheus_client import REGISTRY

    collector = ConsumerLagCollector.from_settings(settings)
    (registry or REGISTRY).register(collector)
    return collector
