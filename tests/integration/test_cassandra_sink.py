"""The Cassandra sink against the real Cassandra: reference rows, no regression, exact keys."""

from __future__ import annotations

import contextlib
import random
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from typer.testing import CliRunner

from connectors.cassandra.cluster import ClusterConfig, connect
from connectors.cassandra.read import (
    epoch_millis,
    iter_availability,
    iter_sku_availability,
    read_availability,
)
from connectors.cassandra.schema import applied_versions, migrate
from connectors.cassandra.sink import CassandraSink, stock_bucket
from pipeline.errors import SinkError

pytestmark = pytest.mark.integration

LOCAL_REPLICATION = "{'class': 'SimpleStrategy', 'replication_factor': 1}"
BUCKETS = 16


def stock_update(supplier: str, sku: str, version: int, quantity: int, *,
                 platform_sku: str | None = None, status: str = "ACTIVE",
                 quantity_before: int = 0, price: str | None = "9.90",
                 lead_time_days: int | None = 3) -> dict[str, Any]:
    """A StockUpdate dict as the apply step produces it."""
    return {
        "platform_sku": platform_sku if platform_sku is not None else f"P:{sku}",
        "supplier_id": supplier, "sku": sku,
        "quantity_before": quantity_before, "quantity_after": quantity, "version": version,
        "status": status, "cause": "SNAPSHOT", "event_id": f"{supplier}/{sku}/{version}",
        "observed_at": 1_760_000_000_000 + version % 997, "received_at": 1_760_000_000_500,
        "produced_at": 1_760_000_000_900, "price": price,
        "currency": "EUR" if price else None, "lead_time_days": lead_time_days,
        "clamped": False, "suspect": version % 11 == 0,
    }


@pytest.fixture(scope="module")
def keyspace() -> Iterator[tuple[Any, str]]:
    """A migrated keyspace of this module, dropped afterwards; yields (session, keyspace)."""
    ks = "sf_sink_" + uuid.uuid4().hex[:10]
    cluster, session = connect(ClusterConfig())
    try:
        migrate(session, ks, replication=LOCAL_REPLICATION, history_ttl_s=3600,
                stock_buckets=BUCKETS)
        yield session, ks
    finally:
        session.execute(f"DROP KEYSPACE IF EXISTS {ks}", timeout=120)
        cluster.shutdown()


def sink_for(ks: str, **overrides: Any) -> CassandraSink:
    return CassandraSink(keyspace=ks, max_in_flight=32, **overrides)


def availability_row(session: Any, ks: str, platform_sku: str, supplier: str) -> Any:
    return session.execute(
        f"SELECT sku, quantity, version, status, lead_time_days, price, currency, updated_at, "
        f"WRITETIME(quantity) AS written FROM {ks}.availability_by_sku "
        "WHERE platform_sku = %s AND supplier_id = %s", (platform_sku, supplier)).one()


def stock_row(session: Any, ks: str, supplier: str, sku: str) -> Any:
    return session.execute(
        f"SELECT platform_sku, quantity, version, status, WRITETIME(quantity) AS written "
        f"FROM {ks}.stock_by_supplier WHERE supplier_id = %s AND bucket = %s AND sku = %s",
        (supplier, stock_bucket(sku, BUCKETS), sku)).one()


def test_migrate_is_idempotent_and_records_its_version(keyspace: tuple[Any, str]) -> None:
    session, ks = keyspace
    again = migrate(session, ks, replication=LOCAL_REPLICATION, history_ttl_s=3600,
                    stock_buckets=BUCKETS)
    assert again.applied == []
    assert again.notes == []
    assert set(applied_versions(session, ks)) == {1}
    assert applied_versions(session, ks)[1]["stock_buckets"] == str(BUCKETS)
    tables = session.cluster.metadata.keyspaces[ks].tables
    assert {"availability_by_sku", "stock_by_supplier", "change_history",
            "schema_version"} <= set(tables)
    assert int(tables["change_history"].options["default_time_to_live"]) == 3600


