"""GraphQL polling against the simulator's real GraphQL API, read back from Kafka."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from connectors.simulator.config import SimulatorConfig
from connectors.simulator.runner import Simulator
from connectors.sources.cursor_store import CursorStore
from connectors.sources.service import build_source
from connectors.suppliers import parse_suppliers
from tests.integration.connectors_kafka import (
    Topics,
    fold,
    quantities,
    truth_quantities,
)
from tests.integration.test_connectors_rest import CrashAfter, poll_through

pytestmark = pytest.mark.integration

SUPPLIER = "echo-gql"


@pytest.fixture
async def sim(tmp_path: Path) -> AsyncIterator[Simulator]:
    config = SimulatorConfig.model_validate({
        "http_port": 0, "drop_dir": str(tmp_path / "drops"), "suppliers": [
            {"id": SUPPLIER, "feed": "graphql", "skus": 250, "changes_per_second": 0,
             "token": {"env": "ECHO_TOKEN"},
             "faults": {"duplicate_rate": 0.1, "reorder": True, "malformed_rate": 0.03,
                        "error_rate": 0.08, "error_burst": 2, "throttle_rate": 0.03}}]})
    simulator = Simulator(config, {"ECHO_TOKEN": "tok"})
    await simulator.start()
    yield simulator
    await simulator.stop()


def gql_source(sim: Simulator, emitter: Any, store: CursorStore) -> Any:
    config = parse_suppliers(f"""
suppliers:
  - id: {SUPPLIER}
    kind: graphql
    endpoint: http://127.0.0.1:{sim.http_port}/graphql
    allow_plain_http: true
    credentials: {{bearer: {{env: ECHO_TOKEN}}}}
    page_size: 40
    timeout_s: 1.0
    rate_limit: {{per_second: 500, burst: 50}}
    retry: {{base_s: 0.02, cap_s: 0.3, max_attempts: 8}}
    circuit_breaker: {{failure_threshold: 50}}
    mapping:
      sku: sku
      quantity: onHand
      sequence: version
      observed_at: updatedAt
      price: price
      currency: currency
      status: status
""")
    return build_source(config.suppliers[0], emitter=emitter, store=store,
                        environ={"ECHO_TOKEN": "tok"})


async def test_graphql_with_faults_and_a_restart_converges(
        sim: Simulator, topics: Topics, tmp_path: Path) -> None:
    emitter = topics.emitter()
    path = tmp_path / "state.sqlite"
    faults = sim.faults[SUPPLIER]
    first = gql_source(sim, CrashAfter(emitter, 3), CursorStore(path))
    with pytest.raises(ConnectionError):
        await poll_through(first)
    await first.close()
    first.store.close()
    assert (CursorStore(path).get_cursor(f"graphql:{SUPPLIER}") or {}).get("after")

    second = gql_source(sim, emitter, CursorStore(path))
    try:
        for round_ in range(3):
            sim.supplier(SUPPLIER).step(70)
            if round_ == 1:
                faults.fail_next(2, status=502)
                faults.slow_next(1, 1.5)
            if round_ == 2:
                faults.outage(0.3)
            await poll_through(second)
    finally:
        await second.close()
        emitter.close()
    state = fold(topics.deltas_read(), SUPPLIER)
    truth = sim.truth(SUPPLIER)
    assert quantities(state) == truth_quantities(truth)
    assert {s: d["sequence"] for s, d in state.items()} == {s: t["version"]
                                                            for s, t in truth.items()}
    assert all(d["connector"] == "graphql" for d in state.values())
    dead = topics.dead_read()
    assert len(dead) >= faults.injected["malformed"] > 0  # a crashed page is re-read
    assert len({d["original"] for d in dead}) <= faults.injected["malformed"]
    assert {d["reason"] for d in dead} <= {"bad_sku", "bad_quantity"}
