"""Exponential backoff with full jitter, and the error classes a connector retries on."""

from __future__ import annotations

import random
from dataclasses import dataclass

from pipeline.backoff import backoff_delay
from pipeline.errors import ConnectorError


class RetryableError(ConnectorError):
    """A failure worth retrying: 429, 5xx, a timeout, a dropped connection.

    `retry_after` is the server's Retry-After in seconds, when it sent one.
    """

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


@dataclass(frozen=True)
class Backoff:
    """Delay before retry `attempt` (1-based): uniform in [0, min(cap, base * 2**(attempt-1))].

    Full jitter spreads the retries of many connectors instead of synchronising them. The
    delay is `pipeline.backoff.backoff_delay(attempt - 1, jitter="full")`; a server's
    Retry-After (capped at `cap_s`) is a floor under it.
    """

    base_s: float = 0.5
    cap_s: float = 30.0
    max_attempts: int = 5

    def delay(self, attempt: int, *, retry_after: float | None = None,
              rng: random.Random | None = None) -> float:
        # `attempt` is 1-based here; the shared function counts the first retry as 0.
        jittered = backoff_delay(attempt - 1, base_s=self.base_s, cap_s=self.cap_s,
                                 jitter="full", rng=rng)
        # A server's Retry-After is a floor: retrying earlier would only be refused again.
        return max(jittered, min(retry_after, self.cap_s)) if retry_after else jittered