async def test_rows_equal_reference_after_duplicates_and_reordering(
        keyspace: tuple[Any, str]) -> None:
    session, ks = keyspace
    rng = random.Random(20260522)
    suppliers = [f"sup-{i}" for i in range(5)]
    skus = [f"sku-{i}" for i in range(60)]
    # Every (supplier, sku) gets versions 1..6; some are sent twice (replays), then the whole
    # stream is shuffled so batches see older versions after newer ones.
    updates = []
    for supplier in suppliers:
        for sku in rng.sample(skus, 25):
            for version in range(1, 7):
                u = stock_update(supplier, sku, version, rng.randrange(0, 500),
                                 platform_sku=f"P{int(sku[4:]) % 17}-{sku}",
                                 status=rng.choice(["ACTIVE", "ACTIVE", "DISCONTINUED"]),
                                 price=rng.choice([None, "12.50"]),
                                 lead_time_days=rng.choice([None, 2]))
                updates.append(u)
                if rng.random() < 0.3:
                    updates.append(dict(u))
    rng.shuffle(updates)

    sink = sink_for(ks)
    await sink.start()
    try:
        for i in range(0, len(updates), 97):
            assert await sink.write_batch(updates[i:i + 97]) > 0
    finally:
        await sink.close()

    expected: dict[tuple[str, str], dict[str, Any]] = {}
    for u in updates:
        key = (u["supplier_id"], u["sku"])
        if key not in expected or u["version"] > expected[key]["version"]:
            expected[key] = u
    for (supplier, sku), u in expected.items():
        row = availability_row(session, ks, u["platform_sku"], supplier)
        assert row is not None, (supplier, sku)
        assert (row.sku, row.quantity, row.version, row.status, row.lead_time_days, row.price,
                row.currency, epoch_millis(row.updated_at)) == (
            sku, u["quantity_after"], u["version"], u["status"], u["lead_time_days"],
            u["price"], u["currency"], u["observed_at"])
        assert row.written == u["version"]
        srow = stock_row(session, ks, supplier, sku)
        assert (srow.platform_sku, srow.quantity, srow.version, srow.status) == (
            u["platform_sku"], u["quantity_after"], u["version"], u["status"])

    # Nothing else was written, and every change is in the audit trail.
    all_rows = list(iter_availability(session, ks, fetch_size=37))
    assert len(all_rows) == len(expected)
    history = {(r.supplier_id, r.sku, r.version) for r in session.execute(
        f"SELECT supplier_id, sku, version FROM {ks}.change_history")}
    assert history == {(u["supplier_id"], u["sku"], u["version"]) for u in updates}

    grouped = list(iter_sku_availability(session, ks, fetch_size=7))
    assert len({a["platform_sku"] for a in grouped}) == len(grouped)  # one entry per SKU
    for availability in grouped:
        assert availability == read_availability(session, availability["platform_sku"], ks)


async def test_replayed_or_older_writes_do_not_regress_a_newer_row(
        keyspace: tuple[Any, str]) -> None:
    session, ks = keyspace
    sink = sink_for(ks)
    await sink.start()
    try:
        newest = stock_update("s-regress", "k-regress", 1_760_000_000_123_456, 42)
        await sink.write_batch([newest])
        # An older version arriving later (reordered), in its own batch and coalesced with
        # another old one, must not win; neither must a replay of an older micro-timestamp.
        await sink.write_batch([stock_update("s-regress", "k-regress", 1_760_000_000_000_001, 7,
                                             status="DISCONTINUED", price=None)])
        await sink.write_batch([
            stock_update("s-regress", "k-regress", 1_700_000_000_000_000, 1, price="0.01"),
            stock_update("s-regress", "k-regress", 1_750_000_000_000_000, 2, lead_time_days=99)])
        await sink.write_batch([newest])  # an exact replay changes nothing either
    finally:
        await sink.close()
    row = availability_row(session, ks, newest["platform_sku"], "s-regress")
    assert (row.quantity, row.version, row.status, row.price, row.lead_time_days) == (
        42, newest["version"], "ACTIVE", "9.90", 3)
    srow = stock_row(session, ks, "s-regress", "k-regress")
    assert (srow.quantity, srow.version) == (42, newest["version"])
    versions = [r.version for r in session.execute(
        f"SELECT version FROM {ks}.change_history WHERE supplier_id = %s AND sku = %s",
        ("s-regress", "k-regress"))]
    assert versions == sorted(versions, reverse=True) and len(versions) == 4


