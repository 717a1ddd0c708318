"""FTP and SFTP CSV drops against the simulator's real FTP and SFTP servers, read from Kafka."""

from __future__ import annotations

import asyncio
import os
import time
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
from tests.integration.test_connectors_rest import CrashAfter

pytestmark = pytest.mark.integration

FAULTS = {"duplicate_rate": 0.05, "reorder": True, "malformed_rate": 0.03}
# Two suppliers that write differently: latin-1 with ';' and other header spellings, and
# utf-8 with a BOM.
STYLES = {
    "ftp": {"encoding": "latin-1", "delimiter": ";",
            "header": {"sku": "Item", "quantity": "QUANTITY", "price": "unit_price",
                       "currency": "Currency", "status": "status",
                       "description": "Description"}},
    "sftp": {"encoding": "utf-8", "bom": True},
}


@pytest.fixture
async def sim(tmp_path: Path) -> AsyncIterator[Simulator]:
    config = SimulatorConfig.model_validate({
        "ftp_port": 0, "sftp_port": 0, "drop_dir": str(tmp_path / "drops"), "suppliers": [
            {"id": f"crate-{kind}", "feed": kind, "skus": 250, "changes_per_second": 0,
             "faults": FAULTS, "password": {"env": "DROP_PASSWORD"}, "csv": STYLES[kind]}
            for kind in ("ftp", "sftp")]})
    simulator = Simulator(config, {"DROP_PASSWORD": "pw-for-tests"})
    await simulator.start()
    yield simulator
    await simulator.stop()


def csv_source(sim: Simulator, kind: str, emitter: Any, store: CursorStore, *,
               stable_s: float = 0.3) -> Any:
    port = sim.ftp_port if kind == "ftp" else sim.sftp_port
    delimiter = ";" if kind == "ftp" else ","
    # The simulator serves plain FTP, and SFTP with a host key made at start: both opted
    # out of explicitly, as the demo does.
    transport = "tls: false\n    encoding: latin-1" if kind == "ftp" \
        else "insecure_skip_host_key_check: true"
    config = parse_suppliers(f"""
suppliers:
  - id: crate-{kind}
    kind: {kind}
    endpoint: {kind}://127.0.0.1:{port}/
    {transport}
    credentials: {{username: crate-{kind}, password: {{env: DROP_PASSWORD}}}}
    delimiter: "{delimiter}"
    stable_s: {stable_s}
    mapping:
      sku: [sku, item, item code]
      quantity: [qty on hand, quantity, qty]
      price: [unit price, price]
      currency: currency
      status: status
""")
    return build_source(config.suppliers[0], emitter=emitter, store=store,
                        environ={"DROP_PASSWORD": "pw-for-tests"})


