"""Liveness and readiness of a worker, and the sizes of its tables, read from the Faust app.

Live: the process answers. Ready: the first assignment has been restored and no rebalance is
in progress, so the tables hold every key of the assigned partitions and the agents are
consuming (the batch runtime restores a partition's table inside the assignment).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from pipeline import metrics


@dataclass(frozen=True, slots=True)
class WorkerHealth:
    """What /health and /ready report."""

    app_id: str
    ready: bool
    recovery_completed: bool
    in_recovery: bool
    rebalancing: bool
    rebalances: int
    assigned_partitions: int

    @property
    def reason(self) -> str:
        """Why the worker is not ready ("" when it is)."""
        if self.ready:
            return ""
        if not self.recovery_completed or self.in_recovery:
            return "table recovery in progress"
        return "rebalance in progress"

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "reason": self.reason}


def is_ready(*, recovery_completed: bool, in_recovery: bool, rebalancing: bool) -> bool:
    """Ready only after the first recovery and while no later one or rebalance runs."""
    return recovery_completed and not in_recovery and not rebalancing


def worker_health(app: Any) -> WorkerHealth:
    """Read the state of the worker's batch runtime (never blocks: flags only)."""
    runtime = getattr(app, "runtime", None)
    completed = bool(runtime is not None and runtime.rebalances > 0)
    rebalancing = bool(runtime is None or runtime.rebalancing)
    assigned = len(runtime.assignment) if runtime is not None else 0
    return WorkerHealth(
        app_id=str(app.conf.id), recovery_completed=completed, in_recovery=False,
        rebalancing=rebalancing, rebalances=runtime.rebalances if runtime is not None else 0,
        assigned_partitions=assigned,
        ready=is_ready(recovery_completed=completed, in_recovery=False,
                       rebalancing=rebalancing),
    )


def table_keys(table: Any) -> int | None:
    """Keys of a table in this worker's assigned partitions (RocksDB's estimate-num-keys, cheap;
    counting by iteration would block the event loop on a large table)."""
    try:
        return int(table.keys_estimate())
    except Exception:  # a partition closed by a rebalance while being read
        return None


def record_worker_metrics(app: Any, tables: dict[str, Any]) -> WorkerHealth:
    """Set the readiness, rebalance and table-size gauges; returns the health it read."""
    health = worker_health(app)
    metrics.WORKER_READY.set(1 if health.ready else 0)
    metrics.REBALANCES.set(health.rebalances)
    for name, table in tables.items():
        keys = table_keys(table)
        if keys is not None:
            metrics.TABLE_KEYS.labels(name).set(keys)
    return health
