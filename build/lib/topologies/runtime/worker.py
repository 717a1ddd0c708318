"""The batch runtime: one confluent-kafka consumer and one transactional producer per worker.

Per poll it fetches up to `batch_max_records` records (or what arrived within
`batch_max_wait_s`), hands each input topic's records to its agent as one batch
(topologies/runtime/batches.py), and every `commit_interval_s` commits, in this order
(the one place the commit protocol lives):

1. every key a table changed since the last commit is encoded once and sent to the table's
   changelog, inside the transaction that already holds the agents' outputs;
2. the input offsets join the transaction with the consumer's group metadata (KIP-447: a
   worker that lost its partitions to a rebalance is fenced by the group generation);
3. the transaction commits;
4. the changed values and each changelog's next offset are written to the tables' RocksDB
   stores, one WriteBatch per partition. RocksDB only ever holds committed state.

A failed commit aborts the transaction, drops the uncommitted table values and rewinds the
consumer to the committed offsets: the batch is processed again, and the sinks' writes are
idempotent (Cassandra USING TIMESTAMP = version, Redis compare-and-set on the version).

Rebalances run inside the consumer's poll: a revoke commits what was processed (or aborts if
that fails) and closes the partitions' stores; an assign opens them and catches each up from
its changelog, starting at the offset the store recorded. Partitions are assigned with the
range strategy, so partition p of every input topic of the same partition count lands on the
same worker. All blocking Kafka calls run on one thread, in order.

Every blocking librdkafka call runs under a deadline, its own timeout plus
`kafka_call_margin_s` (CallDeadlines): librdkafka does not honour every timeout (after the
group coordinator's broker dies, send_offsets_to_transaction can wait for ever), and a call
past its deadline makes the process exit (code 70) for its supervisor to restart it. Nothing
is lost: the open transaction is aborted by the restarted worker's init_transactions, and the
stores hold only committed values. After a fatal Kafka error the worker stops without
committing (the consumer's group metadata is no longer valid), aborting what is open.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from mode import Service

from pipeline import metrics
from pipeline.kafka import produce
from pipeline.log import get_logger
from topologies.runtime.batches import InputBatches
from topologies.runtime.lane import Lane
from topologies.runtime.table import BatchTable
from topologies.runtime.txn import (
    ABORT_TIMEOUT_S,
    COMMIT_TIMEOUT_S,
    EXIT_STUCK,
    INIT_TIMEOUT_S,
    OFFSETS_TIMEOUT_S,
    REQUEST_TIMEOUT_S,
    WATERMARKS_TIMEOUT_S,
    CallDeadlines,
    ChangelogOffsets,
    FatalRuntimeError,
    WorkerRuntimeError,
    consume_ready,
    hand_out,
    hand_out_overlapped,
    is_fatal,
    persist_committed,
    rewind_to_committed,
    send_table_changes,
    usable_records,
)

log = get_logger("stockflow.runtime")

TOPIC_ID_KEY = b"\x00changelog-topic-id"
# How long a stop waits for the batches still running before it aborts them (a restart
# reads their records again).
STOP_SETTLE_TIMEOUT_S = 20.0



def _retrying(fn: Callable[[], Any], what: str, attempts: int = 40) -> Any:
    """Call fn, retrying Kafka errors that go away (a topic just created has no leader yet, a
    leader moved) for up to about a minute."""
    from confluent_kafka import KafkaException

    for attempt in range(attempts):
        try:
            return fn()
        except KafkaException as exc:
            err = exc.args[0] if exc.args else None
            retriable = getattr(err, "retriable", lambda: True)()
            if attempt == attempts - 1 or (not retriable and getattr(
                    err, "code", lambda: None)() not in _TRANSIENT):
                raise
            log.warning("runtime.kafka_retry", what=what, error=str(err), attempt=attempt + 1)
            time.sleep(min(2.0, 0.1 * 2 ** attempt))
    raise AssertionError("unreachable")


def _release_free_memory() -> None:
    """Give the C heap's free pages back to the system (glibc's malloc_trim): decoded values
    evicted from the tables' caches leave free space that RSS would otherwise keep."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    if name is not None:
        with contextlib.suppress(OSError, AttributeError):  # not glibc
            ctypes.CDLL(name).malloc_trim(0)


def _transient_codes() -> frozenset[Any]:
    from confluent_kafka import KafkaError

    return frozenset({KafkaError.NOT_LEADER_FOR_PARTITION, KafkaError.LEADER_NOT_AVAILABLE,
                      KafkaError.UNKNOWN_TOPIC_OR_PART, KafkaError._UNKNOWN_PARTITION,
                      KafkaError._UNKNOWN_TOPIC, KafkaError._TRANSPORT,
                      KafkaError._TIMED_OUT, KafkaError.REQUEST_TIMED_OUT})


_TRANSIENT = _transient_codes()


