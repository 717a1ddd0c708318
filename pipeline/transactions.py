"""Exactly-once as Kafka Streams defines it: a task's outputs commit with its input offsets.

Faust's TransactionManager picks the transactional producer by the *destination* topic's
partition. A record an agent sends to another agent's input topic (a repartition, as
inventory.stock-updates and inventory.changes are) then joins the transaction of the
*consumer* of that partition, which only commits once that consumer has read something --
but under read_committed it cannot read the record until that commit: the pipeline stalls,
and atomicity between a record and the input offset that produced it is lost.

This manager sends every record produced while handling an event through the producer of
that event's *source* partition, so the record, the changelog writes and the source offset
commit or abort together. Sends outside of an event keep Faust's behaviour.

It also hands Faust's buffered changelog records to their transactions *before* committing:
Faust flushes that buffer before an at-least-once commit but not before a transactional one,
so a table write could land in the transaction after the one that committed its input
offset -- lost if the worker then dies, and invisible to read-committed readers while the
worker idles.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any, cast

from faust.streams import current_event
from faust.transport.consumer import TransactionManager


class SourceTransactionManager(TransactionManager):
    """Route a send to the transactional producer of the current event's source partition."""

    async def send(self, topic: str, key: bytes | None, value: bytes | None,
                   partition: int | None, timestamp: float | None, headers: Any,
                   *, transactional_id: str | None = None) -> Any:
        event = current_event()
        if event is None:
            return await super().send(topic, key, value, partition, timestamp, headers,
                                      transactional_id=transactional_id)
        source = event.message.tp
        group = self.app.assignor.group_for_topic(source.topic)
        tid = f"{self.app.conf.id}-{group}-{source.partition}"
        dest_partition = self.consumer.key_partition(topic, key, partition)
        return await self.producer.send(topic, key, value, dest_partition, timestamp, headers,
                                        transactional_id=tid)


    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Gate the whole commit -- choosing the acked offsets included -- not just the
        # transaction end: offsets chosen before the wait would miss units that finish
        # while it waits, whose outputs would then commit without their offsets.
        # ConsumerT (Faust's stub) does not declare force_commit; the Consumer has it.
        consumer = cast(Any, self.consumer)
        force_commit = consumer.force_commit

        async def gated_force_commit(*a: Any, **kw: Any) -> Any:
            async with commit_gate.exclusive():
                return await force_commit(*a, **kw)

        consumer.force_commit = gated_force_commit

    async def commit(self, offsets: Any, start_new_transaction: bool = True) -> bool:
        await drain_producer_buffer(self.app.producer.buffer)
        committed = bool(await super().commit(offsets,
                                              start_new_transaction=start_new_transaction))
        if committed:
            after_commit(self.app, offsets)
            note_commit_time(self.consumer, offsets)
        return committed


def after_commit(app: Any, offsets: Any) -> None:
    """The transactions of the committed source partitions committed: persist the changelog
    offsets of those partitions' stores, then empty their undo logs (pipeline/undo_store.py),
    in that order.

    A commit commits one transaction per transactional id (`<app>-<group>-<partition>`) that
    has source offsets to commit, and leaves the others open: a changelog partition's records
    are committed only if its own (group, partition) was among `offsets`. Everything else
    stays pending, and its undo log keeps the writes until that transaction commits.

    Faust queues a persisted offset per *changelog* partition but, after a commit, flushes
    the queue for the committed *source* partitions, so under exactly-once the stores'
    offsets were never written and every restart read the changelogs from the beginning.
    """
    assignor = app.assignor
    committed = {(assignor.group_for_topic(tp.topic), tp.partition) for tp in offsets}

    def was_committed(topic: str, partition: int) -> bool:
        try:
            return (assignor.group_for_topic(topic), partition) in committed
        except KeyError:  # a topic the assignor does not know: keep it pending
            return False

    tables = app.tables
    pending = tables._pending_persisted_offsets
    for tp, (store, offset) in list(pending.items()):
        if was_committed(tp.topic, tp.partition):
            store.set_persisted_offset(tp, offset)
            del pending[tp]
    for table in tables.values():
        checkpoint = getattr(table.data, "undo_checkpoint", None)
        if checkpoint is None:
            continue
        topic = table.changelog_topic.get_topic_name()
        checkpoint([p for p in range(table.partitions or app.conf.topic_partitions)
                    if was_committed(topic, p)])


