"""Simulated suppliers: a catalog of SKUs whose stock changes, and the truth tests compare to."""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

DESCRIPTIONS = ("Widget, large \"XL\"", "Café crème mug", "Bolt M8; zinc", "Über-Kabel 2m",
                "Plain box")


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def iso_ms(ms: int) -> str:
    """An ISO 8601 UTC timestamp with millisecond precision (round-trips to the same ms)."""
    return datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat(timespec="milliseconds") \
        .replace("+00:00", "Z")


@dataclass(frozen=True)
class Item:
    """One SKU's current state at the supplier."""

    sku: str
    quantity: int
    version: int  # per-SKU version counter, dense within one simulator run
    price_cents: int
    currency: str
    status: str  # active | discontinued
    warehouse: str
    description: str
    updated_at: int  # epoch ms
    revision: int  # supplier-wide change counter of the last change

    @property
    def price(self) -> str:
        return f"{self.price_cents // 100}.{self.price_cents % 100:02d}"


@dataclass(frozen=True)
class Change:
    """One change event (what a webhook supplier pushes)."""

    event_id: str
    item: Item


class SimulatedSupplier:
    """A catalog of `skus` items; `step(n)` applies n random stock changes.

    Single-threaded by design (the simulator's event loop mutates it); readers in other
    threads (the FTP server) only see files written from it.

    A real supplier's version and change counters never go back, but this catalog is built
    anew at every start. So both counters start at the start time in milliseconds (a later
    run starts above every number an earlier one reached, unless one SKU changed more often
    than once per millisecond of the gap): the versions, webhook event ids (`evt-<revision>`)
    and GraphQL cursors of a restarted demo are new to the connectors' stored cursors and
    to the pipeline's dedup table, not repeats of the previous run's. `base=0` counts from 1.
    """

    def __init__(self, supplier_id: str, *, skus: int, seed: int = 0, currency: str = "EUR",
                 clock: Callable[[], int] = now_ms, base: int | None = None) -> None:
        self.supplier_id = supplier_id
        self.rng = random.Random(f"{supplier_id}:{seed}")
        self._clock = clock
        self.base = clock() if base is None else base
        self.revision = self.base
        self.last_updated = 0
        self.items: dict[str, Item] = {}
        self._subscribers: list[Callable[[Change], None]] = []
        prefix = supplier_id.upper().replace(".", "-")[:12]
        start = self._tick()
        for i in range(skus):
            self.revision += 1
            sku = f"{prefix}-{i:06d}"
            self.items[sku] = Item(
                sku=sku, quantity=self.rng.randint(0, 200), version=self.base + 1,
                price_cents=self.rng.randint(100, 100_00), currency=currency, status="active",
                warehouse=self.rng.choice(["north", "south"]),
                description=self.rng.choice(DESCRIPTIONS), updated_at=start,
                revision=self.revision)

    def _tick(self) -> int:
        # Update times never go backwards at one supplier: its cursors depend on it.
        self.last_updated = max(self._clock(), self.last_updated)
        return self.last_updated

    def subscribe(self, callback: Callable[[Change], None]) -> None:
        self._subscribers.append(callback)

    def step(self, n: int = 1) -> list[Change]:
        """Apply `n` random changes (restock, sale, sell-out, price change, discontinuation)."""
        changes = []
        skus = list(self.items)
        for _ in range(n):
            item = self.items[self.rng.choice(skus)]
            roll = self.rng.random()
            quantity, price, status = item.quantity, item.price_cents, item.status
            if roll < 0.6:
                quantity = max(0, quantity - self.rng.randint(1, 5))
            elif roll < 0.85:
                quantity += self.rng.randint(1, 50)
            elif roll < 0.93:
                quantity = 0
            elif roll < 0.99:
                price = max(1, price + self.rng.randint(-200, 200))
            else:
                status = "discontinued" if status == "active" else "active"
            changes.append(self.set(item.sku, quantity=quantity, price_cents=price,
                                    status=status))
        return changes

    def set(self, sku: str, **fields: Any) -> Change:
        """Change one SKU (a new version and revision) and tell the subscribers."""
        self.revision += 1
        item = replace(self.items[sku], version=self.items[sku].version + 1,
                       updated_at=self._tick(), revision=self.revision, **fields)
        self.items[sku] = item
        change = Change(event_id=f"evt-{self.revision}", item=item)
        for callback in self._subscribers:
            callback(change)
        return change

    def truth(self) -> dict[str, dict[str, Any]]:
        """The supplier's true current state: sku -> quantity, version, status."""
        return {sku: {"quantity": i.quantity, "version": i.version,
                      "status": i.status.upper()} for sku, i in self.items.items()}

    def by_update(self) -> list[Item]:
        """Items in (updated_at, sku) order: what an `updated_since` listing walks."""
        return sorted(self.items.values(), key=lambda i: (i.updated_at, i.sku))

    def by_revision(self) -> list[Item]:
        """Items in change order: what a change-cursor listing walks."""
        return sorted(self.items.values(), key=lambda i: i.revision)
