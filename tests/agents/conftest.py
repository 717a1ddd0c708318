"""Agent tests run the real agents with Faust's test_context and the in-memory table store."""

from __future__ import annotations

import os
import sys

# Before pipeline.app is imported anywhere: memory store, no sink/cache I/O, own app id.
os.environ["STOCKFLOW_STORE"] = "memory://"
os.environ["STOCKFLOW_APP_ID"] = "stockflow-agent-tests"
if "pipeline.app" not in sys.modules:
    from pipeline.settings import get_settings

    get_settings.cache_clear()
