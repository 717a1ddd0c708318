"""Cassandra outage: the shared Cassandra is stopped for 30 s mid-stream; nothing is lost.

This stops the Cassandra every engineer shares (`stockflow stack down cassandra`) and starts
it again, so it lives in its own file: deselect it with
`pytest -m integration --deselect tests/integration/test_cassandra_outage.py` (or
`--ignore=tests/integration/test_cassandra_outage.py`) and run it alone, rarely.
"""

from __future__ import annotations

import asyncio
import random
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import connectors.cassandra.sink as cassandra_sink
from connectors.cassandra.cluster import ClusterConfig, connect
from connectors.cassandra.schema import migrate
from connectors.cassandra.sink import CassandraSink, stock_bucket
from pipeline.shell.stack import _probe_cassandra
from tests.integration.test_cassandra_sink import LOCAL_REPLICATION, stock_update

pytestmark = pytest.mark.integration

OUTAGE_S = 30.0
BUCKETS = 8
REPO = Path(__file__).resolve().parents[2]


def stack(action: str) -> None:
    """`stockflow stack <action> cassandra` (up waits until Cassandra answers)."""
    subprocess.run([sys.executable, "-m", "pipeline.shell.cli", "stack", action, "cassandra"],
                   check=True, timeout=400, capture_output=True, cwd=REPO)


def cassandra_answers() -> bool:
    try:
        return _probe_cassandra() is not None
    except Exception:
        return False


@pytest.fixture(scope="module")
def cassandra_restored() -> Iterator[None]:
    """Whatever happens in the test, Cassandra is running again when the module ends."""
    try:
        yield
    finally:
        if not cassandra_answers():
            stack("up")


@pytest.fixture
def keyspace(cassandra_restored: None) -> Iterator[tuple[Any, str]]:
    ks = "sf_outage_" + uuid.uuid4().hex[:10]
    cluster, session = connect(ClusterConfig())
    migrate(session, ks, replication=LOCAL_REPLICATION, history_ttl_s=3600,
            stock_buckets=BUCKETS)
    try:
        yield session, ks
    finally:
        if cassandra_answers():
            session.execute(f"DROP KEYSPACE IF EXISTS {ks}", timeout=120)
        cluster.shutdown()


class RecordingLog:
    """Stands in for the sink's logger: records event names."""

    def __init__(self) -> None:
        self.events: list[tuple[float, str]] = []

    def _record(self, event: str, **_kw: Any) -> None:
        self.events.append((time.monotonic(), event))

    info = warning = error = debug = _record


async def test_sink_survives_a_30s_cassandra_outage_without_losing_a_row(
        keyspace: tuple[Any, str], monkeypatch: pytest.MonkeyPatch) -> None:
    session, ks = keyspace
    recorder = RecordingLog()
    monkeypatch.setattr(cassandra_sink, "log", recorder)
    rng = random.Random(4)
    keys = [(f"sup-{i % 6}", f"sku-{i}") for i in range(120)]
    versions: dict[tuple[str, str], int] = {}
    queue: list[dict[str, Any]] = []  # what Kafka would hold: produced, not yet written
    produced: list[dict[str, Any]] = []
    acked: list[dict[str, Any]] = []
    producing = asyncio.Event()
    producing.set()
    sink = CassandraSink(keyspace=ks, max_in_flight=32, retry_base_delay_s=0.05,
                         max_retry_delay_s=2.0, request_timeout_s=5.0,
                         reconnect_max_delay_s=2.0, outage_log_interval_s=5.0)
    await sink.start()

    async def produce() -> None:
        """Suppliers keep sending whether or not Cassandra is up (Kafka buffers it)."""
        while producing.is_set():
            for _ in range(10):
                key = rng.choice(keys)
                versions[key] = versions.get(key, 0) + rng.randint(1, 3)
                u = stock_update(*key, versions[key], rng.randrange(0, 1000))
                queue.append(u)
                produced.append(u)
            await asyncio.sleep(0.05)

    async def consume() -> None:
        """The aggregate agent: take a batch, write it, only then count it as done."""
        while producing.is_set() or queue:
            if not queue:
                await asyncio.sleep(0.02)
                continue
            batch = queue[:200]
            await sink.write_batch(batch)
            del queue[:len(batch)]
            acked.extend(batch)

    producer = asyncio.create_task(produce())
    consumer = asyncio.create_task(consume())
    try:
        deadline = time.monotonic() + 30
        while len(acked) < 300:
            assert time.monotonic() < deadline, "no writes before the outage"
            assert not consumer.done(), consumer
            await asyncio.sleep(0.1)

        await asyncio.to_thread(stack, "down")
        down_at = time.monotonic()
        acked_when_down = len(acked)
        try:
            # The outage: the consumer must neither crash nor finish; it waits in write_batch.
            done, _ = await asyncio.wait({consumer}, timeout=OUTAGE_S)
            assert not done, f"the consumer ended during the outage: {consumer}"
            assert len(acked) == acked_when_down, "a batch was acked while Cassandra was down"
            assert len(queue) > 0
        finally:
            await asyncio.to_thread(stack, "up")
        up_at = time.monotonic()

        # Recovery: the backlog drains without any help.
        deadline = time.monotonic() + 120
        while len(acked) < len(produced) - 200:
            assert time.monotonic() < deadline, f"backlog not drained: {len(queue)} left"
            assert not consumer.done(), consumer
            await asyncio.sleep(0.2)
    finally:
        producing.clear()
        await asyncio.wait_for(producer, timeout=10)
        await asyncio.wait_for(consumer, timeout=180)  # re-raises a consumer exception
        await sink.close()

    assert acked == produced  # every produced event written, in order, none lost
    assert sink.stats.outages >= 1 and sink.stats.retries > 0
    retry_logs = [t for t, event in recorder.events if event == "cassandra.write_retrying"]
    assert 2 <= len(retry_logs) <= (up_at - down_at) / 5.0 + 3  # once per interval, not per try
    assert any(event == "cassandra.write_recovered" for _, event in recorder.events)

    deadline = time.monotonic() + 60
    while True:  # the checking session reconnects on its own schedule
        try:
            session.execute("SELECT release_version FROM system.local")
            break
        except Exception:
            assert time.monotonic() < deadline, "the checking session did not reconnect"
            await asyncio.sleep(0.5)

    expected: dict[tuple[str, str], dict[str, Any]] = {}
    for u in produced:
        expected[(u["supplier_id"], u["sku"])] = u  # versions only grow per key
    for (supplier, sku), u in expected.items():
        row = session.execute(
            f"SELECT quantity, version FROM {ks}.availability_by_sku "
            "WHERE platform_sku = %s AND supplier_id = %s", (u["platform_sku"], supplier)).one()
        assert (row.quantity, row.version) == (u["quantity_after"], u["version"]), (supplier, sku)
        srow = session.execute(
            f"SELECT quantity, version FROM {ks}.stock_by_supplier "
            "WHERE supplier_id = %s AND bucket = %s AND sku = %s",
            (supplier, stock_bucket(sku, BUCKETS), sku)).one()
        assert (srow.quantity, srow.version) == (u["quantity_after"], u["version"])
    history = {(r.supplier_id, r.sku, r.version) for r in session.execute(
        f"SELECT supplier_id, sku, version FROM {ks}.change_history")}
    assert history == {(u["supplier_id"], u["sku"], u["version"]) for u in produced}
