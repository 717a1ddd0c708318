"""The idempotent producer every supplier feed uses to write canonical records to Kafka."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterable
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from pipeline import tracing
from pipeline.errors import ConnectorError
from schemas.codec import AvroCodec, codec_for

# acks=all + idempotence: a retried send never duplicates or reorders within a partition,
# which keeps the per (supplier, sku) order of inventory.deltas.
PRODUCER_DEFAULTS: dict[str, Any] = {
    "acks": "all",
    "enable.idempotence": True,
    "linger.ms": 5,
    "compression.type": "lz4",
    "message.timeout.ms": 120_000,
    # The Java client's (and aiokafka's, so Faust's) partitioner: every producer of a key
    # must pick the same partition, or co-partitioned tables would see keys move.
    "partitioner": "murmur2_random",
}


class DeltaProducer:
    """Encodes records with their Avro codec and sends them keyed `supplier_id|sku`.

    `produce` is fire-and-forget (errors surface at `flush`); `send` is the async form that
    returns only once Kafka acknowledged every record, for callers (webhooks) that must not
    answer before that.
    """

    def __init__(self, config: dict[str, Any], topic: str, *, record: str = "SupplierDelta",
                 codec: AvroCodec | None = None) -> None:
        self.topic = topic
        self.record_type = record
        self.codec = codec or codec_for(record)
        self._producer = Producer({**PRODUCER_DEFAULTS, **config})
        self._errors: list[KafkaError] = []
        self._closed = threading.Event()
        self._poller = threading.Thread(target=self._poll_loop, name="delta-producer-poll",
                                        daemon=True)
        self._poller.start()

    def _poll_loop(self) -> None:
        while not self._closed.is_set():
            self._producer.poll(0.1)

    def _on_delivery(self, err: KafkaError | None, _msg: Message) -> None:
        if err is not None:
            self._errors.append(err)

    @staticmethod
    def key_of(record: dict[str, Any]) -> bytes:
        return f"{record['supplier_id']}|{record['sku']}".encode()

    def produce(self, record: dict[str, Any], *, key: bytes | None = None,
                value: bytes | None = None, timestamp_ms: int | None = None) -> None:
        """Queue one record (or pre-encoded `value`); waits for queue room, never drops."""
        payload = value if value is not None else self.codec.encode(record)
        k = key if key is not None else self.key_of(record)
        kwargs: dict[str, Any] = {"on_delivery": self._on_delivery}
        if timestamp_ms is not None:
            kwargs["timestamp"] = timestamp_ms
        spans = None
        if tracing.ENABLED:
            spans = tracing.start_send_spans(self.topic, [record], self.record_type)
            kwargs["headers"] = tracing.headers_of(spans[0].get_span_context())
        while True:
            try:
                self._producer.produce(self.topic, payload, k, **kwargs)
                break
            except BufferError:
                self._producer.flush(0.5)
        if spans is not None:  # fire-and-forget: the span ends when the record is queued
            tracing.end_spans(spans)

    def flush(self, timeout: float = 60.0) -> None:
        """Wait for every queued record; raise ConnectorError if any was not acknowledged."""
        remaining = self._producer.flush(timeout)
        if remaining:
            raise ConnectorError(f"{remaining} records to {self.topic} not acknowledged "
                                 f"within {timeout}s")
        if self._errors:
            errors, self._errors = self._errors, []
            raise ConnectorError(f"{len(errors)} records to {self.topic} failed: {errors[0]}")

    async def send(self, records: Iterable[dict[str, Any]], *, key: bytes | None = None) -> None:
        """Produce records and return once Kafka acknowledged all of them (acks=all).

        With tracing on, each record gets a producer span (a child of the current span: the
        request, page or file it came from) whose traceparent goes into its headers."""
        if tracing.ENABLED:
            batch = list(records)
            spans = tracing.start_send_spans(self.topic, batch, self.record_type)
            try:
                await self._send(batch, key, [tracing.headers_of(s.get_span_context())
                                              for s in spans])
            except BaseException as exc:
                tracing.end_spans(spans, exc)
                raise
            tracing.end_spans(spans)
            return
        await self._send(records, key, None)

    async def _send(self, records: Iterable[dict[str, Any]], key: bytes | None,
                    headers: list[Any] | None) -> None:
        loop = asyncio.get_running_loop()
        futures: list[asyncio.Future[None]] = []

        def resolver(fut: asyncio.Future[None]):
            def done(err: KafkaError | None, _msg: Message) -> None:
                def settle() -> None:
                    if fut.done():
                        return
                    if err is None:
                        fut.set_result(None)
                    else:
                        fut.set_exception(ConnectorError(f"send to {self.topic} failed: {err}"))
                loop.call_soon_threadsafe(settle)
            return done

        for index, record in enumerate(records):
            fut: asyncio.Future[None] = loop.create_future()
            payload = self.codec.encode(record)
            k = key if key is not None else self.key_of(record)
            while True:
                try:
                    if headers is None:
                        self._producer.produce(self.topic, payload, k,
                                               on_delivery=resolver(fut))
                    else:
                        self._producer.produce(self.topic, payload, k,
                                               on_delivery=resolver(fut),
                                               headers=headers[index])
                    break
                except BufferError:
                    await asyncio.sleep(0.05)
                except KafkaException as exc:
                    raise ConnectorError(f"send to {self.topic} failed: {exc}") from exc
            futures.append(fut)
        if futures:
            await asyncio.gather(*futures)

    def close(self, timeout: float = 30.0) -> None:
        try:
            self.flush(timeout)
        finally:
            self._closed.set()
            self._poller.join(timeout=2)

    def __enter__(self) -> DeltaProducer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
