"""The live stream behind `GET /v1/stream`: numbered events, a bounded history for resumes.

Every event gets the id `<boot>-<n>`, n counting up in the order this API process saw the
events. A client that reconnects with `Last-Event-ID` of this boot, still within the history
(`api_stream_buffer` events), gets every event after it; otherwise (another boot, too old)
it first gets a `reset` event per SKU with the current availability, then the live events.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import deque
from dataclasses import dataclass, field
from typing import Any


@dataclass(slots=True, eq=False)  # hashed by identity: kept in a set
class Subscriber:
    skus: frozenset[str] | None  # None: every SKU
    queue: asyncio.Queue[tuple[str, dict[str, Any]] | None]


@dataclass(slots=True)
class StreamHub:
    """Numbered events, their recent history and the connected clients (one event loop)."""

    capacity: int
    boot: str = field(default_factory=lambda: uuid.uuid4().hex[:8])
    seq: int = 0
    history: deque[tuple[int, str, dict[str, Any]]] = field(init=False)
    subscribers: set[Subscriber] = field(default_factory=set)
    queue_size: int = 10_000

    def __post_init__(self) -> None:
        self.history = deque(maxlen=self.capacity)

    def event_id(self, seq: int) -> str:
        return f"{self.boot}-{seq}"

    def publish(self, sku: str, event: dict[str, Any]) -> None:
        self.seq += 1
        self.history.append((self.seq, sku, event))
        eid = self.event_id(self.seq)
        for sub in list(self.subscribers):
            if sub.skus is not None and sku not in sub.skus:
                continue
            try:
                sub.queue.put_nowait((eid, event))
            except asyncio.QueueFull:
                # A client this far behind reconnects and resumes from its last id.
                self.subscribers.discard(sub)
                sub.queue.put_nowait(None) if not sub.queue.full() else None

    def subscribe(self, skus: frozenset[str] | None) -> Subscriber:
        sub = Subscriber(skus, asyncio.Queue(self.queue_size))
        self.subscribers.add(sub)
        return sub

    def unsubscribe(self, sub: Subscriber) -> None:
        self.subscribers.discard(sub)

    def since(self, last_event_id: str | None, skus: frozenset[str] | None
              ) -> list[tuple[str, dict[str, Any]]] | None:
        """The events after last_event_id for these SKUs; None when they cannot be known."""
        if not last_event_id:
            return None
        boot, _, n = last_event_id.partition("-")
        if boot != self.boot or not n.isdigit():
            return None
        after = int(n)
        oldest = self.history[0][0] if self.history else self.seq + 1
        if after < oldest - 1 or after > self.seq:
            return None
        return [(self.event_id(s), e) for s, sku, e in self.history
                if s > after and (skus is None or sku in skus)]
