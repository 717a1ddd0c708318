"""Fixtures shared by the integration tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.integration.connectors_kafka import Topics, private_topics


@pytest.fixture
def topics() -> Iterator[Topics]:
    """Private deltas/dead-letter topics for one connector test, deleted afterwards."""
    yield from private_topics()
