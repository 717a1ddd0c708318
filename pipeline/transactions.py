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

from typing import Any

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


    async def commit(self, offsets: Any, start_new_transaction: bool = True) -> bool:
        await self.app.producer.buffer.flush()
        return bool(await super().commit(offsets, start_new_transaction=start_new_transaction))


def install(app: Any) -> None:
    """Use SourceTransactionManager for this app's transport (before the worker starts)."""
    app.transport.TransactionManager = SourceTransactionManager
