"""Agent tests run the real agents on in-process batches, with the tables on a temp dir."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from typing import Any

import pytest

# Before pipeline.app is imported anywhere: own app id, no sink/cache I/O from settings.
os.environ["STOCKFLOW_APP_ID"] = "stockflow-agent-tests"
if "pipeline.app" not in sys.modules:
    from pipeline.settings import get_settings

    get_settings.cache_clear()


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
