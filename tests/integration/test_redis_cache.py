"""Redis cache against a real Redis: the CAS script, reordering, outage, cache-aside, rebuild."""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import shutil
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bench.pipeline_env import free_port
from connectors.redis.cache import (
    SCRIPT,
    RedisCache,
    _from_rows,
    read_availability,
    rebuild_from_rows,
)
from pipeline.aggregate import best_supplier, total_available
from pipeline.metrics import SINK_RETRIES

pytestmark = pytest.mark.integration

SHARED_URL = "redis://127.0.0.1:6379/0"


# --- fixtures ----------------------------------------------------------------------------


def _shared_redis_up() -> bool:
    try:
        return bool(redis.Redis.from_url(SHARED_URL, socket_timeout=2).ping())
    except redis.RedisError:
        return False


requires_redis = pytest.mark.skipif(not _shared_redis_up(), reason="shared Redis not running")


def _drop_prefix(prefix: str) -> None:
    client = redis.Redis.from_url(SHARED_URL)
    keys = list(client.scan_iter(match=f"{prefix}*", count=500))
    if keys:
        client.delete(*keys)
    client.close()


@pytest.fixture
async def cache() -> AsyncIterator[RedisCache]:
    """A cache on the shared Redis under a key prefix of its own (dropped afterwards)."""
    prefix = f"test-{uuid.uuid4().hex[:10]}:"
    c = RedisCache(SHARED_URL, key_prefix=prefix, ttl_s=3600)
    try:
        yield c
    finally:
        await c.close()
        _drop_prefix(prefix)


class PrivateRedis:
    """A redis-server of the test's own on a free port, which it may stop, restart and flush."""

    def __init__(self, directory: Path, *, persistent: bool) -> None:
        self.directory = directory
        self.port = free_port()
        self.persistent = persistent
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        args = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                "--dir", str(self.directory)]
        # appendfsync always + a clean SIGTERM: a restart keeps every acknowledged write,
        # so "nothing lost" is checked against the full reference, not the writes since.
        args += (["--appendonly", "yes", "--appendfsync", "always"] if self.persistent
                 else ["--appendonly", "no"])
        log = (self.directory / "redis.log").open("ab")
        self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        client = redis.Redis(port=self.port, socket_timeout=1)
        deadline = time.monotonic() + 15
        while True:
            try:
                if client.ping():
                    client.close()
                    return
            except redis.RedisError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=15)
        self.proc = None


@pytest.fixture
def private_redis_factory(tmp_path: Path) -> Iterator[Any]:
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server not installed")
    started: list[PrivateRedis] = []

    def make(*, persistent: bool = False) -> PrivateRedis:
        server = PrivateRedis(tmp_path, persistent=persistent)
        server.start()
        started.append(server)
        return server

    yield make
    for server in started:
        server.stop()


def change(sku: str, supplier: str, version: int, quantity: int, status: str = "ACTIVE",
           *, changed_at: int | None = None) -> dict[str, Any]:
    now = int(time.time() * 1000)
    # The cache stamps an entry with observed_at (what Cassandra stores as updated_at).
    stamp = changed_at if changed_at is not None else version * 1000
    return {
        "platform_sku": sku, "supplier_id": supplier, "sku": f"{supplier}/{sku}",
        "quantity_before": 0, "quantity_after": quantity, "version": version,
        "total_available": 0, "best_supplier": None, "status": status, "cause": "SNAPSHOT",
        "event_id": f"{supplier}-{sku}-{version}", "observed_at": stamp, "produced_at": now,
        "changed_at": stamp,
    }


