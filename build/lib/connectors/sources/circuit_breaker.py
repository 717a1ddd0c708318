"""A circuit breaker per supplier: stop calling a supplier that keeps failing, probe it later."""

from __future__ import annotations

import time
from collections.abc import Callable

from pipeline.errors import ConnectorError
from pipeline.log import get_logger

from .metrics import CIRCUIT_OPENED, CIRCUIT_STATE

log = get_logger(__name__)

CLOSED, HALF_OPEN, OPEN = "closed", "half_open", "open"
_GAUGE = {CLOSED: 0, HALF_OPEN: 1, OPEN: 2}


class CircuitOpenError(ConnectorError):
    """The supplier's circuit is open: the call was not made."""


class CircuitBreaker:
    """Opens after `failure_threshold` consecutive failures; after `reset_timeout_s` lets one
    trial call through (half-open); a success closes it, a failure opens it again."""

    def __init__(self, supplier_id: str, *, failure_threshold: int = 5,
                 reset_timeout_s: float = 30.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.supplier_id = supplier_id
        self.failure_threshold = failure_threshold
        self.reset_timeout_s = reset_timeout_s
        self._clock = clock
        self.state = CLOSED
        self.failures = 0
        self.opened_at = 0.0
        CIRCUIT_STATE.labels(supplier_id).set(0)

    def _set(self, state: str) -> None:
        if state != self.state:
            log.warning("circuit breaker state changed", supplier=self.supplier_id,
                        previous=self.state, state=state, failures=self.failures)
        self.state = state
        CIRCUIT_STATE.labels(self.supplier_id).set(_GAUGE[state])

    def before_call(self) -> None:
        """Raise CircuitOpenError while open; move to half-open once the timeout passed."""
        if self.state == OPEN:
            if self._clock() - self.opened_at < self.reset_timeout_s:
                raise CircuitOpenError(f"circuit open for supplier {self.supplier_id}")
            self._set(HALF_OPEN)

    def record_success(self) -> None:
        self.failures = 0
        self._set(CLOSED)

    def record_failure(self) -> None:
        self.failures += 1
        if self.state == HALF_OPEN or self.failures >= self.failure_threshold:
            if self.state != OPEN:
                CIRCUIT_OPENED.labels(self.supplier_id).inc()
            self.opened_at = self._clock()
            self._set(OPEN)
