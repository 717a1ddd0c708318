"""Kafka plumbing shared by the worker runtime, the connectors and the log tools: the admin
client, reading partitions to their end, and recognising errors by their KafkaError code."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

from pipeline.errors import StockflowError
from pipeline.settings import Settings


class KafkaReadError(StockflowError):
    """A partition could not be read to its end."""


def produce(producer: Any, topic: str, value: bytes, key: bytes | None,
            partition: int | None = None, headers: list[tuple[str, bytes]] | None = None,
            on_delivery: Any = None) -> None:
    """producer.produce, waiting while the local queue is full (BufferError) for deliveries
    to drain it. Keyword arguments are passed only when given: this is on the worker's path
    once per output record."""
    while True:
        try:
            if partition is None and headers is None and on_delivery is None:
                producer.produce(topic, value, key)
            else:
                extra: dict[str, Any] = {}
                if partition is not None:
                    extra["partition"] = partition
                if headers is not None:
                    extra["headers"] = headers
                if on_delivery is not None:
                    extra["on_delivery"] = on_delivery
                producer.produce(topic, value, key, **extra)
            return
        except BufferError:
            producer.poll(0.05)


def admin_client(settings: Settings) -> Any:
    """A confluent-kafka AdminClient with the settings' brokers, credentials and TLS."""
    from confluent_kafka.admin import AdminClient

    # librdkafka's info lines (e.g. BGQUEUE "Purging 1 unserved events" when a client is
    # destroyed) would reach the terminal of `make demo`; warnings and errors still do.
    return AdminClient({**settings.confluent_config(), "log_level": 4})


def error_code(exc: BaseException) -> int | None:
    """The KafkaError code an exception carries (confluent-kafka's KafkaException, or a future's
    exception of the admin client), None for any other exception."""
    from confluent_kafka import KafkaError

    err = exc.args[0] if exc.args else None
    return err.code() if isinstance(err, KafkaError) else None


def has_code(exc: BaseException, *codes: int) -> bool:
    """True when `exc` is a Kafka error of one of `codes` (KafkaError.TOPIC_ALREADY_EXISTS...)."""
    return error_code(exc) in codes


def nonempty_partitions(consumer: Any, topic: str, timeout_s: float) -> list[Any] | None:
    """TopicPartitions of `topic` at their low watermark, for the partitions holding records;
    None when the topic does not exist. Empty partitions are left out: some brokers send no
    end-of-partition event for them."""
    from confluent_kafka import TopicPartition

    meta = consumer.list_topics(topic, timeout=timeout_s).topics.get(topic)
    if meta is None or meta.error is not None:
        return None
    out = []
    for p in sorted(meta.partitions):
        low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=timeout_s)
        if high > low:
            out.append(TopicPartition(topic, p, low))
    return out


def read_to_end(consumer: Any, assignment: list[Any], *, batch: int = 500,
                timeout_s: float = 60.0,
                error: Callable[[str], Exception] = KafkaReadError) -> Iterator[Any]:
    """Yield the records of `assignment` (TopicPartitions with start offsets) up to the end each
    partition had when it was reached. The consumer needs `enable.partition.eof`; records that
    arrive in a partition after its end was reached are not yielded. Raises `error(message)` on
    a consume error or when no record arrives for `timeout_s`."""
    from confluent_kafka import KafkaError

    pending = {(tp.topic, tp.partition) for tp in assignment}
    if not pending:
        return
    consumer.assign(assignment)
    deadline = time.monotonic() + timeout_s
    while pending:
        if time.monotonic() > deadline:
            raise error(f"reading {sorted(pending)[0][0]}: no progress in {timeout_s}s")
        for msg in consumer.consume(batch, 1.0):
            err = msg.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    pending.discard((msg.topic(), msg.partition()))
                    continue
                raise error(f"reading {msg.topic()}: {err}")
            if (msg.topic(), msg.partition()) not in pending:
                continue
            deadline = time.monotonic() + timeout_s
            yield msg