async def poll_until_processed(source: Any, name: str, timeout: float = 20) -> None:
    """Poll as the schedule would until the file `name` is the last one processed."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        await source.poll_once()
        cursor = source.store.get_cursor(source.key) or {}
        if cursor.get("last") and cursor["last"][1] == name:
            return
        assert asyncio.get_running_loop().time() < deadline, f"{name} never processed"
        await asyncio.sleep(0.1)


@pytest.mark.parametrize("kind", ["ftp", "sftp"])
async def test_csv_drops_with_faults_converge_and_dead_letter_bad_rows(
        sim: Simulator, topics: Topics, tmp_path: Path, kind: str) -> None:
    supplier_id = f"crate-{kind}"
    emitter = topics.emitter()
    source = csv_source(sim, kind, emitter, CursorStore(tmp_path / "state.sqlite"))
    try:
        await poll_until_processed(source, sim.writers[supplier_id].drops[-1].path.name)
        for _ in range(3):
            sim.supplier(supplier_id).step(60)
            drop = await sim.drop(supplier_id)
            await poll_until_processed(source, drop.path.name)
    finally:
        await source.close()
        emitter.close()
    state = fold(topics.deltas_read(), supplier_id)
    assert quantities(state) == truth_quantities(sim.truth(supplier_id))
    assert {d["status"] for d in state.values()} <= {"ACTIVE", "DISCONTINUED"}
    dead = topics.dead_read()
    injected = sim.faults[supplier_id].injected["malformed"]
    assert len(dead) == injected > 0
    assert {d["reason"] for d in dead} <= {"bad_row", "bad_sku", "bad_quantity"}
    for d in dead:
        assert d["context"]["file"].startswith(f"stock_{supplier_id}_")
        assert int(d["context"]["row"]) >= 2
        assert d["context"]["connector"] == kind


@pytest.mark.parametrize("kind", ["ftp", "sftp"])
async def test_a_file_still_being_uploaded_is_not_read(
        sim: Simulator, topics: Topics, tmp_path: Path, kind: str) -> None:
    supplier_id = f"crate-{kind}"
    emitter = topics.emitter()
    # The stability window must outlast the supplier's longest stall mid-upload.
    source = csv_source(sim, kind, emitter, CursorStore(tmp_path / "state.sqlite"),
                        stable_s=2.0)
    try:
        previous = sim.writers[supplier_id].drops[-1].path.name
        await poll_until_processed(source, previous)
        sim.supplier(supplier_id).step(60)
        # Half the file, a stall of 1.2 s (several polls see it unchanged), then the rest.
        upload = asyncio.create_task(sim.drop(supplier_id, partial=True, pause_s=1.2))
        polls = 0
        while not upload.done():
            await source.poll_once()
            polls += 1
            cursor = source.store.get_cursor(source.key)
            # (Compared with the file before the upload: the upload may end during a poll.)
            assert cursor["last"][1] == previous, "the half-written file was read"
            await asyncio.sleep(0.1)
        assert polls >= 5
        drop = upload.result()
        await poll_until_processed(source, drop.path.name)
        cursor = source.store.get_cursor(source.key)
        assert cursor["last"][2] == drop.path.stat().st_size
    finally:
        await source.close()
        emitter.close()
    assert all(d["context"]["file"] != drop.path.name or d["reason"] in
               ("bad_row", "bad_sku", "bad_quantity") for d in topics.dead_read())
    state = fold(topics.deltas_read(), supplier_id)
    assert quantities(state) == truth_quantities(sim.truth(supplier_id))


async def test_csv_restart_mid_file_resumes_without_loss(
        sim: Simulator, topics: Topics, tmp_path: Path) -> None:
    supplier_id = "crate-sftp"
    emitter = topics.emitter()
    path = tmp_path / "state.sqlite"
    first = csv_source(sim, "sftp", emitter, CursorStore(path))
    try:
        await poll_until_processed(first, sim.writers[supplier_id].drops[-1].path.name)
        sim.supplier(supplier_id).step(80)
        drop = await sim.drop(supplier_id)
        first.emitter = CrashAfter(emitter, 0)  # dies while sending this file's deltas
        with pytest.raises(ConnectionError):
            await poll_until_processed(first, drop.path.name)
    finally:
        await first.close()
        first.store.close()
    second = csv_source(sim, "sftp", emitter, CursorStore(path))
    try:
        await poll_until_processed(second, drop.path.name)
    finally:
        await second.close()
        emitter.close()
    produced = topics.deltas_read()
    state = fold(produced, supplier_id)
    assert quantities(state) == truth_quantities(sim.truth(supplier_id))


async def test_a_file_that_is_not_utf_8_is_dead_lettered_whole_and_the_feed_goes_on(
        sim: Simulator, topics: Topics, tmp_path: Path) -> None:
    supplier_id = "crate-sftp"
    emitter = topics.emitter()
    source = csv_source(sim, "sftp", emitter, CursorStore(tmp_path / "state.sqlite"))
    try:
        first = sim.writers[supplier_id].drops[-1].path
        await poll_until_processed(source, first.name)
        # The supplier's next file has one stray 0xFF byte: not read as latin-1, refused whole.
        bad = first.with_name("stock_crate-sftp_9.csv")
        bad.write_bytes(first.read_bytes().replace(b"\r\n", b"\xff\r\n", 5))
        # SFTP times are whole seconds: one second after the first file, and the next drop
        # only once the clock is past it, so the three are in order whatever the speed.
        bad_mtime = int(first.stat().st_mtime) + 1
        os.utime(bad, (bad_mtime, bad_mtime))
        produced = topics.end_offsets(topics.deltas)
        await poll_until_processed(source, bad.name)
        assert topics.end_offsets(topics.deltas) == produced  # nothing of it applied
        sim.supplier(supplier_id).step(40)
        while time.time() < bad_mtime + 1:
            await asyncio.sleep(0.05)
        drop = await sim.drop(supplier_id)
        await poll_until_processed(source, drop.path.name)
    finally:
        await source.close()
        emitter.close()
    refused = [d for d in topics.dead_read() if d["context"]["file"] == bad.name]
    assert [d["reason"] for d in refused] == ["decode_error"]
    state = fold(topics.deltas_read(), supplier_id)
    assert quantities(state) == truth_quantities(sim.truth(supplier_id))
