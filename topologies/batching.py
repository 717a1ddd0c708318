"""Batches of events from a Faust stream that never lose an event.

Faust's `Stream.take_events`/`take` share one "consuming" future between the batch consumer
and the producer side of the buffer, and a producer that waited on an older future resets it
to None when it wakes: a later batch is then no longer protected, events are appended while
the agent works on its copy, and the `finally` that clears and acks the buffer acks those
events without anyone having processed them. And the producer side reads the stream's
*current* event after waiting, by which time it may be another one (see add_to_buffer).
Both showed as an update of inventory.stock-updates that never reached the availability
table. This version keeps one lock-step protocol: the producer side appends only while no
batch is being handed out, each event is captured when it arrives, and the batch handed
out is exactly the set of events that gets acked.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any


async def take_events(stream: Any, max_: int, within: float) -> AsyncIterator[list[Any]]:
    """Yield lists of up to `max_` events, at the latest `within` seconds after the first.

    Events are acked only after the agent's loop body for their batch finished, so the
    offsets Faust commits never pass an event whose effects were not produced.
    """
    pending: list[Any] = []
    ready = asyncio.Event()  # a batch is full
    room = asyncio.Event()  # the consumer took the batch: the producer side may go on
    room.set()
    stream_enable_acks: bool = stream.enable_acks

    async def add_to_buffer(value: Any) -> Any:
        # Take the event *before* waiting: while this waits, the agent works on the previous
        # batch and makes its events current in turn (for table writes), so the stream's
        # current event is no longer this one when the wait ends. Reading it afterwards, as
        # Faust's take_events does, loses this event and hands out an old one twice.
        event = stream.current_event
        if event is None:
            raise RuntimeError("take_events: no current event")
        while not room.is_set():
            await room.wait()
        pending.append(event)
        if len(pending) >= max_:
            ready.set()
            room.clear()
        return value

    stream.enable_acks = False
    stream.add_processor(add_to_buffer)
    stream._enable_passive(aiter(stream.channel))
    try:
        while not stream.should_stop:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(ready.wait(), timeout=within)
            if not pending:
                continue
            room.clear()  # nothing is appended until this batch is acked
            batch = list(pending)
            pending.clear()
            try:
                yield batch
            finally:
                for event in batch:
                    await stream.ack(event)
                ready.clear()
                room.set()
    finally:
        stream.enable_acks = stream_enable_acks
        stream._processors.remove(add_to_buffer)
