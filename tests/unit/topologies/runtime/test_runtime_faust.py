"""The Faust behaviour the batch runtime relies on (topologies/runtime/), pinned versions."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import faust
import pytest

from connectors.logtools.rebuild import changelog_topic
from pipeline.settings import Settings
from topologies.runtime.batches import Batch, InputBatches
from topologies.runtime.boot import PINNED, BatchBootStrategy, VersionError, check_versions
from topologies.runtime.table import BatchTable, table_factory
from topologies.runtime.txn import CallDeadlines
from topologies.runtime.worker import BatchRuntime


def test_installed_versions_are_the_pinned_ones() -> None:
    check_versions()  # the test environment installs from the pins


def test_an_unpinned_version_is_refused_with_its_name() -> None:
    with pytest.raises(VersionError, match=r"faust-streaming 0\.15\.3 \(tested: 9\.9\.9\)"):
        check_versions({**PINNED, "faust-streaming": "9.9.9"})


class _Service:
    """Stands in for the runtime in the boot chain: records that it was started."""

    def __init__(self) -> None:
        self.started = False


def test_boot_strategy_starts_agents_not_fausts_kafka_clients() -> None:
    app = faust.App("boot-test", broker="kafka://127.0.0.1:1", web_enabled=False)
    runtime = object()
    services = list(BatchBootStrategy(app, runtime=runtime).server())
    assert runtime in services and app.agents in services
    # Faust's own consumer, conductor and table manager would consume and restore the same
    # topics as the runtime: they must not be in the chain.
    names = {type(s).__name__ for s in services}
    assert not names & {"Consumer", "Conductor", "TableManager", "Producer"}, names


def test_an_agent_gets_each_batch_as_one_event_once_flow_control_resumes() -> None:
    loop = asyncio.new_event_loop()  # the app's own loop, as the worker's
    asyncio.set_event_loop(loop)
    try:
        _run_agent_through_channel(loop)
    finally:
        asyncio.set_event_loop(None)
        loop.close()


def _run_agent_through_channel(loop: asyncio.AbstractEventLoop) -> None:
    app = faust.App("channel-test", broker="kafka://127.0.0.1:1", web_enabled=False,
                    loop=loop)
    app.boot_strategy = BatchBootStrategy(app, runtime=_NullService(app))
    channel = InputBatches(app, topic="t")
    seen: list[int] = []

    @app.agent(channel)
    async def agent(batches: Any) -> Any:
        async for batch in batches:
            async with batch:
                seen.append(len(batch.records))
                batch.result = sum(batch.records)
            yield batch.result

    async def main() -> list[Any]:
        await app.start()
        blocked = Batch(topic="t", records=[1], send=lambda *a: None, now_ms=0,
                        done=loop.create_future())
        put = asyncio.ensure_future(channel.put(blocked))  # type: ignore[arg-type]
        await asyncio.sleep(0.2)
        # Faust's queues start suspended until a consumer is assigned: the runtime resumes.
        assert not put.done()
        app.flow_control.resume()
        await asyncio.wait_for(put, 5)
        results = [await asyncio.wait_for(blocked.done, 5)]
        for n in (2, 3):
            batch = Batch(topic="t", records=list(range(n)), send=lambda *a: None, now_ms=0,
                          done=loop.create_future())
            await channel.put(batch)  # type: ignore[arg-type]
            results.append(await asyncio.wait_for(batch.done, 5))
        await app.stop()
        return results

    assert loop.run_until_complete(main()) == [1, 1, 3]
    assert seen == [1, 2, 3]


class _NullService:
    def __init__(self, app: Any) -> None:
        from mode import Service

        class Null(Service):
            pass

        self.service = Null(loop=app.loop)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.service, name)


def _settings(**kw: Any) -> Any:
    base = {"commit_interval_s": 0.1, "commit_min_interval_s": 0.02,
            "processing_guarantee": "exactly_once"}
    return SimpleNamespace(**{**base, **kw})


def test_commit_is_due_sooner_when_the_worker_keeps_up() -> None:
    rt = BatchRuntime.__new__(BatchRuntime)
    rt.settings = _settings()
    rt.positions, rt.in_txn = {}, False
    rt.last_commit = time.monotonic() - 0.05
    assert not rt._commit_due(busy=False)  # nothing to commit
    rt.positions = {("t", 0): 5}
    assert rt._commit_due(busy=False)  # keeping up: 50 ms >= 20 ms
    assert not rt._commit_due(busy=True)  # under load: wait for the full 100 ms
    rt.last_commit = time.monotonic() - 0.1
    assert rt._commit_due(busy=True)


def _table(tmp_path: Path, cache_keys: int = 1000) -> BatchTable:
    app = faust.App("table-test", broker="kafka://127.0.0.1:1", web_enabled=False)
    table = BatchTable(app, name="t", default=None, key_type=bytes, partitions=2,
                       record="ResyncRequest", cache_keys=cache_keys)
    table.tabledir = tmp_path
    return table


def test_app_table_is_a_batch_table_whose_changelog_faust_names() -> None:
    # install() sets conf.Table; Faust's app.Table must build that class, and name the
    # changelog `<app id>-<table>-changelog`, the topic the rebuild writes (logtools/rebuild).
    app = faust.App("conf-table-test", broker="kafka://127.0.0.1:1", web_enabled=False)
    app.conf.Table = table_factory(7)
    table = app.Table("stock", default=None, key_type=bytes, partitions=2,
                      record="ResyncRequest")
    assert isinstance(table, BatchTable) and table.cache_keys == 7
    assert table.changelog_name == "conf-table-test-stock-changelog"
    assert table.changelog_name == changelog_topic(Settings(app_id="conf-table-test"), "stock")


def _value(n: int) -> dict[str, Any]:
    return {"supplier_id": "s", "sku": f"k{n}", "expected_sequence": n,
            "received_sequence": n + 1, "event_id": f"e{n}", "requested_at": n}


def test_rocksdb_holds_committed_values_only(tmp_path: Path) -> None:
    table = _table(tmp_path)
    assert table.open_partition(0) == 0
    table.set_in(0, b"a", _value(1))
    ((partition, rows),) = list(table.changed())
    table.persist(partition, rows, next_offset=7)  # the transaction committed
    table.set_in(0, b"a", _value(2))  # not committed ...
    table.set_in(0, b"b", _value(3))
    assert table.discard_uncommitted() == 2  # ... aborted
    assert table.get_in(0, b"a") == _value(1) and table.get_in(0, b"b") is None
    table.close_all()
    assert table.open_partition(0) == 7  # the changelog offset the store reflects
    assert table.get_in(0, b"a") == _value(1)
    table.apply_changelog(0, [(b"b", table.codec.encode(_value(4)))], next_offset=9)
    table.close_all()
    assert table.open_partition(0) == 9 and table.get_in(0, b"b") == _value(4)
    table.close_all()


def test_eviction_keeps_uncommitted_values(tmp_path: Path) -> None:
    table = _table(tmp_path, cache_keys=100)
    table.open_partition(1)
    encode = table.codec.encode
    table.apply_changelog(1, [(f"c{n}".encode(), encode(_value(n))) for n in range(300)], 300)
    for n in range(20):
        table.set_in(1, f"d{n}".encode(), _value(1000 + n))  # uncommitted
    for n in range(300):
        assert table.get_in(1, f"c{n}".encode()) == _value(n)  # loads evict clean values
    values = table._parts[1].values
    assert len(values) <= 101
    assert all(f"d{n}".encode() in values for n in range(20))
    assert table.discard_uncommitted() == 20
    table.close_all()


def test_transient_kafka_errors_are_retried_and_others_raised(monkeypatch: Any) -> None:
    from confluent_kafka import KafkaError, KafkaException

    from topologies.runtime import worker

    monkeypatch.setattr(worker.time, "sleep", lambda s: None)
    calls = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) == 1:  # a changelog topic just created: no leader yet
            raise KafkaException(KafkaError(KafkaError.NOT_LEADER_FOR_PARTITION))
        if len(calls) == 2:  # ... or not in the client's metadata yet
            raise KafkaException(KafkaError(KafkaError._UNKNOWN_PARTITION))
        return "ok"

    assert worker._retrying(flaky, "test") == "ok" and len(calls) == 3

    def denied() -> None:
        raise KafkaException(KafkaError(KafkaError.TOPIC_AUTHORIZATION_FAILED))

    with pytest.raises(KafkaException):
        worker._retrying(denied, "test")


def test_a_failing_rebalance_callback_stops_the_worker_instead_of_hanging_it() -> None:
    from topologies.runtime.worker import FatalRuntimeError

    rt = BatchRuntime.__new__(BatchRuntime)
    rt._callback_error = None
    rt.assignment = set()
    rt.deadlines = CallDeadlines(15.0, lambda *_: None)

    class Consumer:
        def consume(self, num_messages: int, timeout: float) -> list[Any]:
            rt._on_assign(self, [SimpleNamespace(topic="t", partition=0)])
            return []

    def broken(partitions: list[Any]) -> None:
        raise RuntimeError("restore failed")

    rt.consumer = Consumer()
    rt._on_assign_body = broken  # type: ignore[method-assign]
    with pytest.raises(FatalRuntimeError, match="restore failed"):
        rt._poll(10, 0.01)


def test_a_fatal_consumer_error_stops_the_worker() -> None:
    from confluent_kafka import KafkaError, KafkaException

    from topologies.runtime.txn import FatalRuntimeError, is_fatal

    rt = BatchRuntime.__new__(BatchRuntime)
    rt._callback_error = None
    rt.assignment = set()
    rt.deadlines = CallDeadlines(15.0, lambda *_: None)
    fenced = KafkaError(KafkaError.FENCED_INSTANCE_ID, "fenced", fatal=True)

    class Consumer:
        def consume(self, num_messages: int, timeout: float) -> list[Any]:
            return [SimpleNamespace(error=lambda: fenced)]

    rt.consumer = Consumer()
    with pytest.raises(FatalRuntimeError, match="fatal consumer error"):
        rt._poll(10, 0.01)
    assert is_fatal(KafkaException(fenced))
    assert not is_fatal(KafkaException(KafkaError(KafkaError._TRANSPORT)))
    assert not is_fatal(RuntimeError("x"))


def test_values_of_new_keys_are_evicted_once_committed(tmp_path: Path) -> None:
    # New keys are never loaded through get_in: without eviction after the commit, a load of
    # 1M new keys kept every decoded value (2 GB of RSS).
    table = _table(tmp_path, cache_keys=100)
    table.open_partition(0)
    for n in range(500):
        table.set_in(0, f"n{n}".encode(), _value(n))
        if n % 50 == 49:
            for partition, rows in list(table.changed()):
                table.persist(partition, rows, next_offset=n)
    assert len(table._parts[0].values) <= 100
    assert table.get_in(0, b"n0") == _value(0) and table.get_in(0, b"n499") == _value(499)
    table.close_all()


def test_a_kafka_call_that_never_returns_makes_the_worker_exit() -> None:
    import threading
    from concurrent.futures import ThreadPoolExecutor

    rt = BatchRuntime.__new__(BatchRuntime)
    rt._executor = ThreadPoolExecutor(1)
    rt.watchdog_s = 0.2
    exits: list[int] = []
    rt._exit = exits.append  # type: ignore[method-assign]
    stuck = threading.Event()

    def never_returns() -> None:
        stuck.wait(5)

    loop = asyncio.new_event_loop()
    try:
        with pytest.raises(asyncio.InvalidStateError):  # after _exit: no result to give
            loop.run_until_complete(rt._blocking(never_returns))
        assert exits == [70]
        assert loop.run_until_complete(_quick(rt)) == 42  # a call that returns is untouched
    finally:
        stuck.set()
        rt._executor.shutdown(wait=True)
        loop.close()


async def _quick(rt: Any) -> int:
    rt.watchdog_s = 5.0
    return int(await rt._blocking(lambda: 42))
