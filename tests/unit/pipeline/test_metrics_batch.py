"""observe_many: a batch of observations gives the exposition `observe` per value gives."""

from __future__ import annotations

import math
import random

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.exposition import generate_latest

from pipeline.metrics import observe_many

BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


def _histogram() -> tuple[CollectorRegistry, Histogram]:
    registry = CollectorRegistry()
    return registry, Histogram("h_seconds", "x", ["stage"], buckets=BUCKETS, registry=registry)


def _exposition(registry: CollectorRegistry) -> list[str]:
    # `_created` is the creation time of each registry's series: not the observations.
    return [line for line in generate_latest(registry).decode().splitlines()
            if "_created" not in line]


def test_observe_many_matches_observe_per_value_on_every_bucket_edge_and_beyond() -> None:
    rng = random.Random(7)
    values = [*BUCKETS, 0.0, 45.0, math.inf, *(rng.uniform(0, 40) for _ in range(500))]
    one, h1 = _histogram()
    many, h2 = _histogram()
    for value in values:
        h1.labels("redis").observe(value)
    assert observe_many(h2.labels("redis"), iter(values)) == len(values)
    assert _exposition(many) == _exposition(one)


def test_observe_many_of_nothing_changes_nothing() -> None:
    empty, _ = _histogram()
    registry, h = _histogram()
    assert observe_many(h.labels("redis"), []) == 0
    h.labels("redis")
    _.labels("redis")
    assert _exposition(registry) == _exposition(empty)


def test_a_histogram_without_the_expected_internals_gets_observe_per_value() -> None:
    class Plain:
        def __init__(self) -> None:
            self.seen: list[float] = []

        def observe(self, value: float) -> None:
            self.seen.append(value)

    plain = Plain()
    assert observe_many(plain, (0.1, 0.2)) == 2
    assert plain.seen == [0.1, 0.2]