AWKWARD = [
    ("O'Brien \"quoted\"", "it's a \"sku\""),
    ("'; DROP KEYSPACE stockflow; --", "'); DELETE FROM x; --"),
    ("SELECT", "WHERE"),
    ("token", "KEY"),
    ("ünïcødé-供应商-🚀", "ß-€-😀-\u202e-ﬁ"),
    ("s" * 63 + "Z", "k" * 127 + "Z"),
    ("é" * 64, "😀" * 128),
    ("%s %(x)s ? :name", "{0} %d ? :p \\n \\'"),
]


async def test_awkward_supplier_ids_and_skus_are_stored_exactly(
        keyspace: tuple[Any, str]) -> None:
    session, ks = keyspace
    updates = [stock_update(supplier, sku, 5, 10 + i, platform_sku=f"awk|{sku}")
               for i, (supplier, sku) in enumerate(AWKWARD)]
    sink = sink_for(ks)
    await sink.start()
    try:
        assert await sink.write_batch(updates) == 3 * len(updates)
    finally:
        await sink.close()
    for u in updates:
        availability = read_availability(session, u["platform_sku"], ks)
        assert availability is not None
        assert list(availability["suppliers"]) == [u["supplier_id"]]
        assert availability["suppliers"][u["supplier_id"]]["sku"] == u["sku"]
        assert availability["total"] == u["quantity_after"]
        srow = stock_row(session, ks, u["supplier_id"], u["sku"])
        assert srow.platform_sku == u["platform_sku"]
        history = session.execute(
            f"SELECT event_id FROM {ks}.change_history WHERE supplier_id = %s AND sku = %s",
            (u["supplier_id"], u["sku"])).one()
        assert history.event_id == u["event_id"]
    # The keyspace survived the injection attempts.
    assert ks in session.cluster.metadata.keyspaces


def test_inventory_get_prints_availability_across_suppliers(
        keyspace: tuple[Any, str], monkeypatch: pytest.MonkeyPatch) -> None:
    import asyncio

    import typer

    from pipeline.settings import get_settings
    from pipeline.shell.commands import inventory

    _session, ks = keyspace

    async def write() -> None:
        sink = sink_for(ks)
        await sink.start()
        try:
            await sink.write_batch([
                stock_update("acme", "A-1", 3, 7, platform_sku="O'Neil-1"),
                stock_update("globex", "G-9", 8, 20, platform_sku="O'Neil-1", lead_time_days=5),
                stock_update("initech", "I-2", 2, 99, platform_sku="O'Neil-1",
                             status="DISCONTINUED")])
        finally:
            await sink.close()

    asyncio.run(write())
    monkeypatch.setenv("COLUMNS", "200")
    get_settings.cache_clear()
    app = typer.Typer()
    app.callback()(lambda: None)  # a group, as in the real CLI: `inventory get ...`
    inventory.register(app)
    result = CliRunner().invoke(app, ["inventory", "get", "O'Neil-1", "--keyspace", ks])
    assert result.exit_code == 0, result.output
    for text in ("acme", "globex", "initech", "DISCONTINUED", "total available: 27",
                 "best supplier: globex"):
        assert text in result.output
    missing = CliRunner().invoke(app, ["inventory", "get", "no-such-sku", "--keyspace", ks])
    assert missing.exit_code == 1


async def test_a_write_cassandra_can_never_accept_raises_sink_error(
        keyspace: tuple[Any, str]) -> None:
    import asyncio

    _session, ks = keyspace
    sink = sink_for(ks)
    await sink.start()
    try:
        # A clustering key over 64 KiB: Cassandra rejects it, retrying cannot help.
        with pytest.raises(SinkError):
            await asyncio.wait_for(
                sink.write_batch([stock_update("x" * 70_000, "k", 1, 1)]), timeout=60)
    finally:
        await sink.close()


