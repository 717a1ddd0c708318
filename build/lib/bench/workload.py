"""Benchmark workload: SupplierDeltas over N SKUs and S suppliers, sent open loop on a rate ladder.

Keys follow a Zipf-like spread (a few hot SKUs, a long tail), as supplier feeds do. A share of
the events are duplicates (the very bytes of an earlier event, redelivered), stale snapshots
(an older sequence under a new event_id) and malformed records (bytes that are not Avro, or
a field that breaks a business rule); the rest are SNAPSHOTs and ADJUSTMENTs that change a
quantity. Every event is stamped with its send time (observed_at, received_at and the Kafka
timestamp), so the worker's freshness clock starts when the generator sent it.
"""

from __future__ import annotations

import bisect
import itertools
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

# Outcome the pipeline should reach for each generated event (checked by the harness's counts).
FRESH = "fresh"
DUPLICATE = "duplicate"
STALE = "stale"
MALFORMED = "malformed"


@dataclass(frozen=True)
class WorkloadSpec:
    """What to generate: key space, skew and the shares of the awkward events."""

    skus: int = 10_000
    suppliers: int = 10
    zipf_s: float = 1.1  # 0 = uniform; ~1 = a few hot SKUs carry much of the traffic
    duplicate_share: float = 0.02
    stale_share: float = 0.02
    malformed_share: float = 0.005
    adjustment_share: float = 0.2
    seed: int = 7

    def __post_init__(self) -> None:
        awkward = self.duplicate_share + self.stale_share + self.malformed_share
        if self.skus < 1 or self.suppliers < 1:
            raise ValueError("skus and suppliers must be >= 1")
        if not 0 <= awkward < 1:
            raise ValueError(f"duplicate+stale+malformed shares must be in [0, 1), got {awkward}")


def zipf_cumulative(n: int, s: float) -> list[float]:
    """Cumulative weights of ranks 1..n under weight 1/rank**s (s=0: uniform)."""
    return list(itertools.accumulate(1.0 / (rank ** s) for rank in range(1, n + 1)))


@dataclass
class Event:
    """One generated record: its key, its bytes and what the pipeline should make of it."""

    key: bytes
    value: bytes
    kind: str
    timestamp_ms: int


