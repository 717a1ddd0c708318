"""The pieces of a worker's Kafka transactions that the main loop and its lanes share.

The timeouts of librdkafka's blocking calls and the deadlines they run under, the runtime's
errors, a poll, handing a poll's records to the agents, and commit steps 1 and 4 of the
protocol in topologies/runtime/worker.py (a table's changes to its changelog inside the
transaction; after it committed, to RocksDB).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from pipeline.errors import StockflowError
from pipeline.kafka import produce
from pipeline.log import get_logger
from topologies.runtime.batches import Batch, InputBatches, Send
from topologies.runtime.table import BatchTable

log = get_logger("stockflow.runtime")

# The timeouts given to librdkafka's blocking calls. Each call also runs under a deadline of
# its timeout plus kafka_call_margin_s (CallDeadlines). A legitimate send_offsets_to_transaction
# took up to 11 s while its group coordinator moved to another broker; the one that never
# returns is ended after 20 + margin seconds (librdkafka 2.16: the coordinator request's
# timeout is never checked and a decommissioned coordinator is never looked up again,
# confluentinc/librdkafka issues 5456 and 5511).
OFFSETS_TIMEOUT_S = 20.0
COMMIT_TIMEOUT_S = 120.0
ABORT_TIMEOUT_S = 60.0
INIT_TIMEOUT_S = 60.0
REQUEST_TIMEOUT_S = 30.0  # committed offsets, metadata, closing the consumer
# Retried (_retrying): a request to a leader that just died should not wait out 30 s.
WATERMARKS_TIMEOUT_S = 10.0
EXIT_STUCK = 70  # EX_SOFTWARE: the exit code of a worker whose Kafka call never returned


class WorkerRuntimeError(StockflowError):
    """The batch runtime cannot go on (a fatal Kafka error, an agent that keeps failing)."""


class FatalRuntimeError(WorkerRuntimeError):
    """State the runtime cannot repair in place: the worker stops (a restart restores it)."""


class CallDeadlines:
    """Deadlines for the blocking librdkafka calls of the Kafka threads: each may run for its
    own timeout plus `margin_s`; a watchdog thread calls `on_overdue(call, seconds)` once when
    the innermost call under way on any thread (the main loop's, a lane's) has passed its
    deadline (librdkafka is stuck in it). Time the process did not run (SIGSTOP, a frozen VM)
    does not count: a resumed worker whose call was waiting is not stuck."""

    def __init__(self, margin_s: float, on_overdue: Callable[[str, float], None],
                 tick_s: float = 0.5) -> None:
        self.margin_s = margin_s
        self.tick_s = tick_s
        self._on_overdue = on_overdue
        # Per thread: [call, started, deadline] frames, innermost last (a rebalance callback
        # without a deadline runs inside consume() and holds calls with deadlines).
        self._frames: dict[int, list[list[Any]]] = {}
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None

    @contextlib.contextmanager
    def call(self, name: str, timeout_s: float | None) -> Iterator[None]:
        """Mark a blocking call; timeout_s None: no deadline of its own (a rebalance callback,
        whose Kafka calls have theirs)."""
        started = time.monotonic()
        deadline = math.inf if timeout_s is None else started + timeout_s + self.margin_s
        frame = [name, started, deadline]
        thread = threading.get_ident()
        with self._lock:
            self._frames.setdefault(thread, []).append(frame)
        try:
            yield
        finally:
            with self._lock:
                frames = self._frames[thread]
                for i in range(len(frames) - 1, -1, -1):
                    if frames[i] is frame:
                        del frames[i]
                        break
                if not frames:
                    del self._frames[thread]

    def overdue(self, now: float | None = None) -> tuple[str, float] | None:
        """An innermost call under way (of any thread) and how long it has run, if past its
        deadline."""
        with self._lock:
            innermost = [frames[-1][:] for frames in self._frames.values()]
        now = time.monotonic() if now is None else now
        for name, started, deadline in innermost:
            if now > deadline:
                return name, now - started
        return None

    def resumed_after(self, gap_s: float) -> None:
        """The watchdog woke gap_s late: the process was suspended that long (SIGSTOP, a
        frozen VM); the calls under way get that time back."""
        if gap_s < 1.0:  # scheduling noise on a busy machine
            return
        with self._lock:
            for frames in self._frames.values():
                for frame in frames:
                    frame[2] += gap_s

    def start(self) -> None:
        self._thread = threading.Thread(target=self._watch, name="stockflow-kafka-deadlines",
                                        daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopped.set()

    def _watch(self) -> None:
        last = time.monotonic()
        while not self._stopped.wait(self.tick_s):
            now = time.monotonic()
            self.resumed_after(now - last - self.tick_s)
            last = now
            stuck = self.overdue(now)
            if stuck is not None:
                self._on_overdue(*stuck)
                return


def is_fatal(exc: BaseException) -> bool:
    """A Kafka error the client cannot recover from (a fenced static member or producer)."""
    from confluent_kafka import KafkaException

    if not isinstance(exc, KafkaException) or not exc.args:
        return False
    fatal = getattr(exc.args[0], "fatal", None)
    return bool(fatal()) if callable(fatal) else False


Written = list[tuple[BatchTable, int, list[tuple[bytes, bytes]]]]


def send_table_changes(producer: Any, tables: list[BatchTable],
                       on_delivery: Callable[[Any, Any], None]) -> Written:
    """Commit step 1: every key the tables changed, encoded once, to its changelog."""
    written: Written = []
    for table in tables:
        topic = table.changelog_name
        for partition, rows in table.changed():
            for key, raw in rows:
                produce(producer, topic, raw, key, partition, on_delivery=on_delivery)
            written.append((table, partition, rows))
    return written


def persist_committed(written: Written, changelog_next: dict[tuple[str, int], int]) -> None:
    """Commit step 4, after the transaction committed: the values to RocksDB."""
    try:
        for table, partition, rows in written:
            table.persist(partition, rows,
                          changelog_next.get((table.changelog_name, partition), 0))
    except Exception as exc:
        # The transaction committed: these values are in the changelog, and a store that
        # missed them must be restored from it, which a restart does.
        raise FatalRuntimeError(f"writing committed table values to RocksDB: {exc}") from exc


class ChangelogOffsets(dict[tuple[str, int], int]):
    """The next offset of each changelog partition, from the changelog sends' delivery reports
    (the offset a store records with the values it was written)."""

    def on_delivery(self, err: Any, msg: Any) -> None:
        if err is None:
            key = (msg.topic(), msg.partition())
            nxt = msg.offset() + 1
            if nxt > self.get(key, 0):
                self[key] = nxt


def consume_ready(consumer: Any, max_records: int, max_wait_s: float) -> list[Any]:
    """Up to max_records records: what is fetched already, else the first record to arrive
    within max_wait_s and what came with it. consume(n, t) itself returns only at n records
    or after the whole t: at low rates every record would wait up to t in the consumer."""
    msgs: list[Any] = consumer.consume(num_messages=max_records, timeout=0)
    if not msgs:
        msgs = consumer.consume(num_messages=1, timeout=max_wait_s)
        if msgs and max_records > 1:
            msgs += consumer.consume(num_messages=max_records - 1, timeout=0)
    return msgs


def usable_records(msgs: list[Any], assignment: set[tuple[str, int]], where: str) -> list[Any]:
    """The records of assigned partitions; a fatal consumer error stops the worker, any other
    error is logged and skipped."""
    from confluent_kafka import KafkaError

    good = []
    for msg in msgs:
        err = msg.error()
        if err is not None:
            # A fatal error reaches consume() as a message error of code _FATAL whose
            # fatal() is False (confluent-kafka sets the flag only on error events).
            if err.fatal() or err.code() == KafkaError._FATAL:
                # e.g. FENCED_INSTANCE_ID: another process took this static member's
                # place. The consumer cannot go on; a restart (the supervisor's) can.
                raise FatalRuntimeError(f"fatal consumer error: {err}")
            log.warning("runtime.consume_error", where=where, error=str(err))
            continue
        if (msg.topic(), msg.partition()) in assignment:
            good.append(msg)
    return good


def by_topic_of(msgs: list[Any]) -> dict[str, list[Any]]:
    """A poll's records per topic, each topic's in poll order."""
    by_topic: dict[str, list[Any]] = {}
    for msg in msgs:
        topic = msg.topic()
        records = by_topic.get(topic)
        if records is None:
            by_topic[topic] = [msg]
        else:
            records.append(msg)
    return by_topic


async def hand_out(routes: dict[str, InputBatches], msgs: list[Any], send: Send) -> None:
    """One Batch per input topic of the poll to its agent; returns when every agent is done.
    The agents of different topics share no table: they run at once, so one agent's CPU work
    overlaps another's wait for Cassandra or Redis; their outputs join the same transaction."""
    by_topic = by_topic_of(msgs)
    now_ms = int(time.time() * 1000)
    batches = []
    for topic, records in by_topic.items():
        batch = Batch(topic=topic, records=records, send=send, now_ms=now_ms)
        await routes[topic].put(batch)  # type: ignore[arg-type]  # a Batch is the event
        batches.append(batch)
    results = await asyncio.gather(*(b.done for b in batches), return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result


async def hand_out_overlapped(routes: dict[str, InputBatches], msgs: list[Any], send: Send,
                              inflight: dict[str, asyncio.Future[Any]]) -> None:
    """Like hand_out, but returns once every batch is handed out, not done: `inflight` keeps
    each topic's last batch (its `done`). An agent has at most one batch at a time: a topic
    whose previous batch is still running waits for it (and raises its error) before its next
    one is handed out; the topics whose agents are idle are handed theirs first, so their CPU
    work runs while the others wait for their stores. Whoever commits must first wait for
    every batch in `inflight` (the worker's `_settle`)."""
    by_topic = by_topic_of(msgs)
    now_ms = int(time.time() * 1000)
    busy = [t for t in by_topic if t in inflight and not inflight[t].done()]
    for topic in [t for t in by_topic if t not in busy] + busy:
        previous = inflight.get(topic)
        if previous is not None:
            await previous  # raises what the previous batch raised
        batch = Batch(topic=topic, records=by_topic[topic], send=send, now_ms=now_ms)
        await routes[topic].put(batch)  # type: ignore[arg-type]  # a Batch is the event
        inflight[topic] = batch.done


def rewind_to_committed(consumer: Any, assignment: set[tuple[str, int]],
                        deadlines: CallDeadlines, where: str) -> None:
    """Seek every assigned partition back to the group's committed offset (the beginning if
    none): what an aborted transaction had processed is read again."""
    from confluent_kafka import OFFSET_BEGINNING, KafkaException, TopicPartition

    tps = [TopicPartition(t, p) for t, p in sorted(assignment)]
    if not tps:
        return
    with deadlines.call(f"{where}.committed", REQUEST_TIMEOUT_S):
        committed = consumer.committed(tps, timeout=REQUEST_TIMEOUT_S)
    for tp in committed:
        offset = tp.offset if tp.offset >= 0 else OFFSET_BEGINNING
        try:
            consumer.seek(TopicPartition(tp.topic, tp.partition, offset))
        except KafkaException as exc:
            log.warning("runtime.seek_failed", where=where, topic=tp.topic,
                        partition=tp.partition, error=str(exc.args[0]))