async def test_thousands_of_updates_over_many_partitions_are_written_exactly(
        keyspace: tuple[Any, str]) -> None:
    """Per-partition unlogged batches: every row, right values, and old versions never win."""
    session, ks = keyspace
    rng = random.Random(1811)
    # 30 suppliers x 120 SKUs; a platform SKU is offered by several suppliers, so
    # availability_by_sku partitions get several rows, stock_by_supplier (supplier, bucket)
    # partitions many, and change_history partitions one row per version of a SKU.
    keys = [(f"bulk-s{s}", f"bulk-{s}-{k}") for s in range(30) for k in range(120)]
    platform = {(supplier, sku): f"bulk-P{sku.rsplit('-', 1)[1]}" for supplier, sku in keys}
    updates: list[dict[str, Any]] = []
    for supplier, sku in rng.sample(keys, 2500):
        for version in sorted(rng.sample(range(1, 1_000_000), rng.choice((1, 1, 2, 3)))):
            updates.append(stock_update(supplier, sku, 1_760_000_000_000_000 + version,
                                        rng.randrange(0, 10_000),
                                        platform_sku=platform[(supplier, sku)],
                                        status=rng.choice(["ACTIVE", "ACTIVE", "DISCONTINUED"]),
                                        price=rng.choice([None, "3.25", "1e2"]),
                                        lead_time_days=rng.choice([None, 0, 14])))
    assert len(updates) > 4000
    rng.shuffle(updates)
    expected: dict[tuple[str, str], dict[str, Any]] = {}
    for u in updates:
        key = (u["supplier_id"], u["sku"])
        if key not in expected or u["version"] > expected[key]["version"]:
            expected[key] = u

    # A small cap so big partitions are split into several batches too.
    sink = sink_for(ks, batch_rows=7)
    await sink.start()
    try:
        half = len(updates) // 2
        rows = await sink.write_batch(updates[:half]) + await sink.write_batch(updates[half:])
        assert sink.stats.requests < rows / 2  # really batched
        # A replay of the older versions only (a retry of an old offset), then of everything:
        # nothing may go back in time.
        older = [u for u in updates if u["version"] < expected[(u["supplier_id"], u["sku"])][
            "version"]]
        assert older
        await sink.write_batch(older)
        await sink.write_batch(list(reversed(updates)))
    finally:
        await sink.close()

    availability = {(r.platform_sku, r.supplier_id): r for r in session.execute(
        f"SELECT platform_sku, supplier_id, sku, quantity, version, status, lead_time_days, "
        f"price, currency, updated_at, WRITETIME(quantity) AS written "
        f"FROM {ks}.availability_by_sku")
        if r.supplier_id.startswith("bulk-")}
    assert len(availability) == len(expected)
    for (supplier, sku), u in expected.items():
        row = availability[(u["platform_sku"], supplier)]
        assert (row.sku, row.quantity, row.version, row.status, row.lead_time_days, row.price,
                row.currency, epoch_millis(row.updated_at), row.written) == (
            sku, u["quantity_after"], u["version"], u["status"], u["lead_time_days"],
            u["price"], u["currency"], u["observed_at"], u["version"])
    stock = {(r.supplier_id, r.sku): r for r in session.execute(
        f"SELECT supplier_id, bucket, sku, platform_sku, quantity, version, status, price, "
        f"WRITETIME(quantity) AS written FROM {ks}.stock_by_supplier")
        if r.supplier_id.startswith("bulk-")}
    assert set(stock) == set(expected)
    for key, u in expected.items():
        srow = stock[key]
        assert (srow.bucket, srow.platform_sku, srow.quantity, srow.version, srow.status,
                srow.price, srow.written) == (
            stock_bucket(key[1], BUCKETS), u["platform_sku"], u["quantity_after"],
            u["version"], u["status"], u["price"], u["version"])
    history = {(r.supplier_id, r.sku, r.version): r for r in session.execute(
        f"SELECT supplier_id, sku, version, quantity_before, quantity_after, event_id, "
        f"suspect FROM {ks}.change_history") if r.supplier_id.startswith("bulk-")}
    assert set(history) == {(u["supplier_id"], u["sku"], u["version"]) for u in updates}
    for u in updates:
        h = history[(u["supplier_id"], u["sku"], u["version"])]
        assert (h.quantity_before, h.quantity_after, h.event_id, h.suspect) == (
            u["quantity_before"], u["quantity_after"], u["event_id"], u["suspect"])


