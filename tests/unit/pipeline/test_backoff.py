"""The shared backoff function: bounds per jitter mode, the cap, growth, determinism."""

from __future__ import annotations

import asyncio
import itertools
import random

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from connectors.cassandra.sink import backoff_delay as sink_backoff_delay
from connectors.redis.cache import RedisCache
from connectors.sources.retry import Backoff
from pipeline.backoff import JITTER_MODES, Jitter, backoff_ceiling, backoff_delay

BASE, CAP = 0.05, 2.0


def ceiling(attempt: int) -> float:
    return min(CAP, BASE * 2**attempt)


@pytest.mark.parametrize("attempt", range(12))
def test_full_jitter_spreads_over_zero_to_the_ceiling(attempt: int) -> None:
    rng = random.Random(attempt)
    delays = [backoff_delay(attempt, base_s=BASE, cap_s=CAP, jitter="full", rng=rng)
              for _ in range(500)]
    assert all(0 <= d <= ceiling(attempt) for d in delays)
    assert min(delays) < ceiling(attempt) * 0.1
    assert max(delays) > ceiling(attempt) * 0.9


@pytest.mark.parametrize("attempt", range(12))
def test_equal_jitter_stays_in_the_upper_half(attempt: int) -> None:
    rng = random.Random(attempt)
    delays = [backoff_delay(attempt, base_s=BASE, cap_s=CAP, jitter="equal", rng=rng)
              for _ in range(500)]
    assert all(ceiling(attempt) / 2 <= d <= ceiling(attempt) for d in delays)
    assert min(delays) < ceiling(attempt) * 0.55
    assert max(delays) > ceiling(attempt) * 0.95


@pytest.mark.parametrize("attempt", range(12))
def test_no_jitter_is_exactly_the_ceiling_and_draws_nothing(attempt: int) -> None:
    rng = random.Random(3)
    state = rng.getstate()
    assert backoff_delay(attempt, base_s=BASE, cap_s=CAP, jitter="none", rng=rng) \
        == ceiling(attempt)
    assert rng.getstate() == state


def test_attempt_zero_is_the_first_retry_and_waits_up_to_the_base() -> None:
    assert backoff_delay(0, base_s=BASE, cap_s=CAP, jitter="none") == BASE
    assert backoff_delay(1, base_s=BASE, cap_s=CAP, jitter="none") == 2 * BASE


@pytest.mark.parametrize("jitter", JITTER_MODES)
@pytest.mark.parametrize("attempt", [6, 7, 30, 31, 100, 1023, 1024, 5000, 10**9])
def test_the_cap_bounds_every_delay_even_for_huge_attempts(jitter: Jitter, attempt: int) -> None:
    rng = random.Random(attempt)
    for _ in range(50):
        delay = backoff_delay(attempt, base_s=BASE, cap_s=CAP, jitter=jitter, rng=rng)
        assert 0 <= delay <= CAP
    assert backoff_ceiling(attempt, base_s=BASE, cap_s=CAP) == CAP


def test_the_upper_bound_doubles_until_the_cap_then_stays() -> None:
    bounds = [backoff_ceiling(a, base_s=BASE, cap_s=CAP) for a in range(2000)]
    assert all(a <= b for a, b in itertools.pairwise(bounds))
    for a, bound in enumerate(bounds[:6]):
        assert bound == BASE * 2**a  # exact: a power-of-two scaling of the base
    assert bounds[5] < CAP and bounds[6] == CAP
    assert set(bounds[6:]) == {CAP}


def test_the_ceiling_is_not_clamped_below_a_far_cap() -> None:
    # A cap far above the base is still reached by doubling (no exponent limit short of it).
    assert backoff_ceiling(40, base_s=1e-9, cap_s=1e9) == 1e-9 * 2**40
    assert backoff_ceiling(2000, base_s=1e-9, cap_s=1e300) == 1e300


@pytest.mark.parametrize("jitter", JITTER_MODES)
def test_a_seeded_rng_gives_the_same_delays(jitter: Jitter) -> None:
    def run(seed: int) -> list[float]:
        rng = random.Random(seed)
        return [backoff_delay(a % 10, base_s=BASE, cap_s=CAP, jitter=jitter, rng=rng)
                for a in range(100)]

    assert run(42) == run(42)
    if jitter != "none":
        assert run(42) != run(43)


def test_without_an_rng_the_random_module_generator_is_used() -> None:
    random.seed(9)
    first = [backoff_delay(3, base_s=BASE, cap_s=CAP, jitter="full") for _ in range(5)]
    random.seed(9)
    assert first == [random.uniform(0, ceiling(3)) for _ in range(5)]


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="0-based"):
        backoff_delay(-1, base_s=BASE, cap_s=CAP)
    with pytest.raises(ValueError, match="jitter"):
        backoff_delay(0, base_s=BASE, cap_s=CAP, jitter="decorrelated")  # type: ignore[arg-type]


# --- the callers keep the delays of their former hand-written formulas, draw for draw --------

def test_the_cassandra_sink_delay_is_the_former_equal_jitter_formula() -> None:
    def former(attempt: int, base_s: float, cap_s: float, rng: random.Random) -> float:
        c = min(cap_s, base_s * (2 ** min(attempt, 30)))
        return c / 2 + rng.uniform(0, c / 2)

    for base_s, cap_s in [(0.05, 5.0), (0.5, 5.0), (0.001, 0.01)]:
        new_rng, old_rng = random.Random(1), random.Random(1)
        for attempt in [*range(40), 10_000]:
            assert sink_backoff_delay(attempt, base_s, cap_s, new_rng) \
                == former(attempt, base_s, cap_s, old_rng)


async def test_the_redis_cache_delay_is_the_former_full_jitter_formula(
        monkeypatch: pytest.MonkeyPatch) -> None:
    def former(failures: int, initial: float, cap: float) -> float:
        return random.uniform(0, min(cap, initial * 2 ** min(failures, 30)))

    slept: list[float] = []

    async def no_sleep(delay: float) -> None:
        slept.append(delay)

    failures_before_success = 40
    calls = 0

    async def flaky() -> str:
        nonlocal calls
        calls += 1
        if calls <= failures_before_success:
            raise RedisConnectionError("down")
        return "ok"

    monkeypatch.setattr(asyncio, "sleep", no_sleep)
    cache = RedisCache("redis://127.0.0.1:1/0", initial_retry_delay_s=0.05,
                       max_retry_delay_s=5.0)  # never connects: `flaky` stands in for Redis
    random.seed(2)
    assert await cache._with_retry("test", flaky) == "ok"
    random.seed(2)
    assert slept == [former(n, 0.05, 5.0) for n in range(1, failures_before_success + 1)]


def test_the_sources_delay_is_the_former_one_based_full_jitter_formula() -> None:
    def former(attempt: int, base_s: float, cap_s: float, rng: random.Random) -> float:
        return rng.uniform(0, min(cap_s, base_s * (2 ** (attempt - 1))))

    for base_s, cap_s in [(0.5, 30.0), (0.5, 4.0), (1.0, 60.0)]:
        backoff = Backoff(base_s=base_s, cap_s=cap_s, max_attempts=50)
        new_rng, old_rng = random.Random(3), random.Random(3)
        for attempt in range(1, 50):
            assert backoff.delay(attempt, rng=new_rng) == former(attempt, base_s, cap_s, old_rng)