async def drain_producer_buffer(buffer: Any, poll_s: float = 1.0) -> None:
    """Wait until every buffered record (table changelog writes) was handed to its producer.

    Faust's `ProducerBuffer.flush()` returns as soon as no record was sent for 0.1 s, which
    under load (a producer waiting for room in its batch accumulator) can leave records in
    the buffer, or one in the middle of being sent: the commit after it would close the
    transaction without them. This waits for an empty buffer *and* no send in progress
    (counted by the `_send_pending` wrapper that install() sets up).
    """
    while buffer.size or getattr(buffer, "_stockflow_sending", 0):
        if buffer.should_stop:
            raise RuntimeError("the producer buffer stopped with records not sent")
        buffer.message_sent.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(buffer.message_sent.wait(), poll_s)


def _count_sends(send_pending: Any) -> Any:
    async def counted(self: Any, fut: Any) -> None:
        self._stockflow_sending = getattr(self, "_stockflow_sending", 0) + 1
        try:
            await send_pending(self, fut)
        finally:
            self._stockflow_sending -= 1

    counted.__wrapped__ = send_pending  # type: ignore[attr-defined]
    return counted


def note_commit_time(consumer: Any, offsets: Any, now: float | None = None) -> None:
    """Tell Faust's stall detector that these source partitions committed.

    The detector ("Has not committed TP(...) at all since worker start") only learns of
    commits made by the consumer; under exactly-once the offsets commit inside the producers'
    transactions, so it reported every partition as stalled, forever, and a real stall --
    one partition whose offsets stop committing -- was lost among those errors.
    """
    thread = getattr(consumer, "_thread", None)
    stamps = getattr(thread, "tp_last_committed_at", None)
    if stamps is None:
        return
    at = time.monotonic() if now is None else now
    stamps.update({tp: at for tp in offsets})


def install(app: Any, transaction_timeout_s: float = 300.0) -> None:
    """Use SourceTransactionManager for this app's transport (before the worker starts).

    Also give the transactional producers a longer transaction timeout than Kafka's 60 s
    default: a transaction stays open while a unit of work waits for Cassandra (the change
    records may only be sent once it acknowledged), and a Cassandra outage or slow spell
    longer than the timeout would otherwise have the broker abort the transaction and fence
    the worker. Must not exceed the brokers' transaction.max.timeout.ms (15 min by default).
    """
    from faust.transport.drivers import aiokafka as driver
    from faust.transport.producer import ProducerBuffer

    app.transport.TransactionManager = SourceTransactionManager
    if not hasattr(ProducerBuffer._send_pending, "__wrapped__"):
        ProducerBuffer._send_pending = _count_sends(  # type: ignore[method-assign]
            ProducerBuffer._send_pending)
    producer_cls: Any = driver.Producer
    if getattr(producer_cls, "_stockflow_settings_extra", None) is None:
        original = producer_cls._settings_extra
        producer_cls._stockflow_settings_extra = original

        def settings_extra(self: Any) -> Any:
            extra = dict(original(self))
            if self.app.in_transaction:
                extra["transaction_timeout_ms"] = int(self.app.conf.stockflow_txn_timeout_ms)
            return extra

        producer_cls._settings_extra = settings_extra
    app.conf.stockflow_txn_timeout_ms = transaction_timeout_s * 1000


class CommitGate:
    """Keeps Faust's transaction commits between units of work, never in the middle of one.

    Faust commits on a timer, from another task, whenever the agent is at an `await`. A
    commit in the middle of handling an event would commit part of its outputs (a dead
    letter, a table write) without its input offset -- duplicated if the worker then dies --
    or commit its offset and table write while its output record goes to the next
    transaction -- lost if it dies. Agents wrap each event (or batch) in `unit()`, which also
    acks it; a commit waits in `exclusive()` until no unit is running, and holds new units
    back meanwhile so that it cannot starve.
    """

    def __init__(self) -> None:
        self._active = 0
        self._committing = False
        self._cond = asyncio.Condition()

    @contextlib.asynccontextmanager
    async def unit(self) -> AsyncIterator[None]:
        async with self._cond:
            await self._cond.wait_for(lambda: not self._committing)
            self._active += 1
        try:
            yield
        finally:
            async with self._cond:
                self._active -= 1
                self._cond.notify_all()

    @contextlib.asynccontextmanager
    async def exclusive(self) -> AsyncIterator[None]:
        async with self._cond:
            await self._cond.wait_for(lambda: not self._committing)
            self._committing = True
            await self._cond.wait_for(lambda: self._active == 0)
        try:
            yield
        finally:
            async with self._cond:
                self._committing = False
                self._cond.notify_all()


commit_gate = CommitGate()
