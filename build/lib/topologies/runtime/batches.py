"""What a batch agent receives: one event per batch of records of its input topic.

`InputBatches` is a Faust channel bound to one Kafka topic. The batch runtime fetches the
records with confluent-kafka and puts one `Batch` into the channel per poll; the agent
(`@app.agent(channel)`) handles the whole batch as one event and says it is done with
`async with batch:`. Faust's per-record path (conductor, channel and stream per record,
one aiokafka send per output) is thereby crossed once per batch instead of once per record.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Protocol

from faust.channels import Channel


class InputBatches(Channel):
    """The in-memory channel through which the runtime hands an agent its topic's batches."""

    def __init__(self, app: Any, *, topic: str, table: Any | None = None,
                 enabled: bool = True, commit_first: bool = False, lane: str = "",
                 **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self.topic_name = topic
        self.table = table  # the table keyed like this topic (partition for partition)
        self.enabled = enabled  # False: the runtime does not subscribe to the topic
        # True: a poll's records of this topic are handled and committed before the others
        # (their outputs are awaited by someone, e.g. a hold's decision by a shopper).
        self.commit_first = commit_first
        # A name: under exactly-once the topic is consumed and committed by the lane of that
        # name (topologies/runtime/lane.py), apart from the worker's main loop.
        self.lane = lane

    def _clone_args(self) -> dict[str, Any]:
        return {**super()._clone_args(), "topic": self.topic_name, "table": self.table,
                "enabled": self.enabled, "commit_first": self.commit_first,
                "lane": self.lane}


class Send(Protocol):
    """How an agent produces an output; `headers` carry a trace context (pipeline/tracing.py)."""

    def __call__(self, topic: str, key: bytes | None, value: bytes,
                 partition: int | None = None,
                 headers: list[tuple[str, bytes]] | None = None) -> None: ...


@dataclass(slots=True)
class Batch:
    """Records of one input topic, in partition order, and the way to send outputs.

    `records` are confluent-kafka messages (`.key()`, `.value()`, `.partition()`,
    `.offset()`, `.timestamp()`). `send(topic, key, value, partition, headers)` produces inside the
    worker's current transaction. `now_ms` is the wall clock when the batch was handed out.
    """

    topic: str
    records: list[Any]
    send: Send
    now_ms: int
    done: asyncio.Future[Any] = field(default_factory=lambda: asyncio.get_event_loop()
                                      .create_future())
    result: Any = None

    async def __aenter__(self) -> Batch:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> bool:
        if not self.done.done():
            if exc is not None:
                self.done.set_exception(exc)
            else:
                self.done.set_result(self.result)
        # The runtime re-raises it where the batch was handed out; the agent goes on.
        return exc is not None and not isinstance(exc, asyncio.CancelledError)
