"""REST polling against the simulator's real REST server, read back from a private Kafka topic."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY
from structlog.testing import capture_logs

from connectors.simulator.config import SimulatorConfig
from connectors.simulator.runner import Simulator
from connectors.sources.circuit_breaker import CircuitOpenError
from connectors.sources.cursor_store import CursorStore
from connectors.sources.retry import RetryableError
from connectors.sources.service import build_source
from connectors.suppliers import parse_suppliers
from tests.integration.connectors_kafka import (
    Topics,
    fold,
    quantities,
    truth_quantities,
)

pytestmark = pytest.mark.integration

FAULTY = "acme-rest"
CLEAN = "plain-rest"


@pytest.fixture
async def sim(tmp_path: Path) -> AsyncIterator[Simulator]:
    config = SimulatorConfig.model_validate({
        "http_port": 0, "drop_dir": str(tmp_path / "drops"), "suppliers": [
            {"id": FAULTY, "feed": "rest", "skus": 300, "changes_per_second": 0,
             "faults": {"duplicate_rate": 0.1, "reorder": True, "malformed_rate": 0.03,
                        "error_rate": 0.08, "error_burst": 2, "throttle_rate": 0.05}},
            {"id": CLEAN, "feed": "rest", "skus": 120, "changes_per_second": 0},
        ]})
    simulator = Simulator(config)
    await simulator.start()
    yield simulator
    await simulator.stop()


def rest_source(sim: Simulator, supplier: str, emitter: Any, store: CursorStore, *,
                page_size: int = 40, breaker: int = 50, attempts: int = 8,
                timeout_s: float = 1.0):
    config = parse_suppliers(f"""
suppliers:
  - id: {supplier}
    kind: rest
    endpoint: http://127.0.0.1:{sim.http_port}/v1/suppliers/{supplier}/inventory
    page_size: {page_size}
    timeout_s: {timeout_s}
    rate_limit: {{per_second: 500, burst: 50}}
    retry: {{base_s: 0.02, cap_s: 0.3, max_attempts: {attempts}}}
    circuit_breaker: {{failure_threshold: {breaker}, reset_timeout_s: 0.3}}
    mapping:
      sku: item_code
      quantity: qty
      sequence: version
      observed_at: updated_at
      price: unit_price
      currency: currency
      status: status
      warehouse: warehouse
