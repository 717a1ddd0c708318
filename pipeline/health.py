"""Liveness and readiness of a worker, and the sizes of its tables, read from the Faust app.

Live: the process answers. Ready: table recovery has finished and no rebalance is in
progress, so the tables hold every key of the assigned partitions and the agents are
consuming. Faust sets `tables.recovery.completed` once the first recovery is done (it never
clears it) and `app.in_recovery` / `app.rebalancing` while a later one runs.
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
    """Read the state of a Faust app (never blocks: flags only)."""
    recovery = getattr(app.tables, "_recovery", None)
    completed = bool(recovery is not None and recovery.completed.is_set())
    in_recovery = bool(getattr(app, "in_recovery", False))
    rebalancing = bool(getattr(app, "rebalancing", False))
    try:
        assigned = len(app.assignor.assigned_actives())
    except Exception:  # the assignor is not set up before the first rebalance
        assigned = 0
    return WorkerHealth(
        app_id=str(app.conf.id), recovery_completed=completed, in_recovery=in_recovery,
        rebalancing=rebalancing, rebalances=int(getattr(app, "rebalancing_count", 0)),
        assigned_partitions=assigned,
        ready=is_ready(recovery_completed=completed, in_recovery=in_recovery,
                       rebalancing=rebalancing),
    )


def table_keys(table: Any) -> int | None:
    """Keys of a table in this worker's active partitions; None when the store cannot tell.

    RocksDB: the sum of `rocksdb.estimate-num-keys` of the open partition databases (cheap;
    counting by iteration would block the event loop on a large table). Memory: exact.
    """
    store = table.data
    dbs = getattr(store, "_dbs", None)
    if dbs is not None:
        total = 0
        for db in store._dbs_for_actives():
            value = db.property_int_value("rocksdb.estimate-num-keys")
            if value is None:
                return None
            total += int(value)
        return total
    data = getattr(store, "data", None)
    return len(data) if data is not None else None


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