def reference(changes: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The expected cache values: newest version per (sku, supplier), totals as aggregated."""
    latest: dict[tuple[str, str], dict[str, Any]] = {}
    for c in changes:
        k = (c["platform_sku"], c["supplier_id"])
        if k not in latest or c["version"] > latest[k]["version"]:
            latest[k] = c
    out: dict[str, dict[str, Any]] = {}
    for (sku, sup), c in sorted(latest.items()):
        entry = out.setdefault(sku, {"updated_at": 0, "suppliers": {}})
        q = c["quantity_after"] if c["status"] == "ACTIVE" else 0
        entry["suppliers"][sup] = {"sku": c["sku"], "quantity": q, "version": c["version"],
                                   "status": c["status"], "lead_time_days": None,
                                   "updated_at": c["changed_at"]}
        entry["updated_at"] = max(entry["updated_at"], c["changed_at"])
    for entry in out.values():
        entry["total"] = total_available(entry["suppliers"])
        entry["best_supplier"] = best_supplier(entry["suppliers"]) if entry["total"] else None
    return out


async def cached_values(cache: RedisCache, skus: set[str]) -> dict[str, dict[str, Any]]:
    out = {}
    for sku in sorted(skus):
        got = await cache.get(sku)
        if got is not None:
            out[sku] = {k: got[k] for k in ("total", "best_supplier", "updated_at", "suppliers")}
    return out


# --- the script directly ---------------------------------------------------------------------


@requires_redis
async def test_script_never_lets_an_older_or_equal_version_overwrite(cache: RedisCache) -> None:
    key = cache.key("P-1")
    r = cache.client
    await r.script_load(SCRIPT)

    def args(version: int | str, quantity: int, status: str = "ACTIVE") -> list[str]:
        group = ["s1", str(version), str(quantity), status, "sku-1", "1000", "-"]
        return ["0", "0", json.dumps([[group]])]

    sha = (await r.script_load(SCRIPT))
    assert await r.evalsha(sha, 1, key, *args(5, 10)) == "1"
    assert await r.evalsha(sha, 1, key, *args(4, 99)) == "0"  # older: refused
    assert await r.evalsha(sha, 1, key, *args(5, 77)) == "0"  # equal: a no-op
    got = await cache.get("P-1")
    assert got is not None
    assert got["suppliers"]["s1"]["quantity"] == 10 and got["total"] == 10
    assert await r.evalsha(sha, 1, key, *args(6, 3)) == "1"
    assert (await cache.get("P-1"))["total"] == 3  # type: ignore[index]

    # Versions beyond 2^53 differ only in the last digit: doubles would call them equal.
    big = 2**60
    assert await r.evalsha(sha, 1, key, *args(big, 1)) == "1"
    assert await r.evalsha(sha, 1, key, *args(big + 1, 2)) == "1"
    assert await r.evalsha(sha, 1, key, *args(big, 9)) == "0"
    assert await r.evalsha(sha, 1, key, *args(999, 9)) == "0"  # shorter string, smaller number
    assert (await cache.get("P-1"))["suppliers"]["s1"]["quantity"] == 2  # type: ignore[index]


@requires_redis
async def test_totals_across_suppliers_and_statuses(cache: RedisCache) -> None:
    await cache.apply_batch([
        change("P", "a", 1, 10), change("P", "b", 1, 30), change("P", "c", 1, 5),
        change("Q", "a", 1, 4),
    ])
    got = await cache.get("P")
    assert got is not None and (got["total"], got["best_supplier"]) == (45, "b")

    await cache.apply_batch([change("P", "b", 2, 30, "DISCONTINUED")])
    got = await cache.get("P")
    assert got is not None and (got["total"], got["best_supplier"]) == (15, "a")
    assert got["suppliers"]["b"]["status"] == "DISCONTINUED"

    await cache.apply_batch([change("P", "b", 3, 12, "ACTIVE"), change("P", "a", 2, 0)])
    got = await cache.get("P")
    assert got is not None and (got["total"], got["best_supplier"]) == (17, "b")

    await cache.apply_batch([change("P", "b", 4, 0), change("P", "c", 2, 0)])
    got = await cache.get("P")
    assert got is not None and (got["total"], got["best_supplier"]) == (0, None)
    assert (await cache.get("Q"))["total"] == 4  # type: ignore[index]


@requires_redis
async def test_best_supplier_ties_rank_by_lead_time_like_the_aggregate(cache: RedisCache) -> None:
    await cache.fill("P", [cassandra_row("a", 1, 5, lead=None), cassandra_row("b", 1, 5, lead=7),
                           cassandra_row("c", 1, 5, lead=2), cassandra_row("d", 1, 4, lead=1)])
    got = await cache.get("P")
    assert got is not None and (got["total"], got["best_supplier"]) == (19, "c")
    # A change carries no lead time: c keeps its stored one and stays best on a tie.
    await cache.apply_batch([change("P", "c", 2, 5)])
    got = await cache.get("P")
    assert got is not None and got["best_supplier"] == "c"
    assert got["suppliers"]["c"]["lead_time_days"] == 2
    await cache.apply_batch([change("P", "c", 3, 1)])
    got = await cache.get("P")
    assert got is not None and got["best_supplier"] == "b"


@requires_redis
async def test_fill_of_the_same_version_adds_the_lead_time_a_change_lacked(
    cache: RedisCache,
) -> None:
    await cache.apply_batch([change("P", "a", 4, 5), change("P", "b", 2, 5)])
    assert (await cache.get("P"))["best_supplier"] == "a"  # type: ignore[index]
    # Cassandra holds the same versions, with lead times: b ships faster.
    assert await cache.fill("P", [cassandra_row("a", 4, 5, lead=9),
                                  cassandra_row("b", 2, 5, lead=1)]) == 0
    got = await cache.get("P")
    assert got is not None and got["best_supplier"] == "b" and got["complete"]
    assert got["suppliers"]["a"]["lead_time_days"] == 9


@requires_redis
async def test_a_sku_with_many_suppliers_is_written_whole(cache: RedisCache) -> None:
    rows = [cassandra_row(f"s{i:04d}", 1, i % 7, lead=i % 5) for i in range(1500)]
    assert await cache.fill("P", rows) == 1500
    got = await cache.get("P")
    assert got is not None and len(got["suppliers"]) == 1500
    assert got["total"] == sum(i % 7 for i in range(1500))
    assert got["best_supplier"] == _from_rows("P", rows)["best_supplier"]


@requires_redis
async def test_batch_coalesces_counts_keys_and_sets_ttl(cache: RedisCache) -> None:
    batch = [change("P", "a", v, v * 10) for v in (3, 1, 2)] + [change("Q", "a", 1, 1)]
    assert await cache.apply_batch(batch) == 2
    assert (await cache.get("P"))["suppliers"]["a"]["quantity"] == 30  # type: ignore[index]
    assert await cache.apply_batch(batch) == 0  # redelivery writes nothing
    ttl_ms = await cache.client.pttl(cache.key("P"))
    assert 0 < ttl_ms <= 3600 * 1000


@requires_redis
async def test_a_batch_is_one_round_trip_of_evalsha_calls(
        cache: RedisCache, monkeypatch: pytest.MonkeyPatch) -> None:
    """apply_batch sends one pipeline: one write to the socket, one EVALSHA per 100 keys."""
    from redis.asyncio.connection import AbstractConnection

    batch = [change(f"P{i % 300}", f"s{i % 7}", 1 + i // 2100, i) for i in range(3000)]
    await cache.apply_batch(batch[:10])  # loads the script if this Redis lacks it (NOSCRIPT)
    sent: list[bytes] = []
    original = AbstractConnection.send_packed_command

    async def counting(self: Any, command: Any, check_health: bool = True) -> None:
        chunks = [command] if isinstance(command, (bytes, str)) else list(command)
        sent.append(b"".join(c if isinstance(c, bytes) else c.encode() for c in chunks))
        await original(self, command, check_health)

    monkeypatch.setattr(AbstractConnection, "send_packed_command", counting)
    assert await cache.apply_batch(batch) == 300
    assert len(sent) == 1, f"{len(sent)} round trips for one batch"
    # 300 platform SKUs: three script calls of at most KEYS_PER_CALL (100) keys each.
    assert sent[0].count(b"\r\nEVALSHA\r\n") == 3
    assert b"\r\nEVAL\r\n" not in sent[0]  # the script text is never resent


@requires_redis
async def test_odd_skus_get_their_own_keys(cache: RedisCache) -> None:
    skus = ['a "quoted" sku', "a b", "a%20b", "{tag}x", "é/ü:ß", "🙂", "x*?[]"]
    await cache.apply_batch([change(s, "sup", 1, i + 1) for i, s in enumerate(skus)])
    for i, s in enumerate(skus):
        got = await cache.get(s)
        assert got is not None and got["total"] == i + 1 and got["platform_sku"] == s


@requires_redis
async def test_invalid_supplier_id_is_dropped_not_written(cache: RedisCache) -> None:
    assert await cache.apply_batch([change("P", "bad:id", 1, 5), change("P", "ok", 1, 2)]) == 1
    got = await cache.get("P")
    assert got is not None and list(got["suppliers"]) == ["ok"]


# --- reordering, redelivery, replay ------------------------------------------------------------

EVENTS = st.lists(
    st.tuples(st.sampled_from(["P1", "P 2", '"P3"']), st.sampled_from(["s1", "s2", "s3"]),
              st.integers(1, 12), st.integers(0, 50), st.sampled_from(["ACTIVE", "DISCONTINUED"])),
    min_size=1, max_size=40,
)


@requires_redis
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(events=EVENTS, data=st.data())
def test_reordered_and_redelivered_streams_converge_to_the_in_order_values(
    events: list[tuple[str, str, int, int, str]], data: st.DataObject
) -> None:
    # One content per (sku, supplier, version): versions are strictly increasing per pair.
    unique: dict[tuple[str, str, int], dict[str, Any]] = {}
    for sku, sup, version, q, status in events:
        unique.setdefault((sku, sup, version), change(sku, sup, version, q, status))
    in_order = sorted(unique.values(), key=lambda c: c["version"])
    shuffled = data.draw(st.permutations(in_order))
    redelivered = data.draw(st.lists(st.sampled_from(in_order), max_size=10))
    stream = list(shuffled) + redelivered
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=6)))
    batches = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
    expected = reference(in_order)

    async def run() -> None:
        for label, plan in (("inorder", [in_order]), ("shuffled", batches)):
            prefix = f"test-{uuid.uuid4().hex[:10]}-{label}:"
            c = RedisCache(SHARED_URL, key_prefix=prefix, ttl_s=600)
            try:
                for batch in plan:
                    await c.apply_batch(batch)
                assert await cached_values(c, set(expected)) == expected, label
            finally:
                await c.close()
                _drop_prefix(prefix)

    asyncio.run(run())


# --- Redis unreachable ------------------------------------------------------------------------


async def test_redis_down_20s_mid_stream_converges_and_loses_nothing(
    private_redis_factory: Any,
) -> None:
    server = private_redis_factory(persistent=True)
    cache = RedisCache(server.url, key_prefix="stockflow:", ttl_s=3600, max_retry_delay_s=1.0,
                       socket_timeout_s=1.0)
    rng = random.Random(5)
    versions: dict[tuple[str, str], int] = {}
    batches: list[list[dict[str, Any]]] = []
    for _ in range(60):
        batch = []
        for _ in range(20):
            sku, sup = f"P{rng.randrange(30)}", f"s{rng.randrange(4)}"
            versions[(sku, sup)] = versions.get((sku, sup), 0) + 1
            batch.append(change(sku, sup, versions[(sku, sup)], rng.randrange(100),
                                rng.choice(["ACTIVE", "ACTIVE", "DISCONTINUED"])))
        batches.append(batch)
    done_at: list[float] = []
    retries_before = SINK_RETRIES.labels(sink="redis")._value.get()

    async def feed() -> None:
        for batch in batches:
            await cache.apply_batch(batch)
            done_at.append(time.monotonic())
            await asyncio.sleep(0.05)  # pacing of a live stream

    feeder = asyncio.create_task(feed())
    try:
        deadline = time.monotonic() + 30
        while len(done_at) < 10:
            assert time.monotonic() < deadline, "feeder made no progress"
            assert not feeder.done(), feeder.exception()
            await asyncio.sleep(0.02)
        await asyncio.to_thread(server.stop)
        stopped = time.monotonic()
        await asyncio.sleep(20)  # the outage itself
        assert not feeder.done(), "apply_batch returned or failed while Redis was down"
        await asyncio.to_thread(server.start)
        restarted = time.monotonic()
        await asyncio.wait_for(feeder, timeout=60)
        assert not [t for t in done_at if stopped < t < restarted], "a batch 'completed' offline"
        assert SINK_RETRIES.labels(sink="redis")._value.get() > retries_before
        expected = reference([c for b in batches for c in b])
        assert await cached_values(cache, set(expected)) == expected
    finally:
        feeder.cancel()
        with contextlib.suppress(BaseException):
            await feeder
        await cache.close()


# --- cache-aside read path -----------------------------------------------------------------------


def cassandra_row(supplier: str, version: int, quantity: int, status: str = "ACTIVE",
                  sku: str = "P", lead: int | None = None) -> dict[str, Any]:
    return {"platform_sku": sku, "supplier_id": supplier, "sku": f"{supplier}/{sku}",
            "quantity": quantity, "version": version, "status": status, "lead_time_days": lead,
            "price": None, "currency": None, "updated_at": version * 1000}


@requires_redis
async def test_cache_aside_miss_fills_then_hits(cache: RedisCache) -> None:
    calls: list[str] = []

    async def reader(sku: str) -> list[dict[str, Any]]:
        calls.append(sku)
        return [cassandra_row("a", 3, 5), cassandra_row("b", 2, 7)]

    first = await read_availability(cache, reader, "P")
    assert first is not None and first["source"] == "cassandra" and first["total"] == 12
    second = await read_availability(cache, reader, "P")
    assert second is not None and second["source"] == "redis" and second["total"] == 12
    assert calls == ["P"]


@requires_redis
async def test_cache_aside_fill_never_overwrites_a_newer_value(cache: RedisCache) -> None:
    # The writer already has version 5 of supplier a; Cassandra answers with an older read.
    await cache.apply_batch([change("P", "a", 5, 50)])

    def stale_reader(sku: str) -> list[dict[str, Any]]:
        return [cassandra_row("a", 3, 1), cassandra_row("b", 1, 4)]

    got = await read_availability(cache, stale_reader, "P")
    assert got is not None
    assert got["suppliers"]["a"]["version"] == 5 and got["suppliers"]["a"]["quantity"] == 50
    assert got["total"] == 54 and got["complete"]
    # And the fill did not regress Redis itself.
    stored = await cache.get("P")
    assert stored is not None and stored["suppliers"]["a"]["quantity"] == 50
    # A later newer change still lands on the filled hash.
    await cache.apply_batch([change("P", "b", 2, 6)])
    assert (await cache.get("P"))["total"] == 56  # type: ignore[index]


@requires_redis
async def test_partial_hash_after_data_loss_is_a_miss(cache: RedisCache) -> None:
    # Redis lost the hash; the writer recreated it with one supplier only.
    await cache.apply_batch([change("P", "a", 9, 1)])
    got = await read_availability(cache, lambda s: [cassandra_row("a", 9, 1),
                                                    cassandra_row("b", 4, 8)], "P")
    assert got is not None and got["source"] == "cassandra" and got["total"] == 9


async def test_cache_aside_falls_back_to_cassandra_when_redis_is_unreachable() -> None:
    cache = RedisCache(f"redis://127.0.0.1:{free_port()}/0", socket_timeout_s=0.5)
    try:
        got = await read_availability(cache, lambda s: [cassandra_row("a", 1, 3)], "P")
        assert got is not None and got["source"] == "cassandra" and got["total"] == 3
        assert await read_availability(cache, lambda s: [], "nothing") is None
    finally:
        await cache.close()


# --- rebuild after FLUSHALL -----------------------------------------------------------------------


@pytest.fixture
def cassandra_keyspace() -> Iterator[tuple[Any, str]]:
    """A keyspace of the test's own, migrated by `stockflow db migrate`'s code."""
    from connectors.cassandra.cluster import ClusterConfig, connect
    from connectors.cassandra.schema import migrate

    try:
        cluster, session = connect(ClusterConfig(connect_timeout_s=10))
    except Exception as exc:  # any driver failure means "not running"
        pytest.skip(f"Cassandra not reachable: {exc}")
    keyspace = f"rc_test_{uuid.uuid4().hex[:10]}"
    try:
        migrate(session, keyspace,
                replication="{'class': 'SimpleStrategy', 'replication_factor': 1}",
                history_ttl_s=0, stock_buckets=4)
        yield session, keyspace
    finally:
        session.execute(f"DROP KEYSPACE IF EXISTS {keyspace}", timeout=60)
        cluster.shutdown()


async def test_rebuild_after_flushall_gives_identical_values(
    private_redis_factory: Any, cassandra_keyspace: tuple[Any, str]
) -> None:
    from datetime import UTC, datetime

    from connectors.cassandra.read import iter_availability

    session, keyspace = cassandra_keyspace
    server = private_redis_factory(persistent=False)
    cache = RedisCache(server.url, ttl_s=3600)
    rng = random.Random(11)
    changes: list[dict[str, Any]] = []
    versions: dict[tuple[str, str], int] = {}
    for _ in range(600):
        sku, sup = rng.choice(['P {1}', 'P"2', "P 3", *[f"P{i}" for i in range(4, 150)]]), \
            f"s{rng.randrange(5)}"
        versions[(sku, sup)] = versions.get((sku, sup), 0) + rng.randrange(1, 4)
        changes.append(change(sku, sup, versions[(sku, sup)], rng.randrange(60),
                              rng.choice(["ACTIVE", "ACTIVE", "DISCONTINUED"]),
                              changed_at=1_700_000_000_000 + len(changes)))
    try:
        # What the sink would have stored (the newest row per supplier) and what the cache
        # agent wrote from the same changes.
        insert = session.prepare(
            f"INSERT INTO {keyspace}.availability_by_sku (platform_sku, supplier_id, sku, "
            "quantity, version, status, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?)")
        for sku, entry in reference(changes).items():
            for sup, e in entry["suppliers"].items():
                session.execute(insert, (sku, sup, e["sku"], e["quantity"], e["version"],
                                         e["status"],
                                         datetime.fromtimestamp(e["updated_at"] / 1000, UTC)))
        for i in range(0, len(changes), 50):
            await cache.apply_batch(changes[i:i + 50])
        before = await cached_values(cache, {c["platform_sku"] for c in changes})
        assert before == reference(changes)

        await cache.client.flushall()
        assert await cache.get("P4") is None
        progress: list[tuple[int, int]] = []
        stats = await rebuild_from_rows(cache, iter_availability(session, keyspace),
                                        keys_per_pipeline=40,
                                        on_progress=lambda k, r: progress.append((k, r)))
        assert stats.keys == len(before) and progress[-1] == (stats.keys, stats.rows)
        after = await cached_values(cache, set(before))
        assert after == before
        for sku in before:
            got = await cache.get(sku)
            assert got is not None and got["complete"]
    finally:
        await cache.close()
