"""The worker runtime: how stockflow's Faust agents and tables are fed, committed and restored.

Everything stockflow changes about Faust lives in this folder and is installed by
`install(app, settings)`, called where the app is created (topologies/app.py), never at import:

- `conf.Table` = BatchTable (table.py): values decoded in memory, written once per commit.
- the app's boot strategy (boot.py): Faust starts its sensors, web server and agents; the
  Kafka consumer, producer and table manager of Faust are replaced by the batch runtime.
- BatchRuntime (worker.py): confluent-kafka consumer and transactional producer, one batch
  per poll per agent (batches.py), the commit protocol, rebalances and table restore.
"""

from __future__ import annotations

from typing import Any

from topologies.runtime.batches import Batch, InputBatches
from topologies.runtime.boot import BatchBootStrategy, check_versions
from topologies.runtime.table import BatchTable, table_factory
from topologies.runtime.worker import BatchRuntime


def install(app: Any, settings: Any) -> BatchRuntime:
    """Install the batch runtime on a freshly created app; returns it."""
    check_versions()
    runtime = BatchRuntime(app, settings, loop=app.loop, beacon=app.beacon)
    app.conf.Table = table_factory(settings.table_cache_keys)
    app.boot_strategy = BatchBootStrategy(app, runtime=runtime)
    app.runtime = runtime
    return runtime


__all__ = ["Batch", "BatchRuntime", "BatchTable", "InputBatches", "install"]
