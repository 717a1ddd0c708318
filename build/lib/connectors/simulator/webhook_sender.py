"""The simulator's webhook sender: pushes each change, signed, and redelivers until 2xx."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from typing import Any

import aiohttp

from connectors.sources.webhook import SIGNATURE_HEADER, TIMESTAMP_HEADER, webhook_signature
from pipeline.log import get_logger

from .catalog import Change, SimulatedSupplier, iso_ms
from .faults import FaultInjector

log = get_logger(__name__)


def webhook_event(change: Change) -> dict[str, Any]:
    """How the simulated webhook suppliers spell one change."""
    item = change.item
    return {"id": change.event_id, "sku": item.sku, "version": item.version,
            "on_hand": item.quantity, "price": item.price, "currency": item.currency,
            "occurred_at": iso_ms(item.updated_at), "status": item.status}


def webhook_junk(n: int) -> dict[str, Any]:
    return [{"id": f"junk-{n}", "sku": f"JUNK|{n}", "version": 1, "on_hand": 1},
            {"id": f"junk-{n}", "sku": f"JUNK-{n}", "version": 1, "on_hand": "many"},
            {"id": f"junk-{n}", "version": 1, "on_hand": 2}][n % 3]


class WebhookSender:
    """Delivers a supplier's changes to `url` in batches, at least once.

    Faults: duplicates (an acknowledged batch is sent again), reordering (a batch is held
    back and sent after the next one), malformed events inside batches. Starts with the
    whole catalog as events, so the receiver can know the full state.
    """

    def __init__(self, supplier: SimulatedSupplier, url: str, secret: bytes,
                 faults: FaultInjector | None = None, *, batch_size: int = 25,
                 linger_s: float = 0.05, clock: Callable[[], float] = time.time) -> None:
        self.supplier = supplier
        self.url = url
        self.secret = secret
        self.faults = faults or FaultInjector()
        self.batch_size = batch_size
        self.linger_s = linger_s
        self._clock = clock
        self._queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.pending = 0
        self.delivered = 0
        self.attempts = 0
        self.statuses: dict[int, int] = {}
        self._idle = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        for item in supplier.by_revision():
            self._enqueue(Change(event_id=f"evt-{item.revision}", item=item))
        supplier.subscribe(self._enqueue)

    def _enqueue(self, change: Change) -> None:
        self.pending += 1
        self._idle.clear()
        self._queue.put_nowait(webhook_event(change))

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="webhook-sender")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def drain(self, timeout: float) -> None:
        """Wait until every change so far was acknowledged by the receiver."""
        if self.pending:
            await asyncio.wait_for(self._idle.wait(), timeout)

    async def _next_batch(self) -> list[dict[str, Any]]:
        batch = [await self._queue.get()]
        deadline = asyncio.get_running_loop().time() + self.linger_s
        while len(batch) < self.batch_size:
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                break
            try:
                batch.append(await asyncio.wait_for(self._queue.get(), remaining))
            except TimeoutError:
                break
        return batch

    async def _run(self) -> None:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
            held: list[dict[str, Any]] | None = None
            while True:
                if held is not None and self._queue.empty():
                    await self._deliver(session, held)
                    held = None
                    continue
                batch = await self._next_batch()
                if self.faults.config.reorder and held is None and \
                        self.faults.rng.random() < 0.5:
                    held = batch  # delivered after the next batch: out of order
                    self.faults.injected["reorder"] += 1
                    continue
                await self._deliver(session, batch)
                if held is not None:
                    await self._deliver(session, held)
                    held = None

    async def _deliver(self, session: aiohttp.ClientSession,
                       events: list[dict[str, Any]]) -> None:
        body_events = self.faults.mangle(list(events), webhook_junk) \
            if self.faults.config.malformed_rate else list(events)
        body = json.dumps({"supplier_id": self.supplier.supplier_id,
                           "events": body_events}).encode()
        delay = 0.1
        while True:
            self.attempts += 1
            timestamp = int(self._clock())
            headers = {"Content-Type": "application/json", TIMESTAMP_HEADER: str(timestamp),
                       SIGNATURE_HEADER: webhook_signature(self.secret, timestamp, body)}
            try:
                async with session.post(self.url, data=body, headers=headers) as resp:
                    self.statuses[resp.status] = self.statuses.get(resp.status, 0) + 1
                    ok = 200 <= resp.status < 300
            except (aiohttp.ClientError, TimeoutError) as exc:
                log.debug("webhook delivery failed", url=self.url, error=str(exc))
                ok = False
            if ok:
                break
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)
        if self.faults.config.duplicate_rate and \
                self.faults.rng.random() < self.faults.config.duplicate_rate:
            self.faults.injected["duplicate"] += 1
            await self._deliver_again(session, body)
        self.pending -= len(events)
        self.delivered += len(events)
        if self.pending == 0:
            self._idle.set()

    async def _deliver_again(self, session: aiohttp.ClientSession, body: bytes) -> None:
        timestamp = int(self._clock())
        headers = {"Content-Type": "application/json", TIMESTAMP_HEADER: str(timestamp),
                   SIGNATURE_HEADER: webhook_signature(self.secret, timestamp, body)}
        try:
            async with session.post(self.url, data=body, headers=headers) as resp:
                self.statuses[resp.status] = self.statuses.get(resp.status, 0) + 1
        except (aiohttp.ClientError, TimeoutError):
            pass  # a redelivery is a bonus; the original was acknowledged
