"""A lane: input topics consumed, handed to their agents and committed apart from the main loop.

Someone waits for a reservation command's decision: a shopper, behind `POST
/v1/reservations`. In the worker's main loop a command that arrives during a poll waits for
that poll (the aggregate's Cassandra and Redis writes) and for the commit of everything the
poll did. A lane takes its topics out of that loop: its own consumer, its own transactional
producer and its own Kafka thread. It polls as soon as it is free, hands each agent its batch
and commits the agents' outputs, its tables' changelogs and its input offsets in a
transaction of its own, after every poll that brought records.

Partitions. The group assigns a lane's topics to the worker's main consumer like any other
input, so the range strategy still puts partition p of reservations.commands with partition p
of inventory.stock-updates, whose availability table the reserve agent reads. In the
rebalance callbacks (on the main Kafka thread) the runtime pauses them in the main consumer,
restores the lane's tables and hands the partitions to the lane (`assign`); before anything
is released it takes them back (`release`), which returns once the lane has committed -- or,
for lost partitions, aborted -- and stopped reading them. The lane's consumer is assigned by
hand and reads the group's committed offsets (read_committed: pending transactional offsets
are waited for); its offsets are committed through its transaction with the main consumer's
group metadata (KIP-447), so a worker that lost the partitions is fenced exactly as the main
loop's commits are.

Only under exactly-once: an at-least-once commit goes through the group member, which the
lane's consumer is not; there the runtime keeps the topics in the main loop (commit-first).
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from pipeline.kafka import produce
from pipeline.log import get_logger
from topologies.runtime.batches import InputBatches
from topologies.runtime.table import BatchTable
from topologies.runtime.txn import (
    ABORT_TIMEOUT_S,
    COMMIT_TIMEOUT_S,
    EXIT_STUCK,
    OFFSETS_TIMEOUT_S,
    REQUEST_TIMEOUT_S,
    ChangelogOffsets,
    FatalRuntimeError,
    consume_ready,
    hand_out,
    is_fatal,
    persist_committed,
    rewind_to_committed,
    send_table_changes,
    usable_records,
)

log = get_logger("stockflow.runtime.lane")

POLL_WAIT_S = 0.05  # a release request waits at most this long for the poll under way


class Lane:
    """Topics of a worker consumed and committed apart from its main loop (module docstring)."""

    def __init__(self, runtime: Any, name: str, routes: dict[str, InputBatches]) -> None:
        self.runtime = runtime
        self.name = name
        self.routes = routes
        self.tables: list[BatchTable] = [c.table for c in routes.values() if c.table is not None]
        self.consumer: Any = None
        self.producer: Any = None
        self.assignment: set[tuple[str, int]] = set()
        self.positions: dict[tuple[str, int], int] = {}
        self.in_txn = False
        self.commits = 0
        self.aborts = 0
        self._executor = ThreadPoolExecutor(1, thread_name_prefix=f"stockflow-kafka-{name}")
        self._changelog_next = ChangelogOffsets()
        self._requests: queue.SimpleQueue[tuple[str, set[tuple[str, int]], bool,
                                                threading.Event | None]] = queue.SimpleQueue()
        self._wake: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._failed = False  # what is open may be half a batch: never commit it
        self._gone = threading.Event()  # the lane serves no more requests

    # -- set-up ------------------------------------------------------------------------------
    def _consumer_config(self) -> dict[str, Any]:
        s = self.runtime.settings
        return {
            **s.confluent_config(),
            "group.id": s.app_id,  # for the group's committed offsets; never joins
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "auto.offset.reset": "earliest",
            "isolation.level": "read_committed",
            "fetch.wait.max.ms": 50,
            "log_level": 3,
        }

    async def start(self) -> None:
        from confluent_kafka import Consumer

        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self.consumer = Consumer(self._consumer_config())
        self.producer = await self._blocking(self.runtime._new_producer, self.name)
        self._task = asyncio.ensure_future(self._run())

    async def stop(self, *, commit: bool) -> None:
        """Stop reading; commit what was processed (abort it if the worker failed); close."""
        self._stopping = True
        if self._wake is not None:
            self._wake.set()
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        with contextlib.suppress(Exception):
            await self._blocking(self._close, commit and not self._failed)
        self._executor.shutdown(wait=True)

    def _close(self, commit: bool) -> None:
        try:
            self._release_now(set(self.assignment), commit=commit, going_on=False)
        finally:
            self._gone.set()
            deadlines = self.runtime.deadlines
            if self.consumer is not None:
                with deadlines.call("lane.consumer.close", REQUEST_TIMEOUT_S):
                    self.consumer.close()
            if self.producer is not None:
                with deadlines.call("lane.producer.flush", 10):
                    self.producer.flush(10)
            log.info("lane.stopped", lane=self.name, commits=self.commits, aborts=self.aborts)

    # -- requests from the rebalance callbacks (main Kafka thread) ----------------------------
    def assign(self, tps: set[tuple[str, int]]) -> None:
        """Start reading these partitions (their tables are restored already)."""
        self._request("assign", tps, commit=False, done=None)

    def release(self, tps: set[tuple[str, int]], *, commit: bool) -> None:
        """Stop reading these partitions, committing (revoked) or aborting (lost) what the lane
        did with them first; returns once that is done."""
        if not (tps & self.assignment) and self._requests.empty():
            return
        done = threading.Event()
        self._request("release", tps, commit=commit, done=done)
        while not done.wait(0.1):
            if self._gone.is_set():  # stopped or failed meanwhile: the worker is stopping
                return

    def _request(self, kind: str, tps: set[tuple[str, int]], *, commit: bool,
                 done: threading.Event | None) -> None:
        self._requests.put((kind, tps, commit, done))
        if self._loop is not None and self._wake is not None:
            self._loop.call_soon_threadsafe(self._wake.set)

    async def _serve_requests(self) -> None:
        while True:
            try:
                kind, tps, commit, done = self._requests.get_nowait()
            except queue.Empty:
                return
            try:
                if kind == "assign":
                    await self._blocking(self._assign_now, tps)
                else:
                    await self._blocking(self._release_now, tps, commit)
            finally:
                if done is not None:
                    done.set()

    def _assign_now(self, tps: set[tuple[str, int]]) -> None:
        from confluent_kafka import TopicPartition

        self.assignment |= {tp for tp in tps if tp[0] in self.routes}
        with self.runtime.deadlines.call("lane.assign", REQUEST_TIMEOUT_S):
            # No offsets given: each starts at the group's committed offset.
            self.consumer.assign([TopicPartition(t, p) for t, p in sorted(self.assignment)])
        log.info("lane.partitions_assigned", lane=self.name, partitions=len(self.assignment))

    def _release_now(self, tps: set[tuple[str, int]], commit: bool,
                     going_on: bool = True) -> None:
        from confluent_kafka import TopicPartition

        mine = tps & self.assignment
        if not mine:
            return
        if commit:
            self._commit_or_abort()
        else:
            self._abort_local()
            if going_on:  # lost: the producer may still hold the lost coordinator
                self._replace_producer()
        self.assignment -= mine
        for tp in mine:
            self.positions.pop(tp, None)
        with self.runtime.deadlines.call("lane.assign", REQUEST_TIMEOUT_S):
            if self.assignment:
                self.consumer.assign([TopicPartition(t, p) for t, p in sorted(self.assignment)])
            else:
                self.consumer.unassign()
        log.info("lane.partitions_released", lane=self.name, partitions=len(mine),
                 committed=commit)

    # -- the loop ------------------------------------------------------------------------------
    async def _blocking(self, fn: Callable[..., Any], *args: Any) -> Any:
        """A blocking Kafka call on the lane's thread, under the worker's watchdog."""
        future = asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)
        done, _ = await asyncio.wait({future}, timeout=self.runtime.watchdog_s)
        if not done:
            log.critical("runtime.kafka_call_stuck", call=getattr(fn, "__name__", repr(fn)),
                         seconds=self.runtime.watchdog_s, lane=self.name,
                         action="exiting; the restarted worker restores its state")
            self.runtime._exit(EXIT_STUCK)
        return future.result()

    async def _run(self) -> None:
        try:
            await self._loop_until_stopped()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # e.g. the rewind after a failed batch failed too
            self._failed = True
            log.critical("lane.failed", lane=self.name, error=f"{type(exc).__name__}: {exc}",
                         exc_info=True)
            await self.runtime.crash(exc)
        finally:
            # A rebalance callback waiting for this lane must not wait for ever.
            self._gone.set()

    async def _loop_until_stopped(self) -> None:
        s = self.runtime.settings
        failures = 0
        assert self._wake is not None
        while not self._stopping:
            try:
                await self._serve_requests()
                if not self.assignment:
                    self._wake.clear()
                    if self._requests.empty() and not self._stopping:
                        await self._wake.wait()
                    continue
                msgs = await self._blocking(self._poll, s.batch_max_records)
                if msgs:
                    await self._process(msgs)
                    await self._blocking(self._commit_or_abort)
                failures = 0
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if isinstance(exc, FatalRuntimeError) or is_fatal(exc):
                    self._failed = True
                    log.critical("lane.fatal", lane=self.name, error=str(exc), exc_info=True)
                    await self.runtime.crash(exc)
                    return
                failures += 1
                delay = min(30.0, 0.5 * 2 ** min(failures, 6))
                log.error("lane.batch_failed", lane=self.name,
                          error=f"{type(exc).__name__}: {exc}", attempt=failures,
                          retry_in_s=delay, exc_info=True)
                await self._blocking(self._abort_and_rewind)
                if failures >= s.batch_max_failures:
                    self._failed = True
                    log.critical("lane.giving_up", lane=self.name, failures=failures)
                    await self.runtime.crash(exc)
                    return
                await asyncio.sleep(delay)

    def _poll(self, max_records: int) -> list[Any]:
        with self.runtime.deadlines.call(f"{self.name}.consume", POLL_WAIT_S):
            msgs = consume_ready(self.consumer, max_records, POLL_WAIT_S)
        return usable_records(msgs, self.assignment, self.name) if msgs else []

    async def _process(self, msgs: list[Any]) -> None:
        await hand_out(self.routes, msgs, self._send)
        for msg in msgs:
            self.positions[(msg.topic(), msg.partition())] = msg.offset() + 1

    def _send(self, topic: str, key: bytes | None, value: bytes,
              partition: int | None = None,
              headers: list[tuple[str, bytes]] | None = None) -> None:
        producer = self.producer
        if not self.in_txn:
            producer.begin_transaction()
            self.in_txn = True
        produce(producer, topic, value, key, partition, headers)

    # -- commit --------------------------------------------------------------------------------
    def _commit(self) -> None:
        """The worker's commit protocol (topologies/runtime/worker.py) for the lane's own
        outputs, tables and offsets; raises KafkaException if it fails."""
        from confluent_kafka import TopicPartition

        producer = self.producer
        deadlines = self.runtime.deadlines
        written = send_table_changes(producer, self.tables, self._changelog_next.on_delivery)
        offsets = [TopicPartition(t, p, o) for (t, p), o in self.positions.items()]
        if (written or offsets) and not self.in_txn:
            producer.begin_transaction()
            self.in_txn = True
        if self.in_txn:
            if offsets:
                with deadlines.call("lane.send_offsets_to_transaction", OFFSETS_TIMEOUT_S):
                    producer.send_offsets_to_transaction(
                        offsets, self.runtime.consumer.consumer_group_metadata(),
                        OFFSETS_TIMEOUT_S)
            with deadlines.call("lane.commit_transaction", COMMIT_TIMEOUT_S):
                producer.commit_transaction(COMMIT_TIMEOUT_S)
            self.in_txn = False
        producer.poll(0)  # serve the changelog delivery reports
        persist_committed(written, self._changelog_next)
        self.positions.clear()
        self.commits += 1

    def _commit_or_abort(self) -> None:
        from confluent_kafka import KafkaException

        if not (self.in_txn or self.positions or any(t.has_changes() for t in self.tables)):
            return
        try:
            self._commit()
        except KafkaException as exc:
            if is_fatal(exc):
                raise
            log.error("lane.commit_failed", lane=self.name, error=str(exc.args[0]))
            self._abort_and_rewind()

    def _abort_local(self) -> None:
        from confluent_kafka import KafkaException

        if self.in_txn:
            try:
                with self.runtime.deadlines.call("lane.abort_transaction", ABORT_TIMEOUT_S):
                    self.producer.abort_transaction(ABORT_TIMEOUT_S)
            except KafkaException as exc:
                log.error("lane.abort_failed", lane=self.name, error=str(exc.args[0]))
                self._replace_producer()
            self.in_txn = False
        for table in self.tables:
            table.discard_uncommitted()
        self.positions.clear()

    def _abort_and_rewind(self) -> None:
        """Undo everything since the lane's last commit and read it again."""
        self.aborts += 1
        self._abort_local()
        rewind_to_committed(self.consumer, self.assignment, self.runtime.deadlines, self.name)
        log.warning("lane.rewound", lane=self.name, partitions=len(self.assignment))

    def _replace_producer(self) -> None:
        """A new producer (same transactional id): a fenced or failed one cannot go on."""
        from confluent_kafka import KafkaException

        try:
            producer = self.runtime._new_producer(self.name)
        except KafkaException as exc:
            log.warning("lane.producer_not_replaced", lane=self.name, error=str(exc.args[0]))
            return
        self.producer = producer
        self.in_txn = False
