"""Injectable faults of a simulated supplier: duplicates, reordering, malformed records,
slow responses, 5xx bursts, throttling, outages and partial files."""

from __future__ import annotations

import time
from collections import Counter, deque
from collections.abc import Callable
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field

T = TypeVar("T")


class FaultConfig(BaseModel):
    """Random faults, as probabilities per record or per request (0 = never)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    duplicate_rate: float = Field(default=0.0, ge=0, le=1)
    reorder: bool = False
    malformed_rate: float = Field(default=0.0, ge=0, le=1)
    slow_rate: float = Field(default=0.0, ge=0, le=1)
    slow_s: float = Field(default=2.0, ge=0)
    error_rate: float = Field(default=0.0, ge=0, le=1, description="5xx per request")
    error_burst: int = Field(default=1, ge=1, description="consecutive 5xx once one happens")
    throttle_rate: float = Field(default=0.0, ge=0, le=1, description="429 per request")
    outage_every_s: float | None = Field(default=None, gt=0)
    outage_s: float = Field(default=5.0, gt=0)
    partial_file_rate: float = Field(default=0.0, ge=0, le=1,
                                     description="CSV drops written slowly, in pieces")
    partial_pause_s: float = Field(default=1.0, ge=0)


class FaultInjector:
    """Decides, per request or record, which fault happens; tests force them directly."""

    def __init__(self, config: FaultConfig | None = None, *, seed: object = 0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        import random

        self.config = config or FaultConfig()
        self.rng = random.Random(f"faults:{seed}")
        self._clock = clock
        self._forced: deque[int] = deque()
        self._forced_slow: deque[float] = deque()
        self.down_until = 0.0
        self._next_outage = (clock() + self.config.outage_every_s
                             if self.config.outage_every_s else None)
        self.injected: Counter[str] = Counter()

    # --- forced faults (tests) ------------------------------------------------------------
    def fail_next(self, n: int, status: int = 503) -> None:
        """The next `n` requests answer `status` (a 5xx burst, or 429s)."""
        self._forced.extend([status] * n)

    def slow_next(self, n: int, seconds: float) -> None:
        self._forced_slow.extend([seconds] * n)

    def outage(self, seconds: float) -> None:
        """Drop every connection for `seconds`."""
        self.down_until = self._clock() + seconds

    # --- per request -----------------------------------------------------------------------
    def is_down(self) -> bool:
        now = self._clock()
        if self._next_outage is not None and now >= self._next_outage:
            self.down_until = now + self.config.outage_s
            self._next_outage = now + (self.config.outage_every_s or 0) + self.config.outage_s
        down = now < self.down_until
        if down:
            self.injected["outage"] += 1
        return down

    def status(self) -> int | None:
        """A fault status for this request, or None to answer normally."""
        if self._forced:
            status = self._forced.popleft()
        elif self.rng.random() < self.config.error_rate:
            status = 503
            self._forced.extend([503] * (self.config.error_burst - 1))
        elif self.rng.random() < self.config.throttle_rate:
            status = 429
        else:
            return None
        self.injected[f"status_{status}"] += 1
        return status

    def delay(self) -> float:
        if self._forced_slow:
            self.injected["slow"] += 1
            return self._forced_slow.popleft()
        if self.config.slow_rate and self.rng.random() < self.config.slow_rate:
            self.injected["slow"] += 1
            return self.config.slow_s
        return 0.0

    # --- per record ------------------------------------------------------------------------
    def mangle(self, records: list[T], junk: Callable[[int], Any]) -> list[Any]:
        """Duplicate, add malformed records (from `junk`), and reorder, per the config."""
        out: list[Any] = []
        for record in records:
            out.append(record)
            if self.config.duplicate_rate and self.rng.random() < self.config.duplicate_rate:
                out.append(record)
                self.injected["duplicate"] += 1
            if self.config.malformed_rate and self.rng.random() < self.config.malformed_rate:
                self.injected["malformed"] += 1
                out.append(junk(self.injected["malformed"]))
        if self.config.reorder and len(out) > 1:
            self.rng.shuffle(out)
            self.injected["reorder"] += 1
        return out

    def partial_file(self) -> bool:
        hit = bool(self.config.partial_file_rate) and \
            self.rng.random() < self.config.partial_file_rate
        if hit:
            self.injected["partial_file"] += 1
        return hit
