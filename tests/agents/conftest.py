"""Agent tests run the real agents on in-process batches, with the tables on a temp dir."""

from __future__ import annotations

import os
import sys

# Before pipeline.app is imported anywhere: own app id, no sink/cache I/O from settings.
os.environ["STOCKFLOW_APP_ID"] = "stockflow-agent-tests"
if "pipeline.app" not in sys.modules:
    from pipeline.settings import get_settings

    get_settings.cache_clear()