def _stale_metadata_codes() -> frozenset[Any]:
    """Errors after which a client's view of a partition's leader may be out of date."""
    from confluent_kafka import KafkaError

    return frozenset({KafkaError._UNKNOWN_PARTITION, KafkaError._UNKNOWN_TOPIC,
                      KafkaError.LEADER_NOT_AVAILABLE, KafkaError._TIMED_OUT,
                      KafkaError._TRANSPORT})


_STALE_METADATA = _stale_metadata_codes()


class BatchRuntime(Service):
    """Consume, hand batches to the agents, commit exactly once; see the module docstring."""

    def __init__(self, app: Any, settings: Any, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.app = app
        self.settings = settings
        self.exactly_once = settings.processing_guarantee == "exactly_once"
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="stockflow-kafka")
        self.routes: dict[str, InputBatches] = {}
        # Topics whose records are handled and committed ahead of the rest of a poll.
        self.commit_first: set[str] = set()
        self.tables_by_topic: dict[str, BatchTable] = {}  # every routed table, lanes' too
        self.tables: list[BatchTable] = []  # the tables the main loop commits
        self.all_tables: list[BatchTable] = []
        self.lanes: dict[str, Lane] = {}  # topics consumed and committed apart (lane.py)
        self.lane_topics: dict[str, Lane] = {}
        self.consumer: Any = None
        self.producer: Any = None
        self.restorer: Any = None
        self.assignment: set[tuple[str, int]] = set()
        self.positions: dict[tuple[str, int], int] = {}  # processed, not yet committed
        self.committed: dict[tuple[str, int], int] = {}  # the last committed, per partition
        self.processed: dict[tuple[str, int], int] = {}  # the last processed, per partition
        self.in_txn = False
        self.last_commit = time.monotonic()
        self.ready = False
        self.rebalancing = True
        self.rebalances = 0
        self.commits = 0
        self.aborts = 0
        self._changelog_next = ChangelogOffsets()
        self._topic_ids: dict[str, str] = {}
        self._transactional_id = ""
        self._stopping = False
        self._loop_task: asyncio.Task[None] | None = None
        # A stop can come while on_start still awaits (SIGTERM a second after launch):
        # on_stop waits for the start to give up at its next step, then closes what it made.
        self._start_over = asyncio.Event()
        self._start_began = False
        self._callback_error: BaseException | None = None
        self._fatal: BaseException | None = None  # the error that stopped the worker
        # Batches handed out and maybe still running (topic -> its last batch's `done`): under
        # load the next poll is read and handed out while an agent waits for its stores;
        # every commit, abort and rebalance first waits for them (`_settle`).
        self.overlap = bool(getattr(settings, "batch_overlap", True))
        self._inflight: dict[str, asyncio.Future[Any]] = {}
        self._settle_failed = False  # a batch failed while settling for a stop: abort, never commit
        # Under load, how long past the last commit a due commit may be put off while a
        # batch still waits for its stores (_keep_overlapping).
        self._commit_max_delay_s = float(getattr(settings, "commit_max_delay_s", 0.5))
        self._event_loop: asyncio.AbstractEventLoop | None = None
        # Longer than any Kafka call's own timeout (commit 120 s) plus a rebalance's restore:
        # the last resort behind the per-call deadlines.
        self.watchdog_s = float(getattr(settings, "kafka_watchdog_s", 900.0))
        self.deadlines = CallDeadlines(float(getattr(settings, "kafka_call_margin_s", 15.0)),
                                       self._on_call_stuck)

    # -- set-up ------------------------------------------------------------------------------
    def discover_routes(self) -> None:
        """The agents fed by this runtime: every agent whose channel is an InputBatches."""
        lane_routes: dict[str, dict[str, InputBatches]] = {}
        for agent in self.app.agents.values():
            channel = agent.channel
            if isinstance(channel, InputBatches) and channel.enabled:
                self.routes[channel.topic_name] = channel
                if channel.lane and self.exactly_once:
                    lane_routes.setdefault(channel.lane, {})[channel.topic_name] = channel
                elif channel.commit_first:
                    self.commit_first.add(channel.topic_name)
                if channel.table is not None:
                    self.tables_by_topic[channel.topic_name] = channel.table
        self.lanes = {name: Lane(self, name, routes) for name, routes in lane_routes.items()}
        self.lane_topics = {t: lane for lane in self.lanes.values() for t in lane.routes}
        self.all_tables = list(self.tables_by_topic.values())
        # By identity: a table is a Mapping, whose == compares contents.
        lane_tables = {id(t) for lane in self.lanes.values() for t in lane.tables}
        self.tables = [t for t in self.all_tables if id(t) not in lane_tables]
        for table in self.all_tables:
            table.tabledir = self.settings.tables_dir
        if not self.routes:
            raise WorkerRuntimeError("no agent reads an InputBatches channel")

    def _consumer_config(self) -> dict[str, Any]:
        s = self.settings
        conf = {
            **s.confluent_config(),
            "group.id": s.app_id,
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "auto.offset.reset": "earliest",
            "isolation.level": "read_committed" if self.exactly_once else "read_uncommitted",
            "partition.assignment.strategy": "range",
            "session.timeout.ms": int(s.session_timeout_s * 1000),
            "heartbeat.interval.ms": int(max(1.0, s.session_timeout_s / 3) * 1000),
            "max.poll.interval.ms": 600_000,
            "fetch.wait.max.ms": 50,
            "queued.max.messages.kbytes": 16384,  # a few polls ahead: enough at 20k/s
            "log_level": 3,
        }
        instance = s.worker_instance_id()
        if instance:
            conf["group.instance.id"] = instance
        return conf

    def _producer_config(self, lane: str = "") -> dict[str, Any]:
        s = self.settings
        conf = {
            **s.confluent_config(),
            "acks": "all",
            "enable.idempotence": True,
            "linger.ms": max(0, int(s.producer_linger_s * 1000)),
            "partitioner": "murmur2_random",
            "queue.buffering.max.messages": 500_000,
            # A transaction begun right after the last one committed is refused
            # (CONCURRENT_TRANSACTIONS) until the coordinator has written the last one's
            # markers, and librdkafka retries its AddPartitionsToTxn / AddOffsetsToTxn after
            # retry.backoff.ms, 100 ms by default: back-to-back commits then wait ~100 ms
            # each (the Java producer retries these after 20 ms, KAFKA-5477). Measured in
            # the reservation lane: send_offsets_to_transaction p90 64 -> 18 ms.
            "retry.backoff.ms": 10,
            "retry.backoff.max.ms": 100,
            "log_level": 3,
        }
        if self.exactly_once:
            # A lane's producer has a transactional id of its own, as stable as the worker's.
            conf["transactional.id"] = (f"{self._transactional_id}-{lane}" if lane
                                        else self._transactional_id)
            conf["transaction.timeout.ms"] = int(s.transaction_timeout_s * 1000)
        return conf

    def _new_producer(self, lane: str = "") -> Any:
        from confluent_kafka import Producer

        producer = Producer(self._producer_config(lane))
        if self.exactly_once:
            # Also aborts what an earlier incarnation with this transactional id left open.
            with self.deadlines.call("init_transactions", INIT_TIMEOUT_S):
                producer.init_transactions(INIT_TIMEOUT_S)
        return producer

    async def on_start(self) -> None:
        self._start_began = True
        try:
            await self._start_steps()
        finally:
            self._start_over.set()

    async def _start_steps(self) -> None:
        from confluent_kafka import Consumer

        self._event_loop = asyncio.get_running_loop()
        self.discover_routes()
        self.deadlines.start()
        s = self.settings
        self._transactional_id = f"{s.app_id}-{s.worker_instance_id() or uuid.uuid4().hex}"
        await self._blocking(self._create_topics)
        if self._stopping:
            return
        self.producer = await self._blocking(self._new_producer)
        if self._stopping:
            return
        self.restorer = Consumer({
            **s.confluent_config(), "group.id": f"{s.app_id}-restore",
            "enable.auto.commit": False, "isolation.level": "read_committed",
            "enable.partition.eof": True, "auto.offset.reset": "earliest", "log_level": 3,
            # A partition with nothing after the store's offset must not wait out a fetch.
            "fetch.wait.max.ms": 10,
        })
        self.consumer = Consumer(self._consumer_config())
        self.consumer.subscribe(list(self.routes), on_assign=self._on_assign,
                                on_revoke=self._on_revoke, on_lost=self._on_lost)
        # Faust's queues start suspended until its own consumer is assigned: this runtime
        # is the consumer.
        self.app.flow_control.resume()
        for lane in self.lanes.values():
            await lane.start()
            if self._stopping:
                return
        self._loop_task = asyncio.ensure_future(self._run())
        log.info("runtime.started", topics=sorted(self.routes),
                 tables=[t.name for t in self.all_tables], exactly_once=self.exactly_once,
                 lanes={name: sorted(lane.routes) for name, lane in self.lanes.items()},
                 transactional_id=self._transactional_id if self.exactly_once else None)

    def _create_topics(self) -> None:
        from confluent_kafka import KafkaError
        from confluent_kafka.admin import NewTopic

        from pipeline.kafka import admin_client, has_code
        from pipeline.topics import create_topics, replication

        create_topics(self.settings)
        admin = admin_client(self.settings)
        metadata = admin.list_topics(timeout=30)
        existing = metadata.topics
        factor, replica_config = replication(self.settings, len(metadata.brokers))
        wanted = [NewTopic(t.changelog_name, num_partitions=self.settings.partitions,
                           replication_factor=factor,
                           config={"cleanup.policy": "compact", **replica_config})
                  for t in self.all_tables if t.changelog_name not in existing]
        if wanted:
            for name, fut in admin.create_topics(wanted, operation_timeout=30).items():
                try:
                    fut.result()
                except Exception as exc:
                    if not has_code(exc, KafkaError.TOPIC_ALREADY_EXISTS):
                        raise WorkerRuntimeError(f"cannot create changelog {name}: {exc}") from exc

    def _changelog_topic_ids(self) -> dict[str, str]:
        from confluent_kafka import TopicCollection

        from pipeline.kafka import admin_client

        admin = admin_client(self.settings)
        names = [t.changelog_name for t in self.all_tables]
        ids: dict[str, str] = {}
        for name, fut in admin.describe_topics(TopicCollection(names)).items():
            ids[name] = str(fut.result(timeout=30).topic_id)
        return ids

    async def on_stop(self) -> None:
        self._stopping = True
        if self._start_began:
            await self._start_over.wait()
        if self._loop_task is not None:
            self._loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._loop_task
        for lane in self.lanes.values():  # before the main consumer leaves the group
            await lane.stop(commit=self._fatal is None)
        if not await self._settle(raise_errors=False, timeout_s=STOP_SETTLE_TIMEOUT_S):
            self._settle_failed = True
        await self._blocking(self._close)
        self.deadlines.stop()
        self._executor.shutdown(wait=True)

    def _close(self) -> None:
        deadlines = self.deadlines
        try:
            if self._fatal is not None or self._settle_failed:
                # The consumer or the producer is unusable: committing would send a fenced
                # member's group metadata to a coordinator that may be gone (the call that
                # never returns). Or a batch failed: what is open is half done. Abort what
                # is open; a restart redoes it.
                self._abort_on_fatal()
            elif self.in_txn or self.positions or any(t.has_changes() for t in self.tables):
                self._commit_or_abort()
        finally:
            if self.consumer is not None:
                with deadlines.call("consumer.close", REQUEST_TIMEOUT_S):
                    self.consumer.close()  # revokes: nothing left to commit
            if self.restorer is not None:
                with deadlines.call("restorer.close", REQUEST_TIMEOUT_S):
                    self.restorer.close()
            if self.producer is not None:
                with deadlines.call("producer.flush", 10):
                    self.producer.flush(10)
            for table in self.all_tables:
                table.close_all()
        log.info("runtime.stopped", commits=self.commits, aborts=self.aborts,
                 lane_commits={name: lane.commits for name, lane in self.lanes.items()})

    def _abort_on_fatal(self) -> None:
        from confluent_kafka import KafkaException

        if self.exactly_once and self.in_txn:
            try:
                with self.deadlines.call("abort_transaction", ABORT_TIMEOUT_S):
                    self.producer.abort_transaction(ABORT_TIMEOUT_S)
            except KafkaException as exc:  # a fenced producer: the restart's init aborts
                log.warning("runtime.abort_failed", error=str(exc.args[0]))
            self.in_txn = False
        for table in self.tables:
            table.discard_uncommitted()
        self.positions.clear()

    async def _blocking(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run a blocking Kafka call on the Kafka thread. A call that has not returned well
        past every timeout it was given (librdkafka stuck, e.g. a transaction request after
        its group coordinator died) is a worker that can neither go on nor stop: the process
        exits so that its supervisor starts it again (the restart restores everything)."""
        future = asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)
        done, _ = await asyncio.wait({future}, timeout=self.watchdog_s)
        if not done:
            name = getattr(fn, "__name__", repr(fn))
            log.critical("runtime.kafka_call_stuck", call=name, seconds=self.watchdog_s,
                         action="exiting; the restarted worker restores its state")
            self._exit(EXIT_STUCK)
        return future.result()

    def _on_call_stuck(self, call: str, seconds: float) -> None:
        """From the deadline watchdog's thread: a Kafka call ran past its deadline."""
        log.critical("runtime.kafka_call_stuck", call=call, seconds=round(seconds, 1),
                     margin_s=self.deadlines.margin_s,
                     action="exiting; the restarted worker restores its state")
        self._exit(EXIT_STUCK)

    def _exit(self, code: int) -> None:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        os._exit(code)  # the stuck thread would keep a normal exit waiting for ever

    # -- the loop --------------------------------------------------------------------------
    async def _run(self) -> None:
        s = self.settings
        failures = 0
        phase = metrics.WORKER_LOOP_SECONDS
        polled, processed, settled, committed = (phase.labels(name) for name in (
            "poll", "process", "settle", "commit"))
        clock = time.perf_counter
        while not self._stopping:
            try:
                t0 = clock()
                msgs = await self._blocking(self._poll, s.batch_max_records, s.batch_max_wait_s)
                t1 = clock()
                polled.inc(t1 - t0)
                rest = msgs
                if self.commit_first and msgs:
                    first = [m for m in msgs if m.topic() in self.commit_first]
                    if first:
                        # Someone waits for these outputs (a shopper for a hold's decision):
                        # handled and committed before the poll's other records, so they
                        # do not wait for the other agents' store writes.
                        rest = [m for m in msgs if m.topic() not in self.commit_first]
                        await self._process(first)
                        await self._settle()
                        await self._blocking(self._commit_or_abort)
                if rest:
                    await self._process(rest)
                t2 = clock()
                processed.inc(t2 - t1)
                # Loaded: a quarter of a batch or more per poll. A commit then waits for the
                # interval (and overlap may put it off a poll); below that, sooner (freshness).
                busy = len(msgs) >= max(1, s.batch_max_records // 4)
                if self._commit_due(busy=busy) and not self._keep_overlapping(busy):
                    await self._settle()
                    t3 = clock()
                    settled.inc(t3 - t2)
                    await self._blocking(self._commit_or_abort)
                    committed.inc(clock() - t3)
                failures = 0
            except asyncio.CancelledError:
                raise
            except FatalRuntimeError as exc:
                log.critical("runtime.fatal", error=str(exc), exc_info=True)
                self._fatal = exc
                await self.crash(exc)
                return
            except Exception as exc:
                if is_fatal(exc):
                    log.critical("runtime.fatal", error=str(exc), exc_info=True)
                    self._fatal = exc
                    await self.crash(exc)
                    return
                failures += 1
                delay = min(30.0, 0.5 * 2 ** min(failures, 6))
                log.error("runtime.batch_failed", error=f"{type(exc).__name__}: {exc}",
                          attempt=failures, retry_in_s=delay, exc_info=True)
                await self._settle(raise_errors=False)  # nothing may send after the abort
                await self._blocking(self._abort_and_rewind)
                if failures >= s.batch_max_failures:
                    log.critical("runtime.giving_up", failures=failures)
                    await self.crash(exc)
                    return
                await asyncio.sleep(delay)

    def _poll(self, max_records: int, max_wait_s: float) -> list[Any]:
        with self.deadlines.call("consume", max_wait_s):
            msgs = consume_ready(self.consumer, max_records, max_wait_s)
        error, self._callback_error = self._callback_error, None
        if error is not None:
            # A rebalance callback failed (inside consume): the assignment is not usable.
            raise FatalRuntimeError(f"rebalance failed: {type(error).__name__}: {error}") \
                from error
        if not msgs:
            return []
        return usable_records(msgs, self.assignment, "main")

    async def _process(self, msgs: list[Any]) -> None:
        if self.exactly_once and not self.in_txn:
            self.producer.begin_transaction()
            self.in_txn = True
        if self.overlap:
            await hand_out_overlapped(self.routes, msgs, self._send, self._inflight)
        else:
            await hand_out(self.routes, msgs, self._send)
        # Offsets of batches maybe still running: only committed after `_settle`.
        positions = self.positions
        for msg in msgs:
            positions[(msg.topic(), msg.partition())] = msg.offset() + 1
        self.processed.update(positions)

    def _send(self, topic: str, key: bytes | None, value: bytes,
              partition: int | None = None,
              headers: list[tuple[str, bytes]] | None = None) -> None:
        producer = self.producer
        if self.exactly_once and not self.in_txn:
            producer.begin_transaction()
            self.in_txn = True
        produce(producer, topic, value, key, partition, headers)  # headers: a trace context

    def _keep_overlapping(self, busy: bool) -> bool:
        """Under load, a commit that falls due while a batch still waits for its stores is put
        off (the next polls' batches then run during that wait, where a commit would wait for
        it first), until that batch is done or commit_max_delay_s after the last commit. A
        worker that keeps up commits at once, as without overlap."""
        if not busy or all(f.done() for f in self._inflight.values()):
            return False
        return time.monotonic() - self.last_commit < self._commit_max_delay_s

    async def _settle(self, *, raise_errors: bool = True,
                      timeout_s: float | None = None) -> bool:
        """Wait for every batch handed out (`_inflight`); True when all succeeded. The first
        error is raised (raise_errors) after all have finished, so that nothing still runs
        when the caller aborts; a batch not done after timeout_s counts as failed (only a stop
        gives one: a batch may wait out a Cassandra outage, as it did before overlap)."""
        if not self._inflight:
            return True
        futures = list(self._inflight.values())
        self._inflight.clear()
        _done, pending = await asyncio.wait(futures, timeout=timeout_s)
        error: BaseException | None = None
        for future in futures:
            if future in pending:
                future.cancel()
                error = error or WorkerRuntimeError(
                    f"a batch was not done {timeout_s or 0:.0f}s after it was handed out")
            elif future.cancelled():
                error = error or asyncio.CancelledError()
            elif future.exception() is not None:
                error = error or future.exception()
        if error is not None and raise_errors:
            raise error
        return error is None

    def _settle_in_callback(self) -> bool:
        """`_settle` from the Kafka thread (a rebalance callback inside consume(), while the
        event loop waits for that poll and runs the batches); True when all succeeded. No
        timeout, as for the main loop: a batch given up on here would still send its outputs
        later, into the next transaction, after its records were rewound."""
        if not self._inflight:
            return True
        assert self._event_loop is not None
        future = asyncio.run_coroutine_threadsafe(self._settle(raise_errors=False),
                                                  self._event_loop)
        try:
            return bool(future.result())
        except Exception as exc:  # the loop went away: nothing can be known to be done
            log.error("runtime.settle_failed", error=f"{type(exc).__name__}: {exc}")
            return False

    def _commit_due(self, *, busy: bool) -> bool:
        """Commit every commit_interval_s under load; when a poll found fewer records than a
        quarter of a batch (the worker keeps up), as soon as commit_min_interval_s has passed:
        records committed sooner reach the next agent sooner (freshness), and an idle worker
        does not pay for it in throughput."""
        if not (self.positions or self.in_txn):
            return False
        elapsed = time.monotonic() - self.last_commit
        s = self.settings
        return elapsed >= (s.commit_interval_s if busy else
                           min(s.commit_min_interval_s, s.commit_interval_s))

    # -- commit ------------------------------------------------------------------------------
    def _commit(self) -> None:
        """The commit protocol (module docstring); raises KafkaException if it fails."""
        from confluent_kafka import TopicPartition

        producer = self.producer
        written = send_table_changes(producer, self.tables, self._changelog_next.on_delivery)
        offsets = [TopicPartition(t, p, o) for (t, p), o in self.positions.items()]
        deadlines = self.deadlines
        if self.exactly_once:
            if written and not self.in_txn:
                producer.begin_transaction()
                self.in_txn = True
            if self.in_txn:
                if offsets:
                    with deadlines.call("send_offsets_to_transaction", OFFSETS_TIMEOUT_S):
                        producer.send_offsets_to_transaction(
                            offsets, self.consumer.consumer_group_metadata(),
                            OFFSETS_TIMEOUT_S)
                with deadlines.call("commit_transaction", COMMIT_TIMEOUT_S):
                    producer.commit_transaction(COMMIT_TIMEOUT_S)
                self.in_txn = False
        else:
            with deadlines.call("producer.flush", COMMIT_TIMEOUT_S):
                producer.flush(COMMIT_TIMEOUT_S)
            if offsets:
                with deadlines.call("consumer.commit", COMMIT_TIMEOUT_S):
                    self.consumer.commit(offsets=offsets, asynchronous=False)
        producer.poll(0)  # serve the changelog delivery reports
        persist_committed(written, self._changelog_next)
        self.committed.update(self.positions)
        self.positions.clear()
        self.commits += 1
        if self.commits % 500 == 0:
            _release_free_memory()
        self.last_commit = time.monotonic()

    def _commit_or_abort(self) -> None:
        from confluent_kafka import KafkaException

        try:
            self._commit()
        except KafkaException as exc:
            log.error("runtime.commit_failed", error=str(exc.args[0]))
            self._abort_and_rewind()

    def _abort_and_rewind(self) -> None:
        """Undo everything since the last commit: abort, drop table values, seek back."""
        from confluent_kafka import KafkaException

        self.aborts += 1
        deadlines = self.deadlines
        if self.exactly_once and self.in_txn:
            try:
                with deadlines.call("abort_transaction", ABORT_TIMEOUT_S):
                    self.producer.abort_transaction(ABORT_TIMEOUT_S)
            except KafkaException as exc:
                log.error("runtime.abort_failed", error=str(exc.args[0]))
                self.producer = self._new_producer()
            self.in_txn = False
        elif self.exactly_once:
            # A fenced or fatal producer cannot begin again: make a new one.
            try:
                self.producer.begin_transaction()
                with deadlines.call("abort_transaction", ABORT_TIMEOUT_S):
                    self.producer.abort_transaction(ABORT_TIMEOUT_S)
            except KafkaException:
                self.producer = self._new_producer()
        dropped = sum(t.discard_uncommitted() for t in self.tables)
        self.positions.clear()
        rewind_to_committed(self.consumer, self.assignment, deadlines, "consumer")
        for tp in self.assignment:
            self.processed.pop(tp, None)
        log.warning("runtime.rewound", partitions=len(self.assignment),
                    table_values_dropped=dropped)

    # -- rebalance (called inside consumer.consume, on the Kafka thread) ----------------------
    def _on_revoke(self, consumer: Any, partitions: list[Any]) -> None:
        # Called by librdkafka inside consume(): an exception must not escape into it.
        try:
            with self.deadlines.call("on_revoke", None):  # its Kafka calls have theirs
                self._on_revoke_body(partitions)
        except Exception as exc:
            log.error("runtime.rebalance_callback_failed", callback="_on_revoke",
                      error=f"{type(exc).__name__}: {exc}", exc_info=True)
            self._callback_error = exc

    def _on_revoke_body(self, partitions: list[Any]) -> None:
        self.rebalancing = True
        self.ready = False
        revoked = {(tp.topic, tp.partition) for tp in partitions}
        for lane in self.lanes.values():  # its commit, with this generation's group metadata
            lane.release(revoked, commit=True)
        if not self._settle_in_callback():
            # A batch failed: what is open is half done. Undo it; the partitions kept are
            # read again from their committed offsets, the revoked ones by their next owner.
            log.warning("runtime.batch_failed_before_revoke", partitions=len(revoked))
            self._abort_and_rewind()
        elif self.in_txn or self.positions or any(t.has_changes() for t in self.tables):
            self._commit_or_abort()
        self._release(revoked)
        log.info("runtime.partitions_revoked", partitions=len(revoked))

    def _on_lost(self, consumer: Any, partitions: list[Any]) -> None:
        # Called by librdkafka inside consume(): an exception must not escape into it.
        try:
            with self.deadlines.call("on_lost", None):  # its Kafka calls have theirs
                self._on_lost_body(partitions)
        except Exception as exc:
            log.error("runtime.rebalance_callback_failed", callback="_on_lost",
                      error=f"{type(exc).__name__}: {exc}", exc_info=True)
            self._callback_error = exc

    def _on_lost_body(self, partitions: list[Any]) -> None:
        # Lost, not revoked: another worker may own them already; nothing may be committed.
        self.rebalancing = True
        self.ready = False
        lost = {(tp.topic, tp.partition) for tp in partitions}
        for lane in self.lanes.values():
            lane.release(lost, commit=False)
        self._settle_in_callback()  # nothing may still send when the transaction aborts
        self._abort_and_rewind_local()
        if self.exactly_once:
            self._replace_producer()
        self._release(lost)
        log.warning("runtime.partitions_lost", partitions=len(lost))

    def _replace_producer(self) -> None:
        """A new transactional producer (same transactional id) after the group was lost:
        the old one may still hold the lost group coordinator's broker as its coordinator,
        and once librdkafka has dropped that broker (it left the metadata while down) its
        send_offsets_to_transaction waits for ever (librdkafka issue 5511). The new one
        looks the coordinator up afresh; if it cannot be made now, the old one goes on."""
        from confluent_kafka import KafkaException

        try:
            producer = self._new_producer()
        except KafkaException as exc:
            log.warning("runtime.producer_not_replaced", error=str(exc.args[0]))
            return
        with self.deadlines.call("producer.destroy", REQUEST_TIMEOUT_S):
            old, self.producer = self.producer, producer
            del old  # destroyed here (the last reference), inside the deadline
        log.info("runtime.producer_replaced", reason="partitions lost")

    def _abort_and_rewind_local(self) -> None:
        from confluent_kafka import KafkaException

        if self.exactly_once and self.in_txn:
            try:
                with self.deadlines.call("abort_transaction", ABORT_TIMEOUT_S):
                    self.producer.abort_transaction(ABORT_TIMEOUT_S)
            except KafkaException:
                self.producer = self._new_producer()
            self.in_txn = False
        for table in self.tables:
            table.discard_uncommitted()
        self.positions.clear()

    def _release(self, tps: set[tuple[str, int]]) -> None:
        for topic, partition in tps:
            self.positions.pop((topic, partition), None)
            self.processed.pop((topic, partition), None)
            self.committed.pop((topic, partition), None)
            table = self.tables_by_topic.get(topic)
            if table is not None:
                table.close_partition(partition)
        self.assignment -= tps

    def _on_assign(self, consumer: Any, partitions: list[Any]) -> None:
        # Called by librdkafka inside consume(): an exception must not escape into it.
        try:
            with self.deadlines.call("on_assign", None):  # its Kafka calls have theirs
                self._on_assign_body(partitions)
        except Exception as exc:
            log.error("runtime.rebalance_callback_failed", callback="_on_assign",
                      error=f"{type(exc).__name__}: {exc}", exc_info=True)
            self._callback_error = exc

    def _on_assign_body(self, partitions: list[Any]) -> None:
        self.rebalancing = True
        started = time.monotonic()
        self.rebalances += 1
        try:
            self._topic_ids = self._changelog_topic_ids() if self.all_tables else {}
        except Exception as exc:  # the ids only guard against a recreated changelog
            log.warning("runtime.topic_ids_unavailable", error=str(exc))
            self._topic_ids = {}
        restored = self._restore([(self.tables_by_topic[tp.topic], tp.partition)
                                  for tp in partitions if tp.topic in self.tables_by_topic])
        lane_topics = self.lane_topics
        mine = [tp for tp in partitions if tp.topic not in lane_topics]
        if len(mine) < len(partitions):
            # The lanes' partitions stay assigned to this member (the group's range
            # assignment keeps them with the partitions whose tables they read) but are
            # paused here: each lane's own consumer reads them.
            theirs = [tp for tp in partitions if tp.topic in lane_topics]
            self.consumer.assign(partitions)  # what librdkafka does after this callback
            self.consumer.pause(theirs)
            for lane in self.lanes.values():
                lane.assign({(tp.topic, tp.partition) for tp in theirs
                             if tp.topic in lane.routes})
        self.assignment |= {(tp.topic, tp.partition) for tp in mine}
        self.rebalancing = False
        if not self.ready and self.rebalances == 1:
            log.info("worker.ready", partitions=len(self.assignment))
        self.ready = True
        log.info("runtime.partitions_assigned", partitions=len(partitions),
                 changelog_records_restored=restored,
                 seconds=round(time.monotonic() - started, 3))

    def _restore(self, targets: list[tuple[BatchTable, int]]) -> int:
        """Open the partitions' stores and catch each up from its changelog, all partitions in
        one pass of the restore consumer (a changelog that ends in a commit marker has nothing
        to read but still needs its end-of-partition event); returns the records read."""
        from confluent_kafka import KafkaError, TopicPartition

        pending: dict[tuple[str, int], tuple[BatchTable, int]] = {}
        assign = []
        for table, partition in targets:
            start = self._open_checked(table, partition)
            if start is not None:
                topic = table.changelog_name
                pending[(topic, partition)] = (table, start)
                assign.append(TopicPartition(topic, partition, start))
        if not assign:
            return 0
        read = 0
        rows: dict[tuple[str, int], list[tuple[bytes, bytes]]] = {tp: [] for tp in pending}
        next_offset = {tp: start for tp, (_t, start) in pending.items()}
        done: set[tuple[str, int]] = set()

        def apply(tp: tuple[str, int]) -> None:
            nonlocal read
            if rows[tp]:
                pending[tp][0].apply_changelog(tp[1], rows[tp], next_offset[tp])
                read += len(rows[tp])
                rows[tp] = []

        self.restorer.assign(assign)
        try:
            while len(done) < len(pending):
                with self.deadlines.call("restorer.consume", 0.05):
                    msgs = self.restorer.consume(num_messages=5000, timeout=0.05)
                for msg in msgs:
                    tp = (msg.topic(), msg.partition())
                    err = msg.error()
                    if err is not None:
                        if err.code() == KafkaError._PARTITION_EOF:
                            done.add(tp)
                            apply(tp)
                            continue
                        raise WorkerRuntimeError(f"restoring {tp[0]}[{tp[1]}]: {err}")
                    rows[tp].append((msg.key(), msg.value()))
                    next_offset[tp] = msg.offset() + 1
                    if len(rows[tp]) >= 20_000:
                        apply(tp)
        finally:
            self.restorer.unassign()
        for tp in pending:
            apply(tp)
        log.info("runtime.tables_restored", partitions=len(pending), records=read)
        return read

    def _watermarks(self, topic: str, partition: int) -> tuple[int, int]:
        """A changelog partition's low and high watermarks, retried while its leader moves."""
        from confluent_kafka import KafkaException, TopicPartition

        def watermarks() -> tuple[int, int]:
            try:
                with self.deadlines.call("get_watermark_offsets", WATERMARKS_TIMEOUT_S):
                    return self.restorer.get_watermark_offsets(
                        TopicPartition(topic, partition), timeout=WATERMARKS_TIMEOUT_S)
            except KafkaException as exc:
                if exc.args and getattr(exc.args[0], "code", lambda: None)() in \
                        _STALE_METADATA:
                    self._refresh_restorer_metadata(topic)
                raise

        return _retrying(watermarks, f"watermarks of {topic}")

    def _refresh_restorer_metadata(self, topic: str) -> None:
        """Ask for the topic's metadata: the restore consumer, idle between rebalances, can
        keep a partition whose leader is a broker it dropped while that broker was down (it
        left the metadata; librdkafka 2.16 then answers _UNKNOWN_PARTITION until its next
        periodic refresh, 5 min later). A metadata response brings the broker back."""
        from confluent_kafka import KafkaException

        try:
            with self.deadlines.call("list_topics", REQUEST_TIMEOUT_S):
                self.restorer.list_topics(topic, timeout=REQUEST_TIMEOUT_S)
        except KafkaException as exc:
            log.warning("runtime.metadata_refresh_failed", topic=topic, error=str(exc.args[0]))

    def _open_checked(self, table: BatchTable, partition: int) -> int | None:
        """Open a partition's store; the changelog offset to restore from, or None if the
        store is up to date. A store whose changelog was recreated is discarded first."""

        topic = table.changelog_name
        start = table.open_partition(partition)
        topic_id = self._topic_ids.get(topic)
        part = table._parts[partition]
        stored_id = part.db.get(TOPIC_ID_KEY)
        low, high = self._watermarks(topic, partition)
        if (topic_id and stored_id is not None and stored_id.decode() != topic_id) \
                or start > high:
            log.warning("runtime.local_store_discarded", table=table.name,
                        partition=partition, reason="its changelog was recreated")
            table.reset_partition(partition)
            start = table.open_partition(partition)
            part = table._parts[partition]
        if topic_id:
            part.db.put(TOPIC_ID_KEY, topic_id.encode())
        start = max(start, low)
        return start if start < high else None

    # -- introspection -------------------------------------------------------------------------
    def uncommitted(self) -> dict[tuple[str, int], int]:
        """How far processing ran past the committed offset, per assigned input partition."""
        out = {}
        for tp in self.assignment:
            done = self.processed.get(tp)
            if done is None:
                out[tp] = 0
                continue
            out[tp] = max(0, done - self.committed.get(tp, done))
        return out
