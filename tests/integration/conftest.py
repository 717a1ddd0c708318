"""Fixtures shared by the integration tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.pipeline_env import PipelineEnv
from tests.integration.connectors_kafka import Topics, private_topics


@pytest.fixture
def kafka_only_env(tmp_path: Path) -> Iterator[PipelineEnv]:
    """An isolated pipeline (topics, keyspace) whose workers write neither Cassandra nor Redis."""
    env = PipelineEnv(tmp_path, extra_env={"STOCKFLOW_SINK_ENABLED": "false",
                                           "STOCKFLOW_CACHE_ENABLED": "false"}).setup()
    yield env
    env.cleanup()


@pytest.fixture
def topics() -> Iterator[Topics]:
    """Private deltas/dead-letter topics for one connector test, deleted afterwards."""
    yield from private_topics()
