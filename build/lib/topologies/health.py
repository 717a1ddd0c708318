"""Worker health on Faust's web server: GET /health (live), GET /ready (tables recovered).

Faust's own web server starts with the app, before table recovery, so /health answers
during a long recovery while /ready says 503 until it is over. A timer keeps the readiness,
rebalance and table-size gauges current for Prometheus.
"""

from __future__ import annotations

from typing import Any

from topologies.aggregate import availability
from topologies.app import app
from topologies.process_deltas import stock
from topologies.runtime.health import record_worker_metrics, worker_health

TABLES: dict[str, Any] = {"stock": stock, "availability": availability}
METRICS_INTERVAL_S = 5.0


@app.page("/health")
async def health(self: Any, request: Any) -> Any:
    """Liveness: the process and its event loop answer."""
    return self.json({"status": "ok", **worker_health(self.app).as_dict()})


@app.page("/ready")
async def ready(self: Any, request: Any) -> Any:
    """Readiness: 200 once table recovery finished and no rebalance runs, else 503."""
    state = worker_health(self.app)
    return self.json({"status": "ready" if state.ready else "not_ready", **state.as_dict()},
                     status=200 if state.ready else 503)


@app.timer(METRICS_INTERVAL_S)
async def record_health_metrics() -> None:
    """Refresh the stockflow_worker_ready, rebalance and table-size gauges."""
    record_worker_metrics(app, TABLES)
