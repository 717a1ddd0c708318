"""The freshness benchmark's quantile over the difference of two histogram scrapes."""

from __future__ import annotations

import math

from bench.cache_freshness import quantile

INF = float("inf")


def test_quantile_interpolates_inside_the_bucket_of_the_window_only() -> None:
    before = [(0.1, 100.0), (0.2, 100.0), (0.5, 100.0), (INF, 100.0)]
    # In the window: 50 observations <= 0.1 s, 50 in (0.1, 0.2], none above.
    after = [(0.1, 150.0), (0.2, 200.0), (0.5, 200.0), (INF, 200.0)]
    assert math.isclose(quantile(before, after, 0.5), 0.1)
    assert math.isclose(quantile(before, after, 0.99), 0.1 + 0.1 * 49 / 50)
    assert math.isclose(quantile(before, after, 0.25), 0.05)


def test_quantile_in_the_overflow_bucket_reports_its_lower_edge_and_empty_is_nan() -> None:
    after = [(0.1, 0.0), (0.5, 1.0), (INF, 10.0)]
    assert quantile([], after, 0.99) == 0.5
    assert math.isnan(quantile(after, after, 0.5))