""")
    return build_source(config.suppliers[0], emitter=emitter, store=store, environ={})


async def poll_through(source: Any, tries: int = 5) -> None:
    """One poll as the run loop does it: a poll that gave up is simply polled again."""
    for _ in range(tries - 1):
        try:
            await source.poll_once()
            return
        except RetryableError:
            continue
    await source.poll_once()


class CrashAfter:
    """An emitter that dies after `calls` successful emits: the process crashing mid-feed."""

    def __init__(self, inner: Any, calls: int) -> None:
        self.inner, self.calls = inner, calls

    async def emit(self, deltas: list[dict[str, Any]], dead: list[dict[str, Any]]) -> None:
        if self.calls <= 0:
            raise ConnectionError("crashed")
        self.calls -= 1
        await self.inner.emit(deltas, dead)


async def test_rest_with_faults_converges_to_the_supplier_state(
        sim: Simulator, topics: Topics, tmp_path: Path) -> None:
    emitter = topics.emitter()
    store = CursorStore(tmp_path / "state.sqlite")
    source = rest_source(sim, FAULTY, emitter, store)
    faults = sim.faults[FAULTY]
    try:
        await poll_through(source)
        for round_ in range(4):
            sim.supplier(FAULTY).step(80)
            if round_ == 0:
                faults.fail_next(3, status=503)  # a 5xx burst
            if round_ == 1:
                faults.slow_next(1, 1.5)  # slower than the 1 s client timeout
                faults.fail_next(1, status=429)
            if round_ == 2:
                faults.outage(0.3)  # connections dropped
            await poll_through(source)
    finally:
        await source.close()
        emitter.close()

    assert faults.injected["status_503"] >= 3 and faults.injected["slow"] >= 1
    assert faults.injected["outage"] >= 1 and faults.injected["duplicate"] > 0
    state = fold(topics.deltas_read(), FAULTY)
    truth = sim.truth(FAULTY)
    assert quantities(state) == truth_quantities(truth)
    assert {s: d["sequence"] for s, d in state.items()} == {s: t["version"]
                                                            for s, t in truth.items()}
    assert all(d["connector"] == "rest" and d["received_at"] > 0 for d in state.values())
    dead = topics.dead_read()
    assert len(dead) == faults.injected["malformed"] > 0
    assert {d["reason"] for d in dead} <= {"bad_sku", "bad_quantity", "quantity_out_of_range"}
    assert all({"url", "page", "index"} <= set(d["context"]) for d in dead)


async def test_rest_restart_mid_feed_resumes_from_the_stored_page_token(
        sim: Simulator, topics: Topics, tmp_path: Path) -> None:
    emitter = topics.emitter()
    path = tmp_path / "state.sqlite"
    first = rest_source(sim, CLEAN, CrashAfter(emitter, 2), CursorStore(path), page_size=30)
    with pytest.raises(ConnectionError):
        await first.poll_once()
    await first.close()
    first.store.close()
    cursor = CursorStore(path).get_cursor(f"rest:{CLEAN}")
    assert cursor is not None and cursor["page_token"], cursor

    sim.supplier(CLEAN).step(40)  # the supplier moves on while the connector is down
    second = rest_source(sim, CLEAN, emitter, CursorStore(path), page_size=30)
    try:
        await second.poll_once()
    finally:
        await second.close()
        emitter.close()
    produced = topics.deltas_read()
    # Resumed, not restarted: no event was produced twice.
    assert len({d["event_id"] for d in produced}) == len(produced)
    assert quantities(fold(produced, CLEAN)) == truth_quantities(sim.truth(CLEAN))


async def test_rest_unchanged_feed_is_answered_304_with_the_stored_etag(
        sim: Simulator, topics: Topics, tmp_path: Path) -> None:
    emitter = topics.emitter()
    source = rest_source(sim, CLEAN, emitter, CursorStore(tmp_path / "s.sqlite"), page_size=500)

    def not_modified() -> float:
        return REGISTRY.get_sample_value("stockflow_connector_requests_total", {
            "supplier": CLEAN, "connector": "rest", "outcome": "not_modified"}) or 0.0

    try:
        assert await source.poll_once() == 120
        await source.poll_once()  # the boundary items again: same event ids, ETag stored
        before = not_modified()
        assert await source.poll_once() == 0
        assert not_modified() == before + 1
        sim.supplier(CLEAN).step(5)
        assert await source.poll_once() > 0
    finally:
        await source.close()
        emitter.close()


async def test_rest_circuit_breaker_opens_in_logs_and_metrics_then_recovers(
        sim: Simulator, topics: Topics, tmp_path: Path) -> None:
    emitter = topics.emitter()
    source = rest_source(sim, CLEAN, emitter, CursorStore(tmp_path / "s.sqlite"), breaker=3,
                         attempts=3)

    def gauge() -> float | None:
        return REGISTRY.get_sample_value("stockflow_connector_circuit_state",
                                         {"supplier": CLEAN})

    try:
        sim.faults[CLEAN].outage(60)
        with capture_logs() as logs:
            with pytest.raises(RetryableError):
                await source.poll_once()
            requests = sim.http.requests[CLEAN]
            with pytest.raises(CircuitOpenError):
                await source.poll_once()
        assert sim.http.requests[CLEAN] == requests  # open: the supplier was not called
        assert gauge() == 2
        assert any(e.get("state") == "open" and e.get("supplier") == CLEAN for e in logs)

        sim.faults[CLEAN].down_until = 0  # the supplier is back
        deadline = asyncio.get_running_loop().time() + 5
        while True:
            try:
                await source.poll_once()
                break
            except CircuitOpenError:
                assert asyncio.get_running_loop().time() < deadline, "breaker never half-opened"
                await asyncio.sleep(0.1)
        assert gauge() == 0
    finally:
        await source.close()
        emitter.close()
    assert quantities(fold(topics.deltas_read(), CLEAN)) == truth_quantities(sim.truth(CLEAN))