class StallingProxy:
    """A TCP proxy to the shared Cassandra that can stop forwarding without closing anything.

    Stands in for a coordinator or a network path that stops answering: the sink's requests
    get no answer and no error, so only its own timeout can notice. The shared Cassandra is
    never touched.
    """

    def __init__(self, target: tuple[str, int] = ("127.0.0.1", 9042)) -> None:
        import socket
        import threading

        self._socket, self._threading = socket, threading
        self.target = target
        self.flowing = threading.Event()
        self.flowing.set()
        self._closed = False
        self._sockets: list[Any] = []
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = self._socket.create_connection(self.target)
            self._sockets += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                self._threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, source: Any, sink: Any) -> None:
        try:
            while data := source.recv(65536):
                while not self.flowing.wait(0.5):  # stalled: hold the bytes, close nothing
                    if self._closed:
                        return
                sink.sendall(data)
        except OSError:
            pass

    def close(self) -> None:
        self._closed = True
        self.flowing.set()
        self.listener.close()
        for s in self._sockets:
            with contextlib.suppress(OSError):
                s.close()


async def test_requests_that_get_no_answer_time_out_and_are_retried_until_written(
        keyspace: tuple[Any, str]) -> None:
    """No per-request driver timer: the window's watchdog must notice a silent Cassandra."""
    import asyncio

    session, ks = keyspace
    proxy = StallingProxy()
    sink = CassandraSink(keyspace=ks, port=proxy.port, max_in_flight=32, request_timeout_s=1.0,
                         retry_base_delay_s=0.05, max_retry_delay_s=0.5)
    updates = [stock_update(f"stall-s{i % 5}", f"stall-k{i}", 10, i) for i in range(2000)]
    write: asyncio.Task[int] | None = None
    try:
        await sink.start()
        await sink.write_batch(updates[:200])
        proxy.flowing.clear()
        write = asyncio.create_task(sink.write_batch(updates[200:]))
        deadline = time.monotonic() + 30
        while sink.stats.retries < 3:  # three rounds timed out by the watchdog
            assert time.monotonic() < deadline, "no timeout while Cassandra did not answer"
            assert not write.done(), "a batch was acked while Cassandra did not answer"
            await asyncio.sleep(0.1)
        assert not write.done()
        proxy.flowing.set()  # the answers of the abandoned requests arrive late: ignored
        assert await asyncio.wait_for(write, timeout=60) == 3 * 1800
        assert sink.stats.outages == 1
    finally:
        if write is not None and not write.done():
            write.cancel()  # a failed assertion must not leave close() waiting on it
            with contextlib.suppress(asyncio.CancelledError):
                await write
        await sink.close()
        proxy.close()
    for table, expected in (("stock_by_supplier", 2000), ("change_history", 2000)):
        rows = [r for r in session.execute(f"SELECT supplier_id FROM {ks}.{table}")
                if r.supplier_id.startswith("stall-")]
        assert len(rows) == expected, table


async def test_a_large_rows_per_batch_setting_stays_under_cassandras_batch_size_limit(
        keyspace: tuple[Any, str]) -> None:
    """cassandra_batch_rows may be set up to 1000: the sink's byte bound, not Cassandra's
    batch_size_fail_threshold (50 KiB), must end a batch first (with 64 bytes a row and
    nothing per cell, 120 history rows were refused as "Batch too large")."""
    session, ks = keyspace
    updates = [stock_update("big-s1", f"big-{k}", 1_760_000_000_000_000 + k, k,
                            platform_sku=f"big-P{k}", price="1234567.89")
               for k in range(3000)]
    sink = sink_for(ks, batch_rows=1000)
    await sink.start()
    try:
        rows = await sink.write_batch(updates)
    finally:
        await sink.close()
    assert rows == 3 * len(updates)
    assert sink.stats.requests >= 3 * len(updates) / 1000  # batches were cut by size
    (count,) = session.execute(
        f"SELECT COUNT(*) FROM {ks}.change_history WHERE supplier_id = 'big-s1' "
        "AND sku = 'big-2999'").one()
    assert count == 1