@dataclass
class Workload:
    """A deterministic stream of events for one spec (same seed -> same keys and kinds)."""

    spec: WorkloadSpec
    _rng: random.Random = field(init=False)
    _cum: list[float] = field(init=False)
    _sequences: dict[tuple[int, int], int] = field(init=False, default_factory=dict)
    _recent: list[tuple[bytes, bytes]] = field(init=False, default_factory=list)
    _n: int = field(init=False, default=0)
    _codec: Any = field(init=False)

    def __post_init__(self) -> None:
        from schemas.codec import codec_for

        self._rng = random.Random(self.spec.seed)
        self._cum = zipf_cumulative(self.spec.skus, self.spec.zipf_s)
        self._codec = codec_for("SupplierDelta")

    def pick_key(self) -> tuple[int, int]:
        """A (supplier, sku) index pair: SKU by Zipf rank, supplier spread over S by SKU."""
        rank = bisect.bisect_left(self._cum, self._rng.random() * self._cum[-1])
        sku = min(rank, self.spec.skus - 1)
        # Each SKU is carried by up to 3 suppliers (the hot ones by all three), so the
        # availability fold sees several suppliers per platform SKU.
        supplier = (sku + self._rng.randrange(min(3, self.spec.suppliers))) % self.spec.suppliers
        return supplier, sku

    def record(self, supplier: int, sku: int, sequence: int, kind: str, quantity: int,
               now_ms: int, event_id: str | None = None) -> dict[str, Any]:
        """A SupplierDelta dict (schemas/supplier_delta.avsc)."""
        sid, s = f"sup-{supplier:03d}", f"SKU-{sku:08d}"
        return {
            "supplier_id": sid, "sku": s,
            "event_id": event_id or f"{sid}-{s}-{sequence}",
            "sequence": sequence, "kind": kind, "quantity": quantity,
            "observed_at": now_ms, "price": None, "currency": None, "warehouse": None,
            "lead_time_days": None, "status": "ACTIVE", "connector": "bench",
            "received_at": now_ms,
        }

    def next_event(self, now_ms: int | None = None) -> Event:
        """The next event, stamped with `now_ms` (default: the wall clock, i.e. send time)."""
        now = now_ms if now_ms is not None else int(time.time() * 1000)
        self._n += 1
        spec = self.spec
        roll = self._rng.random()
        if roll < spec.malformed_share:
            return self._malformed(now)
        roll -= spec.malformed_share
        if roll < spec.duplicate_share and self._recent:
            key, value = self._rng.choice(self._recent)
            return Event(key, value, DUPLICATE, now)
        roll -= spec.duplicate_share
        supplier, sku = self.pick_key()
        key = f"sup-{supplier:03d}|SKU-{sku:08d}".encode()
        current = self._sequences.get((supplier, sku), 0)
        if roll < spec.stale_share and current >= 2:
            # An older snapshot arriving late under its own event_id: version-stale.
            rec = self.record(supplier, sku, current - 1, "SNAPSHOT", 1, now,
                              event_id=f"late-{self._n}")
            return Event(key, self._codec.encode(rec), STALE, now)
        seq = current + 1
        self._sequences[(supplier, sku)] = seq
        # The first event of a key is a SNAPSHOT (an adjustment on nothing is suspect).
        if current and self._rng.random() < spec.adjustment_share:
            rec = self.record(supplier, sku, seq, "ADJUSTMENT", self._rng.choice((-1, 1, 2)),
                              now)
        else:
            rec = self.record(supplier, sku, seq, "SNAPSHOT", 100 + seq % 900, now)
        value = self._codec.encode(rec)
        if len(self._recent) < 1024:
            self._recent.append((key, value))
        else:
            self._recent[self._rng.randrange(1024)] = (key, value)
        return Event(key, value, FRESH, now)

    def _malformed(self, now: int) -> Event:
        if self._rng.random() < 0.5:
            return Event(b"sup-bad|x", b"\x00not avro at all", MALFORMED, now)
        rec = self.record(0, 0, 1, "SNAPSHOT", 5, now)
        rec["sku"] = "BAD|SKU"  # '|' is the key separator: invalid:bad_sku
        return Event(b"sup-000|BAD|SKU", self._codec.encode(rec), MALFORMED, now)

    def events(self, count: int, now_ms: int | None = None) -> Iterator[Event]:
        """`count` events, all stamped `now_ms` (or each with the wall clock)."""
        for _ in range(count):
            yield self.next_event(now_ms)

    def one_per_key(self, now_ms: int) -> Iterator[Event]:
        """One SNAPSHOT for every (supplier, sku) a full table holds: N keys, spread over S."""
        for sku in range(self.spec.skus):
            supplier = sku % self.spec.suppliers
            seq = self._sequences.get((supplier, sku), 0) + 1
            self._sequences[(supplier, sku)] = seq
            rec = self.record(supplier, sku, seq, "SNAPSHOT", 100 + sku % 900, now_ms)
            yield Event(f"sup-{supplier:03d}|SKU-{sku:08d}".encode(), self._codec.encode(rec),
                        FRESH, now_ms)


# ------------------------------------------------------------------- rate ladder
def rate_ladder(start: int, stop: int, factor: float = 2.0,
                extra: tuple[int, ...] = ()) -> list[int]:
    """Offered rates from `start` up to `stop` (included), each `factor` times the previous.

    `extra` rates (e.g. a goal's 5,000/s) are merged in, so the ladder always measures them.
    """
    if start <= 0 or stop < start or factor <= 1.0:
        raise ValueError(f"need 0 < start <= stop and factor > 1 (got {start}, {stop}, {factor})")
    rates = set()
    rate = float(start)
    while rate < stop:
        rates.add(round(rate))
        rate *= factor
    rates.add(stop)
    rates.update(r for r in extra if start <= r <= stop)
    return sorted(rates)


def due_count(rate: float, elapsed_s: float) -> int:
    """Events an open-loop sender at `rate`/s must have sent `elapsed_s` after its start."""
    return int(rate * max(0.0, elapsed_s))


def send_open_loop(send: Callable[[Event], None], workload: Workload, rate: float,
                   duration_s: float, *, tick_s: float = 0.005,
                   clock: Callable[[], float] = time.monotonic,
                   sleep: Callable[[float], None] = time.sleep) -> tuple[int, float]:
    """Send at `rate`/s for `duration_s`, on schedule whatever the system under test does.

    Open loop: the schedule never waits for the pipeline (a closed loop would slow down with
    it and hide the queueing). When the sender itself falls behind it catches up in bursts,
    and the achieved rate it returns says so. Returns (events sent, seconds taken).
    """
    start = clock()
    sent = 0
    while True:
        elapsed = clock() - start
        if elapsed >= duration_s:
            break
        due = due_count(rate, elapsed)
        while sent < due:
            send(workload.next_event())
            sent += 1
        sleep(tick_s)
    # Send the remainder of the schedule so every step offers exactly rate * duration.
    total = due_count(rate, duration_s)
    while sent < total:
        send(workload.next_event())
        sent += 1
    return sent, clock() - start
