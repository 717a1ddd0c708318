"""Agent tests run the real agents on in-process batches, with the tables on a temp dir."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from typing import Any

import pytest

# Before topologies.app is imported anywhere: own app id, no sink/cache I/O from settings.
os.environ["STOCKFLOW_APP_ID"] = "stockflow-agent-tests"
if "topologies.app" not in sys.modules:
    from pipeline.settings import get_settings

    get_settings.cache_clear()

# The app is built here, before any test module computes its NOW: building it takes seconds on
# a busy machine, and a record older than tracing_slow_record_s is traced as a slow one.
import topologies.app  # noqa: F401


class _NoCache:
    """Takes every cache write and keeps nothing (a test that checks them sets its own)."""

    async def apply_batch(self, changes: list[dict[str, Any]]) -> int:
        return len(changes)

    async def close(self) -> None:
        return None


@pytest.fixture(autouse=True)
def no_redis() -> Iterator[None]:
    """The aggregate agent writes the cache inline: never the real Redis from these tests
    (an environment variable would leak into the workers other test modules start)."""
    from topologies import refresh_cache

    refresh_cache.set_cache(_NoCache())
    yield
    refresh_cache.set_cache(None)
