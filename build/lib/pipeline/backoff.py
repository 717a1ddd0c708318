"""Capped exponential backoff with jitter: the one delay function every retry loop uses.

Attempt numbering is 0-based: `attempt` 0 is the first retry (the wait after the first
failure), 1 the second, and so on. The upper bound of the delay is

    ceiling(attempt) = min(cap_s, base_s * 2**attempt)

so it doubles with each attempt until it reaches `cap_s`, and then stays there. It is
computed exactly for any attempt, however large (no float overflow, no exponent clamp:
past the point where `base_s * 2**attempt` would overflow, the ceiling is simply `cap_s`).

The delay drawn under that ceiling depends on `jitter`:

- ``"full"``:  uniform in [0, ceiling]. Spreads the retries of many clients the most (they do
  not retry in step after a shared outage); the expected wait is ceiling / 2.
- ``"equal"``: uniform in [ceiling / 2, ceiling]. Still spread, but never shorter than half
  the ceiling, so a retry loop cannot spin on near-zero waits.
- ``"none"``:  exactly the ceiling (deterministic; no random draw).

Randomness comes from `rng` when given (seed it for reproducible delays), otherwise from the
`random` module's shared generator. Each jittered call draws exactly one `rng.uniform`.

Callers with 1-based attempt numbers convert at the call site: ``backoff_delay(n - 1, ...)``.
"""

from __future__ import annotations

import math
import random
from typing import Literal, get_args

Jitter = Literal["full", "equal", "none"]
JITTER_MODES: tuple[Jitter, ...] = get_args(Jitter)


def backoff_ceiling(attempt: int, *, base_s: float, cap_s: float) -> float:
    """The upper bound of the delay before retry `attempt` (0-based).

    It is min(cap_s, base_s * 2**attempt): non-decreasing in `attempt`, exact (a power-of-two
    scaling of `base_s`) and safe from overflow for any attempt.
    """
    if attempt < 0:
        raise ValueError(f"attempt is 0-based and must be >= 0, got {attempt}")
    try:
        grown = math.ldexp(base_s, attempt)  # base_s * 2**attempt, exactly
    except OverflowError:
        return cap_s
    return min(cap_s, grown)


def backoff_delay(attempt: int, *, base_s: float, cap_s: float, jitter: Jitter = "full",
                  rng: random.Random | None = None) -> float:
    """Seconds to wait before retry `attempt` (0-based: attempt 0 is the first retry).

    With ceiling = min(cap_s, base_s * 2**attempt), the delay is uniform in [0, ceiling] for
    ``jitter="full"``, uniform in [ceiling / 2, ceiling] for ``"equal"``, and exactly the
    ceiling for ``"none"``. It never exceeds `cap_s`. `rng` (a seeded `random.Random` gives
    reproducible delays) defaults to the `random` module's shared generator.

    Raises ValueError for a negative attempt or an unknown jitter mode.
    """
    if jitter not in JITTER_MODES:
        raise ValueError(f"jitter must be one of {', '.join(JITTER_MODES)}; got {jitter!r}")
    ceiling = backoff_ceiling(attempt, base_s=base_s, cap_s=cap_s)
    draw = rng or random
    if jitter == "full":
        return draw.uniform(0, ceiling)
    if jitter == "equal":
        return ceiling / 2 + draw.uniform(0, ceiling / 2)
    return ceiling
